//! Header hygiene (security invariant 1): client-sent identity headers (any
//! letter case — `http::HeaderMap` names are case-insensitive) and
//! forwarding headers are removed before proxying; hop-by-hop headers are
//! dropped; verified values are added afterwards.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Headers a client must never be able to set on the way upstream, besides
/// the configured identity header names: every `Tailscale-*` header and all
/// forwarding headers.
fn is_spoofable(name: &HeaderName) -> bool {
    let n = name.as_str(); // always lower case
    n.starts_with("tailscale-")
        || n.starts_with("x-forwarded-")
        || n == "forwarded"
        || n == "x-real-ip"
}

/// Removes client-sent identity and forwarding headers. Returns the names
/// removed (for the log; values are never logged).
pub fn strip_client_identity(headers: &mut HeaderMap, identity_names: &[&str]) -> Vec<String> {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            is_spoofable(k)
                || identity_names
                    .iter()
                    .any(|n| k.as_str().eq_ignore_ascii_case(n))
        })
        .cloned()
        .collect();
    doomed.dedup();
    let mut removed = Vec::new();
    for k in doomed {
        headers.remove(&k);
        removed.push(k.as_str().to_string());
    }
    removed
}

/// Standard hop-by-hop headers (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any named in `Connection`. The
/// `Upgrade` header is kept (with `Connection: upgrade`) when `upgrade` is set.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
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
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a request asks for a protocol upgrade (websocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Sets a header from a string, dropping characters a header value cannot
/// hold (a display name with a newline must not break the request).
pub fn set_text(headers: &mut HeaderMap, name: &str, value: &str) {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
        return;
    };
    let clean: String = value
        .chars()
        .filter(|c| *c == '\t' || (!c.is_control()))
        .collect();
    // Non-ASCII (a display name "Zoë") is percent-encoded as UTF-8, so the
    // header stays ASCII; '%' is encoded too, so decoding is exact.
    let enc = if clean.is_ascii() {
        clean
    } else {
        const NON_ASCII: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
        percent_encoding::utf8_percent_encode(&clean, NON_ASCII).to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&enc) {
        headers.insert(name, v);
    }
}

/// Every cookie a request carries (all `Cookie` headers; unparsable
/// pairs are skipped).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = cookie::Cookie<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
}

/// Removes the cookie `name` from the `Cookie` headers, keeping the others
/// (the session token is for tailpass, not for upstreams).
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = cookies(headers)
        .filter(|c| c.name() != name)
        .map(|c| c.stripped().to_string())
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers)
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_cookie_is_found_and_never_forwarded() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tailpass_session=tok.en.x; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "tailpass_session"), Some("tok.en.x"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "tailpass"), None);
        remove_cookie(&mut h, "tailpass_session");
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
        remove_cookie(&mut h, "a");
        remove_cookie(&mut h, "b");
        remove_cookie(&mut h, "c");
        assert!(h.get(header::COOKIE).is_none());
    }

    use super::*;

    #[test]
    fn strips_identity_in_any_case_and_forwarding_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("TAILSCALE-USER-LOGIN", "evil@x"),
            ("tailscale-user-name", "Evil"),
            ("Tailscale-Whatever", "x"),
            ("X-Remote-User", "root"),
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded-Host", "admin"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("Accept", "text/html"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h.append("tailscale-user-login", "second@x".parse().unwrap());
        let removed = strip_client_identity(&mut h, &["x-remote-user", "Tailscale-User-Login"]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        assert!(removed.contains(&"x-remote-user".to_string()));
    }

    #[test]
    fn hop_by_hop_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let mut u = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        u.insert("connection", "Upgrade, X-Secret-Hop".parse().unwrap());
        assert!(wants_upgrade(&u));
        remove_hop_by_hop(&mut u, true);
        assert_eq!(u["upgrade"], "websocket");
        assert_eq!(u["connection"], "upgrade");
        assert!(!u.contains_key("x-secret-hop"));
    }

    #[test]
    fn set_text_never_breaks_a_request() {
        let mut h = HeaderMap::new();
        set_text(&mut h, "Tailscale-User-Name", "Evil\r\nX-Injected: 1");
        assert_eq!(h["tailscale-user-name"], "EvilX-Injected: 1");
        set_text(&mut h, "Tailscale-User-Name", "Zoë");
        assert_eq!(h["tailscale-user-name"], "Zo%C3%AB");
        set_text(&mut h, "bad header", "x");
        assert_eq!(h.len(), 1);
    }
}
