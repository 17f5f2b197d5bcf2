//! The admin listener (loopback only): `GET /healthz` and `GET /metrics`.
//! It serves no routes and no portal, so nothing behind it can be reached
//! from the tailnet or the internet.
//!
//! `/healthz` tells the truth about every node and every listener: 503
//! naming each one that is down or retrying after accept errors, and when
//! new connections are being refused for lack of file descriptors. The
//! admin listener itself is exempt from that reserve, so it can still say so.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::config::Limits;
use crate::http::response::{Body, with_type};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::listen::{Health, Ticket};
use crate::metrics::Metrics;
use crate::server::{Service, serve_http};
use crate::tailnet::Node;

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// Nodes by host name.
    pub(crate) nodes: Vec<(String, Node)>,
    /// The process's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Every listener's health.
    pub(crate) health: Arc<Health>,
    /// Timeouts for admin connections too.
    pub(crate) limits: Arc<Limits>,
}

/// The admin endpoints on every connection of the admin listener (the
/// server's one accept loop runs it).
pub(crate) struct Admin {
    state: Arc<State>,
    stop: watch::Receiver<bool>,
}

impl Admin {
    pub(crate) fn new(state: State, stop: watch::Receiver<bool>) -> Admin {
        Admin {
            state: Arc::new(state),
            stop,
        }
    }
}

impl<S, W> Service<S, W> for Admin
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: Send + 'static,
{
    async fn serve(&self, io: S, _who: W, _h2: bool, ticket: Ticket) {
        let _ticket = ticket;
        let state = self.state.clone();
        let limits = state.limits.clone();
        serve_http(io, &limits, self.stop.clone(), false, move |req| {
            let state = state.clone();
            async move { answer(req, &state).await }
        })
        .await;
    }
}

async fn answer(req: Request<Incoming>, state: &State) -> Response<Body> {
    let reply = with_type;
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => healthz(state).await,
        ("GET", "/metrics") => {
            state.health.sample_fds();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.render(),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /healthz, /metrics\n".into(),
        ),
    }
}

async fn healthz(state: &State) -> Response<Body> {
    let mut problems = Vec::new();
    let mut nodes = serde_json::Map::new();
    for (name, node) in &state.nodes {
        let st = match tokio::time::timeout(Duration::from_secs(5), node.status()).await {
            Ok(Ok(st)) => st.backend_state,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer".to_string(),
        };
        if st != "Running" {
            problems.push(format!("node {name}: {st}"));
        }
        nodes.insert(name.clone(), st.into());
    }
    let report = state.health.report();
    problems.extend(report.problems);
    let ok = problems.is_empty();
    let mut body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "nodes": nodes,
        "listeners": report.listeners,
        "problems": problems,
    });
    if let Some((open, limit, reserve)) = report.fds {
        body["fds"] = serde_json::json!({"open": open, "limit": limit, "reserve": reserve});
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_type(status, "application/json", body.to_string())
}
