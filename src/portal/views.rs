//! The portal's own pages: the login page (provider buttons and a QR code),
//! the dashboard, whoami, sign-out and signed-out, and the stylesheet.
//! Each is an axum handler of [`super::router`] answering a [`Page`].
//!
//! What it must not do: change state on GET (only `POST /logout` signs
//! out, and only from this node's own pages).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::cookies::{self, session_cookie, signed_out_cookie};
use super::router::{Page, Visit, query};
use super::signin::SignInQuery;
use super::{Portal, PortalOrigin, enc, html_response, pages};
use crate::config;
use crate::http::response::full;
use crate::identity::PeerIdentity;
use crate::policy::{self, Caller, Decision};
use crate::session::{Session, now, random_token};

/// The portal a page handler belongs to (the router's state).
type PortalState = State<Arc<Portal>>;

/// `GET {prefix}/assets/portal.css`.
pub(super) async fn stylesheet() -> Page {
    let r = Response::builder()
        .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
        .header(header::CACHE_CONTROL, "max-age=3600")
        .body(full(pages::CSS))
        .expect("static response");
    Page(r, "asset")
}

/// `GET {prefix}/favicon.svg`.
pub(super) async fn favicon() -> Page {
    let r = Response::builder()
        .header(header::CONTENT_TYPE, "image/svg+xml")
        .header(header::CACHE_CONTROL, "max-age=86400")
        .body(full(pages::FAVICON))
        .expect("static response");
    Page(r, "asset")
}

/// `GET {prefix}/login`: one link per provider (the target, step-up age and
/// `fresh` carried along) and a QR code of this node's login URL.
pub(super) async fn login(
    State(pt): PortalState,
    Extension(v): Extension<Visit>,
    q: Result<Query<SignInQuery>, QueryRejection>,
) -> Page {
    let q = query(q);
    let (p, t) = (&pt.cfg.prefix, &pt.cfg.title);
    let rd = q.rd.unwrap_or_default();
    let mut extra = String::new();
    if let Some(a) = q.max_age.and_then(|a| a.parse::<u64>().ok()) {
        extra.push_str(&format!("&max_age={a}"));
    }
    if q.fresh.is_some() {
        extra.push_str("&fresh=1");
    }
    let links: Vec<pages::ProviderLink> = pt
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
    let login_url = format!("{}{p}/login", v.origin.base);
    let qr = qrcode::QrCode::new(login_url.as_bytes()).ok().map(|c| {
        c.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(180, 180)
            .build()
    });
    let page = pages::login(p, t, &links, qr.as_deref(), &login_url, &v.who.to_string());
    Page(html_response(StatusCode::OK, page), "login-page")
}

/// `GET {prefix}/`: who you are, and the services you may open.
pub(super) async fn dashboard(
    State(pt): PortalState,
    Extension(v): Extension<Visit>,
    headers: HeaderMap,
) -> Page {
    let (p, t) = (&pt.cfg.prefix, &pt.cfg.title);
    let auth = pt.sessions.authenticate(&headers, &v.who).await;
    let s = auth.session.as_ref();
    let services = if s.is_some() {
        pt.services(&v.who, s, &auth.roles, &v.origin)
    } else {
        Vec::new()
    };
    let id = pt.identity(&v.who, s, &auth.roles);
    let page = pages::dashboard(p, t, &id, &services, &format!("{p}/login"));
    Page(html_response(StatusCode::OK, page), "dashboard")
}

/// `GET {prefix}/whoami`: both identities of the caller, a page for
/// browsers, JSON otherwise.
pub(super) async fn whoami(
    State(pt): PortalState,
    Extension(v): Extension<Visit>,
    headers: HeaderMap,
) -> Page {
    let auth = pt.sessions.authenticate(&headers, &v.who).await;
    let id = pt.identity(&v.who, auth.session.as_ref(), &auth.roles);
    if v.html {
        let page = pages::whoami(&pt.cfg.prefix, &pt.cfg.title, &id);
        return Page(html_response(StatusCode::OK, page), "whoami");
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
    let r = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(j.to_string()))
        .expect("static response");
    Page(r, "whoami")
}

/// `GET {prefix}/logout`: the sign-out page (its button POSTs).
pub(super) async fn logout_page(
    State(pt): PortalState,
    Extension(v): Extension<Visit>,
    headers: HeaderMap,
) -> Page {
    let auth = pt.sessions.authenticate(&headers, &v.who).await;
    let login = auth
        .session
        .as_ref()
        .map(|s| s.email.as_deref().unwrap_or(&s.sub));
    let page = pages::logout(&pt.cfg.prefix, &pt.cfg.title, login);
    Page(html_response(StatusCode::OK, page), "logout-page")
}

/// `GET {prefix}/logged-out`: where a provider's end-session sends back.
pub(super) async fn logged_out(State(pt): PortalState) -> Page {
    let page = pages::logged_out(&pt.cfg.prefix, &pt.cfg.title);
    Page(html_response(StatusCode::OK, page), "logged-out")
}

/// `POST {prefix}/logout`: the session is revoked (its websockets close)
/// and the answer is tailpass's own page saying so, whatever the provider
/// would do with an end-session request (Pocket ID shows its login page
/// when its own session already ended). The page links to the provider's
/// end-session endpoint to end the session there too, and the browser
/// keeps a marker that makes its next sign-in ask for a new
/// authentication.
pub(super) async fn logout(
    State(pt): PortalState,
    Extension(v): Extension<Visit>,
    headers: HeaderMap,
) -> Page {
    let p = &pt.cfg.prefix;
    let done = format!("{}{p}/logged-out", v.origin.base);
    let rec = match pt.sessions.close(&headers, &v.who).await {
        Ok(rec) => rec,
        Err(e) => {
            tracing::error!(error = %e, "cannot persist a sign-out");
            let r = pt.problem_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-out failed",
                "The session could not be revoked; try again.",
            );
            return Page(r, "logout-fail");
        }
    };
    let mut provider_logout = None;
    if let Some(rec) = &rec {
        tracing::info!(peer = %v.who, provider = %rec.provider, "signed out");
        if let Some(pr) = pt.provider(&rec.provider)
            && let Some(u) = pr
                .end_session_url(&rec.id_token, &done, &random_token())
                .await
        {
            provider_logout = Some((pr.config().label.clone(), u));
        }
    }
    let link = provider_logout
        .as_ref()
        .map(|(l, u)| (l.as_str(), u.as_str()));
    let login = rec.as_ref().map(|r| {
        r.claims
            .get("email")
            .and_then(|e| e.as_str())
            .unwrap_or(&r.sub)
    });
    let page = pages::signed_out(p, &pt.cfg.title, login, link);
    let mut r = html_response(StatusCode::OK, page);
    cookies::set(&mut r, &session_cookie(&pt.cfg, "", 0));
    cookies::set(&mut r, &signed_out_cookie(&pt.cfg, true));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Page(r, "logout")
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
    fn identity(
        &self,
        who: &PeerIdentity,
        s: Option<&Session>,
        roles: &BTreeSet<String>,
    ) -> pages::Identity {
        let w = who.whois();
        pages::Identity {
            tailnet: who.to_string(),
            tailnet_user: w
                .filter(|w| !w.is_tagged())
                .map(|w| w.user.login_name.clone()),
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

    /// The routes of this node the caller may open (GET allowed), with
    /// their titles, and those that would open after a fresher sign-in
    /// (their `max_auth_age` has passed), with the link that does it.
    fn services(
        &self,
        who: &PeerIdentity,
        s: Option<&Session>,
        roles: &BTreeSet<String>,
        origin: &PortalOrigin,
    ) -> Vec<pages::Service> {
        let caller = Caller {
            who,
            session: s,
            roles,
            now: now(),
        };
        self.routes
            .iter()
            .filter(|r| r.node.as_ref().is_none_or(|n| *n == origin.node))
            .filter(|r| !matches!(r.access, config::Access::Public) || r.title.is_some())
            .filter_map(|r| {
                let href = match &r.host {
                    Some(h) => format!("https://{h}{}", r.path),
                    None => format!("{}{}", origin.base, r.path),
                };
                // Back to the route itself after the sign-in: its path on
                // this node, its full URL on another host.
                let rd = if r.host.is_some() { &href } else { &r.path };
                let sign_in_again = match policy::evaluate(r, &Method::GET, &caller) {
                    Decision::Allow(_) => None,
                    Decision::Login {
                        max_age: Some(a), ..
                    } => {
                        self.sign_in(origin, &Method::GET, rd, true, s, Some(a))
                            .redirect
                    }
                    _ => return None,
                };
                Some(pages::Service {
                    title: r.title.clone().unwrap_or_else(|| r.path.clone()),
                    href,
                    sign_in_again,
                })
            })
            .collect()
    }
}
