//! The pipeline in-process: `Full` request bodies, synthetic identities, a
//! config snapshot from TOML and real upstreams on 127.0.0.1 — no tailnet,
//! no listener, no TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;
use crate::config::Config;
use crate::oidc::Dialer;
use crate::tailnet::WhoIs;

/// An upstream that answers every request with what it received, as JSON:
/// method, path and query, and every header (names as they arrived,
/// lower-case).
async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                    .collect();
                let j = serde_json::json!({
                    "method": req.method().as_str(),
                    "uri": req.uri().to_string(),
                    "headers": headers,
                });
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                    j.to_string(),
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

/// A raw upstream that reads a request head and writes `answer` — or, when
/// `answer` is empty, keeps the connection open and never answers.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                if answer.is_empty() {
                    std::future::pending::<()>().await;
                }
                let _ = s.write_all(answer).await;
                let _ = s.flush().await;
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Env {
    snap: Snapshot,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

/// A node `gw`, the portal under `/auth` with one provider, and `routes`
/// (TOML; `{up}` is the echo upstream's address).
async fn env(routes: &str) -> Env {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[node]]
hostname = "gw"
state_dir = "{state}"
[portal]
session_secret = {{ env = "S" }}
[[provider]]
name = "pocketid"
issuer = "https://auth.example.ts.net"
client_id = "tailpass"
{routes}
"#,
        state = dir.path().display(),
        routes = routes.replace("{up}", &up.to_string()),
    );
    let config = Config::parse(&text, &|_| Some("x".repeat(40))).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Arc::new(Metrics::new());
    let dialer = Dialer {
        node: Default::default(),
        tailnet_suffixes: vec!["ts.net".into()],
    };
    let portal = Portal::new(&config, dialer, None, metrics.clone())
        .unwrap()
        .map(Arc::new);
    let running = ["gw".to_string()];
    let snap = Snapshot::new(
        &config,
        (&running, &[]),
        portal,
        std::time::Duration::from_secs(5),
    );
    Env {
        snap,
        metrics,
        _dir: dir,
    }
}

fn whois(login: &str, tags: &[&str]) -> WhoIs {
    let j = serde_json::json!({
        "Node": {"StableID": "n1", "Name": "laptop.example.ts.net.", "Tags": tags},
        "UserProfile": {"ID": 1, "LoginName": login, "DisplayName": "Alice A"},
    });
    WhoIs::from_json(&j.to_string()).unwrap()
}

/// Alice's laptop on the tailnet, through node `gw`.
fn alice() -> Connection {
    Connection {
        who: Arc::new(PeerIdentity::tailnet(
            "100.64.0.9:41000".parse().unwrap(),
            whois("alice@example.com", &[]),
        )),
        node: Some("gw".into()),
        node_id: Some(NodeId(0)),
        origin: Some(Arc::new(PortalOrigin {
            node: "gw".into(),
            base: "https://gw.example.ts.net".into(),
            https_port: 443,
        })),
        scheme: "https",
    }
}

fn funnel() -> Connection {
    Connection {
        who: Arc::new(PeerIdentity::Funnel {
            addr: "203.0.113.7:5000".parse().unwrap(),
        }),
        node: Some("gw".into()),
        node_id: Some(NodeId(0)),
        origin: None,
        scheme: "https",
    }
}

fn loopback() -> Connection {
    Connection {
        who: Arc::new(PeerIdentity::Loopback {
            addr: "127.0.0.1:5000".parse().unwrap(),
        }),
        node: None,
        node_id: None,
        origin: None,
        scheme: "http",
    }
}

fn get(path: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "gw.example.ts.net")
}

fn browser(path: &str) -> http::request::Builder {
    get(path).header("accept", "text/html,application/xhtml+xml")
}

/// Status, headers and body text of the pipeline's answer (the body read
/// to its end, so the access log and metrics are written).
async fn send<B>(
    e: &Env,
    conn: &Connection,
    req: Request<B>,
) -> (StatusCode, http::HeaderMap, String)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let resp = handle(req, conn, &e.snap, Some(&e.metrics)).await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn empty(b: http::request::Builder) -> Request<Empty<Bytes>> {
    b.body(Empty::new()).unwrap()
}

/// The echo upstream's view of a forwarded request.
fn echoed(body: &str) -> (String, Vec<(String, String)>) {
    let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let headers = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (j["uri"].as_str().unwrap().to_string(), headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Requests counted with these labels, over every node label.
fn count(m: &str, route: &str, decision: &str, status: u16) -> u64 {
    let head = format!(
        r#"tailpass_requests_total{{route="{route}",decision="{decision}",status="{status}",node=""#
    );
    m.lines()
        .filter(|l| l.starts_with(&head))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn counted(e: &Env, route: &str, decision: &str, status: u16) -> bool {
    count(&e.metrics.render(), route, decision, status) == 1
}

const ROUTES: &str = r#"
[[route]]
path = "/"
upstream = "http://{up}"
access = "public"
[[route]]
path = "/app"
upstream = "http://{up}/base"
strip_prefix = true
[[route]]
path = "/admin"
upstream = "http://{up}"
allow_users = ["bob@example.com"]
[[route]]
path = "/notes"
upstream = "http://{up}"
access = "login"
[[route]]
path = "/ro"
upstream = "http://{up}"
methods = ["GET"]
"#;

#[tokio::test]
async fn routes_by_longest_prefix_and_forwards_the_normalized_path() {
    let e = env(ROUTES).await;
    let (s, _, body) = send(&e, &alice(), empty(get("/app/x/./y/../z?q=1"))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (uri, _) = echoed(&body);
    assert_eq!(
        uri, "/base/x/z?q=1",
        "prefix stripped, dot segments resolved"
    );
    assert!(counted(&e, "/app", "allow", 200));
    let (s, _, body) = send(&e, &funnel(), empty(get("/blog/post"))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body).0, "/blog/post");
    assert!(counted(&e, "/", "allow", 200));
}

#[tokio::test]
async fn no_route_is_404_with_its_own_word() {
    let e = env("[[route]]\npath = \"/app\"\nupstream = \"http://{up}\"\n").await;
    let (s, _, body) = send(&e, &alice(), empty(get("/elsewhere"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body, "404 Not found: there is nothing here\n");
    assert!(counted(&e, "-", "no-route", 404));
    // A tailnet browser gets a way on to its services; off the tailnet, no
    // hint that a portal exists.
    let (s, _, page) = send(&e, &alice(), empty(browser("/elsewhere"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        page.contains(r#"href="https://gw.example.ts.net/auth/""#),
        "{page}"
    );
    let (s, _, page) = send(&e, &funnel(), empty(browser("/elsewhere"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!page.contains("/auth/"), "{page}");
}

#[tokio::test]
async fn protected_routes_and_the_portal_are_hidden_off_the_tailnet() {
    let e = env(ROUTES).await;
    for conn in [funnel(), loopback()] {
        let (s, _, body) = send(&e, &conn, empty(get("/app/x"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body, "404 Not found: there is nothing here\n");
        // The portal's paths never fall through to the public "/" route.
        let (s, _, body) = send(&e, &conn, empty(get("/auth/login"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    }
    let m = e.metrics.render();
    assert_eq!(count(&m, "/app", "hide", 404), 2, "{m}");
    assert_eq!(count(&m, "portal", "hide", 404), 2, "{m}");
    // Funnel came through node gw, loopback through none.
    assert!(m.contains(r#"tailpass_requests_total{route="/app",decision="hide",status="404",node="loopback"} 1"#), "{m}");
}

#[tokio::test]
async fn login_needed_redirects_browsers_and_tells_others_where() {
    let e = env(ROUTES).await;
    let (s, h, _) = send(&e, &alice(), empty(browser("/notes/a?b=c"))).await;
    assert_eq!(s, StatusCode::FOUND);
    assert_eq!(
        h["location"],
        "https://gw.example.ts.net/auth/login?rd=%2Fnotes%2Fa%3Fb%3Dc"
    );
    assert!(counted(&e, "/notes", "login", 302));
    let (s, h, body) = send(&e, &alice(), empty(get("/notes/a"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        "Cookie realm=\"tailpass\", login=\"https://gw.example.ts.net/auth/login\""
    );
    assert_eq!(
        body,
        "401 Sign-in required: sign in at https://gw.example.ts.net/auth/login\n"
    );
    // A browser's POST is not redirected (its body would be lost).
    let post = browser("/notes/a").method(Method::POST);
    let (s, _, _) = send(
        &e,
        &alice(),
        post.body(Full::new(Bytes::from("x"))).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn denied_names_the_requirement_and_the_caller() {
    let e = env(ROUTES).await;
    let (s, _, body) = send(&e, &alice(), empty(get("/admin"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "403 Forbidden: requires user bob@example.com; you are alice@example.com on laptop.example.ts.net\n"
    );
    assert!(counted(&e, "/admin", "deny", 403));
    // Browsers get the portal's page, with the same reason.
    let (s, h, body) = send(&e, &alice(), empty(browser("/admin"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(body.contains("requires user bob@example.com"), "{body}");
    // A method the route does not take.
    let del = get("/ro").method(Method::DELETE);
    let (s, _, body) = send(&e, &alice(), empty(del)).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(counted(&e, "/ro", "method", 405));
}

#[tokio::test]
async fn ambiguous_paths_are_refused_and_dot_segments_never_escape_a_route() {
    let e = env(ROUTES).await;
    for (path, why) in [
        ("/app/a%2fb", "encoded slash"),
        ("/app/a%5Cb", "encoded backslash"),
        ("/app/x;jsessionid=1", "';' on a protected route"),
        ("/app/%25", "encoded '%' on a protected route"),
        ("/x/..;/admin", "'..;' read as /admin by some upstreams"),
        ("/%252e%252e/admin", "doubly encoded dots"),
        ("/ADMIN", "letter case"),
    ] {
        let (s, _, body) = send(&e, &alice(), empty(get(path))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}: {path}: {body}");
        assert!(body.starts_with("400 Bad request: "), "{body}");
    }
    // `..` resolves before routing: /app/../admin is /admin, and denied.
    let (s, _, body) = send(&e, &alice(), empty(get("/app/../admin"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, _, body) = send(&e, &alice(), empty(get("/app/%2e%2e/admin"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // An ambiguous path on a hidden route stays a 404 (nothing to learn).
    let (s, _, _) = send(&e, &funnel(), empty(get("/app/x;y"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        e.metrics
            .render()
            .contains(r#"decision="reject",status="400""#)
    );
}

#[tokio::test]
async fn identity_headers_come_only_from_the_verified_identity() {
    let e = env(ROUTES).await;
    let req = get("/app/h")
        .header("Tailscale-User-Login", "mallory@example.com")
        .header("tailscale_user_login", "mallory@example.com")
        .header("Tailscale_User_Name", "Mallory")
        .header("Remote-User", "mallory")
        .header("remote_user", "mallory")
        .header("Remote-Email", "mallory@example.com")
        .header("X-Forwarded-For", "1.2.3.4")
        .header("X-Original-URL", "/admin")
        .header("X-Custom", "kept");
    let (s, _, body) = send(&e, &alice(), empty(req)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, h) = echoed(&body);
    assert_eq!(header(&h, "tailscale-user-login"), ["alice@example.com"]);
    assert_eq!(header(&h, "tailscale-user-name"), ["Alice A"]);
    assert_eq!(header(&h, "tailscale-node-name"), ["laptop.example.ts.net"]);
    assert_eq!(header(&h, "x-forwarded-for"), ["100.64.0.9"]);
    assert_eq!(header(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(header(&h, "x-forwarded-host"), ["gw.example.ts.net"]);
    assert_eq!(header(&h, "x-custom"), ["kept"]);
    for gone in [
        "tailscale_user_login",
        "tailscale_user_name",
        "remote-user",
        "remote_user",
        "remote-email",
        "x-original-url",
    ] {
        assert!(
            header(&h, gone).is_empty(),
            "{gone} reached the upstream: {h:?}"
        );
    }
    // No tailnet identity (Funnel, public route): no identity header at all.
    let req = get("/blog").header("Tailscale-User-Login", "mallory@example.com");
    let (_, _, body) = send(&e, &funnel(), empty(req)).await;
    let (_, h) = echoed(&body);
    assert!(header(&h, "tailscale-user-login").is_empty(), "{h:?}");
    assert_eq!(header(&h, "x-forwarded-for"), ["203.0.113.7"]);
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    let e = env(ROUTES).await;
    let req = get("/app/up")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA");
    let (s, _, body) = send(&e, &alice(), empty(req)).await;
    assert_eq!(s, StatusCode::OK, "forwarded as a plain request: {body}");
    let (_, h) = echoed(&body);
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(
            header(&h, gone).is_empty(),
            "{gone} reached the upstream: {h:?}"
        );
    }
}

#[tokio::test]
async fn an_upstream_switching_protocols_unasked_is_refused() {
    let up = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let e = env(&format!(
        "[[route]]\npath = \"/sw\"\nupstream = \"http://{up}\"\n"
    ))
    .await;
    let (s, _, body) = send(&e, &alice(), empty(get("/sw"))).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "502 Bad gateway: the service behind this address switched to a protocol tailpass does not forward\n"
    );
    assert!(counted(&e, "/sw", "allow", 502));
    assert!(
        !e.metrics
            .render()
            .contains("tailpass_upstream_errors_total{")
    );
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_with_their_metric_labels() {
    let (down, silent) = (closed_port().await, raw_upstream(b"").await);
    let e = env(&format!(
        "[[route]]\npath = \"/down\"\nupstream = \"http://{down}\"\n\
         [[route]]\npath = \"/slow\"\nupstream = \"http://{silent}\"\nresponse_timeout = \"300ms\"\n"
    ))
    .await;
    let (s, _, body) = send(&e, &alice(), empty(get("/down"))).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "502 Bad gateway: the service behind this address is not answering\n"
    );
    let (s, _, body) = send(&e, &alice(), empty(browser("/slow"))).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("<h1>504 Gateway timeout</h1>"), "{body}");
    let m = e.metrics.render();
    for line in [
        r#"tailpass_upstream_errors_total{route="/down",kind="connect"} 1"#,
        r#"tailpass_upstream_errors_total{route="/slow",kind="timeout"} 1"#,
        r#"tailpass_requests_total{route="/down",decision="allow",status="502",node="gw"} 1"#,
        r#"tailpass_requests_total{route="/slow",decision="allow",status="504",node="gw"} 1"#,
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}

#[test]
fn every_outcome_has_one_status_and_word() {
    let cases: Vec<(Outcome, u16, &str)> = vec![
        (Outcome::BadPath(path::PathError::Parameter), 400, "reject"),
        (Outcome::NoRoute { services: None }, 404, "no-route"),
        (Outcome::Hidden("h".into()), 404, "hide"),
        (
            Outcome::LoginNeeded {
                reason: "r".into(),
                sign_in: None,
            },
            401,
            "login",
        ),
        (Outcome::MethodNotAllowed("m".into()), 405, "method"),
        (
            Outcome::Denied {
                reason: "d".into(),
                page: None,
            },
            403,
            "deny",
        ),
    ];
    for (o, status, word) in cases {
        let a = o.answer(false);
        assert_eq!((a.response.status().as_u16(), a.decision), (status, word));
        assert_eq!(a.upstream_error, None);
    }
    for (e, status, label) in [
        (proxy::UpstreamError::BadUri, 400, None),
        (proxy::UpstreamError::Stalled, 408, None),
        (proxy::UpstreamError::Connect, 502, Some("connect")),
        (proxy::UpstreamError::Timeout, 504, Some("timeout")),
        (proxy::UpstreamError::SwitchedProtocols, 502, None),
    ] {
        let a = Outcome::UpstreamFailed {
            error: e,
            reason: "why".into(),
        }
        .answer(true);
        assert_eq!(a.response.status().as_u16(), status, "{e:?}");
        assert_eq!((a.decision, a.upstream_error), ("allow", label), "{e:?}");
        assert_eq!(a.reason, "why");
    }
    // A refused pin (tailnet upstreams) is a 502 whose access line says so.
    let a = Outcome::UpstreamFailed {
        error: proxy::UpstreamError::Pinned,
        reason: "why".into(),
    }
    .answer(true);
    assert_eq!(a.response.status().as_u16(), 502);
    assert_eq!((a.decision, a.upstream_error), ("allow", Some("pin")));
    assert_eq!(
        a.reason,
        "why; the upstream is not the node the route is pinned to"
    );
}

/// Routes name their node once, when the snapshot is built: a route pinned
/// to another running node, or to a node a reload added (not running until
/// a restart), is not served on this node's listener; the loopback
/// listener (no node) sees every route.
#[tokio::test]
async fn routes_are_resolved_to_running_nodes_once() {
    let text = r#"
[[node]]
hostname = "gw"
state_dir = "/s/gw"
[[node]]
hostname = "other"
state_dir = "/s/other"
[[node]]
hostname = "added"
state_dir = "/s/added"
[[route]]
path = "/mine"
upstream = "http://127.0.0.1:1"
node = "gw"
[[route]]
path = "/theirs"
upstream = "http://127.0.0.1:1"
node = "other"
[[route]]
path = "/later"
upstream = "http://127.0.0.1:1"
node = "added"
"#;
    let config = Config::parse(text, &|_| None).unwrap();
    // Started with gw and other; "added" came with a reload.
    let running = ["gw".to_string(), "other".to_string()];
    let snap = Snapshot::new(
        &config,
        (&running, &[]),
        None,
        std::time::Duration::from_secs(5),
    );
    assert_eq!(node_id(&running, "other"), Some(NodeId(1)));
    assert_eq!(node_id(&running, "added"), None);
    let routed = |conn: &Connection, p: &str| {
        let p = crate::http::path::normalize(p).unwrap();
        match snap.target(conn, None, &p) {
            route::Target::Route(r, _) => Some(r.path.clone()),
            _ => None,
        }
    };
    let (gw, lo) = (alice(), loopback());
    assert_eq!(routed(&gw, "/mine/x").as_deref(), Some("/mine"));
    assert_eq!(routed(&gw, "/theirs/x"), None, "pinned to another node");
    assert_eq!(routed(&gw, "/later/x"), None, "its node is not running");
    let other = Connection {
        node: Some("other".into()),
        node_id: Some(NodeId(1)),
        ..alice()
    };
    assert_eq!(routed(&other, "/theirs").as_deref(), Some("/theirs"));
    assert_eq!(routed(&other, "/mine"), None);
    for p in ["/mine", "/theirs", "/later"] {
        assert_eq!(routed(&lo, p).as_deref(), Some(p), "loopback sees {p}");
    }
}

/// Static files (issue #13): served below the route's prefix, under the
/// route's policy like any upstream, never outside the root.
#[tokio::test]
async fn static_file_routes_serve_below_their_root_under_their_policy() {
    let site = tempfile::tempdir().unwrap();
    let root = site.path().join("blog");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "<h1>blog</h1>").unwrap();
    std::fs::write(root.join("post.txt"), "a post").unwrap();
    std::fs::write(site.path().join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(site.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    let e = env(&format!(
        r#"
[[route]]
path = "/blog"
root = "{root}"
access = "public"
[[route]]
path = "/private"
root = "{root}"
roles = ["admin"]
"#,
        root = root.display()
    ))
    .await;
    for conn in [alice(), funnel(), loopback()] {
        let (s, h, _) = send(&e, &conn, empty(get("/blog"))).await;
        assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(h["location"], "/blog/");
        let (s, _, b) = send(&e, &conn, empty(get("/blog/"))).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "<h1>blog</h1>"));
        let (s, h, b) = send(&e, &conn, empty(get("/blog/post.txt"))).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "a post"));
        assert!(h.contains_key("etag") && h.contains_key("last-modified"));
        let (s, _, _) = send(&e, &conn, empty(get("/blog/leak.txt"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "a symlink out of the root");
        let (s, _, _) = send(&e, &conn, empty(get("/blog/../secret.txt"))).await;
        assert_ne!(s, StatusCode::OK);
    }
    // A protected file route asks for a login like any protected route.
    let (s, _, _) = send(&e, &alice(), empty(get("/private/post.txt"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&e, &funnel(), empty(get("/private/post.txt"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "hidden off the tailnet");
    let text = e.metrics.render();
    assert!(text.contains(r#"decision="allow",status="200""#), "{text}");
}

/// Unix-socket upstreams (issue #13): the request and its identity headers
/// reach a server listening on a socket; a missing socket is a 502.
#[tokio::test]
async fn unix_socket_upstreams_get_the_request_and_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("up.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let login = req
                    .headers()
                    .get("tailscale-user-login")
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                let j = serde_json::json!({ "uri": req.uri().to_string(), "login": login });
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                    j.to_string(),
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    let e = env(&format!(
        r#"
[[route]]
path = "/sock"
upstream = "unix:{sock}"
[[route]]
path = "/gone"
upstream = "unix:{gone}"
"#,
        sock = sock.display(),
        gone = dir.path().join("gone.sock").display()
    ))
    .await;
    let (s, _, b) = send(&e, &alice(), empty(get("/sock/x?y=1"))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let j: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(j["uri"], "/sock/x?y=1");
    assert_eq!(j["login"], "alice@example.com");
    let (s, _, _) = send(&e, &alice(), empty(get("/gone/x"))).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
}

/// The signed identity assertion, in-process: a tailnet caller's request
/// carries one for the route's audience; Funnel and loopback callers get
/// none; a client's own copy never reaches the upstream, on any route.
#[tokio::test]
async fn assertions_only_for_tailnet_callers_and_never_the_clients_own() {
    let routes = r#"
[[route]]
path = "/"
upstream = "http://{up}"
access = "public"
assertion = true
loopback = true
[[route]]
path = "/app"
upstream = "http://{up}"
assertion = true
[[route]]
path = "/plain"
upstream = "http://{up}"
allow_underscore_headers = true
"#;
    let Env {
        snap,
        metrics,
        _dir,
    } = env(routes).await;
    let signer = crate::assertion::Signer::open(&_dir.path().join("keys.json"), 0).unwrap();
    let a = crate::assertion::Assertion {
        signer: signer.clone(),
        issuer: None,
        lifetime: std::time::Duration::from_secs(60),
        header: http::HeaderName::from_static(crate::assertion::HEADER),
    };
    let e = Env {
        snap: snap.with_assertion(Some(Arc::new(a))),
        metrics,
        _dir,
    };
    let forged = |path: &str| {
        empty(
            get(path)
                .header("Tailpass-Jwt-Assertion", "forged")
                .header("tailpass_jwt_assertion", "forged"),
        )
    };
    let asserted = |body: &str| {
        let (_, h) = echoed(body);
        assert!(header(&h, "tailpass_jwt_assertion").is_empty(), "{h:?}");
        let v: Vec<String> = header(&h, "tailpass-jwt-assertion")
            .into_iter()
            .map(String::from)
            .collect();
        assert!(v.iter().all(|t| t != "forged"), "{v:?}");
        v
    };
    let (s, _, body) = send(&e, &alice(), forged("/app/x")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let token = asserted(&body);
    assert_eq!(token.len(), 1);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&signer.jwks()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://gw.example.ts.net/app"]);
    v.set_issuer(&["https://gw.example.ts.net"]);
    let c = jsonwebtoken::decode::<serde_json::Value>(&token[0], &key, &v)
        .unwrap()
        .claims;
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(c["tailnet_node"], "laptop.example.ts.net");
    assert_eq!(c["name"], "Alice A");
    // The public route: a tailnet caller gets one (audience `…/`), Funnel
    // and loopback callers none.
    let (_, _, body) = send(&e, &alice(), forged("/blog")).await;
    let t = asserted(&body);
    v.set_audience(&["https://gw.example.ts.net/"]);
    jsonwebtoken::decode::<serde_json::Value>(&t[0], &key, &v).unwrap();
    for conn in [funnel(), loopback()] {
        let (s, _, body) = send(&e, &conn, forged("/blog")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(asserted(&body).is_empty(), "{body}");
    }
    // No assertion where the route does not ask, and no forged copy.
    let (_, _, body) = send(&e, &alice(), forged("/plain")).await;
    assert!(asserted(&body).is_empty(), "{body}");
}

/// A renamed assertion header (`[assertion] header`) is protected on every
/// route like the default one, which stays protected too.
#[tokio::test]
async fn a_renamed_assertion_header_is_protected_everywhere() {
    let routes = r#"
[[route]]
path = "/app"
upstream = "http://{up}"
assertion = true
[[route]]
path = "/plain"
upstream = "http://{up}"
allow_underscore_headers = true
[assertion]
header = "X-Pomerium-Jwt-Assertion"
"#;
    let Env {
        snap,
        metrics,
        _dir,
    } = env(routes).await;
    let a = crate::assertion::Assertion {
        signer: crate::assertion::Signer::open(&_dir.path().join("keys.json"), 0).unwrap(),
        issuer: Some("https://tailpass.example".into()),
        lifetime: std::time::Duration::from_secs(60),
        header: http::HeaderName::from_static("x-pomerium-jwt-assertion"),
    };
    let e = Env {
        snap: snap.with_assertion(Some(Arc::new(a))),
        metrics,
        _dir,
    };
    for path in ["/app", "/plain"] {
        let req = get(path)
            .header("X-Pomerium-Jwt-Assertion", "forged")
            .header("x_pomerium_jwt_assertion", "forged")
            .header("Tailpass-Jwt-Assertion", "forged");
        let (s, _, body) = send(&e, &alice(), empty(req)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (_, h) = echoed(&body);
        assert!(h.iter().all(|(_, v)| v != "forged"), "{path}: {h:?}");
        let got = header(&h, "x-pomerium-jwt-assertion");
        assert_eq!(got.len(), usize::from(path == "/app"), "{path}: {h:?}");
    }
}
