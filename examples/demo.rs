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
//! Options: `--proxy-port N` (default 8080; 0 picks one), `--json` (print
//! one JSON line with the addresses, for scripts).

use tailpass_testkit::stack::{Seed, SeedOptions};

/// `--proxy-port N` (default 8080) and `--json`; anything else exits 64.
fn parse_args() -> (u16, bool) {
    let mut args = std::env::args().skip(1);
    let mut port = 8080u16;
    let mut json = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy-port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("--proxy-port needs a number")
            }
            "--json" => json = true,
            other => {
                eprintln!("unknown argument {other:?} (use --proxy-port N, --json)");
                std::process::exit(64);
            }
        }
    }
    (port, json)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (port, json) = parse_args();
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
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e} (try --proxy-port 0)"));
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
             Open this in Chromium (the proxy is the demo laptop on the tailnet):\n\n    \
             chromium --proxy-server=http://{proxy} --ignore-certificate-errors {start}\n\n  \
             (or trust the demo CA instead of ignoring certificate errors: {ca})\n  \
             Sign in at the provider's form as `alice` (role admin) or `bob` (role user).\n  \
             Portal: {portal}/   Metrics and health: http://{admin}/metrics, /healthz\n\n  \
             Ctrl-C stops everything.\n",
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
