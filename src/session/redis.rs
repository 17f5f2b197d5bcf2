//! The shared session store on Redis (or Valkey): what lets several
//! tailpass processes, on several hosts, act as one.
//!
//! Keys (all under `key_prefix`, default `tailpass`):
//! - `<p>:session:<sid>`: a sealed [`Record`] (see `seal.rs`), expiring
//!   with the session (`EXAT`);
//! - `<p>:sessions`: sorted set of live session ids by expiry (the count,
//!   and expiry signals for open websockets);
//! - `<p>:login:<state>`: a sealed sign-in in flight (10 min);
//!   `<p>:logins` and `<p>:logins:<node>`: sorted sets by start time, the
//!   caps of [`crate::portal::pending`];
//! - `<p>:refresh:<sid>`: a lock, so one host at a time refreshes a session
//!   (refresh tokens rotate; a second use of the old one would end it);
//! - channel `<p>:revoked`: the id of every revoked session, so every host
//!   closes its websockets at once.
//!
//! The connection is lazy and reconnects on its own: tailpass starts, and
//! keeps serving, while Redis is down. What each caller does meanwhile is
//! its own decision (`store.rs`, `portal/pending.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, IntoConnectionInfo};

use super::seal::Seal;
use super::store::{Record, StoreError};
use crate::config::RedisStore;

/// How long one Redis command (or connection attempt) may take before the
/// store counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refresh lock is held at most.
const REFRESH_LOCK: Duration = Duration::from_secs(30);

/// A Redis store: one lazy, self-reconnecting connection, the key names
/// and the seal.
pub(crate) struct Redis {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    seal: Seal,
    /// How long a session verified here keeps working while Redis is down.
    pub(super) grace: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn down(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A sign-in in flight as stored: its node (for the caps) and its value.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLogin<T> {
    node: String,
    value: T,
}

/// Inserts a sign-in within the caps; see `portal/pending.rs` for the
/// rules. Returns 1 when stored, 0 when full with other nodes' sign-ins.
const INSERT_LOGIN: &str = r"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local per_node, total = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
if redis.call('ZCARD', KEYS[2]) >= per_node or redis.call('ZCARD', KEYS[3]) >= total then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then return 0 end
  redis.call('ZREM', KEYS[2], oldest[1])
  redis.call('ZREM', KEYS[3], oldest[1])
  redis.call('DEL', ARGV[7] .. oldest[1])
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
";

/// Takes a sign-in out (single use).
const TAKE_LOGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return v
";

/// Releases a refresh lock only if it is still ours.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl Redis {
    /// A store on `cfg`; sealing with the session secrets. Does not
    /// connect yet (the first command does, and reconnects follow).
    /// `via`: a Unix socket that carries connections to the store (a
    /// store on the tailnet, `tunnel.rs`).
    pub(crate) fn new(
        cfg: &RedisStore,
        seal: Seal,
        via: Option<&std::path::Path>,
    ) -> Result<Redis, StoreError> {
        let client = client(cfg, via)?;
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), mc).map_err(down)?;
        Ok(Redis {
            client,
            conn,
            prefix: cfg.key_prefix.clone(),
            seal,
            grace: cfg.outage_grace,
        })
    }

    fn session_key(&self, sid: &str) -> String {
        format!("{}:session:{sid}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:sessions", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(TIMEOUT, f).await {
            Ok(r) => r.map_err(down),
            Err(_) => Err(down("Redis did not answer in time")),
        }
    }

    fn open_record(&self, sid: &str, bytes: &[u8]) -> Option<Record> {
        let plain = match self.seal.open(&self.session_key(sid), bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "session record refused");
                return None;
            }
        };
        serde_json::from_slice(&plain)
            .inspect_err(|e| tracing::error!(error = %e, "session record unreadable; refused"))
            .ok()
    }

    /// The record of `sid`, if any and not expired.
    pub(super) async fn get(&self, sid: &str, now: i64) -> Result<Option<Record>, StoreError> {
        let mut c = self.conn.clone();
        let bytes: Option<Vec<u8>> = self.run(c.get(self.session_key(sid))).await?;
        Ok(bytes
            .and_then(|b| self.open_record(sid, &b))
            .filter(|r| r.expires > now))
    }

    /// Stores a record until it expires.
    pub(super) async fn put(&self, sid: &str, rec: &Record) -> Result<(), StoreError> {
        let key = self.session_key(sid);
        let json = serde_json::to_vec(rec).map_err(|e| down(format!("encoding: {e}")))?;
        let sealed = self.seal.seal(&key, &json);
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(sealed)
            .arg("EXAT")
            .arg(rec.expires.max(1))
            .ignore()
            .zadd(self.index(), sid, rec.expires)
            .ignore();
        self.run(p.query_async::<()>(&mut c)).await
    }

    /// Deletes `sid` and tells every host (the `revoked` channel). Returns
    /// the record it deleted.
    pub(super) async fn remove(&self, sid: &str) -> Result<Option<Record>, StoreError> {
        let key = self.session_key(sid);
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.atomic()
            .get(&key)
            .del(&key)
            .ignore()
            .zrem(self.index(), sid)
            .ignore()
            .publish(self.channel(), sid)
            .ignore();
        let (old,): (Option<Vec<u8>>,) = self.run(p.query_async(&mut c)).await?;
        Ok(old.and_then(|b| self.open_record(sid, &b)))
    }

    /// Drops expired ids from the index; returns them and the live count.
    pub(super) async fn purge_expired(&self, now: i64) -> Result<(Vec<String>, usize), StoreError> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.atomic()
            .zrangebyscore(self.index(), "-inf", now)
            .zrembyscore(self.index(), "-inf", now)
            .ignore()
            .zcard(self.index());
        let (dead, count): (Vec<String>, usize) = self.run(p.query_async(&mut c)).await?;
        Ok((dead, count))
    }

    /// Which of `sids` have no record any more.
    pub(super) async fn missing(&self, sids: &[String]) -> Result<Vec<String>, StoreError> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        for s in sids {
            p.exists(self.session_key(s));
        }
        let there: Vec<bool> = self.run(p.query_async(&mut c)).await?;
        Ok(sids
            .iter()
            .zip(there)
            .filter(|(_, t)| !t)
            .map(|(s, _)| s.clone())
            .collect())
    }

    /// Takes the refresh lock of `sid` for `token`; false when another
    /// host holds it.
    pub(super) async fn lock_refresh(&self, sid: &str, token: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let key = format!("{}:refresh:{sid}", self.prefix);
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(REFRESH_LOCK.as_millis() as u64));
        let set: Option<String> = self.run(c.set_options(key, token, opts)).await?;
        Ok(set.is_some())
    }

    /// Releases the refresh lock of `sid` if `token` still holds it.
    pub(super) async fn unlock_refresh(&self, sid: &str, token: &str) {
        let mut c = self.conn.clone();
        let key = format!("{}:refresh:{sid}", self.prefix);
        let s = redis::Script::new(UNLOCK);
        let _: Result<i64, _> = self.run(s.key(key).arg(token).invoke_async(&mut c)).await;
    }

    /// Stores a sign-in in flight of `node` under `state` (sealed) within
    /// the caps; `Ok(false)`: full with other nodes' sign-ins.
    pub(crate) async fn insert_login<T: serde::Serialize>(
        &self,
        state: &str,
        node: &str,
        value: &T,
        caps: (Duration, usize, usize),
    ) -> Result<bool, StoreError> {
        let (ttl, per_node, total) = caps;
        let key = format!("{}:login:{state}", self.prefix);
        let json = serde_json::to_vec(&StoredLogin {
            node: node.to_string(),
            value,
        })
        .map_err(|e| down(format!("encoding: {e}")))?;
        let sealed = self.seal.seal(&key, &json);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut c = self.conn.clone();
        let s = redis::Script::new(INSERT_LOGIN);
        let mut inv = s.prepare_invoke();
        inv.key(&key)
            .key(format!("{}:logins:{node}", self.prefix))
            .key(format!("{}:logins", self.prefix))
            .arg(now_ms)
            .arg(ttl.as_millis() as u64)
            .arg(per_node)
            .arg(total)
            .arg(sealed)
            .arg(state)
            .arg(format!("{}:login:", self.prefix));
        let stored: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(stored == 1)
    }

    /// Takes the sign-in `state` out (single use), if it is there.
    pub(crate) async fn take_login<T: serde::de::DeserializeOwned>(
        &self,
        state: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = format!("{}:login:{state}", self.prefix);
        let mut c = self.conn.clone();
        let s = redis::Script::new(TAKE_LOGIN);
        let mut inv = s.prepare_invoke();
        inv.key(&key)
            .key(format!("{}:logins", self.prefix))
            .arg(state);
        let bytes: Option<Vec<u8>> = self.run(inv.invoke_async(&mut c)).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let Some(stored) = (self.seal.open(&key, &bytes).ok())
            .and_then(|p| serde_json::from_slice::<StoredLogin<T>>(&p).ok())
        else {
            tracing::error!("sign-in in flight does not open with the session secret; refused");
            return Ok(None);
        };
        let _: Result<i64, _> = self
            .run(c.zrem(format!("{}:logins:{}", self.prefix, stored.node), state))
            .await;
        Ok(Some(stored.value))
    }

    /// Follows the `revoked` channel for as long as the returned task
    /// runs: `revoked(sid)` for each revocation anywhere, and `resync()`
    /// after every (re)subscription (messages sent while it was away are
    /// lost; the caller re-checks instead).
    pub(super) fn follow(
        self: &Arc<Self>,
        revoked: impl Fn(&str) + Send + Sync + 'static,
        resync: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let (client, channel) = (self.client.clone(), self.channel());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                if me.strong_count() == 0 {
                    return;
                }
                match subscribe(&client, &channel).await {
                    Ok(ps) => {
                        wait = Duration::from_millis(200);
                        tracing::info!("following session revocations on Redis");
                        resync();
                        let mut stream = ps.into_on_message();
                        while let Some(m) = stream.next().await {
                            if let Ok(sid) = m.get_payload::<String>() {
                                revoked(&sid);
                            }
                        }
                        tracing::warn!(
                            "lost the Redis subscription to session revocations; reconnecting"
                        );
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to session revocations yet");
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        })
    }
}

async fn subscribe(client: &Client, channel: &str) -> Result<redis::aio::PubSub, StoreError> {
    let connect = async {
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(ps)
    };
    match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(r) => r.map_err(down),
        Err(_) => Err(down("Redis did not answer in time")),
    }
}

/// The client of `cfg`: its URL, the password from the config's secret
/// and, for `rediss://` with a private CA, that CA.
fn client(cfg: &RedisStore, via: Option<&std::path::Path>) -> Result<Client, StoreError> {
    let mut info = cfg.url.as_str().into_connection_info().map_err(down)?;
    if let Some(path) = via {
        info = info.set_addr(redis::ConnectionAddr::Unix(path.to_path_buf()));
    }
    if let Some(pw) = &cfg.password {
        let settings = info.redis_settings().clone().set_password(pw.expose());
        info = info.set_redis_settings(settings);
    }
    match &cfg.ca_file {
        None => Client::open(info).map_err(down),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| StoreError::Io {
                path: path.clone(),
                source: e,
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(info, certs).map_err(down)
        }
    }
}

#[cfg(test)]
mod tests {
    use tailpass_testkit::redis::{self as server, RedisServer};

    use super::*;
    use crate::config::SecretRef;

    #[tokio::test]
    async fn sign_ins_in_flight_keep_their_caps_and_are_single_use() {
        if !server::available("sign_ins_in_flight_keep_their_caps") {
            return;
        }
        let r = RedisServer::start(Some("pw-for-the-test"));
        let env = |k: &str| Some(format!("{k}-value-of-thirty-two-bytes-at-least"));
        let secret = SecretRef {
            env: Some("S".into()),
            file: None,
        }
        .load(&env)
        .unwrap();
        let cfg = RedisStore {
            url: r.url(),
            password: Some(
                SecretRef {
                    env: Some("PW".into()),
                    file: None,
                }
                .load(&|_| Some("pw-for-the-test".into()))
                .unwrap(),
            ),
            ca_file: None,
            key_prefix: "caps".into(),
            outage_grace: Duration::from_secs(60),
            share: None,
        };
        let s = Redis::new(&cfg, Seal::new(&secret, &[]), None).unwrap();
        let caps = (Duration::from_secs(600), 2, 4);
        let ins = async |state: &str, node: &str, v: u32| {
            s.insert_login(state, node, &v, caps).await.unwrap()
        };
        assert!(ins("a1", "node-a", 1).await);
        assert!(ins("b1", "node-b", 2).await);
        // Node a floods: only its own oldest go.
        for i in 2..20 {
            assert!(ins(&format!("a{i}"), "node-a", i).await);
        }
        assert_eq!(
            s.take_login::<u32>("b1").await.unwrap(),
            Some(2),
            "another node's survives"
        );
        assert_eq!(
            s.take_login::<u32>("a1").await.unwrap(),
            None,
            "the flooder's oldest went"
        );
        assert_eq!(s.take_login::<u32>("a19").await.unwrap(), Some(19));
        assert_eq!(
            s.take_login::<u32>("a19").await.unwrap(),
            None,
            "single use"
        );
        // Full with other nodes' sign-ins: refused, nothing dropped.
        for (st, n) in [("c", "1"), ("d", "2"), ("e", "3")] {
            assert!(ins(st, n, 0).await);
        }
        assert!(!ins("f", "4", 0).await, "full");
        for st in ["a18", "c", "d", "e"] {
            assert!(s.take_login::<u32>(st).await.unwrap().is_some(), "{st}");
        }
        // A wrong password is an unavailable store, not an empty one.
        let mut bad = cfg.clone();
        bad.password = None;
        let s2 = Redis::new(&bad, Seal::new(&secret, &[]), None).unwrap();
        assert!(matches!(
            s2.take_login::<u32>("x").await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
