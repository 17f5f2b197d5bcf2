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
        .route("/favicon.svg", get(views::favicon))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::oidc::Dialer;
    use crate::tailnet::WhoIs;
    use http_body_util::{BodyExt, Empty};

    struct Env {
        portal: Arc<Portal>,
        pages: Router,
        _dir: tempfile::TempDir,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n[portal]\nsession_secret = {{ env = \"S\" }}\nstate_dir = \"{}\"\n[[provider]]\nname = \"p\"\nissuer = \"https://a.example.ts.net\"\nclient_id = \"c\"\n",
            dir.path().display()
        );
        let config = Config::parse(&text, &|_| Some("s".repeat(40))).unwrap();
        let dialer = Dialer {
            node: Default::default(),
            tailnet_suffixes: vec!["ts.net".into()],
        };
        let portal = Portal::new(&config, dialer, None, Arc::new(Metrics::new()))
            .unwrap()
            .map(Arc::new)
            .unwrap();
        Env {
            pages: router(portal.clone()),
            portal,
            _dir: dir,
        }
    }

    fn alice() -> Arc<PeerIdentity> {
        let j = serde_json::json!({
            "Node": {"StableID": "n1", "Name": "laptop.example.ts.net.", "Tags": []},
            "UserProfile": {"ID": 1, "LoginName": "alice@example.com", "DisplayName": "Alice"},
        });
        Arc::new(PeerIdentity::tailnet(
            "100.64.0.9:41000".parse().unwrap(),
            WhoIs::from_json(&j.to_string()).unwrap(),
        ))
    }

    fn origin() -> Arc<PortalOrigin> {
        Arc::new(PortalOrigin {
            node: "gw".into(),
            base: "https://gw.example.ts.net".into(),
            https_port: 443,
        })
    }

    /// Status, word, headers and body of the portal's answer to `method
    /// uri` (with `headers`), asked by `who`.
    async fn ask(
        e: &Env,
        who: &Arc<PeerIdentity>,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, &'static str, http::HeaderMap, String) {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::<Bytes>::new()).unwrap();
        let path = uri.split('?').next().unwrap();
        let (r, word) = e.portal.serve(&e.pages, req, path, who, &origin()).await;
        let (parts, body) = r.into_parts();
        let text = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text).into_owned();
        (parts.status, word, parts.headers, text)
    }

    #[tokio::test]
    async fn pages_keep_their_status_headers_and_words() {
        let e = env();
        let who = alice();
        let html = [("accept", "text/html")];
        let (s, w, h, body) = ask(&e, &who, Method::GET, "/auth/login?rd=%2Fx", &html).await;
        assert_eq!((s, w), (StatusCode::OK, "login-page"));
        assert_eq!(h["referrer-policy"], "same-origin");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(
            body.contains(r#"<link rel="icon" type="image/svg+xml" href="/auth/favicon.svg">"#)
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(body.contains("/auth/oauth2/p/authorize?rd=%2Fx"), "{body}");
        for (uri, word) in [
            ("/auth", "dashboard"),
            ("/auth/", "dashboard"),
            ("/auth/whoami", "whoami"),
            ("/auth/logout", "logout-page"),
            ("/auth/logged-out", "logged-out"),
            ("/auth/assets/portal.css", "asset"),
            ("/auth/favicon.svg", "asset"),
        ] {
            let (s, w, _, body) = ask(&e, &who, Method::GET, uri, &html).await;
            assert_eq!((s, w), (StatusCode::OK, word), "{uri}");
            let (s, w, h, none) = ask(&e, &who, Method::HEAD, uri, &html).await;
            assert_eq!((s, w), (StatusCode::OK, word), "HEAD {uri}");
            assert_eq!(none, "", "HEAD {uri}");
            let len = h
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(len, Some(body.len().to_string()), "HEAD {uri}");
        }
        let (_, _, h, icon) = ask(&e, &who, Method::GET, "/auth/favicon.svg", &[]).await;
        assert_eq!(h["content-type"], "image/svg+xml");
        assert!(icon.starts_with("<svg"), "{icon}");
        let (_, _, h, body) = ask(&e, &who, Method::GET, "/auth/whoami", &[]).await;
        assert_eq!(h["content-type"], "application/json");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["tailnet"]["user"], "alice@example.com");
        assert!(j["session"].is_null());
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_404_and_cross_origin_posts_403() {
        let e = env();
        let who = alice();
        let same = [("origin", "https://gw.example.ts.net")];
        for (m, uri) in [
            (Method::GET, "/auth/nope"),
            (Method::GET, "/auth/login/"),
            (Method::GET, "/auth/oauth2/a/b/authorize"),
            (Method::HEAD, "/auth/oauth2/p/authorize"),
            (Method::HEAD, "/auth/oauth2/p/authorization-code-callback"),
            (Method::POST, "/auth/login"),
            (Method::DELETE, "/auth/logout"),
            (Method::PUT, "/auth/"),
        ] {
            let (s, w, _, body) = ask(&e, &who, m.clone(), uri, &same).await;
            assert_eq!((s, w), (StatusCode::NOT_FOUND, "no-route"), "{m} {uri}");
            // HEAD answers carry no body (the status and headers are GET's).
            let text = m != Method::HEAD;
            assert_eq!(
                body.contains("no such portal page"),
                text,
                "{m} {uri}: {body}"
            );
        }
        let (s, w, _, _) = ask(&e, &who, Method::GET, "/auth/oauth2/zz/authorize", &[]).await;
        assert_eq!((s, w), (StatusCode::NOT_FOUND, "no-route"));
        for bad in [&[][..], &[("origin", "https://other.example.ts.net")]] {
            let (s, w, _, _) = ask(&e, &who, Method::POST, "/auth/logout", bad).await;
            assert_eq!((s, w), (StatusCode::FORBIDDEN, "cross-origin"), "{bad:?}");
        }
        let (s, w, h, _) = ask(&e, &who, Method::POST, "/auth/logout", &same).await;
        assert_eq!((s, w), (StatusCode::OK, "logout"));
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        let funnel = Arc::new(PeerIdentity::Funnel {
            addr: "203.0.113.7:5000".parse().unwrap(),
        });
        let (s, w, _, _) = ask(&e, &funnel, Method::GET, "/auth/login", &[]).await;
        assert_eq!((s, w), (StatusCode::NOT_FOUND, "hide"));
    }

    #[tokio::test]
    async fn a_stale_callback_clears_the_login_cookie() {
        let e = env();
        let uri = "/auth/oauth2/p/authorization-code-callback?state=nope&code=c";
        let (s, w, h, _) = ask(&e, &alice(), Method::GET, uri, &[]).await;
        assert_eq!((s, w), (StatusCode::BAD_REQUEST, "login-stale"));
        let c = h["set-cookie"].to_str().unwrap();
        assert!(
            c.starts_with("tailpass_session_login=;") && c.contains("Max-Age=0"),
            "{c}"
        );
    }
}
