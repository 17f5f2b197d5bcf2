//! How the proxy reaches an upstream: TCP on this host, a Unix socket
//! (`unix:/run/pocket-id/pocket-id.sock`), or a node of the tailnet dialed
//! through our own tsnet node (no tailscaled on the host), optionally
//! pinned: WhoIs on the dialed address must name the expected node or
//! carry one of the expected tags before a byte is sent. `https://`
//! upstreams get TLS (public roots: ts.net certificates are Let's Encrypt's)
//! over any of them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::BoxError;
use crate::tailnet::{Node, TailnetStream};

/// What a tailnet upstream must be, checked with WhoIs before use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodePin {
    /// The node's name (first label of its MagicDNS name), if pinned.
    pub(crate) node: Option<String>,
    /// Any of these tags, if pinned.
    pub(crate) tags: Vec<String>,
}

impl NodePin {
    fn is_empty(&self) -> bool {
        self.node.is_none() && self.tags.is_empty()
    }
}

/// Where a route's upstream connections come from.
#[derive(Clone)]
pub(crate) enum Connector {
    Tcp(HttpConnector),
    Unix {
        path: Arc<PathBuf>,
        timeout: Duration,
    },
    Tailnet {
        node: Node,
        pin: Arc<NodePin>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Tcp(_) => f.write_str("Tcp"),
            Connector::Unix { path, .. } => write!(f, "Unix({})", path.display()),
            Connector::Tailnet { node, pin, .. } => {
                write!(f, "Tailnet(via {}, pin {pin:?})", node.hostname())
            }
        }
    }
}

/// An upstream connection of any kind, with or without TLS.
pub(crate) enum Conn {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
    Tailnet(TokioIo<TailnetStream>),
    Tls(Box<TokioIo<TlsStream<Plain>>>),
}

/// The plain stream under TLS.
pub(crate) enum Plain {
    Tcp(TcpStream),
    Tailnet(TailnetStream),
}

impl Connector {
    async fn dial(self, uri: Uri) -> Result<Conn, BoxError> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("upstream URI without a host")?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        match self {
            Connector::Unix { path, timeout } => {
                let s = tokio::time::timeout(timeout, UnixStream::connect(&*path))
                    .await
                    .map_err(|_| format!("connecting to {}: timed out", path.display()))?
                    .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
                Ok(Conn::Unix(TokioIo::new(s)))
            }
            // Built with `enforce_http(false)`: it connects for https too.
            Connector::Tcp(mut http) => {
                let s = tower_service::Service::call(&mut http, uri).await?;
                match https {
                    true => tls(Plain::Tcp(s.into_inner()), &host).await,
                    false => Ok(Conn::Tcp(s)),
                }
            }
            Connector::Tailnet { node, pin, timeout } => {
                let addr = format!("{host}:{port}");
                let s = tokio::time::timeout(timeout, node.dial(&addr))
                    .await
                    .map_err(|_| format!("dialing {addr} on the tailnet: timed out"))?
                    .map_err(|e| format!("dialing {addr} on the tailnet: {e}"))?;
                if !pin.is_empty() {
                    check_pin(&node, &s, &pin, &addr).await?;
                }
                match https {
                    true => tls(Plain::Tailnet(s), &host).await,
                    false => Ok(Conn::Tailnet(TokioIo::new(s))),
                }
            }
        }
    }
}

/// WhoIs on the dialed address: the pinned name or one of the pinned tags,
/// else the connection is dropped before a byte is sent.
async fn check_pin(
    node: &Node,
    s: &TailnetStream,
    pin: &NodePin,
    addr: &str,
) -> Result<(), BoxError> {
    let who = node
        .whois(s.peer_addr())
        .await
        .map_err(|e| format!("{addr}: WhoIs for the pin failed: {e}"))?;
    let name = who.node.name.split('.').next().unwrap_or("");
    let name_ok = pin
        .node
        .as_deref()
        .is_none_or(|n| n.eq_ignore_ascii_case(name));
    let tags_ok = pin.tags.is_empty() || who.node.tags.iter().any(|t| pin.tags.contains(t));
    if name_ok && tags_ok {
        Ok(())
    } else {
        Err(format!(
            "{addr} is node {name:?} with tags {:?}; the route is pinned to {pin:?}",
            who.node.tags
        )
        .into())
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            // The proxy speaks HTTP/1.1 to upstreams (websocket upgrades).
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        })
        .clone()
}

async fn tls(plain: Plain, host: &str) -> Result<Conn, BoxError> {
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
    let s = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, plain)
        .await
        .map_err(|e| format!("TLS to {host}: {e}"))?;
    Ok(Conn::Tls(Box::new(TokioIo::new(s))))
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial(uri))
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Tcp(s) => s.inner().connected(),
            _ => Connected::new(),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
            Conn::Tailnet($s) => $e,
            Conn::Tls(b) => {
                let $s = &mut **b;
                $e
            }
        }
    };
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl tokio::io::AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Plain::Tailnet(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Plain::Tailnet(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_flush(cx),
            Plain::Tailnet(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Plain::Tailnet(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
