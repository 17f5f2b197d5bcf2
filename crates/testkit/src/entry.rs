//! A local entry point into the tailnet: a loopback HTTP proxy that carries
//! a browser (or any HTTP-proxy-aware client) on this machine into the
//! tailnet through a [`Node`], without a system Tailscale.
//!
//! - `CONNECT host:port` dials `host:port` through the node, answers
//!   `200 Connection Established` and then copies bytes both ways until
//!   either side closes (HTTPS and websockets ride on this).
//! - Absolute-form plain-HTTP requests (`GET http://host/path`) are sent to
//!   `host:port` (port 80 by default) over a fresh tailnet connection, in
//!   origin form with hop-by-hop headers removed; websocket upgrades pass.
//!   Each such request gets its own tailnet connection (no pooling: this is
//!   for a browser on a demo or test machine, not for load).
//! - Anything else (an origin-form request: someone browsing the proxy
//!   itself) is answered `400 this is a proxy`.
//!
//! Only tailnet destinations are dialed: names under the node's MagicDNS
//! suffix, single-label MagicDNS names, and addresses in Tailscale's ranges
//! (100.64.0.0/10, fd7a:115c:a1e0::/48). Other targets get `403`: this is a
//! way into the tailnet, not to the internet (tsnet would dial those from
//! the host's own network). A browser's loopback targets never reach the
//! proxy (Chromium does not proxy 127.0.0.1), so a local IdP works as is.
//!
//! The proxy has no authentication of its own: whoever can connect to it
//! acts as the node on the tailnet. The caller must therefore bind it to a
//! loopback address (`127.0.0.1:PORT`); this module does not check that.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use tailpass::tailnet::Node;

use tailpass::http::headers;
use tailpass::tailnet::names;
use wire::{Body, full};

mod wire;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request in flight may go on after `stop`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every connection shares: the node and its MagicDNS suffix (read
/// from the node's status on first use).
struct Shared {
    node: Node,
    suffix: tokio::sync::OnceCell<String>,
}

/// Why a target is not dialed.
enum Refusal {
    /// Not a `host:port` the proxy can use.
    Malformed(&'static str),
    /// Well-formed, but not on the tailnet.
    NotTailnet(String),
    /// The node cannot say what its MagicDNS suffix is.
    NoStatus(String),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Malformed(reason) => reason,
            Refusal::NotTailnet(_) => "not a tailnet destination",
            Refusal::NoStatus(_) => "no tailnet status",
        }
    }

    fn response(&self) -> Response<Body> {
        match self {
            Refusal::Malformed(reason) => bad_request(reason),
            Refusal::NotTailnet(target) => wire::error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("{target} is not on the tailnet; this proxy only goes into the tailnet"),
            ),
            Refusal::NoStatus(e) => bad_gateway(&format!("the tailnet node is not ready: {e}")),
        }
    }
}

/// Whether `host` (as in an authority: IPv6 in brackets) names a tailnet
/// destination, given the MagicDNS suffix (`tail1234.ts.net`).
fn is_tailnet_host(host: &str, suffix: &str) -> bool {
    if let Some(is) = names::host_ip_is_tailnet(host) {
        return is;
    }
    let name = host.trim_end_matches('.');
    if name.is_empty() {
        return false;
    }
    if !name.contains('.') {
        // A MagicDNS short name ("gw"); never "localhost".
        return !name.eq_ignore_ascii_case("localhost");
    }
    names::is_below(name, suffix)
}

impl Shared {
    /// The `host:port` to dial for `authority`, if it is a tailnet target.
    async fn target(
        &self,
        authority: Option<&Authority>,
        default_port: Option<u16>,
    ) -> Result<String, Refusal> {
        let target = dial_target(authority, default_port).map_err(Refusal::Malformed)?;
        let host = authority.map(|a| a.host()).unwrap_or_default();
        let suffix = self
            .suffix
            .get_or_try_init(|| async {
                self.node
                    .status()
                    .await
                    .map(|st| st.magic_dns_suffix)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(Refusal::NoStatus)?;
        if is_tailnet_host(host, suffix) {
            Ok(target)
        } else {
            Err(Refusal::NotTailnet(target))
        }
    }
}

/// Serves an HTTP proxy on `listener` that dials every target through
/// `node` (see the module docs for what it accepts; only tailnet targets).
///
/// `listener` must be bound to a loopback address: the proxy does no
/// authentication, so anyone able to reach it uses the node's tailnet
/// identity. Binding is the caller's job and is not checked here.
///
/// Runs until `stop` becomes `true` (or its sender is dropped): then it
/// stops accepting, closes open tunnels and idle connections, and gives
/// requests in flight a few seconds to finish.
pub async fn serve_proxy(
    listener: tokio::net::TcpListener,
    node: Node,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, node = node.hostname(), "entry proxy listening");
    let shared = Arc::new(Shared {
        node,
        suffix: tokio::sync::OnceCell::new(),
    });
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "entry proxy accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "entry proxy connection");
            serve_connection(stream, shared, stop).await;
        });
    }
    tracing::info!(addr = ?local, "entry proxy stopped");
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let svc = {
        let stop = stop.clone();
        service_fn(move |req| handle(req, shared.clone(), stop.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stop) => {
            // Idle connections close at once; a response still streaming
            // gets a few seconds.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "entry proxy connection ended with an error");
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Response<Body>, std::convert::Infallible> {
    Ok(if req.method() == Method::CONNECT {
        connect(req, &shared, stop).await
    } else if req.uri().scheme().is_some() {
        forward(req, &shared, stop).await
    } else {
        bad_request("this is a proxy")
    })
}

fn bad_request(reason: &str) -> Response<Body> {
    wire::error(StatusCode::BAD_REQUEST, "Bad request", reason)
}

fn bad_gateway(reason: &str) -> Response<Body> {
    wire::error(StatusCode::BAD_GATEWAY, "Bad gateway", reason)
}

/// `host:port` from an authority, or why it cannot be a dial target.
fn dial_target(
    authority: Option<&Authority>,
    default_port: Option<u16>,
) -> Result<String, &'static str> {
    let a = authority.ok_or("the request names no target host")?;
    if a.as_str().contains('@') {
        return Err("user information in the target is not allowed");
    }
    let host = a.host();
    if host.is_empty() {
        return Err("the target has no host");
    }
    let port = match a.port_u16() {
        Some(p) => p,
        None if a.as_str().ends_with(':') => return Err("the target has an empty port"),
        None => default_port.ok_or("the target needs a port (host:port)")?,
    };
    if port == 0 {
        return Err("port 0 is not a valid target");
    }
    // `host()` keeps the brackets of an IPv6 literal, as dialing wants.
    Ok(format!("{host}:{port}"))
}

/// Completes when `stop` turns true or its sender is gone (the guard
/// `wait_for` returns is not `Send`, so it is dropped here).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn connect(
    mut req: Request<Incoming>,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Response<Body> {
    let target = match shared.target(req.uri().authority(), None).await {
        Ok(t) => t,
        Err(refusal) => {
            // A browser's own background traffic (updates, safe browsing)
            // lands here all the time: debug, not info.
            tracing::debug!(target = ?req.uri().authority(), why = refusal.kind(), "entry proxy: CONNECT refused");
            return refusal.response();
        }
    };
    let upstream = match shared.node.dial(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%target, error = %e, "entry proxy: dial failed");
            return bad_gateway(&format!("cannot reach {target} on the tailnet: {e}"));
        }
    };
    tracing::debug!(%target, "entry proxy: tunnel open");
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%target, error = %e, "entry proxy: CONNECT upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = upstream;
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
                Ok((up, down)) => tracing::debug!(%target, up, down, "entry proxy: tunnel closed"),
                Err(e) => tracing::debug!(%target, error = %e, "entry proxy: tunnel ended"),
            },
            _ = stopped(&mut stop) => tracing::debug!(%target, "entry proxy: tunnel closed by shutdown"),
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection Established",
        ));
    resp
}

async fn forward(
    mut req: Request<Incoming>,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    if req.uri().scheme() != Some(&Scheme::HTTP) {
        return bad_request("only http:// URLs can be proxied this way; use CONNECT for others");
    }
    let target = match shared.target(req.uri().authority(), Some(80)).await {
        Ok(t) => t,
        Err(refusal) => {
            tracing::info!(target = ?req.uri().authority(), why = refusal.kind(), "entry proxy: request refused");
            return refusal.response();
        }
    };
    let upgrade = headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    if let Err(reason) = to_origin_form(&mut req, upgrade) {
        return bad_request(reason);
    }
    let resp = match send_upstream(shared, &target, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        return splice_upgrade(resp, client_upgrade, target, stop);
    }
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body.boxed())
}

/// Rewrites an absolute-form proxy request for the upstream: origin form,
/// HTTP/1.1, no hop-by-hop headers (a websocket upgrade kept when
/// `upgrade`), `Host` from the absolute URL's authority; else why it
/// cannot be forwarded (a 400).
fn to_origin_form(req: &mut Request<Incoming>, upgrade: bool) -> Result<(), &'static str> {
    let authority = req.uri().authority().cloned();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
        .to_string();
    let Ok(origin_form) = pq.parse::<Uri>() else {
        return Err("the request path cannot be forwarded");
    };
    *req.uri_mut() = origin_form;
    *req.version_mut() = http::Version::HTTP_11;
    let h = req.headers_mut();
    headers::remove_hop_by_hop(h, upgrade);
    // The absolute URL's authority is the host (RFC 9112 §3.2.2).
    if let Some(v) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        h.insert(header::HOST, v);
    }
    Ok(())
}

/// Sends `req` to `target` over a fresh tailnet connection (upgrades
/// allowed); a 502 page when the dial, the handshake or the request fails.
async fn send_upstream(
    shared: &Shared,
    target: &str,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Response<Body>> {
    let stream = match shared.node.dial(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%target, error = %e, "entry proxy: dial failed");
            return Err(bad_gateway(&format!(
                "cannot reach {target} on the tailnet: {e}"
            )));
        }
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return Err(bad_gateway(&format!("HTTP to {target} failed: {e}"))),
    };
    let conn_target = target.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(target = %conn_target, error = %e, "entry proxy: upstream connection");
        }
    });
    let method = req.method().clone();
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%target, error = %e, "entry proxy: upstream request failed");
            return Err(bad_gateway(&format!("{target} did not answer: {e}")));
        }
    };
    tracing::debug!(%target, %method, status = %resp.status(), "entry proxy: forwarded");
    Ok(resp)
}

/// Answers the client's upgrade with the upstream's 101 and, once both
/// sides have switched, copies bytes both ways until either closes or the
/// proxy stops.
fn splice_upgrade(
    resp: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    target: String,
    mut stop: watch::Receiver<bool>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let upstream_resp = Response::from_parts(parts.clone(), body);
    tokio::spawn(async move {
        let (c, u) = match tokio::join!(client_upgrade, hyper::upgrade::on(upstream_resp)) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(%target, client = ?c.err(), upstream = ?u.err(), "entry proxy: upgrade failed");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
            _ = stopped(&mut stop) => {}
        }
    });
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Response::from_parts(parts, full(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Authority {
        s.parse().unwrap()
    }

    #[test]
    fn dial_targets() {
        assert_eq!(
            dial_target(Some(&auth("srv.example.ts.net:443")), None).unwrap(),
            "srv.example.ts.net:443"
        );
        assert_eq!(dial_target(Some(&auth("srv")), Some(80)).unwrap(), "srv:80");
        assert_eq!(
            dial_target(Some(&auth("[fd7a:115c::1]:8080")), None).unwrap(),
            "[fd7a:115c::1]:8080"
        );
        assert!(dial_target(Some(&auth("srv")), None).is_err());
        assert!(dial_target(Some(&auth("srv:0")), None).is_err());
        assert!(dial_target(Some(&auth("srv:")), Some(80)).is_err());
        assert!(dial_target(Some(&auth("u:p@srv:80")), None).is_err());
        assert!(dial_target(None, Some(80)).is_err());
    }

    #[test]
    fn tailnet_hosts_only() {
        let sfx = "tail-test.ts.net";
        for ok in [
            "gw.tail-test.ts.net",
            "GW.Tail-Test.ts.net.",
            "gw",
            "100.64.0.1",
            "100.127.255.254",
            "[fd7a:115c:a1e0::1]",
        ] {
            assert!(is_tailnet_host(ok, sfx), "{ok}");
        }
        for no in [
            "example.com",
            "tail-test.ts.net",
            "eviltail-test.ts.net",
            "gw.tail-test.ts.net.example.com",
            "localhost",
            "127.0.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "10.0.0.1",
            "[::1]",
            "[fd7a:115c:a1e1::1]",
            "",
        ] {
            assert!(!is_tailnet_host(no, sfx), "{no}");
        }
        assert!(!is_tailnet_host("gw.example.ts.net", ""));
        assert!(is_tailnet_host("gw", ""));
    }
}
