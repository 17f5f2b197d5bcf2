//! Signed identity assertions for upstreams that want proof rather than
//! headers (as Pomerium, Cloudflare Access and Google IAP give): a
//! short-lived ES256 JWT per request, with a `kid`, and the public keys as
//! a JWKS document (`/.well-known/jwks.json` on the admin listener, and
//! optionally a file). The whole design, for operators and upstream
//! authors, is in `docs/assertion.md`.
//!
//! Keys live in one file (`assertion-keys.json`, mode 0600), newest first:
//! the first key signs, every key is published. The running tailpass only
//! reads that file (it writes it once, when it does not exist yet);
//! `tailpass assertion rotate` is the one writer that turns keys over, so
//! two writers can never lose each other's key. A rotation puts a new key
//! first and keeps the previous one (still signing in a running tailpass
//! until it reloads) and any key retired less than [`KEEP_RETIRED`] ago, so
//! assertions signed just before a rotation keep verifying. A key file that
//! cannot be read or parsed is an error, never silently replaced: upstreams
//! pinned to it would fail without saying why.
//!
//! Signing uses ring directly (`ECDSA_P256_SHA256_FIXED_SIGNING`, the JOSE
//! `r || s` form); the JOSE header of each key is encoded once, so a
//! request costs one small JSON serialization and one signature.
//!
//! What it must not do: take any claim from what the client sends (every
//! claim comes from the connection's WhoIs answer or the verified session),
//! or sign for callers without an identity (Funnel, the public and
//! loopback listeners).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as PEM_B64, URL_SAFE_NO_PAD as B64};
use http::{HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::identity::PeerIdentity;
use crate::proxy::LoginHeaders;

/// The default header an upstream reads the assertion from (client copies
/// are removed by header hygiene on every route, like identity headers).
pub(crate) const HEADER: &str = "tailpass-jwt-assertion";

/// How long a retired key stays published after its successor was made.
/// The previous key is kept whatever its age (a running tailpass signs
/// with it until it reloads).
pub(crate) const KEEP_RETIRED: Duration = Duration::from_secs(24 * 3600);

/// What went wrong with the keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum KeyError {
    /// The key file (or the JWKS file) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is there but is not what tailpass wrote.
    #[error("{path}: not a tailpass assertion key file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The system's random source failed.
    #[error("generating a P-256 key failed")]
    Generate,
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
    fn from_der(der: &[u8]) -> Pem {
        let b = PEM_B64.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        Pem(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        ))
    }

    fn der(&self) -> Result<Vec<u8>, String> {
        let body: String = (self.0.lines())
            .filter(|l| !l.starts_with("-----"))
            .collect();
        PEM_B64.decode(body.trim()).map_err(|e| e.to_string())
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

/// A usable key: its id, signing half, public JWK and encoded JOSE header.
struct Key {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: serde_json::Value,
    /// `base64url({"alg":"ES256","kid":…,"typ":"JWT"})`, made once.
    header: String,
}

impl Key {
    fn from_stored(s: &StoredKey, rng: &SystemRandom) -> Result<Key, String> {
        let der = s.pem.der()?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, rng)
            .map_err(|e| format!("not a P-256 private key ({e})"))?;
        let raw = pair.public_key().as_ref();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let (x, y) = (B64.encode(&raw[1..33]), B64.encode(&raw[33..65]));
        // RFC 7638 thumbprint: the required members, sorted, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        });
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        Ok(Key {
            header: B64.encode(header.to_string()),
            kid,
            pair,
            jwk,
        })
    }
}

/// Who the assertion is about, from the verified identities only.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub(crate) struct Subject {
    /// The provider's `sub` when signed in, else the tailnet user's login,
    /// else (a tagged node) the node's name.
    pub(crate) sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<String>,
    pub(crate) roles: Vec<String>,
    /// The tailnet user (login name); absent for tagged nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tailnet_user: Option<String>,
    /// The calling node's name.
    pub(crate) tailnet_node: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tailnet_tags: Vec<String>,
}

impl Subject {
    /// The subject of a request: the WhoIs answer of its connection and,
    /// when signed in, the session. `None` off the tailnet (Funnel, the
    /// public and loopback listeners): nobody to vouch for.
    pub(crate) fn of(who: &PeerIdentity, login: Option<&LoginHeaders>) -> Option<Subject> {
        let p = who.principal()?;
        let node = &p.whois().node;
        let user = p.user();
        let tailnet_user = user.map(|u| u.login_name.clone());
        let sub = match login {
            Some(l) => l.user.clone(),
            None => tailnet_user.clone().unwrap_or_else(|| node.name.clone()),
        };
        Some(Subject {
            sub,
            email: login.and_then(|l| l.email.clone()),
            name: login
                .and_then(|l| l.name.clone())
                .or_else(|| user.map(|u| u.display_name.clone())),
            groups: login.map(|l| l.groups.clone()).unwrap_or_default(),
            roles: login.map(|l| l.roles.clone()).unwrap_or_default(),
            tailnet_user,
            tailnet_node: node.name.clone(),
            tailnet_tags: node.tags.clone(),
        })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    #[serde(flatten)]
    subject: &'a Subject,
}

/// Signs assertions and serves the JWKS; cheap to clone (clones share the
/// keys, so a reload seen by one is seen by all).
#[derive(Clone)]
pub(crate) struct Signer {
    path: PathBuf,
    rng: SystemRandom,
    set: Arc<ArcSwap<Vec<Key>>>,
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
    /// Opens the key file at `path`; creates it (one new key) when it does
    /// not exist.
    pub(crate) fn open(path: &Path, now: i64) -> Result<Signer, KeyError> {
        let rng = SystemRandom::new();
        let mut file = read(path)?;
        if file.keys.is_empty() {
            file.keys.push(generate(&rng, now)?);
            write_keys(path, &file)?;
            tracing::info!(path = %path.display(), "assertion key file created");
        }
        let keys = parse(path, &file, &rng)?;
        Ok(Signer {
            path: path.to_path_buf(),
            rng,
            set: Arc::new(ArcSwap::from_pointee(keys)),
        })
    }

    /// The key file this signer reads.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the key file again (after `tailpass assertion rotate`): the
    /// first key signs from now on. On error the keys in use stay.
    pub(crate) fn reload(&self) -> Result<(), KeyError> {
        let file = read(&self.path)?;
        if file.keys.is_empty() {
            return Err(KeyError::Corrupt {
                path: self.path.clone(),
                reason: "no keys".into(),
            });
        }
        let keys = parse(&self.path, &file, &self.rng)?;
        if keys[0].kid != self.kid() {
            tracing::info!(path = %self.path.display(), kid = %keys[0].kid, published = keys.len(), "assertion signing key in service");
        }
        self.set.store(Arc::new(keys));
        Ok(())
    }

    /// The id of the key that signs now.
    pub(crate) fn kid(&self) -> String {
        self.set.load()[0].kid.clone()
    }

    /// A compact JWS over `claims`, or `None` if signing failed (the
    /// upstream then gets no assertion rather than a broken one).
    fn sign_claims(&self, claims: &Claims<'_>) -> Option<String> {
        let keys = self.set.load();
        let key = &keys[0];
        let body = serde_json::to_vec(claims).ok()?;
        let mut jws = format!("{}.{}", key.header, B64.encode(body));
        let sig = key.pair.sign(&self.rng, jws.as_bytes()).ok()?;
        jws.push('.');
        jws.push_str(&B64.encode(sig.as_ref()));
        Some(jws)
    }

    /// An assertion about `subject` for `audience` by `issuer`, valid from
    /// `now` for `lifetime`, with a fresh random `jti`.
    pub(crate) fn sign(
        &self,
        issuer: &str,
        audience: &str,
        subject: &Subject,
        now: i64,
        lifetime: Duration,
    ) -> Option<String> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).ok()?;
        let jti = B64.encode(id);
        self.sign_claims(&Claims {
            iss: issuer,
            aud: audience,
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs() as i64,
            jti: &jti,
            subject,
        })
    }

    /// The JWKS document: every published key, the signing one first.
    pub(crate) fn jwks(&self) -> String {
        let keys = self.set.load();
        let keys: Vec<&serde_json::Value> = keys.iter().map(|k| &k.jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// Writes the JWKS to `path` (mode 0644, through a rename).
    pub(crate) fn write_jwks(&self, path: &Path) -> Result<(), KeyError> {
        write_atomic(path, self.jwks().as_bytes(), 0o644)
    }
}

/// What `tailpass assertion rotate` did.
#[derive(Debug)]
pub(crate) struct Rotated {
    /// The new signing key.
    pub(crate) kid: String,
    /// Every key now published, the new one first.
    pub(crate) published: Vec<String>,
    /// Keys dropped (retired more than [`KEEP_RETIRED`] ago).
    pub(crate) dropped: usize,
}

/// Puts a new key first in the key file at `path` (created if missing),
/// keeps the previous key and those retired less than `keep` ago.
pub(crate) fn rotate(path: &Path, now: i64, keep: Duration) -> Result<Rotated, KeyError> {
    let rng = SystemRandom::new();
    let mut file = read(path)?;
    // Refuse to rotate over a damaged file: parsing first says why.
    parse(path, &file, &rng)?;
    file.keys.insert(0, generate(&rng, now)?);
    // A retired key (every one after the first) stays for `keep` after its
    // successor was made; the previous key stays in any case.
    let keep = keep.as_secs() as i64;
    let before = file.keys.len();
    let mut kept = file.keys[..file.keys.len().min(2)].to_vec();
    for pair in file.keys.windows(2).skip(1) {
        if now - pair[0].created < keep {
            kept.push(pair[1].clone());
        }
    }
    file.keys = kept;
    let keys = parse(path, &file, &rng)?;
    write_keys(path, &file)?;
    Ok(Rotated {
        kid: keys[0].kid.clone(),
        published: keys.iter().map(|k| k.kid.clone()).collect(),
        dropped: before - file.keys.len(),
    })
}

fn generate(rng: &SystemRandom, now: i64) -> Result<StoredKey, KeyError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map_err(|_| KeyError::Generate)?;
    Ok(StoredKey {
        created: now,
        pem: Pem::from_der(doc.as_ref()),
    })
}

fn parse(path: &Path, file: &KeyFile, rng: &SystemRandom) -> Result<Vec<Key>, KeyError> {
    (file.keys.iter().enumerate())
        .map(|(i, k)| Key::from_stored(k, rng).map_err(|e| format!("key {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| KeyError::Corrupt {
            path: path.to_path_buf(),
            reason,
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

fn write_keys(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    let body = serde_json::to_vec_pretty(file).map_err(|e| KeyError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &body, 0o600)
}

/// Writes `body` to `path` with `mode` through a temporary file and a
/// rename, so a crash never leaves half a file and readers never see one.
fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // The mode of `open` is filtered by the umask; the file's is exact.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(body).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// What a snapshot signs with: the keys and the `[assertion]` settings.
#[derive(Debug)]
pub(crate) struct Assertion {
    pub(crate) signer: Signer,
    /// A fixed issuer; `None`: the accepting node's origin.
    pub(crate) issuer: Option<String>,
    pub(crate) lifetime: Duration,
    pub(crate) header: HeaderName,
}

impl Assertion {
    /// The assertion settings of `config` (`None` when no route asks for
    /// assertions and there is no `[assertion]`). A `current` signer of the
    /// same key file is kept and reads the file again (picking up a
    /// rotation); another file is opened (created when missing). The JWKS
    /// file, if configured, is written from the keys now in service.
    pub(crate) fn load(
        config: &crate::config::Config,
        current: Option<&Signer>,
    ) -> Result<Option<Assertion>, KeyError> {
        let Some(c) = &config.assertion else {
            return Ok(None);
        };
        let signer = match current.filter(|s| s.path() == c.key_file) {
            Some(s) => {
                s.reload()?;
                s.clone()
            }
            None => Signer::open(&c.key_file, crate::session::now())?,
        };
        if let Some(f) = &c.jwks_file {
            signer.write_jwks(f)?;
        }
        Ok(Some(Assertion {
            signer,
            issuer: c.issuer.clone(),
            lifetime: c.lifetime,
            header: c.header.clone(),
        }))
    }

    /// The assertion for one request to a route at `audience` (its URL:
    /// node origin and route path), reached on the node whose origin is
    /// `origin`; `None` when the caller has no identity to assert.
    pub(crate) fn for_request(
        &self,
        origin: &str,
        audience: &str,
        who: &PeerIdentity,
        login: Option<&LoginHeaders>,
    ) -> Option<HeaderValue> {
        let subject = Subject::of(who, login)?;
        let issuer = self.issuer.as_deref().unwrap_or(origin);
        let now = crate::session::now();
        let token = self
            .signer
            .sign(issuer, audience, &subject, now, self.lifetime)?;
        HeaderValue::from_str(&token).ok()
    }
}

#[cfg(test)]
mod tests;
