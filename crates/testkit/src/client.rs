//! A real HTTPS client that reaches the gateway over the test tailnet from a
//! client node, trusting the gateway's local CA.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tailpass::tailnet::Node;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// TLS client config trusting `ca_pem`, offering the given ALPN protocols.
pub fn tls_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// TLS over any stream to `host`, trusting `ca_pem`.
pub async fn tls_over<S>(io: S, host: &str, ca_pem: &str, alpn: &[&[u8]]) -> TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn))
        .connect(name, io)
        .await
        .unwrap()
}

/// Opens a TLS connection from `node` to `host:port` over the tailnet.
pub async fn connect(
    node: &Node,
    host: &str,
    port: u16,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> TlsStream<tailpass::tailnet::TailnetStream> {
    let s = node.dial(&format!("{host}:{port}")).await.unwrap();
    tls_over(s, host, ca_pem, alpn).await
}

/// TLS like [`tls_over`], `None` if the handshake fails.
pub async fn try_tls_over<S>(
    io: S,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Option<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_string()).ok()?;
    tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn))
        .connect(name, io)
        .await
        .ok()
}

/// A request body: bytes, or a stream.
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// A keep-alive HTTP/1.1 client connection.
pub struct H1 {
    /// Request sender.
    pub send: hyper::client::conn::http1::SendRequest<ReqBody>,
    /// Serial of the certificate the server presented (set by [`H1::connect`]).
    pub serial: Option<String>,
}

/// The leaf certificate serial a TLS stream saw, hex.
pub fn peer_serial<S>(tls: &TlsStream<S>) -> String {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    x.raw_serial_as_string()
}

impl H1 {
    /// HTTP/1.1 over an already connected stream (TLS or plain).
    pub async fn over<S>(io: S) -> H1
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { send, serial: None }
    }

    /// Like [`H1::over`], `None` if the connection breaks.
    pub async fn try_over<S>(io: S) -> Option<H1>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Some(H1 { send, serial: None })
    }

    /// GET `path`; `None` if the connection breaks.
    pub async fn try_get(&mut self, host: &str, path: &str) -> Option<Response<Bytes>> {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()).boxed())
            .ok()?;
        self.send.ready().await.ok()?;
        let resp = self.send.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Response::from_parts(parts, body))
    }

    /// Sends a request with a streamed body and collects the response.
    pub async fn send_stream(&mut self, req: Request<ReqBody>) -> Response<Bytes> {
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Response::from_parts(parts, body)
    }

    /// Connects from `node` to `host` (port 443) over the tailnet.
    pub async fn connect(node: &Node, host: &str, ca_pem: &str) -> H1 {
        let tls = connect(node, host, 443, ca_pem, &[b"http/1.1"]).await;
        let serial = peer_serial(&tls);
        let mut h = H1::over(tls).await;
        h.serial = Some(serial);
        h
    }

    /// Sends a request and collects the response body.
    pub async fn request(&mut self, req: Request<Full<Bytes>>) -> Response<Bytes> {
        self.send_stream(req.map(|b| b.boxed())).await
    }

    /// GET `path` with extra headers.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Bytes> {
        let mut b = Request::get(path).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.request(b.body(Full::new(Bytes::new())).unwrap()).await
    }
}

/// The JSON the echo upstream answered.
pub fn echoed(resp: &Response<Bytes>) -> serde_json::Value {
    assert_eq!(
        resp.status(),
        200,
        "body: {}",
        String::from_utf8_lossy(resp.body())
    );
    serde_json::from_slice(resp.body()).unwrap()
}

/// One header the echo upstream received (`None` if absent).
pub fn echoed_header(j: &serde_json::Value, name: &str) -> Option<Vec<String>> {
    j["headers"][name.to_ascii_lowercase()]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
}

/// A websocket over TLS over a tailnet stream.
pub type Wss = tokio_tungstenite::WebSocketStream<TlsStream<tailpass::tailnet::TailnetStream>>;

/// Opens `wss://host<path>` from `node` presenting `cookie` as the session
/// (`tailpass_session`), and checks that it echoes one message (the
/// upstream is an echo).
pub async fn session_ws(node: &Node, host: &str, ca: &str, path: &str, cookie: &str) -> Wss {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = connect(node, host, 443, ca, &[b"http/1.1"]).await;
    let mut req = format!("wss://{host}{path}").into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("tailpass_session={cookie}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "ping");
    ws
}

/// How long until the other side closes `ws` (`None`: still open after
/// `limit`).
pub async fn closed_after(ws: &mut Wss, limit: std::time::Duration) -> Option<std::time::Duration> {
    use futures_util::StreamExt;
    let t = std::time::Instant::now();
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| t.elapsed())
}
