//! The login portal, under its own prefix (`/auth`): login page with a QR
//! code, the OIDC redirect and callback, dashboard, whoami, logout —
//! pages only. Sessions (keys, store, refresh, watchers) are the session
//! service's ([`crate::session::Sessions`]); the portal opens and closes
//! them through it.
//!
//! By concern:
//! - `router`: the axum `Router` of the pages, the rules every portal
//!   request shares (tailnet peers only, the same-origin rule), and the
//!   typed answer ([`Page`](router::Page)) with its log word;
//! - `views`: the pages themselves (login, dashboard, whoami, sign-out);
//! - `signin`: the sign-in flow (authorize, callback, open the session),
//!   over the sign-ins in flight (`pending`) and the open-redirect
//!   validator (`target`);
//! - `cookies`: the session, login and signed-out cookies, `same_origin`;
//! - `pages`: the markup.
//!
//! What it must not do: trust anything the client says about who it is.
//! The tailnet identity comes from the connection (WhoIs); the session
//! from a signed cookie whose binding must match that identity and whose
//! record must be live in the store.

mod cookies;
pub(crate) mod pages;
pub mod pending;
mod router;
mod signin;
pub(crate) mod target;
mod views;

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode};

pub(crate) use router::router;

use crate::config::{self, Config, Route};
use crate::http::response::{Body, with_type};
use crate::metrics::Metrics;
use crate::oidc::{self, Dialer, HttpClient};
use crate::session::{Session, Sessions};
use pending::PendingLogins;

/// Where the request came in: what the portal needs to build absolute URLs
/// without trusting the Host header.
#[derive(Debug, Clone)]
pub(crate) struct PortalOrigin {
    /// Node host name.
    pub(crate) node: String,
    /// `https://gw.tailnet.ts.net` (with `:port` when not 443).
    pub(crate) base: String,
    /// The node's HTTPS port.
    pub(crate) https_port: u16,
}

/// Where a caller who must sign in is sent (see [`Portal::sign_in`]).
#[derive(Debug, Clone)]
pub(crate) struct SignIn {
    /// This node's login page, named in the 401's `WWW-Authenticate`.
    pub(crate) login: String,
    /// Where a browser's GET or HEAD is redirected (302).
    pub(crate) redirect: Option<String>,
}

/// The portal's 403 page for a denied request, short of the reason.
#[derive(Debug, Clone)]
pub(crate) struct ForbiddenPage {
    prefix: String,
    title: String,
    relogin: Option<String>,
    /// Who is signed in (email, else subject), named beside "Sign in as
    /// someone else".
    signed_in: Option<String>,
}

impl ForbiddenPage {
    /// The page naming `reason` (the failed requirement and the caller).
    pub(crate) fn markup(&self, reason: &str) -> maud::Markup {
        pages::forbidden(
            &self.prefix,
            &self.title,
            reason,
            self.relogin.as_deref(),
            self.signed_in.as_deref(),
        )
    }
}

/// The portal: its pages and the sign-in flow.
pub(crate) struct Portal {
    cfg: config::Portal,
    sessions: Arc<Sessions>,
    providers: Arc<[oidc::Client]>,
    metrics: Arc<Metrics>,
    routes: Vec<Route>,
    allowed_hosts: Vec<String>,
    // Shared with the portal a reload replaces, so sign-ins in flight
    // carry over.
    pending: PendingLogins,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("prefix", &self.cfg.prefix)
            .finish()
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn html_response(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    let mut r = with_type(status, "text/html; charset=utf-8", markup.into_string());
    let h = r.headers_mut();
    // No referrer leaves for another origin (the provider never sees a
    // portal URL). Not `no-referrer`: under it browsers send `Origin: null`
    // with the portal's own form POSTs, which `same_origin` must refuse.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Portal pages load only their own stylesheet: no script, no frames.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

impl Portal {
    /// Sets up one OIDC client per provider and the session service over
    /// them. `dialer` reaches tailnet-only providers through a node. On a
    /// reload, `previous` hands over its session service's store (when
    /// `portal.state_dir` is unchanged), refreshes and back-offs, and its
    /// sign-ins in flight.
    pub(crate) fn new(
        config: &Config,
        dialer: Dialer,
        previous: Option<&Portal>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Portal>, String> {
        let Some(cfg) = config.portal.clone() else {
            return Ok(None);
        };
        let mut providers = Vec::new();
        for p in &config.providers {
            let http = HttpClient::new(dialer.clone(), p.ca_file.as_deref())
                .map_err(|e| format!("provider {}: {e}", p.name))?;
            providers.push(oidc::Client::new(p.clone(), http));
        }
        let providers: Arc<[oidc::Client]> = providers.into();
        let before = previous.map(|p| &*p.sessions);
        let sessions = Sessions::new(&cfg, config, providers.clone(), &dialer, before)?;
        let mut allowed_hosts: Vec<String> = config
            .routes
            .iter()
            .filter_map(|r| r.host.clone())
            .collect();
        allowed_hosts.extend(cfg.redirect_hosts.iter().cloned());
        let pending = PendingLogins::new(sessions.redis(), previous.map(|p| &p.pending));
        Ok(Some(Portal {
            sessions: Arc::new(sessions),
            providers,
            metrics,
            routes: config.routes.clone(),
            allowed_hosts,
            cfg,
            pending,
        }))
    }

    /// The path prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    /// The session service this portal opens sessions with.
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Whether node `hostname` serves the portal.
    pub(crate) fn serves(&self, hostname: &str) -> bool {
        self.cfg.nodes.is_empty() || self.cfg.nodes.iter().any(|n| n == hostname)
    }

    fn provider(&self, name: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config().name == name)
    }

    /// Where a request that needs a (fresh) login is sent: browsers
    /// (GET/HEAD) to sign in with their URL kept, straight to the provider
    /// for a step-up; other clients are told the login page's address.
    pub(crate) fn sign_in(
        &self,
        origin: &PortalOrigin,
        req_method: &Method,
        path_and_query: &str,
        html: bool,
        session: Option<&Session>,
        max_age: Option<u64>,
    ) -> SignIn {
        let login = format!("{}{}/login", origin.base, self.cfg.prefix);
        let browser = html && (req_method == Method::GET || req_method == Method::HEAD);
        let redirect = browser.then(|| {
            let rd = enc(path_and_query);
            match (session, max_age) {
                (Some(s), Some(a)) if self.provider(&s.provider).is_some() => format!(
                    "{}{}/oauth2/{}/authorize?rd={rd}&max_age={a}",
                    origin.base, self.cfg.prefix, s.provider
                ),
                _ => format!("{login}?rd={rd}"),
            }
        });
        SignIn { login, redirect }
    }

    /// The 403 page's frame: this portal's look, and a way to sign in as
    /// someone else when a login could help.
    pub(crate) fn forbidden_page(
        &self,
        origin: &PortalOrigin,
        path_and_query: &str,
        login_route: bool,
        signed_in: Option<&str>,
    ) -> ForbiddenPage {
        let relogin = login_route.then(|| {
            format!(
                "{}{}/login?rd={}&fresh=1",
                origin.base,
                self.cfg.prefix,
                enc(path_and_query)
            )
        });
        ForbiddenPage {
            prefix: self.cfg.prefix.clone(),
            title: self.cfg.title.clone(),
            relogin,
            signed_in: signed_in.map(str::to_string),
        }
    }
}

/// The redirect URIs and post-logout URIs to register at each provider,
/// for `tailpass check`.
pub(crate) fn registration_uris(config: &Config) -> Vec<(String, String, String)> {
    let Some(pt) = &config.portal else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in &config.nodes {
        if !(pt.nodes.is_empty() || pt.nodes.contains(&n.hostname)) {
            continue;
        }
        let base = format!("{}{}", config.node_origin(n), pt.prefix);
        for p in &config.providers {
            out.push((
                p.name.clone(),
                format!("{base}/oauth2/{}/authorization-code-callback", p.name),
                format!("{base}/logged-out"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_session_store_and_sign_ins_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |state: &std::path::Path| {
            let text = format!(
                "[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n[portal]\nsession_secret = {{ env = \"S\" }}\nstate_dir = \"{}\"\n[[provider]]\nname = \"p\"\nissuer = \"https://a.example.ts.net\"\nclient_id = \"c\"\n",
                state.display()
            );
            Config::parse(&text, &|_| Some("s".repeat(40))).unwrap()
        };
        let dialer = Dialer {
            node: Default::default(),
            tailnet_suffixes: vec!["ts.net".into()],
        };
        let m = Arc::new(Metrics::new());
        let a = Portal::new(&cfg(dir.path()), dialer.clone(), None, m.clone())
            .unwrap()
            .unwrap();
        let b = Portal::new(&cfg(dir.path()), dialer.clone(), Some(&a), m.clone())
            .unwrap()
            .unwrap();
        assert!(
            a.sessions.same_store(&b.sessions),
            "same state_dir: same store"
        );
        assert!(
            a.pending.same_table(&b.pending),
            "sign-ins in flight carry over"
        );
        let other = dir.path().join("elsewhere");
        let c = Portal::new(&cfg(&other), dialer, Some(&b), m)
            .unwrap()
            .unwrap();
        assert!(
            !b.sessions.same_store(&c.sessions),
            "a new state_dir opens its own store"
        );
    }

    #[test]
    fn query_parameters_decode() {
        use axum::extract::Query;
        let uri: http::Uri = "/login?rd=%2Fapp%2F%3Fx%3D1&fresh=1&max_age=30&plus=a+b&empty"
            .parse()
            .unwrap();
        let Query(q) = Query::<signin::SignInQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(q.rd.as_deref(), Some("/app/?x=1"));
        assert_eq!(q.fresh.as_deref(), Some("1"));
        assert_eq!(q.max_age.as_deref(), Some("30"));
        #[derive(serde::Deserialize)]
        struct Other {
            plus: Option<String>,
            empty: Option<String>,
            nope: Option<String>,
        }
        let Query(o) = Query::<Other>::try_from_uri(&uri).unwrap();
        assert_eq!(o.plus.as_deref(), Some("a b"));
        assert_eq!(o.empty.as_deref(), Some(""));
        assert_eq!(o.nope, None);
        let none: http::Uri = "/login".parse().unwrap();
        let Query(q) = Query::<signin::SignInQuery>::try_from_uri(&none).unwrap();
        assert_eq!(q.rd, None);
    }
}
