//! The login side of the configuration: the portal, OIDC providers and
//! role rules. Validated together with the rest of the file; every
//! problem names its field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Secret, SecretRef, parse_duration, valid_tag};
use crate::http::path::normalize_prefix;

// ---- raw file model -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPortal {
    prefix: Option<String>,
    state_dir: Option<PathBuf>,
    session_secret: Option<SecretRef>,
    #[serde(default)]
    retired_session_secrets: Vec<SecretRef>,
    session_lifetime: Option<String>,
    refresh_interval: Option<String>,
    refresh_grace: Option<String>,
    cookie_name: Option<String>,
    cookie_domain: Option<String>,
    #[serde(default)]
    redirect_hosts: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    name: String,
    label: Option<String>,
    issuer: String,
    client_id: String,
    client_secret: Option<SecretRef>,
    scopes: Option<Vec<String>>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    trust_prompt_login: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, toml::Value>,
    #[serde(default)]
    tailnet_users: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    capability: Option<String>,
    capability_value: Option<toml::Table>,
}

// ---- validated model ------------------------------------------------------

/// The login portal and session settings.
#[derive(Debug, Clone)]
pub struct Portal {
    /// Path prefix of every portal page, link and asset (`/auth`).
    pub(crate) prefix: String,
    /// Where sessions (and their revocations) are kept across restarts.
    pub state_dir: PathBuf,
    /// Signs and verifies session cookies.
    pub session_secret: Secret,
    /// Older secrets still accepted for verification during a rotation.
    pub(crate) retired_session_secrets: Vec<Secret>,
    /// How long a session lasts.
    pub(crate) session_lifetime: Duration,
    /// How often a session is refreshed at its provider (when it granted a
    /// refresh token); bounds how long a session ended there lives here.
    pub(crate) refresh_interval: Duration,
    /// How long a session whose refresh keeps failing for a reason that may
    /// pass (network, 5xx, `temporarily_unavailable`) lives on past its
    /// refresh interval before it ends too.
    pub(crate) refresh_grace: Duration,
    pub(crate) cookie_name: String,
    /// Cookie domain (`None`: host-only cookie).
    pub(crate) cookie_domain: Option<String>,
    /// Hosts allowed as absolute post-login targets besides the nodes'
    /// own names and the routes' hosts.
    pub(crate) redirect_hosts: Vec<String>,
    /// Nodes serving the portal (empty: all).
    pub nodes: Vec<String>,
    /// Title shown on portal pages.
    pub(crate) title: String,
    /// Where session records, revocations and sign-ins in flight live
    /// (`[sessions]`).
    pub store: super::SessionStore,
}

/// An OpenID Connect provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name used in URLs and rules (`pocketid`).
    pub name: String,
    /// Label on the login button.
    pub(crate) label: String,
    /// Issuer URL, exactly as the provider states it.
    pub issuer: String,
    /// Client id registered at the provider.
    pub(crate) client_id: String,
    /// Client secret (`None`: a public client, PKCE only).
    pub client_secret: Option<Secret>,
    /// Scopes requested.
    pub(crate) scopes: Vec<String>,
    /// Extra CA (PEM) trusted for the provider's HTTPS.
    pub(crate) ca_file: Option<PathBuf>,
    /// Count a sign-in that answered a `prompt=login` request as fresh
    /// even without `auth_time` in the ID token, provided the provider's
    /// discovery document lists `login` in `prompt_values_supported`
    /// (Pocket ID 2.6 to 2.9 re-authenticate on `prompt=login` but send no
    /// `auth_time`; earlier versions ignore `prompt` and do not list it).
    pub(crate) trust_prompt_login: bool,
}

/// Default scopes: what Pocket ID needs for email, name and groups, plus
/// refresh tokens.
pub(crate) const DEFAULT_SCOPES: [&str; 5] =
    ["openid", "email", "profile", "groups", "offline_access"];

/// A role rule: when every condition given holds (any entry of a list),
/// the caller gets `roles`.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Index in the file (`rule[i]`).
    pub(crate) index: usize,
    /// Roles granted.
    pub(crate) roles: Vec<String>,
    /// Login came from one of these providers.
    pub(crate) providers: Vec<String>,
    /// Login email is one of these (case-insensitive).
    pub(crate) emails: Vec<String>,
    /// Login email's domain is one of these.
    pub(crate) domains: Vec<String>,
    /// The groups claim contains one of these.
    pub(crate) groups: Vec<String>,
    /// Every claim named has the value given (string equality, or an array
    /// claim containing it; a list of values means any of them).
    pub(crate) claims: BTreeMap<String, Vec<serde_json::Value>>,
    /// Tailnet user login is one of these (never for tagged nodes).
    pub(crate) tailnet_users: Vec<String>,
    /// Node carries one of these tags.
    pub(crate) tags: Vec<String>,
    /// Node is granted this app capability …
    pub(crate) capability: Option<String>,
    /// … with a value containing these keys and values.
    pub(crate) capability_value: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Rule {
    /// Whether a condition needs a login (an OIDC session).
    pub(crate) fn needs_login(&self) -> bool {
        !self.providers.is_empty()
            || !self.emails.is_empty()
            || !self.domains.is_empty()
            || !self.groups.is_empty()
            || !self.claims.is_empty()
    }

    fn has_condition(&self) -> bool {
        self.needs_login()
            || !self.tailnet_users.is_empty()
            || !self.tags.is_empty()
            || self.capability.is_some()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub(super) fn validate_portal(
    raw: Option<RawPortal>,
    first_state_dir: Option<&PathBuf>,
    needed: bool,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Option<Portal> {
    if raw.is_none() && !needed {
        return None;
    }
    let raw = raw.unwrap_or_default();
    let prefix = portal_prefix(raw.prefix.as_deref(), p);
    let state_dir = match (raw.state_dir, first_state_dir) {
        (Some(d), _) if d.is_relative() && !d.as_os_str().is_empty() => {
            p.push(super::relative_dir("portal.state_dir", &d));
            d
        }
        (Some(d), _) if !d.as_os_str().is_empty() => d,
        (Some(_), _) => {
            p.push("portal.state_dir: must not be empty".into());
            PathBuf::new()
        }
        (None, Some(d)) => d.join("portal"),
        (None, None) => PathBuf::new(),
    };
    let session_secret = match &raw.session_secret {
        None => {
            p.push("portal.session_secret: required (one secret signs and verifies session cookies), e.g. { env = \"TAILPASS_SESSION_SECRET\" }".into());
            None
        }
        Some(r) => load_secret("portal.session_secret", r, env, p),
    };
    let mut retired = Vec::new();
    for (i, r) in raw.retired_session_secrets.iter().enumerate() {
        if let Some(s) = load_secret(&format!("portal.retired_session_secrets[{i}]"), r, env, p) {
            retired.push(s);
        }
    }
    let dur = |k: &str, v: &Option<String>, secs: u64, p: &mut Vec<String>| {
        parse_duration(&format!("portal.{k}"), v, Duration::from_secs(secs), p)
    };
    let session_lifetime = dur("session_lifetime", &raw.session_lifetime, 12 * 3600, p);
    let refresh_interval = dur("refresh_interval", &raw.refresh_interval, 300, p);
    let refresh_grace = dur("refresh_grace", &raw.refresh_grace, 600, p);
    let (cookie_name, cookie_domain) = portal_cookie(raw.cookie_name, raw.cookie_domain, p);
    Some(Portal {
        prefix,
        state_dir,
        session_secret: session_secret?,
        retired_session_secrets: retired,
        session_lifetime,
        refresh_interval,
        refresh_grace,
        cookie_name,
        cookie_domain,
        redirect_hosts: raw
            .redirect_hosts
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        nodes: raw.nodes,
        title: raw.title.unwrap_or_else(|| "tailpass".into()),
        store: super::SessionStore::File,
    })
}

/// `portal.prefix`: canonical, not `/` (default `/auth`).
fn portal_prefix(raw: Option<&str>, p: &mut Vec<String>) -> String {
    match normalize_prefix(raw.unwrap_or("/auth")) {
        Ok(x) if x == "/" => {
            p.push(
                "portal.prefix: must not be \"/\" (the portal needs its own path, like \"/auth\")"
                    .into(),
            );
            "/auth".to_string()
        }
        Ok(x) => x,
        Err(e) => {
            p.push(format!("portal.prefix: {e}"));
            "/auth".to_string()
        }
    }
}

/// `portal.cookie_name` (default `tailpass_session`) and `cookie_domain`.
fn portal_cookie(
    name: Option<String>,
    domain: Option<String>,
    p: &mut Vec<String>,
) -> (String, Option<String>) {
    let cookie_name = name.unwrap_or_else(|| "tailpass_session".into());
    if cookie_name.is_empty()
        || !cookie_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.push(format!(
            "portal.cookie_name: {cookie_name:?} must be letters, digits, '_' or '-'"
        ));
    }
    let cookie_domain = domain.map(|d| d.to_ascii_lowercase());
    if let Some(d) = &cookie_domain
        && (!d.contains('.') || d.starts_with('.') || d.contains(char::is_whitespace))
    {
        p.push(format!(
            "portal.cookie_domain: {d:?} is not a domain like \"mist-walleye.ts.net\""
        ));
    }
    (cookie_name, cookie_domain)
}

fn load_secret(
    field: &str,
    r: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Option<Secret> {
    match r.load(env) {
        Ok(s) if s.expose().len() < 32 => {
            p.push(format!(
                "{field}: too short ({} bytes); use at least 32 random bytes, e.g. `openssl rand -base64 48`",
                s.expose().len()
            ));
            None
        }
        Ok(s) => Some(s),
        Err(e) => {
            p.push(format!("{field}: {e}"));
            None
        }
    }
}

pub(super) fn validate_providers(
    raw: Vec<Option<RawProvider>>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Vec<Provider> {
    let mut out: Vec<Provider> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let Some(r) = r else { continue };
        let f = |k: &str| format!("provider[{i}].{k}");
        if !valid_name(&r.name) {
            p.push(format!(
                "{}: {:?} must be lowercase letters, digits, '-' or '_' (it appears in the redirect URI)",
                f("name"),
                r.name
            ));
        } else if out.iter().any(|o| o.name == r.name) {
            p.push(format!("{}: {:?} is used twice", f("name"), r.name));
        }
        check_issuer(&f("issuer"), &r.issuer, p);
        if r.client_id.is_empty() {
            p.push(format!("{}: must not be empty", f("client_id")));
        }
        let client_secret = match &r.client_secret {
            Some(s) => match s.load(env) {
                Ok(s) => Some(s),
                Err(e) => {
                    p.push(format!("{}: {e}", f("client_secret")));
                    None
                }
            },
            None => None,
        };
        let scopes = r
            .scopes
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        if !scopes.iter().any(|s| s == "openid") {
            p.push(format!("{}: must include \"openid\"", f("scopes")));
        }
        if let Some(c) = &r.ca_file
            && !c.is_file()
        {
            p.push(format!("{}: {} does not exist", f("ca_file"), c.display()));
        }
        out.push(Provider {
            label: r.label.unwrap_or_else(|| r.name.clone()),
            name: r.name,
            issuer: r.issuer.trim_end_matches('/').to_string(),
            client_id: r.client_id,
            client_secret,
            scopes,
            ca_file: r.ca_file,
            trust_prompt_login: r.trust_prompt_login,
        });
    }
    out
}

/// Issuers are https, except on loopback (a provider on the same host,
/// and tests).
fn check_issuer(field: &str, u: &str, p: &mut Vec<String>) {
    match u.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.host().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(|c| c == '[' || c == ']')
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }) => {}
        Ok(uri) if uri.scheme_str() == Some("http") => p.push(format!(
            "{field}: {u:?} must use https (plain http is accepted only on loopback)"
        )),
        _ => p.push(format!(
            "{field}: {u:?} is not a URL like \"https://auth.mist-walleye.ts.net\""
        )),
    }
}

/// The rules; `providers` is `None` when the `[[provider]]` section could
/// not be read (then provider names are not checked).
pub(super) fn validate_rules(
    raw: Vec<Option<RawRule>>,
    providers: Option<&[Provider]>,
    p: &mut Vec<String>,
) -> Vec<Rule> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, r)| Some(validate_rule(i, r?, providers, p)))
        .collect()
}

/// One `[[rule]]`.
fn validate_rule(
    i: usize,
    r: RawRule,
    providers: Option<&[Provider]>,
    p: &mut Vec<String>,
) -> Rule {
    check_rule_lists(&|k| format!("rule[{i}].{k}"), &r, providers, p);
    let claims = r
        .claims
        .into_iter()
        .map(|(k, v)| {
            let vals = match toml_to_json(v) {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            (k, vals)
        })
        .collect();
    let rule = Rule {
        index: i,
        roles: r.roles,
        providers: r.providers,
        emails: r.emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
        domains: r.domains.iter().map(|e| e.to_ascii_lowercase()).collect(),
        groups: r.groups,
        claims,
        tailnet_users: r.tailnet_users,
        tags: r.tags,
        capability: r.capability,
        capability_value: r
            .capability_value
            .map(|t| match toml_to_json(toml::Value::Table(t)) {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            }),
    };
    if !rule.has_condition() {
        p.push(format!(
            "rule[{i}]: has no condition, so it would give {:?} to everyone; add one (providers, emails, domains, groups, claims, tailnet_users, tags, capability)",
            rule.roles
        ));
    }
    rule
}

/// The checks of a rule's lists: roles, providers, tags, domains, and a
/// capability value without its capability.
fn check_rule_lists(
    f: &dyn Fn(&str) -> String,
    r: &RawRule,
    providers: Option<&[Provider]>,
    p: &mut Vec<String>,
) {
    if r.roles.is_empty() {
        p.push(format!(
            "{}: a rule must grant at least one role",
            f("roles")
        ));
    }
    for role in &r.roles {
        if !valid_name(role) {
            p.push(format!(
                "{}: {role:?} must be lowercase letters, digits, '-' or '_'",
                f("roles")
            ));
        }
    }
    for pr in &r.providers {
        if providers.is_some_and(|ps| !ps.iter().any(|x| &x.name == pr)) {
            p.push(format!(
                "{}: no [[provider]] is named {pr:?}",
                f("providers")
            ));
        }
    }
    for t in &r.tags {
        if !valid_tag(t) {
            p.push(format!(
                "{}: {t:?} is not a tag like \"tag:web\"",
                f("tags")
            ));
        }
    }
    for d in &r.domains {
        if d.contains('@') || !d.contains('.') {
            p.push(format!(
                "{}: {d:?} is not a domain like \"example.com\"",
                f("domains")
            ));
        }
    }
    if r.capability_value.is_some() && r.capability.is_none() {
        p.push(format!(
            "{}: needs `capability` (the capability whose value to match)",
            f("capability_value")
        ));
    }
}
