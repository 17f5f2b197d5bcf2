//! A node without a certificate does not stop tailpass (issue #13): with
//! two nodes, one whose certificate files hold no certificate yet (empty,
//! as a renewal tool leaves them before its first run), start-up
//! succeeds, the other node serves, a client of the first waits in its
//! handshake (within the handshake timeout) and is served as soon as the
//! files appear, without a restart. A ts.net certificate that fails
//! (HTTPS off in the tailnet, Let's Encrypt down) takes the same path; the
//! test control server cannot issue one, so files stand in for it.

use std::time::{Duration, Instant};

use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass_testkit::client::{H1, echoed, try_tls_over};
use tailpass_testkit::config::{ConfigBuilder, NodeSpec, RouteSpec, Section};
use tailpass_testkit::{TestNet, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_certificate_waits_for_it_and_stops_nothing() {
    let _permit = tailpass_testkit::heavy().await;
    let net = TestNet::start();
    let alice = net.node("alice").await;
    let echo = upstream::start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", d.join("gw")).cert("local-ca"))
        .node(NodeSpec::on(&net, "late", d.join("late")).table(
            "cert",
            &[
                ("cert_file", &d.join("late.pem").display().to_string()),
                ("key_file", &d.join("late.key").display().to_string()),
            ],
        ))
        .section(Section::new("limits").set("handshake_timeout", "20s"))
        .route(RouteSpec::new("/", format!("http://{echo}")))
        .build();
    // Files that do not exist are a config error (`check` names them);
    // empty ones are a certificate that is not there yet.
    std::fs::write(d.join("late.pem"), "").unwrap();
    std::fs::write(d.join("late.key"), "").unwrap();
    let config = Config::parse(&toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    // Before: "node late: certificate: …" ended start-up, for every node.
    let gw = Gateway::start(config, Options::default())
        .await
        .expect("a missing certificate does not fail start-up");
    net.settle(&[&gw.nodes[0].node, &gw.nodes[1].node, &alice])
        .await;

    // The other node serves.
    let ca = std::fs::read_to_string(d.join("gw/local-ca/ca.pem")).unwrap();
    let host = gw.nodes[0].fqdn.clone();
    let mut h = H1::connect(&alice, &host, &ca).await;
    echoed(&h.get(&host, "/hello", &[]).await);

    // A client of the node without a certificate: its handshake waits.
    let late = gw.nodes[1].fqdn.clone();
    let ck = rcgen::generate_simple_self_signed(vec![late.clone()]).unwrap();
    let late_ca = ck.cert.pem();
    let waiting = {
        let (alice, late, late_ca) = (alice.clone(), late.clone(), late_ca.clone());
        tokio::spawn(async move {
            let io = alice.dial(&format!("{late}:443")).await.unwrap();
            let t = Instant::now();
            let tls = try_tls_over(io, &late, &late_ca, &[b"http/1.1"]).await;
            (tls, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "the handshake waits for the certificate"
    );

    // The files appear; the node picks them up on its next try (5 s).
    std::fs::write(d.join("late.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("late.key"), ck.signing_key.serialize_pem()).unwrap();
    let (tls, waited) = waiting.await.unwrap();
    let tls = tls.expect("the waiting client is served once the certificate is there");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    let mut h = H1::over(tls).await;
    echoed(&h.get(&late, "/late", &[]).await);

    // And the first node never stopped.
    let mut h = H1::connect(&alice, &host, &ca).await;
    echoed(&h.get(&host, "/still", &[]).await);
    gw.shutdown().await;
}
