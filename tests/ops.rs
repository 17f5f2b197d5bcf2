//! Operations, tested on the shipped binary (`tailpass run`) as a separate
//! process on the test tailnet: two nodes serving different hostnames;
//! SIGHUP reloads a policy live while a websocket stays open; an invalid
//! config on reload keeps the old one; /healthz and Prometheus /metrics on
//! the admin listener; SIGTERM drains a request in flight, then exits 0.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tailpass::tailnet::Node;
use tailpass_testkit::binary::{Tailpass, admin_get};
use tailpass_testkit::client::H1;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, Section, TestNet, free_port, upstream};

async fn wait_peer(node: &Node, host: &str) {
    let t = Instant::now();
    while node.status().await.unwrap().peer(host).is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "{host} never joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes `gw` and `files` (local CAs), the admin listener, and routes: on
/// `gw` `/ws`, `/echo` (for `echo_users` only) and `/slow`; on `files` `/`.
fn config(
    net: &TestNet,
    dir: &std::path::Path,
    admin: u16,
    echo_users: &[&str],
    echo: std::net::SocketAddr,
    ws: std::net::SocketAddr,
) -> String {
    let echo = format!("http://{echo}");
    ConfigBuilder::new()
        .section(Section::new("tailnet").set("control_url", net.control_url.as_str()))
        .node(
            NodeSpec::new("gw")
                .state_dir(dir.join("gw"))
                .ephemeral(true)
                .cert("local-ca"),
        )
        .node(
            NodeSpec::new("files")
                .state_dir(dir.join("files"))
                .ephemeral(true)
                .cert("local-ca"),
        )
        .admin(&format!("127.0.0.1:{admin}"))
        .route(RouteSpec::new("/ws", format!("http://{ws}")).node("gw"))
        .route(
            RouteSpec::new("/echo", &echo)
                .node("gw")
                .list("allow_users", echo_users),
        )
        .route(RouteSpec::new("/slow", &echo).node("gw"))
        .route(RouteSpec::new("/", format!("{echo}/files-root")).node("files"))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_two_nodes_reload_health_metrics_and_graceful_shutdown() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let (alice, bob) = tokio::join!(net.node("alice"), net.node("bob"));
    let alice_login = alice.status().await.unwrap().self_node.unwrap().user_login;
    let bob_login = bob.status().await.unwrap().self_node.unwrap().user_login;
    let echo = upstream::start_echo().await;
    let ws = upstream::start_ws_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let cfg = dir.path().join("tailpass.toml");
    let write = |users: &[&str]| {
        std::fs::write(&cfg, config(&net, dir.path(), admin_port, users, echo, ws)).unwrap()
    };
    write(&[&alice_login]);
    let tp = Tailpass::start(&cfg);

    // Health turns 200 once both nodes run.
    let j = tp.wait_healthy(admin).await;
    assert_eq!(j["nodes"]["gw"], "Running");
    assert_eq!(j["nodes"]["files"], "Running");
    for n in [&alice, &bob] {
        wait_peer(n, "gw").await;
        wait_peer(n, "files").await;
    }
    let (gw, files) = (net.fqdn("gw"), net.fqdn("files"));
    let ca = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("gw/local-ca/ca.pem")).unwrap(),
        std::fs::read_to_string(dir.path().join("files/local-ca/ca.pem")).unwrap()
    );
    let get = async |node: &Node, host: &str, path: &str| {
        let mut h = H1::connect(node, host, &ca).await;
        let r = h.get(host, path, &[]).await;
        (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body()).into_owned(),
        )
    };

    // Two nodes, two hostnames, each with its own routes.
    let (st, body) = get(&alice, &files, "/doc").await;
    assert_eq!(st, 200);
    assert!(body.contains("/files-root/doc"), "{body}");
    assert_eq!(get(&alice, &gw, "/doc").await.0, 404);
    // On `files`, /echo is its own catch-all route, not gw's policy.
    assert_eq!(get(&bob, &files, "/echo/").await.0, 200);
    assert_eq!(get(&alice, &gw, "/echo/").await.0, 200);
    assert_eq!(get(&bob, &gw, "/echo/").await.0, 403);

    // A websocket opened before the reload.
    let tls = tailpass_testkit::client::connect(&alice, &gw, 443, &ca, &[b"http/1.1"]).await;
    let (mut sock, _) = tokio_tungstenite::client_async(format!("wss://{gw}/ws/t"), tls)
        .await
        .unwrap();
    let echo_once = async |sock: &mut tokio_tungstenite::WebSocketStream<_>, m: &str| {
        sock.send(tokio_tungstenite::tungstenite::Message::text(m))
            .await
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), sock.next())
            .await
            .expect("websocket answer")
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), m);
    };
    echo_once(&mut sock, "before").await;

    // SIGHUP with a new policy: bob in, alice out; the websocket stays.
    write(&[&bob_login]);
    tp.signal("HUP");
    tp.wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    assert_eq!(get(&bob, &gw, "/echo/").await.0, 200);
    assert_eq!(get(&alice, &gw, "/echo/").await.0, 403);
    echo_once(&mut sock, "after the reload").await;

    // An invalid config on reload is refused; the running one stays.
    std::fs::write(&cfg, "[[node]]\nhostname = \"gw\"\nstate_dir = \"/tmp/x\"\n[[route]]\npath = \"/x\"\nupstream = \"ftp://nope\"\n").unwrap();
    tp.signal("HUP");
    tp.wait_log(
        "invalid configuration; keeping the previous one",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        tp.logs().contains("route[0].upstream"),
        "the reason is logged"
    );
    assert_eq!(get(&bob, &gw, "/echo/").await.0, 200);
    echo_once(&mut sock, "after the refused reload").await;

    // Metrics: requests by route/decision/status, reloads, WhoIs, cert expiry.
    let (st, m) = admin_get(admin, "/metrics").await.unwrap();
    assert_eq!(st, 200);
    for needle in [
        r#"tailpass_requests_total{route="/echo",decision="deny",status="403",node="gw"} 2"#,
        r#"tailpass_config_reloads_total{provider="-",outcome="ok"} 1"#,
        r#"tailpass_config_reloads_total{provider="-",outcome="rejected"} 1"#,
        r#"tailpass_certificate_expiry_timestamp_seconds{node="files"}"#,
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
    let whois_count: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tailpass_whois_duration_seconds_count "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(whois_count >= 7, "{m}");
    assert_eq!(admin_get(admin, "/nope").await.unwrap().0, 404);

    // SIGTERM while a slow request (5 s upstream) is in flight: it completes.
    let slow = {
        let (alice, gw, ca) = (alice.clone(), gw.clone(), ca.clone());
        tokio::spawn(async move {
            let mut h = H1::connect(&alice, &gw, &ca).await;
            h.get(&gw, "/slow/slow", &[]).await.status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut tp = tp;
    tp.signal("TERM");
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the request in flight was cut:\n{}",
        tp.logs()
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = tp.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}\n{}", tp.logs());
    assert!(tp.logs().contains("draining requests in flight"));
}
