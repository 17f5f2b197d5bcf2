//! The test IdP harness works: discovery, authorization code + PKCE with
//! login_hint, the login form, auto-login, forced re-login, ID token claims,
//! refresh tokens, revocation, RP-initiated logout and the recorded events,
//! all over plain HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};
use tailpass_testkit::browser::parse_form;
use tailpass_testkit::client::H1;
use tailpass_testkit::idp::Idp;

const CLIENT_ID: &str = "tailpass-test";
const CLIENT_SECRET: &str = "s3cret-for-tests";
const REDIRECT: &str = "https://app.example.test/oauth2/callback";
const POST_LOGOUT: &str = "https://app.example.test/signed-out";

fn config() -> Value {
    json!({
        "port": 0,
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [POST_LOGOUT],
            "grant_types": ["authorization_code", "refresh_token"],
        }],
        "accounts": {
            "alice": {
                "email": "alice@example.com",
                "email_verified": true,
                "name": "Alice",
                "groups": ["admins", "users"],
                "department": "ops",
            },
            "bob": { "email": "bob@example.com", "email_verified": false, "groups": [] },
        },
    })
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The query parameters of a URL.
fn query(url: &str) -> BTreeMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn body(resp: &Response<Bytes>) -> String {
    String::from_utf8_lossy(resp.body()).into_owned()
}

/// The claims of a JWT, unverified.
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A user agent with a cookie jar, talking to the IdP over one connection.
struct Browser {
    h: H1,
    base: String,
    host: String,
    jar: BTreeMap<String, String>,
}

impl Browser {
    async fn new(idp: &Idp) -> Browser {
        Browser {
            h: idp.connect().await,
            base: idp.base_url(),
            host: idp.addr.to_string(),
            jar: BTreeMap::new(),
        }
    }

    /// A path on the IdP from an absolute URL on it or an absolute path.
    fn path<'a>(&self, url: &'a str) -> &'a str {
        url.strip_prefix(self.base.as_str()).unwrap_or(url)
    }

    async fn send(&mut self, method: &str, url: &str, body: Option<String>) -> Response<Bytes> {
        let path = self.path(url).to_string();
        assert!(path.starts_with('/'), "not on the IdP: {url}");
        let mut b = Request::builder()
            .method(method)
            .uri(&path)
            .header("host", &self.host);
        if !self.jar.is_empty() {
            let c = self
                .jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            b = b.header("cookie", c);
        }
        let body = match body {
            Some(s) => {
                b = b.header("content-type", "application/x-www-form-urlencoded");
                Bytes::from(s)
            }
            None => Bytes::new(),
        };
        let resp = self.h.request(b.body(Full::new(body)).unwrap()).await;
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let lower = v.to_ascii_lowercase();
            if value.is_empty() || lower.contains("expires=thu, 01 jan 1970") {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_string(), value.to_string());
            }
        }
        resp
    }

    async fn get(&mut self, url: &str) -> Response<Bytes> {
        self.send("GET", url, None).await
    }

    async fn post(&mut self, url: &str, pairs: &[(&str, &str)]) -> Response<Bytes> {
        self.send("POST", url, Some(form(pairs))).await
    }

    /// Follows redirects on the IdP; returns the first response that is not
    /// a redirect to the IdP, with the URL it left to (if it redirected).
    async fn follow(&mut self, mut resp: Response<Bytes>) -> (Response<Bytes>, Option<String>) {
        for _ in 0..10 {
            let Some(loc) = resp.headers().get("location") else {
                // oidc-provider's auto-submitting logout form (here: a login
                // as another account than the session's ends that session
                // first); a browser would submit it.
                let html = body(&resp);
                if resp.status() == 200 && html.contains("<form id=\"op.logoutForm\"") {
                    let (_, action, inputs) = parse_form(&html, "op.logoutForm");
                    let pairs: Vec<(&str, &str)> = inputs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    resp = self.post(&action, &pairs).await;
                    continue;
                }
                return (resp, None);
            };
            let loc = loc.to_str().unwrap().to_string();
            if !loc.starts_with('/') && !loc.starts_with(&self.base) {
                return (resp, Some(loc));
            }
            resp = self.get(&loc).await;
        }
        panic!("redirect loop");
    }
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce(seed: &str) -> Pkce {
    let verifier = format!("{seed}-verifier-0123456789abcdefghijklmnopqrstuvwxyz");
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    Pkce {
        challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        verifier,
    }
}

/// An authorization request URL (path) with PKCE S256.
fn authorize_url(
    scope: &str,
    state: &str,
    nonce: &str,
    pkce: &Pkce,
    extra: &[(&str, &str)],
) -> String {
    let mut p = vec![
        ("client_id", CLIENT_ID),
        ("response_type", "code"),
        ("scope", scope),
        ("redirect_uri", REDIRECT),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    p.extend_from_slice(extra);
    format!("/auth?{}", form(&p))
}

/// Runs an authorization request to the redirect back to the client; returns
/// the callback's query parameters.
async fn authorize(b: &mut Browser, url: &str) -> BTreeMap<String, String> {
    let first = b.get(url).await;
    let (resp, left) = b.follow(first).await;
    let left = left.unwrap_or_else(|| {
        panic!(
            "authorization did not come back to the client: {} {}",
            resp.status(),
            body(&resp)
        )
    });
    assert!(left.starts_with(REDIRECT), "{left}");
    let q = query(&left);
    assert!(!q.contains_key("error"), "authorization failed: {left}");
    q
}

/// A token endpoint request with client_secret_basic.
async fn token(idp: &Idp, pairs: &[(&str, &str)]) -> (u16, Value) {
    let mut h = idp.connect().await;
    let auth = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let req = Request::post("/token")
        .header("host", idp.addr.to_string())
        .header("authorization", format!("Basic {auth}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form(pairs))))
        .unwrap();
    let resp = h.request(req).await;
    (
        resp.status().as_u16(),
        serde_json::from_slice(resp.body()).unwrap(),
    )
}

async fn exchange(idp: &Idp, code: &str, pkce: &Pkce) -> Value {
    let (status, t) = token(
        idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}\n{}", idp.stderr_tail());
    t
}

async fn get_json(idp: &Idp, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut h = idp.connect().await;
    let host = idp.addr.to_string();
    let resp = h.get(&host, path, headers).await;
    let v = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    (resp.status().as_u16(), v)
}

/// Verifies an ID token's RS256 signature against the IdP's JWKS.
async fn verify_id_token(idp: &Idp, jwt: &str) -> Value {
    let (_, jwks) = get_json(idp, "/jwks", &[]).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(key.get("d").is_none(), "private key published");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[idp.issuer.as_str()]);
    jsonwebtoken::decode::<Value>(jwt, &dk, &v)
        .unwrap_or_else(|e| panic!("ID token does not verify: {e}"))
        .claims
}

#[tokio::test]
async fn code_flow_refresh_revoke_and_logout() {
    let idp = Idp::start(config());
    assert_eq!(idp.issuer, format!("http://{}", idp.addr));

    // Discovery.
    let (status, d) = get_json(&idp, "/.well-known/openid-configuration", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(d["issuer"], idp.issuer);
    assert_eq!(
        d["end_session_endpoint"],
        format!("{}/session/end", idp.issuer)
    );
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    for s in ["openid", "email", "profile", "groups", "offline_access"] {
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(s)),
            "{s}"
        );
    }

    // Authorization code + PKCE, logged in by login_hint.
    let mut b = Browser::new(&idp).await;
    let p = pkce("one");
    let url = authorize_url(
        "openid email profile groups offline_access",
        "state-1",
        "nonce-1",
        &p,
        &[("login_hint", "alice")],
    );
    let cb = authorize(&mut b, &url).await;
    assert_eq!(cb["state"], "state-1");
    let code = cb["code"].clone();

    // A code needs its verifier.
    let (status, err) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &pkce("other").verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Again on the IdP session: offline_access passes through one consent
    // interaction that completes at once.
    let p = pkce("two");
    let cb = authorize(
        &mut b,
        &authorize_url(
            "openid email profile groups offline_access",
            "state-2",
            "nonce-2",
            &p,
            &[],
        ),
    )
    .await;
    assert_eq!(cb["state"], "state-2");
    let t = exchange(&idp, &cb["code"], &p).await;
    let id_token = t["id_token"].as_str().unwrap().to_string();
    let claims = verify_id_token(&idp, &id_token).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "nonce-2");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["department"], "ops");
    assert_eq!(claims["groups"], json!(["admins", "users"]));
    assert!(claims["auth_time"].as_u64().unwrap() > 0);
    let refresh = t["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {t}"))
        .to_string();
    let access = t["access_token"].as_str().unwrap().to_string();

    // Userinfo.
    let bearer = format!("Bearer {access}");
    let (status, ui) = get_json(&idp, "/me", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{ui}");
    assert_eq!(ui["email"], "alice@example.com");
    assert_eq!(ui["groups"], json!(["admins", "users"]));

    // Refresh.
    let (status, r) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["access_token"].is_string());
    let r_claims = jwt_claims(r["id_token"].as_str().unwrap());
    assert_eq!(r_claims["auth_time"], claims["auth_time"]);
    assert_eq!(r_claims["groups"], json!(["admins", "users"]));
    let refresh = r["refresh_token"].as_str().unwrap_or(&refresh).to_string();

    // No offline_access: no refresh token.
    let p = pkce("three");
    let cb = authorize(&mut b, &authorize_url("openid email", "s3", "n3", &p, &[])).await;
    let t3 = exchange(&idp, &cb["code"], &p).await;
    assert!(t3.get("refresh_token").is_none(), "{t3}");
    assert_eq!(
        jwt_claims(t3["id_token"].as_str().unwrap())["email"],
        "alice@example.com"
    );

    // RP-initiated logout: the confirmation page's form, posted without JS.
    let url = format!(
        "/session/end?{}",
        form(&[
            ("id_token_hint", &id_token),
            ("post_logout_redirect_uri", POST_LOGOUT),
            ("state", "logout-state"),
        ])
    );
    let page = b.get(&url).await;
    assert_eq!(page.status(), 200);
    let (method, action, inputs) = parse_form(&body(&page), "op.logoutForm");
    assert_eq!(method, "post");
    assert!(
        inputs.iter().any(|(k, v)| k == "logout" && v == "yes"),
        "{inputs:?}"
    );
    assert!(inputs.iter().any(|(k, _)| k == "xsrf"), "{inputs:?}");
    let pairs: Vec<(&str, &str)> = inputs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let done = b.post(&action, &pairs).await;
    assert_eq!(done.status(), 303, "{}", body(&done));
    let loc = done.headers()["location"].to_str().unwrap();
    assert!(loc.starts_with(POST_LOGOUT), "{loc}");
    assert_eq!(query(loc)["state"], "logout-state");

    // Without a session the end-session page is the same kind of form.
    let page = b.get("/session/end").await;
    let (_, _, inputs) = parse_form(&body(&page), "op.logoutForm");
    assert!(
        inputs.iter().any(|(k, v)| k == "logout" && v == "yes"),
        "{inputs:?}"
    );

    // The session is gone: a new authorization shows the login form.
    let p = pkce("four");
    let first = b.get(&authorize_url("openid", "s4", "n4", &p, &[])).await;
    let (login, left) = b.follow(first).await;
    assert!(left.is_none());
    assert!(body(&login).contains("id=\"login\""), "{}", body(&login));

    // Offline access outlives the logout, but not a revocation.
    let (status, r) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let refresh = r["refresh_token"].as_str().unwrap_or(&refresh).to_string();
    idp.revoke("alice").await;
    let (status, r) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("invalid_grant")),
        "{r}"
    );
    let (status, _) = get_json(&idp, "/me", &[("authorization", &bearer)]).await;
    assert_eq!(status, 401);

    // Events.
    let ev = idp.events().await;
    let authz: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "authorize").collect();
    assert_eq!(authz[0]["params"]["login_hint"], "alice");
    assert_eq!(authz[0]["params"]["code_challenge_method"], "S256");
    assert_eq!(authz[0]["params"]["nonce"], "nonce-1");
    assert!(
        authz[0]["params"].get("prompt").is_none(),
        "recorded as received"
    );
    let tokens: Vec<(&str, bool)> = ev
        .iter()
        .filter(|e| e["kind"] == "token")
        .map(|e| {
            (
                e["grant_type"].as_str().unwrap(),
                e["has_code_verifier"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        [
            ("authorization_code", true),
            ("authorization_code", true),
            ("refresh_token", false),
            ("authorization_code", true),
            ("refresh_token", false),
            ("refresh_token", false),
        ]
    );
    assert_eq!(idp.events_of("userinfo").await.len(), 2);
    let ends = idp.events_of("end_session").await;
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[0]["method"], "GET");
    assert_eq!(ends[0]["params"]["id_token_hint"], id_token.as_str());
    assert_eq!(ends[0]["params"]["post_logout_redirect_uri"], POST_LOGOUT);
    assert_eq!(ends[0]["params"]["state"], "logout-state");
    let confirms = idp.events_of("end_session_confirm").await;
    assert_eq!(confirms[0]["params"]["logout"], "yes");
}

#[tokio::test]
async fn login_form_auto_login_and_forced_relogin() {
    let idp = Idp::start(config());
    let mut b = Browser::new(&idp).await;

    // No hint, no auto-login: the form.
    let p = pkce("form");
    let first = b
        .get(&authorize_url("openid email groups", "f1", "n1", &p, &[]))
        .await;
    let (page, left) = b.follow(first).await;
    assert!(left.is_none());
    let html = body(&page);
    assert!(
        html.contains("<input id=\"login\" name=\"login\""),
        "{html}"
    );
    assert!(
        html.contains("<button id=\"submit\" type=\"submit\">Sign in</button>"),
        "{html}"
    );
    let (method, action, _) = parse_form(&html, "login-form");
    assert_eq!(method, "post");

    // An unknown login shows the form again, with an error.
    let again = b.post(&action, &[("login", "mallory")]).await;
    assert_eq!(again.status(), 200);
    assert!(body(&again).contains("id=\"error\""));

    let done = b.post(&action, &[("login", "bob")]).await;
    let (_, left) = b.follow(done).await;
    let cb = query(&left.expect("back to the client"));
    assert_eq!(cb["state"], "f1");
    let t = exchange(&idp, &cb["code"], &p).await;
    let c1 = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(c1["sub"], "bob");
    assert_eq!(c1["groups"], json!([]));
    let t1 = c1["auth_time"].as_u64().unwrap();

    // A session: no interaction needed, same auth_time.
    let p = pkce("sso");
    let cb = authorize(&mut b, &authorize_url("openid", "f2", "n2", &p, &[])).await;
    let c2 = jwt_claims(
        exchange(&idp, &cb["code"], &p).await["id_token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(c2["sub"], "bob");
    assert_eq!(c2["auth_time"].as_u64(), Some(t1));

    // prompt=login forces a fresh login, completed by auto-login.
    idp.set_auto_login(Some("alice")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let p = pkce("relogin");
    let cb = authorize(
        &mut b,
        &authorize_url(
            "openid email offline_access",
            "f3",
            "n3",
            &p,
            &[("prompt", "login")],
        ),
    )
    .await;
    let t3 = exchange(&idp, &cb["code"], &p).await;
    assert!(t3["refresh_token"].is_string(), "{t3}");
    let c3 = jwt_claims(t3["id_token"].as_str().unwrap());
    assert_eq!(c3["sub"], "alice");
    let t3 = c3["auth_time"].as_u64().unwrap();
    assert!(t3 > t1, "{t3} > {t1}");

    // So does an exceeded max_age.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let p = pkce("maxage");
    let cb = authorize(
        &mut b,
        &authorize_url("openid", "f4", "n4", &p, &[("max_age", "0")]),
    )
    .await;
    let c4 = jwt_claims(
        exchange(&idp, &cb["code"], &p).await["id_token"]
            .as_str()
            .unwrap(),
    );
    let t4 = c4["auth_time"].as_u64().unwrap();
    assert!(t4 > t3, "{t4} > {t3}");

    // Auto-login off again: a new browser gets the form.
    idp.set_auto_login(None).await;
    let mut fresh = Browser::new(&idp).await;
    let p = pkce("fresh");
    let first = fresh
        .get(&authorize_url("openid", "f5", "n5", &p, &[]))
        .await;
    let (page, left) = fresh.follow(first).await;
    assert!(left.is_none());
    assert!(body(&page).contains("id=\"login\""));

    let authz = idp.events_of("authorize").await;
    assert_eq!(authz[2]["params"]["prompt"], "login");
    assert_eq!(authz[3]["params"]["max_age"], "0");
}

#[tokio::test]
async fn behind_a_proxy() {
    let mut c = config();
    c["issuer"] = json!("https://auth.example.test");
    c["proxy"] = json!(true);
    c["auto_login"] = json!("alice");
    let idp = Idp::start(c);
    assert_eq!(idp.issuer, "https://auth.example.test");
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "auth.example.test"),
        ("x-forwarded-for", "100.64.0.7"),
    ];
    let (status, d) = get_json(&idp, "/.well-known/openid-configuration", &fwd).await;
    assert_eq!(status, 200);
    assert_eq!(d["issuer"], "https://auth.example.test");
    assert_eq!(
        d["end_session_endpoint"],
        "https://auth.example.test/session/end"
    );
    assert_eq!(d["token_endpoint"], "https://auth.example.test/token");

    // The control endpoints are for direct loopback callers only.
    let (status, _) = get_json(&idp, "/test/events", &fwd).await;
    assert_eq!(status, 403);
    assert!(idp.events().await.is_empty());
}
