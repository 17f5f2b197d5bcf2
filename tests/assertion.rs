//! The signed identity assertion end to end, checked by an independent
//! verifier: the shipped binary (`tailpass run`) on the test tailnet sends
//! ES256 assertions to a real upstream on 127.0.0.1 (the echo server, which
//! answers with the headers it received); Node's `jose` (pinned in
//! tests/idp/package.json, script tests/idp/verify-assertion.mjs) fetches
//! the JWKS from the admin listener and verifies them.
//!
//! Shown: the genuine assertion verifies and carries the caller's claims
//! (a tailnet user's, a tagged node's);
//! one changed claim byte (signature kept) is refused; an assertion for
//! route A is refused for route B's audience; an expired one is refused
//! (after really waiting past `exp`); a client-sent copy of the header
//! never reaches the upstream, on routes with and without assertions;
//! `tailpass assertion rotate` + SIGHUP: the new key signs, the old key
//! stays published and its assertions still verify; the JWKS file follows.
//! And, signed in through the portal (the forging provider), the
//! assertion carries the provider's subject, email, groups and the roles.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tailnet::Node;
use tailpass_testkit::binary::{Tailpass, admin_get};
use tailpass_testkit::browser::Browser;
use tailpass_testkit::client::{H1, echoed, echoed_header};
use tailpass_testkit::forge::Forge;
use tailpass_testkit::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret, Section,
    TestNet, free_port, upstream,
};

const HEADER: &str = "tailpass-jwt-assertion";

/// Runs the jose verifier over `cases` (token, issuer, audience, optional
/// current_date); one result per case.
fn verify(jwks_url: &str, cases: Vec<Value>) -> Vec<Value> {
    let dir = tailpass_testkit::repo_root().join("tests/idp");
    assert!(
        dir.join("node_modules/jose").is_dir(),
        "run `npm ci --prefix tests/idp` first"
    );
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let mut child = Command::new(node)
        .current_dir(&dir)
        .arg("verify-assertion.mjs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let input = json!({ "jwks_url": jwks_url, "cases": cases }).to_string();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn case(token: &str, iss: &str, aud: &str) -> Value {
    json!({ "token": token, "issuer": iss, "audience": aud })
}

/// The claims part of a token, decoded (not verified).
fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

/// The token with one byte of its `sub` claim changed, signature kept.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let json = String::from_utf8(B64.decode(parts[1]).unwrap()).unwrap();
    let at = json.find("\"sub\":\"").unwrap() + 7;
    let mut bytes = json.into_bytes();
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    format!("{}.{}.{}", parts[0], B64.encode(bytes), parts[2])
}

fn config(net: &TestNet, dir: &Path, admin: u16, echo: &str) -> String {
    ConfigBuilder::new()
        .node(NodeSpec::on(net, "gw", dir.join("gw")).cert("local-ca"))
        .admin(&format!("127.0.0.1:{admin}"))
        .section(
            Section::new("assertion")
                .path("key_file", dir.join("keys/assertion-keys.json"))
                .path("jwks_file", dir.join("www/jwks.json"))
                .set("lifetime", "10s"),
        )
        .route(RouteSpec::new("/a", echo).set("assertion", true))
        .route(RouteSpec::new("/b", echo).set("assertion", true))
        // Underscore names allowed: the forged `tailpass_jwt_assertion` is
        // stopped by the protected-name rule alone.
        .route(RouteSpec::new("/plain", echo).set("allow_underscore_headers", true))
        .build()
}

/// The assertion the upstream received for `GET path` from `node`, with
/// forged copies of the header sent along (they must never arrive).
async fn received(node: &Node, host: &str, ca: &str, path: &str) -> Option<Vec<String>> {
    let forged = [
        ("Tailpass-Jwt-Assertion", "forged.by.client"),
        ("tailpass_jwt_assertion", "forged.by.client"),
    ];
    let mut h = H1::connect(node, host, ca).await;
    let j = echoed(&h.get(host, path, &forged).await);
    let got = echoed_header(&j, HEADER);
    if let Some(v) = &got {
        assert!(v.iter().all(|t| !t.contains("forged")), "{v:?}");
    }
    assert!(echoed_header(&j, "tailpass_jwt_assertion").is_none(), "{j}");
    got
}

async fn one_token(node: &Node, host: &str, ca: &str, path: &str) -> String {
    let got = received(node, host, ca, path).await.expect("an assertion");
    assert_eq!(got.len(), 1, "exactly one assertion, tailpass's: {got:?}");
    got.into_iter().next().unwrap()
}

fn kids(jwks: &str) -> Vec<String> {
    let j: Value = serde_json::from_str(jwks).unwrap();
    j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// `tailpass assertion rotate --config cfg`; returns its output.
fn rotate(cfg: &PathBuf) -> String {
    let out = Command::new(tailpass_testkit::binary::path())
        .args(["assertion", "rotate", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The binary with routes `/a`, `/b` (assertions) and `/plain` (none),
/// clients alice (a user) and ci (tagged `tag:ci`).
struct Run {
    net: TestNet,
    tp: Tailpass,
    alice: Node,
    ci: Node,
    admin: std::net::SocketAddr,
    host: String,
    ca: String,
    iss: String,
    jwks_url: String,
    cfg: PathBuf,
    dir: tempfile::TempDir,
}

impl Run {
    async fn start() -> Run {
        let net = TestNet::start();
        let mut ci_cfg = net.node_config("ci");
        ci_cfg.tags = vec!["tag:ci".into()];
        let (alice, ci) = tokio::join!(net.node("alice"), net.join(ci_cfg));
        let echo = format!("http://{}", upstream::start_echo().await);
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let cfg = dir.path().join("tailpass.toml");
        std::fs::write(&cfg, config(&net, dir.path(), admin_port, &echo)).unwrap();
        let tp = Tailpass::start(&cfg);
        tp.wait_healthy(admin).await;
        let t = Instant::now();
        for n in [&alice, &ci] {
            while n.status().await.unwrap().peer("gw").is_none() {
                assert!(t.elapsed() < Duration::from_secs(60), "gw never joined");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let host = net.fqdn("gw");
        let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
        Run {
            iss: format!("https://{host}"),
            jwks_url: format!("http://{admin}/.well-known/jwks.json"),
            net,
            tp,
            alice,
            ci,
            admin,
            host,
            ca,
            cfg,
            dir,
        }
    }

    fn aud(&self, route: &str) -> String {
        format!("{}{route}", self.iss)
    }

    async fn token(&self, node: &Node, path: &str) -> String {
        one_token(node, &self.host, &self.ca, path).await
    }

    /// The JWKS served on the admin listener (checked equal to the file).
    async fn jwks(&self) -> String {
        let (st, served) = admin_get(self.admin, "/.well-known/jwks.json")
            .await
            .unwrap();
        assert_eq!(st, 200);
        let file = self.dir.path().join("www/jwks.json");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), served);
        served
    }
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_verify_independently_and_refuse_tampering_replay_expiry() {
    let _permit = tailpass_testkit::heavy().await;
    let run = Run::start().await;
    // The JWKS: on the admin listener, the same in the file (0644); the
    // private keys 0600.
    let first = kids(&run.jwks().await);
    assert_eq!(first.len(), 1);
    assert_eq!(mode(&run.dir.path().join("www/jwks.json")), 0o644);
    assert_eq!(
        mode(&run.dir.path().join("keys/assertion-keys.json")),
        0o600
    );
    // No assertion where the route does not ask for one; forged copies
    // never pass either way.
    assert_eq!(
        received(&run.alice, &run.host, &run.ca, "/plain/x").await,
        None
    );
    genuine_tampered_and_replayed(&run, &first[0]).await;
    tagged(&run).await;
    let after = rotation(&run, &first[0]).await;
    expiry(&run, &after).await;
}

/// Alice's assertions for `/a` and `/b`: genuine ones verify with her
/// claims; a changed byte, another route's audience, another issuer are
/// refused.
async fn genuine_tampered_and_replayed(run: &Run, kid: &str) {
    let alice_login = run
        .alice
        .status()
        .await
        .unwrap()
        .self_node
        .unwrap()
        .user_login;
    let (aud_a, aud_b, iss) = (run.aud("/a"), run.aud("/b"), run.iss.as_str());
    let ta = run.token(&run.alice, "/a/x").await;
    let tb = run.token(&run.alice, "/b/").await;
    let r = verify(
        &run.jwks_url,
        vec![
            case(&ta, iss, &aud_a),
            case(&tb, iss, &aud_b),
            case(&tampered(&ta), iss, &aud_a),
            case(&ta, iss, &aud_b),
            case(&tb, iss, &aud_a),
            case(&ta, "https://someone-else.example", &aud_a),
        ],
    );
    // Genuine: verifies, with the caller's claims.
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    let (h, c) = (&r[0]["header"], &r[0]["payload"]);
    assert_eq!(
        (h["alg"].as_str(), h["kid"].as_str()),
        (Some("ES256"), Some(kid))
    );
    assert_eq!(c["iss"], iss);
    assert_eq!(c["aud"], aud_a.as_str());
    assert_eq!(c["sub"], alice_login.as_str());
    assert_eq!(c["tailnet_user"], alice_login.as_str());
    assert_eq!(c["tailnet_node"], run.net.fqdn("alice").as_str());
    assert_eq!(c["roles"], json!([]), "no login on this route: no roles");
    assert!(
        c.get("email").is_none(),
        "email comes from a sign-in only: {c}"
    );
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 10);
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(r[1]["ok"], true, "{}", r[1]);
    assert_ne!(
        r[1]["payload"]["jti"], c["jti"],
        "every assertion its own id"
    );
    // Tampered: the signature no longer matches.
    assert_eq!(r[2]["ok"], false);
    assert_eq!(
        r[2]["code"], "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
        "{}",
        r[2]
    );
    // Route A's assertion at route B, and B's at A: wrong audience.
    for i in [3, 4] {
        assert_eq!(r[i]["code"], "ERR_JWT_CLAIM_VALIDATION_FAILED", "{}", r[i]);
        assert_eq!(r[i]["claim"], "aud", "{}", r[i]);
    }
    assert_eq!(r[5]["claim"], "iss", "{}", r[5]);
}

/// A tagged node acts for its tags: no tailnet user, its name as `sub`
/// (tags reach gw's netmap after control applies them).
async fn tagged(run: &Run) {
    let t = Instant::now();
    let tagged = loop {
        let tok = run.token(&run.ci, "/a/").await;
        if claims(&tok).get("tailnet_tags").is_some() {
            break tok;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", claims(&tok));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = verify(&run.jwks_url, vec![case(&tagged, &run.iss, &run.aud("/a"))]);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    let c = &r[0]["payload"];
    assert_eq!(c["tailnet_tags"], json!(["tag:ci"]));
    assert_eq!(c["sub"], run.net.fqdn("ci").as_str());
    assert_eq!(c["tailnet_node"], run.net.fqdn("ci").as_str());
    assert!(c.get("tailnet_user").is_none(), "{c}");
}

/// `tailpass assertion rotate` + SIGHUP: the new key signs, the old one
/// stays published and what it signed still verifies. Returns an
/// assertion signed after the rotation.
async fn rotation(run: &Run, old_kid: &str) -> String {
    let aud = run.aud("/a");
    let before = run.token(&run.alice, "/a/").await;
    let said = rotate(&run.cfg);
    assert!(said.contains("next: reload tailpass"), "{said}");
    run.tp.signal("HUP");
    run.tp
        .wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    let after = run.token(&run.alice, "/a/").await;
    let now_kids = kids(&run.jwks().await);
    assert_eq!(now_kids.len(), 2, "{now_kids:?}");
    assert_eq!(now_kids[1], old_kid, "the old key stays published");
    assert!(said.contains(&now_kids[0]), "{said}");
    // The old token is checked at its own issue time: this part is about
    // the key; the expiry check follows on the real clock.
    let mut old = case(&before, &run.iss, &aud);
    old["current_date"] = claims(&before)["iat"].clone();
    let r = verify(&run.jwks_url, vec![case(&after, &run.iss, &aud), old]);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    assert_eq!(r[0]["header"]["kid"].as_str().unwrap(), now_kids[0]);
    assert_eq!(r[1]["ok"], true, "{}", r[1]);
    assert_eq!(r[1]["header"]["kid"].as_str().unwrap(), old_kid);
    after
}

/// Expiry, on the real clock: once `token`'s `exp` has passed, jose
/// refuses it (no clock tolerance).
async fn expiry(run: &Run, token: &str) {
    let exp = claims(token)["exp"].as_i64().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = verify(&run.jwks_url, vec![case(token, &run.iss, &run.aud("/a"))]);
    assert_eq!(r[0]["ok"], false);
    assert_eq!(r[0]["code"], "ERR_JWT_EXPIRED", "{}", r[0]);
    assert_eq!(r[0]["claim"], "exp", "{}", r[0]);
}

/// Signed in at the portal (the forging provider; in-process gateway):
/// the assertion carries the sign-in's subject, email, groups and roles
/// beside the tailnet identity, and the key file sits in the portal's
/// state directory by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_callers_assertion_carries_the_login_claims() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let alice = net.node("alice").await;
    let alice_login = alice.status().await.unwrap().self_node.unwrap().user_login;
    let forge = Forge::start("tailpass", "forge-secret").await;
    forge.set_claims(json!({
        "sub": "mallory", "email": "mallory@example.com", "groups": ["ops", "dev"],
    }));
    let echo = format!("http://{}", upstream::start_echo().await);
    let dir = tempfile::tempdir().unwrap();
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .admin("127.0.0.1:0")
        .portal(PortalSpec::new(Secret::env("S")))
        .provider(ProviderSpec::new(
            "forge",
            &forge.issuer,
            "tailpass",
            Secret::env("C"),
        ))
        .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
        .route(
            RouteSpec::new("/app", &echo)
                .roles(&["user"])
                .set("assertion", true),
        )
        .build();
    let env = |k: &str| match k {
        "S" => Some("s".repeat(40)),
        "C" => Some("forge-secret".into()),
        _ => None,
    };
    let config = Config::parse(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, Options::default()).await.unwrap();
    net.settle(&[&gw.nodes[0].node, &alice]).await;
    let host = gw.nodes[0].fqdn.clone();
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    assert!(
        dir.path().join("gw/portal/assertion-keys.json").is_file(),
        "the key file defaults to the portal's state_dir"
    );

    let mut b = Browser::new(&alice, &ca);
    let start = format!("https://{host}/auth/oauth2/forge/authorize?rd=%2Fapp%2F");
    let end = b.follow(&start).await;
    assert_eq!(
        end.url,
        format!("https://{host}/app/"),
        "signed in: {}",
        end.body
    );
    let j: Value = serde_json::from_str(&end.body).unwrap();
    let tokens = j["headers"][HEADER].as_array().expect("an assertion");
    assert_eq!(tokens.len(), 1);
    let iss = format!("https://{host}");
    let jwks_url = format!("http://{}/.well-known/jwks.json", gw.admin.unwrap());
    let r = verify(
        &jwks_url,
        vec![case(
            tokens[0].as_str().unwrap(),
            &iss,
            &format!("{iss}/app"),
        )],
    );
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    let c = &r[0]["payload"];
    assert_eq!(c["sub"], "mallory");
    assert_eq!(c["email"], "mallory@example.com");
    assert_eq!(c["groups"], json!(["ops", "dev"]));
    assert_eq!(c["roles"], json!(["user"]));
    assert_eq!(c["tailnet_user"], alice_login.as_str());
    assert_eq!(c["tailnet_node"], net.fqdn("alice").as_str());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    gw.shutdown().await;
}

fn tailpass(args: &[&str], cfg: &Path) -> (i32, String, String) {
    let out = Command::new(tailpass_testkit::binary::path())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tailpass assertion jwks|rotate` and `check` on their own (no tailnet):
/// the key file is created 0600, rotation puts a new key first and keeps
/// the old one, a damaged key file is refused and left alone, and a config
/// without assertions says so (exit 64).
#[test]
fn the_assertion_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tailpass.toml");
    let keys = dir.path().join("keys.json");
    let jwks_file = dir.path().join("jwks.json");
    let base = ConfigBuilder::new()
        .node(NodeSpec::new("gw").state_dir(dir.path().join("gw")))
        .admin("127.0.0.1:9477");
    base.clone()
        .route(RouteSpec::new("/a", "http://127.0.0.1:1"))
        .write(&cfg);
    let (code, _, err) = tailpass(&["assertion", "rotate"], &cfg);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no [assertion] section"), "{err}");
    assert!(!keys.exists());

    base.route(RouteSpec::new("/a", "http://127.0.0.1:1").set("assertion", true))
        .section(
            Section::new("assertion")
                .path("key_file", &keys)
                .path("jwks_file", &jwks_file),
        )
        .write(&cfg);
    let (code, out, err) = tailpass(&["check"], &cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed assertion]"), "{out}");
    assert!(
        out.contains("http://127.0.0.1:9477/.well-known/jwks.json"),
        "{out}"
    );
    let (code, out, err) = tailpass(&["assertion", "jwks"], &cfg);
    assert_eq!(code, 0, "{err}");
    let first = kids(&out);
    assert_eq!(first.len(), 1);
    let mode = std::fs::metadata(&keys).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let (code, said, err) = tailpass(&["assertion", "rotate"], &cfg);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = tailpass(&["assertion", "jwks"], &cfg);
    let now = kids(&out);
    assert_eq!(now.len(), 2);
    assert_eq!(now[1], first[0], "the previous key stays published");
    assert!(
        said.contains(&format!("new signing key {}", now[0])),
        "{said}"
    );
    assert_eq!(kids(&std::fs::read_to_string(&jwks_file).unwrap()), now);

    std::fs::write(&keys, "{ damaged").unwrap();
    let (code, _, err) = tailpass(&["assertion", "rotate"], &cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains("keys.json: not a tailpass assertion key file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), "{ damaged");
}
