use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::tailnet::WhoIs;

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
    PeerIdentity::Tailnet {
        addr: "100.64.0.9:1234".parse().unwrap(),
        whois: Arc::new(WhoIs::from_json(&j.to_string()).unwrap()),
    }
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
        let d = evaluate(r, who);
        assert!(ok(d.clone()), "{name}: {d:?}");
    }
    match evaluate(&users, &bob) {
        Deny(why) => {
            assert!(why.contains("user Alice@example.com"), "{why}");
            assert!(why.contains("bob@example.com on laptop.ts.net"), "{why}");
        }
        d => panic!("{d:?}"),
    }
}
