//! Serving HTTP on one admitted connection: the settings every listener
//! shares (HTTP/1 and HTTP/2 bounds) and the watchdog that closes a
//! connection that waits too long (first request, request head, idle).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::config::Limits;
use crate::http::response::Body;
use crate::listen::{Activity, Guarded, Timeouts, Watched};

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
