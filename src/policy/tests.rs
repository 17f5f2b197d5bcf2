use std::collections::{BTreeMap, BTreeSet};

use http::Method as M;

use super::*;
use crate::config::Config;
use crate::tailnet::WhoIs;

static NO_ROLES: BTreeSet<String> = BTreeSet::new();

fn anon(who: &PeerIdentity) -> Caller<'_> {
    Caller {
        who,
        session: None,
        roles: &NO_ROLES,
        now: 1_000_000,
    }
}

const LOGIN_CFG: &str = r#"
[portal]
session_secret = { env = "S" }
[[provider]]
name = "pocketid"
issuer = "https://auth.example.ts.net"
client_id = "tailpass"
[[provider]]
name = "other"
issuer = "https://other.example.ts.net"
client_id = "tailpass"
"#;

fn config(extra: &str) -> Config {
    let text = format!("[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n{LOGIN_CFG}\n{extra}\n");
    Config::parse(&text, &|_| Some("x".repeat(40))).unwrap_or_else(|e| panic!("{e}"))
}

fn session(provider: &str, email: &str, claims: serde_json::Value, auth_time: i64) -> Session {
    let mut c: BTreeMap<String, serde_json::Value> = serde_json::from_value(claims).unwrap();
    c.insert("email".into(), email.into());
    Session {
        sid: "s".into(),
        provider: provider.into(),
        sub: "sub-1".into(),
        email: Some(email.to_ascii_lowercase()),
        name: None,
        claims: c,
        auth_time: Some(auth_time),
        expires: 2_000_000,
    }
}

fn route(extra: &str) -> Route {
    let text = format!(
        "[[node]]\nhostname = \"gw\"\nstate_dir = \"/s\"\n[[route]]\npath = \"/r\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
    );
    Config::parse(&text, &|_| None).unwrap().routes.remove(0)
}

fn peer(login: &str, tags: &[&str], caps: &[&str]) -> PeerIdentity {
    let j = serde_json::json!({
        "Node": {"StableID": "n1", "Name": "laptop.ts.net.", "Tags": tags},
        "UserProfile": {"ID": 1, "LoginName": login, "DisplayName": "X"},
        "CapMap": caps.iter().map(|c| (c.to_string(), serde_json::json!([{}]))).collect::<serde_json::Map<_, _>>(),
    });
    PeerIdentity::tailnet(
        "100.64.0.9:1234".parse().unwrap(),
        WhoIs::from_json(&j.to_string()).unwrap(),
    )
}

#[test]
fn decision_table() {
    let funnel = PeerIdentity::Funnel {
        addr: "203.0.113.1:5".parse().unwrap(),
    };
    let local = PeerIdentity::Loopback {
        addr: "127.0.0.1:5".parse().unwrap(),
    };
    let internet = PeerIdentity::Internet {
        addr: "198.51.100.7:5".parse().unwrap(),
    };
    let alice = peer("alice@example.com", &[], &[]);
    let bob = peer("bob@example.com", &[], &[]);
    let ci = peer("tagged-devices", &["tag:ci"], &[]);
    // A tagged node created by alice does not act as alice.
    let alices_tagged = peer("alice@example.com", &["tag:kiosk"], &[]);
    let capped = peer("carol@example.com", &[], &["example.com/cap/files"]);

    let public = route("access = \"public\"");
    let open = route("");
    let users = route("allow_users = [\"Alice@example.com\"]");
    let tags = route("allow_tags = [\"tag:ci\"]");
    let caps = route("allow_capabilities = [\"example.com/cap/files\"]");
    let local_ok = route("loopback = true");

    use Decision::*;
    let allow = |d: Decision| matches!(d, Allow(_));
    let deny = |d: Decision| matches!(d, Deny(_));
    let hide = |d: Decision| matches!(d, Hide(_));
    for (r, who, ok, name) in [
        (
            &public,
            &funnel,
            allow as fn(Decision) -> bool,
            "public/funnel",
        ),
        (&public, &local, allow, "public/loopback"),
        (&public, &bob, allow, "public/tailnet"),
        (&open, &bob, allow, "open/bob"),
        (&open, &funnel, hide, "open/funnel"),
        (&open, &internet, hide, "open/internet"),
        (&public, &internet, allow, "public/internet"),
        (&open, &local, hide, "open/loopback"),
        (&local_ok, &local, allow, "loopback route/loopback"),
        (&users, &alice, allow, "users/alice (case-insensitive)"),
        (&users, &bob, deny, "users/bob"),
        (&users, &alices_tagged, deny, "users/alice's tagged node"),
        (&users, &funnel, hide, "users/funnel"),
        (&tags, &ci, allow, "tags/ci"),
        (&tags, &alice, deny, "tags/alice"),
        (&caps, &capped, allow, "caps/carol"),
        (&caps, &alice, deny, "caps/alice"),
    ] {
        let d = evaluate(r, &M::GET, &anon(who));
        assert!(ok(d.clone()), "{name}: {d:?}");
    }
    match evaluate(&users, &M::GET, &anon(&bob)) {
        Deny(why) => {
            assert!(why.contains("user Alice@example.com"), "{why}");
            assert!(why.contains("bob@example.com on laptop.ts.net"), "{why}");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn rules_over_login_and_tailnet_identity() {
    let c = config(
        r#"
[[rule]]
roles = ["admin"]
groups = ["admins"]
providers = ["pocketid"]

[[rule]]
roles = ["staff"]
domains = ["example.com"]

[[rule]]
roles = ["ops"]
claims = { department = ["ops", "sre"] }

[[rule]]
roles = ["alice"]
emails = ["Alice@Example.com"]

[[rule]]
roles = ["laptop-user"]
tailnet_users = ["alice@example.com"]

[[rule]]
roles = ["ci"]
tags = ["tag:ci"]

[[rule]]
roles = ["files-rw"]
capability = "example.com/cap/files"
capability_value = { mode = "rw" }
"#,
    );
    let alice = peer("alice@example.com", &[], &[]);
    let ci = peer("tagged-devices", &["tag:ci"], &[]);
    let r = |who: &PeerIdentity, s: Option<&Session>| -> Vec<String> {
        roles(&c.rules, who, s).into_iter().collect()
    };
    let admin = session(
        "pocketid",
        "Alice@example.com",
        serde_json::json!({"groups": ["admins", "users"], "department": "sre"}),
        0,
    );
    assert_eq!(
        r(&alice, Some(&admin)),
        ["admin", "alice", "laptop-user", "ops", "staff"]
    );
    // Same groups from another provider: no admin.
    let other = session(
        "other",
        "alice@example.com",
        serde_json::json!({"groups": ["admins"]}),
        0,
    );
    assert!(!r(&alice, Some(&other)).contains(&"admin".to_string()));
    // Login conditions never match without a session; tailnet ones do.
    assert_eq!(r(&alice, None), ["laptop-user"]);
    assert_eq!(r(&ci, None), ["ci"]);
    // An unverified email matches neither email nor domain rules.
    let unverified = session(
        "pocketid",
        "alice@example.com",
        serde_json::json!({"email_verified": false}),
        0,
    );
    assert_eq!(r(&ci, Some(&unverified)), ["ci"]);
    // Capability values: {mode: rw} matches, {mode: ro} does not.
    let cap = |v: serde_json::Value| {
        let j = serde_json::json!({
            "Node": {"StableID": "n1", "Name": "laptop.ts.net."},
            "UserProfile": {"ID": 1, "LoginName": "carol@example.com", "DisplayName": "C"},
            "CapMap": {"example.com/cap/files": [v]},
        });
        PeerIdentity::tailnet(
            "100.64.0.9:1234".parse().unwrap(),
            WhoIs::from_json(&j.to_string()).unwrap(),
        )
    };
    assert_eq!(
        r(&cap(serde_json::json!({"mode": "rw"})), None),
        ["files-rw"]
    );
    assert!(r(&cap(serde_json::json!({"mode": "ro"})), None).is_empty());
}

#[test]
fn login_routes_roles_any_all_step_up_and_methods() {
    let c = config(
        r#"
[[rule]]
roles = ["admin"]
groups = ["admins"]
[[rule]]
roles = ["user"]
domains = ["example.com"]

[[route]]
path = "/admin"
upstream = "http://127.0.0.1:1"
roles = ["admin"]
max_auth_age = "10m"
methods = ["GET"]

[[route]]
path = "/either"
upstream = "http://127.0.0.1:1"
allow_tags = ["tag:ci"]
roles = ["admin"]
require = "any"

[[route]]
path = "/both"
upstream = "http://127.0.0.1:1"
allow_users = ["alice@example.com"]
access = "login"
"#,
    );
    let (admin_r, either, both) = (&c.routes[0], &c.routes[1], &c.routes[2]);
    let alice = peer("alice@example.com", &[], &[]);
    let bob = peer("bob@example.com", &[], &[]);
    let ci = peer("tagged-devices", &["tag:ci"], &[]);
    let now = 1_000_000;
    let fresh_admin = session(
        "pocketid",
        "alice@example.com",
        serde_json::json!({"groups": ["admins"]}),
        now - 60,
    );
    let old_admin = session(
        "pocketid",
        "alice@example.com",
        serde_json::json!({"groups": ["admins"]}),
        now - 3600,
    );
    let user = session(
        "pocketid",
        "bob@example.com",
        serde_json::json!({}),
        now - 60,
    );
    let eval = |route: &Route, m: M, who: &PeerIdentity, s: Option<&Session>| {
        let roles = roles(&c.rules, who, s);
        evaluate(
            route,
            &m,
            &Caller {
                who,
                session: s,
                roles: &roles,
                now,
            },
        )
    };
    use Decision::*;
    assert!(matches!(
        eval(admin_r, M::GET, &alice, None),
        Login { max_age: None, .. }
    ));
    assert!(matches!(
        eval(admin_r, M::GET, &alice, Some(&fresh_admin)),
        Allow(_)
    ));
    assert!(matches!(
        eval(admin_r, M::POST, &alice, Some(&fresh_admin)),
        Method(_)
    ));
    assert!(matches!(
        eval(admin_r, M::GET, &alice, Some(&old_admin)),
        Login {
            max_age: Some(600),
            ..
        }
    ));
    // A sign-in time the provider did not prove is never fresh.
    let unproven = Session {
        auth_time: None,
        ..fresh_admin.clone()
    };
    assert!(matches!(
        eval(admin_r, M::GET, &alice, Some(&unproven)),
        Login {
            max_age: Some(600),
            ..
        }
    ));
    match eval(admin_r, M::GET, &bob, Some(&user)) {
        Deny(why) => {
            assert!(why.contains("requires role admin; you have user"), "{why}");
            assert!(why.contains("bob@example.com on laptop.ts.net"), "{why}");
        }
        d => panic!("{d:?}"),
    }
    // Funnel never reaches a login route.
    let funnel = PeerIdentity::Funnel {
        addr: "203.0.113.1:5".parse().unwrap(),
    };
    assert!(matches!(eval(admin_r, M::GET, &funnel, None), Hide(_)));
    // any: the tag alone passes; otherwise a login could.
    assert!(matches!(eval(either, M::GET, &ci, None), Allow(_)));
    assert!(matches!(eval(either, M::GET, &bob, None), Login { .. }));
    assert!(matches!(
        eval(either, M::GET, &alice, Some(&fresh_admin)),
        Allow(_)
    ));
    // all: the tailnet user must match before a login helps; any signed-in role passes.
    assert!(matches!(eval(both, M::GET, &bob, Some(&user)), Deny(_)));
    assert!(matches!(eval(both, M::GET, &alice, None), Login { .. }));
    assert!(matches!(
        eval(both, M::GET, &alice, Some(&fresh_admin)),
        Allow(_)
    ));
}

#[test]
fn a_login_without_roles_is_refused_not_a_guest() {
    let c = config(
        r#"
[[rule]]
roles = ["admin"]
groups = ["admins"]
[[route]]
path = "/app"
upstream = "http://127.0.0.1:1"
access = "login"
"#,
    );
    let bob = peer("bob@example.com", &[], &[]);
    let s = session(
        "pocketid",
        "bob@example.com",
        serde_json::json!({}),
        999_000,
    );
    let roles = roles(&c.rules, &bob, Some(&s));
    assert!(roles.is_empty());
    let d = evaluate(
        &c.routes[0],
        &M::GET,
        &Caller {
            who: &bob,
            session: Some(&s),
            roles: &roles,
            now: 1_000_000,
        },
    );
    assert!(
        matches!(&d, Decision::Deny(w) if w.contains("maps to no role")),
        "{d:?}"
    );
}

#[test]
fn unsatisfiable_routes_are_reported() {
    let c = config(
        r#"
[[rule]]
roles = ["admin"]
groups = ["admins"]
[[route]]
path = "/ok"
upstream = "http://127.0.0.1:1"
roles = ["admin"]
[[route]]
path = "/typo"
upstream = "http://127.0.0.1:1"
roles = ["admn"]
[[route]]
path = "/alt"
upstream = "http://127.0.0.1:1"
roles = ["nobody"]
allow_tags = ["tag:ci"]
require = "any"
"#,
    );
    let w = unsatisfiable(&c.routes, &c.rules);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("/typo") && w[0].contains("admn"), "{w:?}");
    let none =
        config("[[route]]\npath = \"/x\"\nupstream = \"http://127.0.0.1:1\"\naccess = \"login\"\n");
    let w = unsatisfiable(&none.routes, &none.rules);
    assert!(w[0].contains("no [[rule]] grants any role"), "{w:?}");
}
