//! Signed identity assertions for upstreams that want proof rather than
//! headers (as Pomerium, Cloudflare Access and Google IAP give): a
//! short-lived ES256 JWT per request, with a `kid`, and the public keys as
//! a JWKS document.
//!
//! Keys live in one file (`assertion-keys.json`, mode 0600) in a state
//! directory, newest first. At start and on every upkeep tick, a key older
//! than `rotate_after` is replaced by a new one; the old key stays in the
//! JWKS (never used to sign) for `keep_retired`, so an upstream that cached
//! the document still verifies assertions signed just before the rotation
//! and learns the new key on its next fetch. A key file that cannot be read
//! or parsed is an error, never silently replaced: upstreams pinned to it
//! would fail without saying why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// The header an upstream reads the assertion from (client copies are
/// removed by header hygiene, like every identity header).
pub(crate) const HEADER: &str = "tailpass-jwt-assertion";

/// What went wrong with the keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a tailpass assertion key file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating a P-256 key: {0}")]
    Generate(String),
}

/// A private key in PKCS#8 PEM; never shown by `Debug`.
#[derive(Serialize, Deserialize, Clone)]
#[serde(transparent)]
struct Pem(String);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<private key>")
    }
}

impl Pem {
    fn expose(&self) -> &str {
        &self.0
    }
}

/// One key as stored: the private key and when it was made.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct StoredKey {
    created: i64,
    pem: Pem,
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// A usable key: its id, signing half and public JWK.
struct Key {
    kid: String,
    created: i64,
    signing: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

impl Key {
    fn from_stored(s: &StoredKey) -> Result<Key, String> {
        let kp = rcgen::KeyPair::from_pem(s.pem.expose()).map_err(|e| e.to_string())?;
        if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("not a P-256 key".into());
        }
        let raw = kp.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let (x, y) = (B64.encode(&raw[1..33]), B64.encode(&raw[33..65]));
        // RFC 7638 thumbprint: the required members, sorted, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()));
        let signing = jsonwebtoken::EncodingKey::from_ec_pem(s.pem.expose().as_bytes())
            .map_err(|e| e.to_string())?;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        });
        Ok(Key {
            kid,
            created: s.created,
            signing,
            jwk,
        })
    }
}

/// The keys in service: the first signs, all are published.
struct KeySet {
    keys: Vec<Key>,
}

/// How keys turn over.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rotation {
    /// A signing key older than this is replaced.
    pub(crate) rotate_after: Duration,
    /// A replaced key stays in the JWKS this long.
    pub(crate) keep_retired: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            rotate_after: Duration::from_secs(30 * 86400),
            keep_retired: Duration::from_secs(7 * 86400),
        }
    }
}

/// Who the assertion is about, from the verified identities only.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub(crate) struct Subject {
    /// The provider's `sub` when signed in, else the tailnet user's login.
    pub(crate) sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<String>,
    pub(crate) roles: Vec<String>,
    /// The tailnet user (login name); absent for tagged nodes and Funnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tailnet_user: Option<String>,
    /// The calling node's name; absent off the tailnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tailnet_node: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tailnet_tags: Vec<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(flatten)]
    subject: &'a Subject,
}

/// Signs assertions and serves the JWKS; cheap to clone.
#[derive(Clone)]
pub(crate) struct Signer {
    path: PathBuf,
    rotation: Rotation,
    set: Arc<ArcSwap<KeySet>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("path", &self.path)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Opens (or creates) the key file in `dir` and rotates if due.
    pub(crate) fn open(dir: &Path, rotation: Rotation, now: i64) -> Result<Signer, KeyError> {
        let path = dir.join("assertion-keys.json");
        let file = read(&path)?;
        let s = Signer {
            path,
            rotation,
            set: Arc::new(ArcSwap::from_pointee(KeySet { keys: Vec::new() })),
        };
        s.install(file, now)?;
        Ok(s)
    }

    /// Rotates if the signing key is due, drops retired keys past their
    /// time; writes the file when anything changed. True if it changed.
    pub(crate) fn upkeep(&self, now: i64) -> Result<bool, KeyError> {
        self.install(read(&self.path)?, now)
    }

    fn install(&self, mut file: KeyFile, now: i64) -> Result<bool, KeyError> {
        let rotate = self.rotation.rotate_after.as_secs() as i64;
        let keep = self.rotation.keep_retired.as_secs() as i64;
        let mut changed = false;
        if file.keys.first().is_none_or(|k| now - k.created >= rotate) {
            file.keys.insert(0, generate(now)?);
            changed = true;
        }
        // A retired key (every one after the first) is kept for `keep`
        // after its successor was made.
        let mut successor = file.keys[0].created;
        let before = file.keys.len();
        let mut kept = vec![file.keys[0].clone()];
        for k in &file.keys[1..] {
            if now - successor < keep {
                kept.push(k.clone());
            }
            successor = k.created;
        }
        changed |= kept.len() != before;
        file.keys = kept;
        let keys = file
            .keys
            .iter()
            .map(Key::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| KeyError::Corrupt {
                path: self.path.clone(),
                reason,
            })?;
        if changed {
            write(&self.path, &file)?;
            tracing::info!(path = %self.path.display(), kid = %keys[0].kid, published = keys.len(), "assertion signing key in service");
        }
        self.set.store(Arc::new(KeySet { keys }));
        Ok(changed)
    }

    /// The id of the key that signs now.
    pub(crate) fn kid(&self) -> String {
        self.set.load().keys[0].kid.clone()
    }

    /// An assertion about `subject` for `audience` (the route's URL),
    /// valid from `now` for `lifetime`.
    pub(crate) fn sign(
        &self,
        issuer: &str,
        audience: &str,
        subject: &Subject,
        now: i64,
        lifetime: Duration,
    ) -> String {
        let set = self.set.load();
        let key = &set.keys[0];
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let claims = Claims {
            iss: issuer,
            aud: audience,
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs() as i64,
            subject,
        };
        // Serializing plain strings and signing with a key that parsed
        // cannot fail; an empty header value would make the upstream refuse.
        jsonwebtoken::encode(&header, &claims, &key.signing).unwrap_or_default()
    }

    /// The JWKS document: every published key.
    pub(crate) fn jwks(&self) -> String {
        let set = self.set.load();
        let keys: Vec<&serde_json::Value> = set.keys.iter().map(|k| &k.jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// When the signing key was made (Unix seconds).
    pub(crate) fn created(&self) -> i64 {
        self.set.load().keys[0].created
    }
}

fn generate(now: i64) -> Result<StoredKey, KeyError> {
    let kp = rcgen::KeyPair::generate().map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(StoredKey {
        created: now,
        pem: Pem(kp.serialize_pem()),
    })
}

fn read(path: &Path) -> Result<KeyFile, KeyError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| KeyError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(source) => Err(KeyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the key file (mode 0600) through a temporary file and a rename,
/// so a crash never leaves half a file.
fn write(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86400;

    fn verify(s: &Signer, token: &str, aud: &str) -> serde_json::Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&s.jwks()).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid published");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&["https://gw.example.ts.net"]);
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
            tailnet_node: Some("laptop".into()),
            ..Subject::default()
        }
    }

    #[test]
    fn assertions_verify_with_the_published_key_and_carry_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::open(dir.path(), Rotation::default(), 1_000).unwrap();
        let t = s.sign(
            "https://gw.example.ts.net",
            "https://gw.example.ts.net/ttyd",
            &subject(),
            1_000,
            Duration::from_secs(60),
        );
        let c = verify(&s, &t, "https://gw.example.ts.net/ttyd");
        assert_eq!(c["sub"], "u-1");
        assert_eq!(c["roles"][0], "admin");
        assert_eq!(c["tailnet_node"], "laptop");
        assert_eq!(c["exp"], 1_060);
        assert!(c.get("groups").is_none(), "empty lists are left out");
        let mode = std::fs::metadata(dir.path().join("assertion-keys.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn keys_persist_rotate_and_retire() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            rotate_after: Duration::from_secs(30 * DAY as u64),
            keep_retired: Duration::from_secs(7 * DAY as u64),
        };
        let s = Signer::open(dir.path(), rot, 0).unwrap();
        let first = s.kid();
        // Reopened: the same key.
        let again = Signer::open(dir.path(), rot, DAY).unwrap();
        assert_eq!(again.kid(), first);
        assert!(!again.upkeep(2 * DAY).unwrap());
        // Due: a new signing key, the old one still published.
        assert!(again.upkeep(30 * DAY).unwrap());
        assert_ne!(again.kid(), first);
        let jwks: serde_json::Value = serde_json::from_str(&again.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [again.kid().as_str(), first.as_str()]);
        // A token signed by the old key just before still verifies.
        let old = s.sign("https://gw.example.ts.net", "a", &subject(), 0, Duration::from_secs(60));
        verify(&again, &old, "a");
        // Past keep_retired: gone.
        assert!(again.upkeep(38 * DAY).unwrap());
        let jwks: serde_json::Value = serde_json::from_str(&again.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("assertion-keys.json");
        std::fs::write(&p, "{ not json").unwrap();
        let e = Signer::open(dir.path(), Rotation::default(), 0).unwrap_err();
        assert!(e.to_string().contains("assertion-keys.json"), "{e}");
        let bad_key = r#"{"keys":[{"created":0,"pem":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}]}"#;
        std::fs::write(&p, bad_key).unwrap();
        assert!(Signer::open(dir.path(), Rotation::default(), 0).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), bad_key, "left as it was");
    }

    #[test]
    fn a_tampered_assertion_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::open(dir.path(), Rotation::default(), 1_000).unwrap();
        let t = s.sign("https://gw.example.ts.net", "a", &subject(), 1_000, Duration::from_secs(60));
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
}
