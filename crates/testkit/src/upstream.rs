//! Real upstream servers for gateway tests, on 127.0.0.1:
//! - an HTTP echo that answers JSON describing the request it received;
//! - `/sse` on the same server: a server-sent-events stream;
//! - a websocket echo server (tokio-tungstenite);
//! - a websocket demo page for browsers: HTML whose script talks to a
//!   websocket echo next to it, on one server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Binds 127.0.0.1:0 and runs `per_conn` for every accepted connection;
/// returns the address.
async fn serve_loopback<F, Fut>(per_conn: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(per_conn(s));
        }
    });
    addr
}

/// Starts the HTTP echo (+ SSE) server; returns its address.
pub async fn start_echo() -> SocketAddr {
    serve_loopback(|s| async move {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), service_fn(echo))
            .await;
    })
    .await
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    if req.uri().path().ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if req.uri().path().ends_with("/sse") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                let ev = format!("id: {i}\ndata: tick {i}\n\n");
                if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap());
    }
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_insert_with(Vec::new)
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let j = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body.len(),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(j.to_string())).boxed())
        .unwrap())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Starts a websocket echo server; returns its address.
pub async fn start_ws_echo() -> SocketAddr {
    serve_loopback(|s| async move {
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() || m.is_binary() {
                if ws.send(m).await.is_err() {
                    return;
                }
            } else if m.is_close() {
                return;
            }
        }
    })
    .await
}

/// An address nothing listens on (for "upstream down").
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Starts a minimal upstream answering every request with "hello" (for
/// benchmarks: as little upstream work as possible).
pub async fn start_hello() -> SocketAddr {
    serve_loopback(|s| async move {
        let _ = s.set_nodelay(true);
        let svc = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// The demo page of [`start_ws_page`]. Its script opens a websocket to `ws`
/// in the page's own directory (`/app/` → `/app/ws`), over `wss:` when the
/// page came over HTTPS, sends `hello`, and shows the reply in `#status`
/// (`echo: hello`); when the socket closes, `#closed` reads `closed CODE`.
pub const WS_PAGE_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ws page</title></head>
<body>
<h1>ws page</h1>
<p>status: <span id="status">connecting</span></p>
<p>socket: <span id="closed"></span></p>
<script>
(function () {
  var dir = location.pathname.replace(/[^\/]*$/, '');
  var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + dir + 'ws';
  var status = document.getElementById('status');
  var closed = document.getElementById('closed');
  status.setAttribute('data-url', url);
  var ws = new WebSocket(url);
  window.wsPage = ws;
  ws.onopen = function () { status.textContent = 'open'; ws.send('hello'); };
  ws.onmessage = function (e) { status.textContent = 'echo: ' + e.data; };
  ws.onerror = function () { status.setAttribute('data-error', 'yes'); };
  ws.onclose = function (e) { closed.textContent = 'closed ' + e.code; };
})();
</script>
</body></html>
"#;

/// Starts the websocket demo page server on 127.0.0.1; returns its address.
/// Any GET path not ending in `/ws` answers [`WS_PAGE_HTML`]; a path ending
/// in `/ws` takes a websocket upgrade and echoes text and binary messages.
pub async fn start_ws_page() -> SocketAddr {
    serve_loopback(|s| async move {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), service_fn(ws_page))
            .await;
    })
    .await
}

async fn ws_page(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    use hyper::header;
    let text = |status: u16, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    if req.method() != hyper::Method::GET {
        return Ok(text(405, "GET only\n"));
    }
    if !req.uri().path().ends_with("/ws") {
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from_static(WS_PAGE_HTML.as_bytes())))
            .unwrap());
    }
    let h = req.headers();
    let is_ws = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws) else {
        return Ok(text(426, "websocket upgrade required\n"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        // A close frame is answered by tungstenite itself; the stream then ends.
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(101)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

/// Starts an upstream that switches to *any* protocol a request's `Upgrade`
/// header names (the careless backend an `h2c` smuggling attack needs).
/// Written on raw TCP because no HTTP library switches to arbitrary
/// protocols. A request without `Upgrade` is answered `200` with body
/// `PLAIN\n` followed by the request head it received. With `Upgrade: X`
/// it answers `101` with `Upgrade: X`, then reads one more request head from
/// the switched connection and answers it `200` with body `TUNNELLED\n` and
/// that head; for `websocket` it echoes raw bytes instead.
pub async fn start_any_upgrade() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn head(s: &mut tokio::net::TcpStream) -> Option<String> {
        let mut h = Vec::new();
        while !h.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_err() || h.len() > 65536 {
                return None;
            }
            h.push(b[0]);
        }
        Some(String::from_utf8_lossy(&h).into_owned())
    }
    fn ok(body: String) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }
    serve_loopback(|mut s| async move {
        let Some(h) = head(&mut s).await else { return };
        let upgrade = h.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("upgrade")
                .then(|| v.trim().to_string())
        });
        let Some(proto) = upgrade else {
            let _ = s.write_all(ok(format!("PLAIN\n{h}")).as_bytes()).await;
            return;
        };
        let sw = format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n"
        );
        if s.write_all(sw.as_bytes()).await.is_err() {
            return;
        }
        if proto.eq_ignore_ascii_case("websocket") {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        if let Some(inner) = head(&mut s).await {
            let _ = s
                .write_all(ok(format!("TUNNELLED\n{inner}")).as_bytes())
                .await;
        }
    })
    .await
}
