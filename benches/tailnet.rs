//! Tailnet benchmark: the Rust API over the Go shim against two pure-Go
//! tsnet nodes (vendor/tsshim/cmd/gobench) on the same test tailnet, in the
//! same run. Reports figures and Rust/Go ratios; asserts nothing about time.
//!
//!     cargo bench --bench tailnet            # defaults
//!     TAILPASS_BENCH_MB=256 TAILPASS_BENCH_IDLE=1000 cargo bench --bench tailnet
//!
//! Measured:
//! - throughput of one stream A→B (median of runs);
//! - connection set-up rate (sequential dial + accept + 1 byte + close),
//!   and per-connection latency percentiles (dial to first byte; the dial
//!   call alone);
//! - resident memory added by N open idle connections (both ends in-process).
//!
//! The test tailnet relays through its DERP server on 127.0.0.1 (no direct
//! UDP, see tailpass_testkit), for both sides alike.
//!
//! The Rust side runs once per data path (the node channel, the default;
//! and a socketpair per connection), each in its own process like the Go
//! baseline, so one run's memory does not flatter the next; the three
//! sides are interleaved over `TAILPASS_BENCH_ROUNDS` rounds (default 3).

// The one unsafe outside crates/tailnet/src/ffi.rs: a global allocator must be
// an `unsafe impl`; it only forwards to the system allocator.
#[allow(unsafe_code)]
mod counting {
    /// Counts the Rust heap in use, so the memory figure can say how much of a
    /// connection's cost is Rust's and how much the embedded Go runtime's.
    struct Counting;

    static RUST_HEAP: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

    // SAFETY: forwards every call to the system allocator unchanged; only
    // counts sizes.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
            RUST_HEAP.fetch_add(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
            RUST_HEAP.fetch_sub(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { std::alloc::System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
            RUST_HEAP.fetch_add(
                new as isize - l.size() as isize,
                std::sync::atomic::Ordering::Relaxed,
            );
            // SAFETY: as above.
            unsafe { std::alloc::System.realloc(p, l, new) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    pub(crate) fn rust_heap_kib() -> f64 {
        RUST_HEAP.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}
use counting::rust_heap_kib;

use std::net::IpAddr;
use std::process::Command;
use std::time::Instant;

use std::time::Duration;
use tailpass::tailnet::{DataPath, Node, NodeConfig};
use tailpass_testkit::{TestNet, env_num, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Figures {
    throughput_mb_s: f64,
    runs: Vec<f64>,
    setup_per_s: f64,
    idle_kib_per_conn: f64,
    idle_rss_kib: i64,
    /// RSS added per pair by the second half of the idle connections.
    marginal_kib_per_conn: f64,
    /// Rust heap added per idle connection pair (0 for the Go baseline).
    rust_heap_kib_per_conn: f64,
    failed_dials: usize,
    /// Connections whose set-up took over 1 s (a SYN retransmission).
    stalls: usize,
    /// Descriptors added per idle connection (both its ends in-process).
    fds_per_conn: f64,
    /// Per connection: dial until the first byte from the server arrived,
    /// milliseconds, p50/p90/p99.
    setup_ms: [f64; 3],
    /// The dial call alone, p50/p90/p99.
    dial_ms: [f64; 3],
}

fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64)
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [at(0.5), at(0.9), at(0.99)]
}

fn from_json3(v: &serde_json::Value) -> [f64; 3] {
    let a = v.as_array().expect("three percentiles");
    [0, 1, 2].map(|i| a[i].as_f64().unwrap())
}

/// The test tailnet as a bench child sees it: its control URL.
struct Tailnet {
    control_url: String,
    dir: tempfile::TempDir,
}

impl Tailnet {
    fn node_config(&self, name: &str) -> NodeConfig {
        let mut c = NodeConfig::new(name, self.dir.path().join(name));
        c.control_url = Some(self.control_url.clone());
        c.ephemeral = true;
        c
    }

    async fn join(&self, c: NodeConfig) -> Node {
        let node = Node::new(c).unwrap();
        node.up(Duration::from_secs(60)).await.unwrap();
        node
    }

    /// Waits until both nodes see each other (see `TestNet::settle`).
    async fn settle(&self, nodes: &[&Node]) {
        for n in nodes {
            for _ in 0..1200 {
                let st = n.status().await.unwrap();
                if nodes
                    .iter()
                    .all(|o| o.hostname() == n.hostname() || st.peer(o.hostname()).is_some())
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn rust_side(
    net: &Tailnet,
    path: DataPath,
    bytes: u64,
    runs: usize,
    dials: usize,
    idle: usize,
) -> Figures {
    let tag = format!("{path:?}").to_lowercase();
    let node = |name: &str| {
        let mut c = net.node_config(&format!("rs-{tag}-{name}"));
        c.data_path = path;
        net.join(c)
    };
    let (a, b) = tokio::join!(node("a"), node("b"));
    net.settle(&[&a, &b]).await;
    let b_ip = b.status().await.unwrap().ip().unwrap();

    let rates = throughput(&a, &b, b_ip, bytes, runs).await;
    let (setup, failed, lat, dial_only) = setup_rate(&a, &b, b_ip, dials).await;
    let idle_figures = idle_memory(&a, &b, b_ip, idle).await;
    Figures {
        throughput_mb_s: rates[rates.len() / 2],
        runs: rates,
        setup_per_s: setup,
        failed_dials: failed,
        stalls: lat.iter().filter(|&&ms| ms > 1000.0).count(),
        setup_ms: percentiles(lat),
        dial_ms: percentiles(dial_only),
        ..idle_figures
    }
}

/// Throughput A→B in MB/s per run, sorted: B counts and acknowledges.
async fn throughput(a: &Node, b: &Node, b_ip: IpAddr, bytes: u64, runs: usize) -> Vec<f64> {
    let ln = b.listen(7001).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = ln.accept().await {
            tokio::spawn(async move {
                let n = tokio::io::copy(&mut s, &mut tokio::io::sink())
                    .await
                    .unwrap();
                s.write_all(n.to_string().as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let buf = vec![0u8; 64 << 10];
    let mut rates = Vec::new();
    // Warm-up (DERP path, netstack buffers), not measured.
    for _ in 0..3 {
        let mut s = a.dial(&format!("{b_ip}:7001")).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown().await.unwrap();
        s.read_to_string(&mut String::new()).await.unwrap();
    }
    for _ in 0..runs {
        let mut s = a.dial(&format!("{b_ip}:7001")).await.unwrap();
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).await.unwrap();
            sent += n as u64;
        }
        s.shutdown().await.unwrap();
        let mut ack = String::new();
        s.read_to_string(&mut ack).await.unwrap();
        let el = t0.elapsed();
        assert_eq!(ack, bytes.to_string(), "receiver count");
        rates.push(bytes as f64 / el.as_secs_f64() / 1e6);
    }
    rates.sort_by(f64::total_cmp);

    rates
}

/// Set-up rate: connections per second, failed dials, and per dial the
/// milliseconds to the first byte and to the dial alone.
async fn setup_rate(
    a: &Node,
    b: &Node,
    b_ip: IpAddr,
    dials: usize,
) -> (f64, usize, Vec<f64>, Vec<f64>) {
    let ln2 = b.listen(7002).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = ln2.accept().await {
            let _ = s.write_all(&[1]).await;
        }
    });
    // A dial that fails is counted and reported, not hidden: see the
    // "failed dials" line (see TIME_WAIT in docs/tailnet.md).
    let t0 = Instant::now();
    let mut failed = 0;
    let mut lat = Vec::with_capacity(dials);
    let mut dial_only = Vec::with_capacity(dials);
    for _ in 0..dials {
        let t = Instant::now();
        match a.dial(&format!("{b_ip}:7002")).await {
            Ok(mut s) => {
                dial_only.push(t.elapsed().as_secs_f64() * 1e3);
                let mut one = [0u8; 1];
                s.read_exact(&mut one).await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => {
                failed += 1;
                eprintln!("dial failed: {e}");
            }
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let setup = (dials - failed) as f64 / el;

    (setup, failed, lat, dial_only)
}

/// Memory and descriptors with `idle` idle connections (the idle fields of
/// the figures; the others default).
async fn idle_memory(a: &Node, b: &Node, b_ip: IpAddr, idle: usize) -> Figures {
    let ln3 = b.listen(7003).await.unwrap();
    // As the Go baseline does (debug.FreeOSMemory before and after): the
    // figure is what the connections hold, not the Go heap's garbage from
    // the throughput runs.
    tailpass::tailnet::global::release_memory();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = rss_kib();
    let fds_before = open_fds();
    let mut keep = Vec::with_capacity(2 * idle);
    let heap_before = rust_heap_kib();
    let mut half = 0;
    for i in 0..idle {
        if i == idle / 2 {
            // As gobench: the second half's cost is the marginal one.
            tailpass::tailnet::global::release_memory();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            half = rss_kib();
        }
        let c = a.dial(&format!("{b_ip}:7003")).await.unwrap();
        let (s, _) = ln3.accept().await.unwrap();
        keep.push(c);
        keep.push(s);
    }
    tailpass::tailnet::global::release_memory();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib();
    let fds_after = open_fds();
    let heap_kib_per_conn = (rust_heap_kib() - heap_before) / idle as f64;
    // Not closed: with this many TCP endpoints tsnet's Close stalls until
    // the shim's watchdog gives up (see docs/tailnet.md); exit ends them.
    std::mem::forget(keep);
    Figures {
        idle_kib_per_conn: (after - before) as f64 / idle as f64,
        idle_rss_kib: after - before,
        marginal_kib_per_conn: (after - half) as f64 / (idle - idle / 2) as f64,
        rust_heap_kib_per_conn: heap_kib_per_conn,
        fds_per_conn: (fds_after - fds_before) as f64 / idle as f64,
        ..Figures::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Figures {
    /// One side's rounds as one figure: throughput is the median of all
    /// runs, the rest the median of the rounds' figures (counts summed).
    fn merge(all: Vec<Figures>) -> Figures {
        let med = |f: &dyn Fn(&Figures) -> f64| median(all.iter().map(f).collect());
        let runs: Vec<f64> = all.iter().flat_map(|f| f.runs.clone()).collect();
        Figures {
            throughput_mb_s: median(runs.clone()),
            runs,
            setup_per_s: med(&|f| f.setup_per_s),
            idle_kib_per_conn: med(&|f| f.idle_kib_per_conn),
            idle_rss_kib: med(&|f| f.idle_rss_kib as f64) as i64,
            rust_heap_kib_per_conn: med(&|f| f.rust_heap_kib_per_conn),
            marginal_kib_per_conn: med(&|f| f.marginal_kib_per_conn),
            failed_dials: all.iter().map(|f| f.failed_dials).sum(),
            fds_per_conn: med(&|f| f.fds_per_conn),
            stalls: all.iter().map(|f| f.stalls).sum(),
            setup_ms: [0, 1, 2].map(|i| med(&|f| f.setup_ms[i])),
            dial_ms: [0, 1, 2].map(|i| med(&|f| f.dial_ms[i])),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "throughput_mb_s": self.throughput_mb_s,
            "throughput_runs": self.runs,
            "setup_per_s": self.setup_per_s,
            "idle_kib_per_conn": self.idle_kib_per_conn,
            "idle_rss_kib": self.idle_rss_kib,
            "rust_heap_kib_per_conn": self.rust_heap_kib_per_conn,
            "marginal_kib_per_conn": self.marginal_kib_per_conn,
            "failed_dials": self.failed_dials,
            "fds_per_conn": self.fds_per_conn,
            "stalls": self.stalls,
            "setup_ms": self.setup_ms,
            "dial_ms": self.dial_ms,
        })
    }

    fn from_json(v: &serde_json::Value) -> Figures {
        Figures {
            throughput_mb_s: v["throughput_mb_s"].as_f64().unwrap(),
            runs: v["throughput_runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
            setup_per_s: v["setup_per_s"].as_f64().unwrap(),
            idle_kib_per_conn: v["idle_kib_per_conn"].as_f64().unwrap(),
            idle_rss_kib: v["idle_rss_kib"].as_i64().unwrap(),
            rust_heap_kib_per_conn: v["rust_heap_kib_per_conn"].as_f64().unwrap_or(0.0),
            marginal_kib_per_conn: v["marginal_kib_per_conn"].as_f64().unwrap_or(f64::NAN),
            failed_dials: v["failed_dials"].as_u64().unwrap_or(0) as usize,
            fds_per_conn: v["fds_per_conn"].as_f64().unwrap(),
            stalls: v["stalls"].as_u64().unwrap() as usize,
            setup_ms: from_json3(&v["setup_ms"]),
            dial_ms: from_json3(&v["dial_ms"]),
        }
    }
}

/// Environment of the child process that measures one Rust data path.
const CHILD_ENV: &str = "TAILPASS_BENCH_RUST_CHILD";

fn rust_child(net: &TestNet, path: DataPath, args: &[usize; 4]) -> Figures {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{path:?}"))
        .env("TAILPASS_BENCH_CONTROL_URL", &net.control_url)
        .env("TAILPASS_BENCH_MB", args[0].to_string())
        .env("TAILPASS_BENCH_RUNS", args[1].to_string())
        .env("TAILPASS_BENCH_DIALS", args[2].to_string())
        .env("TAILPASS_BENCH_IDLE", args[3].to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running the bench child");
    assert!(out.status.success(), "bench child for {path:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .expect("bench child printed no figures");
    Figures::from_json(&serde_json::from_str(line).unwrap())
}

fn go_side(net: &TestNet, bytes: u64, runs: usize, dials: usize, idle: usize) -> Figures {
    let bin = tailpass_testkit::go_program("./cmd/gobench", "gobench");
    let out = Command::new(bin)
        .args(["-control-url", &net.control_url])
        .args(["-bytes", &bytes.to_string(), "-runs", &runs.to_string()])
        .args(["-dials", &dials.to_string(), "-idle", &idle.to_string()])
        .output()
        .expect("running gobench");
    assert!(
        out.status.success(),
        "gobench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // gobench prints the same JSON as a Rust child, without the Rust-only
    // fields (no Rust heap; it exits on any failed dial).
    Figures::from_json(&serde_json::from_slice(&out.stdout).unwrap())
}

/// A Rust side in a child process (`CHILD_ENV` names its data path):
/// measures, prints its figures as one JSON line and exits.
fn child_main(path: &str, bytes: u64, runs: usize, dials: usize, idle: usize) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = if path == "SocketPair" {
        DataPath::SocketPair
    } else {
        DataPath::Channel
    };
    tailpass_testkit::init_process_for_tests();
    let net = Tailnet {
        control_url: std::env::var("TAILPASS_BENCH_CONTROL_URL").unwrap(),
        dir: tempfile::tempdir().unwrap(),
    };
    let f = rt.block_on(rust_side(&net, path, bytes, runs, dials, idle));
    println!("{}", f.to_json());
    // Not closed: see rust_side; exit ends the forgotten connections.
    std::process::exit(0);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: both just run the measurement.
    let mb = env_num("TAILPASS_BENCH_MB", 64);
    let runs = env_num("TAILPASS_BENCH_RUNS", 3) as usize;
    let dials = env_num("TAILPASS_BENCH_DIALS", 300) as usize;
    let idle = env_num("TAILPASS_BENCH_IDLE", 1000) as usize;
    let bytes = mb << 20;

    if let Ok(path) = std::env::var(CHILD_ENV) {
        child_main(&path, bytes, runs, dials, idle);
    }

    let rounds = env_num("TAILPASS_BENCH_ROUNDS", 3).max(1) as usize;
    let net = TestNet::start();
    // Each side in its own process, interleaved: every round runs all
    // three, starting with a different one, so that load drifting on a
    // shared machine falls on all of them alike.
    let args = [mb as usize, runs, dials, idle];
    let (mut go, mut sp, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in 0..3 {
            match (round + side) % 3 {
                0 => go.push(go_side(&net, bytes, runs, dials, idle)),
                1 => sp.push(rust_child(&net, DataPath::SocketPair, &args)),
                _ => rs.push(rust_child(&net, DataPath::Channel, &args)),
            }
        }
    }
    let per_round = |v: &[Figures]| -> Vec<String> {
        v.iter()
            .map(|f| format!("{:.1}", f.throughput_mb_s))
            .collect()
    };
    println!(
        "throughput medians per round, MB/s: channel {:?} go {:?} socketpair {:?}",
        per_round(&rs),
        per_round(&go),
        per_round(&sp)
    );
    let (go, sp, rs) = (Figures::merge(go), Figures::merge(sp), Figures::merge(rs));

    report(&rs, &go, &sp, [rounds, mb as usize, runs, dials, idle]);
}

/// The table: the node channel, the pure-Go baseline and the socketpair
/// path side by side (medians over `rounds`), then the raw runs.
fn report(rs: &Figures, go: &Figures, sp: &Figures, [rounds, mb, runs, dials, idle]: [usize; 5]) {
    println!(
        "tailnet benchmark ({rounds} rounds of: {mb} MiB x {runs} runs, {dials} dials, {idle} idle conns)"
    );
    println!("figures: median over rounds (throughput: over all runs)");
    println!("rust = node channel (default data path); ratios are rust/go");
    println!(
        "{:<34} {:>14} {:>14} {:>8} {:>14}",
        "", "rust (channel)", "pure go tsnet", "ratio", "rust socketpr"
    );
    let row = |name: &str, r: f64, g: f64, s: f64| {
        println!("{name:<34} {r:>14.2} {g:>14.2} {:>8.2} {s:>14.2}", r / g);
    };
    row(
        "throughput A->B, MB/s (median)",
        rs.throughput_mb_s,
        go.throughput_mb_s,
        sp.throughput_mb_s,
    );
    row(
        "connection set-up, conns/s",
        rs.setup_per_s,
        go.setup_per_s,
        sp.setup_per_s,
    );
    for (i, p) in ["p50", "p90", "p99"].iter().enumerate() {
        row(
            &format!("  set-up latency {p}, ms"),
            rs.setup_ms[i],
            go.setup_ms[i],
            sp.setup_ms[i],
        );
    }
    for (i, p) in ["p50", "p90", "p99"].iter().enumerate() {
        row(
            &format!("  of which dial call {p}, ms"),
            rs.dial_ms[i],
            go.dial_ms[i],
            sp.dial_ms[i],
        );
    }
    row(
        "idle conn memory, KiB per conn",
        rs.idle_kib_per_conn,
        go.idle_kib_per_conn.max(0.001),
        sp.idle_kib_per_conn,
    );
    row(
        "  marginal (second half), KiB/conn",
        rs.marginal_kib_per_conn,
        go.marginal_kib_per_conn,
        sp.marginal_kib_per_conn,
    );
    println!(
        "{:<34} {:>14.2} {:>14} {:>8} {:>14.2}",
        "  of which Rust heap, KiB per conn",
        rs.rust_heap_kib_per_conn,
        "-",
        "",
        sp.rust_heap_kib_per_conn
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8} {:>14}",
        "  set-ups over 1 s (SYN retransmit)", rs.stalls, go.stalls, "", sp.stalls
    );
    println!(
        "{:<34} {:>14.1} {:>14.1} {:>8} {:>14.1}",
        "idle conn descriptors, per conn", rs.fds_per_conn, go.fds_per_conn, "", sp.fds_per_conn
    );
    println!(
        "runs MB/s: channel {:?} go {:?} socketpair {:?}; idle RSS added: channel {} KiB, go {} KiB, socketpair {} KiB; failed dials: channel {} socketpair {}",
        rs.runs,
        go.runs,
        sp.runs,
        rs.idle_rss_kib,
        go.idle_rss_kib,
        sp.idle_rss_kib,
        rs.failed_dials,
        sp.failed_dials
    );
}
