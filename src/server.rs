//! Listeners and wiring: joins every configured node, serves tailnet HTTPS
//! (plus the :80 redirect), public routes over Funnel and the optional
//! loopback listener; identifies each connection once; routes, decides and
//! proxies each request; writes one access-log line per request.
//!
//! Order of the layers, per request:
//! 1. identity of the connection (WhoIs on the accepting node, or Funnel,
//!    or loopback) — fixed before the first byte of HTTP is read;
//! 2. path normalization (400 if ambiguous);
//! 3. route match (longest prefix; node and host filters);
//! 4. policy decision (403 with the reason, or 404 to hide);
//! 5. proxy (header hygiene, identity headers, upstream);
//! 6. access log when the response body ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{CertSource, Config, Limits, NodeSpec, Route};
use crate::http::path;
use crate::http::response::{self, Body, error, not_found, wants_html};
use crate::identity::PeerIdentity;
use crate::listen::{
    self, Activity, Door, Fds, Gate, Guarded, Health, Kind, Sources, TailnetAcceptor, TcpAcceptor,
    Ticket, Timeouts, Watched, push_cert,
};
use crate::metrics::Metrics;
use crate::oidc::Dialer;
use crate::policy::{self, Caller, Decision};
use crate::portal::{Portal, PortalOrigin};
use crate::proxy::{self, Forwarding, SessionEnd, Upstream};
use crate::session::now;
use crate::tailnet::{LogSink, Node, NodeConfig, Origin};
use crate::tls;

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A node failed to join or listen.
    #[error("node {node}: {source}")]
    Tailnet {
        /// Node host name.
        node: String,
        /// Cause.
        source: crate::tailnet::Error,
    },
    /// A certificate could not be obtained.
    #[error("node {node}: certificate: {source}")]
    Tls {
        /// Node host name.
        node: String,
        /// Cause.
        source: tls::TlsError,
    },
    /// The public listener could not start.
    #[error("public listener: {0}")]
    Public(String),
    /// The portal could not start (session store, provider set-up).
    #[error("portal: {0}")]
    Portal(String),
    /// A loopback listener (`loopback`, `admin`) could not bind.
    #[error("{listener} listener {addr}: {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Options that are not in the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node may take to join.
    pub up_timeout: Duration,
    /// Validity of local-CA leaf certificates.
    pub local_ca_validity: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            up_timeout: Duration::from_secs(120),
            local_ca_validity: Duration::from_secs(30 * 86400),
        }
    }
}

/// A running node of the gateway.
#[derive(Debug, Clone)]
pub struct RunningNode {
    /// Host name.
    pub hostname: String,
    /// MagicDNS name (without trailing dot).
    pub fqdn: String,
    /// `https://<fqdn>[:port]`.
    pub origin: String,
    /// The node.
    pub node: Node,
    /// Its certificate resolver.
    pub certs: tls::Resolver,
}

/// The running gateway.
pub struct Gateway {
    /// Nodes, in config order.
    pub nodes: Vec<RunningNode>,
    /// The loopback listener's address, if any.
    pub loopback: Option<SocketAddr>,
    /// The public listener's address, if any.
    pub public: Option<SocketAddr>,
    /// The admin listener's address (`/healthz`, `/metrics`), if any.
    pub admin: Option<SocketAddr>,
    config: Config,
    dialer: Dialer,
    live: Arc<Live>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How long a graceful shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a reload replaces: routes, policies, providers, rules.
struct Shared {
    routes: Vec<(Route, Upstream)>,
    portal: Option<Arc<Portal>>,
}

impl Shared {
    fn new(config: &Config, portal: Option<Arc<Portal>>) -> Shared {
        Shared {
            routes: config
                .routes
                .iter()
                .map(|r| (r.clone(), Upstream::new(r)))
                .collect(),
            portal,
        }
    }
}

/// What every connection holds: the current [`Shared`] (swapped whole on
/// reload; a request uses the snapshot it started with), the metrics, the
/// shutdown signal and a token counting open connections.
struct Live {
    shared: ArcSwap<Shared>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    open: Arc<()>,
    /// Fixed at start: listener settings need a restart.
    limits: Arc<Limits>,
    health: Arc<Health>,
    fds: Arc<Fds>,
}

impl Live {
    /// A client listener's admission (the `[limits]` caps, the descriptor
    /// reserve) and health. The admin listener has its own.
    fn door(&self, name: &str, sources: Sources) -> Door {
        let gate = Gate::new(
            name,
            self.limits.max_connections,
            self.limits.max_connections_per_source,
            sources,
            Some(self.fds.clone()),
            self.metrics.clone(),
        );
        Door::new(&self.health, gate, self.metrics.clone())
    }
}

/// Per-connection facts every request on it shares.
#[derive(Clone)]
struct Conn {
    who: Arc<PeerIdentity>,
    node: Option<String>,
    /// The node's own HTTPS origin (tailnet connections only): absolute
    /// URLs are built from it, never from the Host header.
    origin: Option<Arc<PortalOrigin>>,
    scheme: &'static str,
    live: Arc<Live>,
}

impl Gateway {
    /// Joins the nodes, obtains certificates and starts every listener.
    pub async fn start(config: Config, opts: Options) -> Result<Gateway, StartError> {
        // Tailnet-only providers are dialed through the first node that
        // serves the portal, once it is up.
        let mut suffixes = vec!["ts.net".to_string()];
        suffixes.extend(config.tailnet_domain.clone());
        let dialer = Dialer {
            node: Default::default(),
            tailnet_suffixes: suffixes,
        };
        let metrics = Arc::new(Metrics::new());
        let portal = Portal::new(&config, dialer.clone(), None, metrics.clone())
            .map_err(StartError::Portal)?
            .map(Arc::new);
        let (shutdown, stop) = watch::channel(false);
        let fds = Arc::new(Fds::new(config.limits.fd_reserve, metrics.clone()));
        let health = Arc::new(Health::default());
        health.watch_fds(fds.clone());
        let live = Arc::new(Live {
            shared: ArcSwap::from_pointee(Shared::new(&config, portal.clone())),
            metrics,
            stop: stop.clone(),
            open: Arc::new(()),
            limits: Arc::new(config.limits.clone()),
            health,
            fds,
        });
        let mut tasks = JoinSet::new();
        let mut nodes = Vec::new();
        for spec in &config.nodes {
            let rn = start_node(spec, &opts, &live, &stop, &mut tasks).await?;
            if portal.as_ref().is_some_and(|p| p.serves(&rn.hostname)) {
                let _ = dialer.node.set(rn.node.clone());
            }
            nodes.push(rn);
        }
        tasks.spawn(upkeep(live.clone()));
        let loopback = match config.loopback {
            Some(addr) => {
                let (l, bound) = bind("loopback", addr).await?;
                tracing::info!(addr = %bound, "loopback listener");
                let door = live.door("loopback", Sources::Any);
                tasks.spawn(loopback(l, door, live.clone(), stop.clone()));
                Some(bound)
            }
            None => None,
        };
        let admin = match config.admin {
            Some(addr) => {
                let (l, bound) = bind("admin", addr).await?;
                tracing::info!(addr = %bound, "admin listener (/healthz, /metrics)");
                // The operator's way in: not subject to the reserve, and
                // a small cap of its own.
                let gate = Gate::new("admin", 64, 64, Sources::Any, None, live.metrics.clone());
                let door = Door::new(&live.health, gate, live.metrics.clone());
                let nodes: Vec<(String, Node)> = nodes
                    .iter()
                    .map(|n| (n.hostname.clone(), n.node.clone()))
                    .collect();
                tasks.spawn(crate::admin::serve(
                    l,
                    door,
                    crate::admin::State {
                        nodes,
                        metrics: live.metrics.clone(),
                        health: live.health.clone(),
                        limits: live.limits.clone(),
                    },
                    stop.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let public = match &config.public {
            Some(pl) => Some(
                crate::public::start(
                    pl,
                    live.door("public", Sources::Public),
                    live.limits.handshake_timeout,
                    shared_handler(live.clone()),
                    stop.clone(),
                    &mut tasks,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Gateway {
            nodes,
            loopback,
            public,
            admin,
            config,
            dialer,
            live,
            shutdown,
            tasks,
        })
    }

    /// The metrics this gateway keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.live.metrics
    }

    /// The health of every listener, as `/healthz` reports it.
    pub fn health(&self) -> &Arc<Health> {
        &self.live.health
    }

    /// Applies a new configuration without dropping connections: routes,
    /// policies, providers, rules and portal settings change for new
    /// requests; open connections (websockets included) stay. Sessions
    /// survive (the store is kept when `portal.state_dir` is unchanged).
    /// Node and listener settings need a restart; they are reported in the
    /// returned notes and left as they are.
    pub fn reload(&mut self, config: Config) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        let spec = |c: &Config| {
            format!(
                "{:?}",
                (
                    &c.nodes,
                    c.loopback,
                    c.admin,
                    &c.public,
                    &c.tailnet_domain,
                    &c.limits,
                )
            )
        };
        if spec(&config) != spec(&self.config) {
            notes.push("node, loopback, admin, public listener and [limits] settings changed; they take effect after a restart".to_string());
        }
        let current = self.live.shared.load_full();
        let portal = Portal::new(
            &config,
            self.dialer.clone(),
            current.portal.as_deref(),
            self.live.metrics.clone(),
        )
        .inspect_err(|_| self.live.metrics.reload("rejected"))?
        .map(Arc::new);
        self.live
            .shared
            .store(Arc::new(Shared::new(&config, portal)));
        self.config = config;
        self.live.metrics.reload("ok");
        Ok(notes)
    }

    /// Graceful shutdown: stops accepting, lets requests in flight finish
    /// (at most [`DRAIN_TIMEOUT`]), then closes the nodes.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Arc::strong_count(&self.live.open) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = Arc::strong_count(&self.live.open) - 1;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "closing connections still busy after the drain timeout"
            );
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Nodes close concurrently: each may wait on its control server.
        futures_util::future::join_all(self.nodes.iter().map(|n| async move {
            if let Err(e) = n.node.close().await {
                tracing::warn!(node = %n.hostname, error = %e, "closing node");
            }
        }))
        .await;
    }
}

async fn bind(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let e = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(e)?;
    let bound = l.local_addr().map_err(e)?;
    Ok((l, bound))
}

/// Background upkeep: session expiry and refresh (which closes websockets
/// of ended sessions), and the sessions gauge.
async fn upkeep(live: Arc<Live>) {
    loop {
        let shared = live.shared.load_full();
        let every = match &shared.portal {
            Some(p) => {
                p.tick().await;
                live.metrics.sessions(p.store().len());
                p.upkeep_interval()
            }
            None => Duration::from_secs(30),
        };
        drop(shared);
        tokio::time::sleep(every).await;
    }
}

async fn start_node(
    spec: &NodeSpec,
    opts: &Options,
    live: &Arc<Live>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<RunningNode, StartError> {
    let name = spec.hostname.clone();
    let te = |source| StartError::Tailnet {
        node: name.clone(),
        source,
    };
    let mut nc = NodeConfig::new(&spec.hostname, &spec.state_dir);
    nc.auth_key = spec.auth_key.as_ref().map(|s| s.expose().to_string());
    nc.control_url = spec.control_url.clone();
    nc.ephemeral = spec.ephemeral;
    nc.tags = spec.tags.clone();
    nc.logs = LogSink::Tracing;
    let node = Node::new(nc).map_err(te)?;
    let status = node.up(opts.up_timeout).await.map_err(te)?;
    let fqdn = status
        .fqdn()
        .map(str::to_string)
        .unwrap_or_else(|| spec.hostname.clone());
    tracing::info!(node = %name, fqdn = %fqdn, ip = ?status.ip(), "joined the tailnet");

    let source = match &spec.cert {
        CertSource::Tailnet => tls::Source::Tailnet {
            node: node.clone(),
            domain: fqdn.clone(),
        },
        CertSource::LocalCa => {
            let ca = tls::LocalCa::open_or_create(&spec.state_dir.join("local-ca")).map_err(
                |source| StartError::Tls {
                    node: name.clone(),
                    source,
                },
            )?;
            tls::Source::LocalCa {
                ca: Arc::new(ca),
                names: vec![fqdn.clone(), spec.hostname.clone()],
                validity: opts.local_ca_validity,
            }
        }
        CertSource::Files {
            cert_file,
            key_file,
        } => tls::Source::Files {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        },
    };
    let (certs, renew) = tls::manage(source)
        .await
        .map_err(|source| StartError::Tls {
            node: name.clone(),
            source,
        })?;
    tasks.spawn(async move {
        let _ = renew.await;
    });
    {
        // Certificate expiry gauge, updated on every renewal.
        let (c, m, host) = (certs.clone(), live.metrics.clone(), spec.hostname.clone());
        let mut changes = c.subscribe();
        tasks.spawn(async move {
            loop {
                if let Some(cur) = c.current() {
                    m.cert_expiry(&host, cur.not_after);
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let https = TailnetAcceptor::open(&node, spec.https_port, Kind::Tailnet, None)
        .await
        .map_err(te)?;
    let origin = Arc::new(PortalOrigin {
        node: spec.hostname.clone(),
        base: crate::config::https_origin(&fqdn, spec.https_port),
        https_port: spec.https_port,
    });
    let door = live.door(&format!("{name} https"), Sources::Exact);
    tasks.spawn(tailnet_https(
        https,
        door,
        node.clone(),
        certs.clone(),
        origin,
        live.clone(),
        stop.clone(),
    ));
    if spec.http_redirect {
        let l80 = TailnetAcceptor::open(&node, 80, Kind::Tailnet, None)
            .await
            .map_err(te)?;
        let door = live.door(&format!("{name} http"), Sources::Exact);
        tasks.spawn(redirect(
            l80,
            door,
            fqdn.clone(),
            spec.https_port,
            live.clone(),
            stop.clone(),
        ));
    }
    if spec.funnel {
        // Funnel TLS is terminated in the shim; it presents the same
        // certificate as the tailnet listener, pushed again on renewal
        // (and when the listener is opened again).
        let f = TailnetAcceptor::open(&node, 443, Kind::Funnel, Some(certs.clone()))
            .await
            .map_err(te)?;
        let (current, c) = (f.current(), certs.clone());
        let mut changes = c.subscribe();
        let host = spec.hostname.clone();
        tasks.spawn(async move {
            while changes.changed().await.is_ok() {
                tracing::info!(node = %host, "Funnel certificate renewed");
                push_cert(&current, &c);
            }
        });
        let door = live.door(&format!("{name} funnel"), Sources::Public);
        tasks.spawn(funnel(f, door, name.clone(), live.clone(), stop.clone()));
    }
    Ok(RunningNode {
        hostname: spec.hostname.clone(),
        origin: crate::config::https_origin(&fqdn, spec.https_port),
        fqdn,
        node,
        certs,
    })
}

/// Tailnet HTTPS: WhoIs, then TLS, both within the handshake timeout, then
/// HTTP.
async fn tailnet_https(
    acceptor: TailnetAcceptor,
    door: Door,
    node: Node,
    certs: tls::Resolver,
    origin: Arc<PortalOrigin>,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    let tls_acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
    listen::run(acceptor, door, stop, move |stream, peer, ticket| {
        let (tls_acceptor, node, live, origin) = (
            tls_acceptor.clone(),
            node.clone(),
            live.clone(),
            origin.clone(),
        );
        tokio::spawn(async move {
            let handshake = async {
                // Identity first, once per connection, on the accepting node.
                let who = match stream.origin() {
                    Origin::Tailnet => match timed_whois(&node, peer, &live.metrics).await {
                        Ok(w) => PeerIdentity::Tailnet {
                            addr: peer,
                            whois: Arc::new(w),
                        },
                        Err(e) => {
                            tracing::warn!(node = node.hostname(), %peer, error = %e, "whois failed; dropping connection");
                            return None;
                        }
                    },
                    Origin::Funnel => PeerIdentity::Funnel { addr: peer },
                };
                match tls_acceptor.accept(stream).await {
                    Ok(t) => Some((who, t)),
                    Err(e) => {
                        tracing::debug!(node = node.hostname(), %peer, error = %e, "TLS handshake failed");
                        None
                    }
                }
            };
            let (who, tls) =
                match tokio::time::timeout(live.limits.handshake_timeout, handshake).await {
                    Ok(Some(x)) => x,
                    Ok(None) => return,
                    Err(_) => {
                        tracing::debug!(node = node.hostname(), %peer, "handshake timed out");
                        return;
                    }
                };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = Conn {
                who: Arc::new(who),
                node: Some(node.hostname().to_string()),
                origin: Some(origin),
                scheme: "https",
                live,
            };
            serve(tls, conn, ticket, h2).await;
        });
    })
    .await;
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

/// Funnel: TLS was terminated in the shim; the client is the public
/// address the relay reported.
async fn funnel(
    acceptor: TailnetAcceptor,
    door: Door,
    node: String,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    listen::run(acceptor, door, stop, move |stream, peer, ticket| {
        // Funnel-only listener: never a tailnet identity, whatever it says.
        let conn = Conn {
            who: Arc::new(PeerIdentity::Funnel { addr: peer }),
            node: Some(node.clone()),
            origin: None,
            scheme: "https",
            live: live.clone(),
        };
        tokio::spawn(serve(stream, conn, ticket, false));
    })
    .await;
}

async fn loopback(
    l: tokio::net::TcpListener,
    door: Door,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    listen::run(
        TcpAcceptor::new(l, false),
        door,
        stop,
        move |s, peer, ticket| {
            let conn = Conn {
                who: Arc::new(PeerIdentity::Loopback { addr: peer }),
                node: None,
                origin: None,
                scheme: "http",
                live: live.clone(),
            };
            tokio::spawn(serve(s, conn, ticket, false));
        },
    )
    .await;
}

/// Port 80: redirect to HTTPS on the node's own name. The client's Host
/// header is not used for the target, so this never redirects elsewhere.
async fn redirect(
    acceptor: TailnetAcceptor,
    door: Door,
    fqdn: String,
    https_port: u16,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    let base: Arc<str> = crate::config::https_origin(&fqdn, https_port).into();
    listen::run(acceptor, door, stop, move |s, _, ticket| {
        let base = base.clone();
        let svc = move |req: Request<Incoming>| {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let pq = if pq.starts_with('/') { pq } else { "/" };
            response::redirect(StatusCode::PERMANENT_REDIRECT, &format!("{base}{pq}"))
        };
        let (limits, stop) = (live.limits.clone(), live.stop.clone());
        tokio::spawn(async move {
            let _ticket = ticket;
            serve_http(s, &limits, stop, false, move |req| {
                let r = svc(req);
                async move { r }
            })
            .await;
        });
    })
    .await;
}

/// What the public listener needs from the server: a way to serve one
/// accepted, TLS-terminated connection from a public client.
pub(crate) type PublicHandler = Arc<
    dyn Fn(
            Pin<Box<dyn AsyncReadWrite>>,
            SocketAddr,
            Ticket,
            bool,
        ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A boxed bidirectional stream.
pub(crate) trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

fn shared_handler(live: Arc<Live>) -> PublicHandler {
    Arc::new(move |io, peer, ticket, h2| {
        let conn = Conn {
            who: Arc::new(PeerIdentity::Internet { addr: peer }),
            node: None,
            origin: None,
            scheme: "https",
            live: live.clone(),
        };
        Box::pin(serve(io, conn, ticket, h2))
    })
}

/// The HTTP server settings every listener shares: HTTP/2 stream and
/// header-list bounds, reset-flood limits and keep-alive pings. HTTP/1
/// head and idle timeouts are the watchdog's (see [`serve_http`]).
pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(128);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams the client resets before
        // we accept them, and errors we reset, are bounded; past either
        // bound the connection gets GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    b
}

/// Serves HTTP on one admitted connection until it ends, shutdown, or the
/// watchdog finds it waiting too long (first request, request head, idle).
/// `h2` says ALPN chose HTTP/2. Upgraded connections (websockets) leave
/// the watchdog behind.
pub(crate) async fn serve_http<S, F, Fut>(
    io: S,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
    h2: bool,
    handler: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let act = Activity::new();
    let io = Watched::new(io, act.clone());
    let a = act.clone();
    let handler = Arc::new(handler);
    let svc = service_fn(move |req| {
        let guard = a.begin();
        let fut = handler(req);
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(
                resp.map(|b| http_body_util::BodyExt::boxed(Guarded::new(b, guard))),
            )
        }
    });
    let timeouts = Timeouts {
        first: limits.handshake_timeout + limits.header_read_timeout,
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        heads: !h2,
    };
    let builder = http_builder(limits);
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(c);
    let r = tokio::select! {
        r = c.as_mut() => r,
        _ = act.expired(timeouts) => {
            tracing::debug!("closing a connection that waited too long");
            c.as_mut().graceful_shutdown();
            // A request that slipped in meanwhile may finish; a head still
            // trickling in may not.
            let grace = Timeouts { first: Duration::ZERO, idle: Duration::ZERO, ..timeouts };
            tokio::select! {
                r = c.as_mut() => r,
                _ = act.expired(grace) => Ok(()),
            }
        }
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            // Finish the request in flight, then close.
            c.as_mut().graceful_shutdown();
            c.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn serve<S>(io: S, conn: Conn, ticket: Ticket, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Counts this connection as open until it ends (graceful shutdown
    // waits; the ticket frees its place in the listener's caps).
    let _open = conn.live.open.clone();
    let _ticket = ticket;
    let (limits, stop) = (conn.live.limits.clone(), conn.live.stop.clone());
    serve_http(io, &limits, stop, h2, move |req| {
        let conn = conn.clone();
        async move { handle(req, &conn).await }
    })
    .await;
}

fn host_of(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .map(|h| {
            let h = h
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map_or(h.as_str(), |(h, _)| h);
            h.trim_end_matches('.').to_ascii_lowercase()
        })
}

fn find_route<'a>(
    shared: &'a Shared,
    node: Option<&str>,
    host: Option<&str>,
    p: &str,
) -> Option<&'a (Route, Upstream)> {
    find_route_by(shared, node, host, |prefix| path::under(prefix, p))
}

/// The longest-prefix route whose prefix `matches`, among the routes of
/// `node` and `host`.
fn find_route_by<'a>(
    shared: &'a Shared,
    node: Option<&str>,
    host: Option<&str>,
    matches: impl Fn(&str) -> bool,
) -> Option<&'a (Route, Upstream)> {
    shared
        .routes
        .iter()
        .filter(|(r, _)| match (&r.node, node) {
            (Some(rn), Some(n)) => rn == n,
            _ => true,
        })
        .filter(|(r, _)| r.host.as_deref().is_none_or(|h| Some(h) == host))
        .filter(|(r, _)| matches(&r.path))
        .max_by_key(|(r, _)| (r.path.len(), r.host.is_some()))
}

/// The path rules that depend on the route matched (`http::path`): the
/// strict form on routes that are not public, and no other route (or the
/// portal) under the path's loose reading.
fn path_rule(
    shared: &Shared,
    node: Option<&str>,
    host: Option<&str>,
    route: &Route,
    p: &str,
) -> Result<(), path::PathError> {
    if !matches!(route.access, crate::config::Access::Public) {
        path::strict(p)?;
    }
    let l = path::loose(p)?;
    let folded = |prefix: &str| path::under(&prefix.to_ascii_lowercase(), &l);
    let again = find_route_by(shared, node, host, folded).map(|(r, _)| r.index);
    // The portal counts only where it is served (it is matched before
    // routes there); on other nodes its prefix is an ordinary path.
    let portal = shared
        .portal
        .as_deref()
        .is_some_and(|pt| node.is_none_or(|n| pt.serves(n)) && folded(pt.prefix()));
    if again != Some(route.index) || portal {
        return Err(path::PathError::Ambiguous);
    }
    Ok(())
}

async fn handle(req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    let t0 = Instant::now();
    let method = req.method().clone();
    let html = wants_html(req.headers());
    let raw_path = req.uri().path().to_string();
    let log = |route: &str, decision: &str, why: &str, resp: Response<Body>| {
        logged(
            resp,
            AccessLog {
                node: conn.node.clone(),
                who: conn.who.clone(),
                method: method.to_string(),
                path: raw_path.clone(),
                route: route.to_string(),
                decision: decision.to_string(),
                reason: why.to_string(),
                start: t0,
                metrics: Some(conn.live.metrics.clone()),
            },
        )
    };
    let p = match path::normalize(&raw_path) {
        Ok(p) => p,
        Err(e) => {
            return log(
                "-",
                "reject",
                &e.to_string(),
                error(StatusCode::BAD_REQUEST, "Bad request", &e.to_string(), html),
            );
        }
    };
    let host = host_of(&req);
    let shared = conn.live.shared.load_full();
    let portal = shared.portal.as_deref();
    if let Some(pt) = portal
        && path::under(pt.prefix(), &p)
        && conn.node.as_deref().is_none_or(|n| pt.serves(n))
    {
        // The portal exists for tailnet peers only; elsewhere (Funnel,
        // loopback, the public listener) its paths are not found, and never
        // fall through to a public route.
        return match &conn.origin {
            Some(origin) => {
                let (resp, what) = pt.handle(req, &p, &conn.who, origin).await;
                log("portal", what, "", resp)
            }
            None => log(
                "portal",
                "hide",
                "portal asked outside the tailnet",
                not_found(html),
            ),
        };
    }
    let Some((route, up)) = find_route(&shared, conn.node.as_deref(), host.as_deref(), &p) else {
        return log("-", "no-route", "", not_found(html));
    };
    // The session, for protected routes on a node with the portal.
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |x| x.as_str())
        .to_string();
    let portal = portal.filter(|pt| {
        !matches!(route.access, crate::config::Access::Public)
            && conn.node.as_deref().is_some_and(|n| pt.serves(n))
    });
    let session = match portal {
        Some(pt) => pt.session(req.headers(), &conn.who).await,
        None => None,
    };
    let roles = match portal {
        Some(pt) => pt.roles(&conn.who, session.as_ref()),
        None => Default::default(),
    };
    let caller = Caller {
        who: &conn.who,
        session: session.as_ref(),
        roles: &roles,
        now: now(),
    };
    match policy::evaluate(route, &method, &caller) {
        Decision::Login { reason, max_age } => {
            let resp = match (portal, &conn.origin) {
                (Some(pt), Some(origin)) => {
                    pt.login_required(origin, &method, &pq, html, session.as_ref(), max_age)
                }
                _ => error(
                    StatusCode::UNAUTHORIZED,
                    "Sign-in required",
                    "sign-in is not available on this listener",
                    html,
                ),
            };
            log(&route.name(), "login", &reason, resp)
        }
        Decision::Method(why) => log(
            &route.name(),
            "method",
            &why,
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                &why,
                html,
            ),
        ),
        Decision::Hide(why) => log(&route.name(), "hide", &why, not_found(html)),
        Decision::Deny(why) => {
            let resp = match (portal, &conn.origin) {
                (Some(pt), Some(origin)) => {
                    pt.forbidden(origin, &why, &pq, html, route.login.is_some())
                }
                _ => error(StatusCode::FORBIDDEN, "Forbidden", &why, html),
            };
            log(&route.name(), "deny", &why, resp)
        }
        Decision::Allow(why) => {
            // Checked only for what is forwarded: a hidden route stays a 404.
            if let Err(e) = path_rule(&shared, conn.node.as_deref(), host.as_deref(), route, &p) {
                return log(
                    &route.name(),
                    "reject",
                    &e.to_string(),
                    error(StatusCode::BAD_REQUEST, "Bad request", &e.to_string(), html),
                );
            }
            let login = session.as_ref().map(|s| Portal::login_headers(s, &roles));
            let session_end = match (portal, &session) {
                (Some(pt), Some(s)) => Some(SessionEnd {
                    revoked: pt.store().watch(&s.sid),
                    expires: s.expires,
                }),
                _ => None,
            };
            let fwd = Forwarding {
                who: &conn.who,
                path: &p,
                scheme: conn.scheme,
                login: login.as_ref(),
                session_cookie: portal.map(|pt| pt.cookie_name()),
                session_end,
                body_idle_timeout: conn.live.limits.body_idle_timeout,
            };
            let resp = proxy::forward(up, route, req, fwd).await;
            log(&route.name(), "allow", &why, resp)
        }
    }
}

struct AccessLog {
    node: Option<String>,
    who: Arc<PeerIdentity>,
    method: String,
    path: String,
    route: String,
    decision: String,
    reason: String,
    start: Instant,
    metrics: Option<Arc<Metrics>>,
}

/// Wraps a response body to count its bytes; the access-log line is written
/// when the body ends or is dropped (a client that goes away is logged too).
struct LoggedBody {
    inner: Body,
    bytes: u64,
    status: u16,
    log: Option<AccessLog>,
}

fn logged(resp: Response<Body>, log: AccessLog) -> Response<Body> {
    let status = resp.status().as_u16();
    if let (Some(m), Some(f)) = (
        &log.metrics,
        resp.extensions().get::<proxy::UpstreamFailure>(),
    ) {
        m.upstream_error(&log.route, f.0);
    }
    resp.map(|inner| {
        http_body_util::BodyExt::boxed(LoggedBody {
            inner,
            bytes: 0,
            status,
            log: Some(log),
        })
    })
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some(l) = self.log.take() {
            if let Some(m) = &l.metrics {
                m.request(&l.route, &l.decision, self.status);
            }
            tracing::info!(
                target: "tailpass::access",
                node = l.node.as_deref().unwrap_or("loopback"),
                peer = %l.who,
                peer_addr = %l.who.addr(),
                method = %l.method,
                path = %l.path,
                route = %l.route,
                decision = %l.decision,
                reason = %l.reason,
                status = self.status,
                bytes = self.bytes,
                duration_ms = l.start.elapsed().as_millis() as u64,
                "request"
            );
        }
    }
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::BodyExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn access_log_line_names_peer_route_decision_status_bytes_and_duration() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_writer(buf.clone())
            .finish();
        let body_len = tracing::subscriber::with_default(sub, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let resp = logged(
                    error(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "requires user a@b",
                        false,
                    ),
                    AccessLog {
                        node: Some("gw".into()),
                        who: Arc::new(PeerIdentity::Funnel {
                            addr: "203.0.113.7:4567".parse().unwrap(),
                        }),
                        method: "GET".into(),
                        path: "/admin".into(),
                        route: "route[2] /admin".into(),
                        decision: "deny".into(),
                        reason: "requires user a@b".into(),
                        start: Instant::now(),
                        metrics: None,
                    },
                );
                resp.into_body().collect().await.unwrap().to_bytes().len()
            })
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("tailpass::access"))
            .collect();
        assert_eq!(lines.len(), 1, "exactly one line per request: {out}");
        let j: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let f = &j["fields"];
        assert_eq!(f["status"], 403);
        assert_eq!(f["bytes"], body_len as u64);
        assert_eq!(f["route"], "route[2] /admin");
        assert_eq!(f["decision"], "deny");
        assert_eq!(f["node"], "gw");
        assert_eq!(f["peer"], "public client 203.0.113.7:4567 (Funnel)");
        assert!(f["duration_ms"].is_u64());
    }
}
