//! The server-side session records: in one JSON file (mode 0600) in the
//! portal's state directory (`file.rs`, the default), or in Redis shared by
//! several tailpass processes (`redis.rs`). A record holds what must not
//! travel in the cookie: the ID token (the logout hint) and the refresh
//! token.
//!
//! Revoking deletes the record and persists that before returning, so a
//! revoked session stays revoked across restarts. Each session with open
//! websockets has a watch channel here; revoking signals it (with Redis,
//! on every host, through pub/sub), which closes those websockets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::file::FileStore;
use super::redis::Redis;
use super::seal::Seal;
use super::{Binding, Session};
use crate::config::RedisStore;

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

/// Why the session store could not read or write.
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
    /// The shared store (Redis) cannot be reached or refused a command.
    #[error("session store unreachable: {0}")]
    Unavailable(String),
    /// The store's settings cannot work (found where they are used).
    #[error("{0}")]
    Config(String),
}

/// The watchers of open websockets, by session id: local to this process
/// (a revocation elsewhere reaches them through the store).
#[derive(Default)]
struct Watchers(Mutex<HashMap<String, watch::Sender<bool>>>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the websockets of `sid`.
    fn signal(&self, sid: &str) {
        if let Some(w) = self.lock().remove(sid) {
            let _ = w.send(true);
        }
    }

    fn subscribe(&self, sid: &str) -> watch::Receiver<bool> {
        let mut m = self.lock();
        m.retain(|_, w| w.receiver_count() > 0);
        m.entry(sid.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn watched(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, w)| w.receiver_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The session store: the embedded file, or Redis shared with other
/// tailpass processes. Either way, revoking signals the session's open
/// websockets here; with Redis, on every other host too.
pub struct Store {
    backend: Backend,
    watchers: Arc<Watchers>,
}

enum Backend {
    File(FileStore),
    Redis(Arc<Shared>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::File(s) => f.debug_struct("Store").field("path", &s.path).finish(),
            Backend::Redis(s) => f.debug_struct("Store").field("redis", &s.redis).finish(),
        }
    }
}

impl Store {
    /// Opens (or creates) the file store in `dir`. An unreadable or corrupt
    /// file is moved aside (kept, not deleted) and the store starts empty:
    /// every session must sign in again, none is accepted by mistake.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let file = FileStore::open(dir)?;
        file.purge_expired(super::now())?;
        Ok(Store {
            backend: Backend::File(file),
            watchers: Arc::default(),
        })
    }

    /// The store a portal's config names: the file in its `state_dir`, or
    /// Redis (records sealed with its session secrets).
    pub fn for_portal(cfg: &crate::config::Portal) -> Result<Store, StoreError> {
        Store::for_portal_via(cfg, None)
    }

    /// Like [`Store::for_portal`]; a Redis whose host is on the tailnet is
    /// dialed through `dialer`'s node.
    pub(crate) fn for_portal_via(
        cfg: &crate::config::Portal,
        dialer: Option<&crate::oidc::Dialer>,
    ) -> Result<Store, StoreError> {
        let r = match &cfg.store {
            crate::config::SessionStore::File => return Store::open(&cfg.state_dir),
            crate::config::SessionStore::Redis(r) => r,
        };
        let seal = Seal::new(&cfg.session_secret, &cfg.retired_session_secrets);
        let tailnet = match (dialer, &r.host_port()) {
            (Some(d), Some((host, port))) if d.is_tailnet(host) => {
                if r.url.starts_with("rediss://") {
                    return Err(StoreError::Config(format!(
                        "sessions.store: {host} is on the tailnet, which encrypts already; give redis:// (rediss:// would check a certificate for the wrong host)"
                    )));
                }
                let path = super::tunnel::socket_path(&cfg.state_dir);
                let task = super::tunnel::dial_through(&path, d.clone(), format!("{host}:{port}"))?;
                Some((path, task))
            }
            _ => None,
        };
        Store::open_redis(r, seal, tailnet)
    }

    /// The Redis store of `cfg`, sealing with `seal`, through `tailnet`'s
    /// socket (and its carrying task) if given. It connects lazily: an
    /// unreachable Redis does not stop tailpass from starting.
    pub(crate) fn open_redis(
        cfg: &RedisStore,
        seal: Seal,
        tailnet: Option<(PathBuf, tokio::task::JoinHandle<()>)>,
    ) -> Result<Store, StoreError> {
        let watchers: Arc<Watchers> = Arc::default();
        let (via, task) = tailnet.unzip();
        let redis = Redis::new(cfg, seal, via.as_deref())?;
        let shared = Arc::new(Shared::new(Arc::new(redis)));
        *locked(&shared.tunnel) = task;
        shared.follow(&watchers);
        Ok(Store {
            backend: Backend::Redis(shared),
            watchers,
        })
    }

    /// The Redis connection, when the store is Redis (sign-ins in flight
    /// live there too).
    pub(crate) fn redis(&self) -> Option<Arc<Redis>> {
        match &self.backend {
            Backend::Redis(s) => Some(s.redis.clone()),
            Backend::File(_) => None,
        }
    }

    /// The live record for `sid`, if any and not expired. With Redis
    /// unreachable: the record this host last verified, for at most
    /// `outage_grace` after that; then [`StoreError::Unavailable`].
    pub async fn get(&self, sid: &str, now: i64) -> Result<Option<Record>, StoreError> {
        match &self.backend {
            Backend::File(f) => Ok(f.get(sid, now)),
            Backend::Redis(s) => s.get(sid, now).await,
        }
    }

    /// Adds or replaces a record and persists it.
    pub async fn put(&self, sid: &str, rec: Record) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => f.put(sid, rec),
            Backend::Redis(s) => s.put(sid, rec).await,
        }
    }

    /// Revokes a session: deletes the record, persists, and signals its
    /// websockets (with Redis: on every host). Returns the record it
    /// removed. With Redis unreachable, the session ends here at once and
    /// the revocation is sent when Redis is back.
    pub(crate) async fn revoke(&self, sid: &str) -> Result<Option<Record>, StoreError> {
        self.watchers.signal(sid);
        match &self.backend {
            Backend::File(f) => f.remove(sid),
            Backend::Redis(s) => Ok(s.revoke(sid).await),
        }
    }

    /// A receiver that turns `true` when `sid` is revoked or expires.
    /// With Redis, a revocation between the request's check and this call
    /// is caught by the next upkeep's re-check (a few seconds), so a
    /// request pays no second round trip for it.
    pub(crate) fn watch(&self, sid: &str) -> watch::Receiver<bool> {
        let rx = self.watchers.subscribe(sid);
        // Checked after subscribing: a revocation in between is not lost.
        if let Backend::File(f) = &self.backend
            && !f.contains(sid)
        {
            self.watchers.signal(sid);
        }
        rx
    }

    /// Session ids with open websockets here (someone is watching them).
    pub(crate) fn watched(&self) -> Vec<String> {
        self.watchers.watched()
    }

    /// One round of upkeep: drops expired sessions and closes the
    /// websockets of sessions that ended (expired, or revoked on another
    /// host while a message was lost; with Redis unreachable, those not
    /// verified within `outage_grace`).
    pub(crate) async fn upkeep(&self, now: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => {
                for sid in f.purge_expired(now)? {
                    self.watchers.signal(&sid);
                }
                Ok(())
            }
            Backend::Redis(s) => s.upkeep(now, &self.watchers).await,
        }
    }

    /// The refresh lock of `sid` across hosts (`None`: no other host can
    /// refresh; a file store is one process's).
    pub(crate) async fn lock_refresh(&self, sid: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::File(_) => Ok(None),
            Backend::Redis(s) => {
                let token = super::random_token();
                match s.redis.lock_refresh(sid, &token).await? {
                    true => Ok(Some(token)),
                    false => Err(StoreError::Unavailable(
                        "another host is refreshing this session".into(),
                    )),
                }
            }
        }
    }

    /// Releases a lock [`Store::lock_refresh`] took.
    pub(crate) async fn unlock_refresh(&self, sid: &str, token: Option<String>) {
        if let (Backend::Redis(s), Some(t)) = (&self.backend, token) {
            s.redis.unlock_refresh(sid, &t).await;
        }
    }

    /// Whether the store answered last time it was asked (the file store
    /// always does; its write errors are reported where they happen).
    pub(crate) fn up(&self) -> bool {
        match &self.backend {
            Backend::File(_) => true,
            Backend::Redis(s) => !s.down.load(Ordering::Relaxed),
        }
    }

    /// Number of live records (with Redis: as of the last upkeep).
    pub(crate) fn len(&self) -> usize {
        match &self.backend {
            Backend::File(f) => f.len(),
            Backend::Redis(s) => s.count.load(Ordering::Relaxed),
        }
    }

    /// Whether there are no records (the tests' question; the gateway only
    /// counts).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Redis store and what this host remembers for an outage.
struct Shared {
    redis: Arc<Redis>,
    /// Records this host last verified at Redis, and when.
    known: Mutex<HashMap<String, (Record, Instant)>>,
    /// Revocations made here while Redis was unreachable, to send.
    queued: Mutex<HashSet<String>>,
    /// Live sessions, as of the last upkeep.
    count: AtomicUsize,
    /// Whether Redis is unreachable (for logging the change once).
    down: AtomicBool,
    /// After a failed command, requests do not ask Redis again before this
    /// (a Redis that hangs would otherwise cost every request the whole
    /// command timeout); upkeep still does.
    rest_until: Mutex<Option<Instant>>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Carries connections to a store on the tailnet (`tunnel.rs`).
    tunnel: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in [&mut self.follower, &mut self.tunnel] {
            if let Some(t) = t.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
                t.abort();
            }
        }
    }
}

/// How long requests leave Redis alone after a failed command.
const REST: std::time::Duration = std::time::Duration::from_secs(1);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(redis: Arc<Redis>) -> Shared {
        Shared {
            redis,
            known: Mutex::default(),
            queued: Mutex::default(),
            count: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            rest_until: Mutex::new(None),
            follower: Mutex::new(None),
            tunnel: Mutex::new(None),
        }
    }

    /// Follows revocations made on other hosts; after every
    /// (re)subscription, sends what was queued and re-checks open
    /// websockets (messages sent meanwhile were lost).
    fn follow(self: &Arc<Self>, watchers: &Arc<Watchers>) {
        let w = Arc::downgrade(watchers);
        let revoked = move |sid: &str| {
            if let Some(w) = w.upgrade() {
                w.signal(sid);
            }
        };
        let (me, w) = (Arc::downgrade(self), Arc::downgrade(watchers));
        let resync = move || {
            let (Some(me), Some(w)) = (me.upgrade(), w.upgrade()) else {
                return;
            };
            tokio::spawn(async move {
                if let Err(e) = me.upkeep(super::now(), &w).await {
                    tracing::debug!(error = %e, "re-check after resubscribing");
                }
            });
        };
        let task = self.redis.follow(revoked, resync);
        *locked(&self.follower) = Some(task);
    }

    fn outage(&self, e: &StoreError) {
        *locked(&self.rest_until) = Some(Instant::now() + REST);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, grace = ?self.redis.grace,
                "session store unreachable: sessions verified here within outage_grace keep working, new sign-ins are refused");
        }
    }

    fn back(&self) {
        *locked(&self.rest_until) = None;
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("session store reachable again");
        }
    }

    /// One request's command: not sent while resting after a failure;
    /// a failure starts the rest, an answer ends the outage.
    async fn ask<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if locked(&self.rest_until).is_some_and(|t| Instant::now() < t) {
            return Err(StoreError::Unavailable(
                "it did not answer a moment ago".into(),
            ));
        }
        let r = command.await;
        match &r {
            Ok(_) => self.back(),
            Err(e) => self.outage(e),
        }
        r
    }

    async fn get(&self, sid: &str, now: i64) -> Result<Option<Record>, StoreError> {
        if locked(&self.queued).contains(sid) {
            return Ok(None);
        }
        match self.ask(self.redis.get(sid, now)).await {
            Ok(Some(rec)) => {
                locked(&self.known).insert(sid.to_string(), (rec.clone(), Instant::now()));
                Ok(Some(rec))
            }
            Ok(None) => {
                locked(&self.known).remove(sid);
                Ok(None)
            }
            Err(e) => {
                let known = locked(&self.known);
                match known.get(sid) {
                    Some((rec, at)) if at.elapsed() < self.redis.grace && rec.expires > now => {
                        Ok(Some(rec.clone()))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn put(&self, sid: &str, rec: Record) -> Result<(), StoreError> {
        self.ask(self.redis.put(sid, &rec)).await?;
        locked(&self.known).insert(sid.to_string(), (rec, Instant::now()));
        Ok(())
    }

    async fn revoke(&self, sid: &str) -> Option<Record> {
        let known = locked(&self.known).remove(sid).map(|(r, _)| r);
        match self.ask(self.redis.remove(sid)).await {
            Ok(rec) => rec.or(known),
            Err(_) => {
                tracing::warn!("revocation kept here and sent when the session store is back");
                locked(&self.queued).insert(sid.to_string());
                known
            }
        }
    }

    async fn upkeep(&self, now: i64, watchers: &Watchers) -> Result<(), StoreError> {
        let r = self.upkeep_online(now, watchers).await;
        match &r {
            Ok(()) => self.back(),
            Err(e) => {
                self.outage(e);
                // Unreachable: websockets of sessions not verified within
                // the grace period close.
                let grace = self.redis.grace;
                let mut known = locked(&self.known);
                known.retain(|_, (_, at)| at.elapsed() < grace);
                for sid in watchers.watched() {
                    if !known.contains_key(&sid) {
                        watchers.signal(&sid);
                    }
                }
            }
        }
        r
    }

    async fn upkeep_online(&self, now: i64, watchers: &Watchers) -> Result<(), StoreError> {
        let queued: Vec<String> = locked(&self.queued).iter().cloned().collect();
        for sid in queued {
            self.redis.remove(&sid).await?;
            locked(&self.queued).remove(&sid);
            tracing::info!("revocation made during the outage sent");
        }
        let (dead, count) = self.redis.purge_expired(now).await?;
        self.count.store(count, Ordering::Relaxed);
        for sid in dead {
            watchers.signal(&sid);
        }
        let watched = watchers.watched();
        let missing = self.redis.missing(&watched).await?;
        for sid in &missing {
            watchers.signal(sid);
        }
        let mut known = locked(&self.known);
        let t = Instant::now();
        for sid in watched.iter().filter(|s| !missing.contains(s)) {
            if let Some(k) = known.get_mut(sid) {
                k.1 = t;
            }
        }
        let grace = self.redis.grace;
        known.retain(|_, (_, at)| at.elapsed() < grace);
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A record of alice's, ending at `expires`.
    pub(super) fn rec(expires: i64) -> Record {
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

    #[tokio::test]
    async fn revocation_survives_reopen_and_signals_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let far = super::super::now() + 3600;
        let s = Store::open(dir.path()).unwrap();
        s.put("a", rec(far)).await.unwrap();
        s.put("b", rec(far)).await.unwrap();
        let mut w = s.watch("a");
        assert!(!*w.borrow());
        assert!(s.revoke("a").await.unwrap().is_some());
        assert!(*w.borrow_and_update(), "revocation is signalled");
        drop(s);

        let s = Store::open(dir.path()).unwrap();
        assert!(
            s.get("a", 0).await.unwrap().is_none(),
            "revoked stays revoked after a restart"
        );
        assert_eq!(s.get("b", 0).await.unwrap().unwrap().sub, "alice");
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

    #[tokio::test]
    async fn expired_records_are_not_returned_and_corrupt_files_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put("old", rec(10)).await.unwrap();
        assert!(s.get("old", 11).await.unwrap().is_none());
        let mut w = s.watch("old");
        s.upkeep(11).await.unwrap();
        assert!(*w.borrow_and_update(), "expiry closes websockets");
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

/// The Redis store against a real `redis-server` (skipped loudly when it is
/// not installed, a failure under `TAILPASS_REQUIRE_REDIS`): two stores
/// stand for two hosts.
#[cfg(test)]
mod redis_tests {
    use std::time::Duration;

    use tailpass_testkit::redis::{self, RedisServer};

    use super::tests::rec;
    use super::*;
    use crate::config::{Secret, SecretRef};

    pub(super) fn secret(v: &str) -> Secret {
        let env = |_: &str| Some(v.to_string());
        let r = SecretRef {
            env: Some("X".into()),
            file: None,
        };
        r.load(&env).unwrap()
    }

    /// The store settings for `r` (no password, prefix `t`).
    pub(super) fn config(r: &RedisServer, grace: Duration) -> RedisStore {
        RedisStore {
            url: r.url(),
            password: None,
            ca_file: None,
            key_prefix: "t".into(),
            outage_grace: grace,
            share: None,
        }
    }

    /// One "host": a store on `r` sealing with `secret_value`.
    pub(super) fn host(r: &RedisServer, secret_value: &str, grace: Duration) -> Store {
        let seal = Seal::new(&secret(secret_value), &[]);
        Store::open_redis(&config(r, grace), seal, None).unwrap()
    }

    /// Waits until `n` hosts follow the revocation channel.
    async fn followers(r: &RedisServer, n: usize) {
        for _ in 0..100 {
            let out = r.command(&["PUBSUB", "NUMSUB", "t:revoked"]).unwrap();
            if out.ends_with(&format!(":{n}\r\n")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} hosts never subscribed");
    }

    pub(super) const S: &str = "a-session-secret-of-thirty-two-bytes-or-more";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hosts_share_records_and_revocations_reach_websockets_by_pubsub() {
        if !redis::available("two_hosts_share_records_and_revocations") {
            return;
        }
        let r = RedisServer::start(None);
        let (a, b) = (
            host(&r, S, Duration::from_secs(60)),
            host(&r, S, Duration::from_secs(60)),
        );
        followers(&r, 2).await;
        let far = super::super::now() + 3600;
        a.put("s1", rec(far)).await.unwrap();
        assert_eq!(b.get("s1", 0).await.unwrap().unwrap().sub, "alice");
        let mut w = b.watch("s1");
        assert!(!*w.borrow());
        // Revoked on A: B's watcher fires by pub/sub alone (no upkeep runs
        // here, so the re-check cannot be what closes it).
        assert!(a.revoke("s1").await.unwrap().is_some());
        tokio::time::timeout(Duration::from_secs(1), w.changed())
            .await
            .expect("the revocation reached the other host within a second")
            .unwrap();
        assert!(*w.borrow());
        assert!(b.get("s1", 0).await.unwrap().is_none());
        // Expiry: gone from the count and signalled at upkeep.
        a.put("old", rec(super::super::now() + 1)).await.unwrap();
        let mut w = b.watch("old");
        b.upkeep(super::super::now() + 2).await.unwrap();
        assert!(*w.borrow_and_update());
        assert_eq!(b.len(), 0);
        // Another session secret cannot open (or forge) these records.
        a.put("s2", rec(far)).await.unwrap();
        let other = host(
            &r,
            "another-secret-of-thirty-two-bytes-or-more",
            Duration::from_secs(60),
        );
        assert!(other.get("s2", 0).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_keeps_verified_sessions_for_the_grace_and_sends_revocations_after() {
        if !redis::available("an_outage_keeps_verified_sessions_for_the_grace") {
            return;
        }
        let mut r = RedisServer::start(None);
        let grace = Duration::from_millis(1500);
        let (a, b) = (host(&r, S, grace), host(&r, S, grace));
        followers(&r, 2).await;
        let far = super::super::now() + 3600;
        a.put("s1", rec(far)).await.unwrap();
        a.put("s2", rec(far)).await.unwrap();
        assert!(b.get("s1", 0).await.unwrap().is_some());
        assert!(b.get("s2", 0).await.unwrap().is_some());
        let mut w = b.watch("s2");
        r.stop();
        // Within the grace: what B verified still reads live; nothing new
        // can be stored.
        assert!(b.get("s1", 0).await.unwrap().is_some());
        assert!(matches!(
            b.put("s3", rec(far)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            b.get("never-seen", 0).await,
            Err(StoreError::Unavailable(_))
        ));
        // A logout on A during the outage ends the session on A at once.
        assert!(a.revoke("s1").await.unwrap().is_some(), "the known record");
        assert!(a.get("s1", 0).await.unwrap().is_none());
        // Past the grace: refused, and B's websockets close at upkeep.
        tokio::time::sleep(grace).await;
        assert!(matches!(
            b.get("s1", 0).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(b.upkeep(super::super::now()).await.is_err());
        assert!(*w.borrow_and_update(), "websocket closed past the grace");
        // Redis back (with its data): A sends the queued revocation.
        r.restart();
        for _ in 0..100 {
            if a.upkeep(super::super::now()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // B's requests leave Redis alone for a second after its last
        // failure; then they see the revocation.
        let mut s1 = b.get("s1", 0).await;
        for _ in 0..50 {
            if s1.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s1 = b.get("s1", 0).await;
        }
        let s1 = s1.unwrap();
        assert!(s1.is_none(), "revocation sent");
        assert!(b.get("s2", 0).await.unwrap().is_some(), "the rest kept");
    }
}

#[cfg(test)]
mod redis_start_tests {
    use std::time::Duration;

    use tailpass_testkit::redis::{self, RedisServer};

    use super::redis_tests::{S, host};
    use super::tests::rec;
    use super::*;

    /// tailpass starts with Redis down (the door must not wait for it),
    /// answers "unreachable" quickly, and connects once Redis is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_opened_while_redis_is_down_connects_when_it_comes() {
        if !redis::available("a_store_opened_while_redis_is_down") {
            return;
        }
        let mut r = RedisServer::start(None);
        r.stop();
        let s = host(&r, S, Duration::from_secs(60));
        let t = std::time::Instant::now();
        assert!(matches!(
            s.get("x", 0).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        r.restart();
        let far = crate::session::now() + 3600;
        let mut stored = false;
        for _ in 0..100 {
            if s.put("x", rec(far)).await.is_ok() {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stored, "never connected");
        assert!(s.get("x", 0).await.unwrap().is_some());
        assert!(s.up());
    }
}

/// A Redis that hangs (frozen, connections open): one request waits for
/// the command timeout, the next ones do not wait at all for a while.
#[cfg(test)]
mod redis_hang_tests {
    use std::time::{Duration, Instant};

    use tailpass_testkit::redis::{self, RedisServer};

    use super::redis_tests::{S, host};
    use super::tests::rec;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_costs_one_request_the_timeout_not_every_request() {
        if !redis::available("a_hung_redis_costs_one_request_the_timeout") {
            return;
        }
        let r = RedisServer::start(None);
        let s = host(&r, S, Duration::from_secs(60));
        s.put("x", rec(crate::session::now() + 3600)).await.unwrap();
        assert!(s.get("x", 0).await.unwrap().is_some());
        r.pause();
        // The first request waits for the timeout, then the known record.
        assert!(s.get("x", 0).await.unwrap().is_some());
        assert!(!s.up());
        // The next ones answer at once: the known record, or unreachable.
        let t = Instant::now();
        for _ in 0..50 {
            assert!(s.get("x", 0).await.unwrap().is_some());
            assert!(matches!(
                s.get("y", 0).await,
                Err(StoreError::Unavailable(_))
            ));
        }
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        r.resume();
        let t = Instant::now();
        while s.get("y", 0).await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "never back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(s.up());
    }
}

#[cfg(test)]
mod redis_tls_tests {
    use std::time::Duration;

    use tailpass_testkit::redis::{self, RedisServer};

    use super::redis_tests::{S, config, secret};
    use super::*;

    #[tokio::test]
    async fn rediss_with_a_private_ca_and_a_password() {
        if !redis::available("rediss_with_a_private_ca_and_a_password") {
            return;
        }
        let r = RedisServer::start_tls(Some("tls-test-password"));
        let mut cfg = config(&r, Duration::from_secs(1));
        cfg.password = Some(secret("tls-test-password"));
        cfg.ca_file = Some(r.ca_file());
        assert!(cfg.url.starts_with("rediss://"));
        let seal = || Seal::new(&secret(S), &[]);
        let s = Store::open_redis(&cfg, seal(), None).unwrap();
        let far = crate::session::now() + 3600;
        let rec = super::tests::rec(far);
        s.put("sid", rec).await.unwrap();
        assert_eq!(s.get("sid", 0).await.unwrap().unwrap().sub, "alice");
        // Without the private CA the server's certificate is not trusted:
        // an unreachable store, never a plain-text fallback.
        cfg.ca_file = None;
        let untrusted = Store::open_redis(&cfg, seal(), None).unwrap();
        assert!(matches!(
            untrusted.get("sid", 0).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
