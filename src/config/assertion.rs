//! The `[assertion]` table: where the keys of the signed identity
//! assertion live and what the assertions say (`docs/assertion.md`).
//! Every key is optional; the section itself is optional when a `[portal]`
//! gives a state directory for the key file. Routes ask for an assertion
//! with `assertion = true`.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::{Backend, Portal, Route, parse_duration};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertion {
    key_file: Option<PathBuf>,
    issuer: Option<String>,
    lifetime: Option<String>,
    jwks_file: Option<PathBuf>,
    header: Option<String>,
}

/// Validated `[assertion]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The key file (private keys, mode 0600).
    pub(crate) key_file: PathBuf,
    /// A fixed `iss`; `None`: the origin of the node the request came to.
    pub(crate) issuer: Option<String>,
    /// How long an assertion is valid (`exp - iat`).
    pub(crate) lifetime: Duration,
    /// Where the JWKS is also written (mode 0644), if anywhere.
    pub(crate) jwks_file: Option<PathBuf>,
    /// The request header the upstream reads.
    pub(crate) header: HeaderName,
}

/// The default header name, as written in the docs.
const HEADER: &str = "Tailpass-Jwt-Assertion";
const LIFETIME: Duration = Duration::from_secs(60);
const SHORTEST: Duration = Duration::from_secs(10);
const LONGEST: Duration = Duration::from_secs(600);

/// Names an upstream or tailpass itself already gives a meaning to.
const TAKEN: [&str; 8] = [
    "authorization",
    "cookie",
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
];

/// `[assertion]` and the routes' `assertion = true`; `None` when no route
/// asks for one and the section is absent.
pub(super) fn validate(
    raw: Option<RawAssertion>,
    portal: Option<&Portal>,
    routes: &[Route],
    p: &mut Vec<String>,
) -> Option<Assertion> {
    for r in routes.iter().filter(|r| r.assertion) {
        if let Backend::Files(_) = r.backend {
            p.push(format!(
                "route[{}].assertion: a route with `root` serves files itself; there is no upstream to receive an assertion",
                r.index
            ));
        }
    }
    let wanted: Vec<String> = (routes.iter().filter(|r| r.assertion))
        .map(|r| format!("route[{}]", r.index))
        .collect();
    if raw.is_none() && wanted.is_empty() {
        return None;
    }
    let raw = raw.unwrap_or_default();
    let key_file = key_file(raw.key_file, portal, &wanted, p)?;
    let issuer = raw.issuer.filter(|i| {
        let ok = !i.trim().is_empty();
        if !ok {
            p.push(
                "assertion.issuer: must not be empty (leave it out for the node's origin)".into(),
            );
        }
        ok
    });
    Some(Assertion {
        key_file,
        issuer,
        lifetime: lifetime(raw.lifetime, p),
        jwks_file: raw
            .jwks_file
            .filter(|f| absolute("assertion.jwks_file", f, p)),
        header: header(raw.header.as_deref(), p),
    })
}

/// `key_file`: an absolute path, else `assertion-keys.json` in the
/// portal's state directory.
fn key_file(
    v: Option<PathBuf>,
    portal: Option<&Portal>,
    wanted: &[String],
    p: &mut Vec<String>,
) -> Option<PathBuf> {
    match (v, portal) {
        (Some(f), _) => absolute("assertion.key_file", &f, p).then_some(f),
        (None, Some(pt)) => Some(pt.state_dir.join("assertion-keys.json")),
        (None, None) => {
            let who = match wanted {
                [] => "[assertion]".to_string(),
                w => w.join(", "),
            };
            p.push(format!(
                "assertion.key_file: required when there is no [portal] (whose state_dir would hold it): {who} cannot be signed, e.g. key_file = \"/var/lib/tailpass/assertion-keys.json\""
            ));
            None
        }
    }
}

fn absolute(field: &str, f: &std::path::Path, p: &mut Vec<String>) -> bool {
    if f.as_os_str().is_empty() {
        p.push(format!("{field}: must not be empty"));
        return false;
    }
    if f.is_relative() {
        p.push(super::relative_dir(field, f));
        return false;
    }
    true
}

/// `lifetime`: 10 s to 10 min, default 60 s.
fn lifetime(v: Option<String>, p: &mut Vec<String>) -> Duration {
    let field = "assertion.lifetime";
    let d = parse_duration(field, &v, LIFETIME, p);
    if !(SHORTEST..=LONGEST).contains(&d) {
        p.push(format!(
            "{field}: {} is out of bounds (10s to 10m: long enough for clock skew, short enough that a leaked assertion is soon worthless)",
            humantime::format_duration(d)
        ));
        return LIFETIME;
    }
    d
}

fn header(v: Option<&str>, p: &mut Vec<String>) -> HeaderName {
    let field = "assertion.header";
    let default = HeaderName::from_static(crate::assertion::HEADER);
    let Some(v) = v else { return default };
    match HeaderName::from_bytes(v.as_bytes()) {
        Ok(n) if TAKEN.contains(&n.as_str()) => {
            p.push(format!(
                "{field}: {v:?} already means something to upstreams; pick another, e.g. {HEADER:?}"
            ));
            default
        }
        Ok(n) => n,
        Err(_) => {
            p.push(format!(
                "{field}: {v:?} is not a header name, e.g. {HEADER:?}"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::time::Duration;

    const NODE: &str = r#"
[[node]]
hostname = "gw"
state_dir = "/var/lib/tailpass/gw"
"#;

    const PORTAL: &str = r#"
[portal]
session_secret = { env = "S" }
[[provider]]
name = "idp"
issuer = "https://idp.example.com"
client_id = "tailpass"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        let env = |k: &str| (k == "S").then(|| "s".repeat(40));
        Config::parse(text, &env).map_err(|e| e.to_string())
    }

    fn route(extra: &str) -> String {
        format!("[[route]]\npath = \"/app\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n")
    }

    #[test]
    fn off_unless_asked_and_defaults_from_the_portal() {
        let c = parse(&format!("{NODE}{PORTAL}{}", route(""))).unwrap();
        assert!(c.assertion.is_none());
        assert!(!c.routes[0].assertion);
        let c = parse(&format!("{NODE}{PORTAL}{}", route("assertion = true"))).unwrap();
        assert!(c.routes[0].assertion);
        let a = c.assertion.unwrap();
        assert_eq!(
            a.key_file,
            std::path::Path::new("/var/lib/tailpass/gw/portal/assertion-keys.json")
        );
        assert_eq!(a.lifetime, Duration::from_secs(60));
        assert_eq!((a.issuer, a.jwks_file), (None, None));
        assert_eq!(a.header.as_str(), "tailpass-jwt-assertion");
    }

    #[test]
    fn every_setting() {
        let text = format!(
            "{NODE}{}\n[assertion]\nkey_file = \"/etc/tailpass/keys.json\"\nissuer = \"https://tailpass.example\"\nlifetime = \"2m\"\njwks_file = \"/srv/www/jwks.json\"\nheader = \"X-Pomerium-Jwt-Assertion\"\n",
            route("assertion = true")
        );
        let a = parse(&text).unwrap().assertion.unwrap();
        assert_eq!(a.key_file, std::path::Path::new("/etc/tailpass/keys.json"));
        assert_eq!(a.issuer.as_deref(), Some("https://tailpass.example"));
        assert_eq!(a.lifetime, Duration::from_secs(120));
        assert_eq!(
            a.jwks_file.unwrap(),
            std::path::Path::new("/srv/www/jwks.json")
        );
        assert_eq!(a.header.as_str(), "x-pomerium-jwt-assertion");
    }

    #[test]
    fn a_route_that_cannot_be_signed_for_is_refused_naming_the_fields() {
        let e = parse(&format!("{NODE}{}", route("assertion = true"))).unwrap_err();
        assert!(
            e.contains("assertion.key_file: required when there is no [portal]"),
            "{e}"
        );
        assert!(e.contains("route[0] cannot be signed"), "{e}");
        let e = parse(&format!("{NODE}{}", route("assertion = \"yes\""))).unwrap_err();
        assert!(
            e.contains("route[0].assertion: \"yes\" is not true or false"),
            "{e}"
        );
        let files = "[[route]]\npath = \"/f\"\nroot = \"/srv\"\nassertion = true\n";
        let text = format!("{NODE}{PORTAL}{files}");
        let e = parse(&text).unwrap_err();
        assert!(e.contains("route[0].assertion: a route with `root`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (line, needle) in [
            (
                "lifetime = \"5s\"",
                "assertion.lifetime: 5s is out of bounds",
            ),
            (
                "lifetime = \"11m\"",
                "assertion.lifetime: 11m is out of bounds",
            ),
            (
                "lifetime = \"soon\"",
                "assertion.lifetime: \"soon\" is not a duration",
            ),
            (
                "key_file = \"keys.json\"",
                "assertion.key_file: \"keys.json\" is a relative path",
            ),
            ("jwks_file = \"\"", "assertion.jwks_file: must not be empty"),
            ("issuer = \" \"", "assertion.issuer: must not be empty"),
            (
                "header = \"Cookie\"",
                "assertion.header: \"Cookie\" already means",
            ),
            (
                "header = \"a b\"",
                "assertion.header: \"a b\" is not a header name",
            ),
            ("kid = \"x\"", "assertion.kid"),
        ] {
            let text = format!("{NODE}{PORTAL}{}\n[assertion]\n{line}\n", route(""));
            let e = parse(&text).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }
}
