//! OpenID Connect relying party, one [`Client`] per configured provider:
//! discovery (cached, refreshed when the provider rotates its keys), the
//! authorization code flow with PKCE S256, state and nonce, full ID-token
//! validation, userinfo, refresh and the RP-initiated logout URL.
//!
//! This module knows nothing about cookies or pages; the portal drives it.
//! Secrets (client secret, tokens) never appear in its errors.

pub(crate) mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClient, CoreClientAuthMethod, CoreGenderClaim, CoreGrantType, CoreIdToken, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, ClientId,
    ClientSecret, CsrfToken, EndSessionUrl, IssuerUrl, LogoutProviderMetadata, LogoutRequest,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
    UserInfoClaims,
};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::session::{now, random_token};
pub(crate) use http::{Dialer, HttpClient};

/// How long discovery (and the JWKS) is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Allowed clock difference for `iat` in the future.
const SKEW: i64 = 120;

/// Discovery fields beyond the library's: `prompt_values_supported`
/// (OpenID Connect Prompt Create), read to know whether the provider honours
/// `prompt=login`. Kept as raw JSON so a malformed value means "not
/// advertised", never a failed discovery.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
struct PromptMetadata {
    #[serde(default)]
    prompt_values_supported: Option<serde_json::Value>,
}
impl AdditionalProviderMetadata for PromptMetadata {}

/// A provider's discovery document, with RP-initiated logout and prompt values.
type Meta = ProviderMetadata<
    LogoutProviderMetadata<PromptMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What went wrong talking to a provider. Messages carry no secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OidcError {
    /// Discovery failed.
    #[error("discovery at {issuer} failed: {reason}")]
    Discovery {
        /// Issuer URL.
        issuer: String,
        reason: String,
    },
    /// The token endpoint refused or failed.
    #[error("token request failed: {0}")]
    Token(String),
    /// The ID token is invalid (issuer, audience, expiry, signature, nonce, …).
    #[error("ID token rejected: {0}")]
    IdToken(String),
    /// Userinfo failed or disagreed with the ID token.
    #[error("userinfo rejected: {0}")]
    UserInfo(String),
    /// The provider's configuration is unusable for us.
    #[error("provider configuration: {0}")]
    Config(String),
}

/// Why userinfo did not answer.
#[derive(Debug)]
enum UserInfoFailure {
    /// The provider refused (a 4xx, or claims for another subject).
    Refused(String),
    /// It could not be asked now (network, 5xx, an unreadable answer).
    Unavailable(String),
}

/// Refresh outcomes that end a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RefreshError {
    /// The provider no longer accepts the refresh token (the session ended
    /// there, or the grant was revoked).
    #[error("the provider ended the session: {0}")]
    Ended(String),
    /// The provider could not be asked (network, 5xx); try again later.
    #[error("refresh not possible now: {0}")]
    Unavailable(String),
}

/// Everything the callback must remember between redirect and callback.
/// Its `Debug` leaves out the PKCE verifier.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// The `state` sent.
    pub(crate) state: String,
    /// The `nonce` sent.
    pub(crate) nonce: String,
    /// The PKCE verifier.
    pub(crate) verifier: String,
    /// `prompt=login` was sent (a new sign-in was asked for).
    pub(crate) prompted_login: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("state", &self.state)
            .field("verifier", &"<redacted>")
            .field("prompted_login", &self.prompted_login)
            .finish_non_exhaustive()
    }
}

/// A successful login. Its `Debug` leaves out the tokens.
#[derive(Clone)]
pub(crate) struct Login {
    /// Subject.
    pub(crate) sub: String,
    /// ID token claims merged with userinfo claims.
    pub(crate) claims: BTreeMap<String, serde_json::Value>,
    /// The raw ID token (for logout's `id_token_hint`).
    pub(crate) id_token: String,
    /// Refresh token, if granted.
    pub(crate) refresh_token: Option<String>,
    /// When the user authenticated, as the provider proved it: the ID
    /// token's `auth_time`, or (only for a provider configured with
    /// `trust_prompt_login` that advertises `prompt=login`) the time of a
    /// sign-in that answered a `prompt=login` request. `None`: unknown,
    /// which never satisfies a step-up.
    pub(crate) auth_time: Option<i64>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("sub", &self.sub)
            .field("claims", &self.claims)
            .field("id_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_time", &self.auth_time)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawClaims {
    #[serde(flatten)]
    map: BTreeMap<String, serde_json::Value>,
}
impl AdditionalClaims for RawClaims {}

/// A configured provider.
pub(crate) struct Client {
    cfg: config::Provider,
    http: HttpClient,
    meta: tokio::sync::Mutex<Option<(Arc<Meta>, Instant)>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("provider", &self.cfg.name)
            .field("issuer", &self.cfg.issuer)
            .finish()
    }
}

fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> (bool, String) {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().to_string();
            let ended = refusal_ends_session(&code);
            let desc = r
                .error_description()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            (ended, format!("{code}{desc}"))
        }
        RequestTokenError::Request(e) => (false, format!("request: {e}")),
        RequestTokenError::Parse(e, _) => (false, format!("unreadable answer: {e}")),
        RequestTokenError::Other(s) => (false, s),
    }
}

/// Whether an OAuth error answer to a refresh ends the session (security
/// invariant 11): every 4xx answer does but `temporarily_unavailable`, the
/// one standard code that says "try later". Providers spell refusals their
/// own way (Pocket ID answers a disabled, deleted or revoked user with
/// `400 {"error":"Refresh token is invalid or expired"}`, not
/// `invalid_grant`), so nothing else may be read as "later". Network
/// failures, 5xx answers (whatever their body: the HTTP client turns them
/// into transport errors) and answers that are not an OAuth error (an HTML
/// page from a proxy) never reach here: they are "unreachable", and the
/// session is kept for a while.
fn refusal_ends_session(code: &str) -> bool {
    code != "temporarily_unavailable"
}

impl Client {
    /// A client for `cfg`, with its HTTP client.
    pub(crate) fn new(cfg: config::Provider, http: HttpClient) -> Client {
        Client {
            cfg,
            http,
            meta: tokio::sync::Mutex::new(None),
        }
    }

    /// The provider's configuration.
    pub(crate) fn config(&self) -> &config::Provider {
        &self.cfg
    }

    async fn metadata(&self, force: bool) -> Result<Arc<Meta>, OidcError> {
        let mut cache = self.meta.lock().await;
        if let Some((m, at)) = cache.as_ref()
            && !force
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(m.clone());
        }
        let derr = |reason: String| OidcError::Discovery {
            issuer: self.cfg.issuer.clone(),
            reason,
        };
        let issuer = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| derr(e.to_string()))?;
        let m = Meta::discover_async(issuer, &self.http)
            .await
            .map_err(|e| derr(error_chain(&e)))?;
        let m = Arc::new(m);
        *cache = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    fn client(&self, meta: &Meta, redirect: &str) -> Result<Core, OidcError> {
        let c = CoreClient::from_provider_metadata(
            meta.clone(),
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(
            RedirectUrl::new(redirect.to_string()).map_err(|e| OidcError::Config(e.to_string()))?,
        );
        Ok(c)
    }

    /// The URL to send the browser to, and what to keep until the callback.
    /// `max_age` asks for an authentication at most that old (step-up);
    /// `fresh` forces a new sign-in (`prompt=login`).
    pub(crate) async fn authorize_url(
        &self,
        redirect: &str,
        max_age: Option<u64>,
        fresh: bool,
    ) -> Result<(String, Pending), OidcError> {
        let meta = self.metadata(false).await?;
        let client = self.client(&meta, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let nonce = random_token();
        let (s2, n2) = (state.clone(), nonce.clone());
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(s2),
            move || Nonce::new(n2),
        );
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        req = req.set_pkce_challenge(challenge);
        if let Some(a) = max_age {
            req = req.set_max_age(Duration::from_secs(a));
        }
        let prompted_login = fresh || max_age.is_some();
        if prompted_login {
            req = req.add_prompt(CoreAuthPrompt::Login);
        }
        let (url, _, _) = req.url();
        Ok((
            url.to_string(),
            Pending {
                state,
                nonce,
                verifier: verifier.secret().clone(),
                prompted_login,
            },
        ))
    }

    /// Exchanges the code and validates everything that came back.
    pub(crate) async fn finish(
        &self,
        code: &str,
        pending: &Pending,
        redirect: &str,
    ) -> Result<Login, OidcError> {
        let meta = self.metadata(false).await?;
        let client = self.client(&meta, redirect)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Token(token_error(e).1))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response has no id_token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let verified =
            match self.verify(&client, id_token, Some(&nonce), Some(token.access_token())) {
                Err(e) if e.contains("key") || e.contains("signature") => {
                    // The provider may have rotated its keys: fetch them again once.
                    let meta = self.metadata(true).await?;
                    let client = self.client(&meta, redirect)?;
                    self.verify(&client, id_token, Some(&nonce), Some(token.access_token()))
                        .map(|c| (c, client))
                }
                r => r.map(|c| (c, client)),
            };
        let (claims, client) = verified.map_err(OidcError::IdToken)?;
        // Only the signed ID token may say when the user authenticated.
        let signed_auth_time = claims.get("auth_time").and_then(|v| v.as_i64());
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| OidcError::IdToken("no sub".into()))?
            .to_string();
        let claims = self
            .with_userinfo(&client, claims, &sub, token.access_token())
            .await
            .map_err(|e| match e {
                UserInfoFailure::Refused(m) | UserInfoFailure::Unavailable(m) => {
                    OidcError::UserInfo(m)
                }
            })?;
        let auth_time = match signed_auth_time {
            Some(t) => Some(t),
            None if pending.prompted_login && self.cfg.trust_prompt_login => {
                // Explicitly trusted (config) and advertised (discovery):
                // this sign-in answered our `prompt=login` just now.
                advertises_prompt_login(&meta).then(now)
            }
            None => None,
        };
        Ok(Login {
            sub,
            claims,
            id_token: id_token.to_string(),
            refresh_token: token.refresh_token().map(|r| r.secret().clone()),
            auth_time,
        })
    }

    /// Verified ID-token claims of `sub` with the userinfo answer added
    /// (userinfo adds to, never replaces, what the signed ID token says).
    async fn with_userinfo(
        &self,
        client: &Core,
        mut claims: BTreeMap<String, serde_json::Value>,
        sub: &str,
        access: &openidconnect::AccessToken,
    ) -> Result<BTreeMap<String, serde_json::Value>, UserInfoFailure> {
        if client.user_info_url().is_some() {
            let info: UserInfoClaims<RawClaims, CoreGenderClaim> = client
                .user_info(
                    access.clone(),
                    Some(openidconnect::SubjectIdentifier::new(sub.to_string())),
                )
                .map_err(|e| UserInfoFailure::Unavailable(e.to_string()))?
                .request_async(&self.http)
                .await
                .map_err(|e| {
                    let m = format!("userinfo: {}", error_chain(&e));
                    match e {
                        // The provider refuses the access token it just
                        // issued (Pocket ID 2.3 answers 404 for a revoked
                        // app), or answers for someone else.
                        openidconnect::UserInfoError::Response(status, ..)
                            if status.is_client_error() =>
                        {
                            UserInfoFailure::Refused(m)
                        }
                        openidconnect::UserInfoError::ClaimsVerification(_) => {
                            UserInfoFailure::Refused(m)
                        }
                        _ => UserInfoFailure::Unavailable(m),
                    }
                })?;
            for (k, v) in info.additional_claims().map.clone() {
                claims.entry(k).or_insert(v);
            }
            for (k, v) in standard_claims(&info) {
                claims.entry(k).or_insert(v);
            }
        }
        Ok(claims)
    }

    /// Verifies an ID token (and `at_hash` when present); returns its raw claims.
    fn verify(
        &self,
        client: &Core,
        id_token: &CoreIdToken,
        nonce: Option<&Nonce>,
        access: Option<&openidconnect::AccessToken>,
    ) -> Result<BTreeMap<String, serde_json::Value>, String> {
        let verifier = verifier(client);
        let claims = match nonce {
            Some(n) => id_token.claims(&verifier, n),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| error_chain(&e))?;
        if let Some(expected) = claims.access_token_hash()
            && let Some(access) = access
        {
            check_at_hash(id_token, &verifier, access, expected)?;
        }
        raw_payload(&id_token.to_string())
    }

    /// Uses a refresh token. On success returns the new refresh token (if
    /// rotated) and, when the provider sent a new ID token, its claims.
    pub(crate) async fn refresh(
        &self,
        refresh_token: &str,
        sub: &str,
    ) -> Result<
        (
            Option<String>,
            Option<(String, BTreeMap<String, serde_json::Value>)>,
        ),
        RefreshError,
    > {
        let meta = self
            .metadata(false)
            .await
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        // The redirect URI is not used by the refresh grant.
        let client = self
            .client(&meta, "https://unused.invalid/")
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let rt = RefreshToken::new(refresh_token.to_string());
        let token = client
            .exchange_refresh_token(&rt)
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| match token_error(e) {
                (true, m) => RefreshError::Ended(m),
                (false, m) => RefreshError::Unavailable(m),
            })?;
        let new_rt = token.refresh_token().map(|r| r.secret().clone());
        let id = match token.id_token() {
            Some(idt) => {
                let claims = self
                    .verify(&client, idt, None, Some(token.access_token()))
                    .map_err(|e| {
                        RefreshError::Ended(format!("refreshed ID token rejected: {e}"))
                    })?;
                if claims.get("sub").and_then(|v| v.as_str()) != Some(sub) {
                    return Err(RefreshError::Ended(
                        "refreshed ID token names another subject".into(),
                    ));
                }
                // The whole claim set again (ID token and userinfo), so a
                // claim the provider dropped (the last group removed) is
                // dropped here too. A userinfo that cannot be asked now
                // must not lose the rotated refresh token: the session is
                // refreshed, its claims stay as they were until next time.
                match self
                    .with_userinfo(&client, claims, sub, token.access_token())
                    .await
                {
                    Ok(claims) => Some((idt.to_string(), claims)),
                    Err(UserInfoFailure::Refused(m)) => return Err(RefreshError::Ended(m)),
                    Err(UserInfoFailure::Unavailable(m)) => {
                        tracing::warn!(provider = %self.cfg.name, reason = %m, "refreshed, but the claims could not be updated now");
                        None
                    }
                }
            }
            None => None,
        };
        Ok((new_rt, id))
    }

    /// The provider's end-session URL for RP-initiated logout, if it has one.
    pub(crate) async fn end_session_url(
        &self,
        id_token_hint: &str,
        post_logout: &str,
        state: &str,
    ) -> Option<String> {
        let meta = match self.metadata(false).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(provider = %self.cfg.name, error = %e, "no end-session URL");
                return None;
            }
        };
        let end: EndSessionUrl = meta.additional_metadata().end_session_endpoint.clone()?;
        let mut req = LogoutRequest::from(end)
            .set_client_id(ClientId::new(self.cfg.client_id.clone()))
            .set_state(CsrfToken::new(state.to_string()));
        if let Ok(t) = id_token_hint.parse::<CoreIdToken>() {
            req = req.set_id_token_hint(&t);
        }
        if let Ok(u) = PostLogoutRedirectUrl::new(post_logout.to_string()) {
            req = req.set_post_logout_redirect_uri(u);
        }
        Some(req.http_get_url().to_string())
    }
}

/// Whether discovery lists `login` in `prompt_values_supported`.
fn advertises_prompt_login(meta: &Meta) -> bool {
    meta.additional_metadata()
        .additional_metadata
        .prompt_values_supported
        .as_ref()
        .and_then(|v| v.as_array())
        .is_some_and(|v| v.iter().any(|p| p == "login"))
}

type Core = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The library's ID-token verifier (issuer, audience, expiry, signature
/// with an advertised algorithm, never `none`) plus a check that `iat` is
/// not in the future.
fn verifier(client: &Core) -> openidconnect::core::CoreIdTokenVerifier<'_> {
    let t = now();
    client
        .id_token_verifier()
        .set_issue_time_verifier_fn(move |iat| {
            if iat.timestamp() > t + SKEW {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        })
}

/// `at_hash`, when the ID token carries it, must match the access token.
fn check_at_hash(
    id_token: &CoreIdToken,
    verifier: &openidconnect::core::CoreIdTokenVerifier<'_>,
    access: &openidconnect::AccessToken,
    expected: &AccessTokenHash,
) -> Result<(), String> {
    let alg = id_token.signing_alg().map_err(|e| e.to_string())?;
    let key = id_token.signing_key(verifier).map_err(|e| e.to_string())?;
    let got = AccessTokenHash::from_token(access, alg, key).map_err(|e| e.to_string())?;
    if &got != expected {
        return Err("at_hash does not match the access token".into());
    }
    Ok(())
}

fn standard_claims(
    info: &UserInfoClaims<RawClaims, CoreGenderClaim>,
) -> Vec<(String, serde_json::Value)> {
    let mut v = Vec::new();
    if let Some(e) = info.email() {
        v.push(("email".to_string(), serde_json::json!(e.as_str())));
    }
    if let Some(b) = info.email_verified() {
        v.push(("email_verified".to_string(), serde_json::json!(b)));
    }
    if let Some(n) = info.name().and_then(|n| n.get(None)) {
        v.push(("name".to_string(), serde_json::json!(n.as_str())));
    }
    if let Some(u) = info.preferred_username() {
        v.push((
            "preferred_username".to_string(),
            serde_json::json!(u.as_str()),
        ));
    }
    v
}

/// The payload of a JWT whose signature was already verified.
fn raw_payload(jwt: &str) -> Result<BTreeMap<String, serde_json::Value>, String> {
    use base64::Engine;
    let part = jwt.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_says(body: &str) -> (bool, String) {
        let r: openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType> =
            serde_json::from_str(body).unwrap();
        token_error::<std::io::Error>(RequestTokenError::ServerResponse(r))
    }

    #[test]
    fn prompt_login_counts_only_when_discovery_lists_it() {
        let meta = |extra: serde_json::Value| -> Meta {
            let mut d = serde_json::json!({
                "issuer": "https://auth.example.ts.net",
                "authorization_endpoint": "https://auth.example.ts.net/authorize",
                "token_endpoint": "https://auth.example.ts.net/api/oidc/token",
                "jwks_uri": "https://auth.example.ts.net/.well-known/jwks.json",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            });
            for (k, v) in extra.as_object().unwrap() {
                d[k] = v.clone();
            }
            serde_json::from_value(d).expect("discovery parses")
        };
        use serde_json::json;
        // Pocket ID 2.9 lists it; 2.3 has no such field.
        assert!(advertises_prompt_login(&meta(
            json!({"prompt_values_supported": ["none", "login", "consent", "select_account"]})
        )));
        assert!(!advertises_prompt_login(&meta(json!({}))));
        assert!(!advertises_prompt_login(&meta(
            json!({"prompt_values_supported": ["none", "consent"]})
        )));
        // Malformed: not advertised, and discovery still works.
        assert!(!advertises_prompt_login(&meta(
            json!({"prompt_values_supported": "login"})
        )));
        assert!(!advertises_prompt_login(&meta(
            json!({"prompt_values_supported": [1, null]})
        )));
    }

    #[test]
    fn debug_never_shows_the_verifier_or_tokens() {
        let p = Pending {
            state: "st".into(),
            nonce: "n".into(),
            verifier: "verifier-secret".into(),
            prompted_login: false,
        };
        let l = Login {
            sub: "alice".into(),
            claims: BTreeMap::new(),
            id_token: "id-secret".into(),
            refresh_token: Some("refresh-secret".into()),
            auth_time: None,
        };
        let d = format!("{p:?} {l:?}");
        assert!(d.contains("alice") && d.contains("<redacted>"), "{d}");
        assert!(!d.contains("secret"), "{d}");
    }

    #[test]
    fn every_refusal_ends_the_session_but_try_later() {
        for body in [
            r#"{"error":"invalid_grant"}"#,
            // Pocket ID (v2.3 to v2.9) for a disabled or deleted user.
            r#"{"error":"Refresh token is invalid or expired"}"#,
            r#"{"error":"invalid_client"}"#,
            r#"{"error":"unauthorized_client","error_description":"access revoked"}"#,
            // A 5xx never gets here; in a 4xx it is not a "later".
            r#"{"error":"server_error"}"#,
        ] {
            assert!(server_says(body).0, "{body} must end the session");
        }
        assert!(
            !server_says(r#"{"error":"temporarily_unavailable"}"#).0,
            "temporarily_unavailable means try later"
        );
        let (_, why) = server_says(r#"{"error":"invalid_grant","error_description":"gone"}"#);
        assert_eq!(why, "invalid_grant (gone)");
    }

    #[test]
    fn unreadable_answers_and_network_failures_keep_the_session() {
        let e = RequestTokenError::<
            std::io::Error,
            openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
        >::Other("empty".into());
        assert!(!token_error(e).0);
        let e = RequestTokenError::<
            std::io::Error,
            openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
        >::Request(std::io::Error::other("connection refused"));
        assert!(!token_error(e).0);
    }
}
