//! The sign-in flow: `/oauth2/<provider>/authorize` starts a sign-in at the
//! provider (PKCE, state, nonce, a login cookie for this browser, the
//! target validated against open redirects), the callback finishes it and
//! asks the session service to open the session.
//!
//! What it must not do: accept a callback from another browser, node or
//! provider than the one that started the sign-in, reuse a `state`, send
//! the browser anywhere [`super::target`] did not accept, or count a
//! step-up as done without the provider's proof of a fresh sign-in.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;

use super::cookies::{self, login_cookie, login_cookie_name, session_cookie, signed_out_cookie};
use super::pending::{InsertError, LOGIN_TTL, PendingLogin};
use super::router::{Page, Visit, no_such_page, query};
use super::{Portal, PortalOrigin, html_response, pages, target};
use crate::config;
use crate::http::headers;
use crate::http::response::{Body, error, not_found, redirect};
use crate::identity::PeerIdentity;
use crate::oidc;
use crate::session::{Binding, OpenError, StoreError, now, random_token};

/// `?rd=…&max_age=…&fresh` of the authorize step (and the login page).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignInQuery {
    /// Where to go after signing in (validated before use).
    pub(crate) rd: Option<String>,
    /// The step-up age, in seconds.
    pub(crate) max_age: Option<String>,
    /// Present: ask the provider for a new authentication.
    pub(crate) fresh: Option<String>,
}

/// What the provider sends back to the callback.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET {prefix}/oauth2/{provider}/authorize`.
pub(super) async fn authorize(
    State(pt): State<Arc<Portal>>,
    Extension(v): Extension<Visit>,
    method: Method,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<SignInQuery>, QueryRejection>,
) -> Page {
    let Some(Path(name)) = name.ok().filter(|_| method == Method::GET) else {
        return no_such_page(v.html);
    };
    let q = query(q);
    let signed_out = cookies::signed_out_cookie_name(&pt.cfg);
    let fresh = q.fresh.is_some() || headers::cookie(&headers, &signed_out) == Some("1");
    let max_age = q.max_age.and_then(|a| a.parse::<u64>().ok());
    pt.start_login(&name, &v, q.rd.as_deref(), max_age, fresh)
        .await
}

/// `GET {prefix}/oauth2/{provider}/authorization-code-callback`.
pub(super) async fn callback(
    State(pt): State<Arc<Portal>>,
    Extension(v): Extension<Visit>,
    method: Method,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<CallbackQuery>, QueryRejection>,
) -> Page {
    let Some(Path(name)) = name.ok().filter(|_| method == Method::GET) else {
        return no_such_page(v.html);
    };
    let page = pt.callback(&name, &headers, &v.who, query(q)).await;
    pt.metrics.login(&name, page.1.trim_start_matches("login-"));
    page
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

impl Portal {
    fn redirect_uri(&self, origin: &PortalOrigin, provider: &str) -> String {
        format!(
            "{}{}/oauth2/{provider}/authorization-code-callback",
            origin.base, self.cfg.prefix
        )
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

    /// A problem page that also clears this sign-in's login cookie.
    fn failed(&self, status: StatusCode, heading: &str, detail: &str) -> Response<Body> {
        let mut r = self.problem_page(status, heading, detail);
        cookies::set(&mut r, &login_cookie(&self.cfg, "", 0));
        r
    }

    /// Starts a sign-in at provider `name`: remembers it (within the
    /// per-node cap) and sends the browser to the provider.
    async fn start_login(
        &self,
        name: &str,
        v: &Visit,
        rd: Option<&str>,
        max_age: Option<u64>,
        fresh: bool,
    ) -> Page {
        let Some(provider) = self.provider(name) else {
            let r = error(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such provider",
                v.html,
            );
            return Page(r, "no-route");
        };
        let Some(binding) = Binding::of(&v.who) else {
            return Page(not_found(v.html), "hide");
        };
        let target = self.after_sign_in(&v.origin, rd);
        let redirect_uri = self.redirect_uri(&v.origin, name);
        let (url, oidc) = match provider.authorize_url(&redirect_uri, max_age, fresh).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "cannot start sign-in");
                let r = self.problem_page(
                    StatusCode::BAD_GATEWAY,
                    "The identity provider is not reachable",
                    "Try again in a moment; the administrator can see the reason in the log.",
                );
                return Page(r, "login-error");
            }
        };
        let browser = random_token();
        let login = PendingLogin {
            provider: name.to_string(),
            oidc,
            target,
            binding,
            browser: browser.clone(),
            max_age,
            redirect_uri,
        };
        match self.pending.insert(login).await {
            Ok(()) => {}
            Err(InsertError::Full(_)) => {
                tracing::warn!(peer = %v.who, provider = name, "sign-in refused: too many sign-ins in flight from other nodes");
                let r = self.problem_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins in progress",
                    "Try again in a few minutes.",
                );
                return Page(r, "login-busy");
            }
            Err(InsertError::Store(e)) => {
                tracing::error!(peer = %v.who, provider = name, error = %e, "sign-in refused: the session store is unreachable");
                return Page(self.store_down(), "login-store-down");
            }
        }
        let mut r = redirect(StatusCode::FOUND, &url);
        let ttl = LOGIN_TTL.as_secs() as i64;
        cookies::set(&mut r, &login_cookie(&self.cfg, &browser, ttl));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Page(r, "login-start")
    }

    /// The sign-in in flight that `state` names, if it is still valid and
    /// this callback comes from the browser, node and provider that started
    /// it. State is single-use: taken out whatever happens next.
    async fn take_pending(
        &self,
        name: &str,
        state: &str,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let Some(pl) = self.pending.take(state).await? else {
            tracing::warn!(peer = %who, provider = name, "callback with unknown or used state");
            return Ok(None);
        };
        if pl.provider != name
            || headers::cookie(headers, &login_cookie_name(&self.cfg)) != Some(pl.browser.as_str())
            || Binding::of(who).as_ref() != Some(&pl.binding)
        {
            tracing::warn!(peer = %who, provider = name, "callback from another browser, node or provider than the sign-in started");
            return Ok(None);
        }
        Ok(Some(pl))
    }

    /// The page of a sign-in refused because the shared session store
    /// cannot be reached.
    fn store_down(&self) -> Response<Body> {
        self.problem_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable right now",
            "The session store cannot be reached, so no new session can be opened. Sessions already open keep working for a short while. Try again in a minute; the administrator can see the reason in the log.",
        )
    }

    /// The callback: the sign-in in flight it finishes, or why not.
    async fn callback(
        &self,
        name: &str,
        headers: &HeaderMap,
        who: &PeerIdentity,
        q: CallbackQuery,
    ) -> Page {
        let stale = "This sign-in link is not valid any more: it was used already, it expired, or it was started in another browser or on another device.";
        let state = q.state.unwrap_or_default();
        let pl = match self.take_pending(name, &state, headers, who).await {
            Ok(Some(pl)) => pl,
            Ok(None) => {
                let r = self.failed(StatusCode::BAD_REQUEST, "Sign-in expired", stale);
                return Page(r, "login-stale");
            }
            Err(e) => {
                tracing::error!(peer = %who, provider = name, error = %e, "sign-in callback refused: the session store is unreachable");
                return Page(self.store_down(), "login-store-down");
            }
        };
        if let Some(err) = q.error {
            let desc = q.error_description.unwrap_or_default();
            tracing::info!(peer = %who, provider = name, error = %err, description = %desc, "provider refused the sign-in");
            let heading = "The identity provider refused the sign-in";
            let r = self.failed(StatusCode::FORBIDDEN, heading, &format!("{err} {desc}"));
            return Page(r, "login-refused");
        }
        let Some(code) = q.code else {
            let r = self.failed(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                "the provider sent no code",
            );
            return Page(r, "login-fail");
        };
        self.verify(name, &code, pl, headers, who).await
    }

    /// Redeems `code` at the provider, checks a step-up's proof and opens
    /// the session.
    async fn verify(
        &self,
        name: &str,
        code: &str,
        pl: PendingLogin,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Page {
        let Some(provider) = self.provider(name) else {
            let r = self.failed(StatusCode::NOT_FOUND, "Sign-in failed", "no such provider");
            return Page(r, "login-fail");
        };
        let login = match provider.finish(code, &pl.oidc, &pl.redirect_uri).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer = %who, provider = name, error = %e, "sign-in rejected");
                let r = self.failed(
                    StatusCode::BAD_GATEWAY,
                    "Sign-in failed",
                    "The identity provider's answer could not be verified. The administrator can see why in the log.",
                );
                return Page(r, "login-rejected");
            }
        };
        if let Some(why) = pl
            .max_age
            .and_then(|max| unproven_step_up(max, login.auth_time, now(), provider.config()))
        {
            tracing::warn!(peer = %who, provider = name, reason = %why, "step-up refused: no proof of a fresh sign-in");
            let (p, t) = (&self.cfg.prefix, &self.cfg.title);
            let label = &provider.config().label;
            let page = pages::no_fresh_sign_in(p, t, label, &why);
            let mut r = html_response(StatusCode::FORBIDDEN, page);
            cookies::set(&mut r, &login_cookie(&self.cfg, "", 0));
            return Page(r, "login-unproven");
        }
        self.open_session(name, pl, login, headers, who).await
    }

    /// Opens the session a verified sign-in earned (none when it maps to
    /// no role) and sends the browser to where it was going.
    async fn open_session(
        &self,
        name: &str,
        pl: PendingLogin,
        login: oidc::Login,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Page {
        let (p, t) = (&self.cfg.prefix, &self.cfg.title);
        let opened = match self
            .sessions
            .open(name, &pl.binding, login, headers, who)
            .await
        {
            Ok(o) => o,
            Err(OpenError::NoRole(shown)) => {
                tracing::warn!(peer = %who, provider = name, login = %shown, "sign-in maps to no role; no session created");
                let page = pages::no_role(p, t, &shown, &who.to_string());
                return Page(html_response(StatusCode::FORBIDDEN, page), "no-role");
            }
            Err(OpenError::Store(e @ StoreError::Unavailable(_))) => {
                tracing::error!(peer = %who, error = %e, "cannot store a new session");
                return Page(self.store_down(), "login-store-down");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot persist a new session");
                let r = self.failed(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sign-in failed",
                    "The session could not be stored.",
                );
                return Page(r, "login-fail");
            }
        };
        let roles: Vec<&str> = opened.roles.iter().map(String::as_str).collect();
        let roles = roles.join(",");
        tracing::info!(peer = %who, provider = name, login = %opened.shown, roles = roles.as_str(), "signed in");
        let mut r = redirect(StatusCode::FOUND, &pl.target);
        cookies::set(
            &mut r,
            &session_cookie(&self.cfg, &opened.token, opened.max_age),
        );
        cookies::set(&mut r, &login_cookie(&self.cfg, "", 0));
        if headers::cookie(headers, &cookies::signed_out_cookie_name(&self.cfg)).is_some() {
            cookies::set(&mut r, &signed_out_cookie(&self.cfg, false));
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Page(r, "login-ok")
    }
}
