//! Routing: what a normalized path on a node and host names — the portal,
//! one route (longest prefix, node and host filters), or nothing — and the
//! path rules that depend on the route matched (`http::path`).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};

use crate::config::{Access, Config, Route};
use crate::http::path;
use crate::portal::{self, Portal};
use crate::proxy::Upstream;
use crate::session::Sessions;

/// What a reload replaces: routes with their upstream clients, the portal
/// (policies, providers, rules) with its pages' router, and the session
/// service. A request uses the snapshot it started with, whole, even if a
/// reload lands meanwhile.
pub(crate) struct Snapshot {
    pub(crate) routes: Vec<(Route, Upstream)>,
    pub(crate) portal: Option<Arc<Portal>>,
    /// The portal's pages, built once per snapshot (cloned per request).
    pub(crate) pages: Option<axum::Router>,
    /// The session service (the portal's), asked by the authenticate step.
    pub(crate) sessions: Option<Arc<Sessions>>,
    /// From `[limits]`, fixed at start (listener settings need a restart).
    pub(crate) body_idle_timeout: Duration,
}

/// Where a request goes.
pub(crate) enum Target<'a> {
    /// The portal's pages (matched before routes where it is served).
    Portal(&'a Portal),
    /// A configured route.
    Route(&'a Route, &'a Upstream),
    /// Nothing here.
    Nothing,
}

impl Snapshot {
    pub(crate) fn new(
        config: &Config,
        portal: Option<Arc<Portal>>,
        body_idle_timeout: Duration,
    ) -> Snapshot {
        Snapshot {
            routes: config
                .routes
                .iter()
                .map(|r| (r.clone(), Upstream::new(r)))
                .collect(),
            pages: portal.clone().map(portal::router),
            sessions: portal.as_ref().map(|p| p.sessions().clone()),
            portal,
            body_idle_timeout,
        }
    }

    /// The target of normalized path `p` on `node` (none: the loopback or
    /// public listener) for Host `host`.
    pub(crate) fn target(&self, node: Option<&str>, host: Option<&str>, p: &str) -> Target<'_> {
        if let Some(pt) = self.portal.as_deref()
            && path::under(pt.prefix(), p)
            && node.is_none_or(|n| pt.serves(n))
        {
            return Target::Portal(pt);
        }
        match self.find_by(node, host, |prefix| path::under(prefix, p)) {
            Some((r, up)) => Target::Route(r, up),
            None => Target::Nothing,
        }
    }

    /// The longest-prefix route whose prefix `matches`, among the routes of
    /// `node` and `host`.
    fn find_by(
        &self,
        node: Option<&str>,
        host: Option<&str>,
        matches: impl Fn(&str) -> bool,
    ) -> Option<&(Route, Upstream)> {
        self.routes
            .iter()
            .filter(|(r, _)| match (&r.node, node) {
                (Some(rn), Some(n)) => rn == n,
                _ => true,
            })
            .filter(|(r, _)| r.host.as_deref().is_none_or(|h| Some(h) == host))
            .filter(|(r, _)| matches(&r.path))
            .max_by_key(|(r, _)| (r.path.len(), r.host.is_some()))
            .map(|x| x as &(Route, Upstream))
    }

    /// The path rules that depend on the route matched (`http::path`): the
    /// strict form on routes that are not public, and no other route (or
    /// the portal) under the path's loose reading.
    pub(crate) fn path_rule(
        &self,
        node: Option<&str>,
        host: Option<&str>,
        route: &Route,
        p: &str,
    ) -> Result<(), path::PathError> {
        if !matches!(route.access, Access::Public) {
            path::strict(p)?;
        }
        let l = path::loose(p)?;
        let folded = |prefix: &str| path::under(&prefix.to_ascii_lowercase(), &l);
        let again = self.find_by(node, host, folded).map(|(r, _)| r.index);
        // The portal counts only where it is served (it is matched before
        // routes there); on other nodes its prefix is an ordinary path.
        let portal = self
            .portal
            .as_deref()
            .is_some_and(|pt| node.is_none_or(|n| pt.serves(n)) && folded(pt.prefix()));
        if again != Some(route.index) || portal {
            return Err(path::PathError::Ambiguous);
        }
        Ok(())
    }
}

/// The request's host, lower-case, without port or trailing dot: the
/// `Host` header, or the authority of an absolute-form or HTTP/2 URI.
pub(crate) fn host_of<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .map(|h| {
            let h = h
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map_or(h.as_str(), |(h, _)| h);
            h.trim_end_matches('.').to_ascii_lowercase()
        })
}
