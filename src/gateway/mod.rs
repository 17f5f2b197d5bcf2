//! One request, one pipeline. [`handle`] takes a request, the verified
//! identity of the connection it came on and a config snapshot, and reads
//! top to bottom:
//!
//! 1. **normalize** the path (`http::path`; ambiguous → 400);
//! 2. **route**: the portal where it is served (its pages are an axum
//!    `Router`), else the longest-prefix route of the node and host
//!    ([`route`]);
//! 3. **authenticate**: one question to the session service
//!    (`Sessions::authenticate`), for protected routes on a node that
//!    serves the portal: the live session and the caller's roles;
//! 4. **decide**: `policy::evaluate` over both identities, then the path
//!    rules of the route matched;
//! 5. **forward** (`proxy`): header hygiene, identity headers from the
//!    verified identity only, the upstream's answer streamed back.
//!
//! Every step ends in an [`Outcome`]; [`Outcome::answer`] alone turns it
//! into the status, page, log word and metric labels, and [`log`] writes
//! the access-log line when the body ends.
//!
//! The pipeline is generic over the request body, so it runs in-process in
//! tests (`http_body_util::Full`) with no tailnet and no listener.
//!
//! What it must not do: read identity from anything the client sends, or
//! forward a path other than the one the route and policy saw.

pub(crate) mod log;
pub(crate) mod outcome;
pub(crate) mod route;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};

use crate::config::{Access, Backend, Route};
use crate::http::path::{self, NormalizedPath};
use crate::http::response::{Body, wants_html};
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;
use crate::policy::{self, Caller, Decision};
use crate::portal::{Portal, PortalOrigin};
use crate::proxy::{self, BoxError, Forwarding, Upstream};
use crate::session::{Authenticated, Sessions, now};

use log::Seen;
pub(crate) use outcome::Outcome;
use route::Target;
pub(crate) use route::{NodeId, Snapshot, node_id};

/// What every request on one connection shares, fixed when it was
/// accepted: who is calling (never from a header), on which node, and how
/// the client reached us.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) who: Arc<PeerIdentity>,
    /// The accepting node; `None` on the loopback and public listeners.
    pub(crate) node: Option<String>,
    /// The same node as routes know it, resolved once per listener.
    pub(crate) node_id: Option<NodeId>,
    /// The node's own HTTPS origin (tailnet connections only): absolute
    /// URLs are built from it, never from the Host header.
    pub(crate) origin: Option<Arc<PortalOrigin>>,
    /// `https` or `http`, as the client sees it.
    pub(crate) scheme: &'static str,
}

/// Runs one request through the pipeline and returns the response, whose
/// body writes the access-log line (and counts the request metric) when it
/// ends. `metrics` is `None` only in tests that do not look at them.
pub(crate) async fn handle<B>(
    req: Request<B>,
    conn: &Connection,
    snap: &Snapshot,
    metrics: Option<&Arc<Metrics>>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let html = wants_html(req.headers());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (seen, outcome) = pipeline(req, conn, snap, html).await;
    log::logged(
        outcome.answer(html),
        log::AccessLog {
            node: conn.node.clone(),
            who: conn.who.clone(),
            method,
            path,
            seen,
            start,
            metrics: metrics.cloned(),
        },
    )
}

/// The steps, in order; returns what the log and metrics need (the route,
/// `portal` or `-`, and who is signed in) and how the request ended.
async fn pipeline<B>(
    req: Request<B>,
    conn: &Connection,
    snap: &Snapshot,
    html: bool,
) -> (Seen, Outcome)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // 1. Normalize.
    let p = match path::normalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return (Seen::nothing(), Outcome::BadPath(e)),
    };
    // 2. Route.
    let host = route::host_of(&req);
    let (route, up) = match snap.target(conn, host.as_deref(), &p) {
        Target::Portal(pt) => {
            return (Seen::named("portal"), portal(req, pt, snap, &p, conn).await);
        }
        Target::Nothing => {
            let services = services_url(conn, snap);
            return (Seen::nothing(), Outcome::NoRoute { services });
        }
        Target::Route(route, up) => (route, up),
    };
    // 3. Authenticate.
    let auth = authenticate(req.headers(), route, conn, snap).await;
    let seen = Seen {
        route: route.name(),
        label: match &route.host {
            Some(h) => format!("{h}{}", route.path),
            None => route.path.clone(),
        },
        login: auth
            .caller
            .session
            .as_ref()
            .map(|s| signed_in_name(s).to_string()),
    };
    // 4. Decide.
    let why = match decide(&req, route, &auth, conn, html) {
        Verdict::Forward(why) => why,
        Verdict::End(outcome) => return (seen, outcome),
    };
    // Checked only for what is forwarded: a hidden route stays a 404.
    if let Err(e) = snap.path_rule(conn, host.as_deref(), route, &p) {
        return (seen, Outcome::BadPath(e));
    }
    // 5. Forward.
    let outcome = forward(req, route, up, &auth, conn, snap, &p, why).await;
    (seen, outcome)
}

/// The portal's pages (its axum router, with the connection's verified
/// identity as a request extension) exist for tailnet peers only;
/// elsewhere (Funnel, loopback, the public listener) its paths are not
/// found, and never fall through to a public route.
async fn portal<B>(
    req: Request<B>,
    pt: &Portal,
    snap: &Snapshot,
    p: &str,
    conn: &Connection,
) -> Outcome
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match (&conn.origin, &snap.pages) {
        (Some(origin), Some(pages)) => {
            let (response, word) = pt.serve(pages, req, p, &conn.who, origin).await;
            Outcome::Portal { response, word }
        }
        _ => Outcome::Hidden("portal asked outside the tailnet".into()),
    }
}

/// The login side of the caller: the portal and its session service (when
/// it serves this node and the route is protected), and what the service
/// answered: the verified session and the caller's roles.
struct Auth<'a> {
    portal: Option<&'a Portal>,
    sessions: Option<&'a Sessions>,
    caller: Authenticated,
}

async fn authenticate<'a>(
    headers: &HeaderMap,
    route: &Route,
    conn: &Connection,
    snap: &'a Snapshot,
) -> Auth<'a> {
    let portal = portal_here(conn, snap).filter(|_| !matches!(route.access, Access::Public));
    let sessions = snap.sessions.as_deref().filter(|_| portal.is_some());
    let caller = match sessions {
        Some(s) => s.authenticate(headers, &conn.who).await,
        None => Authenticated::default(),
    };
    Auth {
        portal,
        sessions,
        caller,
    }
}

/// What the policy said: forward (and why), or how the request ends.
enum Verdict {
    Forward(String),
    End(Outcome),
}

fn decide<B>(
    req: &Request<B>,
    route: &Route,
    auth: &Auth<'_>,
    conn: &Connection,
    html: bool,
) -> Verdict {
    let caller = Caller {
        who: &conn.who,
        session: auth.caller.session.as_ref(),
        roles: &auth.caller.roles,
        now: now(),
    };
    let pq = req.uri().path_and_query().map_or("/", |x| x.as_str());
    let here = auth.portal.zip(conn.origin.as_deref());
    let end = match policy::evaluate(route, req.method(), &caller) {
        Decision::Allow(why) => return Verdict::Forward(why),
        Decision::Login { reason, max_age } => Outcome::LoginNeeded {
            reason,
            sign_in: here.map(|(pt, origin)| {
                let s = auth.caller.session.as_ref();
                pt.sign_in(origin, req.method(), pq, html, s, max_age)
            }),
        },
        Decision::Method(why) => Outcome::MethodNotAllowed(why),
        Decision::Hide(why) => Outcome::Hidden(why),
        Decision::Deny(reason) => Outcome::Denied {
            reason,
            page: here.map(|(pt, o)| {
                let who = auth.caller.session.as_ref().map(signed_in_name);
                pt.forbidden_page(o, pq, route.login.is_some(), who)
            }),
        },
    };
    Verdict::End(end)
}

/// The portal's dashboard, for a tailnet peer of a node that serves it:
/// where a "not found" page sends a person (never shown off the tailnet).
fn services_url(conn: &Connection, snap: &Snapshot) -> Option<String> {
    let origin = conn.origin.as_deref()?;
    portal_here(conn, snap).map(|pt| format!("{}{}/", origin.base, pt.prefix()))
}

/// The portal, when it serves the node this connection came in on.
fn portal_here<'a>(conn: &Connection, snap: &'a Snapshot) -> Option<&'a Portal> {
    let pt = snap.portal.as_deref()?;
    conn.node
        .as_deref()
        .is_some_and(|n| pt.serves(n))
        .then_some(pt)
}

/// How a signed-in user is named on pages and in the log: the email, else
/// the provider's subject.
fn signed_in_name(s: &crate::session::Session) -> &str {
    s.email.as_deref().unwrap_or(&s.sub)
}

/// The part of `path` below the route's prefix, for a file root (`/blog`
/// and `/blog/a` under `/blog` give `` and `/a`; under `/` the whole path).
fn below_prefix<'p>(prefix: &str, path: &'p str) -> &'p str {
    match prefix {
        "/" => path,
        _ => path.get(prefix.len()..).unwrap_or(""),
    }
}

/// The signed identity assertion for a route that asks for one: its
/// audience is the route's URL on the node the request came to (node
/// origin and route path; a route with a `host` names that host instead),
/// so an assertion for one route is refused by another; none without a
/// tailnet identity (Funnel, public, loopback).
fn assertion<'s>(
    route: &Route,
    conn: &Connection,
    snap: &'s Snapshot,
    login: Option<&proxy::LoginHeaders>,
) -> Option<(&'s http::HeaderName, http::HeaderValue)> {
    let a = snap.assertion.as_deref().filter(|_| route.assertion)?;
    let o = conn.origin.as_deref()?;
    let origin = &o.base;
    let audience = match (&route.host, o.https_port) {
        (None, _) => format!("{origin}{}", route.path),
        (Some(h), 443) => format!("https://{h}{}", route.path),
        (Some(h), port) => format!("https://{h}:{port}{}", route.path),
    };
    let token = a.for_request(origin, &audience, &conn.who, login)?;
    Some((&a.header, token))
}

/// Hands an allowed request to the proxy with the verified identities.
#[allow(clippy::too_many_arguments)]
async fn forward<B>(
    req: Request<B>,
    route: &Route,
    up: &Upstream,
    auth: &Auth<'_>,
    conn: &Connection,
    snap: &Snapshot,
    p: &NormalizedPath,
    why: String,
) -> Outcome
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Backend::Files(root) = &route.backend {
        let rel = below_prefix(&route.path, p);
        let response = root.serve(req.method(), rel, p, req.headers()).await;
        return Outcome::Proxied {
            response,
            reason: why,
        };
    }
    let login = auth.caller.login_headers();
    // Websockets opened under a session close when it ends.
    let session_end = auth
        .sessions
        .zip(auth.caller.session.as_ref())
        .map(|(sessions, s)| sessions.end_watch(s));
    let fwd = Forwarding {
        who: &conn.who,
        path: p,
        scheme: conn.scheme,
        login: login.as_ref(),
        session_cookie: auth.sessions.map(|s| s.cookie_name()),
        session_end,
        body_idle_timeout: snap.body_idle_timeout,
        assertion: assertion(route, conn, snap, login.as_ref()),
    };
    match proxy::forward(up, route, req, fwd).await {
        Ok(response) => Outcome::Proxied {
            response,
            reason: why,
        },
        Err(error) => Outcome::UpstreamFailed { error, reason: why },
    }
}
