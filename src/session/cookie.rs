//! The session cookie: an HS256 JWT signed with the current secret and
//! verified with the current or any retired one. One secret setting does
//! both jobs, so there is no separate verify key to forget (the
//! caddy-security "failed to parse token" trap).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::digest;
use serde::{Deserialize, Serialize};

use super::Binding;
use crate::config::Secret;

/// Claims carried by the cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCookie {
    /// Session id (the store's key).
    pub sid: String,
    /// Stable id of the node that logged in.
    pub node: String,
    /// Tailnet user of that node.
    pub usr: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
}

/// Why a cookie was not accepted. Shown in logs, never with the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    /// Not a JWT, or a header that is not ours.
    #[error("malformed session cookie")]
    Malformed,
    /// Signed by no key we know (or not signed at all).
    #[error("session cookie signed by an unknown key")]
    UnknownKey,
    /// Signature does not verify.
    #[error("session cookie signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("session cookie expired")]
    Expired,
    /// Presented from another node or tailnet user than the one that logged in.
    #[error("session cookie belongs to another node or user")]
    WrongBinding,
}

struct Key {
    id: String,
    enc: EncodingKey,
    dec: DecodingKey,
}

/// The signing key and the retired keys still accepted.
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keys").field("ids", &ids).finish()
    }
}

fn key_id(secret: &[u8]) -> String {
    // The id names the key without revealing it: a truncated hash.
    let d = digest::digest(&digest::SHA256, secret);
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    /// `current` signs; `current` and `retired` verify.
    pub fn new(current: &Secret, retired: &[Secret]) -> Result<Keys, String> {
        let keys = std::iter::once(current)
            .chain(retired)
            .map(|s| {
                let b = s.expose().as_bytes();
                let bad = |e: jsonwebtoken::errors::Error| format!("session secret unusable: {e}");
                Ok(Key {
                    id: key_id(b),
                    enc: EncodingKey::from_secret(b).map_err(bad)?,
                    dec: DecodingKey::from_secret(b).map_err(bad)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Keys { keys })
    }

    /// Signs a cookie value.
    pub fn sign(&self, c: &SessionCookie) -> String {
        let k = &self.keys[0];
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(k.id.clone());
        jsonwebtoken::encode(&h, c, &k.enc).expect("HS256 over serializable claims cannot fail")
    }

    /// Verifies a cookie value: our algorithm only, a known key, a valid
    /// signature, not expired, and bound to `binding`.
    pub fn verify(
        &self,
        token: &str,
        binding: &Binding,
        now: i64,
    ) -> Result<SessionCookie, CookieError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| CookieError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(CookieError::UnknownKey);
        }
        let kid = header.kid.ok_or(CookieError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(CookieError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::HS256);
        // Expiry is checked below against `now`, so tests and clocks agree.
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<SessionCookie>(token, &key.dec, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => CookieError::BadSignature,
                    _ => CookieError::Malformed,
                }
            })?;
        let c = data.claims;
        if c.exp <= now {
            return Err(CookieError::Expired);
        }
        if c.node != binding.node || c.usr != binding.user {
            return Err(CookieError::WrongBinding);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    fn secret(s: &str) -> Secret {
        SecretRef {
            env: Some("S".into()),
            file: None,
        }
        .load(&|_| Some(s.to_string()))
        .unwrap()
    }

    fn cookie(exp: i64) -> SessionCookie {
        SessionCookie {
            sid: "sid1".into(),
            node: "nodeA".into(),
            usr: "alice@example.com".into(),
            iat: 100,
            exp,
        }
    }

    fn bind(node: &str, user: &str) -> Binding {
        Binding {
            node: node.into(),
            user: user.into(),
        }
    }

    const A: &str = "a-secret-that-is-long-enough-for-hs256-0001";
    const B: &str = "b-secret-that-is-long-enough-for-hs256-0002";

    #[test]
    fn sign_verify_rotate_and_reject() {
        let old = Keys::new(&secret(A), &[]).unwrap();
        let tok = old.sign(&cookie(1000));
        let me = bind("nodeA", "alice@example.com");
        assert_eq!(old.verify(&tok, &me, 500).unwrap().sid, "sid1");

        // Rotation: B signs, A still verifies; without A in the retired list it is unknown.
        let rotated = Keys::new(&secret(B), &[secret(A)]).unwrap();
        assert!(rotated.verify(&tok, &me, 500).is_ok());
        let fresh = rotated.sign(&cookie(1000));
        assert!(rotated.verify(&fresh, &me, 500).is_ok());
        let only_b = Keys::new(&secret(B), &[]).unwrap();
        assert_eq!(only_b.verify(&tok, &me, 500), Err(CookieError::UnknownKey));

        // Expired, wrong node, wrong user.
        assert_eq!(old.verify(&tok, &me, 1000), Err(CookieError::Expired));
        assert_eq!(
            old.verify(&tok, &bind("nodeB", "alice@example.com"), 500),
            Err(CookieError::WrongBinding)
        );
        assert_eq!(
            old.verify(&tok, &bind("nodeA", "bob@example.com"), 500),
            Err(CookieError::WrongBinding)
        );

        // Tampered payload (expiry pushed out) fails the signature.
        let parts: Vec<&str> = tok.split('.').collect();
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&e.decode(parts[1]).unwrap()).unwrap();
        claims["exp"] = 99_999.into();
        let forged = format!("{}.{}.{}", parts[0], e.encode(claims.to_string()), parts[2]);
        assert_eq!(
            old.verify(&forged, &me, 500),
            Err(CookieError::BadSignature)
        );

        // Unsigned (alg none) with our kid, and garbage.
        let none_hdr = e.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            key_id(A.as_bytes())
        ));
        let unsigned = format!("{none_hdr}.{}.", parts[1]);
        assert!(old.verify(&unsigned, &me, 500).is_err());
        assert_eq!(
            old.verify("nonsense", &me, 500),
            Err(CookieError::Malformed)
        );
        assert!(old.verify("", &me, 500).is_err());
    }
}
