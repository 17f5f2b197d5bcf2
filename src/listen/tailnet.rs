//! Tailnet listeners as [`Acceptor`]s: a listener the shim closed under us
//! (not at shutdown) is opened again on the same node and port; a Funnel
//! listener gets its certificate again when it is.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{AcceptError, Acceptor};
use crate::tailnet::{Error, Listener, Node, TailnetStream};
use crate::tls;

/// Which kind of tailnet listener.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Tailnet peers only.
    Tailnet,
    /// Public Funnel traffic only (TLS terminated in the shim).
    Funnel,
}

/// A tailnet listener that can be opened again.
pub(crate) struct TailnetAcceptor {
    node: Node,
    port: u16,
    kind: Kind,
    current: Arc<Mutex<Arc<Listener>>>,
    certs: Option<tls::Resolver>,
}

impl TailnetAcceptor {
    /// Listens on `port` of `node`. Funnel listeners present `certs`.
    pub(crate) async fn open(
        node: &Node,
        port: u16,
        kind: Kind,
        certs: Option<tls::Resolver>,
    ) -> crate::tailnet::Result<TailnetAcceptor> {
        let ln = listen(node, port, kind, certs.as_ref()).await?;
        Ok(TailnetAcceptor {
            node: node.clone(),
            port,
            kind,
            current: Arc::new(Mutex::new(Arc::new(ln))),
            certs,
        })
    }

    /// The listener in use now (for certificate renewal).
    pub(crate) fn current(&self) -> Arc<Mutex<Arc<Listener>>> {
        self.current.clone()
    }
}

async fn listen(
    node: &Node,
    port: u16,
    kind: Kind,
    certs: Option<&tls::Resolver>,
) -> crate::tailnet::Result<Listener> {
    let ln = match kind {
        Kind::Tailnet => node.listen(port).await?,
        Kind::Funnel => node.listen_funnel(port, true).await?,
    };
    if let (Kind::Funnel, Some(c)) = (kind, certs)
        && let Some(cur) = c.current()
    {
        let (cert, key) = cur.pem();
        ln.set_cert(cert, key)?;
    }
    Ok(ln)
}

/// Pushes the current certificate to a Funnel listener.
pub(crate) fn push_cert(current: &Mutex<Arc<Listener>>, certs: &tls::Resolver) {
    let ln = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(cur) = certs.current() {
        let (cert, key) = cur.pem();
        if let Err(e) = ln.set_cert(cert, key) {
            tracing::warn!(node = ln.node().hostname(), error = %e, "setting the Funnel certificate");
        }
    }
}

impl Acceptor for TailnetAcceptor {
    type Io = TailnetStream;

    async fn accept(&mut self) -> Result<(TailnetStream, SocketAddr), AcceptError> {
        let ln = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ln.accept().await.map_err(|e| match e {
            Error::ListenerClosed | Error::Closed => AcceptError::Closed(e.to_string()),
            // Resource shortage, a connection lost in hand-off, a message
            // we could not read: this connection is lost, the listener is
            // not.
            other => AcceptError::Retry(other.to_string()),
        })
    }

    async fn reopen(&mut self) -> Result<(), String> {
        let ln = listen(&self.node, self.port, self.kind, self.certs.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(ln);
        Ok(())
    }
}
