//! Building blocks of responses: error pages, redirects, typed bodies.
//! Which status a request's outcome gets is decided in one place,
//! `gateway::outcome`; users see plain words (HTML for browsers, text
//! otherwise), details go to the log.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// The body type of every gateway response.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// A body from bytes.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Whether the client is a browser (prefers HTML).
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An error page: `title` and `detail` are shown to the user (no secrets).
pub(crate) fn error(status: StatusCode, title: &str, detail: &str, html: bool) -> Response<Body> {
    let (ctype, body) = if html {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {t}</title>\
                 <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em}}</style>\
                 </head><body><h1>{code} {t}</h1><p>{d}</p><hr><small>tailpass</small></body></html>\n",
                code = status.as_u16(),
                t = escape(title),
                d = escape(detail)
            ),
        )
    } else {
        (
            "text/plain; charset=utf-8",
            format!("{} {title}: {detail}\n", status.as_u16()),
        )
    };
    with_type(status, ctype, body)
}

/// A response of `ctype` that no cache keeps.
pub(crate) fn with_type(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts are valid")
}

/// The 404 of everything that does not exist (or is hidden).
pub(crate) fn not_found(html: bool) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "there is nothing here",
        html,
    )
}

pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::LOCATION, location)
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "invalid redirect target",
                false,
            )
        })
}
