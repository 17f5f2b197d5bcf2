//! The login portal end to end on the offline test tailnet: client nodes
//! walk the OIDC login through the gateway (HTTPS, local CA) to a provider
//! on 127.0.0.1 and back.
//!
//! The provider here is `tailpass_testkit::forge`, a deliberately *forging* OIDC
//! provider: it signs whatever it is told to (wrong issuer, wrong
//! audience, expired, unsigned, re-signed, wrong nonce …), which a correct
//! provider never does. It is used for the cases the real provider cannot
//! produce and for fast flow checks; `tests/portal_idp.rs` runs the same
//! flows against the real, certified `oidc-provider`.

use std::path::Path;
use std::time::Duration;

use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tailnet::Node;
use tailpass_testkit::browser::{Browser, link_href, query_param, urlenc};
use tailpass_testkit::client::{self, H1};
use tailpass_testkit::forge::{Fault, Forge};
use tailpass_testkit::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret, Section,
    TestNet, upstream,
};

const SECRET: &str = "test-session-secret-0123456789-abcdefghijklmnop";
const CLIENT_ID: &str = "tailpass";
const CLIENT_SECRET: &str = "forge-client-secret";

struct Stack {
    net: TestNet,
    gw: Gateway,
    host: String,
    ca: String,
    alice: Node,
    bob: Node,
    forge: Forge,
    toml: String,
    dir: tempfile::TempDir,
}

fn env(k: &str) -> Option<String> {
    match k {
        "SESSION_SECRET" => Some(SECRET.into()),
        "CLIENT_SECRET" => Some(CLIENT_SECRET.into()),
        _ => None,
    }
}

/// What a test adds to the stack's config.
#[derive(Default)]
struct Extra {
    /// More `[portal]` keys (`session_lifetime`, `refresh_interval` …).
    portal: Vec<(&'static str, &'static str)>,
    /// More providers at the forge (its issuer, this client), by name, each
    /// with `trust_prompt_login`.
    trusting: Vec<&'static str>,
}

/// The stack's config: node `gw` (local CA), the portal, the forge as
/// provider `forge` (and `extra.trusting`), two role rules, the routes and
/// the loopback listener.
fn stack_config(
    net: &TestNet,
    dir: &Path,
    forge: &Forge,
    echo: &str,
    ws: &str,
    extra: &Extra,
) -> String {
    let mut portal = PortalSpec::new(Secret::env("SESSION_SECRET"));
    for (k, v) in &extra.portal {
        portal = portal.set(k, *v);
    }
    let provider = |name: &str| {
        ProviderSpec::new(name, &forge.issuer, CLIENT_ID, Secret::env("CLIENT_SECRET"))
    };
    let mut config = ConfigBuilder::new()
        .node(
            NodeSpec::new("gw")
                .state_dir(dir.join("gw"))
                .control_url(&net.control_url)
                .cert("local-ca"),
        )
        .portal(portal);
    // The extra providers come first, as they did when the test wrote them
    // into `[portal]`'s extra lines.
    for name in &extra.trusting {
        config = config.provider(provider(name).set("trust_prompt_login", true));
    }
    config
        .provider(provider("forge").label("Forge"))
        .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
        .rule(RuleSpec::new(&["admin"]).groups(&["admins"]))
        .route(
            RouteSpec::new("/app", echo)
                .roles(&["user", "admin"])
                .title("The app"),
        )
        .route(
            RouteSpec::new("/admin", echo)
                .roles(&["admin"])
                .set("max_auth_age", "3s"),
        )
        .route(RouteSpec::new("/ws", ws).access("login"))
        .route(RouteSpec::new("/open", echo))
        .route(RouteSpec::new("/", echo).access("public"))
        .loopback("127.0.0.1:0")
        .build()
}

async fn stack(extra: Extra) -> Stack {
    let net = TestNet::start();
    let (alice, bob) = tokio::join!(net.node("alice"), net.node("bob"));
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let echo = format!("http://{}", upstream::start_echo().await);
    let ws = format!("http://{}", upstream::start_ws_echo().await);
    let dir = tempfile::tempdir().unwrap();
    let toml = stack_config(&net, dir.path(), &forge, &echo, &ws, &extra);
    let gw = start(&toml).await;
    net.settle(&[&gw.nodes[0].node, &alice, &bob]).await;
    let ca = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    Stack {
        host: gw.nodes[0].fqdn.clone(),
        net,
        gw,
        ca,
        alice,
        bob,
        forge,
        toml,
        dir,
    }
}

async fn start(toml: &str) -> Gateway {
    let config = Config::parse(toml, &env).unwrap_or_else(|e| panic!("{e}"));
    Gateway::start(config, Options::default()).await.unwrap()
}

impl Stack {
    fn url(&self, p: &str) -> String {
        format!("https://{}{p}", self.host)
    }
    fn browser(&self, node: &Node) -> Browser {
        Browser::new(node, &self.ca)
    }
    fn session_cookie(&self, b: &Browser) -> Option<String> {
        b.cookie(&self.host, "tailpass_session")
    }
    /// The status of GET /app/ from a fresh browser on `node` presenting
    /// `cookie` as its session: 200 when accepted, 302 (to sign in) when not.
    async fn app_status_with(&self, node: &Node, cookie: &str) -> u16 {
        let mut m = self.browser(node);
        m.set_cookie(&self.host, "tailpass_session", cookie);
        m.get(&self.url("/app/")).await.status
    }
}

/// Opens a websocket through the gateway from `node` with `cookie`.
async fn open_ws(s: &Stack, node: &Node, cookie: &str) -> client::Wss {
    client::session_ws(node, &s.host, &s.ca, "/ws/term", cookie).await
}

/// Waits until the websocket is closed by the other side.
async fn closed_within(ws: &mut client::Wss, limit: Duration) -> bool {
    client::closed_after(ws, limit).await.is_some()
}

fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = token.split('.');
    let h = serde_json::from_slice(&e.decode(it.next().unwrap()).unwrap()).unwrap();
    let c = serde_json::from_slice(&e.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, c)
}

fn resign(claims: &serde_json::Value, kid: &str, secret: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_the_url_passes_identity_and_logout_ends_everything() {
    let _permit = tailpass_testkit::heavy().await;
    let s = stack(Extra::default()).await;
    let alice_login = s
        .alice
        .status()
        .await
        .unwrap()
        .self_node
        .unwrap()
        .user_login;
    let mut b = s.browser(&s.alice);

    // A browser without a session goes to the login page with its URL kept.
    let first = b.get(&s.url("/app/page?x=1&y=%2F")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let login = first.location().unwrap();
    assert_eq!(
        login,
        s.url(&format!("/auth/login?rd={}", urlenc("/app/page?x=1&y=%2F")))
    );
    // A non-browser gets 401 instead.
    let mut api = s.browser(&s.alice);
    api.html = false;
    let p = api.get(&s.url("/app/page")).await;
    assert_eq!(p.status, 401);
    assert!(p.headers.contains_key("www-authenticate"));

    // The login page: providers, a QR code of the absolute login URL, and
    // every link and asset under the prefix.
    let page = b.get(&login).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"data-provider="forge""#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"id="qr""#) && page.body.contains("<svg"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        page.body
            .contains(&format!("https://{}/auth/login", s.host))
    );
    for attr in ["href=\"", "src=\"", "action=\""] {
        for (i, _) in page.body.match_indices(attr) {
            let v = &page.body[i + attr.len()..];
            assert!(
                v.starts_with("/auth/"),
                "link outside the prefix: {}",
                &v[..40.min(v.len())]
            );
        }
    }

    // Walk the provider round trip: back on the original URL, upstream
    // sees both identities and never the session cookie.
    let end = b
        .follow(&login.replace("/auth/login?", "/auth/oauth2/forge/authorize?"))
        .await;
    assert_eq!(
        end.url,
        s.url("/app/page?x=1&y=%2F"),
        "visited {:?}",
        b.visited
    );
    let j: serde_json::Value = serde_json::from_str(&end.body).unwrap();
    assert_eq!(j["path"], "/app/page?x=1&y=%2F");
    let hdr = |n: &str| j["headers"][n][0].as_str().map(str::to_string);
    assert_eq!(hdr("remote-email").as_deref(), Some("mallory@example.com"));
    assert_eq!(hdr("remote-user").as_deref(), Some("mallory"));
    assert_eq!(hdr("remote-roles").as_deref(), Some("user"));
    assert_eq!(hdr("tailscale-user-login"), Some(alice_login.clone()));
    assert!(
        hdr("cookie").is_none_or(|c| !c.contains("tailpass_session")),
        "{j}"
    );

    // What the provider saw: PKCE S256, state, nonce, scopes; the verifier at the token endpoint.
    let a = &s.forge.authorize_requests()[0];
    assert_eq!(a["code_challenge_method"], "S256");
    assert!(a["nonce"].as_str().is_some_and(|n| n.len() >= 32));
    assert!(a["state"].as_str().is_some_and(|n| n.len() >= 32));
    assert_eq!(a["scope"], "openid email profile groups offline_access");
    assert_eq!(
        a["redirect_uri"],
        s.url("/auth/oauth2/forge/authorization-code-callback")
    );
    let t = &s.forge.token_requests()[0];
    assert!(t["form"]["code_verifier"].as_str().is_some(), "{t}");
    assert_eq!(t["basic_auth"], true);

    // The session cookie: HttpOnly, Secure, SameSite=Lax, host-only.
    let cb = b
        .visited
        .iter()
        .find(|u| u.starts_with(&s.url("/auth/oauth2/forge/authorization-code-callback")))
        .unwrap()
        .clone();
    let cookie = s.session_cookie(&b).expect("session cookie set");
    let (_, set) = b
        .set_cookies
        .iter()
        .find(|(_, c)| c.starts_with("tailpass_session=") && c.contains(&cookie))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    assert!(
        !set.contains("Domain="),
        "host-only unless a cookie domain is set: {set}"
    );
    let p = b.get(&cb).await; // replayed callback: state is single-use
    assert_eq!(p.status, 400, "{cb} -> {:?} {}", p.location(), p.body);
    assert_eq!(s.session_cookie(&b).as_deref(), Some(cookie.as_str()));

    // Outside the tailnet the portal does not exist, even under a public "/".
    let lo = s.gw.loopback.unwrap();
    let r = H1::over(tokio::net::TcpStream::connect(lo).await.unwrap())
        .await
        .get("gw", "/auth/login", &[])
        .await;
    assert_eq!(r.status(), 404);
    let r = H1::over(tokio::net::TcpStream::connect(lo).await.unwrap())
        .await
        .get("gw", "/blog", &[])
        .await;
    assert_eq!(
        r.status(),
        200,
        "the public route itself answers on loopback"
    );

    // whoami shows both identities; the dashboard lists the services.
    api.set_cookie(&s.host, "tailpass_session", &cookie);
    let who = api.get(&s.url("/auth/whoami")).await;
    let w: serde_json::Value = serde_json::from_str(&who.body).unwrap();
    assert_eq!(w["tailnet"]["user"], alice_login);
    assert_eq!(w["session"]["email"], "mallory@example.com");
    assert_eq!(w["roles"], serde_json::json!(["user"]));
    let dash = b.get(&s.url("/auth/")).await;
    assert!(dash.body.contains(r#"class="service""#) && dash.body.contains("The app"));
    assert!(dash.body.contains(r#"id="logout""#));

    // The same cookie from another node is refused.
    assert_eq!(s.app_status_with(&s.bob, &cookie).await, 302);

    // Tampered, expired, unsigned and foreign-key cookies are refused.
    let (h, c) = jwt_parts(&cookie);
    let kid = h["kid"].as_str().unwrap();
    let mut expired = c.clone();
    expired["exp"] = (c["iat"].as_i64().unwrap() - 10).into();
    let mut longer = c.clone();
    longer["exp"] = (c["exp"].as_i64().unwrap() + 86_400).into();
    let sig = cookie.rsplit('.').next().unwrap();
    let tampered = format!("{}.{}.{sig}", cookie.split('.').next().unwrap(), {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(longer.to_string())
    });
    let unsigned = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#)),
            e.encode(c.to_string())
        )
    };
    for (name, bad) in [
        ("expired", resign(&expired, kid, SECRET)),
        ("tampered", tampered),
        ("unsigned", unsigned),
        (
            "other key",
            resign(&c, kid, "another-secret-that-is-long-enough-0123456789"),
        ),
        ("garbage", "not-a-jwt".to_string()),
    ] {
        assert_eq!(
            s.app_status_with(&s.alice, &bad).await,
            302,
            "{name} cookie accepted"
        );
    }
    // A correctly re-signed cookie with a longer life still works only
    // because its session record is live: shows the checks above are not
    // vacuous.
    let resigned = resign(&longer, kid, SECRET);
    assert_eq!(s.app_status_with(&s.alice, &resigned).await, 200);

    // Open-redirect attempts land on the portal.
    for rd in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "https://evil.example@gw/",
        "javascript:alert(1)",
        &format!("https://{}.evil.example/", s.host),
        &format!("http://{}/app/", s.host),
    ] {
        let mut m = s.browser(&s.alice);
        let end = m
            .follow(&s.url(&format!("/auth/oauth2/forge/authorize?rd={}", urlenc(rd))))
            .await;
        assert_eq!(end.url, s.url("/auth/"), "rd {rd:?} went to {}", end.url);
    }

    // Logout: websocket open under the session, then sign out.
    let mut ws = open_ws(&s, &s.alice, &cookie).await;
    let out = b
        .send(
            "POST",
            &s.url("/auth/logout"),
            Some(("application/x-www-form-urlencoded", String::new())),
            &[],
        )
        .await;
    // tailpass's own page says the session ended, whatever the provider
    // does next; the provider's end-session is a link on it.
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.body.contains(r#"id="signed-out""#), "{}", out.body);
    let to = link_href(&out.body, "provider-logout").expect("a link to the provider's sign-out");
    assert!(
        to.starts_with(&format!("{}/logout?", s.forge.issuer)),
        "{to}"
    );
    let hint = query_param(&to, "id_token_hint").expect("id_token_hint");
    assert_eq!(jwt_parts(&hint).1["sub"], "mallory");
    assert_eq!(
        query_param(&to, "post_logout_redirect_uri").as_deref(),
        Some(s.url("/auth/logged-out").as_str())
    );
    assert!(query_param(&to, "state").is_some());
    assert!(s.session_cookie(&b).is_none(), "cookie cleared");
    let done = b.follow(&to).await;
    assert!(done.body.contains(r#"id="logged-out""#), "{}", done.body);
    assert!(
        closed_within(&mut ws, Duration::from_secs(5)).await,
        "websocket outlived the logout"
    );
    // The old cookie is dead (revoked server-side, not just cleared).
    assert_eq!(s.app_status_with(&s.alice, &cookie).await, 302);

    // The next sign-in from that browser asks the provider for a new
    // authentication (a provider session that lives on cannot undo the
    // sign-out silently), and only that one.
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.status, 200);
    let prompts: Vec<Option<String>> = s
        .forge
        .authorize_requests()
        .iter()
        .rev()
        .take(1)
        .map(|a| a["prompt"].as_str().map(str::to_string))
        .collect();
    assert_eq!(prompts, [Some("login".to_string())], "after a sign-out");
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.status, 200);
    let last = s.forge.authorize_requests().pop().unwrap();
    assert!(last["prompt"].is_null(), "marker not cleared: {last}");

    // A session still alive survives a restart; the revoked one stays revoked.
    let mut b2 = s.browser(&s.alice);
    let end = b2
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.status, 200);
    let live = s.session_cookie(&b2).unwrap();
    let Stack {
        net,
        gw,
        host,
        ca,
        alice,
        toml,
        dir,
        forge,
        bob,
    } = s;
    gw.shutdown().await;
    let gw = start(&toml).await;
    net.settle(&[&gw.nodes[0].node, &alice]).await;
    let s = Stack {
        net,
        gw,
        host,
        ca,
        alice,
        bob,
        forge,
        toml,
        dir,
    };
    assert_eq!(
        s.app_status_with(&s.alice, &live).await,
        200,
        "live session lost in a restart"
    );
    assert_eq!(
        s.app_status_with(&s.alice, &cookie).await,
        302,
        "revocation lost in a restart"
    );
    s.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_bad_callbacks_roles_and_step_up() {
    let _permit = tailpass_testkit::heavy().await;
    let s = stack(Extra {
        portal: vec![("session_lifetime", "6s")],
        ..Extra::default()
    })
    .await;

    tailpass_testkit::logs::capture();
    // Control: a correct token signs in.
    let mut b = s.browser(&s.alice);
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(
        (end.status, end.url.as_str()),
        (200, s.url("/app/").as_str())
    );

    // Every forged ID token is refused, for its own reason; no session results.
    for (f, why) in [
        (Fault::WrongIssuer, "issuer"),
        (Fault::WrongAudience, "audience"),
        (Fault::Expired, "expired"),
        (Fault::AlgNone, "signature"),
        (Fault::Resigned, "signature"),
        (Fault::WrongNonce, "nonce"),
        (Fault::MissingNonce, "nonce"),
        (Fault::UserinfoSubMismatch, "userinfo"),
        (Fault::FutureIat, "future"),
        (Fault::WrongAtHash, "at_hash"),
    ] {
        s.forge.set_fault(f);
        let mark = tailpass_testkit::logs::mark();
        let mut b = s.browser(&s.alice);
        let end = b.follow(&s.url("/app/")).await;
        // The login page first, then the provider button.
        assert!(
            end.url.starts_with(&s.url("/auth/login")),
            "{f:?}: {}",
            end.url
        );
        let end = b
            .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
            .await;
        assert_eq!(end.status, 502, "{f:?} was accepted: {}", end.url);
        let logs = tailpass_testkit::logs::since(mark);
        let line = logs
            .lines()
            .find(|l| l.contains("sign-in rejected"))
            .unwrap_or_else(|| panic!("{f:?}: no rejection logged: {logs}"));
        assert!(
            line.to_ascii_lowercase().contains(why),
            "{f:?}: expected {why:?} in {line}"
        );
        assert!(s.session_cookie(&b).is_none(), "{f:?} produced a session");
        assert_eq!(b.get(&s.url("/app/")).await.status, 302);
    }
    s.forge.set_fault(Fault::None);

    // Callback state mismatch, missing browser cookie, other node.
    let mut b = s.browser(&s.alice);
    let start = b
        .get(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    let at_idp = b.get(&start.location().unwrap()).await;
    let cb = at_idp.location().unwrap();
    let state = query_param(&cb, "state").unwrap();
    let wrong = cb.replace(&state, "not-the-state");
    assert_eq!(b.get(&wrong).await.status, 400);
    // (the mismatch consumed nothing: the real state still works once)
    let mut other_browser = s.browser(&s.alice);
    assert_eq!(
        other_browser.get(&cb).await.status,
        400,
        "callback without the login cookie"
    );
    // that attempt consumed the state (single use), so the owner must start again
    assert_eq!(b.get(&cb).await.status, 400);
    let start = b
        .get(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    let cb = b.get(&start.location().unwrap()).await.location().unwrap();
    let mut bob = s.browser(&s.bob);
    for (k, v) in b.jar.get(&s.host).cloned().unwrap_or_default() {
        bob.set_cookie(&s.host, &k, &v);
    }
    assert_eq!(bob.get(&cb).await.status, 400, "callback from another node");

    // A login that maps to no role: a page says so; no session.
    s.forge
        .set_claims(serde_json::json!({"email": "mallory@elsewhere.test"}));
    let mut b = s.browser(&s.alice);
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.status, 403);
    assert!(end.body.contains(r#"id="no-role""#), "{}", end.body);
    assert!(s.session_cookie(&b).is_none());

    // A user without the role: 403 naming the requirement and the caller,
    // with a way to sign in as someone else (not a dead end).
    s.forge.set_claims(serde_json::json!({}));
    let mut b = s.browser(&s.alice);
    b.follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    let p = b.get(&s.url("/admin/")).await;
    assert_eq!(p.status, 403);
    assert!(
        p.body.contains("requires role admin; you have user"),
        "{}",
        p.body
    );
    assert!(p.body.contains("fresh=1"), "{}", p.body);

    // Step-up: admin signs in, the route needs a sign-in at most 3 s old.
    s.forge
        .set_claims(serde_json::json!({"groups": ["admins"]}));
    let mut b = s.browser(&s.alice);
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fadmin%2F"))
        .await;
    assert_eq!(end.url, s.url("/admin/"));
    assert_eq!(end.status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = b.get(&s.url("/admin/")).await;
    assert_eq!(p.status, 302);
    let to = p.location().unwrap();
    assert!(
        to.contains("/auth/oauth2/forge/authorize?") && to.contains("max_age=3"),
        "{to}"
    );
    let before = s.forge.authorize_requests().len();
    let end = b.follow(&to).await;
    assert_eq!(end.url, s.url("/admin/"));
    let a = &s.forge.authorize_requests()[before];
    assert_eq!(a["max_age"], "3");
    assert_eq!(a["prompt"], "login");

    // Session expiry (6 s here) closes the websocket opened under it.
    let cookie = s.session_cookie(&b).unwrap();
    let mut ws = open_ws(&s, &s.alice, &cookie).await;
    assert!(
        closed_within(&mut ws, Duration::from_secs(10)).await,
        "websocket outlived the session"
    );
    assert_eq!(b.get(&s.url("/app/")).await.status, 302);
    s.gw.shutdown().await;
}

/// `tailpass check` prints what to register at the provider and warns
/// about routes nobody can open; secrets stay hidden.
#[test]
fn check_prints_redirect_uris_and_warns_about_unsatisfiable_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tailpass.toml");
    ConfigBuilder::new()
        .section(Section::new("tailnet").set("domain", "mist-walleye.ts.net"))
        .node(NodeSpec::new("fedora").state_dir("/var/lib/tailpass/fedora"))
        .portal(PortalSpec::new(Secret::env("TP_TEST_SESSION")))
        .provider(ProviderSpec::new(
            "pocketid",
            "https://auth.mist-walleye.ts.net",
            "abc",
            Secret::env("TP_TEST_CLIENT"),
        ))
        .rule(RuleSpec::new(&["admin"]).groups(&["admins"]))
        .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
        .route(
            RouteSpec::new("/ttyd", "http://127.0.0.1:7681")
                .roles(&["admn"])
                .set("max_auth_age", "10m"),
        )
        .write(&cfg);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailpass"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env(
            "TP_TEST_SESSION",
            "very-secret-session-value-0123456789-abcdef",
        )
        .env("TP_TEST_CLIENT", "very-secret-client-value")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "https://fedora.mist-walleye.ts.net/auth/oauth2/pocketid/authorization-code-callback"
        ),
        "{text}"
    );
    assert!(
        text.contains("https://fedora.mist-walleye.ts.net/auth/logged-out"),
        "{text}"
    );
    assert!(
        text.contains("warning: route[0] /ttyd: requires role admn, which no [[rule]] grants"),
        "{text}"
    );
    // Issue #11: email/domain rules and Pocket ID's unverified emails;
    // which provider must prove a fresh sign-in for which route.
    assert!(
        text.contains("warning: rule[1] matches emails or domains: an email the provider marks email_verified = false never matches")
            && text.contains("\"Emails verified\""),
        "{text}"
    );
    assert!(
        text.contains("/ttyd needs a sign-in at most 10m old; pocketid must prove it with auth_time in its ID tokens (Pocket ID up to 2.9 sends none: set trust_prompt_login = true for Pocket ID 2.6+)"),
        "{text}"
    );
    assert!(!text.contains("very-secret"), "secret printed: {text}");
}

/// Issue #11: a refresh refused with any OAuth error ends the session and
/// closes its websocket; failures that may pass (5xx whatever its body,
/// `temporarily_unavailable`) keep it, back off (never a token call per
/// request), and end it once `refresh_interval + refresh_grace` has passed.
/// The forging provider is used because no real provider can be told to
/// fail on cue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_failures_back_off_and_end_the_session_when_they_must() {
    let _permit = tailpass_testkit::heavy().await;
    let s = stack(Extra {
        portal: vec![("refresh_interval", "1s"), ("refresh_grace", "8s")],
        ..Extra::default()
    })
    .await;
    tailpass_testkit::logs::capture();
    let login = async |b: &mut Browser| {
        let end = b
            .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
            .await;
        assert_eq!(
            (end.status, end.url.as_str()),
            (200, s.url("/app/").as_str())
        );
    };
    let mut b = s.browser(&s.alice);
    login(&mut b).await;

    // A due refresh happens, with the rotated token.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(b.get(&s.url("/app/")).await.status, 200);
    // (One or two: on a loaded machine the sign-in's own landing request
    // may come after refresh_interval already.)
    let base = s.forge.refresh_requests();
    assert!((1..=2).contains(&base), "{base} refreshes");
    let last_ok = std::time::Instant::now();

    // The provider fails in ways that may pass: the session is kept, and
    // requests for 4 s (one every 50 ms or so) cause a handful of token
    // calls (backoff 2 s, 4 s …), not one per request.
    s.forge
        .set_refresh_answer(Some((503, serde_json::json!({"error": "invalid_grant"}))));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let failing = std::time::Instant::now();
    let mut requests = 0;
    while failing.elapsed() < Duration::from_secs(4) {
        if requests == 10 {
            s.forge.set_refresh_answer(Some((
                400,
                serde_json::json!({"error": "temporarily_unavailable"}),
            )));
        }
        assert_eq!(
            b.get(&s.url("/app/")).await.status,
            200,
            "request {requests}"
        );
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = s.forge.refresh_requests() - base;
    assert!(
        (1..=4).contains(&calls) && calls * 2 < requests,
        "{calls} token calls for {requests} requests"
    );
    assert!(tailpass_testkit::logs::since(0).contains("cannot refresh the session now; kept"));

    // Past refresh_interval + refresh_grace without a successful refresh,
    // the session ends.
    let ended = loop {
        let st = b.get(&s.url("/app/")).await.status;
        if st == 302 {
            break last_ok.elapsed();
        }
        assert_eq!(st, 200);
        assert!(last_ok.elapsed() < Duration::from_secs(20), "never ended");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        ended >= Duration::from_secs(9),
        "ended after {ended:?}, before refresh_interval + refresh_grace"
    );
    assert!(
        tailpass_testkit::logs::since(0)
            .contains("within refresh_interval + refresh_grace; ending it")
    );
    let calls = s.forge.refresh_requests() - base;
    assert!(
        calls <= 6,
        "{calls} token calls while the provider was down"
    );

    // The token endpoint rotates the refresh token but userinfo cannot be
    // asked (503): the session is refreshed (the rotated token kept: the
    // next refresh uses it, and the forge refuses a used one), its claims
    // stay. Userinfo refusing the new access token (Pocket ID 2.3 answers
    // 404 for a revoked app) ends it.
    s.forge.set_refresh_answer(None);
    let mut b = s.browser(&s.alice);
    login(&mut b).await;
    s.forge
        .set_userinfo_answer(Some((503, serde_json::json!({"error": "down"}))));
    let before = s.forge.token_requests().len();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(b.get(&s.url("/app/")).await.status, 200);
    }
    let statuses: Vec<u64> = s.forge.token_requests()[before..]
        .iter()
        .filter(|t| t["form"]["grant_type"] == "refresh_token")
        .map(|t| t["status"].as_u64().unwrap())
        .collect();
    assert!(
        statuses.len() >= 2 && statuses.iter().all(|s| *s == 200),
        "each refresh used the rotated token: {statuses:?}"
    );
    s.forge.set_userinfo_answer(Some((
        404,
        serde_json::json!({"error": "record not found"}),
    )));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(b.get(&s.url("/app/")).await.status, 302, "userinfo refused");
    s.forge.set_userinfo_answer(None);

    // A refusal in the provider's own words (Pocket ID's, for a disabled
    // user) ends the session at once, websocket included.
    s.forge.set_refresh_answer(None);
    let mut b = s.browser(&s.alice);
    login(&mut b).await;
    let cookie = s.session_cookie(&b).unwrap();
    let mut ws = open_ws(&s, &s.alice, &cookie).await;
    s.forge.set_refresh_answer(Some((
        400,
        serde_json::json!({"error": "Refresh token is invalid or expired"}),
    )));
    let t = std::time::Instant::now();
    assert!(
        closed_within(&mut ws, Duration::from_secs(6)).await,
        "websocket outlived the provider's refusal"
    );
    assert_eq!(b.get(&s.url("/app/")).await.status, 302);
    assert!(
        tailpass_testkit::logs::since(0).contains("Refresh token is invalid or expired"),
        "the provider's words are logged"
    );
    eprintln!("refusal to session end: {:?}", t.elapsed());
    s.gw.shutdown().await;
}

/// Issue #11: step-up is satisfied only by proof of a fresh sign-in. An ID
/// token without `auth_time` (Pocket ID up to 2.9) gets a clear 403, not a
/// silent pass and not a redirect loop; `trust_prompt_login` accepts a
/// sign-in that answered `prompt=login` only when discovery says the
/// provider supports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_needs_proof_of_a_fresh_sign_in() {
    let _permit = tailpass_testkit::heavy().await;
    let s = stack(Extra {
        trusting: vec!["trusting-old", "trusting"],
        ..Extra::default()
    })
    .await;
    s.forge
        .set_claims(serde_json::json!({"groups": ["admins"]}));
    s.forge.omit_auth_time(true);

    let step_up = async |b: &mut Browser, provider: &str| {
        let end = b
            .follow(&s.url(&format!("/auth/oauth2/{provider}/authorize?rd=%2Fapp%2F")))
            .await;
        assert_eq!(
            (end.status, end.url.as_str()),
            (200, s.url("/app/").as_str())
        );
        let p = b.get(&s.url("/admin/")).await;
        assert_eq!(p.status, 302, "no auth_time must not count as fresh");
        let to = p.location().unwrap();
        assert!(to.contains("max_age=3"), "{to}");
        let visited = b.visited.len();
        let end = b.follow(&to).await;
        let last = s.forge.authorize_requests().pop().unwrap();
        assert_eq!(last["prompt"], "login");
        assert_eq!(last["max_age"], "3");
        (end, b.visited.len() - visited)
    };

    // No auth_time, provider not trusted for prompt=login: refused plainly.
    let mut b = s.browser(&s.alice);
    let (end, hops) = step_up(&mut b, "forge").await;
    assert_eq!(end.status, 403, "{}", end.body);
    assert!(
        end.body.contains(r#"id="no-fresh-sign-in""#),
        "{}",
        end.body
    );
    assert!(
        end.body
            .contains("cannot prove a fresh sign-in: its ID token has no auth_time")
    );
    assert!(hops <= 4, "a redirect loop: {hops} hops");
    // The session is unchanged: what needs no fresh sign-in still works.
    assert_eq!(b.get(&s.url("/app/")).await.status, 200);
    assert_eq!(b.get(&s.url("/admin/")).await.status, 302);

    // Trusted, but discovery does not list prompt=login (Pocket ID 2.3):
    // still refused.
    let mut b = s.browser(&s.alice);
    let (end, _) = step_up(&mut b, "trusting-old").await;
    assert_eq!(end.status, 403, "{}", end.body);
    assert!(
        end.body.contains("does not list prompt=login"),
        "{}",
        end.body
    );

    // Trusted and advertised (Pocket ID 2.6+): the sign-in that answered
    // prompt=login counts as fresh, for max_auth_age and no longer.
    s.forge
        .set_prompt_values(Some(&["none", "login", "consent"]));
    let mut b = s.browser(&s.alice);
    let (end, _) = step_up(&mut b, "trusting").await;
    assert_eq!(
        (end.status, end.url.as_str()),
        (200, s.url("/admin/").as_str()),
        "{}",
        end.body
    );
    assert_eq!(b.get(&s.url("/admin/")).await.status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.get(&s.url("/admin/")).await.status, 302, "fresh for ever");
    s.gw.shutdown().await;
}
