//! Header hygiene (security invariant 1), in one place.
//!
//! The rule, applied to every request before it is proxied:
//! - A header *name* is read the way CGI, WSGI, PHP and Rack upstreams read
//!   it: letter case ignored and `_` taken as `-` (`canonical`). A client
//!   header whose canonical name is protected ([`Hygiene::is_protected`]) is
//!   removed: every `Tailscale-*`, `Remote-*` and `X-Forwarded-*` name,
//!   `Forwarded`, `X-Real-IP`, the path-override headers `X-Original-URL`
//!   and `X-Rewrite-URL`, the default identity names and the route's
//!   configured identity names, and the signed identity assertion's header
//!   (`Tailpass-Jwt-Assertion`, or the one `[assertion] header` names) on
//!   every route, whether it sends assertions or not. Only tailpass's own
//!   values, added afterwards, reach the upstream.
//! - Any other name containing `_` is dropped too (nginx's default:
//!   upstreams disagree on what it means), unless the route sets
//!   `allow_underscore_headers = true`.
//! - Hop-by-hop headers (and names listed in `Connection`) are dropped; the
//!   only upgrade ever forwarded is `websocket` (`upgrade`).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::config::IdentityHeaders;

/// Protected name prefixes (canonical form).
const PROTECTED_PREFIXES: [&str; 3] = ["tailscale-", "remote-", "x-forwarded-"];

/// Protected names (canonical form), besides the prefixes and the identity
/// header names.
const PROTECTED_NAMES: [&str; 6] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded",
    crate::assertion::HEADER,
];

/// A header name as an upstream may read it: lower case, `_` as `-`.
pub(crate) fn canonical(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// What a route's requests are cleaned of; built once per route.
#[derive(Debug, Clone)]
pub struct Hygiene {
    /// Canonical identity names: the route's configured ones and the defaults.
    identity: Vec<String>,
    /// Keep non-protected names that contain `_`.
    allow_underscore: bool,
}

impl Hygiene {
    /// The rule for a route with identity header names `names`.
    pub fn new(names: &IdentityHeaders, allow_underscore: bool) -> Hygiene {
        let mut identity: Vec<String> = names
            .all()
            .iter()
            .chain(IdentityHeaders::default().all().iter())
            .map(|n| canonical(n.as_str()))
            .collect();
        identity.sort();
        identity.dedup();
        Hygiene {
            identity,
            allow_underscore,
        }
    }

    /// Protects one more name: the assertion header `[assertion] header`
    /// configures, on every route.
    pub(crate) fn protect(mut self, name: &HeaderName) -> Hygiene {
        let c = canonical(name.as_str());
        if !self.identity.contains(&c) {
            self.identity.push(c);
        }
        self
    }

    /// Whether a client must never set `name` (any case, `_` for `-`).
    pub fn is_protected(&self, name: &str) -> bool {
        let c = canonical(name);
        PROTECTED_PREFIXES.iter().any(|p| c.starts_with(p))
            || PROTECTED_NAMES.contains(&c.as_str())
            || self.identity.contains(&c)
    }

    /// Whether a client header `name` is removed before proxying.
    pub(crate) fn removes(&self, name: &str) -> bool {
        self.is_protected(name) || (!self.allow_underscore && name.contains('_'))
    }

    /// Removes client-sent protected headers and (unless allowed) other
    /// underscore names. Returns the names removed (for the log; values
    /// are never logged).
    pub fn strip(&self, headers: &mut HeaderMap) -> Vec<String> {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.removes(k.as_str()))
            .cloned()
            .collect();
        let mut removed = Vec::with_capacity(doomed.len());
        for k in doomed {
            headers.remove(&k);
            removed.push(k.as_str().to_string());
        }
        removed
    }
}

/// Standard hop-by-hop headers (RFC 9110 §7.6.1), and `HTTP2-Settings`,
/// which only means something with an `h2c` upgrade (never forwarded).
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

/// Removes hop-by-hop headers, including any named in `Connection`. The
/// `Upgrade` header is kept (with `Connection: upgrade`) when `upgrade` is
/// set, which callers do only for a websocket upgrade ([`wants_upgrade`]).
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
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether a request asks for a websocket upgrade, the only upgrade tailpass
/// tunnels: `Connection: upgrade` and exactly one `Upgrade` header whose
/// only token is `websocket`. Anything else (`h2c`, `foo/1`, a list) is
/// forwarded as a plain request without `Upgrade` ([`refused_upgrade`]).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut up = headers.get_all(header::UPGRADE).iter();
    let only = match (up.next(), up.next()) {
        (Some(v), None) => v,
        _ => return false,
    };
    only.to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && has_token(headers, header::CONNECTION, "upgrade")
}

/// The upgrade a request asked for that is not tunnelled (for the log), if
/// any: an `Upgrade` header on a request that is not a websocket upgrade.
pub(crate) fn refused_upgrade(headers: &HeaderMap) -> Option<String> {
    if wants_upgrade(headers) || !headers.contains_key(header::UPGRADE) {
        return None;
    }
    let v: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(64)
                .collect()
        })
        .collect();
    Some(v.join(", "))
}

/// Whether an upstream's `101` switches to websocket (and nothing else).
pub(crate) fn switched_to_websocket(headers: &HeaderMap) -> bool {
    let mut up = headers.get_all(header::UPGRADE).iter();
    match (up.next(), up.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    }
}

/// Sets a header from a string, dropping characters a header value cannot
/// hold (a display name with a newline must not break the request). The
/// name was parsed once, with the config.
pub(crate) fn set_text(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
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
        headers.insert(name.clone(), v);
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
        let names = IdentityHeaders {
            login: HeaderName::from_static("x-remote-user"),
            ..Default::default()
        };
        let removed = Hygiene::new(&names, false).strip(&mut h);
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
        let name = HeaderName::from_static("tailscale-user-name");
        set_text(&mut h, &name, "Evil\r\nX-Injected: 1");
        assert_eq!(h["tailscale-user-name"], "EvilX-Injected: 1");
        set_text(&mut h, &name, "Zoë");
        assert_eq!(h["tailscale-user-name"], "Zo%C3%AB");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn underscores_never_pose_as_protected_names() {
        let renamed = IdentityHeaders {
            email: HeaderName::from_static("x-auth-email"),
            ..Default::default()
        };
        let hy = Hygiene::new(&renamed, false);
        for n in [
            "Tailscale_User_Login",
            "TAILSCALE_user-LOGIN",
            "remote_user",
            "Remote_Email",
            "Remote-Email",
            "remote_groups",
            "Remote_Roles",
            "Remote-Name",
            "X_Forwarded_For",
            "x_real_ip",
            "X_Original_URL",
            "x-original-url",
            "X-Rewrite-URL",
            "x_rewrite_url",
            "X_Auth_Email",
            "forwarded",
        ] {
            assert!(hy.is_protected(n), "{n}");
            assert!(hy.removes(n), "{n}");
        }
        // Other underscore names: dropped unless the route allows them.
        assert!(!hy.is_protected("x_custom") && hy.removes("x_custom"));
        let lax = Hygiene::new(&renamed, true);
        assert!(!lax.removes("x_custom"));
        assert!(
            lax.removes("Tailscale_User_Login"),
            "protected stays protected"
        );
        assert!(!hy.removes("accept") && !hy.removes("x-custom"));
    }

    #[test]
    fn the_assertion_header_is_protected_in_every_spelling() {
        let hy = Hygiene::new(&IdentityHeaders::default(), true);
        for n in [
            "Tailpass-Jwt-Assertion",
            "TAILPASS_JWT_ASSERTION",
            "tailpass_jwt-assertion",
        ] {
            assert!(hy.is_protected(n), "{n}");
        }
        // A renamed header is protected too, the default name stays so.
        assert!(!hy.is_protected("x-pomerium-jwt-assertion"));
        let renamed = hy.protect(&HeaderName::from_static("x-pomerium-jwt-assertion"));
        assert!(renamed.is_protected("X_Pomerium_Jwt_Assertion"));
        assert!(renamed.is_protected("tailpass-jwt-assertion"));
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let req = |up: &[&str], conn: &str| {
            let mut h = HeaderMap::new();
            for u in up {
                h.append(header::UPGRADE, u.parse().unwrap());
            }
            h.insert(header::CONNECTION, conn.parse().unwrap());
            h
        };
        assert!(wants_upgrade(&req(&["websocket"], "Upgrade")));
        assert!(wants_upgrade(&req(&["WebSocket"], "keep-alive, upgrade")));
        for (up, conn) in [
            (&["h2c"][..], "Upgrade, HTTP2-Settings"),
            (&["foo/1"], "upgrade"),
            (&["websocket, h2c"], "upgrade"),
            (&["websocket", "h2c"], "upgrade"),
            (&["websocket"], "keep-alive"),
        ] {
            let mut h = req(up, conn);
            assert!(!wants_upgrade(&h), "{up:?} {conn}");
            assert!(refused_upgrade(&h).is_some());
            h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
            remove_hop_by_hop(&mut h, false);
            assert!(h.is_empty(), "{h:?}");
        }
        assert!(refused_upgrade(&HeaderMap::new()).is_none());
        assert!(switched_to_websocket(&req(&["websocket"], "upgrade")));
        assert!(!switched_to_websocket(&req(&["h2c"], "upgrade")));
        assert!(!switched_to_websocket(&req(&["websocket, h2c"], "upgrade")));
    }
}
