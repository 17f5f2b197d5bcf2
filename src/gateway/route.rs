//! Routing: what a normalized path on a node and host names — the portal,
//! one route (longest prefix, node and host filters), or nothing — and the
//! path rules that depend on the route matched (`http::path`).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};

use super::Connection;
use crate::assertion::Assertion;
use crate::config::{Access, Backend, Config, Route};
use crate::http::path::{self, NormalizedPath};
use crate::portal::{self, Portal};
use crate::proxy::{NodeSlot, Upstream};
use crate::session::Sessions;

/// A running node: its place in the node list tailpass started with. Node
/// changes need a restart, so the list (and every `NodeId`) is fixed while
/// tailpass runs, across reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeId(pub(crate) usize);

/// The running nodes' host names, in start order; `NodeId` indexes it.
pub(crate) fn node_id(running: &[String], hostname: &str) -> Option<NodeId> {
    running.iter().position(|h| h == hostname).map(NodeId)
}

/// Which node a route answers on, resolved once per snapshot so the
/// request path compares ids, never names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnNode {
    /// Every node (no `node` set).
    Every,
    /// One running node.
    Node(NodeId),
    /// A node added by a reload and not running until a restart: no
    /// tailnet listener serves it yet.
    NotRunning,
}

/// A route with its upstream client and its resolved node.
pub(crate) struct Routed {
    route: Route,
    /// The upstream client. A tailnet upstream of an every-node route has
    /// one per running node (indexed by `NodeId`), so it is dialed through
    /// the node the request came in on; everything else has one.
    ups: Vec<Upstream>,
    on: OnNode,
}

impl Routed {
    fn new(
        route: &Route,
        on: OnNode,
        via: &[NodeSlot],
        assertion: Option<&http::HeaderName>,
    ) -> Routed {
        let unset = NodeSlot::default();
        let up = |slot: &NodeSlot| Upstream::new(route, slot, assertion);
        let ups = match (&route.backend, on) {
            (Backend::Tailnet { .. }, OnNode::Every) if via.len() > 1 => {
                via.iter().map(up).collect()
            }
            // A node's own route dials through that node; a node not
            // running yet has no slot, and its dials fail with that.
            (_, OnNode::Node(NodeId(i))) => vec![up(via.get(i).unwrap_or(&unset))],
            (_, OnNode::NotRunning) => vec![up(&unset)],
            _ => vec![up(via.first().unwrap_or(&unset))],
        };
        Routed {
            route: route.clone(),
            ups,
            on,
        }
    }

    /// The client for a request that came in on `node` (none: the
    /// loopback or public listener, which dial through the first node).
    fn up(&self, node: Option<NodeId>) -> &Upstream {
        match node.and_then(|n| self.ups.get(n.0)) {
            Some(u) if self.ups.len() > 1 => u,
            _ => &self.ups[0],
        }
    }
}

/// What a reload replaces: routes with their upstream clients, the portal
/// (policies, providers, rules) with its pages' router, and the session
/// service. A request uses the snapshot it started with, whole, even if a
/// reload lands meanwhile.
pub(crate) struct Snapshot {
    routes: Vec<Routed>,
    pub(crate) portal: Option<Arc<Portal>>,
    /// The portal's pages, built once per snapshot (cloned per request).
    pub(crate) pages: Option<axum::Router>,
    /// The session service (the portal's), asked by the authenticate step.
    pub(crate) sessions: Option<Arc<Sessions>>,
    /// From `[limits]`, fixed at start (listener settings need a restart).
    pub(crate) body_idle_timeout: Duration,
    /// The signer and settings of the identity assertion, for routes with
    /// `assertion = true` ([`Snapshot::with_assertion`]).
    pub(crate) assertion: Option<Arc<Assertion>>,
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
    /// The snapshot of `config` for the nodes `running` (host names in
    /// start order); `via` holds the same nodes (once up), through which
    /// tailnet upstreams are dialed.
    pub(crate) fn new(
        config: &Config,
        (running, via): (&[String], &[NodeSlot]),
        portal: Option<Arc<Portal>>,
        body_idle_timeout: Duration,
    ) -> Snapshot {
        let on = |r: &Route| match &r.node {
            None => OnNode::Every,
            Some(n) => node_id(running, n).map_or(OnNode::NotRunning, OnNode::Node),
        };
        let header = config.assertion.as_ref().map(|a| &a.header);
        Snapshot {
            routes: config
                .routes
                .iter()
                .map(|r| Routed::new(r, on(r), via, header))
                .collect(),
            pages: portal.clone().map(portal::router),
            sessions: portal.as_ref().map(|p| p.sessions().clone()),
            portal,
            body_idle_timeout,
            assertion: None,
        }
    }

    /// The snapshot, signing assertions with `assertion`.
    pub(crate) fn with_assertion(mut self, assertion: Option<Arc<Assertion>>) -> Snapshot {
        self.assertion = assertion;
        self
    }

    /// Whether the portal is served where the connection came in (the
    /// loopback and public listeners count as served, so its prefix is
    /// never routed elsewhere there).
    fn portal_here(&self, conn: &Connection) -> Option<&Portal> {
        self.portal
            .as_deref()
            .filter(|pt| conn.node.as_deref().is_none_or(|n| pt.serves(n)))
    }

    /// The target of normalized path `p` on the connection's node (none:
    /// the loopback or public listener) for Host `host`.
    pub(crate) fn target(
        &self,
        conn: &Connection,
        host: Option<&str>,
        p: &NormalizedPath,
    ) -> Target<'_> {
        if let Some(pt) = self.portal_here(conn)
            && path::under(pt.prefix(), p)
        {
            return Target::Portal(pt);
        }
        match self.find_by(conn.node_id, host, |prefix| path::under(prefix, p)) {
            Some(r) => Target::Route(&r.route, r.up(conn.node_id)),
            None => Target::Nothing,
        }
    }

    /// The longest-prefix route whose prefix `matches`, among the routes of
    /// `node` and `host`.
    fn find_by(
        &self,
        node: Option<NodeId>,
        host: Option<&str>,
        matches: impl Fn(&str) -> bool,
    ) -> Option<&Routed> {
        self.routes
            .iter()
            .filter(|r| match (r.on, node) {
                (OnNode::Node(rn), Some(n)) => rn == n,
                (OnNode::NotRunning, Some(_)) => false,
                _ => true,
            })
            .filter(|r| r.route.host.as_deref().is_none_or(|h| Some(h) == host))
            .filter(|r| matches(&r.route.path))
            // Longest prefix; on a tie the more specific route, whatever
            // the file order: a Host before any host, then a node's own
            // route before an every-node one.
            .max_by_key(|r| {
                let own = matches!(r.on, OnNode::Node(_));
                (r.route.path.len(), r.route.host.is_some(), own)
            })
    }

    /// The path rules that depend on the route matched (`http::path`): the
    /// strict form on routes that are not public, and no other route (or
    /// the portal) under the path's loose reading.
    pub(crate) fn path_rule(
        &self,
        conn: &Connection,
        host: Option<&str>,
        route: &Route,
        p: &NormalizedPath,
    ) -> Result<(), path::PathError> {
        match route.access {
            Access::Public => {}
            Access::Tailnet { .. } => path::strict(p)?,
        }
        let l = path::loose(p)?;
        let folded = |prefix: &str| path::under(&prefix.to_ascii_lowercase(), &l);
        let again = self
            .find_by(conn.node_id, host, folded)
            .map(|r| r.route.index);
        // The portal counts only where it is served (it is matched before
        // routes there); on other nodes its prefix is an ordinary path.
        let portal = self.portal_here(conn).is_some_and(|pt| folded(pt.prefix()));
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
