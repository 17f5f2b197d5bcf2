//! How the proxy reaches an upstream: TCP on this host, or a Unix socket
//! (`upstream = "unix:/run/pocket-id/pocket-id.sock"`; Pocket ID, copyparty
//! and ttyd can listen on one, so the service needs no port at all).

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

use super::BoxError;
use crate::config::{Backend, Route};

/// Where a route's upstream connections come from.
#[derive(Clone)]
pub(crate) enum Connector {
    Tcp(HttpConnector),
    Unix {
        path: Arc<PathBuf>,
        timeout: Duration,
    },
}

impl Connector {
    /// The route's connector, with its connect timeout.
    pub(crate) fn for_route(route: &Route) -> Connector {
        match &route.backend {
            Backend::Unix(path) => Connector::Unix {
                path: Arc::new(path.clone()),
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
        }
    }
}

/// An upstream connection.
pub(crate) enum Conn {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
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
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Tcp(s) => s.inner().connected(),
            Conn::Unix(_) => Connected::new(),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
