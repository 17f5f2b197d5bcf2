//! The admin listener (loopback only): `GET /healthz` and `GET /metrics`.
//! It serves no routes and no portal, so nothing behind it can be reached
//! from the tailnet or the internet.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::http::response::{Body, with_type};
use crate::metrics::Metrics;
use crate::tailnet::Node;

/// Serves the admin endpoints until `stop`.
pub async fn serve(
    l: tokio::net::TcpListener,
    nodes: Vec<(String, Node)>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let nodes = Arc::new(nodes);
    loop {
        let (s, _) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "admin accept"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = stop.changed() => return,
        };
        let (nodes, metrics) = (nodes.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (nodes, metrics) = (nodes.clone(), metrics.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(req, &nodes, &metrics).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    nodes: &[(String, Node)],
    metrics: &Metrics,
) -> Response<Body> {
    let reply = with_type;
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => {
            let mut all_up = true;
            let mut out = serde_json::Map::new();
            for (name, node) in nodes {
                let state = match tokio::time::timeout(Duration::from_secs(5), node.status()).await
                {
                    Ok(Ok(st)) => st.backend_state,
                    Ok(Err(e)) => format!("error: {e}"),
                    Err(_) => "no answer".to_string(),
                };
                all_up &= state == "Running";
                out.insert(name.clone(), state.into());
            }
            let status = if all_up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({
                "status": if all_up { "ok" } else { "degraded" },
                "nodes": out,
            });
            reply(status, "application/json", body.to_string())
        }
        ("GET", "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /healthz, /metrics\n".into(),
        ),
    }
}
