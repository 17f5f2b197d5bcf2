//! Sealing of what tailpass keeps in a shared store: AES-256-GCM under a
//! key derived (HKDF-SHA256) from the session secret, with the record's
//! key name as associated data. Redis then holds no refresh token, ID
//! token or PKCE verifier in the clear, and whoever can write to Redis
//! still cannot make up a session or move one to another id: only a
//! tailpass holding the session secret can seal a record that opens.
//!
//! Retired session secrets still open what they sealed, so a secret
//! rotation does not sign anyone out.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;

/// Format version, the first byte of every sealed value.
const VERSION: u8 = 1;
/// Length of the key id after the version byte.
const KID_LEN: usize = 4;

struct SealKey {
    id: [u8; KID_LEN],
    key: LessSafeKey,
}

/// The sealing keys: the first seals, all open.
pub(crate) struct Seal {
    keys: Vec<SealKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A sealed value did not open: wrong key, tampered, or not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a stored value does not open with the session secret (tampered, or sealed under another secret)"
)]
pub(crate) struct Unsealable;

fn derive(secret: &Secret) -> SealKey {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tailpass shared store v1");
    let prk = salt.extract(secret.expose().as_bytes());
    let mut raw = [0u8; 32];
    prk.expand(&[b"aes-256-gcm"], &AES_256_GCM)
        .and_then(|okm| okm.fill(&mut raw))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut id = [0u8; KID_LEN];
    prk.expand(&[b"key id"], hkdf::HKDF_SHA256)
        .and_then(|okm| {
            let mut full = [0u8; 32];
            okm.fill(&mut full)?;
            id.copy_from_slice(&full[..KID_LEN]);
            Ok(())
        })
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let key = UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte AES-256 key");
    SealKey {
        id,
        key: LessSafeKey::new(key),
    }
}

impl Seal {
    /// Keys from the current session secret (seals) and retired ones
    /// (still open).
    pub(crate) fn new(current: &Secret, retired: &[Secret]) -> Seal {
        Seal {
            keys: std::iter::once(current)
                .chain(retired)
                .map(derive)
                .collect(),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `plain`, bound to `name` (the key it is stored under).
    pub(crate) fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let mut body = plain.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM seals any length we store");
        let mut out = Vec::with_capacity(1 + KID_LEN + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&k.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`Seal::seal`] sealed under the same `name`.
    pub(crate) fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        let head = 1 + KID_LEN + NONCE_LEN;
        if sealed.len() < head || sealed[0] != VERSION {
            return Err(Unsealable);
        }
        let id = &sealed[1..1 + KID_LEN];
        let k = self.keys.iter().find(|k| k.id == id).ok_or(Unsealable)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1 + KID_LEN..head]).map_err(|_| Unsealable)?;
        let mut body = sealed[head..].to_vec();
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| Unsealable)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    fn secret(v: &str) -> Secret {
        let env = |_: &str| Some(v.to_string());
        SecretRef {
            env: Some("X".into()),
            file: None,
        }
        .load(&env)
        .unwrap()
    }

    #[test]
    fn seals_open_only_under_the_same_name_and_secret() {
        let s = Seal::new(&secret("a-long-session-secret-0123456789"), &[]);
        let sealed = s.seal("session:1", b"refresh-token-xyz");
        assert!(
            !sealed.windows(7).any(|w| w == b"refresh"),
            "nothing in the clear"
        );
        assert_eq!(s.open("session:1", &sealed).unwrap(), b"refresh-token-xyz");
        assert_eq!(s.open("session:2", &sealed), Err(Unsealable), "moved");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(s.open("session:1", &bad), Err(Unsealable), "tampered");
        assert_eq!(s.open("session:1", b"\x01ab"), Err(Unsealable), "short");
        let other = Seal::new(&secret("another-session-secret-0123456789"), &[]);
        assert_eq!(other.open("session:1", &sealed), Err(Unsealable));
        // A rotation: the retired secret still opens, the new one seals.
        let rotated = Seal::new(
            &secret("another-session-secret-0123456789"),
            &[secret("a-long-session-secret-0123456789")],
        );
        assert_eq!(
            rotated.open("session:1", &sealed).unwrap(),
            b"refresh-token-xyz"
        );
        assert_eq!(
            s.open("session:1", &rotated.seal("session:1", b"x")),
            Err(Unsealable)
        );
    }
}
