//! The embedded session store: one JSON file (mode 0600) in the portal's
//! state directory, rewritten atomically on every change. The default:
//! nothing to run beside the binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::store::{Record, StoreError};

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    sessions: BTreeMap<String, Record>,
}

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    sessions: &'a BTreeMap<String, Record>,
}

/// The file-backed records.
pub(super) struct FileStore {
    pub(super) path: PathBuf,
    // A std Mutex: held only for map updates and one small file write,
    // never across an await.
    sessions: Mutex<BTreeMap<String, Record>>,
}

impl FileStore {
    /// Opens (or creates) the store in `dir`. An unreadable or corrupt file
    /// is moved aside (kept, not deleted) and the store starts empty: every
    /// session must sign in again, none is accepted by mistake.
    pub(super) fn open(dir: &Path) -> Result<FileStore, StoreError> {
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
        Ok(FileStore {
            path,
            sessions: Mutex::new(sessions),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live record for `sid`, if any and not expired.
    pub(super) fn get(&self, sid: &str, now: i64) -> Option<Record> {
        self.lock().get(sid).filter(|r| r.expires > now).cloned()
    }

    /// Whether `sid` has a record.
    pub(super) fn contains(&self, sid: &str) -> bool {
        self.lock().contains_key(sid)
    }

    /// Adds or replaces a record and persists it (or leaves the map as it
    /// was).
    pub(super) fn put(&self, sid: &str, rec: Record) -> Result<(), StoreError> {
        let mut sessions = self.lock();
        let before = sessions.insert(sid.to_string(), rec);
        if let Err(e) = self.persist(&sessions) {
            match before {
                Some(b) => sessions.insert(sid.to_string(), b),
                None => sessions.remove(sid),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a record and persists the deletion.
    pub(super) fn remove(&self, sid: &str) -> Result<Option<Record>, StoreError> {
        let mut sessions = self.lock();
        let removed = sessions.remove(sid);
        if removed.is_some() {
            self.persist(&sessions)?;
        }
        Ok(removed)
    }

    /// Drops expired records; returns their ids.
    pub(super) fn purge_expired(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut sessions = self.lock();
        let dead: Vec<String> = sessions
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            sessions.remove(k);
        }
        if !dead.is_empty() {
            self.persist(&sessions)?;
        }
        Ok(dead)
    }

    /// Number of records.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
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

fn open_private(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

/// Sets `p`'s permission bits (best effort: a failure shows up as the
/// next open or bind failing).
pub(super) fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}
