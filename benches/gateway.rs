//! Gateway benchmark: an allowed GET through tailpass against the same GET
//! straight to the upstream, in one run, reported as ratios; plus memory
//! per idle websocket held open through the gateway. Asserts nothing about
//! time.
//!
//!     cargo bench --bench gateway
//!     TAILPASS_BENCH_SECS=5 TAILPASS_BENCH_CONNS=16 TAILPASS_BENCH_WS=1000 cargo bench --bench gateway
//!
//! - loopback: client → tailpass loopback listener (public route) → upstream,
//!   vs client → upstream;
//! - tailnet: client node → tailpass node (HTTPS, WhoIs, policy) → upstream,
//!   vs client node → a plain byte forwarder node → upstream (no TLS, no
//!   identity: the transport cost alone), over the test tailnet's DERP relay;
//! - websockets: RSS added by N idle websockets through the loopback
//!   listener minus the same N straight to the echo server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tailnet::Node;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, TestNet, env_num, rss_kib};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `conns` keep-alive HTTP/1.1 connections for `secs`, each sending
/// GETs back to back. `open` makes one connected transport.
async fn load<F, Fut, S>(conns: usize, secs: u64, host: &str, open: F) -> Figures
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let io = open().await;
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let req = http::Request::get("/bench")
                    .header("host", &host)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let t = Instant::now();
                send.ready().await.unwrap();
                let r = send.send_request(req).await.unwrap();
                assert_eq!(r.status(), 200);
                r.into_body().collect().await.unwrap();
                lat.push(t.elapsed().as_micros() as f64);
            }
            lat
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let el = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / el,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// A tailnet node that forwards bytes on `port` to `upstream` (baseline).
async fn forwarder(node: &Node, port: u16, upstream: SocketAddr) {
    let ln = node.listen(port).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = ln.accept().await {
            tokio::spawn(async move {
                let mut u = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut u).await;
            });
        }
    });
}

fn row(name: &str, via: Figures, direct: Figures) {
    println!(
        "{:<28} {:>10.0} {:>10.0} {:>7.2}   {:>8.0} {:>8.0} {:>7.2}   {:>8.0} {:>8.0} {:>7.2}",
        name,
        via.rps,
        direct.rps,
        via.rps / direct.rps,
        via.p50_us,
        direct.p50_us,
        via.p50_us / direct.p50_us,
        via.p99_us,
        direct.p99_us,
        via.p99_us / direct.p99_us
    );
}

/// `n` websockets to `addr` (`/ws/term`), kept open.
async fn open_ws(
    addr: SocketAddr,
    n: usize,
) -> Vec<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (w, _) =
            tokio_tungstenite::client_async_with_config("ws://localhost/ws/term", s, Some(cfg))
                .await
                .unwrap();
        v.push(w);
    }
    v
}

/// The RSS (KiB) that `n` idle websockets add, through tailpass (`via`)
/// first, then straight to the echo server (`direct`: the second
/// measurement can reuse memory the allocator kept, so tailpass's share
/// comes out high rather than low). Client and echo server use small
/// buffers so they do not drown tailpass's share.
async fn ws_memory(via: SocketAddr, direct: SocketAddr, n: usize) -> (i64, i64) {
    let base = rss_kib();
    let via_ws = open_ws(via, n).await;
    let via_kib = rss_kib() - base;
    drop(via_ws);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib();
    let direct_ws = open_ws(direct, n).await;
    let direct_kib = rss_kib() - base;
    std::mem::forget(direct_ws);
    (via_kib, direct_kib)
}

async fn run() {
    let secs = env_num("TAILPASS_BENCH_SECS", 5);
    let conns = env_num("TAILPASS_BENCH_CONNS", 16) as usize;
    let n_ws = env_num("TAILPASS_BENCH_WS", 1000) as usize;

    let net = TestNet::start();
    let hello = tailpass_testkit::upstream::start_hello().await;
    let ws = tailpass_testkit::upstream::start_ws_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .loopback("127.0.0.1:0")
        .route(RouteSpec::new("/", format!("http://{hello}")).access("public"))
        .route(RouteSpec::new("/ws", format!("http://{ws}")).access("public"))
        .build();
    let gw = Gateway::start(Config::parse(&toml, &|_| None).unwrap(), Options::default())
        .await
        .unwrap();
    let lb = gw.loopback.unwrap();
    let host = gw.nodes[0].fqdn.clone();
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    let (client, fwd) = tokio::join!(net.node("client"), net.node("fwd"));
    net.settle(&[&gw.nodes[0].node, &client, &fwd]).await;
    forwarder(&fwd, 8080, hello).await;
    let fwd_host = net.fqdn("fwd");

    // Warm-up, then measure each pair back to back.
    let tcp =
        |a: SocketAddr| move || async move { tokio::net::TcpStream::connect(a).await.unwrap() };
    load(conns, 1, "localhost", tcp(lb)).await;
    let lo_via = load(conns, secs, "localhost", tcp(lb)).await;
    let lo_direct = load(conns, secs, "localhost", tcp(hello)).await;

    let tls_open = || {
        let (client, host, ca) = (client.clone(), host.clone(), ca.clone());
        async move { tailpass_testkit::client::connect(&client, &host, 443, &ca, &[b"http/1.1"]).await }
    };
    let plain_open = || {
        let (client, h) = (client.clone(), fwd_host.clone());
        async move { client.dial(&format!("{h}:8080")).await.unwrap() }
    };
    load(conns, 1, &host, tls_open).await;
    load(conns, 1, &fwd_host, plain_open).await;
    let tn_via = load(conns, secs, &host, tls_open).await;
    let tn_direct = load(conns, secs, &fwd_host, plain_open).await;

    let (via_kib, direct_kib) = ws_memory(lb, ws, n_ws).await;

    println!(
        "gateway benchmark ({conns} connections x {secs} s per measurement; allowed GET, 5-byte body)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>7}   {:>8} {:>8} {:>7}   {:>8} {:>8} {:>7}",
        "",
        "req/s via",
        "direct",
        "ratio",
        "p50 us",
        "direct",
        "ratio",
        "p99 us",
        "direct",
        "ratio"
    );
    row("loopback (plain HTTP)", lo_via, lo_direct);
    row("tailnet (HTTPS vs raw fwd)", tn_via, tn_direct);
    println!(
        "idle websockets: {n_ws} through tailpass add {via_kib} KiB RSS ({:.1} KiB each), \
         {n_ws} direct add {direct_kib} KiB ({:.1} KiB each); tailpass's own share ≈ {:.1} KiB per websocket",
        via_kib as f64 / n_ws as f64,
        direct_kib as f64 / n_ws as f64,
        (via_kib - direct_kib) as f64 / n_ws as f64
    );
    std::mem::forget(gw);
}

fn main() {
    tailpass_testkit::bench_main(run());
}
