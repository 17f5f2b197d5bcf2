//! A forging OpenID Connect provider for negative tests of the relying party.
//!
//! The real test IdP (npm `oidc-provider`) is correct, so it cannot hand the
//! relying party a token with the wrong issuer, an expired one, an unsigned
//! one, … This one can: it speaks just enough of OIDC (discovery, JWKS,
//! authorization code + PKCE S256, userinfo, end session) for a relying party
//! to log in through it, and each token response is built per the current
//! [`Fault`]. There is no login UI: `/authorize` issues a code at once.
//!
//! Everything listens on 127.0.0.1; the issuer is `http://127.0.0.1:PORT`.
//! The server stops when the [`Forge`] is dropped.
//!
//! What it checks, like a real provider, so a relying party that talks to it
//! successfully also talks OIDC correctly: required authorization parameters
//! (PKCE S256 and a nonce are mandatory), client authentication
//! (`client_secret_basic` or `client_secret_post`), the code's redirect URI
//! and the PKCE verifier. What it deliberately does not do: authorization
//! codes are NOT single-use and never expire (see [`Forge`]), and any
//! absolute redirect URI is accepted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openidconnect::url::{Url, form_urlencoded};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value, json};

/// What the next token response does wrong.
///
/// A fault stays in force for every later token response until
/// [`Forge::set_fault`] changes it. It is applied when `/token` answers, and
/// the access token issued with it carries it to `/userinfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A correct ID token.
    None,
    /// `iss` is another URL (the issuer with `/evil` appended, so a prefix
    /// comparison would not catch it).
    WrongIssuer,
    /// `aud` is another client id (the client id with `-other` appended).
    WrongAudience,
    /// `exp` in the past (now − 600), `iat` and `auth_time` now − 1200.
    Expired,
    /// Header `alg` is `none` and the signature is empty (unsigned).
    AlgNone,
    /// Signed by a key that is NOT in the JWKS, under the same `kid`.
    Resigned,
    /// `nonce` differs from the one in the authorization request.
    WrongNonce,
    /// No `nonce` claim.
    MissingNonce,
    /// The ID token is correct, but `/userinfo` answers for another `sub`.
    UserinfoSubMismatch,
    /// `iat` far in the future (now + 3600), `exp` 300 s after that.
    FutureIat,
    /// An `at_hash` that does not match the access token (the signature is
    /// valid: only a relying party that checks `at_hash` notices).
    WrongAtHash,
}

/// The default user claims (see [`Forge::set_claims`]).
pub fn default_claims() -> Value {
    json!({"sub": "mallory", "email": "mallory@example.com"})
}

/// The `sub` `/userinfo` claims under [`Fault::UserinfoSubMismatch`].
pub const IMPOSTOR_SUB: &str = "eve";

/// The `kid` of the signing key (the [`Fault::Resigned`] key uses it too).
pub const KID: &str = "forge-es256-1";

/// A running forging provider.
///
/// Authorization codes are intentionally NOT single-use and do not expire:
/// this is a forger, and redeeming a code twice must be refused by the
/// relying party itself (its login state is one-shot), not by the provider.
/// Tests can replay a code against `/token` and get a fresh token each time.
pub struct Forge {
    /// `http://127.0.0.1:PORT`, exactly as in discovery and the `iss` claim.
    pub issuer: String,
    /// The listening address.
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::AbortHandle,
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct State {
    issuer: String,
    client_id: String,
    client_secret: String,
    /// The key published in the JWKS.
    key: EncodingKey,
    /// A key that is not published, for [`Fault::Resigned`].
    rogue_key: EncodingKey,
    jwks: Value,
    rng: SystemRandom,
    m: Mutex<Mutable>,
}

struct Mutable {
    fault: Fault,
    claims: Map<String, Value>,
    /// Code → what the authorization request bound it to.
    codes: HashMap<String, Grant>,
    /// Access token → the `/userinfo` answer.
    access_tokens: HashMap<String, Value>,
    authorize_log: Vec<Value>,
    token_log: Vec<Value>,
    logout_log: Vec<Value>,
    /// Refresh tokens still valid (they rotate on every use).
    refresh_tokens: std::collections::HashSet<String>,
    /// What a valid refresh request gets instead of new tokens.
    refresh_answer: Option<(u16, Value)>,
    /// ID tokens carry no `auth_time` (as Pocket ID up to 2.9).
    omit_auth_time: bool,
    /// What `/userinfo` answers instead of the claims.
    userinfo_answer: Option<(u16, Value)>,
    /// `prompt_values_supported` in discovery (absent when `None`).
    prompt_values: Option<Vec<String>>,
}

#[derive(Clone)]
struct Grant {
    nonce: String,
    code_challenge: String,
    redirect_uri: String,
}

type Body = Full<Bytes>;

impl Forge {
    /// Starts a forger for one client on 127.0.0.1 (a random port).
    pub async fn start(client_id: &str, client_secret: &str) -> Forge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let rogue = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        assert_eq!(point[0], 4, "uncompressed P-256 point");
        let jwks = json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": B64URL.encode(&point[1..33]),
            "y": B64URL.encode(&point[33..65]),
            "kid": KID,
            "use": "sig",
            "alg": "ES256",
        }]});

        let state = Arc::new(State {
            issuer: issuer.clone(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            key: EncodingKey::from_ec_der(&key.serialize_der()),
            rogue_key: EncodingKey::from_ec_der(&rogue.serialize_der()),
            jwks,
            rng: SystemRandom::new(),
            m: Mutex::new(Mutable {
                fault: Fault::None,
                claims: merged_claims(&Value::Null),
                codes: HashMap::new(),
                access_tokens: HashMap::new(),
                authorize_log: Vec::new(),
                token_log: Vec::new(),
                logout_log: Vec::new(),
                refresh_tokens: Default::default(),
                refresh_answer: None,
                omit_auth_time: false,
                userinfo_answer: None,
                prompt_values: None,
            }),
        });

        let st = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(st.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        })
        .abort_handle();

        Forge {
            issuer,
            addr,
            state,
            server,
        }
    }

    /// Sets what later token responses do wrong.
    pub fn set_fault(&self, f: Fault) {
        self.state.m.lock().unwrap().fault = f;
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.state.m.lock().unwrap().fault
    }

    /// Sets the user claims merged into later ID tokens and `/userinfo`
    /// answers (`sub`, `email`, `email_verified`, `name`, `groups`, …).
    ///
    /// `claims` (a JSON object) is merged over [`default_claims`] (`sub`
    /// "mallory", `email` "mallory@example.com"); each call starts from the
    /// defaults again. A `null` value removes a claim. In the ID token these
    /// claims are merged over the protocol claims, so they can also override
    /// `iss`, `aud`, `exp`, …; the [`Fault`] is applied last.
    pub fn set_claims(&self, claims: Value) {
        assert!(
            claims.is_object() || claims.is_null(),
            "claims must be a JSON object"
        );
        self.state.m.lock().unwrap().claims = merged_claims(&claims);
    }

    /// Makes every later refresh with a valid refresh token answer
    /// `status` with the JSON `body` (`None`: new tokens again).
    pub fn set_refresh_answer(&self, answer: Option<(u16, Value)>) {
        self.state.m.lock().unwrap().refresh_answer = answer;
    }

    /// Makes `/userinfo` answer `status` with the JSON `body` (`None`: the
    /// claims again), as Pocket ID 2.3 answers 404 for a revoked app.
    pub fn set_userinfo_answer(&self, answer: Option<(u16, Value)>) {
        self.state.m.lock().unwrap().userinfo_answer = answer;
    }

    /// Later ID tokens carry no `auth_time` (`true`), as Pocket ID's up to 2.9.
    pub fn omit_auth_time(&self, omit: bool) {
        self.state.m.lock().unwrap().omit_auth_time = omit;
    }

    /// Discovery lists these `prompt_values_supported` (`None`: no such field).
    pub fn set_prompt_values(&self, values: Option<&[&str]>) {
        self.state.m.lock().unwrap().prompt_values =
            values.map(|v| v.iter().map(|s| s.to_string()).collect());
    }

    /// How many `/token` requests used the refresh grant.
    pub fn refresh_requests(&self) -> usize {
        self.token_requests()
            .iter()
            .filter(|t| t["form"]["grant_type"] == "refresh_token")
            .count()
    }

    /// Every `/token` request so far, oldest first: its form fields (`code`,
    /// `code_verifier`, `redirect_uri`, `grant_type`, …) under `form`, plus
    /// `basic_auth` (HTTP Basic client authentication was sent and matched),
    /// `client_auth` (the method that authenticated the client:
    /// "client_secret_basic", "client_secret_post" or null) and `status` (the
    /// HTTP status answered).
    pub fn token_requests(&self) -> Vec<Value> {
        self.state.m.lock().unwrap().token_log.clone()
    }

    /// The query parameters of every `/authorize` request so far (including
    /// refused ones), oldest first, as JSON objects.
    pub fn authorize_requests(&self) -> Vec<Value> {
        self.state.m.lock().unwrap().authorize_log.clone()
    }

    /// The query parameters of every `/logout` (end session) request so far.
    pub fn logout_requests(&self) -> Vec<Value> {
        self.state.m.lock().unwrap().logout_log.clone()
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Value {
        self.state.jwks.clone()
    }
}

/// `claims` merged over the defaults; `null` values remove a claim.
fn merged_claims(claims: &Value) -> Map<String, Value> {
    let mut out = match default_claims() {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    if let Value::Object(m) = claims {
        for (k, v) in m {
            if v.is_null() {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Parses a query or form body; repeated parameters are an error (OAuth 2.0
/// §3.1: parameters MUST NOT be included more than once).
fn parse_params(s: &str) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(s.as_bytes()) {
        if m.insert(k.to_string(), Value::String(v.to_string()))
            .is_some()
        {
            return Err(format!("parameter {k} repeated"));
        }
    }
    Ok(m)
}

fn param<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{msg}\n"))))
        .unwrap()
}

fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, location)
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An OAuth 2.0 error response (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// BASE64URL(SHA-256(verifier)) (RFC 7636 §4.6).
fn s256(verifier: &str) -> String {
    B64URL.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Decodes `Authorization: Basic` client credentials, each part
/// form-urlencoded as RFC 6749 §2.3.1 requires.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

impl State {
    fn random(&self) -> String {
        let mut b = [0u8; 32];
        self.rng.fill(&mut b).unwrap();
        B64URL.encode(b)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return text(StatusCode::BAD_REQUEST, "unreadable body");
        };
        let query = parts.uri.query().unwrap_or("");
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/.well-known/openid-configuration") => {
                json_response(StatusCode::OK, &self.discovery())
            }
            (&Method::GET, "/jwks") => json_response(StatusCode::OK, &self.jwks),
            (&Method::GET, "/authorize") => self.authorize(query),
            (&Method::POST, "/token") => self.token(&parts.headers, &body),
            (&Method::GET, "/userinfo") => self.userinfo(&parts.headers),
            (&Method::GET, "/logout") => self.logout(query),
            (
                _,
                "/.well-known/openid-configuration"
                | "/jwks"
                | "/authorize"
                | "/token"
                | "/userinfo"
                | "/logout",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn discovery(&self) -> Value {
        let i = &self.issuer;
        let mut d = json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "userinfo_endpoint": format!("{i}/userinfo"),
            "jwks_uri": format!("{i}/jwks"),
            "end_session_endpoint": format!("{i}/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["authorization_code"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                "email", "email_verified", "name", "groups"
            ],
        });
        if let Some(p) = &self.m.lock().unwrap().prompt_values {
            d["prompt_values_supported"] = json!(p);
        }
        d
    }

    fn authorize(&self, query: &str) -> Response<Body> {
        let p = match parse_params(query) {
            Ok(p) => p,
            Err(e) => {
                self.m.lock().unwrap().authorize_log.push(json!({}));
                return text(StatusCode::BAD_REQUEST, &e);
            }
        };
        self.m
            .lock()
            .unwrap()
            .authorize_log
            .push(Value::Object(p.clone()));
        for k in [
            "response_type",
            "client_id",
            "redirect_uri",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        ] {
            if param(&p, k).is_none() {
                return text(StatusCode::BAD_REQUEST, &format!("missing parameter {k}"));
            }
        }
        // Every one is present (checked above).
        let get = |k: &'static str| param(&p, k).unwrap();
        if get("response_type") != "code" {
            return text(StatusCode::BAD_REQUEST, "response_type must be code");
        }
        if get("client_id") != self.client_id {
            return text(StatusCode::BAD_REQUEST, "unknown client_id");
        }
        if get("code_challenge_method") != "S256" {
            return text(
                StatusCode::BAD_REQUEST,
                "code_challenge_method must be S256",
            );
        }
        if let Some(scope) = param(&p, "scope")
            && !scope.split(' ').any(|s| s == "openid")
        {
            return text(StatusCode::BAD_REQUEST, "scope must include openid");
        }
        let Ok(mut location) = Url::parse(get("redirect_uri")) else {
            return text(
                StatusCode::BAD_REQUEST,
                "redirect_uri is not an absolute URL",
            );
        };
        if location.fragment().is_some() {
            return text(StatusCode::BAD_REQUEST, "redirect_uri has a fragment");
        }
        let code = self.random();
        self.m.lock().unwrap().codes.insert(
            code.clone(),
            Grant {
                nonce: get("nonce").to_string(),
                code_challenge: get("code_challenge").to_string(),
                redirect_uri: get("redirect_uri").to_string(),
            },
        );
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", get("state"));
        redirect(location.as_str())
    }

    fn token(&self, headers: &http::HeaderMap, body: &[u8]) -> Response<Body> {
        let form = parse_params(&String::from_utf8_lossy(body));
        let basic = headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(basic_credentials);
        let basic_ok = matches!(&basic, Some(Some((id, secret)))
            if *id == self.client_id && *secret == self.client_secret);
        let (resp, client_auth) = match &form {
            Err(e) => (
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e),
                None,
            ),
            Ok(f) => self.token_response(f, basic.as_ref(), basic_ok),
        };
        self.m.lock().unwrap().token_log.push(json!({
            "form": form.unwrap_or_default(),
            "basic_auth": basic_ok,
            "client_auth": client_auth,
            "status": resp.status().as_u16(),
        }));
        resp
    }

    /// How the client authenticated at `/token` (`client_secret_basic` or
    /// `client_secret_post`), or the refusal: 401 with a Basic challenge,
    /// 400 for two methods at once.
    fn client_auth(
        &self,
        f: &Map<String, Value>,
        basic: Option<&Option<(String, String)>>,
        basic_ok: bool,
    ) -> Result<&'static str, Box<Response<Body>>> {
        let post_secret = f.get("client_secret").and_then(Value::as_str);
        let post_id = param(f, "client_id");
        let unauthorized = || {
            let mut r = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"forge\""),
            );
            Err(Box::new(r))
        };
        match basic {
            // RFC 6749 §2.3: one authentication method per request.
            Some(_) if post_secret.is_some() => Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            ))),
            Some(_) if basic_ok => {
                // A client_id in the body must agree with the Basic one.
                if post_id.is_some_and(|id| id != self.client_id) {
                    return unauthorized();
                }
                Ok("client_secret_basic")
            }
            Some(_) => unauthorized(),
            None if post_id == Some(self.client_id.as_str())
                && post_secret == Some(self.client_secret.as_str()) =>
            {
                Ok("client_secret_post")
            }
            None => unauthorized(),
        }
    }

    /// The `/token` answer and the client authentication method that
    /// succeeded, if any.
    fn token_response(
        &self,
        f: &Map<String, Value>,
        basic: Option<&Option<(String, String)>>,
        basic_ok: bool,
    ) -> (Response<Body>, Option<&'static str>) {
        let method = match self.client_auth(f, basic, basic_ok) {
            Ok(m) => m,
            Err(refused) => return (*refused, None),
        };
        let ok = |r| (r, Some(method));
        if param(f, "grant_type") == Some("refresh_token") {
            return ok(self.refresh(f));
        }
        if param(f, "grant_type") != Some("authorization_code") {
            return ok(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code",
            ));
        }
        let invalid_grant = |d: &str| ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d));
        // Codes are not consumed here: NOT single-use, on purpose (see Forge).
        let grant = param(f, "code").and_then(|c| self.m.lock().unwrap().codes.get(c).cloned());
        let Some(grant) = grant else {
            return invalid_grant("unknown code");
        };
        if param(f, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
            return invalid_grant("redirect_uri does not match the authorization request");
        }
        let Some(verifier) = param(f, "code_verifier") else {
            return invalid_grant("missing code_verifier");
        };
        // RFC 7636 §4.1: 43–128 unreserved characters.
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !well_formed || s256(verifier) != grant.code_challenge {
            return invalid_grant("PKCE verification failed");
        }

        let (fault, claims) = {
            let m = self.m.lock().unwrap();
            (m.fault, m.claims.clone())
        };
        let id_token = self.id_token(fault, &claims, &grant.nonce);
        let mut userinfo = claims;
        if fault == Fault::UserinfoSubMismatch {
            userinfo.insert("sub".into(), IMPOSTOR_SUB.into());
        }
        ok(self.tokens(id_token, userinfo))
    }

    /// A token response: a new access token answering `/userinfo` with
    /// `userinfo`, the ID token, and a new refresh token.
    fn tokens(&self, id_token: String, userinfo: Map<String, Value>) -> Response<Body> {
        let access_token = self.random();
        let refresh_token = self.random();
        let mut m = self.m.lock().unwrap();
        m.access_tokens
            .insert(access_token.clone(), Value::Object(userinfo));
        m.refresh_tokens.insert(refresh_token.clone());
        json_response(
            StatusCode::OK,
            &json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
                "refresh_token": refresh_token,
            }),
        )
    }

    /// The refresh grant: unknown or used tokens get `invalid_grant`; a
    /// valid one is used up and answered per [`Forge::set_refresh_answer`].
    fn refresh(&self, f: &Map<String, Value>) -> Response<Body> {
        let (valid, answer, claims) = {
            let mut m = self.m.lock().unwrap();
            let valid = param(f, "refresh_token").is_some_and(|t| m.refresh_tokens.contains(t));
            let answer = m.refresh_answer.clone();
            if valid && answer.is_none() {
                m.refresh_tokens.remove(param(f, "refresh_token").unwrap());
            }
            (valid, answer, m.claims.clone())
        };
        if !valid {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "unknown refresh token",
            );
        }
        if let Some((status, body)) = answer {
            return json_response(StatusCode::from_u16(status).unwrap(), &body);
        }
        // No nonce in a refreshed ID token (OIDC Core 12.2).
        let id = self.id_token_without_nonce(&claims);
        self.tokens(id, claims)
    }

    /// A correct ID token for a refresh: no `nonce`.
    fn id_token_without_nonce(&self, user: &Map<String, Value>) -> String {
        self.id_token(Fault::None, user, "")
    }

    /// The ID token per `fault` (no `nonce` claim when `nonce` is empty).
    fn id_token(&self, fault: Fault, user: &Map<String, Value>, nonce: &str) -> String {
        let t = now();
        let mut c = Map::new();
        c.insert("iss".into(), self.issuer.clone().into());
        c.insert("aud".into(), self.client_id.clone().into());
        c.insert("exp".into(), (t + 300).into());
        c.insert("iat".into(), t.into());
        if !self.m.lock().unwrap().omit_auth_time {
            c.insert("auth_time".into(), t.into());
        }
        if !nonce.is_empty() {
            c.insert("nonce".into(), nonce.into());
        }
        for (k, v) in user {
            c.insert(k.clone(), v.clone());
        }
        let mut key = &self.key;
        match fault {
            Fault::None | Fault::UserinfoSubMismatch | Fault::AlgNone => {}
            Fault::WrongIssuer => {
                c.insert("iss".into(), format!("{}/evil", self.issuer).into());
            }
            Fault::WrongAudience => {
                c.insert("aud".into(), format!("{}-other", self.client_id).into());
            }
            Fault::Expired => {
                c.insert("exp".into(), (t - 600).into());
                c.insert("iat".into(), (t - 1200).into());
                c.insert("auth_time".into(), (t - 1200).into());
            }
            Fault::Resigned => key = &self.rogue_key,
            Fault::WrongNonce => {
                c.insert("nonce".into(), format!("forged-{}", self.random()).into());
            }
            Fault::MissingNonce => {
                c.remove("nonce");
            }
            Fault::WrongAtHash => {
                // Left half of SHA-256 of something that is not the access token.
                let d = ring::digest::digest(&ring::digest::SHA256, b"not-the-access-token");
                c.insert("at_hash".into(), B64URL.encode(&d.as_ref()[..16]).into());
            }
            Fault::FutureIat => {
                c.insert("iat".into(), (t + 3600).into());
                c.insert("exp".into(), (t + 3600 + 300).into());
            }
        }
        let claims = Value::Object(c);
        if fault == Fault::AlgNone {
            // jsonwebtoken cannot produce alg "none": build it by hand, with
            // an empty signature.
            let header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let payload = B64URL.encode(claims.to_string());
            return format!("{header}.{payload}.");
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.to_string());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn userinfo(&self, headers: &http::HeaderMap) -> Response<Body> {
        if let Some((status, body)) = self.m.lock().unwrap().userinfo_answer.clone() {
            return json_response(StatusCode::from_u16(status).unwrap(), &body);
        }
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let claims = token.and_then(|t| self.m.lock().unwrap().access_tokens.get(t).cloned());
        match claims {
            Some(c) => json_response(StatusCode::OK, &c),
            None => {
                let mut r = oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "unknown access token",
                );
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                r
            }
        }
    }

    fn logout(&self, query: &str) -> Response<Body> {
        let p = match parse_params(query) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e),
        };
        self.m
            .lock()
            .unwrap()
            .logout_log
            .push(Value::Object(p.clone()));
        let Some(target) = param(&p, "post_logout_redirect_uri") else {
            return text(StatusCode::OK, "logged out");
        };
        let Ok(mut location) = Url::parse(target) else {
            return text(
                StatusCode::BAD_REQUEST,
                "post_logout_redirect_uri is not an absolute URL",
            );
        };
        if let Some(state) = param(&p, "state") {
            location.query_pairs_mut().append_pair("state", state);
        }
        redirect(location.as_str())
    }
}
