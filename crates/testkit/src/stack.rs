//! The seed topology, started whole for tests and the local demo: the test
//! tailnet; the real OIDC provider (`oidc-provider`, standing in for Pocket
//! ID) on 127.0.0.1 behind tailpass's own `auth` node; the gateway node
//! `gw` with the portal and protected routes over an echo upstream and the
//! websocket demo page. One tailpass process, no sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tailpass::config::Config;
use tailpass::server::{Gateway, Options};

use crate::config::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret,
};
use crate::idp::Idp;
use crate::{TestNet, upstream};

/// Session secret of the stack (tests forge cookies with it).
pub const SECRET: &str = "test-session-secret-0123456789-abcdefghijklmnop";
/// The OIDC client secret registered at the provider.
pub const CLIENT_SECRET: &str = "idp-client-secret-value";

/// Options.
#[derive(Default, Clone)]
pub struct SeedOptions {
    /// Sign in as this account without a form (`None`: the IdP shows its form).
    pub auto_login: Option<String>,
    /// `[portal] refresh_interval` (`"1s"`), else tailpass's default.
    pub refresh_interval: Option<String>,
    /// `[admin] listen` (`"127.0.0.1:0"`): serve `/healthz` and `/metrics`.
    pub admin: Option<String>,
    /// Raw TOML appended to the built config (`{echo}` stands for the echo
    /// upstream's address); for the portal bench's extra route, whose text
    /// is kept as it was.
    pub extra: String,
}

/// A running seed stack.
pub struct Seed {
    /// The test tailnet.
    pub net: TestNet,
    /// The provider.
    pub idp: Idp,
    /// The gateway (nodes `gw` and `auth`).
    pub gw: Gateway,
    /// State directories.
    pub dir: tempfile::TempDir,
    /// PEM of both nodes' local CAs (clients trust it).
    pub ca: String,
    /// That PEM as a file.
    pub ca_file: PathBuf,
    /// `gw.<tailnet>`.
    pub gw_host: String,
    /// `auth.<tailnet>`.
    pub auth_host: String,
    /// The config the gateway runs.
    pub toml: String,
}

/// The environment the stack's config reads secrets from.
pub fn env(k: &str) -> Option<String> {
    match k {
        "SESSION_SECRET" => Some(SECRET.to_string()),
        "CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        _ => None,
    }
}

impl Seed {
    /// Starts everything and waits until the nodes see each other.
    pub async fn start(opts: SeedOptions) -> Seed {
        let net = TestNet::start();
        let gw_host = net.fqdn("gw");
        let auth_host = net.fqdn("auth");
        let mut idp_cfg = serde_json::json!({
            "issuer": format!("https://{auth_host}"),
            "proxy": true,
            "clients": [{
                "client_id": "tailpass",
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("https://{gw_host}/auth/oauth2/pocketid/authorization-code-callback")],
                "post_logout_redirect_uris": [format!("https://{gw_host}/auth/logged-out")],
                "grant_types": ["authorization_code", "refresh_token"],
            }],
            "accounts": {
                "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice", "groups": ["admins", "users"]},
                "bob": {"email": "bob@example.com", "email_verified": true, "name": "Bob", "groups": ["users"]},
            },
        });
        if let Some(a) = &opts.auto_login {
            idp_cfg["auto_login"] = a.as_str().into();
        }
        let idp = Idp::start(idp_cfg);
        let echo = upstream::start_echo().await;
        let page = upstream::start_ws_page().await;
        let dir = tempfile::tempdir().unwrap();
        // The gateway must trust the auth node's local CA; create it up front.
        tailpass::tls::LocalCa::open_or_create(&dir.path().join("auth/local-ca")).unwrap();
        let auth_ca_file = dir.path().join("auth/local-ca/ca.pem");
        let toml = seed_config(&net, dir.path(), &idp, echo, page, &opts);
        let config = Config::parse(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
        let gw = Gateway::start(config, Options::default()).await.unwrap();
        net.settle(&[&gw.nodes[0].node, &gw.nodes[1].node]).await;
        let ca = format!(
            "{}{}",
            std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap(),
            std::fs::read_to_string(&auth_ca_file).unwrap()
        );
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        Seed {
            net,
            idp,
            gw,
            dir,
            ca,
            ca_file,
            gw_host,
            auth_host,
            toml,
        }
    }

    /// `https://gw.<tailnet><p>`.
    pub fn url(&self, p: &str) -> String {
        format!("https://{}{p}", self.gw_host)
    }

    /// Joins a client node and waits until it and the gateway's nodes see each other.
    pub async fn client(&self, name: &str) -> tailpass::tailnet::Node {
        let n = self.net.node(name).await;
        self.net
            .settle(&[&self.gw.nodes[0].node, &self.gw.nodes[1].node, &n])
            .await;
        n
    }
}

/// The seed topology's config: nodes `gw` and `auth` (local CAs), the
/// portal on `gw`, the provider behind `auth`, the role rules, and the
/// routes (the provider itself, echo, the websocket page, an admin route
/// that wants a recent sign-in).
fn seed_config(
    net: &TestNet,
    dir: &Path,
    idp: &Idp,
    echo: SocketAddr,
    page: SocketAddr,
    opts: &SeedOptions,
) -> String {
    let mut portal = PortalSpec::new(Secret::env("SESSION_SECRET"))
        .nodes(&["gw"])
        .title("tailpass demo");
    if let Some(i) = &opts.refresh_interval {
        portal = portal.set("refresh_interval", i.as_str());
    }
    let echo_url = format!("http://{echo}");
    let mut config = ConfigBuilder::new()
        .node(NodeSpec::on(net, "gw", dir.join("gw")).cert("local-ca"))
        .node(NodeSpec::on(net, "auth", dir.join("auth")).cert("local-ca"))
        .portal(portal)
        .provider(
            ProviderSpec::new(
                "pocketid",
                &format!("https://{}", net.fqdn("auth")),
                "tailpass",
                Secret::env("CLIENT_SECRET"),
            )
            .label("Pocket ID")
            .ca_file(dir.join("auth/local-ca/ca.pem")),
        )
        .rule(RuleSpec::new(&["admin"]).groups(&["admins"]))
        .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
        .route(RouteSpec::new("/", format!("http://{}", idp.addr)).node("auth"))
        .route(
            RouteSpec::new("/app", &echo_url)
                .node("gw")
                .roles(&["user", "admin"])
                .title("Echo"),
        )
        .route(
            RouteSpec::new("/term", format!("http://{page}"))
                .node("gw")
                .roles(&["user", "admin"])
                .title("Terminal (websocket)"),
        )
        .route(
            RouteSpec::new("/admin", &echo_url)
                .node("gw")
                .roles(&["admin"])
                .set("max_auth_age", "3s")
                .title("Admin (recent sign-in)"),
        );
    if let Some(listen) = &opts.admin {
        config = config.admin(listen);
    }
    let mut toml = config.build();
    toml.push('\n');
    toml.push_str(&opts.extra.replace("{echo}", &echo.to_string()));
    toml
}
