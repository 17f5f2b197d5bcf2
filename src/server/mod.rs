//! Wiring: joins every configured node, obtains certificates, starts every
//! listener (tailnet HTTPS and the :80 redirect per node, Funnel, loopback,
//! public, admin), reloads and shuts down. Each listener is one
//! `accept::run` with its own handshake and service; each request on a
//! client listener goes through `gateway::handle`.
//!
//! A request's path through the modules (details in `docs/architecture.md`):
//! `listen` admits the connection → `accept` fixes who is calling (WhoIs
//! on the accepting node, or the kind of listener) and terminates TLS →
//! `conn` serves HTTP under the watchdog → `gateway` normalizes, routes,
//! authenticates, decides and forwards (`proxy`), and writes the access log.

mod accept;
mod conn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::assertion::{Assertion, Signer};
use crate::config::{CertSource, Config, Limits, NodeOrigin, NodeSpec, PublicListener};
use crate::gateway::Snapshot;
use crate::identity::PeerIdentity;
use crate::listen::{
    Door, Fds, Gate, Health, Kind, Sources, TailnetAcceptor, TcpAcceptor, push_cert,
};
use crate::metrics::Metrics;
use crate::oidc::Dialer;
use crate::portal::{Portal, PortalOrigin};
use crate::proxy::NodeSlot;
use crate::tailnet::{LogSink, Node, NodeConfig};
use crate::tls;
pub(crate) use accept::{Established, Handshake, Service};
use accept::{Pipeline, Plain, Redirect, TailnetTls};
pub(crate) use conn::serve_http;

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
    /// The identity assertion's key file (or JWKS file) could not be read
    /// or written.
    #[error("assertion: {0}")]
    Assertion(String),
    /// A loopback listener (`loopback`, `admin`) could not bind.
    #[error("{}", bind_message(listener, addr, source))]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A bind failure in words: which listener, which address, and for a
/// taken port, what to change.
fn bind_message(listener: &str, addr: &SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{listener} listener: address in use: another program listens on {addr} — change [{listener}] listen"
        ),
        _ => format!("{listener} listener {addr}: {e}"),
    }
}

/// Options that are not in the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Validity of local-CA leaf certificates.
    pub local_ca_validity: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            local_ca_validity: Duration::from_secs(30 * 86400),
        }
    }
}

/// A running node of the gateway.
#[derive(Debug, Clone)]
pub struct RunningNode {
    /// Host name.
    pub(crate) hostname: String,
    /// MagicDNS name (without trailing dot).
    pub fqdn: String,
    /// `https://<fqdn>[:port]`.
    pub(crate) origin: String,
    /// The tailnet node serving this host name (dial from it, ask it WhoIs).
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
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection holds: the current [`Snapshot`] (swapped whole on
/// reload; a request uses the snapshot it started with), the metrics, the
/// shutdown signal and a token counting open connections.
struct Live {
    shared: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    open: Arc<()>,
    /// Fixed at start: listener settings need a restart.
    limits: Arc<Limits>,
    /// The nodes' host names in start order (node changes need a restart):
    /// every snapshot resolves its routes' nodes against this list.
    running: Arc<[String]>,
    /// The same nodes, each set once it has joined: tailnet upstreams are
    /// dialed through them.
    via: Arc<[NodeSlot]>,
    health: Arc<Health>,
    fds: Arc<Fds>,
    /// The assertion keys in service, for the admin listener's JWKS
    /// (replaced on reload, like the snapshot that signs with them).
    assertion_keys: Arc<ArcSwapOption<Signer>>,
}

impl Live {
    fn new(
        config: &Config,
        portal: Option<Arc<Portal>>,
        assertion: Option<Arc<Assertion>>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Live> {
        let fds = Arc::new(Fds::new(config.limits.fd_reserve, metrics.clone()));
        let health = Arc::new(Health::default());
        health.watch_fds(fds.clone());
        let body_idle = config.limits.body_idle_timeout;
        let running: Arc<[String]> = config.nodes.iter().map(|n| n.hostname.clone()).collect();
        let via: Arc<[NodeSlot]> = running.iter().map(|_| NodeSlot::default()).collect();
        let keys = assertion.as_ref().map(|a| Arc::new(a.signer.clone()));
        let snapshot =
            Snapshot::new(config, (&running, &via), portal, body_idle).with_assertion(assertion);
        Arc::new(Live {
            assertion_keys: Arc::new(ArcSwapOption::new(keys)),
            shared: ArcSwap::from_pointee(snapshot),
            running,
            via,
            metrics,
            stop,
            open: Arc::new(()),
            limits: Arc::new(config.limits.clone()),
            health,
            fds,
        })
    }

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
        let assertion = Assertion::load(&config, None)
            .map_err(|e| StartError::Assertion(e.to_string()))?
            .map(Arc::new);
        let (shutdown, stop) = watch::channel(false);
        let live = Live::new(&config, portal.clone(), assertion, metrics, stop);
        let mut tasks = JoinSet::new();
        let mut nodes = Vec::new();
        for spec in &config.nodes {
            let rn = start_node(spec, &opts, &live, &mut tasks).await?;
            if portal.as_ref().is_some_and(|p| p.serves(&rn.hostname)) {
                let _ = dialer.node.set(rn.node.clone());
            }
            nodes.push(rn);
        }
        share_store(&config, &nodes, &mut tasks).await?;
        tasks.spawn(upkeep(live.clone()));
        let loopback = match config.loopback {
            Some(addr) => Some(start_loopback(addr, &live, &mut tasks).await?),
            None => None,
        };
        let admin = match config.admin {
            Some(addr) => Some(start_admin(addr, &live, &nodes, &mut tasks).await?),
            None => None,
        };
        let public = match &config.public {
            Some(pl) => Some(start_public(pl, &live, &mut tasks).await?),
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
    pub(crate) fn reload(&mut self, config: Config) -> Result<Vec<String>, String> {
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
        let assertion = Assertion::load(&config, current.assertion.as_ref().map(|a| &a.signer))
            .map_err(|e| format!("assertion: {e}"))
            .inspect_err(|_| self.live.metrics.reload("rejected"))?
            .map(Arc::new);
        let keys = assertion.as_ref().map(|a| Arc::new(a.signer.clone()));
        let body_idle = self.live.limits.body_idle_timeout;
        self.live.shared.store(Arc::new(
            Snapshot::new(
                &config,
                (&self.live.running, &self.live.via),
                portal,
                body_idle,
            )
            .with_assertion(assertion),
        ));
        self.live.assertion_keys.store(keys);
        self.config = config;
        self.live.metrics.reload("ok");
        Ok(notes)
    }

    /// Graceful shutdown: stops accepting, lets requests in flight finish
    /// (at most `DRAIN_TIMEOUT`, 10 s), then closes the nodes.
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

/// Serves this host's Redis session store to the other hosts on the node
/// `[sessions] share_on` names (docs/hosts.md).
async fn share_store(
    config: &Config,
    nodes: &[RunningNode],
    tasks: &mut JoinSet<()>,
) -> Result<(), StartError> {
    let Some(crate::config::SessionStore::Redis(r)) = config.portal.as_ref().map(|p| &p.store)
    else {
        return Ok(());
    };
    let (Some(share), Some((host, port))) = (&r.share, r.host_port()) else {
        return Ok(());
    };
    let Some(rn) = nodes.iter().find(|n| n.hostname == share.node) else {
        return Ok(());
    };
    let target = format!("{host}:{port}");
    let serve = crate::session::share(rn.node.clone(), port, target, share.clone())
        .await
        .map_err(|source| StartError::Tailnet {
            node: share.node.clone(),
            source,
        })?;
    tasks.spawn(serve);
    Ok(())
}

/// Background upkeep: session expiry and refresh (which closes websockets
/// of ended sessions), and the sessions gauge.
async fn upkeep(live: Arc<Live>) {
    loop {
        let shared = live.shared.load_full();
        let every = match &shared.sessions {
            Some(s) => {
                s.tick().await;
                live.metrics.sessions(s.len());
                live.metrics.session_store_up(s.store_up());
                s.upkeep_interval()
            }
            None => Duration::from_secs(30),
        };
        drop(shared);
        tokio::time::sleep(every).await;
    }
}

/// The loopback listener: local clients, routes that allow it.
async fn start_loopback(
    addr: SocketAddr,
    live: &Arc<Live>,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let (l, bound) = bind("loopback", addr).await?;
    tracing::info!(addr = %bound, "loopback listener");
    tasks.spawn(accept::run(
        TcpAcceptor::new(l, false),
        live.door("loopback", Sources::Any),
        Plain(|addr| PeerIdentity::Loopback { addr }),
        Pipeline {
            node: None,
            node_id: None,
            origin: None,
            scheme: "http",
            live: live.clone(),
        },
        live.limits.clone(),
        live.stop.clone(),
    ));
    Ok(bound)
}

/// The admin listener: `/healthz` and `/metrics`.
async fn start_admin(
    addr: SocketAddr,
    live: &Arc<Live>,
    nodes: &[RunningNode],
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let (l, bound) = bind("admin", addr).await?;
    tracing::info!(addr = %bound, "admin listener (/healthz, /metrics, /.well-known/jwks.json)");
    // The operator's way in: not subject to the reserve, and a small cap
    // of its own; its acceptor serves even on the spare descriptor.
    let gate = Gate::new("admin", 64, 64, Sources::Any, None, live.metrics.clone());
    let door = Door::new(&live.health, gate, live.metrics.clone());
    let state = crate::admin::State {
        nodes: nodes
            .iter()
            .map(|n| (n.hostname.clone(), n.node.clone()))
            .collect(),
        metrics: live.metrics.clone(),
        health: live.health.clone(),
        limits: live.limits.clone(),
        assertion_keys: live.assertion_keys.clone(),
    };
    tasks.spawn(accept::run(
        TcpAcceptor::new(l, true),
        door,
        Plain(|_| ()),
        crate::admin::Admin::new(state, live.stop.clone()),
        live.limits.clone(),
        live.stop.clone(),
    ));
    Ok(bound)
}

/// The public listener: custom domains, public routes only.
async fn start_public(
    pl: &PublicListener,
    live: &Arc<Live>,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let (acceptor, handshake, addr) = crate::public::start(pl, tasks).await?;
    tasks.spawn(accept::run(
        acceptor,
        live.door("public", Sources::Public),
        handshake,
        Pipeline {
            node: None,
            node_id: None,
            origin: None,
            scheme: "https",
            live: live.clone(),
        },
        live.limits.clone(),
        live.stop.clone(),
    ));
    Ok(addr)
}

async fn start_node(
    spec: &NodeSpec,
    opts: &Options,
    live: &Arc<Live>,
    tasks: &mut JoinSet<()>,
) -> Result<RunningNode, StartError> {
    let te = |source| StartError::Tailnet {
        node: spec.hostname.clone(),
        source,
    };
    let mut nc = NodeConfig::new(&spec.hostname, &spec.state_dir);
    nc.auth_key = spec.auth_key.as_ref().map(|s| s.expose().to_string());
    nc.control_url = spec.control_url.clone();
    nc.ephemeral = spec.ephemeral;
    nc.tags = spec.tags.clone();
    nc.logs = LogSink::Tracing;
    let node = Node::new(nc).map_err(te)?;
    let status = join(&node, spec, spec.join_timeout).await.map_err(te)?;
    let fqdn = status
        .fqdn()
        .map(str::to_string)
        .unwrap_or_else(|| spec.hostname.clone());
    let ip = status
        .ip()
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    tracing::info!(node = %spec.hostname, fqdn = %fqdn, ip = ip.as_str(), "joined the tailnet");
    // Tailnet upstreams of this node's routes dial through it from now on.
    if let Some(id) = crate::gateway::node_id(&live.running, &spec.hostname) {
        let _ = live.via[id.0].set(node.clone());
    }
    let certs = certificates(spec, &node, &fqdn, opts, live, tasks).await?;
    node_listeners(spec, &node, &fqdn, &certs, live, tasks)
        .await
        .map_err(te)?;
    Ok(RunningNode {
        hostname: spec.hostname.clone(),
        origin: NodeOrigin::new(&fqdn, spec.https_port).to_string(),
        fqdn,
        node,
        certs,
    })
}

/// Joins the tailnet, saying so: where to at once, then every 15 s while
/// it waits (an unreachable control server; a node waiting for its login,
/// whose URL the tsnet log shows at WARN).
async fn join(
    node: &Node,
    spec: &NodeSpec,
    timeout: Duration,
) -> crate::tailnet::Result<crate::tailnet::Status> {
    const EVERY: Duration = Duration::from_secs(15);
    let control = spec
        .control_url
        .as_deref()
        .unwrap_or("https://controlplane.tailscale.com");
    let host = &spec.hostname;
    tracing::info!(node = %host, control, timeout_s = timeout.as_secs(), "joining the tailnet");
    let up = node.up(timeout);
    tokio::pin!(up);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + EVERY, EVERY);
    loop {
        tokio::select! {
            r = &mut up => return r,
            _ = tick.tick() => tracing::info!(
                node = %host,
                control,
                waited_s = start.elapsed().as_secs(),
                timeout_s = timeout.as_secs(),
                "still joining the tailnet (is the control server reachable? does the node need a login?)"
            ),
        }
    }
}

/// The node's certificate resolver (renewed in a task of its own) and the
/// certificate expiry gauge, updated on every renewal.
async fn certificates(
    spec: &NodeSpec,
    node: &Node,
    fqdn: &str,
    opts: &Options,
    live: &Arc<Live>,
    tasks: &mut JoinSet<()>,
) -> Result<tls::Resolver, StartError> {
    let tls_err = |source| StartError::Tls {
        node: spec.hostname.clone(),
        source,
    };
    let source = match &spec.cert {
        CertSource::Tailnet => tls::Source::Tailnet {
            node: node.clone(),
            domain: fqdn.to_string(),
        },
        CertSource::LocalCa => {
            let ca =
                tls::LocalCa::open_or_create(&spec.state_dir.join("local-ca")).map_err(tls_err)?;
            tls::Source::LocalCa {
                ca: Arc::new(ca),
                names: vec![fqdn.to_string(), spec.hostname.clone()],
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
    let (certs, renew) = tls::manage(source).await;
    tasks.spawn(async move {
        let _ = renew.await;
    });
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
    Ok(certs)
}

/// The node's listeners: HTTPS, the optional :80 redirect and Funnel.
async fn node_listeners(
    spec: &NodeSpec,
    node: &Node,
    fqdn: &str,
    certs: &tls::Resolver,
    live: &Arc<Live>,
    tasks: &mut JoinSet<()>,
) -> crate::tailnet::Result<()> {
    let name = &spec.hostname;
    let (limits, stop) = (live.limits.clone(), live.stop.clone());
    let https = TailnetAcceptor::open(node, spec.https_port, Kind::Tailnet, None).await?;
    let handshake = TailnetTls {
        node: node.clone(),
        tls: tokio_rustls::TlsAcceptor::from(certs.server_config()),
        certs: certs.clone(),
        metrics: live.metrics.clone(),
    };
    let node_id = crate::gateway::node_id(&live.running, name);
    let pipeline = |origin| Pipeline {
        node: Some(name.clone()),
        node_id,
        origin,
        scheme: "https",
        live: live.clone(),
    };
    let origin = Arc::new(PortalOrigin {
        node: name.clone(),
        base: NodeOrigin::new(fqdn, spec.https_port).to_string(),
        https_port: spec.https_port,
    });
    let door = live.door(&format!("{name} https"), Sources::Exact);
    let https = accept::run(
        https,
        door,
        handshake,
        pipeline(Some(origin)),
        limits.clone(),
        stop.clone(),
    );
    tasks.spawn(https);
    if spec.http_redirect {
        let l80 = TailnetAcceptor::open(node, 80, Kind::Tailnet, None).await?;
        let door = live.door(&format!("{name} http"), Sources::Exact);
        let redirect = Redirect {
            base: NodeOrigin::new(fqdn, spec.https_port).to_string().into(),
            live: live.clone(),
        };
        tasks.spawn(accept::run(
            l80,
            door,
            Plain(|_| ()),
            redirect,
            limits.clone(),
            stop.clone(),
        ));
    }
    if spec.funnel {
        let f = funnel_acceptor(node, name, certs, tasks).await?;
        let door = live.door(&format!("{name} funnel"), Sources::Public);
        // Funnel-only listener: never a tailnet identity, whatever it says.
        let who = Plain(|addr| PeerIdentity::Funnel { addr });
        tasks.spawn(accept::run(f, door, who, pipeline(None), limits, stop));
    }
    Ok(())
}

/// Funnel TLS is terminated in the shim; it presents the same certificate
/// as the tailnet listener, pushed again on renewal (and when the listener
/// is opened again).
async fn funnel_acceptor(
    node: &Node,
    name: &str,
    certs: &tls::Resolver,
    tasks: &mut JoinSet<()>,
) -> crate::tailnet::Result<TailnetAcceptor> {
    let f = TailnetAcceptor::open(node, 443, Kind::Funnel, Some(certs.clone())).await?;
    let (current, c) = (f.current(), certs.clone());
    let mut changes = c.subscribe();
    let host = name.to_string();
    tasks.spawn(async move {
        while changes.changed().await.is_ok() {
            tracing::info!(node = %host, "Funnel certificate renewed");
            push_cert(&current, &c);
        }
    });
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A taken port names the listener, the address and the key to change.
    #[tokio::test]
    async fn a_taken_port_names_the_listener_and_the_fix() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind("admin", addr).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "admin listener: address in use: another program listens on {addr} — change [admin] listen"
            )
        );
        let e = bind("loopback", addr).await.unwrap_err().to_string();
        assert!(e.starts_with("loopback listener: address in use"), "{e}");
    }
}
