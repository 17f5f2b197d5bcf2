//! The few HTTP and address helpers the entry proxy needs. tailpass has the
//! same rules inside (`http::headers`, `tailnet::names`), crate-private to
//! the product; the kit keeps its own copy rather than widen the product's
//! public API for a dev tool.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
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

/// Standard hop-by-hop headers (RFC 9110 §7.6.1), and `HTTP2-Settings`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// Removes hop-by-hop headers, including any named in `Connection`; keeps
/// a websocket `Upgrade` (with `Connection: upgrade`) when `upgrade`.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(listed.iter()) {
        if upgrade && (h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a request asks for a websocket upgrade: `Connection: upgrade`
/// and exactly one `Upgrade` header whose only token is `websocket`.
pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut up = headers.get_all(header::UPGRADE).iter();
    let only = match (up.next(), up.next()) {
        (Some(v), None) => v,
        _ => return false,
    };
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    only.to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && connection_upgrade
}

/// `host` (IPv6 may be in brackets) as a tailnet IP, if it is an IP:
/// `Some(true)` in Tailscale's ranges (100.64.0.0/10,
/// fd7a:115c:a1e0::/48), `Some(false)` for any other address, `None` for a
/// name.
pub(super) fn host_ip_is_tailnet(host: &str) -> Option<bool> {
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()?;
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => v6.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0],
    })
}

/// Whether the name `host` lies strictly below `domain` (never `domain`
/// itself or `eviltail1.ts.net` for `tail1.ts.net`); case and trailing dots
/// do not matter.
pub(super) fn is_below(host: &str, domain: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    !domain.is_empty()
        && name.len() > domain.len() + 1
        && name.ends_with(&domain)
        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
}
