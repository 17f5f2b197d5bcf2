//! A typed builder for tailpass config files, so tests, benches and the
//! demo never format `[[node]]`/`[[route]]` TOML by hand.
//!
//! Each section is a spec with setters for the fields tests use most and
//! [`set`](RouteSpec::set) for any other key; [`ConfigBuilder::build`]
//! writes the TOML text that tailpass parses (through the `toml` crate, so
//! quoting is always right). Tests that must feed broken TOML keep their
//! literal text instead.
//!
//! ```
//! use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec};
//! let toml = ConfigBuilder::new()
//!     .node(NodeSpec::new("gw").state_dir("/tmp/gw").cert("local-ca"))
//!     .route(RouteSpec::new("/app", "http://127.0.0.1:8080").roles(&["user"]))
//!     .build();
//! assert!(toml.contains("[[node]]") && toml.contains("[[route]]"));
//! ```

use std::path::Path;

use toml::{Table, Value};

use crate::TestNet;

/// A secret field: read from an environment variable (`{ env = "NAME" }`,
/// what tailpass configs use) or written inline.
#[derive(Clone, Debug)]
pub enum Secret {
    /// `{ env = "NAME" }`.
    Env(String),
    /// `{ file = "/path" }`.
    File(std::path::PathBuf),
    /// The value itself.
    Inline(String),
}

impl Secret {
    /// `{ env = "NAME" }`.
    pub fn env(name: &str) -> Secret {
        Secret::Env(name.to_string())
    }

    /// Writes `value` to `file` (mode 0600) and gives `{ file = "…" }`:
    /// how a child process gets a secret without touching this process's
    /// environment.
    pub fn file(file: impl AsRef<Path>, value: &str) -> Secret {
        use std::os::unix::fs::PermissionsExt;
        let f = file.as_ref();
        std::fs::write(f, value).expect("writing a secret file");
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))
            .expect("restricting a secret file");
        Secret::File(f.to_path_buf())
    }
}

impl From<Secret> for Value {
    fn from(s: Secret) -> Value {
        match s {
            Secret::Env(name) => {
                let mut t = Table::new();
                t.insert("env".into(), Value::String(name));
                Value::Table(t)
            }
            Secret::File(p) => {
                let mut t = Table::new();
                t.insert("file".into(), Value::String(p.display().to_string()));
                Value::Table(t)
            }
            Secret::Inline(v) => Value::String(v),
        }
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn path(p: impl AsRef<Path>) -> Value {
    Value::String(p.as_ref().display().to_string())
}

/// The setters every spec shares: any key, and list-of-strings keys.
macro_rules! table_spec {
    ($t:ident) => {
        table_spec!($t, 0);
    };
    ($t:ident, $f:tt) => {
        impl $t {
            /// Sets any key of the section (`max_auth_age`, `host` …).
            pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
                self.$f.insert(key.to_string(), value.into());
                self
            }

            /// Sets a key to a path.
            pub fn path(self, key: &str, p: impl AsRef<Path>) -> Self {
                self.set(key, path(p))
            }

            /// Sets a key to a list of strings.
            pub fn list(self, key: &str, items: &[&str]) -> Self {
                self.set(key, strings(items))
            }

            /// Sets a key to an inline table of strings
            /// (`identity_headers = { login = "X-Remote-User" }`).
            pub fn table(self, key: &str, pairs: &[(&str, &str)]) -> Self {
                let t: Table = pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                self.set(key, Value::Table(t))
            }
        }
    };
}

/// A `[[node]]`.
#[derive(Clone, Debug)]
pub struct NodeSpec(Table);
table_spec!(NodeSpec);

impl NodeSpec {
    /// A node named `hostname`.
    pub fn new(hostname: &str) -> NodeSpec {
        NodeSpec(Table::new()).set("hostname", hostname)
    }

    /// An ephemeral node of the test tailnet `net`, its state in `state_dir`.
    pub fn on(net: &TestNet, hostname: &str, state_dir: impl AsRef<Path>) -> NodeSpec {
        NodeSpec::new(hostname)
            .state_dir(state_dir)
            .control_url(&net.control_url)
            .ephemeral(true)
    }

    /// `state_dir`.
    pub fn state_dir(self, dir: impl AsRef<Path>) -> Self {
        self.path("state_dir", dir)
    }

    /// `control_url`.
    pub fn control_url(self, url: &str) -> Self {
        self.set("control_url", url)
    }

    /// `ephemeral`.
    pub fn ephemeral(self, yes: bool) -> Self {
        self.set("ephemeral", yes)
    }

    /// `cert` (`"local-ca"`, `"tailscale"` …).
    pub fn cert(self, cert: &str) -> Self {
        self.set("cert", cert)
    }
}

/// The `[portal]` section.
#[derive(Clone, Debug)]
pub struct PortalSpec(Table);
table_spec!(PortalSpec);

impl PortalSpec {
    /// A portal signing sessions with `session_secret`.
    pub fn new(session_secret: Secret) -> PortalSpec {
        PortalSpec(Table::new()).set("session_secret", session_secret)
    }

    /// `nodes`: where the portal is served.
    pub fn nodes(self, nodes: &[&str]) -> Self {
        self.list("nodes", nodes)
    }

    /// `title`.
    pub fn title(self, title: &str) -> Self {
        self.set("title", title)
    }
}

/// A `[[provider]]` (an OpenID Connect provider).
#[derive(Clone, Debug)]
pub struct ProviderSpec(Table);
table_spec!(ProviderSpec);

impl ProviderSpec {
    /// Provider `name` at `issuer`, registered as `client_id`.
    pub fn new(name: &str, issuer: &str, client_id: &str, client_secret: Secret) -> ProviderSpec {
        ProviderSpec(Table::new())
            .set("name", name)
            .set("issuer", issuer)
            .set("client_id", client_id)
            .set("client_secret", client_secret)
    }

    /// `label` (the sign-in button's text).
    pub fn label(self, label: &str) -> Self {
        self.set("label", label)
    }

    /// `ca_file`: the CA the provider's certificate chains to.
    pub fn ca_file(self, file: impl AsRef<Path>) -> Self {
        self.path("ca_file", file)
    }
}

/// A `[[rule]]`: grants `roles` when its conditions hold.
#[derive(Clone, Debug)]
pub struct RuleSpec(Table);
table_spec!(RuleSpec);

impl RuleSpec {
    /// A rule granting `roles`.
    pub fn new(roles: &[&str]) -> RuleSpec {
        RuleSpec(Table::new()).list("roles", roles)
    }

    /// `groups` (from the provider's claims).
    pub fn groups(self, groups: &[&str]) -> Self {
        self.list("groups", groups)
    }

    /// `domains` (of the verified email).
    pub fn domains(self, domains: &[&str]) -> Self {
        self.list("domains", domains)
    }
}

/// A `[[route]]`: requests under `path` go to `upstream`.
#[derive(Clone, Debug)]
pub struct RouteSpec(Table);
table_spec!(RouteSpec);

impl RouteSpec {
    /// Route `path` to `upstream` (`http://127.0.0.1:PORT`).
    pub fn new(path: &str, upstream: impl std::fmt::Display) -> RouteSpec {
        RouteSpec(Table::new())
            .set("path", path)
            .set("upstream", upstream.to_string())
    }

    /// Route `path` to static files below `root` (an absolute directory).
    pub fn files(path: &str, root: impl AsRef<Path>) -> RouteSpec {
        RouteSpec(Table::new()).set("path", path).path("root", root)
    }

    /// `node`: the node the route is served on.
    pub fn node(self, node: &str) -> Self {
        self.set("node", node)
    }

    /// `roles`: any of these is needed.
    pub fn roles(self, roles: &[&str]) -> Self {
        self.list("roles", roles)
    }

    /// `access` (`"tailnet"`, `"public"`, `"login"` …).
    pub fn access(self, access: &str) -> Self {
        self.set("access", access)
    }

    /// `title` (on the portal's index).
    pub fn title(self, title: &str) -> Self {
        self.set("title", title)
    }

    /// `upstream_via`: `"tailnet"` (dial through the route's node) or
    /// `"host"`.
    pub fn upstream_via(self, via: &str) -> Self {
        self.set("upstream_via", via)
    }

    /// `upstream_node`: the tailnet upstream must be this node (WhoIs).
    pub fn upstream_node(self, node: &str) -> Self {
        self.set("upstream_node", node)
    }

    /// `upstream_tags`: the tailnet upstream must carry one of these tags.
    pub fn upstream_tags(self, tags: &[&str]) -> Self {
        self.list("upstream_tags", tags)
    }
}

/// Any other section, `[name]`.
#[derive(Clone, Debug)]
pub struct Section(String, Table);
table_spec!(Section, 1);

impl Section {
    /// An empty `[name]`.
    pub fn new(name: &str) -> Section {
        Section(name.to_string(), Table::new())
    }
}

/// A whole config file.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    top: Table,
    nodes: Vec<NodeSpec>,
    portal: Option<PortalSpec>,
    providers: Vec<ProviderSpec>,
    rules: Vec<RuleSpec>,
    routes: Vec<RouteSpec>,
}

impl ConfigBuilder {
    /// An empty config.
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Adds a `[[node]]`.
    pub fn node(mut self, node: NodeSpec) -> Self {
        self.nodes.push(node);
        self
    }

    /// Sets `[portal]`.
    pub fn portal(mut self, portal: PortalSpec) -> Self {
        self.portal = Some(portal);
        self
    }

    /// Adds a `[[provider]]`.
    pub fn provider(mut self, provider: ProviderSpec) -> Self {
        self.providers.push(provider);
        self
    }

    /// Adds a `[[rule]]`.
    pub fn rule(mut self, rule: RuleSpec) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds a `[[route]]`.
    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }

    /// Sets a section (`[public]`, `[tailnet]`, `[limits]` …), merged
    /// into any keys already set there.
    pub fn section(mut self, section: Section) -> Self {
        let slot = self
            .top
            .entry(section.0)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = slot {
            t.extend(section.1);
        }
        self
    }

    /// `[admin] listen = "<addr>"`.
    pub fn admin(self, listen: &str) -> Self {
        self.section(Section::new("admin").set("listen", listen))
    }

    /// `[loopback] listen = "<addr>"`.
    pub fn loopback(self, listen: &str) -> Self {
        self.section(Section::new("loopback").set("listen", listen))
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut doc = self.top.clone();
        let array = |specs: Vec<Table>| Value::Array(specs.into_iter().map(Value::Table).collect());
        let mut put = |key: &str, specs: Vec<Table>| {
            if !specs.is_empty() {
                doc.insert(key.to_string(), array(specs));
            }
        };
        put("node", self.nodes.iter().map(|s| s.0.clone()).collect());
        put(
            "provider",
            self.providers.iter().map(|s| s.0.clone()).collect(),
        );
        put("rule", self.rules.iter().map(|s| s.0.clone()).collect());
        put("route", self.routes.iter().map(|s| s.0.clone()).collect());
        if let Some(p) = &self.portal {
            doc.insert("portal".into(), Value::Table(p.0.clone()));
        }
        toml::to_string(&doc).expect("a TOML table always serializes")
    }

    /// [`build`](Self::build), written to `file`.
    pub fn write(&self, file: impl AsRef<Path>) {
        std::fs::write(file.as_ref(), self.build())
            .unwrap_or_else(|e| panic!("writing {}: {e}", file.as_ref().display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_tailpass_parses() {
        let toml = ConfigBuilder::new()
            .node(NodeSpec::new("gw").state_dir("/tmp/gw").ephemeral(true))
            .portal(PortalSpec::new(Secret::env("S")).nodes(&["gw"]))
            .provider(ProviderSpec::new("p", "https://idp", "c", Secret::env("C")))
            .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
            .route(
                RouteSpec::new("/a", "http://127.0.0.1:9")
                    .node("gw")
                    .roles(&["user"]),
            )
            .route(
                RouteSpec::new("/b", "http://127.0.0.1:9")
                    .node("gw")
                    .title("say \"hi\"")
                    .set("max_auth_age", "3s"),
            )
            .admin("127.0.0.1:0")
            .build();
        let doc: Table = toml.parse().unwrap();
        assert_eq!(doc["node"][0]["hostname"].as_str(), Some("gw"));
        assert_eq!(doc["portal"]["session_secret"]["env"].as_str(), Some("S"));
        assert_eq!(doc["route"][1]["title"].as_str(), Some("say \"hi\""));
        assert_eq!(doc["route"][1]["max_auth_age"].as_str(), Some("3s"));
        assert_eq!(doc["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
        let env = |k: &str| Some(format!("{k}-0123456789-0123456789-0123456789"));
        tailpass::config::Config::parse(&toml, &env).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    }
}
