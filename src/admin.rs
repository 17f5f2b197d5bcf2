//! The admin listener (loopback only): `GET /healthz`, `GET /metrics` and,
//! when identity assertions are configured, `GET /.well-known/jwks.json`
//! (their public keys, see `docs/assertion.md`).
//! It serves no routes and no portal, so nothing behind it can be reached
//! from the tailnet or the internet.
//!
//! `/healthz` tells the truth about every node and every listener: 503
//! naming each one that is down or retrying after accept errors, and when
//! new connections are being refused for lack of file descriptors. It also
//! says whether the session store answers (`session_store`), without
//! turning 503 for it. The
//! admin listener itself is exempt from that reserve, so it can still say so.
//!
//! The endpoints are an axum [`Router`]; anything else (another path, or a
//! method other than GET) is the same plain 404 naming the two.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as Shared;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use tokio::sync::watch;
use tower::ServiceExt;

use arc_swap::ArcSwapOption;

use crate::assertion::Signer;
use crate::config::Limits;
use crate::http::response::{Body, full, with_type};
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
    /// The assertion keys in service (`None`: no assertions configured).
    pub(crate) assertion_keys: Arc<ArcSwapOption<Signer>>,
}

/// The admin endpoints on every connection of the admin listener (the
/// server's one accept loop runs it).
pub(crate) struct Admin {
    router: Router,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
}

impl Admin {
    pub(crate) fn new(state: State, stop: watch::Receiver<bool>) -> Admin {
        Admin {
            limits: state.limits.clone(),
            router: router(Arc::new(state)),
            stop,
        }
    }
}

/// `GET /healthz` and `GET /metrics`; everything else is not found.
fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

impl<S, W> Service<S, W> for Admin
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: Send + 'static,
{
    async fn serve(&self, io: S, _who: W, _h2: bool, ticket: Ticket) {
        let _ticket = ticket;
        let router = self.router.clone();
        serve_http(io, &self.limits, self.stop.clone(), false, move |req| {
            answer(router.clone(), req)
        })
        .await;
    }
}

/// One request through the router, its answer as the server's body type.
async fn answer<B>(router: Router, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::proxy::BoxError>,
{
    let req = req.map(axum::body::Body::new);
    let res = match router.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    let (parts, body) = res.into_parts();
    // Both endpoints answer a full body: this only unwraps it.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    Response::from_parts(parts, full(bytes))
}

async fn not_found() -> Response<Body> {
    with_type(
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found: /healthz, /metrics\n",
    )
}

async fn metrics(Shared(state): Shared<Arc<State>>) -> Response<Body> {
    state.health.sample_fds();
    with_type(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        state.metrics.render(),
    )
}

/// The public keys that verify assertions. Upstreams may cache the
/// document for five minutes and fetch it again on an unknown `kid`.
async fn jwks(Shared(state): Shared<Arc<State>>) -> Response<Body> {
    let Some(keys) = state.assertion_keys.load_full() else {
        return not_found().await;
    };
    let mut r = with_type(StatusCode::OK, "application/jwk-set+json", keys.jwks());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("max-age=300"),
    );
    r
}

async fn healthz(Shared(state): Shared<Arc<State>>) -> Response<Body> {
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
    // Reported, not a 503: with the shared store down tailpass still
    // serves (docs/hosts.md), and a restart would not bring Redis back.
    body["session_store"] = if state.metrics.session_store_is_up() {
        "up"
    } else {
        "unreachable"
    }
    .into();
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use http_body_util::{BodyExt, Empty};

    #[tokio::test]
    async fn two_endpoints_and_a_plain_404_for_everything_else() {
        let state = State {
            nodes: Vec::new(),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            limits: Arc::new(Limits::default()),
            assertion_keys: Default::default(),
        };
        let keys = state.assertion_keys.clone();
        let r = router(Arc::new(state));
        let ask = |m: Method, path: &str| {
            let req = Request::builder()
                .method(m)
                .uri(path)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let r = r.clone();
            async move {
                let res = answer(r, req).await;
                let (parts, body) = res.into_parts();
                let b = body.collect().await.unwrap().to_bytes();
                (parts, String::from_utf8_lossy(&b).into_owned())
            }
        };
        let (p, body) = ask(Method::GET, "/metrics").await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(
            p.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert!(body.contains("# EOF"), "{body}");
        let (p, body) = ask(Method::GET, "/healthz").await;
        assert_eq!(p.status, StatusCode::OK, "{body}");
        assert_eq!(p.headers["content-type"], "application/json");
        for (m, path) in [
            (Method::GET, "/"),
            (Method::GET, "/healthz/"),
            (Method::POST, "/healthz"),
            (Method::DELETE, "/metrics"),
            (Method::GET, "/.well-known/jwks.json"),
        ] {
            let (p, body) = ask(m.clone(), path).await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "{m} {path}");
            assert_eq!(body, "not found: /healthz, /metrics\n", "{m} {path}");
            assert_eq!(p.headers["content-type"], "text/plain");
        }
        // With assertions configured: the JWKS of the keys in service,
        // replaced when they are.
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(&dir.path().join("k.json"), 0).unwrap();
        keys.store(Some(Arc::new(signer.clone())));
        let (p, body) = ask(Method::GET, "/.well-known/jwks.json").await;
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.headers["content-type"], "application/jwk-set+json");
        assert_eq!(p.headers["cache-control"], "max-age=300");
        assert_eq!(body, signer.jwks());
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["keys"][0]["kid"].as_str().unwrap(), signer.kid());
        let (p, _) = ask(Method::POST, "/.well-known/jwks.json").await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
    }
}
