//! How the proxy reaches an upstream: TCP on this host, a Unix socket
//! (`upstream = "unix:/run/pocket-id/pocket-id.sock"`; Pocket ID, copyparty
//! and ttyd can listen on one, so the service needs no port at all), or a
//! service on another node of the tailnet, dialed through tailpass's own
//! node (no tailscaled on the host).
//!
//! A tailnet upstream may be pinned (`upstream_node`, `upstream_tags`):
//! WhoIs on the dialed address must name the node or one of the tags
//! before a request byte is written, else the connection is dropped and
//! the request fails with [`PinRefused`]. `https://` tailnet upstreams get
//! TLS with the public web roots (ts.net certificates are Let's Encrypt's).
//!
//! What it must not do: send anything on a tailnet connection whose pin
//! did not hold, or fall back to another way of reaching the upstream.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::BoxError;
use crate::config::{Backend, Route, UpstreamPin};
use crate::tailnet::{Node, TailnetStream};

/// The node a tailnet upstream is dialed through, set once the node is up
/// (snapshots are built before the nodes start; node changes need a
/// restart, so a slot filled once stays right across reloads).
pub(crate) type NodeSlot = Arc<OnceLock<Node>>;

/// Where a route's upstream connections come from.
#[derive(Clone)]
pub(crate) enum Connector {
    Tcp(HttpConnector),
    Unix {
        path: Arc<PathBuf>,
        timeout: Duration,
    },
    Tailnet {
        node: NodeSlot,
        pin: Arc<UpstreamPin>,
        timeout: Duration,
    },
}

impl Connector {
    /// The route's connector, with its connect timeout; a tailnet upstream
    /// is dialed through the node in `via`.
    pub(crate) fn for_route(route: &Route, via: &NodeSlot) -> Connector {
        match &route.backend {
            Backend::Unix(path) => Connector::Unix {
                path: Arc::new(path.clone()),
                timeout: route.connect_timeout,
            },
            Backend::Tailnet { pin } => Connector::Tailnet {
                node: via.clone(),
                pin: Arc::new(pin.clone()),
                timeout: route.connect_timeout,
            },
            // Static-file routes never reach the proxy; TCP is a harmless
            // default for them.
            Backend::Tcp | Backend::Files(_) => {
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(route.connect_timeout));
                c.set_nodelay(true);
                Connector::Tcp(c)
            }
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Tcp(_) => f.write_str("Tcp"),
            Connector::Unix { path, .. } => write!(f, "Unix({})", path.display()),
            Connector::Tailnet { node, pin, .. } => {
                let via = node.get().map_or("(not up)", |n| n.hostname());
                write!(f, "Tailnet(via {via}, {pin})")
            }
        }
    }
}

/// The tailnet upstream's node is not the one the route is pinned to. The
/// connection was dropped before a byte was sent.
#[derive(Debug, thiserror::Error)]
#[error("{addr} is node {name:?} with tags {tags:?}; the route is pinned to {pin}")]
pub(crate) struct PinRefused {
    addr: String,
    name: String,
    tags: Vec<String>,
    pin: Arc<UpstreamPin>,
}

/// An upstream connection.
pub(crate) enum Conn {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
    Tailnet(TokioIo<TailnetStream>),
    Tls(Box<TokioIo<TlsStream<TailnetStream>>>),
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self.clone() {
            Connector::Tcp(mut http) => Box::pin(async move {
                let s = tower_service::Service::call(&mut http, uri).await?;
                Ok(Conn::Tcp(s))
            }),
            Connector::Unix { path, timeout } => Box::pin(async move {
                let s = tokio::time::timeout(timeout, UnixStream::connect(&*path))
                    .await
                    .map_err(|_| format!("connecting to {}: timed out", path.display()))?
                    .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
                Ok(Conn::Unix(TokioIo::new(s)))
            }),
            Connector::Tailnet { node, pin, timeout } => Box::pin(async move {
                let addr = authority(&uri)?;
                tokio::time::timeout(timeout, dial_tailnet(&node, &pin, &uri, &addr))
                    .await
                    .map_err(|_| format!("dialing {addr} on the tailnet: timed out"))?
            }),
        }
    }
}

/// `host:port` of an upstream URI, the port defaulting by scheme.
fn authority(uri: &Uri) -> Result<String, BoxError> {
    let host = uri.host().ok_or("upstream URI without a host")?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(format!("{host}:{port}"))
}

/// Dials `addr` through the node, checks the pin on the dialed peer, and
/// starts TLS for `https` upstreams.
async fn dial_tailnet(
    node: &NodeSlot,
    pin: &Arc<UpstreamPin>,
    uri: &Uri,
    addr: &str,
) -> Result<Conn, BoxError> {
    let node = node
        .get()
        .ok_or("the node that dials this upstream is not up yet")?;
    let s = node
        .dial(addr)
        .await
        .map_err(|e| format!("dialing {addr} on the tailnet: {e}"))?;
    if !pin.is_empty() {
        check_pin(node, &s, pin, addr).await?;
    }
    match uri.scheme_str() {
        Some("https") => tls(s, uri.host().unwrap_or_default()).await,
        _ => Ok(Conn::Tailnet(TokioIo::new(s))),
    }
}

/// WhoIs on the dialed peer address (what the connection really reached,
/// whatever the name resolved to): the pinned name, and one of the pinned
/// tags, else the connection is dropped unused.
async fn check_pin(
    node: &Node,
    s: &TailnetStream,
    pin: &Arc<UpstreamPin>,
    addr: &str,
) -> Result<(), BoxError> {
    let who = node
        .whois(s.peer_addr())
        .await
        .map_err(|e| format!("{addr}: WhoIs on {} for the pin failed: {e}", s.peer_addr()))?;
    let name = who.node.name.trim_end_matches('.').to_ascii_lowercase();
    if pin_holds(pin, &name, &who.node.tags) {
        return Ok(());
    }
    Err(Box::new(PinRefused {
        addr: addr.to_string(),
        name,
        tags: who.node.tags,
        pin: pin.clone(),
    }))
}

/// Whether a node named `name` (full MagicDNS name, lower case) with
/// `tags` is what `pin` asks: a dotted pin is compared with the whole
/// name, a short one with the first label; a tag pin takes any one tag.
fn pin_holds(pin: &UpstreamPin, name: &str, tags: &[String]) -> bool {
    let name_ok = pin.node.as_deref().is_none_or(|n| match n.contains('.') {
        true => n == name,
        false => name.split('.').next() == Some(n),
    });
    let tags_ok = pin.tags.is_empty() || tags.iter().any(|t| pin.tags.contains(t));
    name_ok && tags_ok
}

/// TLS to tailnet upstreams: the public web roots (ts.net certificates are
/// issued by Let's Encrypt), HTTP/1.1 only (websocket upgrades).
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        })
        .clone()
}

async fn tls(s: TailnetStream, host: &str) -> Result<Conn, BoxError> {
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
    let s = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS to {host}: {e}"))?;
    Ok(Conn::Tls(Box::new(TokioIo::new(s))))
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Tcp(s) => s.inner().connected(),
            _ => Connected::new(),
        }
    }
}

/// `$e` with `$s` bound to the connection's stream, whatever its kind.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(node: Option<&str>, tags: &[&str]) -> UpstreamPin {
        UpstreamPin {
            node: node.map(str::to_string),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn pins_match_names_and_any_tag() {
        let name = "nas.tail1.ts.net";
        let tags = vec!["tag:nas".to_string(), "tag:storage".to_string()];
        for (p, want) in [
            (pin(None, &[]), true),
            (pin(Some("nas"), &[]), true),
            (pin(Some("nas.tail1.ts.net"), &[]), true),
            (pin(Some("nas.tail2.ts.net"), &[]), false),
            (pin(Some("na"), &[]), false),
            (pin(Some("nas.tail1"), &[]), false),
            (pin(Some("other"), &[]), false),
            (pin(None, &["tag:other", "tag:storage"]), true),
            (pin(None, &["tag:other"]), false),
            (pin(Some("nas"), &["tag:nas"]), true),
            (pin(Some("nas"), &["tag:other"]), false),
            (pin(Some("other"), &["tag:nas"]), false),
        ] {
            assert_eq!(pin_holds(&p, name, &tags), want, "{p:?}");
        }
        // An untagged node never satisfies a tag pin.
        assert!(!pin_holds(&pin(None, &["tag:nas"]), name, &[]));
    }

    #[test]
    fn authority_defaults_the_port_by_scheme() {
        let a = |u: &str| authority(&u.parse().unwrap()).unwrap();
        assert_eq!(a("http://nas"), "nas:80");
        assert_eq!(a("https://nas.tail1.ts.net/x"), "nas.tail1.ts.net:443");
        assert_eq!(a("http://100.64.0.7:5000"), "100.64.0.7:5000");
    }
}
