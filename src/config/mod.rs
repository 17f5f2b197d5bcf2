//! The configuration file: TOML → a spanned tree whose sections, and each
//! element of an array section, are read into raw serde structs on their
//! own (`read`: one bad field never hides the rest) → `validate`
//! collecting every problem with the field it concerns → an immutable
//! [`Config`]. Every problem names its field and, when the field is in
//! the file, its line.
//!
//! Nothing here touches the network. Secrets are loaded (from env or file)
//! but never printed: [`Secret`] redacts itself.

mod assertion;
mod auth;
mod limits;
mod read;
mod secret;
mod sessions;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

pub use assertion::Assertion;
pub use auth::{Portal, Provider, Rule};
pub(crate) use limits::Limits;
pub use secret::Secret;
pub use secret::SecretRef;
pub use sessions::{RedisStore, SessionStore, Share};

use crate::http::path::{self, normalize_prefix};

/// All problems found in a config file, each naming its field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, if it came from one.
    pub(crate) file: Option<PathBuf>,
    /// One message per problem: `field: what is wrong`.
    pub(crate) problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => writeln!(f, "invalid config {}:", p.display())?,
            None => writeln!(f, "invalid config:")?,
        }
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

// ---- raw file model -------------------------------------------------------

/// The whole file, each section read on its own (`read`); an element of
/// an array section that could not be read is `None`, so the others keep
/// their index (`route[3]` stays `route[3]` in messages).
#[derive(Default)]
struct RawConfig {
    tailnet: RawTailnet,
    node: Vec<Option<RawNode>>,
    route: Vec<Option<RawRoute>>,
    loopback: Option<RawLoopback>,
    admin: Option<RawLoopback>,
    public: Option<RawPublic>,
    portal: Option<auth::RawPortal>,
    provider: Vec<Option<auth::RawProvider>>,
    rule: Vec<Option<auth::RawRule>>,
    limits: Option<limits::RawLimits>,
    sessions: Option<sessions::RawSessions>,
    assertion: Option<assertion::RawAssertion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublic {
    listen: String,
    domains: Vec<String>,
    cert: Option<RawCert>,
    acme_directory: Option<String>,
    #[serde(default)]
    acme_contact: Vec<String>,
    acme_cache_dir: Option<PathBuf>,
    acme_ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTailnet {
    control_url: Option<String>,
    domain: Option<String>,
    join_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    hostname: String,
    state_dir: PathBuf,
    auth_key: Option<SecretRef>,
    control_url: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default = "default_https_port")]
    https_port: u16,
    #[serde(default = "yes")]
    http_redirect: bool,
    #[serde(default)]
    funnel: bool,
    cert: Option<RawCert>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCert {
    Named(String),
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoopback {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    upstream: Option<String>,
    upstream_via: Option<String>,
    upstream_node: Option<String>,
    #[serde(default)]
    upstream_tags: Vec<String>,
    root: Option<PathBuf>,
    #[serde(default)]
    browse: bool,
    node: Option<String>,
    host: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    access: Option<String>,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    allow_tags: Vec<String>,
    #[serde(default)]
    allow_capabilities: Vec<String>,
    #[serde(default)]
    loopback: bool,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    #[serde(default)]
    identity_headers: BTreeMap<String, String>,
    // Read as any value so a wrong type is reported with the field's name.
    allow_underscore_headers: Option<toml::Value>,
    #[serde(default)]
    roles: Vec<String>,
    require: Option<String>,
    max_auth_age: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    title: Option<String>,
    assertion: Option<toml::Value>,
}

fn default_https_port() -> u16 {
    443
}
fn yes() -> bool {
    true
}

// ---- validated model ------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tailnet's domain (`mist-walleye.ts.net`), if given; used to print URLs.
    pub(crate) tailnet_domain: Option<String>,
    /// Nodes to join, in file order.
    pub nodes: Vec<NodeSpec>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Optional plain-HTTP listener on loopback.
    pub(crate) loopback: Option<SocketAddr>,
    /// Optional admin listener on loopback (`/healthz`, `/metrics`).
    pub(crate) admin: Option<SocketAddr>,
    /// Optional public HTTPS listener for custom domains (public routes only).
    pub(crate) public: Option<PublicListener>,
    /// The login portal (present when providers are configured).
    pub portal: Option<Portal>,
    /// OIDC providers.
    pub providers: Vec<Provider>,
    /// Role rules, in file order.
    pub rules: Vec<Rule>,
    /// Timeouts and connection caps of every listener.
    pub(crate) limits: Limits,
    /// The signed identity assertion (`[assertion]`), when any route asks
    /// for it or the section is there.
    pub(crate) assertion: Option<Assertion>,
}

/// Let's Encrypt's production ACME directory.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// A public HTTPS listener on a normal network interface, for custom
/// domains; it serves public routes only.
#[derive(Debug, Clone)]
pub(crate) struct PublicListener {
    /// Address to bind.
    pub(crate) listen: SocketAddr,
    /// Domains served (and put on the certificate).
    pub(crate) domains: Vec<String>,
    /// Certificate source.
    pub(crate) cert: PublicCert,
}

/// Where the public listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicCert {
    /// ACME (TLS-ALPN-01 challenge on the listener itself).
    Acme {
        /// Directory URL.
        directory: String,
        /// Contact URLs (`mailto:…`).
        contact: Vec<String>,
        /// Where account and certificates are cached.
        cache_dir: PathBuf,
        /// Extra CA (PEM) trusted for the ACME API, for private ACME servers.
        ca_file: Option<PathBuf>,
    },
    /// PEM files.
    Files {
        /// Certificate chain.
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// One tailnet node tailpass runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Host name on the tailnet.
    pub hostname: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Auth key for the first registration.
    pub(crate) auth_key: Option<Secret>,
    /// Coordination server URL (`None`: Tailscale's).
    pub(crate) control_url: Option<String>,
    /// Tags to advertise.
    pub(crate) tags: Vec<String>,
    /// Ephemeral node.
    pub(crate) ephemeral: bool,
    /// HTTPS port on the tailnet.
    pub(crate) https_port: u16,
    /// Serve a redirect to HTTPS on port 80.
    pub(crate) http_redirect: bool,
    /// Serve public routes over Funnel on 443.
    pub funnel: bool,
    /// Where the TLS certificate comes from.
    pub(crate) cert: CertSource,
    /// How long joining may take (`[tailnet] join_timeout`).
    pub(crate) join_timeout: Duration,
}

/// Where a node's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertSource {
    /// The node's own `*.ts.net` certificate, fetched through the node.
    Tailnet,
    /// A certificate generated at start-up by a local CA kept in the state dir.
    LocalCa,
    /// PEM files (re-read when they change).
    Files {
        /// Certificate chain.
        cert_file: PathBuf,
        /// Private key.
        key_file: PathBuf,
    },
}

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, including Funnel (public internet) and loopback.
    Public,
    /// Tailnet peers; if any list is non-empty, the peer must match one
    /// entry of any list (a user login, a node tag or an app capability).
    Tailnet {
        /// Allowed user logins.
        users: Vec<String>,
        /// Allowed node tags.
        tags: Vec<String>,
        /// Allowed app capabilities (the peer must be granted one).
        capabilities: Vec<String>,
    },
}

impl Access {
    /// What a tailnet peer must match, in words (`user a@x or b@x, or tag
    /// tag:ci`); `None` when anyone (public) or any tailnet peer may pass.
    pub(crate) fn requirement(&self) -> Option<String> {
        let Access::Tailnet {
            users,
            tags,
            capabilities,
        } = self
        else {
            return None;
        };
        let need: Vec<String> = [("user", users), ("tag", tags), ("capability", capabilities)]
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(what, list)| format!("{what} {}", list.join(" or ")))
            .collect();
        (!need.is_empty()).then(|| need.join(", or "))
    }
}

/// Header names used to pass the verified identity upstream, parsed once
/// when the config is validated (never per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// User login.
    pub login: HeaderName,
    /// User display name.
    pub name: HeaderName,
    /// Profile picture URL.
    pub profile_pic: HeaderName,
    /// Node MagicDNS name.
    pub node: HeaderName,
    /// Node tags, comma-separated.
    pub tags: HeaderName,
    /// Signed-in user's email (login session).
    pub email: HeaderName,
    /// Signed-in user's subject at the provider.
    pub user: HeaderName,
    /// Signed-in user's display name.
    pub login_name: HeaderName,
    /// Signed-in user's groups, comma-separated.
    pub groups: HeaderName,
    /// The caller's roles, comma-separated.
    pub roles: HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        let h = HeaderName::from_static;
        IdentityHeaders {
            login: h("tailscale-user-login"),
            name: h("tailscale-user-name"),
            profile_pic: h("tailscale-user-profile-pic"),
            node: h("tailscale-node-name"),
            tags: h("tailscale-node-tags"),
            email: h("remote-email"),
            user: h("remote-user"),
            login_name: h("remote-name"),
            groups: h("remote-groups"),
            roles: h("remote-roles"),
        }
    }
}

impl IdentityHeaders {
    /// All the names, for stripping client-sent copies.
    pub(crate) fn all(&self) -> [&HeaderName; 10] {
        [
            &self.login,
            &self.name,
            &self.profile_pic,
            &self.node,
            &self.tags,
            &self.email,
            &self.user,
            &self.login_name,
            &self.groups,
            &self.roles,
        ]
    }

    /// The field a config key (`identity_headers.<key>`) renames.
    fn field(&mut self, key: &str) -> Option<&mut HeaderName> {
        Some(match key {
            "login" => &mut self.login,
            "name" => &mut self.name,
            "profile_pic" => &mut self.profile_pic,
            "node" => &mut self.node,
            "tags" => &mut self.tags,
            "email" => &mut self.email,
            "user" => &mut self.user,
            "login_name" => &mut self.login_name,
            "groups" => &mut self.groups,
            "roles" => &mut self.roles,
            _ => return None,
        })
    }
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in the file (`route[i]`), for messages and logs.
    pub(crate) index: usize,
    /// Normalized path prefix (`/ttyd`, or `/` for everything).
    pub path: String,
    /// Node host name it belongs to (`None`: every node).
    pub node: Option<String>,
    /// Host header it matches (`None`: any).
    pub(crate) host: Option<String>,
    /// Upstream base URL (`http://127.0.0.1:7681`, may carry a path; for a
    /// Unix socket `http://localhost`; unused for static files).
    pub upstream: http::Uri,
    /// What answers: an HTTP upstream over TCP, a Unix socket or the
    /// tailnet, or files.
    pub(crate) backend: Backend,
    /// Remove the route's prefix before forwarding.
    pub(crate) strip_prefix: bool,
    /// Who may use it.
    pub(crate) access: Access,
    /// Reachable through the loopback listener (protected routes only when set).
    pub(crate) loopback: bool,
    /// Upstream connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Timeout until the upstream's response headers.
    pub(crate) response_timeout: Duration,
    /// Identity header names.
    pub(crate) identity_headers: IdentityHeaders,
    /// Forward client headers whose names contain `_` (protected names
    /// are removed whatever their spelling; see `http::headers`).
    pub(crate) allow_underscore_headers: bool,
    /// Login requirement (`None`: no session needed).
    pub(crate) login: Option<LoginRequirement>,
    /// How the tailnet and login requirements combine.
    pub(crate) require: Combine,
    /// Allowed methods (empty: all).
    pub(crate) methods: Vec<http::Method>,
    /// Name on the portal dashboard.
    pub(crate) title: Option<String>,
    /// Send the upstream a signed identity assertion (`[assertion]`).
    pub(crate) assertion: bool,
}

/// What answers a route's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// HTTP over TCP to `upstream`.
    Tcp,
    /// HTTP over the Unix socket at this path (`upstream = "unix:/…"`).
    Unix(PathBuf),
    /// HTTP or HTTPS to `upstream` on another node of the tailnet, dialed
    /// through the node that serves the request (no tailscaled on the
    /// host), the destination checked against `pin` first.
    Tailnet {
        /// What WhoIs must say of the dialed address (empty: anything).
        pin: UpstreamPin,
    },
    /// Static files below a root (`root = "/srv/blog"`).
    Files(crate::files::FileRoot),
}

/// What a tailnet upstream must be (`upstream_node`, `upstream_tags`),
/// checked with WhoIs on the dialed address before a request byte is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UpstreamPin {
    /// The node's MagicDNS name: a short name (`nas`) is compared with the
    /// first label, a dotted one (`nas.tail1.ts.net`) with the whole name;
    /// lower case, no trailing dot.
    pub(crate) node: Option<String>,
    /// The node must carry at least one of these tags.
    pub(crate) tags: Vec<String>,
}

impl UpstreamPin {
    /// Whether nothing is pinned.
    pub(crate) fn is_empty(&self) -> bool {
        self.node.is_none() && self.tags.is_empty()
    }
}

impl std::fmt::Display for UpstreamPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.node, self.tags.as_slice()) {
            (None, []) => f.write_str("unpinned"),
            (Some(n), []) => write!(f, "node {n}"),
            (None, t) => write!(f, "tags {}", t.join("|")),
            (Some(n), t) => write!(f, "node {n}, tags {}", t.join("|")),
        }
    }
}

impl Route {
    /// Where requests go, for `check` and logs: the upstream URL, the
    /// socket or the file root.
    pub(crate) fn target(&self) -> String {
        match &self.backend {
            Backend::Tcp => self.upstream.to_string(),
            Backend::Tailnet { pin } => format!("{} via the tailnet ({pin})", self.upstream),
            Backend::Unix(p) => format!("unix:{}", p.display()),
            Backend::Files(f) if f.browse => format!("files {} (listed)", f.root.display()),
            Backend::Files(f) => format!("files {}", f.root.display()),
        }
    }
}

/// What a route asks of the login session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LoginRequirement {
    /// The caller must have one of these roles (empty: any signed-in caller
    /// with at least one role).
    pub(crate) roles: Vec<String>,
    /// The login must be at most this old (`auth_time`); older sessions are
    /// sent to sign in again (step-up).
    pub(crate) max_auth_age: Option<Duration>,
}

/// How a route's tailnet requirement (users, tags, capabilities) and its
/// login requirement combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Combine {
    /// Both must hold.
    #[default]
    All,
    /// Either suffices.
    Any,
}

impl Route {
    /// A short name for logs: `route[0] /ttyd`.
    pub fn name(&self) -> String {
        format!("route[{}] {}", self.index, self.path)
    }
}

impl Config {
    /// Reads and validates a config file, loading secrets from the process
    /// environment.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Self::parse(&text, &|k| std::env::var(k).ok()).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates config text; `env` looks up environment
    /// variables. Every problem is reported, each naming its field and,
    /// when the field is in the file, its line.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            file: None,
            problems,
        };
        let tree = read::parse(text).map_err(fail)?;
        let read::Read {
            raw,
            failed,
            mut problems,
        } = read::sections(text, tree.clone());
        match validate(raw, &failed, env) {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(fail(problems)),
            Err(p) => {
                problems.extend(p.into_iter().map(|p| {
                    let at = read::locate_problem(text, &tree, &p);
                    p + &at
                }));
                Err(fail(problems))
            }
        }
    }

    /// The MagicDNS name of a node, if the tailnet domain is known.
    pub fn node_fqdn(&self, node: &NodeSpec) -> String {
        match &self.tailnet_domain {
            Some(d) => format!("{}.{d}", node.hostname),
            None => format!("{}.<your-tailnet>.ts.net", node.hostname),
        }
    }

    /// The node's HTTPS origin as configured ([`NodeOrigin`]).
    pub(crate) fn node_origin(&self, node: &NodeSpec) -> NodeOrigin {
        NodeOrigin::new(&self.node_fqdn(node), node.https_port)
    }
}

/// A node's HTTPS origin, `https://host` with `:port` unless it is HTTPS's
/// default (443). The one place a node's origin is spelled: printed URLs,
/// the portal's absolute URLs, the `:80` redirect and Funnel all format it
/// through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeOrigin {
    host: String,
    port: u16,
}

impl NodeOrigin {
    /// The origin of `host` (a MagicDNS name) on HTTPS port `port`.
    pub(crate) fn new(host: &str, port: u16) -> NodeOrigin {
        NodeOrigin {
            host: host.to_string(),
            port,
        }
    }
}

impl fmt::Display for NodeOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            443 => write!(f, "https://{}", self.host),
            port => write!(f, "https://{}:{port}", self.host),
        }
    }
}

fn parse_duration(
    field: &str,
    v: &Option<String>,
    default: Duration,
    p: &mut Vec<String>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.push(format!("{field}: must be more than zero"));
                default
            }
            Err(e) => {
                p.push(format!(
                    "{field}: {s:?} is not a duration like \"5s\" ({e})"
                ));
                default
            }
        },
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn valid_tag(t: &str) -> bool {
    t.strip_prefix("tag:")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// Whether a section had a part that could not be read: its cross-checks
/// are skipped (a route's `node` is not "unknown" because a `[[node]]`
/// had a typo).
type Failed = HashSet<&'static str>;

fn validate(
    raw: RawConfig,
    failed: &Failed,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let mut p: Vec<String> = Vec::new();
    let t = &raw.tailnet;
    if let Some(u) = &t.control_url {
        check_url("tailnet.control_url", u, &mut p);
    }
    let join_timeout = join_timeout(t.join_timeout.as_deref(), &mut p);
    if raw.node.is_empty() && !failed.contains("node") {
        p.push("node: at least one [[node]] is required".into());
    }
    let mut seen_nodes = Default::default();
    let nodes: Vec<NodeSpec> = (raw.node.into_iter().enumerate())
        .filter_map(|(i, n)| Some((i, n?)))
        .map(|(i, n)| {
            let tailnet = (t.control_url.as_ref(), join_timeout);
            validate_node(i, n, tailnet, &mut seen_nodes, env, &mut p)
        })
        .collect();
    let loopback = (raw.loopback).and_then(|l| loopback_addr("loopback.listen", &l.listen, &mut p));
    let admin = (raw.admin).and_then(|l| loopback_addr("admin.listen", &l.listen, &mut p));
    let public = raw.public.and_then(|pl| validate_public(pl, &mut p));
    let limits = limits::validate(raw.limits, &mut p);
    let known_nodes = (!failed.contains("node")).then_some(nodes.as_slice());
    let routes: Vec<Route> = (raw.route.into_iter().enumerate())
        .filter_map(|(i, r)| validate_route(i, r?, (known_nodes, t.domain.as_deref()), &mut p))
        .collect();
    check_duplicate_routes(&routes, &mut p);
    let (mut portal, providers, rules) = validate_login(
        (raw.portal, raw.provider, raw.rule),
        (&nodes, &routes),
        failed,
        env,
        &mut p,
    );
    let node_names: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
    let known = (!failed.contains("node")).then_some(node_names.as_slice());
    let store = sessions::validate(raw.sessions, portal.is_some(), known, env, &mut p);
    if let Some(pt) = &mut portal {
        pt.store = store;
    }
    let assertion = assertion::validate(raw.assertion, portal.as_ref(), &routes, &mut p);
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Config {
        tailnet_domain: raw.tailnet.domain,
        nodes,
        routes,
        loopback,
        admin,
        public,
        portal,
        providers,
        rules,
        limits,
        assertion,
    })
}

/// The raw `[portal]`, `[[provider]]` and `[[rule]]` sections.
type RawLogin = (
    Option<auth::RawPortal>,
    Vec<Option<auth::RawProvider>>,
    Vec<Option<auth::RawRule>>,
);

/// The login side (portal, providers, rules) and what it needs of the
/// nodes and routes; checks that name a section that could not be read
/// are skipped.
fn validate_login(
    raw: RawLogin,
    (nodes, routes): (&[NodeSpec], &[Route]),
    failed: &Failed,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> (Option<Portal>, Vec<Provider>, Vec<Rule>) {
    let (raw_portal, raw_providers, raw_rules) = raw;
    let providers = auth::validate_providers(raw_providers, env, p);
    let known_providers = (!failed.contains("provider")).then_some(providers.as_slice());
    let rules = auth::validate_rules(raw_rules, known_providers, p);
    let needs_portal = !providers.is_empty() || routes.iter().any(|r| r.login.is_some());
    let portal = if failed.contains("portal") {
        None
    } else {
        let first = nodes.first().map(|n| &n.state_dir);
        auth::validate_portal(raw_portal, first, needs_portal, env, p)
    };
    if !failed.contains("node") && !failed.contains("provider") && !failed.contains("portal") {
        check_login_routes(nodes, routes, &providers, portal.as_ref(), p);
    }
    (portal, providers, rules)
}

/// `[tailnet] join_timeout`: how long each node may take to join (default
/// 2 minutes, at least 5 seconds).
fn join_timeout(v: Option<&str>, p: &mut Vec<String>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(120);
    const LEAST: Duration = Duration::from_secs(5);
    let field = "tailnet.join_timeout";
    let d = parse_duration(field, &v.map(str::to_string), DEFAULT, p);
    if d < LEAST {
        p.push(format!(
            "{field}: {} is too short (at least 5s; joining takes a few seconds even when all goes well)",
            humantime::format_duration(d)
        ));
        return DEFAULT;
    }
    d
}

/// Two routes with the same path, host and node set: one would hide the
/// other. (An every-node route and a node's own route on the same path
/// are fine: the node's own wins there.)
fn check_duplicate_routes(routes: &[Route], p: &mut Vec<String>) {
    for (j, b) in routes.iter().enumerate() {
        let Some(a) = routes[..j]
            .iter()
            .find(|a| a.path == b.path && a.host == b.host && a.node == b.node)
        else {
            continue;
        };
        let on = match &b.node {
            Some(n) => format!("node {n:?}"),
            None => "every node".to_string(),
        };
        let host = b
            .host
            .as_ref()
            .map_or(String::new(), |h| format!(" for host {h:?}"));
        p.push(format!(
            "route[{}].path: another route, route[{}], has the same path {:?} on {on}{host}; one would hide the other",
            b.index, a.index, b.path
        ));
    }
}

/// A node's `cert`: "tailnet" (the default), "local-ca" or PEM files.
fn node_cert(field: &str, raw: Option<RawCert>, p: &mut Vec<String>) -> CertSource {
    match raw {
        None => CertSource::Tailnet,
        Some(RawCert::Named(s)) if s == "tailnet" => CertSource::Tailnet,
        Some(RawCert::Named(s)) if s == "local-ca" => CertSource::LocalCa,
        Some(RawCert::Named(s)) => {
            p.push(format!(
                "{}: {s:?} is not \"tailnet\", \"local-ca\" or {{ cert_file, key_file }}",
                field
            ));
            CertSource::Tailnet
        }
        Some(RawCert::Files {
            cert_file,
            key_file,
        }) => {
            check_pem_files(field, &cert_file, &key_file, p);
            CertSource::Files {
                cert_file,
                key_file,
            }
        }
    }
}

/// One `[[node]]`; `seen` (host names, state directories) catches
/// duplicates.
fn validate_node(
    i: usize,
    n: RawNode,
    (default_control_url, join_timeout): (Option<&String>, Duration),
    seen: &mut (HashSet<String>, HashSet<PathBuf>),
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> NodeSpec {
    let (hostnames, state_dirs) = seen;
    let f = |k: &str| format!("node[{i}].{k}");
    if !valid_hostname(&n.hostname) {
        p.push(format!(
            "{}: {:?} is not a valid host name (letters, digits, '-', at most 63)",
            f("hostname"),
            n.hostname
        ));
    } else if !hostnames.insert(n.hostname.to_ascii_lowercase()) {
        p.push(format!(
            "{}: {:?} is used by two nodes",
            f("hostname"),
            n.hostname
        ));
    }
    if n.state_dir.as_os_str().is_empty() {
        p.push(format!("{}: must not be empty", f("state_dir")));
    } else if n.state_dir.is_relative() {
        p.push(relative_dir(&f("state_dir"), &n.state_dir));
    } else if !state_dirs.insert(n.state_dir.clone()) {
        p.push(format!(
            "{}: {} is used by two nodes (each needs its own)",
            f("state_dir"),
            n.state_dir.display()
        ));
    }
    let auth_key = match &n.auth_key {
        Some(r) => match r.load(env) {
            Ok(s) => Some(s),
            Err(e) => {
                p.push(format!("{}: {e}", f("auth_key")));
                None
            }
        },
        None => None,
    };
    let control_url = n.control_url.or_else(|| default_control_url.cloned());
    if let Some(u) = &control_url {
        check_url(&f("control_url"), u, p);
    }
    for t in &n.tags {
        if !valid_tag(t) {
            p.push(format!(
                "{}: {t:?} is not a tag like \"tag:web\"",
                f("tags")
            ));
        }
    }
    if n.https_port == 0 {
        p.push(format!("{}: must not be 0", f("https_port")));
    }
    let cert = node_cert(&f("cert"), n.cert, p);
    NodeSpec {
        hostname: n.hostname,
        state_dir: n.state_dir,
        auth_key,
        control_url,
        tags: n.tags,
        ephemeral: n.ephemeral,
        https_port: n.https_port,
        http_redirect: n.http_redirect,
        funnel: n.funnel,
        cert,
        join_timeout,
    }
}

/// A route's backend: exactly one of `upstream` (an http URL, or
/// `unix:/absolute/path.sock`) and `root` (an absolute directory).
fn route_backend(
    f: &dyn Fn(&str) -> String,
    upstream: Option<&str>,
    root: Option<PathBuf>,
    browse: bool,
    p: &mut Vec<String>,
) -> Option<(http::Uri, Backend)> {
    let local = || http::Uri::from_static("http://localhost");
    if browse && root.is_none() {
        p.push(format!(
            "{}: only a route with root lists directories",
            f("browse")
        ));
    }
    match (upstream, root) {
        (Some(_), Some(_)) => {
            p.push(format!(
                "{}: give upstream (a service) or root (static files), not both",
                f("root")
            ));
            None
        }
        (None, None) => {
            p.push(format!(
                "{}: required (or root = \"/srv/site\" for static files)",
                f("upstream")
            ));
            None
        }
        (None, Some(root)) if !root.is_absolute() => {
            p.push(format!(
                "{}: {} is not an absolute path",
                f("root"),
                root.display()
            ));
            None
        }
        (None, Some(root)) => Some((
            local(),
            Backend::Files(crate::files::FileRoot { root, browse }),
        )),
        (Some(u), None) => match u.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') && !path.ends_with('/') => {
                Some((local(), Backend::Unix(PathBuf::from(path))))
            }
            Some(_) => {
                p.push(format!(
                    "{}: {u:?} is not a socket like \"unix:/run/pocket-id/pocket-id.sock\"",
                    f("upstream")
                ));
                None
            }
            None => route_upstream(&f("upstream"), u, p).map(|uri| (uri, Backend::Tcp)),
        },
    }
}

/// A relative directory is refused: it would depend on the working
/// directory, which differs between a shell and a systemd unit.
pub(super) fn relative_dir(field: &str, d: &Path) -> String {
    format!(
        "{field}: {:?} is a relative path; give an absolute one like \"/var/lib/tailpass/{}\" (the working directory differs between a shell and the systemd unit)",
        d.display().to_string(),
        d.display()
    )
}

/// A route's upstream: an `http://` or `https://host[:port][/path]` URL
/// without a query (whether https may be used depends on how it is
/// reached: `route_reach`).
fn route_upstream(field: &str, v: &str, p: &mut Vec<String>) -> Option<http::Uri> {
    match v.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.query().is_none() =>
        {
            Some(u)
        }
        _ => {
            p.push(format!(
                "{field}: {v:?} is not a URL like \"http://127.0.0.1:7681\""
            ));
            None
        }
    }
}

/// A route's `upstream_via`, `upstream_node` and `upstream_tags`, as read.
struct RawReach {
    via: Option<String>,
    node: Option<String>,
    tags: Vec<String>,
}

/// How a route's upstream is reached. A URL goes over the tailnet when
/// `upstream_via = "tailnet"`, or by default when its host is a tailnet
/// address or a name below `ts.net` or the `[tailnet] domain`, or when a
/// pin is given; otherwise it is a service on this host (so existing
/// `http://127.0.0.1:…` and container-name upstreams keep their meaning).
/// Sockets and file roots take none of the three fields.
fn route_reach(
    f: &dyn Fn(&str) -> String,
    (upstream, backend): (&http::Uri, Backend),
    raw: RawReach,
    domain: Option<&str>,
    p: &mut Vec<String>,
) -> Backend {
    let given = [
        ("upstream_via", raw.via.is_some()),
        ("upstream_node", raw.node.is_some()),
        ("upstream_tags", !raw.tags.is_empty()),
    ];
    if backend != Backend::Tcp {
        for (field, _) in given.iter().filter(|(_, g)| *g) {
            p.push(format!(
                "{}: only an upstream URL (http:// or https://) is reached over the tailnet, not a socket or files",
                f(field)
            ));
        }
        return backend;
    }
    let pin = route_pin(f, raw.node.as_deref(), &raw.tags, p);
    let tailnet = match raw.via.as_deref() {
        Some("tailnet") => true,
        Some("host") => false,
        Some(other) => {
            p.push(format!(
                "{}: {other:?} is not \"tailnet\" or \"host\"",
                f("upstream_via")
            ));
            return backend;
        }
        None => !pin.is_empty() || upstream.host().is_some_and(|h| on_tailnet(h, domain)),
    };
    if tailnet {
        return Backend::Tailnet { pin };
    }
    for (field, _) in given[1..].iter().filter(|(_, g)| *g) {
        p.push(format!(
            "{}: a pin is checked on tailnet upstreams only, and upstream_via is \"host\"",
            f(field)
        ));
    }
    if upstream.scheme_str() == Some("https") {
        p.push(format!(
            "{}: {upstream} uses https, which tailpass speaks to tailnet upstreams only; give a service on this host as http://, or set upstream_via = \"tailnet\"",
            f("upstream")
        ));
    }
    backend
}

/// Whether an upstream host is on the tailnet: a tailnet address (100.64.0.0/10,
/// fd7a:115c:a1e0::/48) or a name below `ts.net` or the tailnet's domain.
fn on_tailnet(host: &str, domain: Option<&str>) -> bool {
    use crate::tailnet::names;
    names::host_ip_is_tailnet(host).unwrap_or_else(|| {
        names::is_below(host, "ts.net") || domain.is_some_and(|d| names::is_below(host, d))
    })
}

/// `upstream_node` and `upstream_tags`, checked and normalized.
fn route_pin(
    f: &dyn Fn(&str) -> String,
    node: Option<&str>,
    tags: &[String],
    p: &mut Vec<String>,
) -> UpstreamPin {
    let node = node.and_then(|n| {
        let name = n.trim_end_matches('.').to_ascii_lowercase();
        let label_ok =
            |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if name.split('.').all(label_ok) {
            Some(name)
        } else {
            p.push(format!(
                "{}: {n:?} is not a node name like \"nas\" or \"nas.tail1234.ts.net\"",
                f("upstream_node")
            ));
            None
        }
    });
    for t in tags.iter().filter(|t| !valid_tag(t)) {
        p.push(format!(
            "{}: {t:?} is not a tag like \"tag:nas\"",
            f("upstream_tags")
        ));
    }
    UpstreamPin {
        node,
        tags: tags.to_vec(),
    }
}

/// A route's `access` with its `allow_*` lists (`None`: unusable).
fn route_access(
    f: &dyn Fn(&str) -> String,
    access: Option<&str>,
    wants_login: bool,
    allow: (Vec<String>, Vec<String>, Vec<String>),
    p: &mut Vec<String>,
) -> Option<Access> {
    let (allow_users, allow_tags, allow_capabilities) = allow;
    Some(match access {
        Some("public") if wants_login => {
            p.push(format!(
                "{}: a public route cannot have roles or max_auth_age",
                f("access")
            ));
            Access::Public
        }
        Some("public") => {
            if !allow_users.is_empty() || !allow_tags.is_empty() || !allow_capabilities.is_empty() {
                p.push(format!(
                    "{}: a public route cannot have allow_users, allow_tags or allow_capabilities",
                    f("access")
                ));
            }
            Access::Public
        }
        Some("tailnet" | "login") | None => {
            for t in &allow_tags {
                if !valid_tag(t) {
                    p.push(format!(
                        "{}: {t:?} is not a tag like \"tag:web\"",
                        f("allow_tags")
                    ));
                }
            }
            Access::Tailnet {
                users: allow_users,
                tags: allow_tags,
                capabilities: allow_capabilities,
            }
        }
        Some(other) => {
            p.push(format!(
                "{}: {other:?} is not \"public\", \"tailnet\" or \"login\"",
                f("access")
            ));
            return None;
        }
    })
}

/// A route's renamed identity headers.
fn route_identity_headers(
    f: &dyn Fn(&str) -> String,
    raw: BTreeMap<String, String>,
    p: &mut Vec<String>,
) -> IdentityHeaders {
    let mut identity_headers = IdentityHeaders::default();
    for (k, v) in raw {
        let field = f(&format!("identity_headers.{k}"));
        let Ok(name) = HeaderName::from_bytes(v.as_bytes()) else {
            p.push(format!("{field}: {v:?} is not a valid header name"));
            continue;
        };
        match identity_headers.field(&k) {
            Some(slot) => *slot = name,
            None => p.push(format!(
                "{field}: unknown key (login, name, profile_pic, node, tags, email, user, login_name, groups, roles)"
            )),
        }
    }
    identity_headers
}

/// One `[[route]]` (`None` when it cannot be used at all); `nodes` is
/// `None` when the `[[node]]` section could not be read; `domain` is the
/// `[tailnet] domain`.
fn validate_route(
    i: usize,
    r: RawRoute,
    (nodes, domain): (Option<&[NodeSpec]>, Option<&str>),
    p: &mut Vec<String>,
) -> Option<Route> {
    let f = |k: &str| format!("route[{i}].{k}");
    let path = match normalize_prefix(&r.path) {
        Ok(pth) => pth,
        Err(e) => {
            p.push(format!("{}: {e}", f("path")));
            return None;
        }
    };
    if let (Some(n), Some(nodes)) = (&r.node, nodes)
        && !nodes.iter().any(|x| &x.hostname == n)
    {
        p.push(format!("{}: no [[node]] has hostname {n:?}", f("node")));
    }
    let host = r.host.map(|h| h.to_ascii_lowercase());
    let (upstream, backend) = route_backend(&f, r.upstream.as_deref(), r.root, r.browse, p)?;
    let reach = RawReach {
        via: r.upstream_via,
        node: r.upstream_node,
        tags: r.upstream_tags,
    };
    let backend = route_reach(&f, (&upstream, backend), reach, domain, p);
    let wants_login = matches!(r.access.as_deref(), Some("login"))
        || !r.roles.is_empty()
        || r.max_auth_age.is_some();
    let access = route_access(
        &f,
        r.access.as_deref(),
        wants_login,
        (r.allow_users, r.allow_tags, r.allow_capabilities),
        p,
    )?;
    let identity_headers = route_identity_headers(&f, r.identity_headers, p);
    let timeout = |k: &str, v: &Option<String>, secs: u64, p: &mut Vec<String>| {
        parse_duration(&f(k), v, Duration::from_secs(secs), p)
    };
    let connect_timeout = timeout("connect_timeout", &r.connect_timeout, 5, p);
    let response_timeout = timeout("response_timeout", &r.response_timeout, 60, p);
    let login = (wants_login && access != Access::Public).then(|| LoginRequirement {
        roles: r.roles.clone(),
        max_auth_age: r
            .max_auth_age
            .as_ref()
            .map(|_| parse_duration(&f("max_auth_age"), &r.max_auth_age, Duration::ZERO, p)),
    });
    let require = route_require(&f("require"), r.require.as_deref(), p);
    let methods = route_methods(&f("methods"), &r.methods, p);
    Some(Route {
        login,
        require,
        methods,
        title: r.title,
        index: i,
        path,
        node: r.node,
        host,
        upstream,
        backend,
        strip_prefix: r.strip_prefix,
        access,
        loopback: r.loopback,
        connect_timeout,
        response_timeout,
        identity_headers,
        allow_underscore_headers: flag(
            &f("allow_underscore_headers"),
            r.allow_underscore_headers,
            p,
        ),
        assertion: flag(&f("assertion"), r.assertion, p),
    })
}

/// `require`: "all" (the default) or "any".
fn route_require(field: &str, v: Option<&str>, p: &mut Vec<String>) -> Combine {
    match v {
        None | Some("all") => Combine::All,
        Some("any") => Combine::Any,
        Some(other) => {
            p.push(format!("{field}: {other:?} is not \"all\" or \"any\""));
            Combine::All
        }
    }
}

/// `methods`: HTTP method names, any case.
fn route_methods(field: &str, v: &[String], p: &mut Vec<String>) -> Vec<http::Method> {
    let mut methods = Vec::new();
    for m in v {
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => p.push(format!("{field}: {m:?} is not an HTTP method")),
        }
    }
    methods
}

/// A boolean read as any TOML value, so a wrong type names its field.
fn flag(field: &str, v: Option<toml::Value>, p: &mut Vec<String>) -> bool {
    match v {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(other) => {
            p.push(format!("{field}: {other} is not true or false"));
            false
        }
    }
}

/// What one section cannot see alone: portal nodes, login routes without
/// a provider or off the portal's nodes, routes inside the portal prefix.
fn check_login_routes(
    nodes: &[NodeSpec],
    routes: &[Route],
    providers: &[Provider],
    portal: Option<&Portal>,
    p: &mut Vec<String>,
) {
    if let Some(pt) = portal {
        for n in &pt.nodes {
            if !nodes.iter().any(|x| &x.hostname == n) {
                p.push(format!("portal.nodes: no [[node]] has hostname {n:?}"));
            }
        }
        if providers.is_empty() {
            p.push("provider: the portal needs at least one [[provider]]".into());
        }
    }
    for r in routes {
        if r.login.is_some() && providers.is_empty() {
            p.push(format!(
                "route[{}].roles: this route needs a login, but no [[provider]] is configured",
                r.index
            ));
        }
        if let (Some(pt), Some(_)) = (portal, &r.login)
            && !pt.nodes.is_empty()
        {
            match &r.node {
                Some(n) if !pt.nodes.contains(n) => p.push(format!(
                    "route[{}].node: this route needs a login, but node {n:?} does not serve the portal (portal.nodes)",
                    r.index
                )),
                None => p.push(format!(
                    "route[{}].node: this route needs a login; set node to one of portal.nodes {:?} (the other nodes have no portal)",
                    r.index, pt.nodes
                )),
                _ => {}
            }
        }
        if let Some(pt) = portal
            && path::under(&pt.prefix, &r.path)
        {
            p.push(format!(
                "route[{}].path: {:?} is inside the portal prefix {:?}",
                r.index, r.path, pt.prefix
            ));
        }
    }
}

fn loopback_addr(field: &str, v: &str, p: &mut Vec<String>) -> Option<SocketAddr> {
    match v.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(a) => {
            p.push(format!(
                "{field}: {a} is not a loopback address (127.0.0.1 or ::1)"
            ));
            None
        }
        Err(_) => {
            p.push(format!(
                "{field}: {v:?} is not an address like \"127.0.0.1:8080\""
            ));
            None
        }
    }
}

fn validate_public(pl: RawPublic, p: &mut Vec<String>) -> Option<PublicListener> {
    let listen = match pl.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(format!(
                "public.listen: {:?} is not an address like \"0.0.0.0:443\"",
                pl.listen
            ));
            None
        }
    };
    if pl.domains.is_empty() {
        p.push("public.domains: at least one domain is required".into());
    }
    for d in &pl.domains {
        let ok =
            !d.is_empty() && d.len() <= 253 && d.split('.').all(valid_hostname) && d.contains('.');
        if !ok {
            p.push(format!("public.domains: {d:?} is not a domain name"));
        }
    }
    let cert = match pl.cert {
        None => None,
        Some(RawCert::Named(s)) if s == "acme" => None,
        Some(RawCert::Named(s)) => {
            p.push(format!(
                "public.cert: {s:?} is not \"acme\" or {{ cert_file, key_file }}"
            ));
            return None;
        }
        Some(RawCert::Files {
            cert_file,
            key_file,
        }) => {
            check_pem_files("public.cert", &cert_file, &key_file, p);
            Some(PublicCert::Files {
                cert_file,
                key_file,
            })
        }
    };
    let cert = match cert {
        Some(c) => c,
        None => public_acme(
            pl.acme_directory,
            pl.acme_contact,
            pl.acme_cache_dir,
            pl.acme_ca_file,
            p,
        )?,
    };
    Some(PublicListener {
        listen: listen?,
        domains: pl
            .domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        cert,
    })
}

/// The public listener's ACME settings (`None`: no cache directory).
fn public_acme(
    directory: Option<String>,
    contact: Vec<String>,
    cache_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    p: &mut Vec<String>,
) -> Option<PublicCert> {
    let directory = directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
    check_url("public.acme_directory", &directory, p);
    for c in &contact {
        if !c.starts_with("mailto:") {
            p.push(format!(
                "public.acme_contact: {c:?} must look like \"mailto:you@example.com\""
            ));
        }
    }
    if let Some(f) = &ca_file
        && !f.is_file()
    {
        p.push(format!(
            "public.acme_ca_file: {} does not exist",
            f.display()
        ));
    }
    let Some(cache_dir) = cache_dir else {
        p.push(
            "public.acme_cache_dir: required with ACME (account and certificates are kept there)"
                .into(),
        );
        return None;
    };
    Some(PublicCert::Acme {
        directory,
        contact,
        cache_dir,
        ca_file,
    })
}

fn check_pem_files(field: &str, cert_file: &Path, key_file: &Path, p: &mut Vec<String>) {
    for (k, path) in [("cert_file", cert_file), ("key_file", key_file)] {
        if !path.is_file() {
            p.push(format!("{field}.{k}: {} does not exist", path.display()));
        }
    }
}

fn check_url(field: &str, u: &str, p: &mut Vec<String>) {
    match u.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
        _ => p.push(format!("{field}: {u:?} is not an http(s) URL")),
    }
}

#[cfg(test)]
mod tests;
