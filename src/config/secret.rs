//! Secrets: read from an environment variable or a file, never printed.

use std::fmt;

use serde::Deserialize;

/// Where a secret comes from in the config file: `{ env = "NAME" }` or
/// `{ file = "/run/secrets/x" }`. Literal secrets are not accepted, so a
/// config file can be shared or committed without leaking anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret (surrounding whitespace is trimmed).
    pub file: Option<String>,
}

/// The table form, the only one accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    env: Option<String>,
    file: Option<String>,
}

/// Said when a secret is written in the file; the value is never echoed.
const LITERAL: &str =
    "a secret is read from { env = \"NAME\" } or { file = \"/path\" }, never written in the file";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"/path\" }")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SecretRef, A::Error> {
                let r =
                    RawSecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretRef {
                    env: r.env,
                    file: r.file,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A loaded secret. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for handing to whatever needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretRef {
    /// Loads the secret; the error says which source failed, never the value.
    pub fn load(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        match (&self.env, &self.file) {
            (Some(name), None) => match env(name) {
                Some(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
                Some(_) => Err(format!("environment variable {name} is empty")),
                None => Err(format!("environment variable {name} is not set")),
            },
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
                Ok(_) => Err(format!("file {path} is empty")),
                Err(e) => Err(format!("cannot read file {path}: {e}")),
            },
            (Some(_), Some(_)) => Err("give either env or file, not both".into()),
            (None, None) => Err("give env = \"NAME\" or file = \"PATH\"".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_from_env_and_file_and_never_prints() {
        let env = |k: &str| (k == "K").then(|| " s3cret \n".to_string());
        let s = SecretRef {
            env: Some("K".into()),
            file: None,
        }
        .load(&env)
        .unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "from-file\n").unwrap();
        let r = SecretRef {
            env: None,
            file: Some(p.to_str().unwrap().into()),
        };
        assert_eq!(r.load(&env).unwrap().expose(), "from-file");

        let missing = SecretRef {
            env: Some("NOPE".into()),
            file: None,
        };
        assert!(missing.load(&env).unwrap_err().contains("NOPE is not set"));
        let both = SecretRef {
            env: Some("K".into()),
            file: Some("x".into()),
        };
        assert!(both.load(&env).is_err());
    }
}
