//! The entry proxy (src/entry.rs) on the offline test tailnet, the websocket
//! demo page upstream, and headless Chromium going through both
//! (tests/browser/login.mjs in smoke mode).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tailpass::tailnet::{Listener, Node};
use tailpass_testkit::chrome::{artifacts_dir_path, browser_available, run_login_mjs};
use tailpass_testkit::entry::serve_proxy;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, TestNet, upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Reads a response head byte by byte (what follows belongs to the tunnel).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = s.read(&mut b).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends `raw` (a request with `Connection: close`) and reads the whole answer.
async fn exchange(proxy: std::net::SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("proxy answer within 30 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Echoes every byte back as it comes; half-closes after the client does.
fn spawn_raw_echo(ln: Listener) {
    tokio::spawn(async move {
        while let Ok((s, _)) = ln.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// A tiny HTTP server describing the request it got.
fn spawn_hello(ln: Listener) {
    use hyper::body::Incoming;
    tokio::spawn(async move {
        while let Ok((s, _)) = ln.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let h = req.headers();
                    let body = format!(
                        "hello {} host={} proxy-connection={} x-hop={} x-keep={}",
                        req.uri(),
                        h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("-"),
                        h.contains_key("proxy-connection"),
                        h.contains_key("x-hop"),
                        h.contains_key("x-keep"),
                    );
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// Forwards every connection accepted on the tailnet to `to` on 127.0.0.1.
fn spawn_forwarder(ln: Listener, to: std::net::SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = ln.accept().await {
            tokio::spawn(async move {
                let Ok(mut u) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut s, &mut u).await;
            });
        }
    });
}

struct Proxy {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_proxy(node: &Node) -> Proxy {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve_proxy(l, node.clone(), rx));
    Proxy { addr, stop, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_tunnels_and_forwards_into_the_tailnet() {
    let _permit = tailpass_testkit::light().await;
    let net = TestNet::start();
    let (srv, cli) = tokio::join!(net.node("srv"), net.node("cli"));
    net.settle(&[&srv, &cli]).await;
    spawn_raw_echo(srv.listen(7000).await.unwrap());
    spawn_hello(srv.listen(80).await.unwrap());
    let proxy = start_proxy(&cli).await;
    let host = net.fqdn("srv");

    // CONNECT: a tunnel to the raw echo; bytes both ways, then half-close.
    let mut t = TcpStream::connect(proxy.addr).await.unwrap();
    t.write_all(format!("CONNECT {host}:7000 HTTP/1.1\r\nHost: {host}:7000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut t).await;
    assert!(
        head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
        "{head}"
    );
    t.write_all(b"ping").await.unwrap();
    let mut r = [0u8; 4];
    t.read_exact(&mut r).await.unwrap();
    assert_eq!(&r, b"ping");
    let big: Vec<u8> = (0..(256 * 1024)).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = t.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&big).await.unwrap();
        wr.shutdown().await.unwrap(); // half-close travels through the tunnel
        big
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .expect("echo ends after the half-close")
        .unwrap();
    let big = writer.await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big, "tunnelled bytes differ");

    // Absolute-form GET: forwarded in origin form, Host from the URL,
    // hop-by-hop headers (including those named in Connection) removed.
    let resp = exchange(
        proxy.addr,
        &format!(
            "GET http://{host}/hello?x=1 HTTP/1.1\r\nHost: {host}\r\n\
             Proxy-Connection: keep-alive\r\nX-Hop: 1\r\nX-Keep: 1\r\n\
             Connection: close, x-hop\r\n\r\n"
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.ends_with(&format!(
            "hello /hello?x=1 host={host} proxy-connection=false x-hop=false x-keep=true"
        )),
        "{resp}"
    );
    // Port in the URL, and a keep-alive client connection with two requests.
    let mut k = TcpStream::connect(proxy.addr).await.unwrap();
    for path in ["/one", "/two"] {
        k.write_all(
            format!("GET http://{host}:80{path} HTTP/1.1\r\nHost: {host}:80\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut k).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        let mut body = vec![0u8; len];
        k.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.starts_with(&format!("hello {path} host={host}:80")),
            "{body}"
        );
    }
    drop(k);

    // Origin-form: not a proxy request.
    let resp = exchange(
        proxy.addr,
        "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    assert!(resp.contains("this is a proxy"), "{resp}");

    // https:// in absolute form needs CONNECT.
    let resp = exchange(
        proxy.addr,
        &format!("GET https://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");

    // Malformed CONNECT targets.
    for target in [host.clone(), format!("{host}:0"), format!("u@{host}:7000")] {
        let resp = exchange(
            proxy.addr,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 400 "),
            "CONNECT {target}: {resp}"
        );
    }

    // Not on the tailnet: refused before any dial (no DNS, no traffic).
    for target in ["example.com:443", "10.0.0.1:80", "127.0.0.1:22"] {
        let resp = exchange(
            proxy.addr,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 403 "),
            "CONNECT {target}: {resp}"
        );
        assert!(resp.contains("not on the tailnet"), "{resp}");
    }
    let resp = exchange(
        proxy.addr,
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");

    // Unreachable: a tailnet port nobody listens on, by name and by IP.
    // (Unknown names are not tried: tsnet would ask the host's resolver.)
    let srv_ip = srv.status().await.unwrap().ip().unwrap();
    for target in [format!("{host}:7001"), format!("{srv_ip}:7001")] {
        let t0 = Instant::now();
        let resp = exchange(
            proxy.addr,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 502 "),
            "CONNECT {target}: {resp}"
        );
        assert!(resp.contains("cannot reach"), "{resp}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }
    // The tunnel by IP works too.
    let mut t = TcpStream::connect(proxy.addr).await.unwrap();
    t.write_all(
        format!("CONNECT {srv_ip}:7000 HTTP/1.1\r\nHost: {srv_ip}:7000\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_head(&mut t).await.starts_with("HTTP/1.1 200 "));
    t.write_all(b"by ip").await.unwrap();
    let mut r = [0u8; 5];
    t.read_exact(&mut r).await.unwrap();
    assert_eq!(&r, b"by ip");
    drop(t);

    // Stop: open tunnels close, the task ends, the port is closed.
    let mut t = TcpStream::connect(proxy.addr).await.unwrap();
    t.write_all(format!("CONNECT {host}:7000 HTTP/1.1\r\nHost: {host}:7000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut t).await.starts_with("HTTP/1.1 200 "));
    proxy.stop.send(true).unwrap();
    let mut rest = Vec::new();
    // EOF or a reset: either way the tunnel is gone.
    let _ = tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut rest))
        .await
        .expect("tunnel closed on stop");
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("serve_proxy returns on stop")
        .unwrap();
    assert!(TcpStream::connect(proxy.addr).await.is_err());

    srv.close().await.unwrap();
    cli.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_page_serves_its_page_and_echoes() {
    let addr = upstream::start_ws_page().await;
    let page = exchange(
        addr,
        "GET /app/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("content-type: text/html"), "{page}");
    assert!(page.contains("<title>ws page</title>"), "{page}");
    assert!(page.contains("id=\"status\"") && page.contains("id=\"closed\""));
    // Not an upgrade: refused.
    let plain = exchange(
        addr,
        "GET /app/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");

    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/app/ws"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for m in ["hello", "again"] {
        ws.send(Message::text(m)).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), m);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[1u8, 2, 3]
    );
    ws.close(None).await.unwrap();
    // The server answers the close and ends the stream.
    while let Some(Ok(_)) = ws.next().await {}
}

/// Chromium, through the entry proxy and the tailnet, loads a page served
/// by another node over plain HTTP and talks websocket to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reaches_a_tailnet_page_through_the_entry_proxy() {
    const TEST: &str = "chromium_reaches_a_tailnet_page_through_the_entry_proxy";
    if !browser_available(TEST) {
        return;
    }
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let (srv, cli) = tokio::join!(net.node("srv"), net.node("cli"));
    net.settle(&[&srv, &cli]).await;
    spawn_forwarder(
        srv.listen(80).await.unwrap(),
        upstream::start_ws_page().await,
    );
    let proxy = start_proxy(&cli).await;
    let start_url = format!("http://{}/page/", net.fqdn("srv"));

    let v = run_login_mjs(
        TEST,
        &[
            ("MODE", "smoke".into()),
            ("PROXY", format!("http://{}", proxy.addr)),
            ("START_URL", start_url.clone()),
        ],
    )
    .await;
    assert_eq!(v["title"], "ws page", "{v}");
    assert_eq!(v["status"], "echo: hello", "{v}");
    assert_eq!(v["steps"][0]["url"], start_url.as_str(), "{v}");
    let shot = v["steps"][0]["screenshot"].as_str().expect("a screenshot");
    assert!(artifacts_dir_path(TEST).join(shot).is_file(), "{shot}");

    proxy.stop.send(true).unwrap();
    srv.close().await.unwrap();
    cli.close().await.unwrap();
}

/// Chromium, through the entry proxy, opens a page behind a real tailpass
/// gateway node over HTTPS (local-CA certificate, CONNECT + TLS) and talks
/// wss to it: the path the login walk takes, minus the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reaches_the_gateway_over_https_and_wss() {
    const TEST: &str = "chromium_reaches_the_gateway_over_https_and_wss";
    if !browser_available(TEST) {
        return;
    }
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let page = upstream::start_ws_page().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .route(RouteSpec::new("/app", format!("http://{page}")))
        .build();
    let config =
        tailpass::config::Config::parse(&toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let (gw, cli) = tokio::join!(
        tailpass::server::Gateway::start(config, tailpass::server::Options::default()),
        net.node("cli")
    );
    let gw = gw.unwrap();
    net.settle(&[&gw.nodes[0].node, &cli]).await;
    let proxy = start_proxy(&cli).await;
    let start_url = format!("https://{}/app/", gw.nodes[0].fqdn);

    let v = run_login_mjs(
        TEST,
        &[
            ("MODE", "smoke".into()),
            ("PROXY", format!("http://{}", proxy.addr)),
            ("START_URL", start_url.clone()),
        ],
    )
    .await;
    assert_eq!(v["title"], "ws page", "{v}");
    assert_eq!(v["status"], "echo: hello", "{v}");
    assert_eq!(v["steps"][0]["url"], start_url.as_str(), "{v}");

    proxy.stop.send(true).unwrap();
    gw.shutdown().await;
    cli.close().await.unwrap();
}
