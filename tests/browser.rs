//! The whole login in a real browser: headless Chromium (Debian's package,
//! driven by playwright-core through tests/browser/login.mjs) reaches the
//! test tailnet through a client node's loopback entry proxy
//! (`tailpass_testkit::entry::serve_proxy`), opens a protected websocket page, is
//! sent to the portal, signs in at the real OIDC provider behind the `auth`
//! node, lands back on the page (websocket works), opens the dashboard and
//! whoami, signs out (the provider's end-session page included), sees the
//! page's websocket closed by the revocation, and is sent to sign in again.
//! On the way, every portal page (login, dashboard, whoami, sign-out,
//! signed-out) and the 403, 404 and 502 pages are screenshot in light, dark
//! and phone (375x812) looks: target/browser-artifacts/login_logout_in_chromium/.

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
    // A route no one may open (403) and one whose upstream is down (502).
    let seed = Seed::start(SeedOptions {
        extra: EXTRA_ROUTES.into(),
        ..SeedOptions::default()
    })
    .await;
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
            ("FORBIDDEN_URL", seed.url("/vault")),
            ("NOT_FOUND_URL", seed.url("/no-such-page")),
            ("DOWN_URL", seed.url("/down/")),
            ("STALE_TITLE", "Admin (recent sign-in)".into()),
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
            "pages",
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
    let shots: Vec<String> = std::fs::read_dir(artifacts_dir_path(TEST))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        shots.len() >= 9,
        "screenshots kept as artifacts ({shots:?})"
    );
    // Every page in every look.
    for page in [
        "login",
        "dashboard",
        "whoami",
        "logout-page",
        "signed-out",
        "logged-out",
        "403",
        "404",
        "502",
    ] {
        for look in ["light", "dark", "mobile", "mobile-dark"] {
            let name = format!("-{page}-{look}.png");
            assert!(
                shots.iter().any(|s| s.ends_with(&name)),
                "no screenshot *{name} in {shots:?}"
            );
        }
    }
    let _ = stop_tx.send(true);
    let _ = entry.await;
    seed.gw.shutdown().await;
}

/// The routes the seed lacks for the error pages' screenshots.
const EXTRA_ROUTES: &str = r#"
[[route]]
path = "/vault"
upstream = "http://{echo}"
node = "gw"
roles = ["owner"]
title = "Vault"

[[route]]
path = "/down"
upstream = "http://127.0.0.1:9"
node = "gw"
"#;
