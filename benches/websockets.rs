//! Websocket benchmark (issue #9): N idle websockets (default 10,000) held
//! open through tailpass over the test tailnet, and the same N through a
//! pure-Go tsnet reverse proxy (vendor/tsshim/cmd/goproxy: tsnet +
//! httputil.ReverseProxy, as tsnsrv does it), in the same run. Reports each
//! proxy process's resident memory and open descriptors before and after,
//! per websocket, the time to open them and tailpass/Go ratios. Asserts
//! nothing about time.
//!
//!     cargo bench --bench websockets
//!     TAILPASS_BENCH_WS=2000 cargo bench --bench websockets
//!
//! Set-up, identical for both sides except the proxy itself:
//! - the proxy is a separate process: the release `tailpass` binary with a
//!   one-node config (local-CA certificate, one tailnet-only route), or
//!   `goproxy` (self-signed certificate, WhoIs, ReverseProxy);
//! - the client is `vendor/tsshim/cmd/wsclient`, its own tsnet node in its
//!   own process (so it costs this process no descriptors), opening wss://
//!   websockets with bounded concurrency and retries, then holding them;
//! - the upstream is the websocket echo server of the test kit, in this
//!   process, on 127.0.0.1.
//!
//! One side at a time: the echo server holds a descriptor per websocket and
//! this process's descriptor limit must fit one side's N. Both sides run
//! with the hard RLIMIT_NOFILE (this process raises its soft limit; the
//! proxies inherit it). Figures are read from /proc/<pid>/status (VmRSS) and
//! /proc/<pid>/fd a few seconds after the last websocket opened, with no
//! forced GC on either side. At the end a sample of the websockets must
//! still echo.
//!
//! Environment: `TAILPASS_BENCH_WS` (count), `TAILPASS_BENCH_WS_CONCURRENCY`
//! (opens in flight, default 32), `TAILPASS_BENCH_WS_SETTLE` (seconds before
//! reading the figures, default 5), `TAILPASS_BENCH_WS_ONLY=tailpass|go`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tailpass_testkit::{
    ConfigBuilder, NodeSpec, RouteSpec, Section, TSNET_TEST_KNOBS, TestNet, env_num, free_port,
    go_program, stop_child,
};

/// Whether the config gets the `[limits]` table: every websocket comes
/// from one client node, which the default per-source cap (1024) would stop
/// long before N. (`false` only for a binary older than `[limits]`.)
const LIMITS_TABLE: bool = true;

/// `[limits] max_connections` and `max_connections_per_source` when
/// [`LIMITS_TABLE`] is set.
const MAX_CONNECTIONS: i64 = 50000;

/// Websockets sampled for the echo check at the end.
const ECHO_SAMPLES: u64 = 100;

/// A Go helper speaking one JSON line per command on stdin/stdout; it exits
/// when its stdin closes, so it cannot outlive this process.
struct Helper {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(name: &'static str, mut cmd: Command) -> Helper {
        for (k, v) in TSNET_TEST_KNOBS {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Helper {
            name,
            child,
            stdin,
            stdout,
        }
    }

    /// The next JSON line the helper prints.
    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{} said {line:?} ({e}); exit status {:?}",
                self.name,
                self.child.try_wait()
            )
        })
    }

    fn command(&mut self, cmd: &str) -> serde_json::Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        stop_child(self.stdin.take(), &mut self.child);
    }
}

/// The tailpass binary as a child process; its log goes to a file.
struct Tailpass {
    child: Child,
    log: PathBuf,
}

impl Tailpass {
    fn start(config: &Path, log: PathBuf) -> Tailpass {
        let bin = env!("CARGO_BIN_EXE_tailpass");
        // The binary does not watch its stdin, so the kernel is asked to
        // kill it when this process goes (setpriv execs it, same pid).
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--", bin]);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("TAILPASS_LOG", "info");
        for (k, v) in TSNET_TEST_KNOBS {
            cmd.env(k, v);
        }
        Tailpass {
            child: cmd.spawn().expect("starting tailpass"),
            log,
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Distinct warnings and errors of the log, and the end of a listener.
    fn log_problems(&self) -> Vec<String> {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for l in s.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or("");
            let msg = v["fields"]["message"].as_str().unwrap_or("");
            if level == "WARN" || level == "ERROR" || msg.contains("listener ended") {
                let f = &v["fields"];
                let why = f.get("error").or_else(|| f.get("reason"));
                let what = format!("{level} {msg}: {}", why.unwrap_or(&"-".into()));
                *seen.entry(what).or_default() += 1;
            }
        }
        seen.into_iter()
            .map(|(what, n)| format!("log, {n}x: {what}"))
            .collect()
    }

    /// Waits until `/healthz` on the admin listener answers 200.
    fn wait_healthy(&mut self, admin: SocketAddr) {
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tailpass exited ({st}):\n{}", self.log_tail());
            }
            if healthz(admin) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "tailpass never healthy:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tailpass {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz(admin: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: admin\r\n\r\n");
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")
}

/// Resident memory (KiB) and open descriptors of a process.
fn proc_stats(pid: u32) -> (i64, i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(0);
    (rss, fds)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (children
/// inherit it) with util-linux `prlimit`; returns the (soft, hard) limits.
fn raise_nofile() -> (u64, u64) {
    let read = || {
        let l = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let f: Vec<u64> = l
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        (
            f.first().copied().unwrap_or(0),
            f.get(1).copied().unwrap_or(0),
        )
    };
    let (soft, hard) = read();
    if soft < hard {
        let ok = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not raise RLIMIT_NOFILE above {soft} (no prlimit?)");
        }
    }
    read()
}

#[derive(Default)]
struct Figures {
    opened: u64,
    failed: u64,
    /// Until the last websocket that opened did.
    open_secs: f64,
    /// Including retries of failures at the end.
    wall_secs: f64,
    rss_before: i64,
    rss_after: i64,
    fds_before: i64,
    fds_after: i64,
    echo_ok: u64,
    echo_sampled: u64,
    errors: Vec<String>,
}

impl Figures {
    fn kib_per_ws(&self) -> f64 {
        (self.rss_after - self.rss_before) as f64 / self.opened.max(1) as f64
    }
    fn fds_per_ws(&self) -> f64 {
        (self.fds_after - self.fds_before) as f64 / self.opened.max(1) as f64
    }
}

struct Run<'a> {
    net: &'a TestNet,
    dir: &'a Path,
    upstream: SocketAddr,
    n: u64,
    concurrency: u64,
    settle: Duration,
}

impl Run<'_> {
    /// Opens N websockets through the proxy `pid` serves at `fqdn`, reads
    /// the figures, checks a sample still echoes, closes them.
    fn measure(&self, side: &str, pid: u32, fqdn: &str, ca: &Path) -> Figures {
        let mut cmd = Command::new(go_program("./cmd/wsclient", "wsclient"));
        cmd.args(["-control-url", &self.net.control_url])
            .args(["-hostname", &format!("wsc-{side}")])
            .arg("-dir")
            .arg(self.dir.join(format!("wsc-{side}")))
            .args(["-url", &format!("wss://{fqdn}/ws/bench")])
            .arg("-ca")
            .arg(ca)
            .args(["-concurrency", &self.concurrency.to_string()]);
        let mut client = Helper::spawn("wsclient", cmd);
        assert_eq!(client.line()["ready"], true, "wsclient not ready");
        std::thread::sleep(self.settle);
        let (rss_before, fds_before) = proc_stats(pid);
        eprintln!("{side}: opening {} websockets", self.n);
        let r = client.command(&format!("open {}", self.n));
        std::thread::sleep(self.settle);
        let (rss_after, fds_after) = proc_stats(pid);
        let echo = client.command(&format!("echo {ECHO_SAMPLES}"));
        client.command("close");
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let mut errors: Vec<String> = r["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(echo["errors"].as_array().into_iter().flatten())
            .filter_map(|e| e.as_str().map(String::from))
            .collect();
        errors.dedup();
        Figures {
            opened: num(&r["opened"]),
            failed: num(&r["failed"]),
            open_secs: r["last_open_seconds"].as_f64().unwrap_or(0.0),
            wall_secs: r["seconds"].as_f64().unwrap_or(0.0),
            rss_before,
            rss_after,
            fds_before,
            fds_after,
            echo_ok: num(&echo["ok"]),
            echo_sampled: num(&echo["sampled"]),
            errors,
        }
    }

    fn tailpass(&self) -> Figures {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let state = self.dir.join("tp");
        let mut config = ConfigBuilder::new()
            .section(Section::new("tailnet").set("control_url", self.net.control_url.as_str()))
            .node(
                NodeSpec::new("tp")
                    .state_dir(&state)
                    .ephemeral(true)
                    .cert("local-ca"),
            )
            .admin(&admin.to_string())
            .route(
                RouteSpec::new("/ws", format!("http://{}", self.upstream))
                    .node("tp")
                    .access("tailnet"),
            );
        if LIMITS_TABLE {
            config = config.section(
                Section::new("limits")
                    .set("max_connections", MAX_CONNECTIONS)
                    .set("max_connections_per_source", MAX_CONNECTIONS),
            );
        }
        let file = self.dir.join("tailpass.toml");
        config.write(&file);
        let mut tp = Tailpass::start(&file, self.dir.join("tailpass.log"));
        tp.wait_healthy(admin);
        let f = self.measure(
            "tailpass",
            tp.child.id(),
            &self.net.fqdn("tp"),
            &state.join("local-ca/ca.pem"),
        );
        let mut f = f;
        f.errors.extend(tp.log_problems());
        f
    }

    fn go(&self) -> Figures {
        let mut cmd = Command::new(go_program("./cmd/goproxy", "goproxy"));
        cmd.args(["-control-url", &self.net.control_url])
            .args(["-hostname", "gp"])
            .arg("-dir")
            .arg(self.dir.join("gp"))
            .args(["-upstream", &format!("http://{}", self.upstream)]);
        std::fs::create_dir_all(self.dir.join("gp")).unwrap();
        let mut gp = Helper::spawn("goproxy", cmd);
        let ready = gp.line();
        let fqdn = ready["fqdn"].as_str().unwrap().to_string();
        let ca = PathBuf::from(ready["ca_file"].as_str().unwrap());
        self.measure("go", gp.pid(), &fqdn, &ca)
    }
}

/// Waits until the upstream echo server in this process has let go of the
/// previous side's connections (at most 60 s).
fn wait_fds_below(limit: i64) {
    let t = Instant::now();
    while proc_stats(std::process::id()).1 > limit && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn row(name: &str, tp: f64, go: f64, prec: usize) {
    let ratio = if go == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}", tp / go)
    };
    println!("{name:<34} {tp:>12.prec$} {go:>12.prec$} {ratio:>8}");
}

async fn run() {
    let n = env_num("TAILPASS_BENCH_WS", 10_000);
    let concurrency = env_num("TAILPASS_BENCH_WS_CONCURRENCY", 32);
    let settle = Duration::from_secs(env_num("TAILPASS_BENCH_WS_SETTLE", 5));
    let only = std::env::var("TAILPASS_BENCH_WS_ONLY").unwrap_or_default();
    let (soft, hard) = raise_nofile();

    let net = TestNet::start();
    let upstream = tailpass_testkit::upstream::start_ws_echo().await;
    let dir = tempfile::tempdir().unwrap();
    // Build the helpers before anything is measured.
    go_program("./cmd/wsclient", "wsclient");
    go_program("./cmd/goproxy", "goproxy");
    let r = Run {
        net: &net,
        dir: dir.path(),
        upstream,
        n,
        concurrency,
        settle,
    };
    // Blocking waits below run on this thread; the echo server runs on the
    // runtime's worker threads.
    let base_fds = proc_stats(std::process::id()).1;
    let tp = if only == "go" {
        Figures::default()
    } else {
        r.tailpass()
    };
    wait_fds_below(base_fds + 100);
    let go = if only == "tailpass" {
        Figures::default()
    } else {
        r.go()
    };

    report(&tp, &go, (n, concurrency), (soft, hard));
}

/// The table: tailpass and the pure-Go proxy side by side, then the echo
/// check, errors and what the descriptor limit would fit.
fn report(tp: &Figures, go: &Figures, (n, concurrency): (u64, u64), (soft, hard): (u64, u64)) {
    println!(
        "websockets benchmark: {n} idle websockets over the test tailnet \
         (client cmd/wsclient, {concurrency} opens in flight; RLIMIT_NOFILE {soft}/{hard})"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "", "tailpass", "pure go", "ratio"
    );
    row("websockets open", tp.opened as f64, go.opened as f64, 0);
    row("time to open them, s", tp.open_secs, go.open_secs, 1);
    row(
        "  with retries of failures, s",
        tp.wall_secs,
        go.wall_secs,
        1,
    );
    row(
        "RSS before, KiB",
        tp.rss_before as f64,
        go.rss_before as f64,
        0,
    );
    row(
        "RSS with all open, KiB",
        tp.rss_after as f64,
        go.rss_after as f64,
        0,
    );
    row(
        "RSS per websocket, KiB",
        tp.kib_per_ws(),
        go.kib_per_ws(),
        1,
    );
    row("fds before", tp.fds_before as f64, go.fds_before as f64, 0);
    row(
        "fds with all open",
        tp.fds_after as f64,
        go.fds_after as f64,
        0,
    );
    row("fds per websocket", tp.fds_per_ws(), go.fds_per_ws(), 2);
    println!(
        "echo check at the end: tailpass {}/{}, go {}/{}; failed opens (after retries): tailpass {}, go {}",
        tp.echo_ok, tp.echo_sampled, go.echo_ok, go.echo_sampled, tp.failed, go.failed
    );
    for (side, f) in [("tailpass", tp), ("go", go)] {
        for e in &f.errors {
            println!("{side}: {e}");
        }
        if f.opened > 0 && f.opened < n {
            println!(
                "{side}: {:.0} descriptors per websocket; the hard limit of {hard} fits about {:.0}",
                f.fds_per_ws(),
                hard as f64 / f.fds_per_ws().max(1.0)
            );
        }
    }
}

fn main() {
    tailpass_testkit::bench_main(run());
}
