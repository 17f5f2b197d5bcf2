//! The login portal, under its own prefix (`/auth`): login page with a QR
//! code, the OIDC redirect and callback, dashboard, whoami, logout. Also
//! the session lookup every protected request goes through, and lazy
//! refresh at the provider.
//!
//! What it must not do: trust anything the client says about who it is.
//! The tailnet identity comes from the connection (WhoIs); the session
//! from a signed cookie whose binding must match that identity and whose
//! record must be live in the store.

pub(crate) mod pages;
pub mod pending;
pub(crate) mod target;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::config::{self, Config, Route, Rule};
use crate::http::headers;
use crate::http::response::{Body, full, not_found, redirect, with_type};
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;
use crate::oidc::{self, Dialer, HttpClient, RefreshError};
use crate::policy::{self, Caller, Decision};
use crate::proxy::LoginHeaders;
use crate::session::{Binding, Keys, Record, Session, SessionCookie, Store, now, random_token};

/// How long a started sign-in may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);

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
}

impl ForbiddenPage {
    /// The page naming `reason` (the failed requirement and the caller).
    pub(crate) fn markup(&self, reason: &str) -> maud::Markup {
        pages::forbidden(&self.prefix, &self.title, reason, self.relogin.as_deref())
    }
}

struct PendingLogin {
    provider: String,
    oidc: oidc::Pending,
    target: String,
    binding: Binding,
    browser: String,
    max_age: Option<u64>,
    redirect_uri: String,
    started: Instant,
}

/// The portal and session service.
pub(crate) struct Portal {
    cfg: config::Portal,
    keys: Keys,
    store: Arc<Store>,
    providers: Vec<oidc::Client>,
    metrics: Arc<Metrics>,
    rules: Vec<Rule>,
    routes: Vec<Route>,
    allowed_hosts: Vec<String>,
    // Shared with the portal a reload replaces, so sign-ins in flight and
    // refreshes in progress carry over.
    pending: Arc<Mutex<pending::Pending<PendingLogin>>>,
    refreshing: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    // Sessions whose last refresh failed for a reason that may pass: when
    // to try again (never a token call per request while it is down).
    retry: Arc<Mutex<HashMap<String, Retry>>>,
}

/// Backoff of a session whose refresh keeps failing.
#[derive(Debug, Clone, Copy)]
struct Retry {
    failures: u32,
    next: Instant,
}

/// The wait after `failures` failed refreshes in a row: 2 s, doubling, at
/// most the refresh interval (at least 5 s, at most 5 min).
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let cap = interval.clamp(Duration::from_secs(5), Duration::from_secs(300));
    Duration::from_secs(2)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap)
}

/// Why a sign-in that answered a step-up (`max_age` seconds) does not prove
/// a fresh authentication (security invariant 11), or `None` when it does:
/// without that proof a redirect back would loop, and counting "now" would
/// let a silent sign-in pass.
fn unproven_step_up(
    max: u64,
    auth_time: Option<i64>,
    now: i64,
    provider: &config::Provider,
) -> Option<String> {
    match auth_time {
        None if provider.trust_prompt_login => Some(
            "its ID token has no auth_time, and its discovery document does not list prompt=login as supported".into(),
        ),
        None => Some("its ID token has no auth_time".into()),
        Some(at) if now - at > max as i64 + 60 => Some(format!(
            "it says you signed in {} s ago, and this page needs a sign-in at most {max} s old",
            now - at
        )),
        Some(_) => None,
    }
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("prefix", &self.cfg.prefix)
            .finish()
    }
}

/// The `Set-Cookie` value of the session cookie: HttpOnly, Secure,
/// SameSite=Lax, host-only unless `portal.cookie_domain` is set.
fn session_cookie(cfg: &config::Portal, value: &str, max_age: i64) -> String {
    let mut c = cookie::Cookie::build((cfg.cookie_name.clone(), value.to_string()))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(d) = &cfg.cookie_domain {
        c = c.domain(d.clone());
    }
    c.build().to_string()
}

/// The `Set-Cookie` value of the short-lived login cookie that ties a
/// callback to the browser that started the sign-in (path-scoped to the
/// callback URLs).
fn login_cookie(cfg: &config::Portal, value: &str, max_age: i64) -> String {
    cookie::Cookie::build((login_cookie_name(cfg), value.to_string()))
        .path(format!("{}/oauth2/", cfg.prefix))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
        .to_string()
}

/// The `Set-Cookie` value of the marker a sign-out leaves: the browser's
/// next sign-in asks the provider for a new authentication
/// (`prompt=login`), so signing out here is never undone by a silent
/// sign-in at a provider whose own session lives on. Scoped like the
/// session cookie's domain, to the sign-in URLs.
fn signed_out_cookie(cfg: &config::Portal, on: bool) -> String {
    let mut c = cookie::Cookie::build((signed_out_cookie_name(cfg), if on { "1" } else { "" }))
        .path(format!("{}/oauth2/", cfg.prefix))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(if on { 86_400 } else { 0 }));
    if let Some(d) = &cfg.cookie_domain {
        c = c.domain(d.clone());
    }
    c.build().to_string()
}

fn signed_out_cookie_name(cfg: &config::Portal) -> String {
    format!("{}_signed_out", cfg.cookie_name)
}

fn login_cookie_name(cfg: &config::Portal) -> String {
    format!("{}_login", cfg.cookie_name)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Whether a request comes from a page of this node's own origin: its
/// `Origin` is exactly `origin.base`, or, when a client sends no `Origin`,
/// `Sec-Fetch-Site: same-origin`. Anything else (another node, another
/// site, `null`, neither header) is not.
fn same_origin(headers: &HeaderMap, origin: &PortalOrigin) -> bool {
    let mut o = headers.get_all(header::ORIGIN).iter();
    match (o.next(), o.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case(&origin.base)),
        (Some(_), Some(_)) => false,
        (None, _) => {
            let mut f = headers.get_all("sec-fetch-site").iter();
            matches!((f.next(), f.next()), (Some(v), None) if v == "same-origin")
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn stylesheet() -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
        .header(header::CACHE_CONTROL, "max-age=3600")
        .body(full(pages::CSS))
        .expect("static response")
}

fn no_such_page(html: bool) -> Response<Body> {
    crate::http::response::error(
        StatusCode::NOT_FOUND,
        "Not found",
        "no such portal page",
        html,
    )
}

pub(crate) fn html_response(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    let mut r = with_type(status, "text/html; charset=utf-8", markup.into_string());
    let h = r.headers_mut();
    // No referrer leaves for another origin (the provider never sees a
    // portal URL). Not `no-referrer`: under it browsers send `Origin: null`
    // with the portal's own form POSTs, which `same_origin` must refuse.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Portal pages load only their own stylesheet: no script, no frames.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl Portal {
    /// Opens the session store and sets up one OIDC client per provider.
    /// `dialer` reaches tailnet-only providers through a node. On a reload,
    /// `previous` hands over its session store (when `portal.state_dir` is
    /// unchanged) and the sign-ins in flight.
    pub(crate) fn new(
        config: &Config,
        dialer: Dialer,
        previous: Option<&Portal>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Portal>, String> {
        let Some(cfg) = config.portal.clone() else {
            return Ok(None);
        };
        let keys = Keys::new(&cfg.session_secret, &cfg.retired_session_secrets)?;
        let store = match previous {
            Some(p) if p.cfg.state_dir == cfg.state_dir => p.store.clone(),
            _ => Arc::new(Store::open(&cfg.state_dir).map_err(|e| e.to_string())?),
        };
        let mut providers = Vec::new();
        for p in &config.providers {
            let http = HttpClient::new(dialer.clone(), p.ca_file.as_deref())
                .map_err(|e| format!("provider {}: {e}", p.name))?;
            providers.push(oidc::Client::new(p.clone(), http));
        }
        let mut allowed_hosts: Vec<String> = config
            .routes
            .iter()
            .filter_map(|r| r.host.clone())
            .collect();
        allowed_hosts.extend(cfg.redirect_hosts.iter().cloned());
        Ok(Some(Portal {
            keys,
            store,
            providers,
            metrics,
            rules: config.rules.clone(),
            routes: config.routes.clone(),
            allowed_hosts,
            cfg,
            pending: previous.map(|p| p.pending.clone()).unwrap_or_default(),
            refreshing: previous.map(|p| p.refreshing.clone()).unwrap_or_default(),
            retry: previous.map(|p| p.retry.clone()).unwrap_or_default(),
        }))
    }

    /// The path prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    /// The session cookie's name.
    pub(crate) fn cookie_name(&self) -> &str {
        &self.cfg.cookie_name
    }

    /// The session store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Whether node `hostname` serves the portal.
    pub(crate) fn serves(&self, hostname: &str) -> bool {
        self.cfg.nodes.is_empty() || self.cfg.nodes.iter().any(|n| n == hostname)
    }

    fn provider(&self, name: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config().name == name)
    }

    fn redirect_uri(&self, origin: &PortalOrigin, provider: &str) -> String {
        format!(
            "{}{}/oauth2/{provider}/authorization-code-callback",
            origin.base, self.cfg.prefix
        )
    }

    /// The verified, live session of a request, refreshed at the provider
    /// when due. Invalid cookies count as no session (and are logged).
    pub(crate) async fn session(&self, headers: &HeaderMap, who: &PeerIdentity) -> Option<Session> {
        let token = headers::cookie(headers, &self.cfg.cookie_name)?;
        let binding = Binding::of(who)?;
        let t = now();
        let c: SessionCookie = match self.keys.verify(token, &binding, t) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(peer = %who, reason = %e, "session cookie refused");
                return None;
            }
        };
        let rec = match self.store.get(&c.sid, t) {
            Some(r) if r.binding == binding => r,
            Some(_) => {
                tracing::warn!(peer = %who, "session record bound elsewhere; refused");
                return None;
            }
            None => {
                tracing::info!(peer = %who, "session revoked or unknown");
                return None;
            }
        };
        let rec = self.maybe_refresh(&c.sid, rec, false).await?;
        Some(rec.into_session(&c.sid))
    }

    /// Refreshes `rec` at its provider when the refresh interval has passed
    /// (or `force`). Returns `None` when the session ended: the provider
    /// refused the refresh (any OAuth error answer but "try later"), or it
    /// could not be refreshed for longer than `refresh_grace` past its
    /// interval. It is then revoked here too, which closes its websockets.
    /// Failures that may pass keep the session and back off per session.
    async fn maybe_refresh(&self, sid: &str, rec: Record, force: bool) -> Option<Record> {
        let interval = self.cfg.refresh_interval.as_secs() as i64;
        let due = |r: &Record| force || now() - r.refreshed >= interval;
        if rec.refresh_token.is_none() || !due(&rec) {
            return Some(rec);
        }
        let overdue =
            |r: &Record| now() - r.refreshed > interval + self.cfg.refresh_grace.as_secs() as i64;
        let backing_off = |sid: &str| {
            self.retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(sid)
                .is_some_and(|r| Instant::now() < r.next)
        };
        if backing_off(sid) {
            return if overdue(&rec) {
                self.end_unrefreshable(sid, &rec)
            } else {
                Some(rec)
            };
        }
        // One refresh per session at a time: refresh tokens may rotate, and
        // a second use of the old one would end the session.
        let lock = {
            let mut m = self.refreshing.lock().await;
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(sid.to_string()).or_default().clone()
        };
        let _g = lock.lock().await;
        let rec = self.store.get(sid, now())?;
        if !due(&rec) || backing_off(sid) {
            return Some(rec);
        }
        let (Some(rt), Some(p)) = (rec.refresh_token.clone(), self.provider(&rec.provider)) else {
            return Some(rec);
        };
        let outcome = p.refresh(&rt, &rec.sub).await;
        if !matches!(outcome, Err(RefreshError::Unavailable(_))) {
            self.retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(sid);
        }
        match outcome {
            Ok((new_rt, id)) => {
                let mut r = rec.clone();
                r.refreshed = now();
                if let Some(n) = new_rt {
                    r.refresh_token = Some(n);
                }
                if let Some((idt, claims)) = id {
                    r.id_token = idt;
                    // The provider's current claims replace the old ones
                    // (a group removed there is removed here).
                    r.claims = claims;
                }
                if let Err(e) = self.store.put(sid, r.clone()) {
                    tracing::error!(error = %e, "cannot persist a refreshed session");
                }
                tracing::debug!(provider = %r.provider, "session refreshed");
                Some(r)
            }
            Err(RefreshError::Ended(why)) => {
                tracing::info!(provider = %rec.provider, sub = %rec.sub, reason = %why, "provider ended the session; revoking");
                self.revoke_ended(sid);
                None
            }
            Err(RefreshError::Unavailable(why)) => {
                if overdue(&rec) {
                    tracing::warn!(provider = %rec.provider, reason = %why, "cannot refresh the session now");
                    return self.end_unrefreshable(sid, &rec);
                }
                let wait = self.back_off(sid);
                tracing::warn!(provider = %rec.provider, reason = %why, retry_in = ?wait, "cannot refresh the session now; kept, trying again later");
                Some(rec)
            }
        }
    }

    /// Counts one more failed refresh of `sid`; returns the wait before the
    /// next try.
    fn back_off(&self, sid: &str) -> Duration {
        let mut m = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.entry(sid.to_string()).or_insert(Retry {
            failures: 0,
            next: Instant::now(),
        });
        r.failures += 1;
        let wait = retry_delay(r.failures, self.cfg.refresh_interval);
        r.next = Instant::now() + wait;
        wait
    }

    /// Ends a session that could not be refreshed within its grace period.
    fn end_unrefreshable(&self, sid: &str, rec: &Record) -> Option<Record> {
        tracing::warn!(
            provider = %rec.provider,
            sub = %rec.sub,
            grace = ?self.cfg.refresh_grace,
            "the session could not be refreshed within refresh_interval + refresh_grace; ending it"
        );
        self.revoke_ended(sid);
        None
    }

    fn revoke_ended(&self, sid: &str) {
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid);
        if let Err(e) = self.store.revoke(sid) {
            tracing::error!(error = %e, "cannot persist a revocation");
        }
    }

    /// One round of upkeep: drops expired sessions (closing their
    /// websockets) and refreshes sessions that have open websockets, so a
    /// session ended at the provider also closes its long-lived connections.
    pub(crate) async fn tick(&self) {
        if let Err(e) = self.store.purge_expired(now()) {
            tracing::error!(error = %e, "session store upkeep");
        }
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sid, _| self.store.get(sid, now()).is_some());
        for sid in self.store.watched() {
            if let Some(rec) = self.store.get(&sid, now()) {
                let _ = self.maybe_refresh(&sid, rec, false).await;
            }
        }
    }

    /// How often [`Portal::tick`] should run.
    pub(crate) fn upkeep_interval(&self) -> Duration {
        (self.cfg.refresh_interval / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The roles of a caller.
    pub(crate) fn roles(&self, who: &PeerIdentity, session: Option<&Session>) -> BTreeSet<String> {
        policy::roles(&self.rules, who, session)
    }

    /// Identity headers for the upstream.
    pub(crate) fn login_headers(s: &Session, roles: &BTreeSet<String>) -> LoginHeaders {
        LoginHeaders {
            email: s.email.clone(),
            user: s.sub.clone(),
            name: s.name.clone(),
            groups: s.groups().iter().map(|g| g.to_string()).collect(),
            roles: roles.iter().cloned().collect(),
        }
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
        }
    }

    fn identity(
        &self,
        who: &PeerIdentity,
        s: Option<&Session>,
        roles: &BTreeSet<String>,
    ) -> pages::Identity {
        let w = who.whois();
        pages::Identity {
            tailnet: who.to_string(),
            tailnet_user: who
                .principal()
                .and_then(|p| p.user())
                .map(|u| u.login_name.clone()),
            node: w.map(|w| w.node.name.clone()),
            tags: w.map(|w| w.node.tags.clone()).unwrap_or_default(),
            session: s.map(|s| pages::SessionView {
                provider: self
                    .provider(&s.provider)
                    .map(|p| p.config().label.clone())
                    .unwrap_or_else(|| s.provider.clone()),
                sub: s.sub.clone(),
                email: s.email.clone(),
                name: s.name.clone(),
                groups: s.groups().iter().map(|g| g.to_string()).collect(),
                auth_time: s
                    .auth_time
                    .map(rfc3339)
                    .unwrap_or_else(|| "unknown (the provider did not say)".into()),
                expires: rfc3339(s.expires),
            }),
            roles: roles.iter().cloned().collect(),
        }
    }

    /// Serves a request under the portal prefix. `path` is normalized.
    /// Only the request head is read (no portal page takes a body).
    pub(crate) async fn handle<B: Send>(
        &self,
        req: Request<B>,
        path: &str,
        who: &PeerIdentity,
        origin: &PortalOrigin,
    ) -> (Response<Body>, &'static str) {
        let sub = path
            .strip_prefix(self.cfg.prefix.as_str())
            .unwrap_or("/")
            .to_string();
        let sub = if sub.is_empty() { "/".to_string() } else { sub };
        let query = req.uri().query().map(str::to_string);
        let q = |n: &str| query_param(query.as_deref(), n);
        let html = crate::http::response::wants_html(req.headers());
        let method = req.method().clone();
        let p = &self.cfg.prefix;
        let t = &self.cfg.title;

        // The portal serves tailnet peers only: a session is bound to a node.
        if who.whois().is_none() {
            return (not_found(html), "hide");
        }
        // A state-changing request (logout, any POST) must come from a page
        // of this node: SameSite=Lax does not keep the cookie off requests
        // from other *.ts.net nodes, which are the same site.
        if !matches!(method, Method::GET | Method::HEAD) && !same_origin(req.headers(), origin) {
            tracing::warn!(peer = %who, method = %method, path = %path, origin = ?req.headers().get(header::ORIGIN), "cross-origin request to the portal refused");
            let r = self.cross_origin(html);
            return (r, "cross-origin");
        }
        match (method.clone(), sub.as_str()) {
            (Method::GET | Method::HEAD, "/assets/portal.css") => (stylesheet(), "asset"),
            (Method::GET | Method::HEAD, "/login") => {
                (self.login_page(query.as_deref(), who, origin), "login-page")
            }
            (Method::GET, s) if s.starts_with("/oauth2/") && s.ends_with("/authorize") => {
                let name = s
                    .trim_start_matches("/oauth2/")
                    .trim_end_matches("/authorize");
                let signed_out = signed_out_cookie_name(&self.cfg);
                let fresh = q("fresh").is_some()
                    || headers::cookie(req.headers(), &signed_out) == Some("1");
                let (rd, age) = (q("rd"), q("max_age"));
                self.start_login(name, who, origin, rd, age, fresh, html)
                    .await
            }
            (Method::GET, s)
                if s.starts_with("/oauth2/") && s.ends_with("/authorization-code-callback") =>
            {
                let name = s
                    .trim_start_matches("/oauth2/")
                    .trim_end_matches("/authorization-code-callback")
                    .to_string();
                let (r, what) = self.callback(&name, req.headers(), who, &q).await;
                self.metrics.login(&name, what.trim_start_matches("login-"));
                (r, what)
            }
            (Method::GET | Method::HEAD, "/") => (
                self.dashboard(req.headers(), who, origin).await,
                "dashboard",
            ),
            (Method::GET | Method::HEAD, "/whoami") => {
                (self.whoami(req.headers(), who, html).await, "whoami")
            }
            (Method::GET | Method::HEAD, "/logout") => {
                let signed_in = self.session(req.headers(), who).await.is_some();
                (
                    html_response(StatusCode::OK, pages::logout(p, t, signed_in)),
                    "logout-page",
                )
            }
            (Method::POST, "/logout") => self.logout(req.headers(), who, origin).await,
            (Method::GET | Method::HEAD, "/logged-out") => (
                html_response(StatusCode::OK, pages::logged_out(p, t)),
                "logged-out",
            ),
            _ => (no_such_page(html), "no-route"),
        }
    }

    /// 403 for a state-changing request that did not come from a page of
    /// this node.
    fn cross_origin(&self, html: bool) -> Response<Body> {
        let (p, t) = (&self.cfg.prefix, &self.cfg.title);
        if html {
            html_response(
                StatusCode::FORBIDDEN,
                pages::problem(
                    p,
                    t,
                    "Request from another site refused",
                    "This request did not come from a page of this portal, so nothing was changed. Use the portal's own buttons.",
                ),
            )
        } else {
            crate::http::response::error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "cross-origin request refused; nothing was changed",
                false,
            )
        }
    }

    /// The login page: one link per provider (the target, step-up age and
    /// `fresh` carried along) and a QR code of this node's login URL.
    fn login_page(
        &self,
        query: Option<&str>,
        who: &PeerIdentity,
        origin: &PortalOrigin,
    ) -> Response<Body> {
        let q = |n: &str| query_param(query, n);
        let (p, t) = (&self.cfg.prefix, &self.cfg.title);
        let rd = q("rd").unwrap_or_default();
        let mut extra = String::new();
        if let Some(a) = q("max_age").and_then(|a| a.parse::<u64>().ok()) {
            extra.push_str(&format!("&max_age={a}"));
        }
        if q("fresh").is_some() {
            extra.push_str("&fresh=1");
        }
        let links: Vec<pages::ProviderLink> = self
            .providers
            .iter()
            .map(|pr| pages::ProviderLink {
                name: pr.config().name.clone(),
                label: pr.config().label.clone(),
                href: format!(
                    "{p}/oauth2/{}/authorize?rd={}{extra}",
                    pr.config().name,
                    enc(&rd)
                ),
            })
            .collect();
        // The QR code carries the absolute login URL of this node, under
        // the prefix (caddy-security encoded `<base>/login`).
        let login_url = format!("{}{p}/login", origin.base);
        let qr = qrcode::QrCode::new(login_url.as_bytes()).ok().map(|c| {
            c.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(180, 180)
                .build()
        });
        html_response(
            StatusCode::OK,
            pages::login(p, t, &links, qr.as_deref(), &login_url, &who.to_string()),
        )
    }

    /// The dashboard: who you are, and the services you may open.
    async fn dashboard(
        &self,
        headers: &HeaderMap,
        who: &PeerIdentity,
        origin: &PortalOrigin,
    ) -> Response<Body> {
        let (p, t) = (&self.cfg.prefix, &self.cfg.title);
        let s = self.session(headers, who).await;
        let roles = self.roles(who, s.as_ref());
        let services = if s.is_some() {
            self.services(who, s.as_ref(), &roles, origin)
        } else {
            Vec::new()
        };
        html_response(
            StatusCode::OK,
            pages::dashboard(
                p,
                t,
                &self.identity(who, s.as_ref(), &roles),
                &services,
                &format!("{p}/login"),
            ),
        )
    }

    /// Both identities of the caller: a page for browsers, JSON otherwise.
    async fn whoami(&self, headers: &HeaderMap, who: &PeerIdentity, html: bool) -> Response<Body> {
        let s = self.session(headers, who).await;
        let roles = self.roles(who, s.as_ref());
        let id = self.identity(who, s.as_ref(), &roles);
        if html {
            return html_response(
                StatusCode::OK,
                pages::whoami(&self.cfg.prefix, &self.cfg.title, &id),
            );
        }
        let j = serde_json::json!({
            "tailnet": {
                "caller": id.tailnet,
                "user": id.tailnet_user,
                "node": id.node,
                "tags": id.tags,
            },
            "session": id.session.as_ref().map(|s| serde_json::json!({
                "provider": s.provider, "sub": s.sub, "email": s.email, "name": s.name,
                "groups": s.groups, "auth_time": s.auth_time, "expires": s.expires,
            })),
            "roles": id.roles,
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(j.to_string()))
            .expect("static response")
    }

    fn services(
        &self,
        who: &PeerIdentity,
        s: Option<&Session>,
        roles: &BTreeSet<String>,
        origin: &PortalOrigin,
    ) -> Vec<(String, String)> {
        let caller = Caller {
            who,
            session: s,
            roles,
            now: now(),
        };
        self.routes
            .iter()
            .filter(|r| r.node.as_ref().is_none_or(|n| *n == origin.node))
            .filter(|r| {
                matches!(
                    policy::evaluate(r, &Method::GET, &caller),
                    Decision::Allow(_)
                )
            })
            .filter(|r| !matches!(r.access, config::Access::Public) || r.title.is_some())
            .map(|r| {
                let href = match &r.host {
                    Some(h) => format!("https://{h}{}", r.path),
                    None => format!("{}{}", origin.base, r.path),
                };
                (r.title.clone().unwrap_or_else(|| r.path.clone()), href)
            })
            .collect()
    }

    /// Where the browser goes after signing in: `rd` if it is a safe
    /// target (same origin, a configured host), else the dashboard.
    fn after_sign_in(&self, origin: &PortalOrigin, rd: Option<&str>) -> String {
        let mut hosts = self.allowed_hosts.clone();
        hosts.push(
            origin
                .base
                .trim_start_matches("https://")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        );
        rd.and_then(|t| target::safe_target(t, &hosts, origin.https_port))
            .unwrap_or_else(|| format!("{}/", self.cfg.prefix))
    }

    fn problem_page(&self, status: StatusCode, heading: &str, detail: &str) -> Response<Body> {
        let page = pages::problem(&self.cfg.prefix, &self.cfg.title, heading, detail);
        html_response(status, page)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_login(
        &self,
        name: &str,
        who: &PeerIdentity,
        origin: &PortalOrigin,
        rd: Option<String>,
        max_age: Option<String>,
        fresh: bool,
        html: bool,
    ) -> (Response<Body>, &'static str) {
        let Some(provider) = self.provider(name) else {
            return (
                crate::http::response::error(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "no such provider",
                    html,
                ),
                "no-route",
            );
        };
        let Some(binding) = Binding::of(who) else {
            return (not_found(html), "hide");
        };
        let target = self.after_sign_in(origin, rd.as_deref());
        let max_age = max_age.and_then(|a| a.parse::<u64>().ok());
        let redirect_uri = self.redirect_uri(origin, name);
        let (url, pending) = match provider.authorize_url(&redirect_uri, max_age, fresh).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "cannot start sign-in");
                let r = self.problem_page(
                    StatusCode::BAD_GATEWAY,
                    "The identity provider is not reachable",
                    "Try again in a moment; the administrator can see the reason in the log.",
                );
                return (r, "login-error");
            }
        };
        let browser = random_token();
        {
            let node = binding.node.clone();
            let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let added = m.insert(
                pending.state.clone(),
                &node,
                PendingLogin {
                    provider: name.to_string(),
                    oidc: pending,
                    target,
                    binding,
                    browser: browser.clone(),
                    max_age,
                    redirect_uri,
                    started: Instant::now(),
                },
            );
            if added.is_err() {
                drop(m);
                tracing::warn!(peer = %who, provider = name, "sign-in refused: too many sign-ins in flight from other nodes");
                let r = self.problem_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins in progress",
                    "Try again in a few minutes.",
                );
                return (r, "login-busy");
            }
        }
        let mut r = redirect(StatusCode::FOUND, &url);
        if let Ok(v) = HeaderValue::from_str(&login_cookie(
            &self.cfg,
            &browser,
            LOGIN_TTL.as_secs() as i64,
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, "login-start")
    }

    /// The sign-in in flight that `state` names, if it is still valid and
    /// this callback comes from the browser, node and provider that started
    /// it. State is single-use: taken out whatever happens next.
    fn take_pending(
        &self,
        name: &str,
        state: &str,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Option<PendingLogin> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(state);
        let Some(pl) = pending.filter(|l| l.started.elapsed() < LOGIN_TTL) else {
            tracing::warn!(peer = %who, provider = name, "callback with unknown or used state");
            return None;
        };
        if pl.provider != name
            || headers::cookie(headers, &login_cookie_name(&self.cfg)) != Some(pl.browser.as_str())
            || Binding::of(who).as_ref() != Some(&pl.binding)
        {
            tracing::warn!(peer = %who, provider = name, "callback from another browser, node or provider than the sign-in started");
            return None;
        }
        Some(pl)
    }

    async fn callback(
        &self,
        name: &str,
        headers: &HeaderMap,
        who: &PeerIdentity,
        q: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> (Response<Body>, &'static str) {
        let p = &self.cfg.prefix;
        let t = &self.cfg.title;
        let fail = |status: StatusCode, heading: &str, detail: &str| {
            let mut r = html_response(status, pages::problem(p, t, heading, detail));
            if let Ok(v) = HeaderValue::from_str(&login_cookie(&self.cfg, "", 0)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        };
        let stale = "This sign-in link is not valid any more: it was used already, it expired, or it was started in another browser or on another device.";
        let state = q("state").unwrap_or_default();
        let Some(pl) = self.take_pending(name, &state, headers, who) else {
            return (
                fail(StatusCode::BAD_REQUEST, "Sign-in expired", stale),
                "login-stale",
            );
        };
        if let Some(err) = q("error") {
            let desc = q("error_description").unwrap_or_default();
            tracing::info!(peer = %who, provider = name, error = %err, description = %desc, "provider refused the sign-in");
            return (
                fail(
                    StatusCode::FORBIDDEN,
                    "The identity provider refused the sign-in",
                    &format!("{err} {desc}"),
                ),
                "login-refused",
            );
        }
        let Some(code) = q("code") else {
            return (
                fail(
                    StatusCode::BAD_REQUEST,
                    "Sign-in failed",
                    "the provider sent no code",
                ),
                "login-fail",
            );
        };
        let Some(provider) = self.provider(name) else {
            return (
                fail(StatusCode::NOT_FOUND, "Sign-in failed", "no such provider"),
                "login-fail",
            );
        };
        let login = match provider.finish(&code, &pl.oidc, &pl.redirect_uri).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer = %who, provider = name, error = %e, "sign-in rejected");
                return (
                    fail(
                        StatusCode::BAD_GATEWAY,
                        "Sign-in failed",
                        "The identity provider's answer could not be verified. The administrator can see why in the log.",
                    ),
                    "login-rejected",
                );
            }
        };
        let t0 = now();
        if let Some(why) = pl
            .max_age
            .and_then(|max| unproven_step_up(max, login.auth_time, t0, provider.config()))
        {
            tracing::warn!(peer = %who, provider = name, reason = %why, "step-up refused: no proof of a fresh sign-in");
            let mut r = html_response(
                StatusCode::FORBIDDEN,
                pages::no_fresh_sign_in(p, t, &provider.config().label, &why),
            );
            if let Ok(v) = HeaderValue::from_str(&login_cookie(&self.cfg, "", 0)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            return (r, "login-unproven");
        }
        self.open_session(name, pl, login, headers, who)
    }

    /// Opens the session a verified sign-in earned (none when it maps to
    /// no role) and sends the browser to where it was going.
    fn open_session(
        &self,
        name: &str,
        pl: PendingLogin,
        login: oidc::Login,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> (Response<Body>, &'static str) {
        let (p, t) = (&self.cfg.prefix, &self.cfg.title);
        let t0 = now();
        let sid = random_token();
        let expires = t0 + self.cfg.session_lifetime.as_secs() as i64;
        let rec = Record {
            provider: name.to_string(),
            sub: login.sub.clone(),
            binding: pl.binding.clone(),
            claims: login.claims,
            id_token: login.id_token,
            refresh_token: login.refresh_token,
            created: t0,
            auth_time: login.auth_time,
            expires,
            refreshed: t0,
        };
        let session = rec.clone().into_session(&sid);
        let roles = self.roles(who, Some(&session));
        let shown = session.email.clone().unwrap_or_else(|| session.sub.clone());
        if roles.is_empty() {
            tracing::warn!(peer = %who, provider = name, login = %shown, "sign-in maps to no role; no session created");
            return (
                html_response(
                    StatusCode::FORBIDDEN,
                    pages::no_role(p, t, &shown, &who.to_string()),
                ),
                "no-role",
            );
        }
        if let Err(e) = self.store.put(&sid, rec) {
            tracing::error!(error = %e, "cannot persist a new session");
            let mut r = html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::problem(p, t, "Sign-in failed", "The session could not be stored."),
            );
            if let Ok(v) = HeaderValue::from_str(&login_cookie(&self.cfg, "", 0)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            return (r, "login-fail");
        }
        // A new sign-in replaces the session this browser had.
        if let Some(old) = headers::cookie(headers, &self.cfg.cookie_name)
            && let Ok(c) = self.keys.verify(old, &pl.binding, t0)
            && c.sid != sid
        {
            let _ = self.store.revoke(&c.sid);
        }
        let jwt = self.keys.sign(&SessionCookie {
            sid,
            node: pl.binding.node.clone(),
            usr: pl.binding.user.clone(),
            iat: t0,
            exp: expires,
        });
        tracing::info!(peer = %who, provider = name, login = %shown, roles = ?roles, "signed in");
        let mut r = redirect(StatusCode::FOUND, &pl.target);
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&session_cookie(&self.cfg, &jwt, expires - t0)) {
            h.append(header::SET_COOKIE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&login_cookie(&self.cfg, "", 0)) {
            h.append(header::SET_COOKIE, v);
        }
        if headers::cookie(headers, &signed_out_cookie_name(&self.cfg)).is_some()
            && let Ok(v) = HeaderValue::from_str(&signed_out_cookie(&self.cfg, false))
        {
            h.append(header::SET_COOKIE, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, "login-ok")
    }

    /// Signs out: the session is revoked (its websockets close) and the
    /// answer is tailpass's own page saying so, whatever the provider would
    /// do with an end-session request (Pocket ID shows its login page when
    /// its own session already ended). The page links to the provider's
    /// end-session endpoint to end the session there too, and the browser
    /// keeps a marker that makes its next sign-in ask for a new
    /// authentication.
    async fn logout(
        &self,
        headers: &HeaderMap,
        who: &PeerIdentity,
        origin: &PortalOrigin,
    ) -> (Response<Body>, &'static str) {
        let p = &self.cfg.prefix;
        let done = format!("{}{p}/logged-out", origin.base);
        let mut provider_logout = None;
        let mut signed_in = false;
        if let (Some(token), Some(binding)) = (
            headers::cookie(headers, &self.cfg.cookie_name),
            Binding::of(who),
        ) && let Ok(c) = self.keys.verify(token, &binding, now())
        {
            match self.store.revoke(&c.sid) {
                Ok(Some(rec)) => {
                    signed_in = true;
                    tracing::info!(peer = %who, provider = %rec.provider, "signed out");
                    if let Some(pr) = self.provider(&rec.provider)
                        && let Some(u) = pr
                            .end_session_url(&rec.id_token, &done, &random_token())
                            .await
                    {
                        provider_logout = Some((pr.config().label.clone(), u));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist a sign-out");
                    return (
                        html_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            pages::problem(
                                p,
                                &self.cfg.title,
                                "Sign-out failed",
                                "The session could not be revoked; try again.",
                            ),
                        ),
                        "logout-fail",
                    );
                }
            }
        }
        let mut r = html_response(
            StatusCode::OK,
            pages::signed_out(
                p,
                &self.cfg.title,
                signed_in,
                provider_logout
                    .as_ref()
                    .map(|(l, u)| (l.as_str(), u.as_str())),
            ),
        );
        let h = r.headers_mut();
        for c in [
            session_cookie(&self.cfg, "", 0),
            signed_out_cookie(&self.cfg, true),
        ] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(header::SET_COOKIE, v);
            }
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, "logout")
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
    fn refresh_retries_back_off_up_to_the_interval() {
        let secs = |n, i| retry_delay(n, Duration::from_secs(i)).as_secs();
        assert_eq!(
            (1..=9).map(|n| secs(n, 300)).collect::<Vec<_>>(),
            [2, 4, 8, 16, 32, 64, 128, 256, 300]
        );
        assert_eq!(secs(40, 300), 300, "no overflow");
        assert_eq!(secs(3, 1), 5, "at least 5 s between tries");
        assert_eq!(secs(30, 3600), 300, "at most 5 min");
    }

    fn portal_cfg(extra: &str) -> config::Portal {
        let text = format!(
            "[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n[portal]\nsession_secret = {{ env = \"S\" }}\n{extra}\n[[provider]]\nname = \"p\"\nissuer = \"https://a.example.ts.net\"\nclient_id = \"c\"\n"
        );
        Config::parse(&text, &|_| Some("s".repeat(40)))
            .unwrap()
            .portal
            .unwrap()
    }

    #[test]
    fn cookies_are_host_only_unless_a_domain_is_set() {
        let c = session_cookie(&portal_cfg(""), "tok", 3600);
        assert_eq!(
            c,
            "tailpass_session=tok; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=3600"
        );
        let c = session_cookie(
            &portal_cfg("cookie_domain = \"mist-walleye.ts.net\""),
            "tok",
            0,
        );
        assert!(
            c.contains("Domain=mist-walleye.ts.net") && c.contains("Max-Age=0"),
            "{c}"
        );
        let l = login_cookie(&portal_cfg("prefix = \"/sso\""), "b", 600);
        assert!(
            l.starts_with("tailpass_session_login=b;") && l.contains("Path=/sso/oauth2/"),
            "{l}"
        );
        assert!(
            l.contains("HttpOnly") && l.contains("Secure") && l.contains("SameSite=Lax"),
            "{l}"
        );
    }

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
            Arc::ptr_eq(&a.store, &b.store),
            "same state_dir: same store"
        );
        assert!(
            Arc::ptr_eq(&a.pending, &b.pending),
            "sign-ins in flight carry over"
        );
        let other = dir.path().join("elsewhere");
        let c = Portal::new(&cfg(&other), dialer, Some(&b), m)
            .unwrap()
            .unwrap();
        assert!(
            !Arc::ptr_eq(&b.store, &c.store),
            "a new state_dir opens its own store"
        );
    }

    #[test]
    fn query_parameters_decode() {
        let q = Some("rd=%2Fapp%2F%3Fx%3D1&fresh=1&max_age=30&plus=a+b&empty");
        assert_eq!(query_param(q, "rd").as_deref(), Some("/app/?x=1"));
        assert_eq!(query_param(q, "fresh").as_deref(), Some("1"));
        assert_eq!(query_param(q, "plus").as_deref(), Some("a b"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param(None, "rd"), None);
    }

    #[test]
    fn same_origin_means_this_node_exactly() {
        let o = PortalOrigin {
            node: "gw".into(),
            base: "https://gw.tail1.ts.net".into(),
            https_port: 443,
        };
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert!(same_origin(
            &h(&[("origin", "https://gw.tail1.ts.net")]),
            &o
        ));
        assert!(same_origin(
            &h(&[("origin", "https://GW.tail1.ts.net")]),
            &o
        ));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), &o));
        for bad in [
            &[][..],
            &[("origin", "https://evil.example")],
            &[("origin", "https://other.tail1.ts.net")],
            &[("origin", "https://gw.tail1.ts.net:8443")],
            &[("origin", "http://gw.tail1.ts.net")],
            &[("origin", "null")],
            &[("origin", "https://gw.tail1.ts.net.evil.example")],
            &[
                ("origin", "https://gw.tail1.ts.net"),
                ("origin", "https://evil.example"),
            ],
            &[("sec-fetch-site", "same-site")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "none")],
            // Origin wins over Sec-Fetch-Site when both are sent.
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            assert!(!same_origin(&h(bad), &o), "{bad:?}");
        }
    }
}
