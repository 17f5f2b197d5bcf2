//! Forwarding to upstreams: streamed bodies both ways (SSE included),
//! websocket upgrades, header hygiene, timeouts. Identity headers are added
//! only from the verified [`PeerIdentity`]; client-sent copies never pass.
//!
//! What it must not do: choose a status code for a failure. It says what
//! went wrong (`UpstreamError`); `gateway::Outcome` answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::Route;
use crate::http::headers;
use crate::http::path::{NormalizedPath, upstream_path};
use crate::http::response::Body;
use crate::identity::{PeerIdentity, Principal};

mod connect;
mod upload;

pub(crate) use connect::NodeSlot;
pub(crate) use upload::BoxError;
use upload::Upload;

/// An HTTP client for one route's upstream.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    client: Client<connect::Connector, Upload>,
    response_timeout: Duration,
    hygiene: Arc<headers::Hygiene>,
}

impl Upstream {
    /// A client with the route's timeouts; a tailnet upstream is dialed
    /// through the node in `via`; `assertion` is the configured assertion
    /// header, protected on every route.
    pub(crate) fn new(route: &Route, via: &NodeSlot, assertion: Option<&http::HeaderName>) -> Self {
        let mut hygiene =
            headers::Hygiene::new(&route.identity_headers, route.allow_underscore_headers);
        if let Some(name) = assertion {
            hygiene = hygiene.protect(name);
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connect::Connector::for_route(route, via));
        Upstream {
            client,
            response_timeout: route.response_timeout,
            hygiene: Arc::new(hygiene),
        }
    }
}

/// What the proxy needs to know about the incoming request's connection.
#[derive(Debug, Clone)]
pub(crate) struct Forwarding<'a> {
    /// The caller.
    pub(crate) who: &'a PeerIdentity,
    /// The normalized path the route matched and the policy allowed: the
    /// only path the upstream can be given.
    pub(crate) path: &'a NormalizedPath,
    /// `https` or `http`, as the client sees it.
    pub(crate) scheme: &'static str,
    /// The signed-in user, when the request carries a live session.
    pub(crate) login: Option<&'a LoginHeaders>,
    /// The session cookie's name, removed from the `Cookie` header so the
    /// upstream never sees the token.
    pub(crate) session_cookie: Option<&'a str>,
    /// When set, an upgraded connection (websocket) is closed when the
    /// session ends.
    pub(crate) session_end: Option<SessionEnd>,
    /// How long the request body may pause between chunks.
    pub(crate) body_idle_timeout: Duration,
    /// The signed identity assertion (`crate::assertion`) and its header,
    /// when the route asks for one and the caller has an identity.
    pub(crate) assertion: Option<(&'a http::HeaderName, HeaderValue)>,
}

/// Identity of the signed-in user, passed upstream in headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoginHeaders {
    pub(crate) email: Option<String>,
    /// Subject at the provider.
    pub(crate) user: String,
    /// Display name.
    pub(crate) name: Option<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) roles: Vec<String>,
}

/// When a session ends: revocation signal and expiry.
#[derive(Debug, Clone)]
pub(crate) struct SessionEnd {
    /// Turns `true` (or closes) when the session is revoked.
    pub(crate) revoked: tokio::sync::watch::Receiver<bool>,
    /// Expiry (unix seconds).
    pub(crate) expires: i64,
}

impl SessionEnd {
    /// Resolves when the session is revoked or expires.
    pub(crate) async fn ended(mut self) {
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

/// Why the proxy could not hand back the upstream's answer. The response
/// for each (status, page, metric label) is chosen in one place,
/// `gateway::Outcome`; the details are logged here, where they are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UpstreamError {
    /// The normalized path could not be written as an upstream URI.
    #[error("the request path cannot be forwarded")]
    BadUri,
    /// The client's upload stopped sending for the body idle timeout.
    #[error("the upload stopped sending data")]
    Stalled,
    /// The upstream refused, reset or broke the exchange.
    #[error("the upstream is not answering")]
    Connect,
    /// The tailnet upstream's node is not the one the route is pinned to
    /// (`upstream_node`, `upstream_tags`); nothing was sent to it.
    #[error("the upstream is not the node the route is pinned to")]
    Pinned,
    /// No response head within the route's `response_timeout`, counted
    /// from the end of the request body.
    #[error("the upstream took too long to answer")]
    Timeout,
    /// The upstream switched protocols although no websocket upgrade was
    /// asked and answered: a tunnel past routing and header hygiene.
    #[error("the upstream switched to a protocol tailpass does not forward")]
    SwitchedProtocols,
}

/// Forwards `req` to the route's upstream and returns its response, or why
/// there is none. Generic over the body so the pipeline runs in-process in
/// tests; only websocket upgrades are tunnelled.
pub(crate) async fn forward<B>(
    up: &Upstream,
    route: &Route,
    mut req: Request<B>,
    fwd: Forwarding<'_>,
) -> Result<Response<Body>, UpstreamError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
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
    *req.uri_mut() = upstream_uri(route, fwd.path, req.uri().query())?;
    *req.version_mut() = http::Version::HTTP_11;
    let h = req.headers_mut();
    let stripped = up.hygiene.strip(h);
    if !stripped.is_empty() {
        tracing::info!(route = %route.name(), peer = %fwd.who, headers = ?stripped, "removed client-sent protected or underscore headers");
    }
    headers::remove_hop_by_hop(h, upgrade);
    h.remove(header::HOST); // hyper sets it from the URI
    set_forwarded(h, fwd.who.addr(), fwd.scheme, original_host.as_deref());
    set_identity(h, route, &fwd);
    let resp = send(up, route, req, &fwd).await?;
    answer(route, resp, client_upgrade, fwd.session_end)
}

/// The upstream URI: the route's upstream, the path the route authorized
/// (prefix stripped if configured), the client's query.
fn upstream_uri(
    route: &Route,
    path: &NormalizedPath,
    query: Option<&str>,
) -> Result<Uri, UpstreamError> {
    let base = route.upstream.path();
    let mut pq = upstream_path(base, &route.path, path, route.strip_prefix);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let authority = route
        .upstream
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("127.0.0.1");
    Uri::builder()
        .scheme(route.upstream.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| {
            tracing::warn!(route = %route.name(), error = %e, "cannot build upstream URI");
            UpstreamError::BadUri
        })
}

/// Identity headers from the verified identity only (client copies were
/// stripped before): the WhoIs answer, then the signed-in user. The
/// session cookie itself never goes upstream.
fn set_identity(h: &mut http::HeaderMap, route: &Route, fwd: &Forwarding<'_>) {
    let n = &route.identity_headers;
    if let Some(p) = fwd.who.principal() {
        // A tagged node has no user: only its node name and tags go up.
        if let Principal::User(w) = p {
            headers::set_text(h, &n.login, &w.user.login_name);
            headers::set_text(h, &n.name, &w.user.display_name);
            if let Some(pic) = &w.user.profile_pic_url {
                headers::set_text(h, &n.profile_pic, pic);
            }
        }
        let node = &p.whois().node;
        headers::set_text(h, &n.node, &node.name);
        if !node.tags.is_empty() {
            headers::set_text(h, &n.tags, &node.tags.join(","));
        }
    }
    if let Some(name) = fwd.session_cookie {
        headers::remove_cookie(h, name);
    }
    if let Some((name, token)) = &fwd.assertion {
        h.insert((*name).clone(), token.clone());
    }
    if let Some(l) = fwd.login {
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
}

/// Sends the request; the response timeout runs from the end of the
/// request body: an upload may take as long as it keeps moving (body idle
/// timeout).
async fn send<B>(
    up: &Upstream,
    route: &Route,
    req: Request<B>,
    fwd: &Forwarding<'_>,
) -> Result<Response<Incoming>, UpstreamError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let (body, progress) = Upload::new(body, fwd.body_idle_timeout, up.hygiene.clone());
    let answer = up.client.request(Request::from_parts(parts, body));
    let sent = progress.clone();
    let deadline = async move {
        sent.finished().await;
        tokio::time::sleep(up.response_timeout).await;
    };
    tokio::select! {
        r = answer => match r {
            Ok(r) => Ok(r),
            Err(_) if progress.stalled() => {
                tracing::warn!(route = %route.name(), peer = %fwd.who, idle = ?fwd.body_idle_timeout, "request body stalled; upload cut");
                Err(UpstreamError::Stalled)
            }
            Err(e) => Err(failed(route, &e)),
        },
        _ = deadline => {
            tracing::warn!(route = %route.name(), upstream = %route.upstream, timeout = ?up.response_timeout, "upstream timed out");
            Err(UpstreamError::Timeout)
        }
    }
}

/// Why a request failed, logged with the whole chain of causes (the
/// client's own message is only "client error (Connect)").
fn failed(route: &Route, e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    let mut pinned = false;
    while let Some(s) = source {
        pinned |= s.is::<connect::PinRefused>();
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    if pinned {
        tracing::warn!(route = %route.name(), upstream = %route.upstream, error = why.as_str(), "upstream refused: not the pinned node; nothing was sent");
        return UpstreamError::Pinned;
    }
    tracing::warn!(route = %route.name(), upstream = %route.upstream, error = why.as_str(), "upstream request failed");
    UpstreamError::Connect
}

/// The upstream's response as the client gets it: hop-by-hop headers
/// removed, or — for an accepted websocket upgrade — the 101 with both
/// sides spliced in a task of their own.
fn answer(
    route: &Route,
    resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    session_end: Option<SessionEnd>,
) -> Result<Response<Body>, UpstreamError> {
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched && (client_upgrade.is_none() || !headers::switched_to_websocket(resp.headers())) {
        // An upstream switching protocols unasked, or to anything but
        // websocket, would open a tunnel past routing and header hygiene.
        tracing::warn!(route = %route.name(), upstream = %route.upstream, "upstream switched protocols without a websocket upgrade; refused");
        return Err(UpstreamError::SwitchedProtocols);
    }
    if let Some(client_upgrade) = client_upgrade
        && switched
    {
        let (mut parts, body) = resp.into_parts();
        let upstream_resp = Response::from_parts(parts.clone(), body);
        tokio::spawn(splice(
            route.name(),
            client_upgrade,
            upstream_resp,
            session_end,
        ));
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(Response::from_parts(
            parts,
            http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
        ));
    }
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Copies both ways between an upgraded client and upstream until either
/// side ends — or, for websockets opened under a session, until it ends.
async fn splice(
    route_name: String,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_resp: Response<Incoming>,
    end: Option<SessionEnd>,
) {
    let (c, u) = match tokio::join!(client_upgrade, hyper::upgrade::on(upstream_resp)) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(route = %route_name, client = ?c.err(), upstream = ?u.err(), "upgrade failed");
            return;
        }
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    match end {
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
