//! The one-command local demo: `cargo run --example demo`.
//!
//! Brings up, on this machine and on 127.0.0.1 only: the offline test
//! tailnet (tailscale's test control server + DERP), the development OIDC
//! provider (`oidc-provider`, standing in for Pocket ID) behind tailpass's
//! own `auth` node, tailpass's `gw` node with the login portal in front of
//! a sample page with a websocket "terminal" and an echo service, and a
//! demo client node `laptop` whose loopback HTTP proxy carries a browser on
//! this machine into the tailnet. Ctrl-C stops everything; the helper
//! processes exit with it (they also exit if this process is killed, when
//! their stdin closes).
//!
//! Options: `--proxy-port N` (default 8080, or any free port when 8080 is
//! taken; 0 picks one), `--json` (print one JSON line with the addresses,
//! for scripts), `--help`.

use tailpass_testkit::stack::{Seed, SeedOptions};

const USAGE: &str = "\
usage: cargo run --example demo -- [--proxy-port N] [--json]

  --proxy-port N  the loopback port of the demo laptop's HTTP proxy
                  (default 8080, another free port if 8080 is taken; 0: any)
  --json          print one JSON line with the addresses, for scripts
  --help          this text
";

/// The proxy port asked for: `Some(n)` when given, `None` for the default.
struct Args {
    port: Option<u16>,
    json: bool,
}

/// `--proxy-port N`, `--json`, `--help` (exit 0); anything else exits 64.
fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        port: None,
        json: false,
    };
    let usage_error = |why: String| -> ! {
        eprintln!("demo: {why}\n\n{USAGE}");
        std::process::exit(64);
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy-port" => match args.next().map(|p| p.parse::<u16>()) {
                Some(Ok(p)) => out.port = Some(p),
                _ => usage_error("--proxy-port needs a port number".into()),
            },
            "--json" => out.json = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => usage_error(format!("unknown argument {other:?}")),
        }
    }
    out
}

/// The proxy's listener: the port asked for, or 8080 — and when 8080 is
/// taken (Caddy, another demo), any free port, said on stderr.
async fn proxy_listener(port: Option<u16>) -> tokio::net::TcpListener {
    let bind = |p: u16| tokio::net::TcpListener::bind(("127.0.0.1", p));
    match port {
        Some(p) => bind(p).await.unwrap_or_else(|e| {
            eprintln!("demo: cannot listen on 127.0.0.1:{p}: {e} (try --proxy-port 0)");
            std::process::exit(1);
        }),
        None => match bind(8080).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo: 127.0.0.1:8080 is not free ({e}); using another port");
                bind(0).await.unwrap_or_else(|e| {
                    eprintln!("demo: cannot listen on 127.0.0.1: {e}");
                    std::process::exit(1);
                })
            }
        },
    }
}

/// The Chromium on this machine: `chromium` (Debian), `chromium-browser`
/// (Fedora), else Google Chrome; `chromium` if none is found.
fn chromium() -> &'static str {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .into_iter()
    .find(|n| on_path(n))
    .unwrap_or("chromium")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Args { port, json } = parse_args();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("TAILPASS_LOG").unwrap_or_else(|_| "tailpass=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();

    eprintln!("starting the test tailnet, the OIDC provider and tailpass (nodes gw and auth) …");
    let seed = Seed::start(SeedOptions {
        admin: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await;
    let laptop = seed.client("laptop").await;
    let listener = proxy_listener(port).await;
    let proxy = listener.local_addr().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let entry = tokio::spawn(tailpass_testkit::entry::serve_proxy(
        listener,
        laptop.clone(),
        stop,
    ));

    announce(&seed, proxy, json);
    wait_for_stop().await;
    eprintln!("stopping …");
    let _ = stop_tx.send(true);
    let _ = entry.await;
    let _ = laptop.close().await;
    let Seed { gw, idp, net, .. } = seed;
    gw.shutdown().await;
    drop(idp);
    drop(net);
    eprintln!("stopped; nothing left running");
}

/// Prints where to point a browser: one JSON line (`--json`, for scripts)
/// or instructions.
fn announce(seed: &Seed, proxy: std::net::SocketAddr, json: bool) {
    let start = seed.url("/term/");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "proxy": format!("http://{proxy}"),
                "start": start,
                "portal": seed.url("/auth"),
                "ca_file": seed.ca_file,
                "admin": seed.gw.admin.map(|a| a.to_string()),
                "pids": [seed.net.pid(), seed.idp.pid()],
            })
        );
    } else {
        println!(
            "\n  tailpass demo is up.\n\n  \
             Open this in Chromium (the proxy is the demo laptop on the tailnet; a fresh\n  \
             profile, so a Chromium you already run is not reused without the proxy):\n\n    \
             {browser} --user-data-dir=\"$(mktemp -d)\" --proxy-server=http://{proxy} --ignore-certificate-errors {start}\n\n  \
             (or trust the demo CA instead of ignoring certificate errors: {ca})\n  \
             Sign in at the provider's form as `alice` (role admin) or `bob` (role user).\n  \
             Portal: {portal}/   Metrics and health: http://{admin}/metrics, /healthz\n\n  \
             Ctrl-C stops everything.\n",
            browser = chromium(),
            ca = seed.ca_file.display(),
            portal = seed.url("/auth"),
            admin = seed.gw.admin.map(|a| a.to_string()).unwrap_or_default(),
        );
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
