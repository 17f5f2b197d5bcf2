//! The portal's cookies and the same-origin rule for what changes state.
//!
//! - the session cookie (HttpOnly, Secure, SameSite=Lax, host-only unless
//!   `portal.cookie_domain` is set);
//! - the login cookie, one per sign-in in flight, that ties a callback to
//!   the browser that started it;
//! - the signed-out marker that makes the next sign-in ask the provider
//!   for a new authentication.
//!
//! What it must not do: let a request from another node's page (the same
//! site under `*.ts.net`) change anything ([`same_origin`]).

use http::{HeaderMap, HeaderValue, Response, header};

use super::PortalOrigin;
use crate::config;
use crate::http::response::Body;

/// The `Set-Cookie` value of the session cookie: HttpOnly, Secure,
/// SameSite=Lax, host-only unless `portal.cookie_domain` is set.
pub(crate) fn session_cookie(cfg: &config::Portal, value: &str, max_age: i64) -> String {
    let mut c = cookie::Cookie::build((cfg.cookie_name.clone(), value.to_string()))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(d) = &cfg.cookie_domain {
        c = c.domain(d.clone());
    }
    c.build().to_string()
}

/// The `Set-Cookie` value of the short-lived login cookie that ties a
/// callback to the browser that started the sign-in (path-scoped to the
/// callback URLs).
pub(crate) fn login_cookie(cfg: &config::Portal, value: &str, max_age: i64) -> String {
    cookie::Cookie::build((login_cookie_name(cfg), value.to_string()))
        .path(format!("{}/oauth2/", cfg.prefix))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
        .to_string()
}

/// The `Set-Cookie` value of the marker a sign-out leaves: the browser's
/// next sign-in asks the provider for a new authentication
/// (`prompt=login`), so signing out here is never undone by a silent
/// sign-in at a provider whose own session lives on. Scoped like the
/// session cookie's domain, to the sign-in URLs.
pub(crate) fn signed_out_cookie(cfg: &config::Portal, on: bool) -> String {
    let mut c = cookie::Cookie::build((signed_out_cookie_name(cfg), if on { "1" } else { "" }))
        .path(format!("{}/oauth2/", cfg.prefix))
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(if on { 86_400 } else { 0 }));
    if let Some(d) = &cfg.cookie_domain {
        c = c.domain(d.clone());
    }
    c.build().to_string()
}

pub(crate) fn signed_out_cookie_name(cfg: &config::Portal) -> String {
    format!("{}_signed_out", cfg.cookie_name)
}

pub(crate) fn login_cookie_name(cfg: &config::Portal) -> String {
    format!("{}_login", cfg.cookie_name)
}

/// Appends `Set-Cookie: value` to `r`.
pub(crate) fn set(r: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Whether a request comes from a page of this node's own origin: its
/// `Origin` is exactly `origin.base`, or, when a client sends no `Origin`,
/// `Sec-Fetch-Site: same-origin`. Anything else (another node, another
/// site, `null`, neither header) is not.
pub(crate) fn same_origin(headers: &HeaderMap, origin: &PortalOrigin) -> bool {
    let mut o = headers.get_all(header::ORIGIN).iter();
    match (o.next(), o.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case(&origin.base)),
        (Some(_), Some(_)) => false,
        (None, _) => {
            let mut f = headers.get_all("sec-fetch-site").iter();
            matches!((f.next(), f.next()), (Some(v), None) if v == "same-origin")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn portal_cfg(extra: &str) -> config::Portal {
        let text = format!(
            "[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n[portal]\nsession_secret = {{ env = \"S\" }}\n{extra}\n[[provider]]\nname = \"p\"\nissuer = \"https://a.example.ts.net\"\nclient_id = \"c\"\n"
        );
        Config::parse(&text, &|_| Some("s".repeat(40)))
            .unwrap()
            .portal
            .unwrap()
    }

    #[test]
    fn cookies_are_host_only_unless_a_domain_is_set() {
        let c = session_cookie(&portal_cfg(""), "tok", 3600);
        assert_eq!(
            c,
            "tailpass_session=tok; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=3600"
        );
        let c = session_cookie(
            &portal_cfg("cookie_domain = \"mist-walleye.ts.net\""),
            "tok",
            0,
        );
        assert!(
            c.contains("Domain=mist-walleye.ts.net") && c.contains("Max-Age=0"),
            "{c}"
        );
        let l = login_cookie(&portal_cfg("prefix = \"/sso\""), "b", 600);
        assert!(
            l.starts_with("tailpass_session_login=b;") && l.contains("Path=/sso/oauth2/"),
            "{l}"
        );
        assert!(
            l.contains("HttpOnly") && l.contains("Secure") && l.contains("SameSite=Lax"),
            "{l}"
        );
    }
    #[test]
    fn same_origin_means_this_node_exactly() {
        let o = PortalOrigin {
            node: "gw".into(),
            base: "https://gw.tail1.ts.net".into(),
            https_port: 443,
        };
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert!(same_origin(
            &h(&[("origin", "https://gw.tail1.ts.net")]),
            &o
        ));
        assert!(same_origin(
            &h(&[("origin", "https://GW.tail1.ts.net")]),
            &o
        ));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), &o));
        for bad in [
            &[][..],
            &[("origin", "https://evil.example")],
            &[("origin", "https://other.tail1.ts.net")],
            &[("origin", "https://gw.tail1.ts.net:8443")],
            &[("origin", "http://gw.tail1.ts.net")],
            &[("origin", "null")],
            &[("origin", "https://gw.tail1.ts.net.evil.example")],
            &[
                ("origin", "https://gw.tail1.ts.net"),
                ("origin", "https://evil.example"),
            ],
            &[("sec-fetch-site", "same-site")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "none")],
            // Origin wins over Sec-Fetch-Site when both are sent.
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            assert!(!same_origin(&h(bad), &o), "{bad:?}");
        }
    }
}
