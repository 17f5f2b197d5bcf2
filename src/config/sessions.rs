//! The `[sessions]` section: where session records, revocations and
//! sign-ins in flight live. The default is the embedded file store in the
//! portal's `state_dir` (nothing to run beside the binary); `store =
//! "redis://…"` shares them with every tailpass that uses the same Redis,
//! session secret and cookie domain.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::{Secret, SecretRef};

/// The raw `[sessions]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    store: Option<String>,
    password: Option<SecretRef>,
    ca_file: Option<PathBuf>,
    key_prefix: Option<String>,
    outage_grace: Option<String>,
    share_on: Option<String>,
    #[serde(default)]
    share_with_tags: Vec<String>,
    #[serde(default)]
    share_with_users: Vec<String>,
}

/// Where sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionStore {
    /// One JSON file in the portal's `state_dir` (the default).
    #[default]
    File,
    /// A Redis (or Valkey) server shared by several tailpass processes.
    Redis(RedisStore),
}

/// A Redis session store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStore {
    /// `redis://` or `rediss://` URL, without a password in it.
    pub url: String,
    /// The password (`AUTH`), from `{ env }` or `{ file }`.
    pub password: Option<Secret>,
    /// Extra CA (PEM) trusted for `rediss://`, for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key and channel (several deployments can share one
    /// Redis under different prefixes).
    pub key_prefix: String,
    /// How long a session this host verified keeps working while Redis
    /// cannot be reached.
    pub outage_grace: Duration,
    /// Serve this Redis to the other hosts on one of this host's nodes.
    pub share: Option<Share>,
}

impl RedisStore {
    /// The store's host and port (6379 when the URL gives none).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let u = redis::parse_redis_url(&self.url)?;
        Some((u.host_str()?.to_string(), u.port().unwrap_or(6379)))
    }
}

/// This host's Redis, served on its node's tailnet address (the Redis
/// port) to the other tailpass hosts only, so they need no route to it
/// but the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The node it is served on.
    pub node: String,
    /// Tailnet peers with any of these tags may connect…
    pub tags: Vec<String>,
    /// …and nodes of these users.
    pub users: Vec<String>,
}

/// Default of `outage_grace`.
pub(super) const DEFAULT_OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// Longest `outage_grace`: a revocation made elsewhere during an outage is
/// honoured here at most this late.
pub(super) const MAX_OUTAGE_GRACE: Duration = Duration::from_secs(3600);

/// Validates `[sessions]`; `portal` says whether a `[portal]` exists,
/// `nodes` are the configured node names (`None`: unknown, skip the check).
pub(super) fn validate(
    raw: Option<RawSessions>,
    portal: bool,
    nodes: Option<&[&str]>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> SessionStore {
    let Some(raw) = raw else {
        return SessionStore::File;
    };
    let redis_only = |field: &str, set: bool, p: &mut Vec<String>| {
        if set {
            p.push(format!(
                "sessions.{field}: only used with a Redis store (store = \"redis://…\")"
            ));
        }
    };
    let url = match raw.store.as_deref() {
        None | Some("file") => {
            redis_only("password", raw.password.is_some(), p);
            redis_only("ca_file", raw.ca_file.is_some(), p);
            redis_only("key_prefix", raw.key_prefix.is_some(), p);
            redis_only("outage_grace", raw.outage_grace.is_some(), p);
            redis_only("share_on", raw.share_on.is_some(), p);
            return SessionStore::File;
        }
        Some(u) => u,
    };
    if !portal {
        p.push("sessions: a session store needs a [portal] (sessions are login sessions)".into());
    }
    let url = redis_url(url, p);
    let password = raw.password.as_ref().and_then(|r| match r.load(env) {
        Ok(s) => Some(s),
        Err(e) => {
            p.push(format!("sessions.password: {e}"));
            None
        }
    });
    if let Some(f) = &raw.ca_file {
        if !url.starts_with("rediss://") {
            p.push("sessions.ca_file: only used with TLS (store = \"rediss://…\")".into());
        } else if f.is_relative() {
            p.push(super::relative_dir("sessions.ca_file", f));
        }
    }
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "tailpass".into());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        p.push(format!(
            "sessions.key_prefix: {key_prefix:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    let outage_grace = outage_grace(raw.outage_grace.as_deref(), p);
    let share = share(&raw, &url, nodes, p);
    SessionStore::Redis(RedisStore {
        url,
        password,
        ca_file: raw.ca_file.clone(),
        key_prefix,
        outage_grace,
        share,
    })
}

/// `share_on` and who it is shared with: a known node, and at least one
/// tag or user (never the whole tailnet).
fn share(
    raw: &RawSessions,
    url: &str,
    nodes: Option<&[&str]>,
    p: &mut Vec<String>,
) -> Option<Share> {
    let Some(node) = &raw.share_on else {
        for (f, set) in [
            ("share_with_tags", !raw.share_with_tags.is_empty()),
            ("share_with_users", !raw.share_with_users.is_empty()),
        ] {
            if set {
                p.push(format!("sessions.{f}: only used with sessions.share_on"));
            }
        }
        return None;
    };
    if nodes.is_some_and(|n| !n.contains(&node.as_str())) {
        p.push(format!(
            "sessions.share_on: {node:?} is not a [[node]] of this config"
        ));
    }
    if raw.share_with_tags.is_empty() && raw.share_with_users.is_empty() {
        p.push("sessions.share_on: name who may connect with share_with_tags (e.g. [\"tag:tailpass\"]) or share_with_users; the store is never shared with the whole tailnet".into());
    }
    for t in &raw.share_with_tags {
        if !super::valid_tag(t) {
            p.push(format!(
                "sessions.share_with_tags: {t:?} is not a tag like \"tag:tailpass\""
            ));
        }
    }
    if url.starts_with("rediss://") {
        p.push("sessions.share_on: shares a plain redis:// store only (the tailnet encrypts; TLS would name the wrong host)".into());
    }
    Some(Share {
        node: node.clone(),
        tags: raw.share_with_tags.clone(),
        users: raw.share_with_users.clone(),
    })
}

/// The store URL: `redis://host[:port][/db]` or `rediss://…`, with no
/// password in it (a config file can be shared without leaking one).
fn redis_url(v: &str, p: &mut Vec<String>) -> String {
    let field = "sessions.store";
    let Some((scheme, rest)) = v.split_once("://") else {
        p.push(format!(
            "{field}: {v:?} is not \"file\" or a URL like \"redis://127.0.0.1:6379\""
        ));
        return String::new();
    };
    if scheme != "redis" && scheme != "rediss" {
        p.push(format!(
            "{field}: {scheme}:// is not supported; give \"file\", \"redis://host:port\" or \"rediss://host:port\""
        ));
        return String::new();
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((user, _)) = authority.rsplit_once('@')
        && user.contains(':')
    {
        p.push(format!(
            "{field}: the URL holds a password; give it as sessions.password = {{ env = \"NAME\" }} or {{ file = \"/path\" }}"
        ));
        return String::new();
    }
    match redis::parse_redis_url(v) {
        Some(u) if u.host_str().is_some_and(|h| !h.is_empty()) => v.to_string(),
        _ => {
            p.push(format!(
                "{field}: {v:?} is not a URL like \"redis://127.0.0.1:6379\""
            ));
            String::new()
        }
    }
}

fn outage_grace(v: Option<&str>, p: &mut Vec<String>) -> Duration {
    let field = "sessions.outage_grace";
    let Some(s) = v else {
        return DEFAULT_OUTAGE_GRACE;
    };
    match humantime::parse_duration(s) {
        Ok(d) if d <= MAX_OUTAGE_GRACE => d,
        Ok(_) => {
            p.push(format!(
                "{field}: {s:?} is longer than 1h; a revocation made on another host during an outage would be honoured here that late"
            ));
            DEFAULT_OUTAGE_GRACE
        }
        Err(e) => {
            p.push(format!(
                "{field}: {s:?} is not a duration like \"60s\" ({e})"
            ));
            DEFAULT_OUTAGE_GRACE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Result<SessionStore, Vec<String>> {
        let raw: RawSessions = toml::from_str(toml).unwrap();
        let env = |k: &str| (k == "PW").then(|| "hunter2".to_string());
        let mut p = Vec::new();
        let s = validate(Some(raw), true, Some(&["gw"]), &env, &mut p);
        if p.is_empty() { Ok(s) } else { Err(p) }
    }

    #[test]
    fn redis_store_is_read_with_its_defaults() {
        let SessionStore::Redis(r) = check(
            "store = \"rediss://redis.example:6380/2\"\npassword = { env = \"PW\" }\nca_file = \"/etc/ca.pem\"",
        )
        .unwrap() else {
            panic!("not redis")
        };
        assert_eq!(r.url, "rediss://redis.example:6380/2");
        assert_eq!(r.password.unwrap().expose(), "hunter2");
        assert_eq!(r.key_prefix, "tailpass");
        assert_eq!(r.outage_grace, DEFAULT_OUTAGE_GRACE);
        assert_eq!(r.share, None);
        let SessionStore::Redis(r) = check(
            "store = \"redis://127.0.0.1:6379\"\nshare_on = \"gw\"\nshare_with_tags = [\"tag:tailpass\"]",
        )
        .unwrap() else {
            panic!("not redis")
        };
        let share = r.share.unwrap();
        assert_eq!(
            (share.node.as_str(), share.tags),
            ("gw", vec!["tag:tailpass".to_string()])
        );
        assert_eq!(check("store = \"file\"").unwrap(), SessionStore::File);
        assert_eq!(check("").unwrap(), SessionStore::File);
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = [
            ("store = \"memcached://x\"", "sessions.store"),
            ("store = \"redis://u:pw@h:6379\"", "holds a password"),
            ("store = \"nonsense\"", "sessions.store"),
            (
                "store = \"redis://h\"\npassword = { env = \"NOPE\" }",
                "sessions.password",
            ),
            (
                "store = \"redis://h\"\nca_file = \"/ca.pem\"",
                "sessions.ca_file",
            ),
            (
                "store = \"rediss://h\"\nca_file = \"ca.pem\"",
                "sessions.ca_file",
            ),
            (
                "store = \"redis://h\"\nkey_prefix = \"a b\"",
                "sessions.key_prefix",
            ),
            (
                "store = \"redis://h\"\noutage_grace = \"2h\"",
                "sessions.outage_grace",
            ),
            (
                "store = \"redis://h\"\noutage_grace = \"soon\"",
                "sessions.outage_grace",
            ),
            ("password = { env = \"PW\" }", "sessions.password"),
            (
                "store = \"redis://h\"\nshare_on = \"gw\"",
                "never shared with the whole tailnet",
            ),
            (
                "store = \"redis://h\"\nshare_on = \"nas\"\nshare_with_tags = [\"tag:a\"]",
                "sessions.share_on",
            ),
            (
                "store = \"redis://h\"\nshare_on = \"gw\"\nshare_with_tags = [\"a\"]",
                "sessions.share_with_tags",
            ),
            (
                "store = \"rediss://h\"\nshare_on = \"gw\"\nshare_with_tags = [\"tag:a\"]",
                "sessions.share_on",
            ),
            (
                "store = \"redis://h\"\nshare_with_tags = [\"tag:a\"]",
                "only used with sessions.share_on",
            ),
        ];
        for (toml, want) in bad {
            let e = check(toml).unwrap_err().join("\n");
            assert!(e.contains(want), "{toml}: {e}");
            assert!(!e.contains("hunter2"), "never the secret: {e}");
        }
        let raw: RawSessions = toml::from_str("store = \"redis://h\"").unwrap();
        let mut p = Vec::new();
        validate(Some(raw), false, None, &|_| None, &mut p);
        assert!(p.join("").contains("needs a [portal]"), "{p:?}");
    }
}
