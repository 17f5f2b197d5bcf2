//! Tailnet upstreams (issue #14): a route's upstream on ANOTHER node of the
//! test tailnet ("nas", a tsnet node in this process serving plain HTTP and
//! a websocket echo), dialed through tailpass's own node — by short name,
//! by MagicDNS name and by tailnet address — and routes pinned with
//! `upstream_node` / `upstream_tags`: a wrong pin is a 502 and the nas
//! server reads no byte of the request; a right pin passes.
//!
//! The tailpass host has no tailscaled and its resolver knows none of these
//! names: only the tsnet dial can reach them.
//!
//! Two gateway nodes: an every-node route dials through the node the
//! request came in on, a node's own route through its node (the nas asks
//! WhoIs who called).
//!
//! Not tested end to end: `https://` tailnet upstreams. Their TLS checks
//! the public web roots (ts.net certificates are Let's Encrypt's), and the
//! offline test tailnet has no such certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tailnet::{Node, TailnetStream};
use tailpass_testkit::client::H1;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, Section, TestNet, logs};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

/// What a nas listener saw: connections accepted and request bytes read.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    bytes: AtomicUsize,
}

impl Seen {
    fn now(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// A stream that counts the bytes read from it.
struct Counted {
    inner: TailnetStream,
    seen: Arc<Seen>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.seen.bytes.fetch_add(n, Ordering::SeqCst);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves HTTP on the nas node's `port`: every answer names the path and
/// the node that asked (WhoIs on the nas side), so the test sees the
/// request came through tailpass's node.
async fn serve_http(nas: &Node, port: u16) -> Arc<Seen> {
    let l = nas.listen(port).await.unwrap();
    let seen = Arc::new(Seen::default());
    let (nas, counts) = (nas.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let io = TokioIo::new(Counted {
                inner: s,
                seen: counts.clone(),
            });
            let nas = nas.clone();
            let svc = service_fn(move |req| answer(nas.clone(), peer, req));
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
        }
    });
    seen
}

async fn answer(
    nas: Node,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let caller = match nas.whois(peer).await {
        Ok(w) => w.node.name,
        Err(e) => format!("unknown ({e})"),
    };
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap_or("?").to_string());
    let body = format!(
        "nas answers {} for {caller} (host {host:?})",
        req.uri().path()
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// A websocket echo on the nas node's `port`.
async fn serve_ws_echo(nas: &Node, port: u16) {
    let l = nas.listen(port).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Waits until `node` sees `peer` with exactly `tags`.
async fn wait_for_tags(node: &Node, peer: &str, tags: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = node.status().await.unwrap();
        if st.peer(peer).is_some_and(|p| p.tags == tags) {
            return;
        }
        assert!(Instant::now() < deadline, "{peer} never showed {tags:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The routes: by short name (said to be on the tailnet), by MagicDNS
/// name and by address (on the tailnet by default), a websocket, and four
/// pinned routes to a second nas port whose reads are counted.
fn routes(config: ConfigBuilder, fqdn: &str, ip: &str) -> ConfigBuilder {
    let pinned = |path: &str| RouteSpec::new(path, "http://nas:5001");
    config
        .route(RouteSpec::new("/short", "http://nas:5000").upstream_via("tailnet"))
        .route(RouteSpec::new("/fqdn", format!("http://{fqdn}:5000")))
        .route(RouteSpec::new("/ip", format!("http://{ip}:5000")))
        .route(RouteSpec::new("/ws", "http://nas:5002").upstream_via("tailnet"))
        .route(pinned("/pin/name").upstream_node("nas"))
        .route(pinned("/pin/fqdn").upstream_node(fqdn))
        .route(pinned("/pin/wrong-name").upstream_node("wrong"))
        .route(pinned("/pin/tag").upstream_tags(&["tag:nas"]))
        .route(pinned("/pin/wrong-tag").upstream_tags(&["tag:other"]))
}

/// GETs `path` through tailpass as alice: status and body.
async fn get(h: &mut H1, host: &str, path: &str) -> (u16, String) {
    let r = h.get(host, path, &[]).await;
    let body = String::from_utf8_lossy(r.body()).into_owned();
    (r.status().as_u16(), body)
}

/// A pinned route that must refuse: 502, the nas listener accepted at most
/// a connection and read no byte of it, and the access line says why.
async fn refused(h: &mut H1, host: &str, path: &str, seen: &Seen) {
    let mark = logs::mark();
    let (_, bytes_before) = seen.now();
    let (status, body) = get(h, host, path).await;
    assert_eq!(status, 502, "{path}: {body}");
    assert!(!body.contains("nas answers"), "{path}: {body}");
    // Give a request that was (wrongly) sent time to be read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.now().1, bytes_before, "{path}: the nas read bytes");
    let lines = logs::access_lines(mark, path);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("status=502") && l.contains("pinned to")),
        "{path}: {lines:?}"
    );
    let warn = logs::since(mark);
    assert!(
        warn.contains("not the pinned node") && warn.contains("is node \\\"nas."),
        "{path}: {warn}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_upstreams_are_dialed_through_the_node_and_pins_hold() {
    let _permit = tailpass_testkit::heavy().await;
    logs::capture();
    let net = TestNet::start();
    let (alice, nas) = tokio::join!(net.node("alice"), net.node("nas"));
    let (open, pinned) = (serve_http(&nas, 5000).await, serve_http(&nas, 5001).await);
    serve_ws_echo(&nas, 5002).await;
    let fqdn = net.fqdn("nas");
    let domain = fqdn.strip_prefix("nas.").unwrap().to_string();
    let ip = nas.status().await.unwrap().ip().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| NodeSpec::on(&net, name, dir.path().join(name)).cert("local-ca");
    let config = ConfigBuilder::new().node(node("gw")).node(node("gw2"));
    let config = routes(config, &fqdn, &ip)
        .route(
            RouteSpec::new("/own", "http://nas:5000")
                .upstream_via("tailnet")
                .node("gw2"),
        )
        .section(Section::new("tailnet").set("domain", domain.as_str()));
    let config = Config::parse(&config.build(), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, Options::default()).await.unwrap();
    net.settle(&[&gw.nodes[0].node, &gw.nodes[1].node, &alice, &nas])
        .await;
    let host = gw.nodes[0].fqdn.clone();
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    let mut h = H1::connect(&alice, &host, &ca).await;

    // (1) The body arrives through tailpass, which dialed as its own node
    // "gw", by short name, MagicDNS name and address alike.
    for (path, upstream_host) in [
        ("/short/a", "nas:5000".to_string()),
        ("/fqdn/b", format!("{fqdn}:5000")),
        ("/ip/c", format!("{ip}:5000")),
    ] {
        let (status, body) = get(&mut h, &host, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body,
            format!(
                "nas answers {path} for {} (host Some({upstream_host:?}))",
                net.fqdn("gw")
            )
        );
    }
    assert!(open.now().0 >= 1, "the nas never accepted a connection");

    // A route on every node dials through the node the request came in
    // on; a node's own route through that node.
    let host2 = gw.nodes[1].fqdn.clone();
    let ca2 = std::fs::read_to_string(dir.path().join("gw2/local-ca/ca.pem")).unwrap();
    let mut h2 = H1::connect(&alice, &host2, &ca2).await;
    for path in ["/short/d", "/own/e"] {
        let (status, body) = get(&mut h2, &host2, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let want = format!("nas answers {path} for {} (", net.fqdn("gw2"));
        assert!(body.starts_with(&want), "{path}: {body}");
    }

    // (2) A websocket through tailpass to the nas echoes.
    let tls = tailpass_testkit::client::connect(&alice, &host, 443, &ca, &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws/echo"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for msg in ["hello nas", &"y".repeat(70_000)] {
        ws.send(Message::text(msg)).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();

    // (4) Right name pins pass; (3) a wrong name, a tag the node lacks,
    // and any tag on an untagged node are refused before a byte is sent.
    for path in ["/pin/name/x", "/pin/fqdn/x"] {
        let (status, body) = get(&mut h, &host, path).await;
        assert_eq!(
            (status, body.starts_with("nas answers")),
            (200, true),
            "{path}: {body}"
        );
    }
    for path in ["/pin/wrong-name/x", "/pin/wrong-tag/x", "/pin/tag/x"] {
        refused(&mut h, &host, path, &pinned).await;
    }

    // Tagged tag:nas, the tag pin passes; another tag is still refused.
    net.set_tags("nas", &["tag:nas"]);
    wait_for_tags(&gw.nodes[0].node, "nas", &["tag:nas"]).await;
    let (status, body) = get(&mut h, &host, "/pin/tag/y").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("nas answers /pin/tag/y for "), "{body}");
    refused(&mut h, &host, "/pin/wrong-tag/y", &pinned).await;

    let m = gw.metrics().render();
    assert!(
        m.contains(r#"tailpass_upstream_errors_total{route="/pin/wrong-tag",kind="pin"} 2"#),
        "{m}"
    );
    gw.shutdown().await;
}
