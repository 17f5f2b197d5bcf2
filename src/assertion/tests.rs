use super::*;

const DAY: i64 = 86400;
const ISS: &str = "https://gw.example.ts.net";

/// Verifies with an independent implementation (jsonwebtoken, RustCrypto
/// P-256) against the published JWKS.
fn verify(s: &Signer, token: &str, aud: &str) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&s.jwks()).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[ISS]);
    // The tests sign at fixed past times: check the signature and claims,
    // not the clock.
    v.validate_exp = false;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .unwrap()
        .claims
}

fn subject() -> Subject {
    Subject {
        sub: "u-1".into(),
        email: Some("alice@example.com".into()),
        roles: vec!["admin".into()],
        tailnet_user: Some("alice@example.com".into()),
        tailnet_node: "laptop".into(),
        ..Subject::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
}

fn kids(s: &Signer) -> Vec<String> {
    let jwks: serde_json::Value = serde_json::from_str(&s.jwks()).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn assertions_verify_with_the_published_key_and_carry_the_claims() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assertion-keys.json");
    let s = Signer::open(&path, 1_000).unwrap();
    let t = s
        .sign(
            ISS,
            "https://gw.example.ts.net/ttyd",
            &subject(),
            1_000,
            Duration::from_secs(60),
        )
        .unwrap();
    let c = verify(&s, &t, "https://gw.example.ts.net/ttyd");
    assert_eq!(c["sub"], "u-1");
    assert_eq!(c["roles"][0], "admin");
    assert_eq!(c["tailnet_node"], "laptop");
    assert_eq!(
        (c["iat"].as_i64(), c["nbf"].as_i64()),
        (Some(1_000), Some(1_000))
    );
    assert_eq!(c["exp"], 1_060);
    assert!(c.get("groups").is_none(), "empty lists are left out");
    let header = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(header.kid.unwrap(), s.kid());
    // Every assertion has its own id.
    let again = s
        .sign(ISS, "a", &subject(), 1_000, Duration::from_secs(60))
        .unwrap();
    let jti = |t: &str| verify(&s, t, "a")["jti"].as_str().unwrap().to_string();
    assert_eq!(c["jti"].as_str().unwrap().len(), 22);
    assert_ne!(jti(&again), c["jti"].as_str().unwrap());
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn the_kid_is_the_rfc7638_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signer::open(&dir.path().join("k.json"), 0).unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&s.jwks()).unwrap();
    let k = &jwks["keys"][0];
    let canonical = serde_json::json!({"crv": k["crv"], "kty": k["kty"], "x": k["x"], "y": k["y"]});
    // serde_json's map is sorted: the RFC's member order.
    let d = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
    assert_eq!(k["kid"], B64.encode(d));
    assert_eq!(
        (k["alg"].as_str(), k["use"].as_str()),
        (Some("ES256"), Some("sig"))
    );
    assert!(k.get("d").is_none(), "never the private part");
}

#[test]
fn a_reopened_file_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/assertion-keys.json");
    let s = Signer::open(&path, 0).unwrap();
    let again = Signer::open(&path, 100 * DAY).unwrap();
    assert_eq!(
        again.kid(),
        s.kid(),
        "a running tailpass never rotates by itself"
    );
    assert_eq!(kids(&again).len(), 1);
}

#[test]
fn rotation_adds_a_key_keeps_the_previous_and_reload_picks_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assertion-keys.json");
    let running = Signer::open(&path, 0).unwrap();
    let first = running.kid();
    let old = running
        .sign(ISS, "a", &subject(), 0, Duration::from_secs(60))
        .unwrap();
    let r = rotate(&path, 10, KEEP_RETIRED).unwrap();
    assert_eq!(r.published, [r.kid.clone(), first.clone()]);
    assert_eq!(r.dropped, 0);
    // Until it reloads, the running signer keeps its key.
    assert_eq!(running.kid(), first);
    running.reload().unwrap();
    assert_eq!(running.kid(), r.kid);
    assert_eq!(kids(&running), [r.kid.clone(), first.clone()]);
    // An assertion signed by the old key still verifies.
    verify(&running, &old, "a");
    let new = running
        .sign(ISS, "a", &subject(), 20, Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
        r.kid
    );
    verify(&running, &new, "a");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn retired_keys_go_after_a_day_but_the_previous_key_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assertion-keys.json");
    let s = Signer::open(&path, 0).unwrap();
    let k0 = s.kid();
    let k1 = rotate(&path, DAY, KEEP_RETIRED).unwrap().kid;
    let r = rotate(&path, DAY + 60, KEEP_RETIRED).unwrap();
    assert_eq!(
        r.published,
        [r.kid.clone(), k1.clone(), k0.clone()],
        "k0 retired 60 s ago"
    );
    // A day later: k0 (retired at DAY) goes; k1, the previous, stays
    // although it was retired more than a day ago too.
    let r = rotate(&path, 3 * DAY, KEEP_RETIRED).unwrap();
    assert_eq!(r.published.len(), 2);
    assert_eq!(r.dropped, 2);
    assert!(!r.published.contains(&k0) && !r.published.contains(&k1));
    s.reload().unwrap();
    assert_eq!(kids(&s), r.published);
}

#[test]
fn a_damaged_key_file_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("assertion-keys.json");
    std::fs::write(&p, "{ not json").unwrap();
    let e = Signer::open(&p, 0).unwrap_err();
    assert!(e.to_string().contains("assertion-keys.json"), "{e}");
    assert!(rotate(&p, 0, KEEP_RETIRED).is_err());
    let bad_key = r#"{"keys":[{"created":0,"pem":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}]}"#;
    std::fs::write(&p, bad_key).unwrap();
    assert!(Signer::open(&p, 0).is_err());
    assert!(rotate(&p, 0, KEEP_RETIRED).is_err());
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        bad_key,
        "left as it was"
    );
    // A running signer keeps its keys when the file goes bad.
    let good = dir.path().join("good.json");
    let s = Signer::open(&good, 0).unwrap();
    let kid = s.kid();
    std::fs::write(&good, "{}").unwrap();
    assert!(s.reload().is_err());
    assert_eq!(s.kid(), kid);
}

#[test]
fn a_tampered_assertion_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signer::open(&dir.path().join("k.json"), 1_000).unwrap();
    let t = s
        .sign(ISS, "a", &subject(), 1_000, Duration::from_secs(60))
        .unwrap();
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    claims["roles"] = serde_json::json!(["admin", "root"]);
    parts[1] = B64.encode(claims.to_string());
    let forged = parts.join(".");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&s.jwks()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["a"]);
    v.validate_exp = false;
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &v).is_err());
}

#[test]
fn the_jwks_file_is_world_readable_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signer::open(&dir.path().join("k.json"), 0).unwrap();
    let out = dir.path().join("pub/jwks.json");
    s.write_jwks(&out).unwrap();
    assert_eq!(mode(&out), 0o644);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), s.jwks());
}

fn peer(login: &str, tags: &[&str]) -> PeerIdentity {
    let j = serde_json::json!({
        "Node": {"StableID": "n1", "Name": "box.example.ts.net.", "Tags": tags},
        "UserProfile": {"ID": 1, "LoginName": login, "DisplayName": "Alice"},
    });
    PeerIdentity::tailnet(
        "100.64.0.9:1".parse().unwrap(),
        crate::tailnet::WhoIs::from_json(&j.to_string()).unwrap(),
    )
}

#[test]
fn the_subject_comes_from_whois_and_the_session_only() {
    // Tailnet only: WhoIs.
    let s = Subject::of(&peer("alice@example.com", &[]), None).unwrap();
    assert_eq!(s.sub, "alice@example.com");
    assert_eq!(s.tailnet_user.as_deref(), Some("alice@example.com"));
    assert_eq!(s.tailnet_node, "box.example.ts.net");
    assert_eq!((s.email, s.roles.len()), (None, 0));
    // A tagged node acts for its tags, never for a user.
    let s = Subject::of(&peer("alice@example.com", &["tag:ci"]), None).unwrap();
    assert_eq!(s.sub, "box.example.ts.net");
    assert_eq!(
        (s.tailnet_user, s.tailnet_tags),
        (None, vec!["tag:ci".to_string()])
    );
    // Signed in: the provider's subject, email, groups and roles.
    let login = LoginHeaders {
        email: Some("a@idp".into()),
        user: "idp-sub-1".into(),
        name: None,
        groups: vec!["ops".into()],
        roles: vec!["admin".into()],
    };
    let s = Subject::of(&peer("alice@example.com", &[]), Some(&login)).unwrap();
    assert_eq!(
        (s.sub.as_str(), s.email.as_deref()),
        ("idp-sub-1", Some("a@idp"))
    );
    assert_eq!(
        (s.groups, s.roles),
        (vec!["ops".to_string()], vec!["admin".to_string()])
    );
    assert_eq!(s.name.as_deref(), Some("Alice"));
    // Nobody to vouch for off the tailnet.
    for who in [
        PeerIdentity::Funnel {
            addr: "203.0.113.1:5".parse().unwrap(),
        },
        PeerIdentity::Internet {
            addr: "203.0.113.1:5".parse().unwrap(),
        },
        PeerIdentity::Loopback {
            addr: "127.0.0.1:5".parse().unwrap(),
        },
    ] {
        assert!(Subject::of(&who, Some(&login)).is_none(), "{who}");
    }
}

/// The cost of one assertion (not a timed test: run with `--ignored
/// --nocapture`, in release for real figures).
#[test]
#[ignore]
fn cost_per_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signer::open(&dir.path().join("k.json"), 0).unwrap();
    let a = Assertion {
        signer: s,
        issuer: None,
        lifetime: Duration::from_secs(60),
        header: HeaderName::from_static(HEADER),
    };
    let who = peer("alice@example.com", &[]);
    let login = LoginHeaders {
        email: Some("alice@example.com".into()),
        user: "0b5e1c9a-2f7d-4c1e-9a57-6f3b2d8e4a10".into(),
        name: Some("Alice".into()),
        groups: vec!["ops".into(), "dev".into()],
        roles: vec!["admin".into(), "user".into()],
    };
    let n = 2_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let v = a.for_request(ISS, "https://gw.example.ts.net/app", &who, Some(&login));
        assert!(v.is_some());
    }
    let per = t.elapsed() / n;
    println!("one assertion (subject, claims, ES256 signature, header value): {per:?}");
}
