//! The one accept loop of every listener (tailnet HTTPS, the :80 redirect,
//! Funnel, loopback, public, admin): the door admits a connection
//! (`listen::run`: caps, descriptor reserve, backoff, health), a
//! [`Handshake`] establishes it within the handshake timeout — identity
//! first, then TLS where there is TLS — and a [`Service`] serves HTTP on it.
//! The listeners differ only in those two parts.
//!
//! What it must not do: take identity from anything but the handshake (the
//! accepting node's WhoIs, or the kind of listener).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Live;
use super::conn::serve_http;
use crate::config::Limits;
use crate::gateway::{self, Connection, NodeId};
use crate::http::response;
use crate::identity::PeerIdentity;
use crate::listen::{self, Acceptor, Door, Ticket};
use crate::metrics::Metrics;
use crate::portal::PortalOrigin;
use crate::tailnet::{Node, Origin, TailnetStream};

/// An admitted connection, established: the stream HTTP runs on, who is
/// calling, and whether ALPN chose HTTP/2.
pub(crate) struct Established<S, W> {
    pub(crate) io: S,
    pub(crate) who: W,
    pub(crate) h2: bool,
}

/// Turns an accepted connection into one HTTP can run on. `None` drops it
/// (the reason is logged inside).
pub(crate) trait Handshake<Io>: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What the listener knows about the caller.
    type Who: Send + 'static;
    fn establish(
        &self,
        io: Io,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<Established<Self::Stream, Self::Who>>> + Send;
}

/// Serves HTTP on an established connection until it ends; `ticket` holds
/// its place in the listener's caps meanwhile.
pub(crate) trait Service<S, W>: Send + Sync + 'static {
    fn serve(&self, io: S, who: W, h2: bool, ticket: Ticket) -> impl Future<Output = ()> + Send;
}

/// Accepts on `acceptor` until shutdown; each admitted connection runs in
/// a task of its own: the handshake (bounded by `limits.handshake_timeout`),
/// then the service.
pub(crate) async fn run<A, H, S>(
    acceptor: A,
    door: Door,
    handshake: H,
    service: S,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) where
    A: Acceptor,
    H: Handshake<A::Io>,
    S: Service<H::Stream, H::Who>,
{
    let name: Arc<str> = door.gate.listener().into();
    let (handshake, service) = (Arc::new(handshake), Arc::new(service));
    listen::run(acceptor, door, stop, move |io, peer, ticket| {
        let (handshake, service, name) = (handshake.clone(), service.clone(), name.clone());
        let timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            // A client that never completes its handshake is dropped.
            match tokio::time::timeout(timeout, handshake.establish(io, peer)).await {
                Ok(Some(e)) => service.serve(e.io, e.who, e.h2, ticket).await,
                Ok(None) => {}
                Err(_) => tracing::debug!(listener = %name, %peer, "handshake timed out"),
            }
        });
    })
    .await;
}

/// No handshake: the kind of listener says who is calling (Funnel, whose
/// TLS the shim terminated; loopback; the redirect and admin listeners,
/// which need nobody).
pub(crate) struct Plain<F>(pub(crate) F);

impl<Io, W, F> Handshake<Io> for Plain<F>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: Send + 'static,
    F: Fn(SocketAddr) -> W + Send + Sync + 'static,
{
    type Stream = Io;
    type Who = W;

    async fn establish(&self, io: Io, peer: SocketAddr) -> Option<Established<Io, W>> {
        Some(Established {
            io,
            who: (self.0)(peer),
            h2: false,
        })
    }
}

/// Tailnet HTTPS: WhoIs on the accepting node (once per connection, with
/// the peer address that came with the connection), then TLS with the
/// node's certificate.
pub(crate) struct TailnetTls {
    pub(crate) node: Node,
    pub(crate) tls: TlsAcceptor,
    /// The node's certificate; the handshake waits for the first one.
    pub(crate) certs: crate::tls::Resolver,
    pub(crate) metrics: Arc<Metrics>,
}

impl Handshake<TailnetStream> for TailnetTls {
    type Stream = TlsStream<TailnetStream>;
    type Who = PeerIdentity;

    async fn establish(
        &self,
        stream: TailnetStream,
        peer: SocketAddr,
    ) -> Option<Established<Self::Stream, PeerIdentity>> {
        let node = &self.node;
        let who = match stream.origin() {
            Origin::Tailnet => match timed_whois(node, peer, &self.metrics).await {
                Ok(w) => PeerIdentity::tailnet(peer, w),
                Err(e) => {
                    tracing::warn!(node = node.hostname(), %peer, error = %e, "whois failed; dropping connection");
                    return None;
                }
            },
            Origin::Funnel => PeerIdentity::Funnel { addr: peer },
        };
        // Until the node's first certificate arrives (a ts.net certificate
        // can take a minute), the client waits, within the handshake
        // timeout, instead of getting a TLS alert.
        self.certs.ready().await;
        match self.tls.accept(stream).await {
            Ok(io) => {
                let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
                Some(Established { io, who, h2 })
            }
            Err(e) => {
                tracing::debug!(node = node.hostname(), %peer, error = %e, "TLS handshake failed");
                None
            }
        }
    }
}

async fn timed_whois(
    node: &Node,
    peer: SocketAddr,
    metrics: &Metrics,
) -> crate::tailnet::Result<crate::tailnet::WhoIs> {
    let t = Instant::now();
    let r = node.whois(peer).await;
    metrics.whois(t.elapsed());
    r
}

/// The request pipeline (`gateway`) on every connection of a client
/// listener. Each request uses the config snapshot current when it starts.
pub(crate) struct Pipeline {
    pub(crate) node: Option<String>,
    pub(crate) node_id: Option<NodeId>,
    pub(crate) origin: Option<Arc<PortalOrigin>>,
    pub(crate) scheme: &'static str,
    pub(crate) live: Arc<Live>,
}

impl<S> Service<S, PeerIdentity> for Pipeline
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve(&self, io: S, who: PeerIdentity, h2: bool, ticket: Ticket) {
        // Counts this connection as open until it ends (graceful shutdown
        // waits; the ticket frees its place in the listener's caps).
        let _open = self.live.open.clone();
        let _ticket = ticket;
        let conn = Arc::new(Connection {
            who: Arc::new(who),
            node: self.node.clone(),
            node_id: self.node_id,
            origin: self.origin.clone(),
            scheme: self.scheme,
        });
        let live = self.live.clone();
        let (limits, stop) = (live.limits.clone(), live.stop.clone());
        serve_http(io, &limits, stop, h2, move |req| {
            let (conn, live) = (conn.clone(), live.clone());
            async move {
                let snap = live.shared.load_full();
                gateway::handle(req, &conn, &snap, Some(&live.metrics)).await
            }
        })
        .await;
    }
}

/// Port 80: redirect to HTTPS on the node's own name. The client's Host
/// header is not used for the target, so this never redirects elsewhere.
pub(crate) struct Redirect {
    /// `https://<fqdn>[:port]`.
    pub(crate) base: Arc<str>,
    pub(crate) live: Arc<Live>,
}

impl<S, W> Service<S, W> for Redirect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: Send + 'static,
{
    async fn serve(&self, io: S, _who: W, _h2: bool, ticket: Ticket) {
        let _ticket = ticket;
        let base = self.base.clone();
        let (limits, stop) = (self.live.limits.clone(), self.live.stop.clone());
        serve_http(io, &limits, stop, false, move |req: Request<Incoming>| {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let pq = if pq.starts_with('/') { pq } else { "/" };
            let r = response::redirect(StatusCode::PERMANENT_REDIRECT, &format!("{base}{pq}"));
            async move { r }
        })
        .await;
    }
}
