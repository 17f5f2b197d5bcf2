//! Forwarding to upstreams: streamed bodies both ways (SSE included),
//! websocket upgrades, header hygiene, timeouts, and 502/504 when the
//! upstream fails. Identity headers are added only from the verified
//! [`PeerIdentity`]; client-sent copies never pass.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::Route;
use crate::http::headers;
use crate::http::path::upstream_path;
use crate::http::response::{Body, error, wants_html};
use crate::identity::PeerIdentity;

mod upload;

pub use upload::Stalled;
use upload::Upload;

/// Marks a response the proxy made because the upstream failed
/// (`connect` or `timeout`), for metrics.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamFailure(pub &'static str);

/// An HTTP client for one route's upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Upload>,
    response_timeout: Duration,
    hygiene: headers::Hygiene,
}

impl Upstream {
    /// A client with the route's timeouts.
    pub fn new(route: &Route) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(route.connect_timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(conn);
        Upstream {
            client,
            response_timeout: route.response_timeout,
            hygiene: headers::Hygiene::new(&route.identity_headers, route.allow_underscore_headers),
        }
    }
}

/// What the proxy needs to know about the incoming request's connection.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    /// The caller.
    pub who: &'a PeerIdentity,
    /// The normalized path the route matched.
    pub path: &'a str,
    /// `https` or `http`, as the client sees it.
    pub scheme: &'static str,
    /// The signed-in user, when the request carries a live session.
    pub login: Option<&'a LoginHeaders>,
    /// The session cookie's name, removed from the `Cookie` header so the
    /// upstream never sees the token.
    pub session_cookie: Option<&'a str>,
    /// When set, an upgraded connection (websocket) is closed when the
    /// session ends.
    pub session_end: Option<SessionEnd>,
    /// How long the request body may pause between chunks.
    pub body_idle_timeout: Duration,
}

/// Identity of the signed-in user, passed upstream in headers.
#[derive(Debug, Clone, Default)]
pub struct LoginHeaders {
    /// Email.
    pub email: Option<String>,
    /// Subject at the provider.
    pub user: String,
    /// Display name.
    pub name: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
}

/// When a session ends: revocation signal and expiry.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// Turns `true` (or closes) when the session is revoked.
    pub revoked: tokio::sync::watch::Receiver<bool>,
    /// Expiry (unix seconds).
    pub expires: i64,
}

impl SessionEnd {
    /// Resolves when the session is revoked or expires.
    pub async fn ended(mut self) {
        let left = (self.expires - crate::session::now()).max(0) as u64;
        let expiry = tokio::time::sleep(Duration::from_secs(left));
        let revoked = async {
            loop {
                if *self.revoked.borrow_and_update() {
                    return;
                }
                if self.revoked.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = expiry => {}
            _ = revoked => {}
        }
    }
}

/// Forwards `req` to the route's upstream and returns its response, or an
/// error page if the upstream cannot be reached in time.
pub async fn forward(
    up: &Upstream,
    route: &Route,
    mut req: Request<Incoming>,
    fwd: Forwarding<'_>,
) -> Response<Body> {
    let html = wants_html(req.headers());
    // Only websocket is tunnelled; any other upgrade goes on as a plain
    // request (its `Upgrade`, `HTTP2-Settings` removed as hop-by-hop).
    let upgrade = headers::wants_upgrade(req.headers());
    if let Some(asked) = headers::refused_upgrade(req.headers()) {
        tracing::info!(route = %route.name(), peer = %fwd.who, upgrade = %asked, "upgrade not tunnelled; forwarded as a plain request");
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let original_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let base = route.upstream.path();
    let mut pq = upstream_path(base, &route.path, fwd.path, route.strip_prefix);
    if let Some(q) = req.uri().query() {
        pq.push('?');
        pq.push_str(q);
    }
    let uri = match Uri::builder()
        .scheme("http")
        .authority(
            route
                .upstream
                .authority()
                .map(|a| a.as_str())
                .unwrap_or("127.0.0.1"),
        )
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(route = %route.name(), error = %e, "cannot build upstream URI");
            return error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "the request path cannot be forwarded",
                html,
            );
        }
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;

    let h = req.headers_mut();
    let stripped = up.hygiene.strip(h);
    if !stripped.is_empty() {
        tracing::info!(route = %route.name(), peer = %fwd.who, headers = ?stripped, "removed client-sent protected or underscore headers");
    }
    headers::remove_hop_by_hop(h, upgrade);
    h.remove(header::HOST); // hyper sets it from the URI
    set_forwarded(h, fwd.who.addr(), fwd.scheme, original_host.as_deref());
    if let Some(w) = fwd.who.whois() {
        let n = &route.identity_headers;
        if !w.is_tagged() {
            headers::set_text(h, &n.login, &w.user.login_name);
            headers::set_text(h, &n.name, &w.user.display_name);
            if let Some(pic) = &w.user.profile_pic_url {
                headers::set_text(h, &n.profile_pic, pic);
            }
        }
        headers::set_text(h, &n.node, &w.node.name);
        if !w.node.tags.is_empty() {
            headers::set_text(h, &n.tags, &w.node.tags.join(","));
        }
    }
    if let Some(name) = fwd.session_cookie {
        headers::remove_cookie(h, name);
    }
    if let Some(l) = fwd.login {
        let n = &route.identity_headers;
        headers::set_text(h, &n.user, &l.user);
        if let Some(e) = &l.email {
            headers::set_text(h, &n.email, e);
        }
        if let Some(nm) = &l.name {
            headers::set_text(h, &n.login_name, nm);
        }
        if !l.groups.is_empty() {
            headers::set_text(h, &n.groups, &l.groups.join(","));
        }
        if !l.roles.is_empty() {
            headers::set_text(h, &n.roles, &l.roles.join(","));
        }
    }

    // The response timeout runs from the end of the request body: an
    // upload may take as long as it keeps moving (body idle timeout).
    let (parts, body) = req.into_parts();
    let (body, progress) = Upload::new(body, fwd.body_idle_timeout);
    let req = Request::from_parts(parts, body);
    let answer = up.client.request(req);
    let sent = progress.clone();
    let deadline = async move {
        sent.finished().await;
        tokio::time::sleep(up.response_timeout).await;
    };
    let resp = tokio::select! {
        r = answer => match r {
            Ok(r) => r,
            Err(_) if progress.stalled() => {
                tracing::warn!(route = %route.name(), peer = %fwd.who, idle = ?fwd.body_idle_timeout, "request body stalled; upload cut");
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "Request timeout",
                    "the upload stopped sending data",
                    html,
                );
            }
            Err(e) => {
                tracing::warn!(route = %route.name(), upstream = %route.upstream, error = %e, "upstream request failed");
                let mut r = error(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    "the service behind this address is not answering",
                    html,
                );
                r.extensions_mut().insert(UpstreamFailure("connect"));
                return r;
            }
        },
        _ = deadline => {
            tracing::warn!(route = %route.name(), upstream = %route.upstream, timeout = ?up.response_timeout, "upstream timed out");
            let mut r = error(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout",
                "the service behind this address took too long to answer",
                html,
            );
            r.extensions_mut().insert(UpstreamFailure("timeout"));
            return r;
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && (client_upgrade.is_none() || !headers::switched_to_websocket(resp.headers()))
    {
        // An upstream switching protocols unasked, or to anything but
        // websocket, would open a tunnel past routing and header hygiene.
        tracing::warn!(route = %route.name(), upstream = %route.upstream, "upstream switched protocols without a websocket upgrade; refused");
        return error(
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "the service behind this address switched to a protocol tailpass does not forward",
            html,
        );
    }
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let (mut parts, body) = resp.into_parts();
        let upstream_resp = Response::from_parts(parts.clone(), body);
        let route_name = route.name();
        let end = fwd.session_end.clone();
        tokio::spawn(async move {
            let (c, u) = match tokio::join!(client_upgrade, hyper::upgrade::on(upstream_resp)) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(route = %route_name, client = ?c.err(), upstream = ?u.err(), "upgrade failed");
                    return;
                }
            };
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            match end {
                // Websockets opened under a session close when it ends.
                Some(end) => {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                        _ = end.ended() => {
                            tracing::info!(route = %route_name, "session ended; closing its upgraded connection");
                        }
                    }
                }
                None => {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
            }
        });
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Response::from_parts(
            parts,
            http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
        );
    }

    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body.boxed())
}

fn set_forwarded(
    h: &mut http::HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
    host: Option<&str>,
) {
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        h.insert("x-forwarded-host", v);
    }
}
