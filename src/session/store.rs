//! The server-side session records, persisted as one JSON file (mode 0600)
//! in the portal's state directory and rewritten atomically on every
//! change. A record holds what must not travel in the cookie: the ID token
//! (the logout hint) and the refresh token.
//!
//! Revoking deletes the record and persists that before returning, so a
//! revoked session stays revoked across restarts. Each live session has a
//! watch channel; revoking signals it, which closes that session's open
//! websockets.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Binding, Session};

/// One session as kept on disk. Its `Debug` leaves out the tokens.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Provider name.
    pub provider: String,
    /// Subject at the provider.
    pub sub: String,
    /// The node and user that logged in.
    pub binding: Binding,
    /// ID token and userinfo claims, merged.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// The latest ID token (sent as `id_token_hint` at logout).
    pub id_token: String,
    /// Refresh token, when the provider granted one.
    pub refresh_token: Option<String>,
    /// Created (unix seconds).
    pub created: i64,
    /// Last authentication at the provider (unix seconds), as far as the
    /// provider proved it (`None`: unknown; never satisfies a step-up).
    #[serde(default)]
    pub auth_time: Option<i64>,
    /// Ends at (unix seconds).
    pub expires: i64,
    /// Last successful refresh or login (unix seconds).
    pub refreshed: i64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("provider", &self.provider)
            .field("sub", &self.sub)
            .field("binding", &self.binding)
            .field("claims", &self.claims)
            .field("id_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("created", &self.created)
            .field("auth_time", &self.auth_time)
            .field("expires", &self.expires)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl Record {
    /// The request-time view of this record (consumes it: the store hands
    /// out a copy per request, which is moved, not copied again).
    pub fn into_session(self, sid: &str) -> Session {
        let text = |k: &str| {
            self.claims
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Session {
            sid: sid.to_string(),
            email: text("email").map(|s| s.to_ascii_lowercase()),
            name: text("name"),
            provider: self.provider,
            sub: self.sub,
            claims: self.claims,
            auth_time: self.auth_time,
            expires: self.expires,
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    sessions: BTreeMap<String, Record>,
}

/// Why the session store could not read or write its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The state directory or file could not be written.
    #[error("session store {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The session store.
pub struct Store {
    path: PathBuf,
    // A std Mutex: held only for map updates and one small file write,
    // never across an await.
    inner: Mutex<Inner>,
}

struct Inner {
    sessions: BTreeMap<String, Record>,
    watchers: HashMap<String, watch::Sender<bool>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. An unreadable or corrupt file
    /// is moved aside (kept, not deleted) and the store starts empty: every
    /// session must sign in again, none is accepted by mistake.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        set_mode(dir, 0o700);
        let path = dir.join("sessions.json");
        let mut sessions = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => sessions = f.sessions,
                Err(e) => {
                    let aside = dir.join(format!("sessions.json.corrupt-{}", super::now()));
                    tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %e,
                        "session store is corrupt; moved aside, starting with no sessions");
                    std::fs::rename(&path, &aside).map_err(io(&path))?;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        }
        let store = Store {
            path,
            inner: Mutex::new(Inner {
                sessions,
                watchers: HashMap::new(),
            }),
        };
        store.purge_expired(super::now())?;
        Ok(store)
    }

    /// The live record for `sid`, if any and not expired.
    pub fn get(&self, sid: &str, now: i64) -> Option<Record> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sessions.get(sid).filter(|r| r.expires > now).cloned()
    }

    /// Adds or replaces a record and persists it.
    pub fn put(&self, sid: &str, rec: Record) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = inner.sessions.insert(sid.to_string(), rec);
        if let Err(e) = self.persist(&inner.sessions) {
            match before {
                Some(b) => inner.sessions.insert(sid.to_string(), b),
                None => inner.sessions.remove(sid),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Revokes a session: deletes the record, persists, and signals its
    /// websockets. Returns the record it removed.
    pub(crate) fn revoke(&self, sid: &str) -> Result<Option<Record>, StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let removed = inner.sessions.remove(sid);
        if removed.is_some() {
            self.persist(&inner.sessions)?;
        }
        if let Some(w) = inner.watchers.remove(sid) {
            let _ = w.send(true);
        }
        Ok(removed)
    }

    /// A receiver that turns `true` when `sid` is revoked.
    pub(crate) fn watch(&self, sid: &str) -> watch::Receiver<bool> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.watchers.retain(|_, w| w.receiver_count() > 0);
        if !inner.sessions.contains_key(sid) {
            let (tx, rx) = watch::channel(true);
            drop(tx);
            return rx;
        }
        inner
            .watchers
            .entry(sid.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    /// Session ids with open websockets (someone is watching them).
    pub(crate) fn watched(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .watchers
            .iter()
            .filter(|(_, w)| w.receiver_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Drops expired records (and signals their watchers).
    pub(crate) fn purge_expired(&self, now: i64) -> Result<usize, StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let dead: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            inner.sessions.remove(k);
            if let Some(w) = inner.watchers.remove(k) {
                let _ = w.send(true);
            }
        }
        if !dead.is_empty() {
            self.persist(&inner.sessions)?;
        }
        Ok(dead.len())
    }

    /// Number of live records.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
    }

    /// Whether there are no records (the tests' question; the gateway only
    /// counts).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn persist(&self, sessions: &BTreeMap<String, Record>) -> Result<(), StoreError> {
        let err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let body = serde_json::to_vec(&FileRef {
            version: 1,
            sessions,
        })
        .map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = open_private(&tmp).map_err(err)?;
            f.write_all(&body).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }
}

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    sessions: &'a BTreeMap<String, Record>,
}

fn open_private(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(expires: i64) -> Record {
        Record {
            provider: "p".into(),
            sub: "alice".into(),
            binding: Binding {
                node: "n".into(),
                user: "u".into(),
            },
            claims: BTreeMap::new(),
            id_token: "x.y.z".into(),
            refresh_token: Some("rt".into()),
            created: 1,
            auth_time: Some(1),
            expires,
            refreshed: 1,
        }
    }

    #[test]
    fn debug_never_shows_tokens() {
        let mut r = rec(1);
        r.id_token = "eyJ-id-token-secret".into();
        r.refresh_token = Some("refresh-token-secret".into());
        let d = format!("{r:?}");
        assert!(d.contains("alice") && d.contains("<redacted>"), "{d}");
        assert!(!d.contains("secret"), "{d}");
    }

    #[test]
    fn revocation_survives_reopen_and_signals_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let far = super::super::now() + 3600;
        let s = Store::open(dir.path()).unwrap();
        s.put("a", rec(far)).unwrap();
        s.put("b", rec(far)).unwrap();
        let mut w = s.watch("a");
        assert!(!*w.borrow());
        assert!(s.revoke("a").unwrap().is_some());
        assert!(*w.borrow_and_update(), "revocation is signalled");
        drop(s);

        let s = Store::open(dir.path()).unwrap();
        assert!(
            s.get("a", 0).is_none(),
            "revoked stays revoked after a restart"
        );
        assert_eq!(s.get("b", 0).unwrap().sub, "alice");
        assert!(
            *s.watch("a").borrow(),
            "watching a dead session reads revoked"
        );
        let mode = std::fs::metadata(dir.path().join("sessions.json"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn expired_records_are_not_returned_and_corrupt_files_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put("old", rec(10)).unwrap();
        assert!(s.get("old", 11).is_none());
        drop(s);
        std::fs::write(dir.path().join("sessions.json"), b"{not json").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.is_empty());
        let kept = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(kept, "the corrupt file is moved aside, not deleted");
    }
}
