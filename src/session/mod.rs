//! Login sessions: a signed JWT in a cookie, bound to the tailnet node and
//! user that logged in, backed by a persisted server-side record that can
//! be revoked.
//!
//! The cookie alone is never enough: its `sid` must name a live record in
//! the [`Store`], so a logout (which deletes the record and persists the
//! deletion) ends the session everywhere, restarts included. The cookie
//! carries the binding (node stable id, tailnet user) so a copy presented
//! from another node fails before the store is consulted.
//!
//! [`Sessions`] is the service over all of it: keys, store, refresh at the
//! provider and the watchers of open websockets. The request pipeline asks
//! it one question ([`Sessions::authenticate`]); the portal opens and
//! closes sessions through it. The cookie and store halves must not talk to
//! providers; only the service's refresh does.

mod cookie;
mod file;
mod redis;
mod refresh;
mod seal;
mod service;
mod store;
mod tunnel;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cookie::{Keys, SessionCookie};
pub(crate) use redis::Redis;
pub(crate) use service::{Authenticated, OpenError, Sessions};
pub use store::{Record, Store, StoreError};
pub(crate) use tunnel::share;

use crate::identity::{PeerIdentity, Principal};

/// The tailnet identity a session is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Stable id of the node that logged in.
    pub node: String,
    /// Tailnet user login of that node, or `tagged:<tags>` for tagged nodes.
    pub user: String,
}

impl Binding {
    /// The binding of a caller, if it is a tailnet peer.
    pub fn of(who: &PeerIdentity) -> Option<Binding> {
        let p = who.principal()?;
        let w = p.whois();
        let user = match p {
            Principal::Tagged(_) => format!("tagged:{}", w.node.tags.join(",")),
            Principal::User(_) => w.user.login_name.clone(),
        };
        Some(Binding {
            node: w.node.stable_id.0.clone(),
            user,
        })
    }
}

/// What a request knows about its session once the cookie verified and the
/// record is live.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Session id.
    pub(crate) sid: String,
    /// Provider name.
    pub(crate) provider: String,
    /// Subject at the provider.
    pub(crate) sub: String,
    /// Email claim, lowercased.
    pub(crate) email: Option<String>,
    /// Display name claim.
    pub(crate) name: Option<String>,
    /// Every claim of the ID token and userinfo, merged.
    pub(crate) claims: BTreeMap<String, serde_json::Value>,
    /// When the user last authenticated at the provider (unix seconds).
    /// `None`: the provider did not prove it (no `auth_time`).
    pub(crate) auth_time: Option<i64>,
    /// When the session ends (unix seconds).
    pub(crate) expires: i64,
}

impl Session {
    /// The groups claim as strings (absent or malformed: empty).
    pub(crate) fn groups(&self) -> Vec<&str> {
        match self.claims.get("groups") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random URL-safe token with 256 bits of entropy.
pub(crate) fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system RNG works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
