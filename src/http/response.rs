//! Building blocks of responses: error pages, redirects, typed bodies.
//! Which status a request's outcome gets is decided in one place,
//! `gateway::outcome`; users see plain words (HTML for browsers, text
//! otherwise), details go to the log.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
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

/// `s` made safe inside HTML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The one stylesheet of every page tailpass draws: the portal serves it at
/// `{prefix}/assets/portal.css`, error pages inline it (allowed by its hash
/// in their CSP, so no other inline style or script runs). Light and dark
/// palettes keep text at WCAG AA contrast (4.5:1 or more); links and
/// buttons show a focus ring for keyboard users; one column on phones.
pub(crate) const STYLE: &str = ":root{color-scheme:light dark;--bg:#f5f6fa;--card:#fff;--fg:#1b1e28;\
--muted:#4f566b;--line:#d5d9e4;--accent:#2b4fc4;--accent-fg:#fff;--warn-bg:#fff1cc;--warn-fg:#5c3f00;--focus:#c25e00}\
@media (prefers-color-scheme:dark){:root{--bg:#13151b;--card:#1d2029;--fg:#e9ebf2;--muted:#aab1c3;\
--line:#363b4a;--accent:#93abff;--accent-fg:#0f1320;--warn-bg:#3d3112;--warn-fg:#ffdc8f;--focus:#ffb547}}\
*{box-sizing:border-box}html{-webkit-text-size-adjust:100%}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
header.bar{display:flex;flex-wrap:wrap;align-items:center;justify-content:space-between;gap:.5rem 1rem;\
padding:.7rem 1rem;background:var(--card);border-bottom:1px solid var(--line)}\
header.bar nav{display:flex;gap:1rem}header.bar a{text-decoration:none;font-weight:600}\
a.brand{color:var(--fg);font-size:1.05rem;letter-spacing:.02em}\
main{max-width:46rem;margin:0 auto;padding:1.5rem 1rem 2rem}\
footer{max-width:46rem;margin:0 auto;padding:1rem;border-top:1px solid var(--line)}\
h1{font-size:1.65rem;line-height:1.25;margin:.3em 0 .6em}\
h2{font-size:1.05rem;margin:1.8em 0 .7em;color:var(--muted);letter-spacing:.02em}\
.card h3{font-size:1rem;margin:0 0 .6em;color:var(--muted)}p.lead{font-size:1.1rem}\
a{color:var(--accent);text-underline-offset:.15em}\
a:focus-visible,button:focus-visible{outline:3px solid var(--focus);outline-offset:3px;border-radius:6px}\
a.provider,button{display:inline-flex;align-items:center;min-height:44px;padding:.55em 1.2em;margin:.2em 0;\
border:1px solid var(--accent);border-radius:8px;background:var(--accent);color:var(--accent-fg);\
font:inherit;font-weight:600;text-decoration:none;cursor:pointer}\
a.provider:hover,button:hover{filter:brightness(1.1)}\
a.provider.secondary{background:transparent;color:var(--accent)}\
ul.cards{list-style:none;padding:0;margin:0;display:grid;gap:.8rem;grid-template-columns:repeat(auto-fill,minmax(15rem,1fr))}\
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem 1.1rem}\
.card p{margin:.4em 0 0}a.service,.service-title{font-size:1.15rem;font-weight:650}\
a.service{text-decoration:none}a.service:hover{text-decoration:underline}\
.where{color:var(--muted);font-size:.85rem;overflow-wrap:anywhere}\
.badge{display:inline-block;padding:.1em .65em;border-radius:999px;background:var(--warn-bg);color:var(--warn-fg);\
font-size:.85rem;font-weight:600}\
.ids{display:grid;gap:.8rem;grid-template-columns:repeat(auto-fit,minmax(17rem,1fr))}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em;margin:0}\
dt{font-weight:600;color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}\
.muted{color:var(--muted);font-size:.9rem}code{overflow-wrap:anywhere}\
#qr svg{width:180px;height:180px;background:#fff;padding:8px;border-radius:8px}\
form#logout-form{margin-top:1.5rem}.error h1{font-size:1.9rem}.error p.lead::first-letter{text-transform:uppercase}\
@media (max-width:30rem){main{padding:1rem .9rem 1.5rem}h1{font-size:1.4rem}dl{grid-template-columns:1fr;gap:0}dd{margin-bottom:.4em}}";

/// The `Content-Security-Policy` of error pages: nothing but [`STYLE`]
/// inline (by its hash), no frames, no script.
fn error_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        let hash = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
        format!(
            "default-src 'none'; style-src 'sha256-{b64}'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
    })
}

fn error_html(status: StatusCode, title: &str, detail: &str) -> String {
    error_html_link(status, title, detail, None)
}

fn error_html_link(
    status: StatusCode,
    title: &str,
    detail: &str,
    link: Option<(&str, &str)>,
) -> String {
    let link = link.map_or(String::new(), |(href, text)| {
        format!(
            "<p><a class=\"provider\" href=\"{}\">{}</a></p>",
            escape(href),
            escape(text)
        )
    });
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{code} {t}</title><style>{STYLE}</style></head>\
         <body class=\"error\"><header class=\"bar\"><span class=\"brand\">tailpass</span></header>\
         <main><h1>{code} {t}</h1><p class=\"lead\">{d}</p>{link}</main>\
         <footer class=\"muted\">tailpass</footer></body></html>\n",
        code = status.as_u16(),
        t = escape(title),
        d = escape(detail)
    )
}

/// An error page: `title` and `detail` are shown to the user (no secrets).
/// Browsers get the portal's look; other clients one line of text.
pub(crate) fn error(status: StatusCode, title: &str, detail: &str, html: bool) -> Response<Body> {
    if !html {
        let body = format!("{} {title}: {detail}\n", status.as_u16());
        return with_type(status, "text/plain; charset=utf-8", body);
    }
    locked_down(with_type(
        status,
        "text/html; charset=utf-8",
        error_html(status, title, detail),
    ))
}

/// The browser's 404 with a way on (the portal's dashboard, for a tailnet
/// peer of a node that serves it).
pub(crate) fn not_found_with_link(href: &str, text: &str) -> Response<Body> {
    let body = error_html_link(
        StatusCode::NOT_FOUND,
        "Not found",
        "there is nothing here",
        Some((href, text)),
    );
    locked_down(with_type(
        StatusCode::NOT_FOUND,
        "text/html; charset=utf-8",
        body,
    ))
}

/// The headers every HTML error page carries: a CSP that allows nothing
/// but the stylesheet, no framing, no sniffing, no referrer elsewhere.
fn locked_down(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(error_csp()),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn error_pages_for_browsers_are_locked_down_and_styled() {
        let r = error(StatusCode::BAD_GATEWAY, "Bad gateway", "a <b> & c", true);
        let h = r.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let body = text(r).await;
        assert!(body.contains("<html lang=\"en\">"), "{body}");
        assert!(body.contains("name=\"viewport\""), "{body}");
        assert!(body.contains("<h1>502 Bad gateway</h1>"), "{body}");
        assert!(body.contains("a &lt;b&gt; &amp; c"), "{body}");
        assert!(!body.contains("<script"), "{body}");
        // The one inline style is the one the CSP's hash allows.
        use base64::Engine;
        let hash = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
        assert!(csp.contains(&format!("'sha256-{b64}'")), "{csp}");
        assert_eq!(body.matches("<style>").count(), 1);
        assert!(body.contains(&format!("<style>{STYLE}</style>")));
        assert!(STYLE.contains("prefers-color-scheme:dark") && STYLE.contains(":focus-visible"));
    }

    #[tokio::test]
    async fn error_text_for_other_clients_is_one_line() {
        let r = not_found(false);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().get("content-security-policy").is_none());
        assert_eq!(text(r).await, "404 Not found: there is nothing here\n");
    }
}
