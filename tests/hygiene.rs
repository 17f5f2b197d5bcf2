//! Request hygiene (issue #10), end to end from all three entry paths —
//! tailnet peers, Funnel (emulated exactly like Tailscale's ingress, see
//! the test kit) and the public listener (TLS from PEM files) — against real
//! upstreams on 127.0.0.1 and the forging OIDC provider for sign-ins:
//!
//! 1. header names with `_` (any case) never pose as protected names;
//! 2. only `websocket` upgrades are tunnelled (`h2c` never);
//! 3. `X-Original-URL`, `X-Rewrite-URL` and the default identity names are
//!    stripped even on routes that renamed them;
//! 4. state-changing portal requests need the node's own origin;
//! 5. one peer's flood of sign-ins never evicts another peer's;
//! 6. the path rule: what the route matched is what the upstream acts on.
//!
//! Each test fails when its protection is removed (see CHANGELOG / the
//! threat model in docs/portal.md for the mutation checks).

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tailnet::Node;
use tailpass_testkit::browser::Browser;
use tailpass_testkit::client::{H1, echoed, echoed_header, tls_over};
use tailpass_testkit::forge::Forge;
use tailpass_testkit::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret, Section,
    TestNet, logs, upstream,
};

const SECRET: &str = "test-session-secret-0123456789-abcdefghijklmnop";
const CLIENT_ID: &str = "tailpass";
const CLIENT_SECRET: &str = "forge-client-secret";
/// The public listener's domain.
const PUBLIC: &str = "blog.tailpass.test";

struct Setup {
    net: TestNet,
    gw: Gateway,
    host: String,
    ca: String,
    alice: Node,
    bob: Node,
    alice_login: String,
    public: SocketAddr,
    _forge: Forge,
    _dir: tempfile::TempDir,
}

fn env(k: &str) -> Option<String> {
    match k {
        "SESSION_SECRET" => Some(SECRET.into()),
        "CLIENT_SECRET" => Some(CLIENT_SECRET.into()),
        _ => None,
    }
}

/// Gateway node `gw` (Funnel on, portal with the forging provider, public
/// listener on 127.0.0.1), clients `alice` and `bob` (bob also relays
/// Funnel connections).
async fn setup() -> Setup {
    logs::capture();
    let net = TestNet::start();
    let (alice, bob) = tokio::join!(net.node("alice"), net.node("bob"));
    let alice_login = alice.status().await.unwrap().self_node.unwrap().user_login;
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let echo = upstream::start_echo().await;
    let any = upstream::start_any_upgrade().await;
    let dir = tempfile::tempdir().unwrap();
    // The public listener's certificate, from a CA of the test's own.
    let ca = tailpass::tls::LocalCa::open_or_create(&dir.path().join("public-ca")).unwrap();
    let (cert, key) = ca
        .issue(&[PUBLIC.to_string()], std::time::Duration::from_secs(86400))
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("pub.pem"), dir.path().join("pub.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let toml = hygiene_config(
        &net,
        dir.path(),
        &forge.issuer,
        (&format!("http://{echo}"), &format!("http://{any}")),
        &alice_login,
        (&cert_file, &key_file),
    );
    let config = Config::parse(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, Options::default()).await.unwrap();
    net.settle(&[&gw.nodes[0].node, &alice, &bob]).await;
    let ca_pem = std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap();
    // Clients trust both the node's local CA and the public listener's CA.
    let ca = format!("{ca_pem}{}", ca.ca_pem());
    Setup {
        host: gw.nodes[0].fqdn.clone(),
        public: gw.public.unwrap(),
        net,
        gw,
        ca,
        alice,
        bob,
        alice_login,
        _forge: forge,
        _dir: dir,
    }
}

/// Node `gw` (Funnel), the public listener for [`PUBLIC`] with
/// `cert_key`, the portal with the forge at `issuer`, and routes over the
/// echo and any-upgrade upstreams (`up`).
fn hygiene_config(
    net: &TestNet,
    dir: &Path,
    issuer: &str,
    up: (&str, &str),
    alice_login: &str,
    cert_key: (&Path, &Path),
) -> String {
    let (echo, any) = up;
    let file = |p: &Path| p.display().to_string();
    ConfigBuilder::new()
        .node(
            NodeSpec::on(net, "gw", dir.join("gw"))
                .cert("local-ca")
                .set("funnel", true),
        )
        .section(
            Section::new("public")
                .set("listen", "127.0.0.1:0")
                .list("domains", &[PUBLIC])
                .table(
                    "cert",
                    &[
                        ("cert_file", &file(cert_key.0)),
                        ("key_file", &file(cert_key.1)),
                    ],
                ),
        )
        .portal(PortalSpec::new(Secret::env("SESSION_SECRET")))
        .provider(
            ProviderSpec::new("forge", issuer, CLIENT_ID, Secret::env("CLIENT_SECRET"))
                .label("Forge"),
        )
        .rule(RuleSpec::new(&["user"]).domains(&["example.com"]))
        .route(RouteSpec::new("/", echo).access("public"))
        .route(RouteSpec::new("/pub-up", any).access("public"))
        .route(RouteSpec::new("/echo", echo))
        .route(RouteSpec::new("/admin", echo).list("allow_users", &[alice_login]))
        .route(RouteSpec::new("/renamed", echo).table(
            "identity_headers",
            &[
                ("login", "X-Auth-User"),
                ("email", "X-Auth-Email"),
                ("login_name", "X-Auth-Name"),
            ],
        ))
        .route(RouteSpec::new("/lax", echo).set("allow_underscore_headers", true))
        .route(RouteSpec::new("/up", any))
        .route(RouteSpec::new("/app", echo).roles(&["user"]))
        .build()
}

/// Where a request comes in.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// From the tailnet node alice.
    Alice,
    /// Through Funnel (relayed by bob) from a public client.
    Funnel,
    /// Through the public listener.
    Public,
}

const ENTRIES: [Entry; 3] = [Entry::Alice, Entry::Funnel, Entry::Public];

impl Setup {
    /// A fresh HTTP/1.1 connection through `e`, and the Host to send.
    async fn conn(&self, e: Entry) -> (H1, String) {
        match e {
            Entry::Alice => (
                H1::connect(&self.alice, &self.host, &self.ca).await,
                self.host.clone(),
            ),
            Entry::Funnel => {
                let raw =
                    tailpass_testkit::funnel_dial(&self.net, &self.bob, "gw", "203.0.113.7:4567")
                        .await;
                let tls = tls_over(raw, &self.host, &self.ca, &[b"http/1.1"]).await;
                (H1::over(tls).await, self.host.clone())
            }
            Entry::Public => {
                let tcp = tokio::net::TcpStream::connect(self.public).await.unwrap();
                let tls = tls_over(tcp, PUBLIC, &self.ca, &[b"http/1.1"]).await;
                (H1::over(tls).await, PUBLIC.to_string())
            }
        }
    }

    async fn get(&self, e: Entry, path: &str, headers: &[(&str, &str)]) -> http::Response<Bytes> {
        let (mut c, host) = self.conn(e).await;
        c.get(&host, path, headers).await
    }

    fn url(&self, p: &str) -> String {
        format!("https://{}{p}", self.host)
    }
}

/// Every header name the upstream received, as an upstream folding `_` to
/// `-` reads it, with all its values.
fn received(j: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    j["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let vals = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            (k.replace('_', "-").to_ascii_lowercase(), vals)
        })
        .collect()
}

/// What an attacker sends: protected names spelled with `_`, in odd cases,
/// path-override headers, default identity names, and one harmless
/// underscore name and one harmless dashed name.
const SPOOF: [(&str, &str); 20] = [
    ("Tailscale_User_Login", "mallory@evil.example"),
    ("TAILSCALE_USER_NAME", "Mallory"),
    ("tailscale_node_name", "evil.node"),
    ("Tailscale-User-Login", "mallory2@evil.example"),
    ("Remote_User", "mallory"),
    ("remote-email", "mallory@evil.example"),
    ("Remote_Email", "mallory@evil.example"),
    ("Remote_Name", "Mallory"),
    ("Remote_Groups", "admins"),
    ("REMOTE_ROLES", "admin"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x_forwarded_host", "evil.example"),
    ("X_Real_IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6"),
    ("X-Original-URL", "/admin"),
    ("x_original_url", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X_Rewrite_Url", "/admin"),
    ("X_Custom_Thing", "1"),
    ("X-Custom-Ok", "1"),
];

/// Behaviours 1 and 3 from all three entry paths: no client copy of a
/// protected name reaches an upstream in any spelling; other underscore
/// names are dropped unless the route allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_headers_never_pass_in_any_spelling() {
    let _permit = tailpass_testkit::heavy().await;
    let s = setup().await;
    let me = s.alice.status().await.unwrap();
    let alice_ip = me.ip().unwrap().to_string();

    // Leaks are collected over all three entry paths, so a broken rule
    // shows on each path it breaks.
    let mut leaks = Vec::new();
    for e in ENTRIES {
        let path = match e {
            Entry::Alice => "/echo/x",
            _ => "/blog/post",
        };
        let j = echoed(&s.get(e, path, &SPOOF).await);
        let got = received(&j);
        for (name, vals) in &got {
            if vals.iter().any(|v| {
                v.contains("evil")
                    || v.contains("6.6.6.6")
                    || v == "mallory"
                    || v == "Mallory"
                    || v == "admins"
                    || v == "admin"
                    || v == "/admin"
            }) {
                leaks.push(format!("{e:?}: spoofed {name}: {vals:?}"));
            }
            if name.starts_with("remote-")
                || ["x-original-url", "x-rewrite-url", "x-real-ip", "forwarded"]
                    .contains(&name.as_str())
            {
                leaks.push(format!("{e:?}: {name} reached the upstream"));
            }
        }
        for k in j["headers"].as_object().unwrap().keys() {
            if k.contains('_') {
                leaks.push(format!("{e:?}: underscore name {k} reached the upstream"));
            }
        }
        assert_eq!(echoed_header(&j, "x-custom-ok").unwrap(), ["1"], "{e:?}");
        let xff = echoed_header(&j, "x-forwarded-for").unwrap();
        match e {
            Entry::Alice => {
                assert_eq!(xff, [alice_ip.as_str()]);
                assert_eq!(
                    echoed_header(&j, "tailscale-user-login").unwrap(),
                    [s.alice_login.as_str()],
                    "only tailpass's own value"
                );
            }
            Entry::Funnel => {
                assert_eq!(xff, ["203.0.113.7"]);
                assert!(echoed_header(&j, "tailscale-user-login").is_none(), "{j}");
            }
            Entry::Public => {
                assert_eq!(xff, ["127.0.0.1"]);
                assert!(echoed_header(&j, "tailscale-user-login").is_none(), "{j}");
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");

    // A route that renamed its identity headers: the default names and the
    // path-override headers are stripped all the same, the new names carry
    // only tailpass's values.
    let j = echoed(
        &s.get(
            Entry::Alice,
            "/renamed/x",
            &[
                ("Remote-Email", "mallory@evil.example"),
                ("Remote-Name", "Mallory"),
                ("Remote-User", "mallory"),
                ("Tailscale-User-Login", "mallory@evil.example"),
                ("X_Auth_User", "mallory@evil.example"),
                ("X-Auth-Email", "mallory@evil.example"),
                ("x_auth_name", "Mallory"),
                ("X-Original-URL", "/admin"),
                ("X-Rewrite-URL", "/admin"),
            ],
        )
        .await,
    );
    for n in [
        "remote-email",
        "remote-name",
        "remote-user",
        "tailscale-user-login",
        "x-auth-email",
        "x-auth-name",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(echoed_header(&j, n).is_none(), "{n} passed: {j}");
    }
    assert_eq!(
        echoed_header(&j, "x-auth-user").unwrap(),
        [s.alice_login.as_str()]
    );
    assert!(
        j["headers"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains('_')),
        "{j}"
    );

    // `allow_underscore_headers = true`: harmless underscore names pass,
    // protected ones never.
    let j = echoed(&s.get(Entry::Alice, "/lax/x", &SPOOF).await);
    assert_eq!(echoed_header(&j, "x_custom_thing").unwrap(), ["1"]);
    for (name, vals) in received(&j) {
        assert!(
            name == "x-custom-thing"
                || !vals
                    .iter()
                    .any(|v| v.contains("evil") || v == "/admin" || v == "6.6.6.6"),
            "{name}: {vals:?} passed on the lax route: {j}"
        );
    }
    assert_eq!(
        echoed_header(&j, "tailscale-user-login").unwrap(),
        [s.alice_login.as_str()]
    );
    s.gw.shutdown().await;
}

/// What the upgrade-anything upstream answered.
fn body(r: &http::Response<Bytes>) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

/// Behaviour 2 from all three entry paths: `h2c` and other upgrades go on
/// as plain requests (never a tunnel); `websocket` is still tunnelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled() {
    let _permit = tailpass_testkit::heavy().await;
    let s = setup().await;
    let mark = logs::mark();
    let mut tunnelled = Vec::new();
    for e in ENTRIES {
        let path = match e {
            Entry::Alice => "/up/x",
            _ => "/pub-up/x",
        };
        for asks in [
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ][..],
            &[("connection", "upgrade"), ("upgrade", "foo/1")],
            &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
            &[("connection", "keep-alive"), ("upgrade", "h2c")],
        ] {
            let r = s.get(e, path, asks).await;
            let b = body(&r);
            let head = b.to_ascii_lowercase();
            if r.status() != 200
                || !b.starts_with("PLAIN\n")
                || head.contains("\nupgrade:")
                || head.contains("http2-settings")
            {
                tunnelled.push(format!("{e:?} {asks:?}: {} {b}", r.status()));
            }
        }

        // A websocket upgrade is still tunnelled (raw bytes echo back).
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (c, host) = s.conn(e).await;
        let mut c = c;
        let req = http::Request::get(path)
            .header("host", host)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::BodyExt::boxed(Full::new(Bytes::new())))
            .unwrap();
        c.send.ready().await.unwrap();
        let resp = c.send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 101, "{e:?}");
        assert_eq!(resp.headers()["upgrade"], "websocket");
        let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        io.write_all(b"ping-through-the-tunnel").await.unwrap();
        let mut back = [0u8; 23];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping-through-the-tunnel");
    }
    assert!(tunnelled.is_empty(), "{tunnelled:#?}");
    assert!(
        logs::since(mark).contains("upgrade not tunnelled"),
        "refused upgrades are logged"
    );
    s.gw.shutdown().await;
}

/// Behaviour 6 from all three entry paths: paths an upstream could read as
/// another route are refused (400, access-logged); canonical paths pass
/// and reach the upstream exactly as matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_the_upstream_could_read_differently_are_refused() {
    let _permit = tailpass_testkit::heavy().await;
    let s = setup().await;
    let mark = logs::mark();
    // Everywhere: a loose reading lands on another route (or the portal).
    let everywhere = [
        "/ADMIN",
        "/Admin/x",
        "/%252e%252e/admin",
        "/blog/%252e%252e/%252e%252e/admin",
        "/%EF%BC%8Fadmin",
        "/%EF%BD%81dmin",
        "/blog/..;/admin",
        "/admin;/x",
        "/ECHO/x",
        "/AUTH/logout",
        "/a%252fb",
    ];
    let mut passed = Vec::new();
    for e in ENTRIES {
        for p in everywhere {
            let r = s.get(e, p, &[]).await;
            if r.status() != 400 {
                passed.push(format!("{e:?} {p}: {} {}", r.status(), body(&r)));
            }
        }
        // Public routes keep non-ASCII, ';' and literal '%' (a blog's slugs).
        for (p, want) in [
            ("/blog/caf%C3%A9", "/blog/caf%C3%A9"),
            ("/blog/a;b", "/blog/a;b"),
            ("/blog/100%25", "/blog/100%25"),
        ] {
            let j = echoed(&s.get(e, p, &[]).await);
            assert_eq!(j["path"], want, "{e:?}");
        }
    }
    assert!(passed.is_empty(), "{passed:#?}");
    // Routes that are not public take the strict form only.
    for p in [
        "/admin;x",
        "/admin/x;jsessionid=1",
        "/echo/..;/admin",
        "/echo/%252e%252e/admin",
        "/echo/caf%C3%A9",
        "/echo/%EF%BD%81",
        "/echo/a%01",
        "/echo/100%25",
    ] {
        let r = s.get(Entry::Alice, p, &[("accept", "text/html")]).await;
        assert_eq!(r.status(), 400, "{p}: {}", body(&r));
        assert!(body(&r).contains("<html"), "an error page for browsers");
    }
    for (p, want) in [
        ("/echo/x", "/echo/x"),
        ("/echo/A%20b", "/echo/A%20b"),
        ("/echo/Mixed/Case", "/echo/Mixed/Case"),
        ("/admin/x", "/admin/x"),
    ] {
        let j = echoed(&s.get(Entry::Alice, p, &[]).await);
        assert_eq!(j["path"], want);
    }
    // A hidden route stays hidden (404) whatever its path looks like.
    for e in [Entry::Funnel, Entry::Public] {
        for p in ["/admin/x;y", "/echo/caf%C3%A9"] {
            assert_eq!(s.get(e, p, &[]).await.status(), 404, "{e:?} {p}");
        }
    }
    let lines = logs::access_lines(mark, "/admin;x");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("decision=reject") && l.contains("status=400")),
        "a refused path is access-logged: {lines:?}"
    );
    s.gw.shutdown().await;
}

/// Behaviour 4: a logout (or any POST to the portal) without this node's
/// own origin is refused with 403 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_portal_posts_change_nothing() {
    let _permit = tailpass_testkit::heavy().await;
    let s = setup().await;
    let mut b = Browser::new(&s.alice, &s.ca);
    let end = b
        .follow(&s.url("/auth/oauth2/forge/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.url, s.url("/app/"), "signed in: {}", end.body);
    let cookie = b.cookie(&s.host, "tailpass_session").unwrap();
    // The logout page lets the browser send its real Origin with the form
    // (under `no-referrer` browsers send `Origin: null`, which is refused).
    let page = b.get(&s.url("/auth/logout")).await;
    assert_eq!(page.headers["referrer-policy"], "same-origin");
    assert!(
        page.body.contains(r#"action="/auth/logout""#),
        "{}",
        page.body
    );
    let other_node = format!("https://{}", s.net.fqdn("bob"));
    let mark = logs::mark();
    for (what, extra) in [
        ("another site", vec![("origin", "https://evil.example")]),
        (
            "another tailnet node",
            vec![("origin", other_node.as_str())],
        ),
        ("this host over http", vec![("origin", "http://gw")]),
        ("an opaque origin", vec![("origin", "null")]),
        ("no origin at all", vec![("origin", "")]),
        (
            "cross-site fetch",
            vec![("origin", ""), ("sec-fetch-site", "cross-site")],
        ),
        (
            "same-site fetch",
            vec![("origin", ""), ("sec-fetch-site", "same-site")],
        ),
    ] {
        for path in ["/auth/logout", "/auth/login", "/auth/"] {
            let p = b
                .send(
                    "POST",
                    &s.url(path),
                    Some(("application/x-www-form-urlencoded", String::new())),
                    &extra,
                )
                .await;
            assert_eq!(p.status, 403, "{what} {path}: {}", p.body);
            assert!(p.body.contains("refused"), "{}", p.body);
            assert!(p.set_cookies().is_empty(), "{what}: cookies changed");
        }
        assert_eq!(
            b.cookie(&s.host, "tailpass_session").as_deref(),
            Some(cookie.as_str())
        );
        assert_eq!(
            b.get(&s.url("/app/")).await.status,
            200,
            "{what} logged out"
        );
    }
    let lines = logs::access_lines(mark, "/auth/logout");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("decision=cross-origin") && l.contains("status=403")),
        "{lines:?}"
    );
    // Without Origin, a same-origin fetch is believed.
    let p = b
        .send(
            "POST",
            &s.url("/auth/logout"),
            Some(("application/x-www-form-urlencoded", String::new())),
            &[("origin", ""), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains(r#"id="signed-out""#), "{}", p.body);
    assert!(b.cookie(&s.host, "tailpass_session").is_none());
    let mut again = Browser::new(&s.alice, &s.ca);
    again.set_cookie(&s.host, "tailpass_session", &cookie);
    assert_eq!(again.get(&s.url("/app/")).await.status, 302, "revoked");
    s.gw.shutdown().await;
}

/// Behaviour 5: a peer flooding sign-ins evicts only its own oldest; another
/// peer's sign-in in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_evicts_only_the_flooders_own() {
    let _permit = tailpass_testkit::heavy().await;
    let s = setup().await;
    let start = "/auth/oauth2/forge/authorize?rd=%2Fapp%2F";
    let begin = async |b: &mut Browser| {
        let p = b.get(&s.url(start)).await;
        assert_eq!(p.status, 302, "{}", p.body);
        p.location().unwrap()
    };
    let mut bob = Browser::new(&s.bob, &s.ca);
    let bob_to = begin(&mut bob).await;
    let mut first = Browser::new(&s.alice, &s.ca);
    let first_to = begin(&mut first).await;
    let flood = tailpass::portal::pending::MAX_PER_NODE + 4;
    let mut last = None;
    for _ in 0..flood {
        let mut b = Browser::new(&s.alice, &s.ca);
        let to = begin(&mut b).await;
        last = Some((b, to));
    }
    // Bob's sign-in, started before the flood, completes.
    let end = bob.follow(&bob_to).await;
    assert_eq!(
        end.url,
        s.url("/app/"),
        "bob's sign-in was evicted: {}",
        end.body
    );
    assert_eq!(end.status, 200);
    // The flooder's own oldest went; its newest works.
    let end = first.follow(&first_to).await;
    assert_eq!(end.status, 400, "{}", end.body);
    assert!(end.body.contains("Sign-in expired"), "{}", end.body);
    let (mut b, to) = last.unwrap();
    let end = b.follow(&to).await;
    assert_eq!(end.url, s.url("/app/"));
    s.gw.shutdown().await;
}
