//! The seed topology with the real, OpenID-certified provider (npm
//! `oidc-provider`, standing in for Pocket ID), in one tailpass process:
//! node `auth` serves the provider at `https://auth.<tailnet>` (it sees
//! https and the real client through X-Forwarded-*), node `gw` runs the
//! portal and the protected routes, and reaches the provider over the
//! tailnet through its own node. Client nodes walk the whole login.

use std::time::Duration;

use tailpass_testkit::browser::{Browser, link_href, parse_form, query_param};
use tailpass_testkit::stack::{Seed, SeedOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_topology_login_groups_refresh_step_up_and_logout() {
    let _permit = tailpass_testkit::heavy().await;
    let seed = Seed::start(SeedOptions {
        auto_login: Some("alice".into()),
        refresh_interval: Some("1s".into()),
        ..Default::default()
    })
    .await;
    let (alice, bob) = tokio::join!(seed.client("alice"), seed.client("bob"));
    let (idp, ca, gw_host, auth_host) = (&seed.idp, &seed.ca, &seed.gw_host, &seed.auth_host);
    let url = |p: &str| format!("https://{gw_host}{p}");

    // Protected URL → login page → provider (over the tailnet) → callback → the original URL.
    let mut b = Browser::new(&alice, ca);
    let login = b.follow(&url("/app/deep/page?q=1")).await;
    assert!(
        login.url.starts_with(&url("/auth/login?rd=")),
        "{}",
        login.url
    );
    assert!(login.body.contains(r#"data-provider="pocketid""#));
    let end = b
        .follow(
            &login
                .url
                .replace("/auth/login?", "/auth/oauth2/pocketid/authorize?"),
        )
        .await;
    assert_eq!(
        end.url,
        url("/app/deep/page?q=1"),
        "visited {:#?}",
        b.visited
    );
    assert!(
        b.visited
            .iter()
            .any(|u| u.starts_with(&format!("https://{auth_host}/"))),
        "the browser went through the auth node: {:#?}",
        b.visited
    );
    let j: serde_json::Value = serde_json::from_str(&end.body).unwrap();
    let hdr = |j: &serde_json::Value, n: &str| j["headers"][n][0].as_str().map(str::to_string);
    assert_eq!(
        hdr(&j, "remote-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(hdr(&j, "remote-groups").as_deref(), Some("admins,users"));
    assert_eq!(hdr(&j, "remote-roles").as_deref(), Some("admin,user"));
    let authz = idp.events_of("authorize").await;
    assert_eq!(authz[0]["params"]["code_challenge_method"], "S256");
    assert!(authz[0]["params"]["nonce"].is_string());
    let tokens = idp.events_of("token").await;
    assert_eq!(tokens[0]["grant_type"], "authorization_code");
    assert_eq!(tokens[0]["has_code_verifier"], true);

    // Refresh: with a 1 s interval the next request refreshes at the provider…
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.get(&url("/app/")).await.status, 200);
    let refreshes = |ev: &[serde_json::Value]| {
        ev.iter()
            .filter(|e| e["grant_type"] == "refresh_token")
            .count()
    };
    assert!(
        refreshes(&idp.events_of("token").await) >= 1,
        "no refresh happened"
    );
    // …and a session ended at the provider ends here within that bound.
    idp.revoke("alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = b.get(&url("/app/")).await;
    assert_eq!(p.status, 302, "session survived its end at the provider");
    assert!(p.location().unwrap().contains("/auth/login"));

    // Sign in again; step-up on /admin forces a new authentication.
    let end = b
        .follow(&url("/auth/oauth2/pocketid/authorize?rd=%2Fadmin%2F"))
        .await;
    assert_eq!(
        (end.status, end.url.as_str()),
        (200, url("/admin/").as_str())
    );
    let auth_time = |b: &mut Browser| {
        let mut api = Browser::new(&alice, ca);
        api.html = false;
        api.jar = b.jar.clone();
        async move {
            let w = api.get(&url("/auth/whoami")).await;
            let v: serde_json::Value = serde_json::from_str(&w.body).unwrap();
            v["session"]["auth_time"].as_str().unwrap().to_string()
        }
    };
    let t1 = auth_time(&mut b).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = b.get(&url("/admin/")).await;
    assert_eq!(p.status, 302);
    let step = p.location().unwrap();
    assert!(step.contains("max_age=3"), "{step}");
    let end = b.follow(&step).await;
    assert_eq!(
        (end.status, end.url.as_str()),
        (200, url("/admin/").as_str())
    );
    let last = idp.events_of("authorize").await.pop().unwrap();
    assert_eq!(last["params"]["max_age"], "3");
    assert!(last["params"]["prompt"].as_str().unwrap().contains("login"));
    let t2 = auth_time(&mut b).await;
    assert!(t2 > t1, "auth_time did not move: {t1} → {t2}");

    // Logout: tailpass's page first, then the provider's end_session (with
    // id_token_hint) from its link, and back.
    let out = b
        .send(
            "POST",
            &url("/auth/logout"),
            Some(("application/x-www-form-urlencoded", String::new())),
            &[],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.body.contains(r#"id="signed-out""#), "{}", out.body);
    let to = link_href(&out.body, "provider-logout").expect("a link to the provider's sign-out");
    assert!(
        to.starts_with(&format!("https://{auth_host}/session/end?")),
        "{to}"
    );
    let confirm = b.follow(&to).await;
    let (_, action, inputs) = parse_form(&confirm.body, "op.logoutForm");
    let fields: Vec<(&str, &str)> = inputs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let done = b
        .post_form(
            &tailpass_testkit::browser::resolve(&confirm.url, &action),
            &fields,
        )
        .await;
    assert!(
        done.url.starts_with(&url("/auth/logged-out")),
        "{}",
        done.url
    );
    assert!(done.body.contains(r#"id="logged-out""#));
    assert_eq!(query_param(&done.url, "state"), query_param(&to, "state"));
    let ends = idp.events_of("end_session").await;
    let hint = ends[0]["params"]["id_token_hint"]
        .as_str()
        .expect("id_token_hint sent");
    assert_eq!(hint.split('.').count(), 3);
    assert_eq!(
        ends[0]["params"]["post_logout_redirect_uri"],
        url("/auth/logged-out")
    );
    assert_eq!(b.get(&url("/app/")).await.status, 302);

    // Bob (groups: users) may open /app but not /admin: a 403 that says why.
    idp.set_auto_login(Some("bob")).await;
    let mut bb = Browser::new(&bob, ca);
    let end = bb
        .follow(&url("/auth/oauth2/pocketid/authorize?rd=%2Fadmin%2F"))
        .await;
    assert_eq!(end.status, 403, "{}", end.body);
    assert!(
        end.body.contains("requires role admin; you have user"),
        "{}",
        end.body
    );
    assert_eq!(bb.get(&url("/app/")).await.status, 200);

    // Metrics count the sign-ins and the denial.
    let m = seed.gw.metrics().render();
    for needle in [
        r#"tailpass_logins_total{provider="pocketid",outcome="ok"} 4"#,
        r#"tailpass_requests_total{route="/admin",decision="deny",status="403",node="gw"} 1"#,
        r#"tailpass_requests_total{route="portal",decision="login-ok",status="302",node="gw"} 4"#,
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
    seed.gw.shutdown().await;
}
