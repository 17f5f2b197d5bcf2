//! Sign-ins in flight: started at `/oauth2/<p>/authorize`, finished (or
//! not) at the callback. Bounded twice — per tailnet node and in total — so
//! that one peer's flood of authorize requests only ever evicts that peer's
//! own oldest sign-ins, never another peer's. When every slot is taken by
//! other nodes, a new sign-in is refused instead.
//!
//! [`PendingLogins`] is the portal's table of them, shared across reloads
//! (or kept in Redis with the sessions, under the same caps);
//! [`Pending`] is the bounded table underneath.
//!
//! What it must not do: drop a sign-in of one node to make room for another
//! node's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::oidc;
use crate::session::{Binding, Redis, StoreError};

/// How long a started sign-in may take.
pub(crate) const LOGIN_TTL: Duration = Duration::from_secs(600);

/// At most this many sign-ins in flight in total.
pub(crate) const MAX_TOTAL: usize = 10_000;
/// At most this many sign-ins in flight per tailnet node (a browser with a
/// few tabs needs a handful).
pub const MAX_PER_NODE: usize = 32;

/// The table is full with other nodes' sign-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-ins in progress")]
pub(crate) struct Full;

struct Entry<T> {
    node: String,
    started: Instant,
    value: T,
}

/// Sign-ins in flight by `state`.
pub(crate) struct Pending<T> {
    map: HashMap<String, Entry<T>>,
    ttl: Duration,
    total: usize,
    per_node: usize,
}

impl<T> Pending<T> {
    /// An empty table; entries older than `ttl` are dropped.
    pub(crate) fn new(ttl: Duration, total: usize, per_node: usize) -> Pending<T> {
        Pending {
            map: HashMap::new(),
            ttl,
            total: total.max(1),
            per_node: per_node.max(1),
        }
    }

    /// Adds the sign-in `state` of tailnet node `node` (its stable id). At
    /// the node's cap, the node's own oldest sign-in is dropped; when the
    /// table is full with other nodes' sign-ins, nothing is dropped and
    /// [`Full`] is returned.
    pub(crate) fn insert(&mut self, state: String, node: &str, value: T) -> Result<(), Full> {
        let ttl = self.ttl;
        self.map.retain(|_, e| e.started.elapsed() < ttl);
        let mine = self.map.values().filter(|e| e.node == node).count();
        if mine >= self.per_node || self.map.len() >= self.total {
            let oldest_own = self
                .map
                .iter()
                .filter(|(_, e)| e.node == node)
                .min_by_key(|(_, e)| e.started)
                .map(|(k, _)| k.clone());
            match oldest_own {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => return Err(Full),
            }
        }
        self.map.insert(
            state,
            Entry {
                node: node.to_string(),
                started: Instant::now(),
                value,
            },
        );
        Ok(())
    }

    /// Takes the sign-in `state` out (single use), if it is live.
    pub(crate) fn take(&mut self, state: &str) -> Option<T> {
        self.map
            .remove(state)
            .filter(|e| e.started.elapsed() < self.ttl)
            .map(|e| e.value)
    }
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending::new(LOGIN_TTL, MAX_TOTAL, MAX_PER_NODE)
    }
}

/// One sign-in in flight: what the callback must match, and where the
/// browser goes after it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingLogin {
    /// The provider it was started at.
    pub(crate) provider: String,
    /// PKCE verifier and nonce.
    pub(crate) oidc: oidc::Pending,
    /// Where the browser goes after signing in (validated already).
    pub(crate) target: String,
    /// The tailnet node and user that started it.
    pub(crate) binding: Binding,
    /// The login cookie's value in the browser that started it.
    pub(crate) browser: String,
    /// The step-up age asked for, if any.
    pub(crate) max_age: Option<u64>,
    pub(crate) redirect_uri: String,
}

/// Why a sign-in could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InsertError {
    /// The table is full with other nodes' sign-ins.
    #[error(transparent)]
    Full(#[from] Full),
    /// The shared store cannot be reached.
    #[error(transparent)]
    Store(StoreError),
}

/// The sign-ins in flight of a portal, by `state`: in this process (a
/// reload's new portal shares the table; clones share it), or in the
/// shared Redis store, so a sign-in started through one tailpass can
/// finish through another.
#[derive(Clone)]
pub(crate) enum PendingLogins {
    Local(Arc<Mutex<Pending<PendingLogin>>>),
    Shared(Arc<Redis>),
}

impl Default for PendingLogins {
    fn default() -> Self {
        PendingLogins::Local(Arc::default())
    }
}

impl PendingLogins {
    /// The table of a portal: in `redis` when sessions are shared, else
    /// the local table `previous` had (a reload), else a new one.
    pub(crate) fn new(redis: Option<Arc<Redis>>, previous: Option<&PendingLogins>) -> Self {
        match (redis, previous) {
            (Some(r), _) => PendingLogins::Shared(r),
            (None, Some(p @ PendingLogins::Local(_))) => p.clone(),
            (None, _) => PendingLogins::default(),
        }
    }

    /// Adds a sign-in under its OIDC `state`, within the caps of its node.
    pub(crate) async fn insert(&self, login: PendingLogin) -> Result<(), InsertError> {
        let state = login.oidc.state.clone();
        let node = login.binding.node.clone();
        match self {
            PendingLogins::Local(t) => Ok(lock(t).insert(state, &node, login)?),
            PendingLogins::Shared(r) => {
                let caps = (LOGIN_TTL, MAX_PER_NODE, MAX_TOTAL);
                match r.insert_login(&state, &node, &login, caps).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(InsertError::Full(Full)),
                    Err(e) => Err(InsertError::Store(e)),
                }
            }
        }
    }

    /// Takes the sign-in `state` out (single use), if it is live.
    pub(crate) async fn take(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        match self {
            PendingLogins::Local(t) => Ok(lock(t).take(state)),
            PendingLogins::Shared(r) => r.take_login(state).await,
        }
    }

    #[cfg(test)]
    pub(crate) fn same_table(&self, other: &PendingLogins) -> bool {
        match (self, other) {
            (PendingLogins::Local(a), PendingLogins::Local(b)) => Arc::ptr_eq(a, b),
            (PendingLogins::Shared(a), PendingLogins::Shared(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

fn lock(t: &Mutex<Pending<PendingLogin>>) -> std::sync::MutexGuard<'_, Pending<PendingLogin>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_evicts_only_its_own_sign_ins() {
        let mut p = Pending::new(Duration::from_secs(600), 4, 2);
        p.insert("a1".into(), "node-a", 1).unwrap();
        p.insert("b1".into(), "node-b", 2).unwrap();
        // Node a floods: only its own oldest go.
        for i in 2..100 {
            p.insert(format!("a{i}"), "node-a", i).unwrap();
        }
        assert_eq!(p.map.len(), 3);
        assert_eq!(p.take("b1"), Some(2), "another node's sign-in survives");
        assert_eq!(p.take("a1"), None, "the flooder's oldest went");
        assert_eq!(p.take("a99"), Some(99));
        assert_eq!(p.take("a99"), None, "single use");
        // Full with other nodes' sign-ins: refused, nothing dropped.
        let mut p = Pending::new(Duration::from_secs(600), 4, 2);
        for (s, n) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
            p.insert(s.into(), n, ()).unwrap();
        }
        assert_eq!(p.insert("e".into(), "5", ()), Err(Full));
        assert_eq!(p.map.len(), 4);
        // A node already in the table replaces its own oldest.
        p.insert("a2".into(), "1", ()).unwrap();
        assert!(p.take("a").is_none() && p.take("a2").is_some());
        assert!(["b", "c", "d"].iter().all(|s| p.take(s).is_some()));
    }

    #[test]
    fn expired_sign_ins_make_room_and_cannot_be_taken() {
        let mut p = Pending::new(Duration::from_millis(30), 1, 1);
        p.insert("a".into(), "1", ()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        p.insert("b".into(), "2", ()).unwrap();
        assert!(p.take("a").is_none());
        let mut p = Pending::new(Duration::from_millis(30), 2, 2);
        p.insert("a".into(), "1", ()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(p.take("a").is_none(), "expired");
    }
}
