//! Proves the forging OIDC provider (`tailpass_testkit::forge`) against
//! the `openidconnect` crate tailpass uses: a faultless login verifies, and every
//! fault is really what it says (verification fails for the stated reason).

use std::future::Future;
use std::pin::Pin;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use http_body_util::Full;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::url::Url;
use openidconnect::{
    AccessToken, AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, HttpRequest, HttpResponse, IssuerUrl, JsonWebKey, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, ProviderMetadataWithLogout, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse,
};
use serde_json::{Value, json};
use tailpass_testkit::client::H1;
use tailpass_testkit::forge::{Fault, Forge, IMPOSTOR_SUB, KID};

const CLIENT_ID: &str = "tailpass";
const CLIENT_SECRET: &str = "s3cret:with/odd&chars";
/// Never connected to: the forger only redirects to it.
const REDIRECT: &str = "http://127.0.0.1:9/oauth2/callback?keep=1";

/// One HTTP/1.1 request over a fresh plain TCP connection.
async fn send(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let url = Url::parse(&req.uri().to_string()).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let s = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut h = H1::over(s).await;
    let (mut parts, body) = req.into_parts();
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    parts.uri = target.parse().unwrap();
    parts.headers.insert("host", host.parse().unwrap());
    let resp = h
        .request(http::Request::from_parts(
            parts,
            Full::new(Bytes::from(body)),
        ))
        .await;
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.to_vec())
}

type HttpFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, std::io::Error>> + Send>>;

/// The `openidconnect::AsyncHttpClient` for these tests.
fn http_client() -> impl Fn(HttpRequest) -> HttpFuture {
    |req| Box::pin(async move { Ok(send(req).await) })
}

async fn get(url: &str) -> http::Response<Vec<u8>> {
    send(http::Request::get(url).body(Vec::new()).unwrap()).await
}

async fn post_form(url: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
    let body = openidconnect::url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut b =
        http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        let enc = |s: &str| {
            openidconnect::url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        };
        let cred = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(id),
            enc(secret)
        ));
        b = b.header("authorization", format!("Basic {cred}"));
    }
    let resp = send(b.body(body.into_bytes()).unwrap()).await;
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    )
}

fn location(resp: &http::Response<Vec<u8>>) -> Url {
    assert_eq!(
        resp.status(),
        302,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

fn query_param(url: &Url, k: &str) -> Option<String> {
    url.query_pairs()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}

/// The JOSE header and payload of a compact JWT, unverified.
fn jwt_parts(jwt: &str) -> (Value, Value, String) {
    let mut it = jwt.split('.');
    let mut part = || serde_json::from_slice(&B64URL.decode(it.next().unwrap()).unwrap()).unwrap();
    let (h, p) = (part(), part());
    (h, p, it.next().unwrap().to_string())
}

async fn discover(forge: &Forge) -> CoreProviderMetadata {
    CoreProviderMetadata::discover_async(
        IssuerUrl::new(forge.issuer.clone()).unwrap(),
        &http_client(),
    )
    .await
    .unwrap()
}

fn client(
    meta: CoreProviderMetadata,
) -> CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
> {
    CoreClient::from_provider_metadata(
        meta,
        ClientId::new(CLIENT_ID.into()),
        Some(ClientSecret::new(CLIENT_SECRET.into())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap())
}

/// What one login through the forger produced.
struct Login {
    id_token: CoreIdToken,
    raw_id_token: String,
    access_token: AccessToken,
    nonce: Nonce,
}

/// A full authorization code + PKCE login with the openidconnect client,
/// which authenticates with `client_secret_basic` by default.
async fn login(forge: &Forge, fault: Fault) -> Login {
    forge.set_fault(fault);
    let client = client(discover(forge).await);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let back = location(&get(url.as_str()).await);
    assert_eq!(query_param(&back, "keep").as_deref(), Some("1"));
    assert_eq!(
        query_param(&back, "state").as_deref(),
        Some(csrf.secret().as_str())
    );
    let code = query_param(&back, "code").unwrap();
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http_client())
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: token exchange: {e:?}"));
    let id_token = tokens.id_token().unwrap().clone();
    Login {
        raw_id_token: id_token.to_string(),
        id_token,
        access_token: tokens.access_token().clone(),
        nonce,
    }
}

/// The verifier a careful relying party uses: the crate's checks (issuer,
/// audience, signature with the JWKS keys, exp, nonce) with ES256 pinned, plus
/// an `iat` check, which openidconnect does not make by default.
fn verifier(forge: &Forge, meta: &CoreProviderMetadata) -> CoreIdTokenVerifier<'static> {
    CoreIdTokenVerifier::new_confidential_client(
        ClientId::new(CLIENT_ID.into()),
        ClientSecret::new(CLIENT_SECRET.into()),
        IssuerUrl::new(forge.issuer.clone()).unwrap(),
        meta.jwks().clone(),
    )
    // A bare verifier allows RS256 only; the client's takes the discovered
    // algorithms. Pin ES256, the forger's.
    .set_allowed_algs([CoreJwsSigningAlgorithm::EcdsaP256Sha256])
    .set_issue_time_verifier_fn(|iat| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if iat.timestamp() > now + 60 {
            Err(format!("issued in the future ({iat})"))
        } else {
            Ok(())
        }
    })
}

#[tokio::test]
async fn discovery_and_jwks_parse() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    assert!(forge.issuer.starts_with("http://127.0.0.1:"));
    assert_eq!(forge.issuer, format!("http://{}", forge.addr));

    let meta = discover(&forge).await;
    assert_eq!(meta.issuer().as_str(), forge.issuer);
    let i = &forge.issuer;
    assert_eq!(
        meta.authorization_endpoint().as_str(),
        format!("{i}/authorize")
    );
    assert_eq!(
        meta.token_endpoint().unwrap().as_str(),
        format!("{i}/token")
    );
    assert_eq!(
        meta.userinfo_endpoint().unwrap().as_str(),
        format!("{i}/userinfo")
    );
    assert_eq!(meta.jwks_uri().as_str(), format!("{i}/jwks"));
    let keys = meta.jwks().keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id().unwrap().as_str(), KID);

    // The end_session_endpoint, through the crate's logout metadata.
    let with_logout = ProviderMetadataWithLogout::discover_async(
        IssuerUrl::new(i.clone()).unwrap(),
        &http_client(),
    )
    .await
    .unwrap();
    assert_eq!(
        with_logout
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .unwrap()
            .as_str(),
        format!("{i}/logout")
    );

    // The raw documents, field by field.
    let doc: Value = serde_json::from_slice(
        get(&format!("{i}/.well-known/openid-configuration"))
            .await
            .body(),
    )
    .unwrap();
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    let jwks: Value = serde_json::from_slice(get(&format!("{i}/jwks")).await.body()).unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    for c in ["x", "y"] {
        assert_eq!(
            B64URL.decode(k[c].as_str().unwrap()).unwrap().len(),
            32,
            "{c}"
        );
    }
    assert_eq!(jwks, forge.jwks());
}

#[tokio::test]
async fn faultless_login_verifies() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    forge.set_claims(json!({"name": "Mallory", "email_verified": true, "groups": ["admins"]}));
    let l = login(&forge, Fault::None).await;
    let meta = discover(&forge).await;

    // The crate's own verifier (from the client) and the careful one agree.
    let c = client(meta.clone());
    l.id_token.claims(&c.id_token_verifier(), &l.nonce).unwrap();
    let claims = l
        .id_token
        .claims(&verifier(&forge, &meta), &l.nonce)
        .unwrap();
    assert_eq!(claims.subject().as_str(), "mallory");
    assert_eq!(claims.email().unwrap().as_str(), "mallory@example.com");
    assert_eq!(claims.email_verified(), Some(true));
    assert!(claims.auth_time().is_some());

    let (header, payload, sig) = jwt_parts(&l.raw_id_token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], KID);
    assert!(!sig.is_empty());
    assert_eq!(payload["groups"], json!(["admins"]));
    assert_eq!(payload["aud"], CLIENT_ID);
    let exp = payload["exp"].as_i64().unwrap();
    let iat = payload["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 300);

    // Userinfo through the crate, which checks the subject.
    let info: CoreUserInfoClaims = c
        .user_info(l.access_token.clone(), Some(claims.subject().clone()))
        .unwrap()
        .request_async(&http_client())
        .await
        .unwrap();
    assert_eq!(info.subject().as_str(), "mallory");
    assert_eq!(info.name().unwrap().get(None).unwrap().as_str(), "Mallory");

    // What was recorded.
    let auth = forge.authorize_requests();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0]["client_id"], CLIENT_ID);
    assert_eq!(auth[0]["redirect_uri"], REDIRECT);
    assert_eq!(auth[0]["code_challenge_method"], "S256");
    assert_eq!(auth[0]["nonce"], l.nonce.secret().as_str());
    assert_eq!(auth[0]["scope"], "openid email");
    let tok = forge.token_requests();
    assert_eq!(tok.len(), 1);
    assert_eq!(tok[0]["basic_auth"], true);
    assert_eq!(tok[0]["client_auth"], "client_secret_basic");
    assert_eq!(tok[0]["status"], 200);
    assert_eq!(tok[0]["form"]["grant_type"], "authorization_code");
    assert_eq!(tok[0]["form"]["redirect_uri"], REDIRECT);
    assert!(tok[0]["form"]["code"].is_string());
    assert!(tok[0]["form"]["code_verifier"].is_string());
    assert!(tok[0]["form"].get("client_secret").is_none());
}

#[tokio::test]
async fn every_fault_fails_verification_for_its_reason() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let meta = discover(&forge).await;
    let v = verifier(&forge, &meta);
    let faults = [
        Fault::WrongIssuer,
        Fault::WrongAudience,
        Fault::Expired,
        Fault::AlgNone,
        Fault::Resigned,
        Fault::WrongNonce,
        Fault::MissingNonce,
        Fault::FutureIat,
    ];
    for fault in faults {
        let l = login(&forge, fault).await;
        let (header, payload, sig) = jwt_parts(&l.raw_id_token);
        let err = l
            .id_token
            .claims(&v, &l.nonce)
            .map(|c| c.subject().clone())
            .expect_err(&format!("{fault:?} verified"));
        let t = payload["iat"].as_i64().unwrap();
        match fault {
            Fault::WrongIssuer => {
                assert!(
                    matches!(err, ClaimsVerificationError::InvalidIssuer(_)),
                    "{err:?}"
                );
                assert_eq!(payload["iss"], format!("{}/evil", forge.issuer));
            }
            Fault::WrongAudience => {
                assert!(
                    matches!(err, ClaimsVerificationError::InvalidAudience(_)),
                    "{err:?}"
                );
                assert_eq!(payload["aud"], format!("{CLIENT_ID}-other"));
            }
            Fault::Expired => {
                assert!(
                    matches!(err, ClaimsVerificationError::Expired(_)),
                    "{err:?}"
                );
                assert_eq!(payload["exp"].as_i64().unwrap(), t + 600);
            }
            Fault::AlgNone => {
                assert!(
                    matches!(
                        err,
                        ClaimsVerificationError::SignatureVerification(
                            SignatureVerificationError::NoSignature
                        )
                    ),
                    "{err:?}"
                );
                assert_eq!(header, json!({"alg": "none", "typ": "JWT"}));
                assert!(sig.is_empty());
            }
            Fault::Resigned => {
                assert!(
                    matches!(
                        err,
                        ClaimsVerificationError::SignatureVerification(
                            SignatureVerificationError::CryptoError(_)
                        )
                    ),
                    "{err:?}"
                );
                assert_eq!(header["kid"], KID);
                assert_eq!(header["alg"], "ES256");
            }
            Fault::WrongNonce => {
                assert!(
                    matches!(err, ClaimsVerificationError::InvalidNonce(_)),
                    "{err:?}"
                );
                assert!(payload["nonce"].is_string());
            }
            Fault::MissingNonce => {
                assert!(
                    matches!(err, ClaimsVerificationError::InvalidNonce(_)),
                    "{err:?}"
                );
                assert!(payload.get("nonce").is_none());
            }
            Fault::FutureIat => {
                assert!(
                    matches!(&err, ClaimsVerificationError::Expired(m) if m.contains("future")),
                    "{err:?}"
                );
                // openidconnect's default verifier accepts any iat: the
                // relying party must set an iat check itself.
                let c = client(meta.clone());
                l.id_token.claims(&c.id_token_verifier(), &l.nonce).unwrap();
            }
            Fault::None | Fault::UserinfoSubMismatch | Fault::WrongAtHash => unreachable!(),
        }
        if fault != Fault::FutureIat {
            // The client's own verifier (discovered algorithms) refuses too.
            let c = client(meta.clone());
            assert!(
                l.id_token.claims(&c.id_token_verifier(), &l.nonce).is_err(),
                "{fault:?} passed the client's verifier"
            );
        }
        // Apart from its fault, each token is the good one: same subject.
        assert_eq!(payload["sub"], "mallory", "{fault:?}");
    }

    // The fault stays until changed; back to None, tokens verify again.
    forge.set_fault(Fault::None);
    let l = login(&forge, Fault::None).await;
    l.id_token.claims(&v, &l.nonce).unwrap();
}

#[tokio::test]
async fn userinfo_sub_mismatch() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let meta = discover(&forge).await;
    let l = login(&forge, Fault::UserinfoSubMismatch).await;
    // The ID token itself is good.
    let claims = l
        .id_token
        .claims(&verifier(&forge, &meta), &l.nonce)
        .unwrap();
    assert_eq!(claims.subject().as_str(), "mallory");
    // The crate's userinfo request, told the ID token's subject, refuses.
    let c = client(meta);
    let res: Result<CoreUserInfoClaims, _> = c
        .user_info(l.access_token.clone(), Some(claims.subject().clone()))
        .unwrap()
        .request_async(&http_client())
        .await;
    assert!(res.is_err(), "userinfo for another sub accepted");
    // Raw: another sub.
    let resp = send(
        http::Request::get(format!("{}/userinfo", forge.issuer))
            .header(
                "authorization",
                format!("Bearer {}", l.access_token.secret()),
            )
            .body(Vec::new())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let info: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(info["sub"], IMPOSTOR_SUB);
    assert_eq!(info["email"], "mallory@example.com");
    // No or an unknown access token: 401.
    let resp = get(&format!("{}/userinfo", forge.issuer)).await;
    assert_eq!(resp.status(), 401);
}

/// A hand-made authorization request; returns the code.
async fn authorize(forge: &Forge, verifier: &str, nonce: &str, state: &str) -> String {
    let mut url = Url::parse(&format!("{}/authorize", forge.issuer)).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid")
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair(
            "code_challenge",
            &B64URL.encode(ring::digest::digest(
                &ring::digest::SHA256,
                verifier.as_bytes(),
            )),
        )
        .append_pair("code_challenge_method", "S256");
    let back = location(&get(url.as_str()).await);
    assert_eq!(query_param(&back, "state").as_deref(), Some(state));
    assert_eq!(query_param(&back, "keep").as_deref(), Some("1"));
    assert!(
        back.as_str()
            .starts_with("http://127.0.0.1:9/oauth2/callback?keep=1&code=")
    );
    query_param(&back, "code").unwrap()
}

#[tokio::test]
async fn authorize_refuses_incomplete_requests() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let full = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("state", "st"),
        ("nonce", "n"),
        ("code_challenge", "abc"),
        ("code_challenge_method", "S256"),
    ];
    let url = |pairs: &[(&str, &str)]| {
        let mut u = Url::parse(&format!("{}/authorize", forge.issuer)).unwrap();
        u.query_pairs_mut().extend_pairs(pairs);
        u.to_string()
    };
    assert_eq!(get(&url(&full)).await.status(), 302);
    for missing in 0..full.len() {
        let pairs: Vec<_> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, p)| *p)
            .collect();
        let resp = get(&url(&pairs)).await;
        assert_eq!(resp.status(), 400, "without {}", full[missing].0);
        let msg = String::from_utf8_lossy(resp.body()).to_string();
        assert!(msg.contains(full[missing].0), "{msg}");
    }
    for (k, bad) in [
        ("code_challenge_method", "plain"),
        ("response_type", "token"),
        ("client_id", "someone"),
        ("redirect_uri", "/relative"),
    ] {
        let pairs: Vec<_> = full
            .iter()
            .map(|&(n, v)| if n == k { (n, bad) } else { (n, v) })
            .collect();
        assert_eq!(get(&url(&pairs)).await.status(), 400, "{k}={bad}");
    }
    // Every request is recorded, refused or not.
    assert_eq!(forge.authorize_requests().len(), 1 + full.len() + 4);

    // The state comes back exactly, however odd.
    let odd = "a b&c=d/é?#";
    authorize(&forge, &"v".repeat(43), "n", odd).await;
}

#[tokio::test]
async fn token_endpoint_checks() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    let token = format!("{}/token", forge.issuer);
    let verifier = "x".repeat(50);
    let code = authorize(&forge, &verifier, "n1", "s").await;
    let form = |code: &str, verifier: &str, redirect: &str| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("code_verifier", verifier.to_string()),
            ("redirect_uri", redirect.to_string()),
        ]
    };
    let post = |f: Vec<(&'static str, String)>, basic: Option<(&'static str, &'static str)>| {
        let token = token.clone();
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(&token, &f, basic).await
        }
    };
    let good = Some((CLIENT_ID, CLIENT_SECRET));

    let (st, body) = post(form(&code, &verifier, REDIRECT), good).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert!(body["access_token"].is_string());
    let (_, payload, _) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(payload["nonce"], "n1");

    // Not single-use: the same code again works (the RP must defend itself).
    let (st, _) = post(form(&code, &verifier, REDIRECT), good).await;
    assert_eq!(st, 200);

    let (st, body) = post(form(&code, &"y".repeat(50), REDIRECT), good).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "wrong verifier"
    );
    let (st, body) = post(form(&code, "short", REDIRECT), good).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "short verifier"
    );
    let (st, body) = post(form(&code, &verifier, "http://127.0.0.1:9/other"), good).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "redirect_uri"
    );
    let (st, body) = post(form("nope", &verifier, REDIRECT), good).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "unknown code"
    );

    let (st, body) = post(form(&code, &verifier, REDIRECT), Some((CLIENT_ID, "wrong"))).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (401, Some("invalid_client")),
        "bad secret"
    );
    let (st, body) = post(form(&code, &verifier, REDIRECT), None).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (401, Some("invalid_client")),
        "no auth"
    );

    // client_secret_post.
    let mut f = form(&code, &verifier, REDIRECT);
    f.push(("client_id", CLIENT_ID.into()));
    f.push(("client_secret", CLIENT_SECRET.into()));
    let (st, _) = post(f.clone(), None).await;
    assert_eq!(st, 200);
    // Both methods at once: refused.
    let (st, body) = post(f, good).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_request")));

    let log = forge.token_requests();
    let summary: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["basic_auth"].as_bool().unwrap(),
                r["client_auth"].as_str(),
            )
        })
        .collect();
    let basic = Some("client_secret_basic");
    assert_eq!(
        summary,
        [
            (200, true, basic),
            (200, true, basic),
            (400, true, basic),
            (400, true, basic),
            (400, true, basic),
            (400, true, basic),
            (401, false, None),
            (401, false, None),
            (200, false, Some("client_secret_post")),
            (400, true, None),
        ]
    );
    assert_eq!(log[0]["form"]["code"], code.as_str());
    assert_eq!(log[0]["form"]["code_verifier"], verifier.as_str());
    assert_eq!(log[0]["form"]["redirect_uri"], REDIRECT);
    assert_eq!(log[0]["form"]["grant_type"], "authorization_code");

    // The openidconnect client with client_secret_post works too.
    let c = client(discover(&forge).await).set_auth_type(AuthType::RequestBody);
    let code = authorize(&forge, &verifier, "n2", "s").await;
    let tokens = c
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(openidconnect::PkceCodeVerifier::new(verifier.clone()))
        .request_async(&http_client())
        .await
        .unwrap();
    assert!(tokens.id_token().is_some());
    assert_eq!(
        forge.token_requests().last().unwrap()["client_auth"],
        "client_secret_post"
    );
}

#[tokio::test]
async fn set_claims_and_logout() {
    let forge = Forge::start(CLIENT_ID, CLIENT_SECRET).await;
    forge.set_claims(json!({"sub": "alice", "email": null, "groups": ["a", "b"]}));
    let l = login(&forge, Fault::None).await;
    let (_, payload, _) = jwt_parts(&l.raw_id_token);
    assert_eq!(payload["sub"], "alice");
    assert!(payload.get("email").is_none());
    assert_eq!(payload["groups"], json!(["a", "b"]));
    let resp = send(
        http::Request::get(format!("{}/userinfo", forge.issuer))
            .header(
                "authorization",
                format!("Bearer {}", l.access_token.secret()),
            )
            .body(Vec::new())
            .unwrap(),
    )
    .await;
    let info: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(info, json!({"sub": "alice", "groups": ["a", "b"]}));

    let mut url = Url::parse(&format!("{}/logout", forge.issuer)).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", &l.raw_id_token)
        .append_pair("post_logout_redirect_uri", "http://127.0.0.1:9/bye?x=1")
        .append_pair("state", "s t");
    let back = location(&get(url.as_str()).await);
    assert_eq!(back.as_str(), "http://127.0.0.1:9/bye?x=1&state=s+t");
    let resp = get(&format!("{}/logout", forge.issuer)).await;
    assert_eq!(resp.status(), 200);
    let logs = forge.logout_requests();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["id_token_hint"], l.raw_id_token.as_str());
}
