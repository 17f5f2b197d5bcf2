//! Real Pocket ID for the tests of issue #11: the binary built from the
//! checksummed upstream tarball by `scripts/pocket-id` (cached outside the
//! clone), run on 127.0.0.1 behind tailpass's `auth` node in the seed
//! topology, with its admin API reached through `STATIC_API_KEY`.
//!
//! The tests skip loudly when the tarball, Chromium or `certutil` is
//! missing or the build fails, unless `TAILPASS_REQUIRE_POCKET_ID` is set
//! (`.ci/run` sets it): then each of those is a failure.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};

use crate::client::H1;
use crate::config::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret,
};
use crate::{TestNet, upstream};

/// The admin API key Pocket ID is started with (`X-API-KEY`).
pub const API_KEY: &str = "tailpass-test-static-api-key-0123456789abcdef";
/// Session secret of the gateway.
pub const SESSION_SECRET: &str = "pocket-id-test-session-secret-0123456789-abcdef";
/// Client id of the provider that trusts `prompt=login` (`pocketid`).
pub const CLIENT_ID: &str = "tailpass";
/// Client id of the provider without that option (`strict`).
pub const STRICT_CLIENT_ID: &str = "tailpass-strict";
/// The Pocket ID group the rules grant roles for.
pub const GROUP: &str = "family";

fn required() -> bool {
    std::env::var_os("TAILPASS_REQUIRE_POCKET_ID").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Prints the loud skip note, or fails when the test is required.
fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "TAILPASS_REQUIRE_POCKET_ID is set but {test} cannot run: {why}"
    );
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED {test}: {why}\n\
         !! It needs ../shared/third_party/pocket-id-v*.tar.gz (or\n\
         !! TAILPASS_THIRD_PARTY), Chromium and certutil (libnss3-tools);\n\
         !! set TAILPASS_REQUIRE_POCKET_ID=1 to make this a failure.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// Builds (or finds in the cache) Pocket ID `version` with
/// `scripts/pocket-id`; `Err` says why not.
pub fn build(version: &str) -> Result<PathBuf, String> {
    let script = crate::repo_root().join("scripts/pocket-id");
    let t0 = Instant::now();
    let out = Command::new(&script)
        .arg(version)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if out.status.code() == Some(2) {
        return Err(format!("pocket-id-v{version}.tar.gz not found"));
    }
    if !out.status.success() {
        return Err(format!(
            "scripts/pocket-id {version} failed ({})",
            out.status
        ));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "Pocket ID {version}: {} ({:.1?})",
        path.display(),
        t0.elapsed()
    );
    Ok(path)
}

/// Everything a Pocket ID test needs: the binary of `version`, Chromium
/// and certutil. `None` (after a loud note) when something is missing and
/// the test is not required.
pub fn prerequisites(test: &str, version: &str) -> Option<PathBuf> {
    let chromium = crate::chrome::chromium_path();
    if !chromium.exists() {
        skip(test, &format!("{} not found", chromium.display()));
        return None;
    }
    if Command::new("certutil").arg("-H").output().is_err() {
        skip(test, "certutil not found (apt-get install libnss3-tools)");
        return None;
    }
    match build(version) {
        Ok(p) => Some(p),
        Err(e) => {
            skip(test, &e);
            None
        }
    }
}

/// A running Pocket ID on 127.0.0.1, its output collected.
pub struct PocketId {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: std::net::SocketAddr,
    /// Its data directory (SQLite database, keys, uploads).
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
    keep_log_in: Mutex<Option<PathBuf>>,
}

impl Drop for PocketId {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its log beside the screenshots, also when the test failed.
        if let Some(dir) = self.keep_log_in.lock().unwrap().as_ref() {
            let _ = std::fs::write(dir.join("pocket-id.log"), self.logs());
        }
    }
}

impl PocketId {
    /// Starts `bin` for `app_url` and waits until its API answers.
    pub async fn start(bin: &Path, app_url: &str) -> PocketId {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("encryption.key");
        // 32 random bytes, hex: what `openssl rand -hex 32` would give.
        let mut raw = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw)
            .unwrap();
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, key).unwrap();
        let port = crate::free_port();
        let mut child = Command::new(bin)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("APP_URL", app_url)
            .env("TRUST_PROXY", "true")
            .env("ENCRYPTION_KEY_FILE", &key_file)
            .env("ANALYTICS_DISABLED", "true")
            .env("VERSION_CHECK_DISABLED", "true")
            .env("STATIC_API_KEY", API_KEY)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DB_CONNECTION_STRING", dir.path().join("pocket-id.db"))
            .env("UPLOAD_PATH", dir.path().join("uploads"))
            .env("KEYS_PATH", dir.path().join("keys"))
            .env("LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs = Arc::new(Mutex::new(String::new()));
        let verbose = std::env::var_os("TAILPASS_TEST_POCKET_ID_LOGS").is_some();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let l = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if verbose {
                        eprintln!("pocket-id: {line}");
                    }
                    let mut l = l.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut p = PocketId {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            dir,
            logs,
            keep_log_in: Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = p
                .try_api("GET", "/api/application-configuration", None)
                .await
            {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("Pocket ID exited ({status}); its output:\n{}", p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "Pocket ID did not answer within 60 s; its output:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes its log to `dir/pocket-id.log` when it stops.
    pub fn keep_log_in(&self, dir: PathBuf) {
        *self.keep_log_in.lock().unwrap() = Some(dir);
    }

    /// Everything it printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One admin API call with the static API key; `None` if the
    /// connection fails.
    pub async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let mut h = H1::try_over(tcp).await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .ok()?;
        let resp = h.request(req).await;
        let v = serde_json::from_slice(resp.body())
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(resp.body()).into_owned()));
        Some((resp.status().as_u16(), v))
    }

    /// One admin API call that must succeed (2xx); its JSON answer.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self
            .try_api(method, path, body.clone())
            .await
            .unwrap_or_else(|| panic!("Pocket ID unreachable for {method} {path}"));
        assert!(
            (200..300).contains(&status),
            "Pocket ID {method} {path} {body:?}: {status} {v}"
        );
        v
    }

    /// Registers an OIDC client with a fixed id (PKCE on, confidential);
    /// returns its secret.
    pub async fn create_client(&self, id: &str, callback: &str, logout: &str) -> String {
        self.api(
            "POST",
            "/api/oidc/clients",
            Some(json!({
                "id": id,
                "name": format!("tailpass ({id})"),
                "callbackURLs": [callback],
                "logoutCallbackURLs": [logout],
                "isPublic": false,
                "pkceEnabled": true,
                "requiresReauthentication": false,
            })),
        )
        .await;
        let v = self
            .api("POST", &format!("/api/oidc/clients/{id}/secret"), None)
            .await;
        v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no secret in {v}"))
            .to_string()
    }

    /// How many token requests it logged so far (its request log lines,
    /// `… status=200 method=POST path=/api/oidc/token …`; with an error the
    /// fields go on a line of their own).
    pub fn token_requests(&self) -> usize {
        self.token_responses("")
    }

    /// How many token requests it answered with `status` (e.g. "400").
    pub fn token_responses(&self, status: &str) -> usize {
        let status = format!("status={status}");
        self.logs()
            .lines()
            .filter(|l| l.contains("path=/api/oidc/token ") && l.contains(&status))
            .count()
    }
}

/// Options of the Pocket ID stack.
#[derive(Clone)]
pub struct StackOptions {
    /// `[portal] refresh_interval`.
    pub refresh_interval: &'static str,
    /// `max_auth_age` of the `/admin` route.
    pub max_auth_age: &'static str,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            refresh_interval: "5s",
            max_auth_age: "5s",
        }
    }
}

/// The seed topology with real Pocket ID: the test tailnet; Pocket ID on
/// 127.0.0.1 behind tailpass's `auth` node; the gateway node `gw` with the
/// portal and two providers at that one Pocket ID (`pocketid` with
/// `trust_prompt_login`, `strict` without); routes `/app` (echo),
/// `/term` (websocket page), `/admin` (echo, `max_auth_age`), all for the
/// members of the group [`GROUP`].
pub struct PocketStack {
    /// The test tailnet.
    pub net: TestNet,
    /// Pocket ID.
    pub pid: PocketId,
    /// The gateway (nodes `gw` and `auth`).
    pub gw: Gateway,
    /// State directories and the config file.
    pub dir: tempfile::TempDir,
    /// The local CAs of `gw` and `auth` (PEM files).
    pub ca_files: Vec<PathBuf>,
    /// `gw.<tailnet>`.
    pub gw_host: String,
    /// `auth.<tailnet>`.
    pub auth_host: String,
    /// What `tailpass check` printed for the config.
    pub check: String,
}

/// The Pocket ID stack's config: nodes `gw` and `auth` (local CAs), the
/// portal on `gw`, providers `pocketid` (`trust_prompt_login`) and `strict`
/// at the one Pocket ID behind `auth`, the [`GROUP`] rule and the routes.
fn pocket_config(
    net: &TestNet,
    dir: &Path,
    pid: SocketAddr,
    echo: SocketAddr,
    page: SocketAddr,
    opts: &StackOptions,
) -> String {
    let issuer = format!("https://{}", net.fqdn("auth"));
    let auth_ca = dir.join("auth/local-ca/ca.pem");
    let echo_url = format!("http://{echo}");
    let family = |path: &str, upstream: &str, title: &str| {
        RouteSpec::new(path, upstream)
            .node("gw")
            .roles(&["family"])
            .title(title)
    };
    ConfigBuilder::new()
        .node(NodeSpec::on(net, "gw", dir.join("gw")).cert("local-ca"))
        .node(NodeSpec::on(net, "auth", dir.join("auth")).cert("local-ca"))
        .portal(
            PortalSpec::new(Secret::env("SESSION_SECRET"))
                .nodes(&["gw"])
                .title("tailpass + Pocket ID")
                .set("refresh_interval", opts.refresh_interval),
        )
        .provider(
            ProviderSpec::new("pocketid", &issuer, CLIENT_ID, Secret::env("CLIENT_SECRET"))
                .label("Pocket ID")
                .ca_file(&auth_ca)
                .set("trust_prompt_login", true),
        )
        .provider(
            ProviderSpec::new(
                "strict",
                &issuer,
                STRICT_CLIENT_ID,
                Secret::env("STRICT_CLIENT_SECRET"),
            )
            .label("Pocket ID (strict step-up)")
            .ca_file(&auth_ca),
        )
        .rule(RuleSpec::new(&["family"]).groups(&[GROUP]))
        .route(RouteSpec::new("/", format!("http://{pid}")).node("auth"))
        .route(family("/app", &echo_url, "Echo"))
        .route(family(
            "/term",
            &format!("http://{page}"),
            "Terminal (websocket)",
        ))
        .route(
            family("/admin", &echo_url, "Admin (recent sign-in)")
                .set("max_auth_age", opts.max_auth_age),
        )
        .build()
}

/// The redirect and post-logout redirect URIs `tailpass check` prints for
/// `provider`.
pub fn registration_uris(check: &str, provider: &str) -> (String, String) {
    let find = |what: &str| {
        check
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{provider}: {what} "))
                    .map(|u| u.trim().to_string())
            })
            .unwrap_or_else(|| panic!("`tailpass check` names no {what} for {provider}:\n{check}"))
    };
    (find("redirect URI"), find("post-logout redirect URI"))
}

impl PocketStack {
    /// Starts everything: tailnet, Pocket ID, the clients registered with
    /// the URIs `tailpass check` prints, the gateway.
    pub async fn start(bin: &Path, opts: StackOptions) -> PocketStack {
        let net = TestNet::start();
        let gw_host = net.fqdn("gw");
        let auth_host = net.fqdn("auth");
        let dir = tempfile::tempdir().unwrap();
        // The gateway trusts the auth node's local CA: create it up front.
        tailpass::tls::LocalCa::open_or_create(&dir.path().join("auth/local-ca")).unwrap();
        tailpass::tls::LocalCa::open_or_create(&dir.path().join("gw/local-ca")).unwrap();
        let auth_ca = dir.path().join("auth/local-ca/ca.pem");
        let gw_ca = dir.path().join("gw/local-ca/ca.pem");

        let pid = PocketId::start(bin, &format!("https://{auth_host}")).await;
        let echo = upstream::start_echo().await;
        let page = upstream::start_ws_page().await;
        let toml = pocket_config(&net, dir.path(), pid.addr, echo, page, &opts);
        let config_file = dir.path().join("tailpass.toml");
        std::fs::write(&config_file, &toml).unwrap();

        // Register exactly what `tailpass check` says to register. Without
        // joining, it names the tailnet `<your-tailnet>.ts.net`: fill in ours.
        let check = run_check(&config_file).replace("<your-tailnet>.ts.net", &net.magic_dns);
        let mut secrets = Vec::new();
        for (provider, id) in [("pocketid", CLIENT_ID), ("strict", STRICT_CLIENT_ID)] {
            let (callback, logout) = registration_uris(&check, provider);
            secrets.push(pid.create_client(id, &callback, &logout).await);
        }
        let env = move |k: &str| match k {
            "SESSION_SECRET" => Some(SESSION_SECRET.to_string()),
            "CLIENT_SECRET" => Some(secrets[0].clone()),
            "STRICT_CLIENT_SECRET" => Some(secrets[1].clone()),
            _ => None,
        };
        let config = Config::parse(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
        let gw = Gateway::start(config, Options::default()).await.unwrap();
        net.settle(&[&gw.nodes[0].node, &gw.nodes[1].node]).await;
        PocketStack {
            net,
            pid,
            gw,
            dir,
            ca_files: vec![gw_ca, auth_ca],
            gw_host,
            auth_host,
            check,
        }
    }

    /// Joins a client node and waits until it and the gateway's nodes see each other.
    pub async fn client(&self, name: &str) -> tailpass::tailnet::Node {
        let n = self.net.node(name).await;
        self.net
            .settle(&[&self.gw.nodes[0].node, &self.gw.nodes[1].node, &n])
            .await;
        n
    }

    /// An NSS database (`$HOME/.pki/nssdb` of a new temporary home) that
    /// trusts both nodes' local CAs, so Chromium treats the tailnet hosts
    /// as secure contexts (WebAuthn refuses certificate-error pages).
    pub fn nss_home(&self) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let db = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let db_arg = format!("sql:{}", db.display());
        let certutil = |args: &[&str]| {
            let out = Command::new("certutil")
                .args(args)
                .output()
                .expect("running certutil");
            assert!(
                out.status.success(),
                "certutil {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        certutil(&["-N", "-d", &db_arg, "--empty-password"]);
        for (i, ca) in self.ca_files.iter().enumerate() {
            let name = format!("tailpass-test-ca-{i}");
            certutil(&[
                "-A",
                "-d",
                &db_arg,
                "-t",
                "C,,",
                "-n",
                &name,
                "-i",
                &ca.display().to_string(),
            ]);
        }
        home
    }
}

/// `tailpass check --config <file>` (the shipped binary); its output.
fn run_check(config: &Path) -> String {
    let bin = crate::binary::path();
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(config)
        .env("SESSION_SECRET", SESSION_SECRET)
        .env("CLIENT_SECRET", "not-registered-yet")
        .env("STRICT_CLIENT_SECRET", "not-registered-yet")
        .output()
        .expect("running tailpass check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tailpass check failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
