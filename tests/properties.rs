//! Property tests (proptest) for the request-hygiene rules (issue #10):
//! header names in random case with `_` for `-` never pass as protected
//! names; path normalization is idempotent and leaves no `..`, `.` or empty
//! segment; the loose reading is its own fixed point; cookie and session
//! JWT parsing never panic on any input.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tailpass::config::{IdentityHeaders, SecretRef};
use tailpass::http::headers::{self, Hygiene};
use tailpass::http::path;
use tailpass::session::{Binding, Keys, SessionCookie};

/// Protected names a client may try to spell another way.
const PROTECTED: [&str; 25] = [
    "Tailscale-User-Login",
    "Tailscale-User-Name",
    "Tailscale-User-Profile-Pic",
    "Tailscale-Node-Name",
    "Tailscale-Node-Tags",
    "Tailscale-Anything-Else",
    "Remote-User",
    "Remote-Email",
    "Remote-Name",
    "Remote-Groups",
    "Remote-Roles",
    "Remote-Whatever",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Prefix",
    "X-Forwarded",
    "Forwarded",
    "X-Real-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Auth-User",
    "X-Auth-Email",
    "X-Webauth-Groups",
    "Tailpass-Jwt-Assertion",
];

/// The identity names of a route that renamed some (the defaults stay
/// protected too).
fn renamed() -> IdentityHeaders {
    IdentityHeaders {
        login: HeaderName::from_static("x-auth-user"),
        email: HeaderName::from_static("x-auth-email"),
        groups: HeaderName::from_static("x-webauth-groups"),
        ..Default::default()
    }
}

/// One protected name, each letter in a random case and each `-` randomly
/// `_`.
fn spelled() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(&PROTECTED[..]),
        proptest::collection::vec(any::<(bool, bool)>(), 32),
    )
        .prop_map(|(name, flips)| {
            name.chars()
                .zip(flips.iter().cycle())
                .map(|(c, (upper, under))| match c {
                    '-' if *under => '_',
                    c if *upper => c.to_ascii_uppercase(),
                    c => c.to_ascii_lowercase(),
                })
                .collect()
        })
}

/// Any header value bytes hyper would accept.
fn value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
        .prop_map(|b| HeaderValue::from_bytes(&b).unwrap())
}

/// A random token-character header name (may or may not look protected).
fn any_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_!#$%&'*+.^`|~-]{1,30}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn protected_names_never_pass_in_any_spelling(
        names in proptest::collection::vec(spelled(), 1..8),
        others in proptest::collection::vec(any_name(), 0..8),
        vals in proptest::collection::vec(value(), 16),
        allow_underscore in any::<bool>(),
    ) {
        let hy = Hygiene::new(&renamed(), allow_underscore);
        let mut h = HeaderMap::new();
        for (i, n) in names.iter().chain(others.iter()).enumerate() {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            h.append(name, vals[i % vals.len()].clone());
        }
        hy.strip(&mut h);
        for k in h.keys() {
            // The oracle is independent of the code under test.
            let canon = k.as_str().replace('_', "-").to_ascii_lowercase();
            for p in PROTECTED {
                prop_assert_ne!(&canon, &p.to_ascii_lowercase(), "{} passed", k);
            }
            prop_assert!(!canon.starts_with("tailscale-") && !canon.starts_with("remote-")
                && !canon.starts_with("x-forwarded-"), "{} passed", k);
            prop_assert!(allow_underscore || !k.as_str().contains('_'), "{} passed", k);
        }
        // Names that are not protected and have no '_' all survive.
        for n in &others {
            if !hy.is_protected(n) && !n.contains('_') {
                prop_assert!(h.contains_key(n.as_str()), "{} was dropped", n);
            }
        }
    }

    #[test]
    fn normalization_is_idempotent_and_leaves_no_dot_or_empty_segments(
        raw in "(/([a-zA-Z0-9._~;:@!$&'()*+,=-]|%[0-9a-fA-F]{2}|%2[eE]|\\.\\.?|/|[\u{80}-\u{ffff}]){0,6}){1,8}",
    ) {
        if let Ok(n) = path::normalize(&raw) {
            prop_assert_eq!(path::normalize(&n), Ok(n.clone()), "not idempotent");
            prop_assert!(n.starts_with('/'));
            prop_assert!(n.is_ascii());
            let inner = n.strip_suffix('/').unwrap_or(&n);
            for seg in inner.split('/').skip(1) {
                prop_assert!(!seg.is_empty() || n == "/", "empty segment in {}", n);
                prop_assert!(seg != "." && seg != "..", "dot segment in {}", n);
            }
            prop_assert!(!n.to_ascii_lowercase().contains("%2f") && !n.contains('\\'));
            // The loose reading is a fixed point, also canonical.
            if let Ok(l) = path::loose(&n) {
                prop_assert_eq!(path::loose(&l), Ok(l.clone()));
                prop_assert_eq!(path::normalize(&l).map(|n| n.to_string()), Ok(l.clone()));
            }
            // The strict form never panics and accepts only plain ASCII.
            if path::strict(&n).is_ok() {
                prop_assert!(!n.contains(';') && !n.contains("%25"));
            }
        }
    }

    #[test]
    fn any_string_is_normalized_or_refused_without_panicking(raw in "\\PC{0,40}") {
        let _ = path::normalize(&raw).map(|n| (path::loose(&n), path::strict(&n)));
    }

    #[test]
    fn cookie_parsing_never_panics(vals in proptest::collection::vec(value(), 0..4)) {
        let mut h = HeaderMap::new();
        for v in vals {
            h.append(http::header::COOKIE, v);
        }
        let _ = headers::cookie(&h, "tailpass_session");
        headers::remove_cookie(&mut h, "tailpass_session");
        prop_assert!(headers::cookie(&h, "tailpass_session").is_none());
    }

    #[test]
    fn session_jwt_parsing_never_panics(
        token in "\\PC{0,300}",
        parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,80}", 0..5),
    ) {
        let keys = keys();
        let b = Binding { node: "n".into(), user: "u@x".into() };
        let _ = keys.verify(&token, &b, 0);
        let _ = keys.verify(&parts.join("."), &b, 0);
        // A well-formed token with any one byte changed is refused.
        let good = keys.sign(&SessionCookie {
            sid: "s".into(), node: "n".into(), usr: "u@x".into(), iat: 0, exp: 10,
        });
        prop_assert!(keys.verify(&good, &b, 1).is_ok());
        if let Some(i) = token.len().checked_rem(good.len()) {
            let mut bad = good.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            if let Ok(bad) = String::from_utf8(bad) && bad != good {
                prop_assert!(keys.verify(&bad, &b, 1).is_err(), "{}", bad);
            }
        }
    }
}

fn keys() -> Keys {
    let s = SecretRef {
        env: Some("S".into()),
        file: None,
    }
    .load(&|_| Some("property-test-secret-0123456789-abcdefghij".into()))
    .unwrap();
    Keys::new(&s, &[]).unwrap()
}
