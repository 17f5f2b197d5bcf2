//! The portal's pages as an axum [`Router`]: one route per page, `Query`
//! extractors for their parameters, and [`Page`] as the typed answer that
//! carries the access-log word beside the response.
//!
//! The gateway's route step picks the portal; [`Portal::serve`] then
//! applies the rules every portal request shares (tailnet peers only, no
//! state change from another origin), rewrites the URI to the path under
//! the prefix and hands the request to the router, with the connection's
//! verified identity as a request extension ([`Visit`]) — never from a
//! client header.
//!
//! Unknown paths and methods a page does not take are 404 (`no-route`),
//! as they always were.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use tower::ServiceExt;

use super::cookies::same_origin;
use super::{Portal, PortalOrigin, pages, signin, views};
use crate::http::response::{Body, full, not_found, wants_html};
use crate::identity::PeerIdentity;
use crate::proxy::BoxError;

/// Who asks and where, fixed by the connection (a request extension that
/// only the gateway sets).
#[derive(Debug, Clone)]
pub(crate) struct Visit {
    pub(crate) who: Arc<PeerIdentity>,
    pub(crate) origin: Arc<PortalOrigin>,
    /// The client is a browser (pages rather than text).
    pub(crate) html: bool,
}

/// A portal answer: the response and the portal's access-log word
/// (`login-page`, `login-ok`, …; dashboards and tests read them).
pub(crate) struct Page(pub(crate) Response<Body>, pub(crate) &'static str);

/// The word of a [`Page`], carried through the router in the response's
/// extensions.
#[derive(Debug, Clone, Copy)]
struct Word(&'static str);

impl IntoResponse for Page {
    fn into_response(self) -> axum::response::Response {
        let mut r = self.0.into_response();
        r.extensions_mut().insert(Word(self.1));
        r
    }
}

/// The 404 of a path (or method) the portal does not serve.
pub(crate) fn no_such_page(html: bool) -> Page {
    let r = crate::http::response::error(
        StatusCode::NOT_FOUND,
        "Not found",
        "no such portal page",
        html,
    );
    Page(r, "no-route")
}

/// The query of a page; a malformed one reads as no parameters.
pub(crate) fn query<T: Default>(q: Result<Query<T>, QueryRejection>) -> T {
    q.map(|Query(q)| q).unwrap_or_default()
}

async fn fallback(Extension(v): Extension<Visit>) -> Page {
    no_such_page(v.html)
}

/// The router of `portal`'s pages, paths relative to its prefix. Built
/// once per config snapshot; cloning it is cheap.
pub(crate) fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/assets/portal.css", get(views::stylesheet))
        .route("/login", get(views::login))
        .route("/oauth2/{provider}/authorize", get(signin::authorize))
        .route(
            "/oauth2/{provider}/authorization-code-callback",
            get(signin::callback),
        )
        .route("/", get(views::dashboard))
        .route("/whoami", get(views::whoami))
        .route("/logout", get(views::logout_page).post(views::logout))
        .route("/logged-out", get(views::logged_out))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .with_state(portal)
}

impl Portal {
    /// Serves a request under the portal prefix through `pages` (this
    /// portal's [`router`]). `path` is normalized. No page reads the body.
    pub(crate) async fn serve<B>(
        &self,
        pages: &Router,
        req: Request<B>,
        path: &str,
        who: &Arc<PeerIdentity>,
        origin: &Arc<PortalOrigin>,
    ) -> (Response<Body>, &'static str)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let html = wants_html(req.headers());
        // The portal serves tailnet peers only: a session is bound to a node.
        if who.whois().is_none() {
            return (not_found(html), "hide");
        }
        // A state-changing request (logout, any POST) must come from a page
        // of this node: SameSite=Lax does not keep the cookie off requests
        // from other *.ts.net nodes, which are the same site.
        let method = req.method();
        if !matches!(*method, Method::GET | Method::HEAD) && !same_origin(req.headers(), origin) {
            tracing::warn!(peer = %who, method = %method, path = %path, origin = ?req.headers().get(header::ORIGIN), "cross-origin request to the portal refused");
            return (self.cross_origin(html), "cross-origin");
        }
        let (mut parts, body) = req.into_parts();
        let Some(uri) = self.page_uri(path, parts.uri.query()) else {
            let Page(r, word) = no_such_page(html);
            return (r, word);
        };
        parts.uri = uri;
        parts.extensions.insert(Visit {
            who: who.clone(),
            origin: origin.clone(),
            html,
        });
        let req = Request::from_parts(parts, axum::body::Body::new(body));
        let res = match pages.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let word = res.extensions().get::<Word>().map_or("no-route", |w| w.0);
        let (parts, body) = res.into_parts();
        // Every page is a full body already: this only unwraps it.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        (Response::from_parts(parts, full(bytes)), word)
    }

    /// The URI the router sees: the normalized path under the prefix (`/`
    /// for the prefix itself) and the query as sent.
    fn page_uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let sub = path.strip_prefix(self.cfg.prefix.as_str()).unwrap_or("/");
        let sub = if sub.is_empty() { "/" } else { sub };
        match query {
            Some(q) => Uri::try_from(format!("{sub}?{q}")).ok(),
            None => Uri::try_from(sub).ok(),
        }
    }

    /// 403 for a state-changing request that did not come from a page of
    /// this node.
    fn cross_origin(&self, html: bool) -> Response<Body> {
        if !html {
            return crate::http::response::error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "cross-origin request refused; nothing was changed",
                false,
            );
        }
        self.problem_page(
            StatusCode::FORBIDDEN,
            "Request from another site refused",
            "This request did not come from a page of this portal, so nothing was changed. Use the portal's own buttons.",
        )
    }

    pub(super) fn problem_page(
        &self,
        status: StatusCode,
        heading: &str,
        detail: &str,
    ) -> Response<Body> {
        let page = pages::problem(&self.cfg.prefix, &self.cfg.title, heading, detail);
        super::html_response(status, page)
    }
}
