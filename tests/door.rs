//! The door never falls (security invariant 10), on the test tailnet:
//!
//! - the shipped binary, run with a small descriptor limit, is driven into
//!   EMFILE; every listener (tailnet HTTPS, :80, Funnel, loopback, public)
//!   logs it at WARN with a count, backs off instead of spinning, `/healthz`
//!   says 503 naming the listener, and all serve again once descriptors are
//!   free;
//! - silent, trickling and idle connections are closed within their
//!   timeouts on the tailnet, loopback and public listeners, while an idle
//!   websocket stays; a long upload that keeps moving succeeds although it
//!   outlasts `response_timeout`, a stalled one gets 408;
//! - one node past its connection cap is refused while another is served.
//!
//! HTTP/2 floods are in `tests/http2.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass_testkit::binary::{Tailpass, admin_get};
use tailpass_testkit::client::H1;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, Section, TestNet, free_port, upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PUBLIC_HOST: &str = "blog.tailpass.test";

/// Self-signed certificate files for the public listener; returns the PEM.
fn public_cert(dir: &std::path::Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec![PUBLIC_HOST.to_string()]).unwrap();
    std::fs::write(dir.join("public.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("public.key"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.pem()
}

/// How long until the server closes `io`; `None` if it is still open
/// after `limit`. Whatever the server sends is read and dropped.
async fn closed_after<S: AsyncRead + Unpin>(io: &mut S, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), io.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a request head one header line per second, for at most `lines`
/// lines, and reports when the server closed the connection.
async fn slowloris<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    host: &str,
    lines: usize,
) -> Option<Duration> {
    let (mut r, mut w) = tokio::io::split(io);
    let host = host.to_string();
    let writer = tokio::spawn(async move {
        let _ = w
            .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
            .await;
        for i in 0..lines {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if w.write_all(format!("X-Trickle-{i}: x\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let closed = closed_after(&mut r, Duration::from_secs(lines as u64 + 5)).await;
    writer.abort();
    closed
}

/// One keep-alive request, then silence: when did the server close?
async fn idle_after_one_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
    path: &str,
) -> Option<Duration> {
    io.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read the whole response (a small JSON body), then wait.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"body_len\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    closed_after(&mut io, Duration::from_secs(20)).await
}

fn within(what: &str, took: Option<Duration>, min: Duration, max: Duration) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after the limit"));
    assert!(
        took >= min && took <= max,
        "{what}: closed after {took:?}, expected between {min:?} and {max:?}"
    );
}

/// A request body of `chunks` chunks of 64 KiB, one every `every`; the
/// body stops without ending after `stall_after` chunks if given.
fn slow_body(
    chunks: usize,
    every: Duration,
    stall_after: Option<usize>,
) -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if stall_after == Some(i) {
                // Hold the body open, sending nothing more.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'u'; 64 * 1024]))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_close_what_waits_and_keep_what_moves() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let (alice, bob) = tokio::join!(net.node("alice"), net.node("bob"));
    let echo = upstream::start_echo().await;
    let ws = upstream::start_ws_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let public_pem = public_cert(dir.path());
    let (loop_port, pub_port) = (free_port(), free_port());
    let echo = format!("http://{echo}");
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .loopback(&format!("127.0.0.1:{loop_port}"))
        .section(public_section(dir.path(), pub_port))
        .section(
            Section::new("limits")
                .set("handshake_timeout", "2s")
                .set("header_read_timeout", "3s")
                .set("idle_timeout", "4s")
                .set("body_idle_timeout", "3s")
                .set("max_connections_per_source", 6),
        )
        .route(RouteSpec::new("/", &echo).access("public"))
        .route(RouteSpec::new("/ws", format!("http://{ws}")))
        .route(RouteSpec::new("/upload", &echo).set("response_timeout", "2s"))
        .build();
    let config = Config::parse(&toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, Options::default()).await.unwrap();
    net.settle(&[&gw.nodes[0].node, &alice, &bob]).await;
    let host = gw.nodes[0].fqdn.clone();
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    let loopback: SocketAddr = format!("127.0.0.1:{loop_port}").parse().unwrap();
    let public: SocketAddr = format!("127.0.0.1:{pub_port}").parse().unwrap();
    let tls = async |node: &tailpass::tailnet::Node| {
        tailpass_testkit::client::connect(node, &host, 443, &ca, &[b"http/1.1"]).await
    };
    let secs = Duration::from_secs;

    // A 75 s upload that keeps moving (a chunk every second) passes,
    // although the route's response_timeout is 2 s: it counts from the end
    // of the body. Runs while everything else is checked.
    let upload = {
        let (alice, host, ca) = (alice.clone(), host.clone(), ca.clone());
        tokio::spawn(async move {
            let mut h = H1::connect(&alice, &host, &ca).await;
            let req = http::Request::post("/upload")
                .header("host", &host)
                .body(slow_body(75, secs(1), None))
                .unwrap();
            let t = Instant::now();
            let r = h.send_stream(req).await;
            (r, t.elapsed())
        })
    };

    // A websocket idle for longer than every timeout stays open.
    let ws_task = {
        let stream = tls(&alice).await;
        let host = host.clone();
        tokio::spawn(async move {
            let (mut sock, _) =
                tokio_tungstenite::client_async(format!("wss://{host}/ws/idle"), stream)
                    .await
                    .unwrap();
            tokio::time::sleep(secs(12)).await;
            sock.send(tokio_tungstenite::tungstenite::Message::text("still here"))
                .await
                .unwrap();
            let back = tokio::time::timeout(secs(10), sock.next())
                .await
                .expect("websocket answer")
                .unwrap()
                .unwrap();
            back.into_text().unwrap().to_string()
        })
    };

    // Tailnet: no ClientHello → handshake timeout (2 s).
    let mut raw = alice.dial(&format!("{host}:443")).await.unwrap();
    within(
        "tailnet, no ClientHello",
        closed_after(&mut raw, secs(15)).await,
        secs(1),
        secs(6),
    );
    // Tailnet: TLS, then no request → first request due within 2 + 3 s.
    let mut t = tls(&alice).await;
    within(
        "tailnet, TLS but no request",
        closed_after(&mut t, secs(15)).await,
        secs(4),
        secs(9),
    );
    // Tailnet: a head trickling in → header read timeout (3 s).
    within(
        "tailnet, slowloris",
        slowloris(tls(&alice).await, &host, 12).await,
        secs(2),
        secs(7),
    );
    // Tailnet: keep-alive idle → 4 s.
    within(
        "tailnet, idle keep-alive",
        idle_after_one_request(tls(&alice).await, &host, "/").await,
        secs(3),
        secs(8),
    );

    // Loopback: silent TCP, slowloris, idle keep-alive.
    let mut s = tokio::net::TcpStream::connect(loopback).await.unwrap();
    within(
        "loopback, silent",
        closed_after(&mut s, secs(15)).await,
        secs(4),
        secs(9),
    );
    let s = tokio::net::TcpStream::connect(loopback).await.unwrap();
    within(
        "loopback, slowloris",
        slowloris(s, "localhost", 12).await,
        secs(2),
        secs(7),
    );
    let s = tokio::net::TcpStream::connect(loopback).await.unwrap();
    within(
        "loopback, idle keep-alive",
        idle_after_one_request(s, "localhost", "/").await,
        secs(3),
        secs(8),
    );

    // Public: no ClientHello, slowloris and idle keep-alive over TLS.
    let mut s = tokio::net::TcpStream::connect(public).await.unwrap();
    within(
        "public, no ClientHello",
        closed_after(&mut s, secs(15)).await,
        secs(1),
        secs(6),
    );
    let public_tls = async || {
        let s = tokio::net::TcpStream::connect(public).await.unwrap();
        tailpass_testkit::client::tls_over(s, PUBLIC_HOST, &public_pem, &[b"http/1.1"]).await
    };
    within(
        "public, slowloris",
        slowloris(public_tls().await, PUBLIC_HOST, 12).await,
        secs(2),
        secs(7),
    );
    within(
        "public, idle keep-alive",
        idle_after_one_request(public_tls().await, PUBLIC_HOST, "/").await,
        secs(3),
        secs(8),
    );

    // A stalled upload is cut by the body idle timeout (3 s) with 408.
    let mut h = H1::connect(&bob, &host, &ca).await;
    let req = http::Request::post("/upload")
        .header("host", &host)
        .body(slow_body(10, Duration::from_millis(100), Some(3)))
        .unwrap();
    let t0 = Instant::now();
    let r = h.send_stream(req).await;
    assert_eq!(r.status(), 408, "{:?}", String::from_utf8_lossy(r.body()));
    assert!(
        t0.elapsed() >= secs(3) && t0.elapsed() < secs(10),
        "{:?}",
        t0.elapsed()
    );

    // Per source: alice holds her 6 connections (handshakes pending);
    // the 7th is refused at once, while bob is served.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(alice.dial(&format!("{host}:443")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seventh = alice.dial(&format!("{host}:443")).await.unwrap();
    let refused = closed_after(&mut seventh, secs(1)).await;
    assert!(refused.is_some(), "alice's 7th connection was not refused");
    let mut hb = H1::connect(&bob, &host, &ca).await;
    assert_eq!(hb.get(&host, "/", &[]).await.status(), 200, "bob is served");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ha = H1::connect(&alice, &host, &ca).await;
    assert_eq!(ha.get(&host, "/", &[]).await.status(), 200, "alice again");
    let m = gw.metrics().render();
    assert!(
        m.contains(
            r#"tailpass_connections_refused_total{listener="gw https",reason="source_full"}"#
        ),
        "{m}"
    );

    assert_eq!(ws_task.await.unwrap(), "still here");
    let (r, took) = upload.await.unwrap();
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(r.body()));
    let j: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(j["body_len"], 75 * 64 * 1024);
    assert!(took >= secs(70), "the upload took {took:?}");
    gw.shutdown().await;
}

/// Node `gw` (Funnel), the loopback, admin and public listeners on
/// `ports`, `[limits] fd_reserve`, and one public route over `echo`.
fn door_config(
    net: &TestNet,
    dir: &std::path::Path,
    ports: (u16, u16, u16),
    echo: SocketAddr,
    fd_reserve: i64,
) -> String {
    let (loop_port, admin_port, pub_port) = ports;
    ConfigBuilder::new()
        .section(Section::new("tailnet").set("control_url", net.control_url.as_str()))
        .node(
            NodeSpec::new("gw")
                .state_dir(dir.join("gw"))
                .ephemeral(true)
                .cert("local-ca")
                .set("funnel", true),
        )
        .loopback(&format!("127.0.0.1:{loop_port}"))
        .admin(&format!("127.0.0.1:{admin_port}"))
        .section(public_section(dir, pub_port))
        .section(Section::new("limits").set("fd_reserve", fd_reserve))
        .route(RouteSpec::new("/", format!("http://{echo}")).access("public"))
        .build()
}

/// `[public]` on 127.0.0.1:`port` for [`PUBLIC_HOST`], its certificate and
/// key from `dir` (`public.pem`, `public.key`).
fn public_section(dir: &std::path::Path, port: u16) -> Section {
    let file = |name: &str| dir.join(name).display().to_string();
    Section::new("public")
        .set("listen", format!("127.0.0.1:{port}"))
        .list("domains", &[PUBLIC_HOST])
        .table(
            "cert",
            &[
                ("cert_file", &file("public.pem")),
                ("key_file", &file("public.key")),
            ],
        )
}

/// One GET over any stream; the status, or `None` if the connection broke.
async fn try_status<S>(io: S, host: &str) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        H1::try_over(io).await?.try_get(host, "/").await
    })
    .await
    .ok()??;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_survives_running_out_of_descriptors() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let alice = net.node("alice").await;
    let echo = upstream::start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let public_pem = public_cert(dir.path());
    let ports = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("tailpass.toml");
    // fd_reserve 0: let the process really run out, to see every accept loop
    // survive it.
    std::fs::write(&cfg, door_config(&net, dir.path(), ports, echo, 0)).unwrap();
    let tp = Tailpass::start_limited(&cfg, Some(320));
    let loopback: SocketAddr = format!("127.0.0.1:{}", ports.0).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports.1).parse().unwrap();
    let public: SocketAddr = format!("127.0.0.1:{}", ports.2).parse().unwrap();
    tp.wait_healthy(admin).await;
    let t = Instant::now();
    while alice.status().await.unwrap().peer("gw").is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "gw never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = net.fqdn("gw");
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();

    // Every entry answers, before.
    let via_tailnet = async || {
        let raw = alice.dial(&format!("{host}:443")).await.ok()?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tailpass_testkit::client::try_tls_over(raw, &host, &ca, &[b"http/1.1"]),
        )
        .await
        .ok()??;
        try_status(tls, &host).await
    };
    let via_funnel = async || {
        let raw = tailpass_testkit::try_funnel_dial(&net, &alice, "gw", "203.0.113.9:4444").await?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tailpass_testkit::client::try_tls_over(raw, &host, &ca, &[b"http/1.1"]),
        )
        .await
        .ok()??;
        try_status(tls, &host).await
    };
    let via_port80 = async || {
        let raw = alice.dial(&format!("{host}:80")).await.ok()?;
        try_status(raw, &host).await
    };
    let via_loopback = async || {
        let s = tokio::net::TcpStream::connect(loopback).await.ok()?;
        try_status(s, "localhost").await
    };
    let via_public = async || {
        let s = tokio::net::TcpStream::connect(public).await.ok()?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tailpass_testkit::client::try_tls_over(s, PUBLIC_HOST, &public_pem, &[b"http/1.1"]),
        )
        .await
        .ok()??;
        try_status(tls, PUBLIC_HOST).await
    };
    assert_eq!(via_tailnet().await, Some(200));
    assert_eq!(via_funnel().await, Some(200));
    assert_eq!(via_port80().await, Some(308));
    assert_eq!(via_loopback().await, Some(200));
    assert_eq!(via_public().await, Some(200));

    // Run the process out of descriptors: hold many silent connections.
    let mut hogs = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(loopback).await {
            hogs.push(s);
        }
    }
    tp.wait_log("Too many open files", Duration::from_secs(20))
        .await;
    // Meanwhile every other entry is tried. Most fail; one may slip into a
    // descriptor freed a moment before. None may take a listener down.
    let _ = via_tailnet().await;
    let _ = via_funnel().await;
    let _ = via_port80().await;
    let _ = via_public().await;
    // The admin listener answers on its spare descriptor, and tells the truth.
    let (st, body) = admin_get(admin, "/healthz")
        .await
        .expect("healthz while out of descriptors");
    assert_eq!(st, 503, "{body}");
    assert!(
        body.contains("loopback") && body.contains("Too many open files"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Free them: every listener serves again on its own.
    drop(hogs);
    let t = Instant::now();
    while via_loopback().await != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "loopback never recovered:\n{}",
            tp.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(via_tailnet().await, Some(200));
    assert_eq!(via_funnel().await, Some(200));
    assert_eq!(via_port80().await, Some(308));
    assert_eq!(via_public().await, Some(200));
    let t = Instant::now();
    loop {
        match admin_get(admin, "/healthz").await {
            Some((200, _)) => break,
            other => assert!(
                t.elapsed() < Duration::from_secs(15),
                "still unhealthy: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Logged at WARN once per burst with a count, not once per error.
    let logs = tp.logs();
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("accept failed; backing off"))
        .collect();
    assert!(!warns.is_empty(), "{logs}");
    assert!(warns.iter().all(|l| l.contains("\"WARN\"")), "{warns:?}");
    // The tailnet listener needs descriptors only on the socketpair data
    // path; on the node channel its connections take none, so it has no
    // descriptor errors to survive.
    let mut hit = vec!["loopback", "public"];
    if tailpass_testkit::data_path_for_tests() == tailpass::tailnet::DataPath::SocketPair {
        hit.push("gw https");
    }
    for listener in hit {
        assert!(
            logs.lines().any(
                |l| l.contains("accept") && l.contains(&format!("\"listener\":\"{listener}\""))
            ),
            "no accept warning for {listener}:\n{logs}"
        );
    }
    assert!(
        logs.contains("accepting again after accept errors"),
        "{logs}"
    );
    assert!(
        warns.len() < 50,
        "{} warning lines: a spinning loop",
        warns.len()
    );
    // The loop backed off rather than spin (the old one logged a million
    // errors in six seconds).
    let (_, m) = admin_get(admin, "/metrics").await.unwrap();
    let errors: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"tailpass_accept_errors_total{listener="loopback"} "#))
        .unwrap_or_else(|| panic!("no loopback accept errors counted:\n{m}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..500).contains(&errors), "{errors} accept errors");
    assert!(m.contains("tailpass_fd_limit 320"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_descriptor_limit_new_connections_are_refused_and_open_ones_work() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let echo = upstream::start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    public_cert(dir.path());
    let ports = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("tailpass.toml");
    std::fs::write(&cfg, door_config(&net, dir.path(), ports, echo, 64)).unwrap();
    let tp = Tailpass::start_limited(&cfg, Some(400));
    let loopback: SocketAddr = format!("127.0.0.1:{}", ports.0).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports.1).parse().unwrap();
    tp.wait_healthy(admin).await;
    // A keep-alive connection opened before the pressure.
    let mut open = H1::over(tokio::net::TcpStream::connect(loopback).await.unwrap()).await;
    assert_eq!(open.get("localhost", "/", &[]).await.status(), 200);

    // Connections come steadily (the descriptor count is sampled every
    // 100 ms), far more than fit.
    let mut hogs = Vec::new();
    for _ in 0..450 {
        if let Ok(s) = tokio::net::TcpStream::connect(loopback).await {
            hogs.push(s);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tp.wait_log("refused a connection", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The open connection still works (its upstream socket comes from the
    // reserve), the admin listener answers and says why.
    assert_eq!(open.get("localhost", "/again", &[]).await.status(), 200);
    let (st, body) = admin_get(admin, "/healthz")
        .await
        .expect("healthz under pressure");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("file descriptors"), "{body}");
    let logs = tp.logs();
    assert!(
        !logs.contains("Too many open files"),
        "the reserve was not kept:\n{logs}"
    );
    assert!(logs.contains("\"reason\":\"fd_reserve\""), "{logs}");

    drop(hogs);
    let t = Instant::now();
    loop {
        let s = tokio::net::TcpStream::connect(loopback).await.unwrap();
        if try_status(s, "localhost").await == Some(200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never admitted again:\n{}",
            tp.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, m) = admin_get(admin, "/metrics").await.unwrap();
    assert!(
        m.contains(
            r#"tailpass_connections_refused_total{listener="loopback",reason="fd_reserve"}"#
        ),
        "{m}"
    );
    assert!(m.contains("tailpass_open_fds "), "{m}");
}
