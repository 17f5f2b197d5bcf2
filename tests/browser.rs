//! The whole login in a real browser: headless Chromium (Debian's package,
//! driven by playwright-core through tests/browser/login.mjs) reaches the
//! test tailnet through a client node's loopback entry proxy
//! (`tailpass_testkit::entry::serve_proxy`), opens a protected websocket page, is
//! sent to the portal, signs in at the real OIDC provider behind the `auth`
//! node, lands back on the page (websocket works), opens the dashboard and
//! whoami, signs out (the provider's end-session page included), sees the
//! page's websocket closed by the revocation, and is sent to sign in again.
//! Screenshots: target/browser-artifacts/login_logout_in_chromium/.

use tailpass_testkit::chrome::{artifacts_dir_path, browser_available, run_login_mjs};
use tailpass_testkit::entry::serve_proxy;
use tailpass_testkit::stack::{Seed, SeedOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_logout_in_chromium() {
    const TEST: &str = "login_logout_in_chromium";
    if !browser_available(TEST) {
        return;
    }
    let _permit = tailpass_testkit::heavy().await;
    let seed = Seed::start(SeedOptions::default()).await;
    let laptop = seed.client("laptop").await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let entry = tokio::spawn(serve_proxy(l, laptop.clone(), stop));

    let v = run_login_mjs(
        TEST,
        &[
            ("PROXY", format!("http://{proxy}")),
            ("START_URL", seed.url("/term/")),
            ("PORTAL", seed.url("/auth")),
            ("LOGIN", "alice".into()),
            ("EMAIL", "alice@example.com".into()),
        ],
    )
    .await;
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "open-start",
            "idp-login",
            "back-at-start",
            "dashboard",
            "whoami",
            "reopen-start",
            "logout",
            "websocket-closed",
            "start-needs-login"
        ],
        "{v}"
    );
    // The provider saw the logout with id_token_hint.
    let ends = seed.idp.events_of("end_session").await;
    assert!(
        ends.iter()
            .any(|e| e["params"]["id_token_hint"].is_string()),
        "{ends:?}"
    );
    let shots = std::fs::read_dir(artifacts_dir_path(TEST)).unwrap().count();
    assert!(shots >= 9, "screenshots kept as artifacts ({shots})");
    let _ = stop_tx.send(true);
    let _ = entry.await;
    seed.gw.shutdown().await;
}
