//! How a request ended, and the one place that turns it into a response:
//! [`Outcome::answer`] alone picks the status, the page, the access-log
//! decision word (which is also the metric label) and the upstream-error
//! metric label. The words and pages are read by dashboards and tests: keep
//! them byte for byte.

use http::{HeaderValue, Response, StatusCode, header};

use crate::http::path::PathError;
use crate::http::response::{Body, error, not_found, not_found_with_link, redirect};
use crate::portal::{ForbiddenPage, SignIn, html_response};
use crate::proxy::UpstreamError;

/// How a request through the gateway ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The path is ambiguous: it cannot be normalized, or it reads as
    /// another route when decoded, folded or stripped of `;` parameters.
    BadPath(PathError),
    /// No route (and not the portal) matches. `services` is the portal's
    /// dashboard for a tailnet peer of a node that serves it (the page links
    /// there); `None` elsewhere.
    NoRoute { services: Option<String> },
    /// Something exists but this caller may not know it: a protected route
    /// asked through Funnel, loopback or the public listener, or the portal
    /// outside the tailnet. Answered exactly like [`Outcome::NoRoute`].
    Hidden(String),
    /// The route needs a (fresher) sign-in. `sign_in` is where to do it,
    /// when the portal is served on this node.
    LoginNeeded {
        reason: String,
        sign_in: Option<SignIn>,
    },
    /// The route does not take this method.
    MethodNotAllowed(String),
    /// The policy refused, naming the failed requirement and the caller.
    /// `page` is the portal's look, when the portal is served here.
    Denied {
        reason: String,
        page: Option<ForbiddenPage>,
    },
    /// A portal page answered; `word` is the portal's own log word
    /// (`login-page`, `login-ok`, `logout`, …).
    Portal {
        response: Response<Body>,
        word: &'static str,
    },
    /// Allowed (`reason` says why) and the upstream answered.
    Proxied {
        response: Response<Body>,
        reason: String,
    },
    /// Allowed (`reason` says why), but the upstream gave no usable answer.
    UpstreamFailed {
        error: UpstreamError,
        reason: String,
    },
}

/// What [`Outcome::answer`] decided.
pub(crate) struct Answer {
    pub(crate) response: Response<Body>,
    /// The access-log `decision` and the `decision` metric label.
    pub(crate) decision: &'static str,
    /// The access-log `reason`.
    pub(crate) reason: String,
    /// The `kind` label of `tailpass_upstream_errors_total`, if counted.
    pub(crate) upstream_error: Option<&'static str>,
}

impl Outcome {
    /// The response, log word and metric labels of this outcome. `html`
    /// says the client is a browser (pages and redirects instead of text).
    pub(crate) fn answer(self, html: bool) -> Answer {
        let done = |response, decision, reason: String| Answer {
            response,
            decision,
            reason,
            upstream_error: None,
        };
        match self {
            Outcome::BadPath(e) => {
                let why = e.to_string();
                let r = error(StatusCode::BAD_REQUEST, "Bad request", &why, html);
                done(r, "reject", why)
            }
            Outcome::NoRoute { services } => {
                let r = match services {
                    Some(href) if html => not_found_with_link(&href, "Your services"),
                    _ => not_found(html),
                };
                done(r, "no-route", String::new())
            }
            Outcome::Hidden(why) => done(not_found(html), "hide", why),
            Outcome::LoginNeeded { reason, sign_in } => {
                done(login_needed(sign_in, html), "login", reason)
            }
            Outcome::MethodNotAllowed(why) => {
                let r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not allowed",
                    &why,
                    html,
                );
                done(r, "method", why)
            }
            Outcome::Denied { reason, page } => {
                let r = match page.filter(|_| html) {
                    Some(page) => html_response(StatusCode::FORBIDDEN, page.markup(&reason)),
                    None => error(StatusCode::FORBIDDEN, "Forbidden", &reason, html),
                };
                done(r, "deny", reason)
            }
            Outcome::Portal { response, word } => done(response, word, String::new()),
            Outcome::Proxied { response, reason } => done(response, "allow", reason),
            Outcome::UpstreamFailed { error, reason } => Answer {
                response: upstream_failed(error, html),
                decision: "allow",
                // A refused pin is a security decision: the access line
                // says so, not only the proxy's warning.
                reason: match error {
                    UpstreamError::Pinned => format!("{reason}; {error}"),
                    _ => reason,
                },
                upstream_error: match error {
                    UpstreamError::Connect => Some("connect"),
                    UpstreamError::Pinned => Some("pin"),
                    UpstreamError::Timeout => Some("timeout"),
                    _ => None,
                },
            },
        }
    }
}

/// Browsers asking with GET or HEAD are sent to sign in (302, their URL
/// kept); other clients get 401 naming the login page.
fn login_needed(sign_in: Option<SignIn>, html: bool) -> Response<Body> {
    let Some(s) = sign_in else {
        return error(
            StatusCode::UNAUTHORIZED,
            "Sign-in required",
            "sign-in is not available on this listener",
            html,
        );
    };
    if let Some(to) = s.redirect.as_deref().filter(|_| html) {
        return redirect(StatusCode::FOUND, to);
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "Sign-in required",
        &format!("sign in at {}", s.login),
        html,
    );
    let challenge = format!("Cookie realm=\"tailpass\", login=\"{}\"", s.login);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn upstream_failed(e: UpstreamError, html: bool) -> Response<Body> {
    let (status, title, detail) = match e {
        UpstreamError::BadUri => (
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the request path cannot be forwarded",
        ),
        UpstreamError::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            "Request timeout",
            "the upload stopped sending data",
        ),
        UpstreamError::Connect => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "the service behind this address is not answering",
        ),
        UpstreamError::Pinned => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "the service behind this address is not the node this route is pinned to",
        ),
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout",
            "the service behind this address took too long to answer",
        ),
        UpstreamError::SwitchedProtocols => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "the service behind this address switched to a protocol tailpass does not forward",
        ),
    };
    error(status, title, detail, html)
}
