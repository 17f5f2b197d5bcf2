//! The entry proxy's own responses: its body type and plain-text errors.
//! Header rules (hop-by-hop, websocket upgrades) and tailnet address checks
//! are the product's (`tailpass::http::headers`, `tailpass::tailnet::names`).

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The body of every response the proxy writes or passes on.
pub(super) type Body = BoxBody<Bytes, hyper::Error>;

/// A body from bytes.
pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A plain-text error: `<code> <title>: <detail>`, never cached.
pub(super) fn error(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(format!("{} {title}: {detail}\n", status.as_u16())))
        .expect("static response parts are valid")
}
