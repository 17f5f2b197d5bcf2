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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{CertSource, Config, NodeSpec, Route};
use crate::http::path;
use crate::http::response::{self, Body, error, not_found, wants_html};
use crate::identity::PeerIdentity;
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
    /// The loopback listener could not bind.
    #[error("loopback listener {addr}: {source}")]
    Loopback {
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
        let live = Arc::new(Live {
            shared: ArcSwap::from_pointee(Shared::new(&config, portal.clone())),
            metrics,
            stop: stop.clone(),
            open: Arc::new(()),
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
                let (l, bound) = bind(addr).await?;
                tracing::info!(addr = %bound, "loopback listener");
                tasks.spawn(loopback_loop(l, live.clone(), stop.clone()));
                Some(bound)
            }
            None => None,
        };
        let admin = match config.admin {
            Some(addr) => {
                let (l, bound) = bind(addr).await?;
                tracing::info!(addr = %bound, "admin listener (/healthz, /metrics)");
                let nodes: Vec<(String, Node)> = nodes
                    .iter()
                    .map(|n| (n.hostname.clone(), n.node.clone()))
                    .collect();
                tasks.spawn(crate::admin::serve(
                    l,
                    nodes,
                    live.metrics.clone(),
                    stop.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let public = match &config.public {
            Some(pl) => Some(
                crate::public::start(pl, shared_handler(live.clone()), stop.clone(), &mut tasks)
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
                (&c.nodes, c.loopback, c.admin, &c.public, &c.tailnet_domain)
            )
        };
        if spec(&config) != spec(&self.config) {
            notes.push("node, loopback, admin and public listener settings changed; they take effect after a restart".to_string());
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

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Loopback { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| StartError::Loopback { addr, source })?;
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

    let https = node.listen(spec.https_port).await.map_err(te)?;
    let port = if spec.https_port == 443 {
        String::new()
    } else {
        format!(":{}", spec.https_port)
    };
    let origin = Arc::new(PortalOrigin {
        node: spec.hostname.clone(),
        base: format!("https://{fqdn}{port}"),
        https_port: spec.https_port,
    });
    tasks.spawn(tailnet_https_loop(
        https,
        certs.clone(),
        origin,
        live.clone(),
        stop.clone(),
    ));
    if spec.http_redirect {
        let l80 = node.listen(80).await.map_err(te)?;
        tasks.spawn(redirect_loop(
            l80,
            fqdn.clone(),
            spec.https_port,
            stop.clone(),
        ));
    }
    if spec.funnel {
        let f = Arc::new(node.listen_funnel(443, true).await.map_err(te)?);
        // Funnel TLS is terminated in the shim; it presents the same
        // certificate as the tailnet listener, pushed again on renewal.
        let (fl, c) = (f.clone(), certs.clone());
        let mut changes = c.subscribe();
        let push = move || {
            if let Some(cur) = c.current() {
                let (cert, key) = cur.pem();
                if let Err(e) = fl.set_cert(cert, key) {
                    tracing::warn!(error = %e, "setting the Funnel certificate");
                }
            }
        };
        push();
        let host = spec.hostname.clone();
        tasks.spawn(async move {
            while changes.changed().await.is_ok() {
                tracing::info!(node = %host, "Funnel certificate renewed");
                push();
            }
        });
        tasks.spawn(funnel_loop(f, live.clone(), stop.clone()));
    }
    Ok(RunningNode {
        hostname: spec.hostname.clone(),
        fqdn,
        node,
        certs,
    })
}

async fn tailnet_https_loop(
    ln: crate::tailnet::Listener,
    certs: tls::Resolver,
    origin: Arc<PortalOrigin>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
    let node = ln.node().clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = ln.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::info!(node = node.hostname(), error = %e, "https listener ended"); return; }
            },
            _ = stop.changed() => return,
        };
        let acceptor = acceptor.clone();
        let node = node.clone();
        let live = live.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            // Identity first, once per connection, on the accepting node.
            let who = match stream.origin() {
                Origin::Tailnet => match timed_whois(&node, peer, &live.metrics).await {
                    Ok(w) => PeerIdentity::Tailnet {
                        addr: peer,
                        whois: Arc::new(w),
                    },
                    Err(e) => {
                        tracing::warn!(node = node.hostname(), %peer, error = %e, "whois failed; dropping connection");
                        return;
                    }
                },
                Origin::Funnel => PeerIdentity::Funnel { addr: peer },
            };
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(node = node.hostname(), %peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            serve(
                tls,
                Conn {
                    who: Arc::new(who),
                    node: Some(node.hostname().to_string()),
                    origin: Some(origin),
                    scheme: "https",
                    live,
                },
            )
            .await;
        });
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

async fn funnel_loop(
    ln: Arc<crate::tailnet::Listener>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) {
    let node = ln.node().hostname().to_string();
    loop {
        let (stream, peer) = tokio::select! {
            r = ln.accept() => match r { Ok(x) => x, Err(_) => return },
            _ = stop.changed() => return,
        };
        // Funnel-only listener: never a tailnet identity, whatever it says.
        let conn = Conn {
            who: Arc::new(PeerIdentity::Funnel { addr: peer }),
            node: Some(node.clone()),
            origin: None,
            scheme: "https",
            live: live.clone(),
        };
        tokio::spawn(serve(stream, conn));
    }
}

async fn loopback_loop(
    l: tokio::net::TcpListener,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (s, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "loopback accept"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = stop.changed() => return,
        };
        let conn = Conn {
            who: Arc::new(PeerIdentity::Loopback { addr: peer }),
            node: None,
            origin: None,
            scheme: "http",
            live: live.clone(),
        };
        tokio::spawn(serve(s, conn));
    }
}

/// Port 80: redirect to HTTPS on the node's own name. The client's Host
/// header is not used for the target, so this never redirects elsewhere.
async fn redirect_loop(
    ln: crate::tailnet::Listener,
    fqdn: String,
    https_port: u16,
    mut stop: watch::Receiver<bool>,
) {
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let base: Arc<str> = format!("https://{fqdn}{port}").into();
    loop {
        let (s, _) = tokio::select! {
            r = ln.accept() => match r { Ok(x) => x, Err(_) => return },
            _ = stop.changed() => return,
        };
        let base = base.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let base = base.clone();
                async move {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    let pq = if pq.starts_with('/') { pq } else { "/" };
                    Ok::<_, std::convert::Infallible>(response::redirect(
                        StatusCode::PERMANENT_REDIRECT,
                        &format!("{base}{pq}"),
                    ))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// What the public listener needs from the server: a way to serve one
/// accepted, TLS-terminated connection from a public client.
pub(crate) type PublicHandler = Arc<
    dyn Fn(
            Pin<Box<dyn AsyncReadWrite>>,
            SocketAddr,
        ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A boxed bidirectional stream.
pub(crate) trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

fn shared_handler(live: Arc<Live>) -> PublicHandler {
    Arc::new(move |io, peer| {
        let conn = Conn {
            who: Arc::new(PeerIdentity::Internet { addr: peer }),
            node: None,
            origin: None,
            scheme: "https",
            live: live.clone(),
        };
        Box::pin(serve(io, conn))
    })
}

async fn serve<S>(io: S, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Counts this connection as open until it ends (graceful shutdown waits).
    let _open = conn.live.open.clone();
    let mut stop = conn.live.stop.clone();
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &conn).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(c);
    let r = tokio::select! {
        r = c.as_mut() => r,
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
