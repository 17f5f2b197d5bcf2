//! Prometheus metrics, served on the admin listener: requests by route,
//! decision and status; sign-in outcomes; upstream errors; WhoIs latency;
//! certificate expiry; live sessions.
//!
//! Label values are route names, decisions, status codes, provider names
//! and outcome words — never user identities, paths or tokens, so the
//! series stay few and the metrics leak nothing.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    decision: String,
    status: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteNodeLabels {
    route: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    provider: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// Every metric tailpass keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    durations: Family<RouteNodeLabels, Histogram>,
    whois: Histogram,
    cert_expiry: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    sessions: Gauge,
    session_store_up: Gauge,
    reloads: Family<LoginLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    listener_up: Family<ListenerLabels, Gauge>,
    open_fds: Gauge,
    fd_limit: Gauge,
    build_info: Family<BuildLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and returns it (metrics are handles:
/// the registry and the struct share one value).
fn register<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// `tailpass_request_duration_seconds{route,node}`.
fn durations(r: &mut Registry) -> Family<RouteNodeLabels, Histogram> {
    register(
        r,
        "request_duration_seconds",
        "Time from a request's arrival to its response head, by route and node (upstream time included; streamed bodies and websockets after the head are not)",
        Family::<RouteNodeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        }),
    )
}

/// Registers a fresh metric of a type with a default (counters, gauges,
/// families).
fn add<M: Metric + Clone + Default>(r: &mut Registry, name: &str, help: &str) -> M {
    register(r, name, help, M::default())
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub(crate) fn new() -> Metrics {
        let mut r = Registry::with_prefix("tailpass");
        let m = Metrics {
            requests: add(
                &mut r,
                "requests",
                "Requests by route, decision and HTTP status",
            ),
            logins: add(
                &mut r,
                "logins",
                "Sign-in outcomes by provider (ok, rejected, no_role, stale, provider_error, …)",
            ),
            upstream_errors: add(
                &mut r,
                "upstream_errors",
                "Upstream failures by route and kind (connect, timeout)",
            ),
            durations: durations(&mut r),
            whois: register(
                &mut r,
                "whois_duration_seconds",
                "Time to identify a tailnet connection with WhoIs",
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            ),
            cert_expiry: add(
                &mut r,
                "certificate_expiry_timestamp_seconds",
                "When each node's current TLS certificate expires (Unix time)",
            ),
            sessions: add(&mut r, "sessions", "Live login sessions"),
            session_store_up: add(
                &mut r,
                "session_store_up",
                "Whether the session store answers (1) or not (0); the file store always does",
            ),
            reloads: add(
                &mut r,
                "config_reloads",
                "Configuration reloads by outcome (the provider label is unused: \"-\")",
            ),
            open_connections: add(
                &mut r,
                "open_connections",
                "Client connections open, by listener",
            ),
            refused: add(
                &mut r,
                "connections_refused",
                "Connections closed at accept, by listener and reason (listener_full, source_full, fd_reserve)",
            ),
            accept_errors: add(
                &mut r,
                "accept_errors",
                "Accept errors (resource shortage, failed hand-off), by listener; each is retried",
            ),
            listener_up: add(
                &mut r,
                "listener_up",
                "1 while a listener is open, 0 while it is being opened again",
            ),
            open_fds: add(&mut r, "open_fds", "Open file descriptors"),
            fd_limit: add(
                &mut r,
                "fd_limit",
                "Soft limit on open file descriptors (RLIMIT_NOFILE)",
            ),
            build_info: add(
                &mut r,
                "build_info",
                "Always 1; the labels say which tailpass is running",
            ),
            registry: r,
        };
        m.starting_values();
        m
    }

    /// What holds before anything happened: the build, and a session store
    /// that is up until a shared one says otherwise (no store, or the file
    /// store, is never down).
    fn starting_values(&self) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                commit: crate::cli::COMMIT.into(),
            })
            .set(1);
        self.session_store_up.set(1);
    }

    /// Whether the session store answered at the last upkeep.
    pub(crate) fn session_store_is_up(&self) -> bool {
        self.session_store_up.get() == 1
    }

    /// Counts one finished request. `route` is the route's path (with its
    /// host when it has one), so reordering the file keeps dashboards;
    /// `node` is the node that took it (`loopback`, `public` otherwise).
    pub(crate) fn request(&self, route: &str, node: &str, decision: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                decision: decision.to_string(),
                status: status.to_string(),
                node: node.to_string(),
            })
            .inc();
    }

    /// Records how long a request took until its response head.
    pub(crate) fn request_duration(&self, route: &str, node: &str, took: Duration) {
        self.durations
            .get_or_create(&RouteNodeLabels {
                route: route.to_string(),
                node: node.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one sign-in outcome.
    pub(crate) fn login(&self, provider: &str, outcome: &str) {
        self.logins
            .get_or_create(&LoginLabels {
                provider: provider.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one upstream failure.
    pub(crate) fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                route: route.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Records one WhoIs lookup.
    pub(crate) fn whois(&self, took: Duration) {
        self.whois.observe(took.as_secs_f64());
    }

    /// Sets a node's certificate expiry.
    pub(crate) fn cert_expiry(&self, node: &str, not_after: std::time::SystemTime) {
        let t = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.cert_expiry
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .set(t);
    }

    /// Sets the number of live sessions.
    pub(crate) fn sessions(&self, n: usize) {
        self.sessions.set(n as i64);
    }

    /// Sets whether the session store answers.
    pub(crate) fn session_store_up(&self, up: bool) {
        self.session_store_up.set(i64::from(up));
    }

    /// Counts a configuration reload (`ok` or `rejected`).
    pub(crate) fn reload(&self, outcome: &str) {
        self.reloads
            .get_or_create(&LoginLabels {
                provider: "-".into(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Sets a listener's open connections.
    pub(crate) fn open_connections(&self, listener: &str, n: i64) {
        self.open_connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .set(n);
    }

    /// Counts a connection refused at accept.
    pub(crate) fn refused(&self, listener: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts an accept error.
    pub(crate) fn accept_error(&self, listener: &str) {
        self.accept_errors
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// Whether a listener is open.
    pub(crate) fn listener_up(&self, listener: &str, up: bool) {
        self.listener_up
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .set(i64::from(up));
    }

    /// Open descriptors and their soft limit.
    pub(crate) fn fds(&self, open: usize, limit: u64) {
        self.open_fds.set(open as i64);
        self.fd_limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_with_labels() {
        let m = Metrics::new();
        m.request("/app", "gw", "allow", 200);
        m.request("/app", "gw", "allow", 200);
        m.request_duration("/app", "gw", Duration::from_millis(3));
        m.login("pocketid", "ok");
        m.upstream_error("/down", "connect");
        m.whois(Duration::from_millis(2));
        m.sessions(3);
        m.session_store_up(false);
        let t = m.render();
        assert!(
            t.contains(
                r#"tailpass_requests_total{route="/app",decision="allow",status="200",node="gw"} 2"#
            ),
            "{t}"
        );
        assert!(t.contains(r#"tailpass_logins_total{provider="pocketid",outcome="ok"} 1"#));
        assert!(t.contains(r#"tailpass_upstream_errors_total{route="/down",kind="connect"} 1"#));
        assert!(t.contains("tailpass_whois_duration_seconds_count 1"));
        assert!(t.contains("tailpass_sessions 3"));
        assert!(t.contains("tailpass_session_store_up 0"));
        assert!(
            t.contains(
                r#"tailpass_request_duration_seconds_bucket{le="0.005",route="/app",node="gw"} 1"#
            ),
            "{t}"
        );
        assert!(t.contains(r#"tailpass_build_info{version=""#));
    }
}
