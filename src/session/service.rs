//! The session service: the one thing the request pipeline and the portal
//! ask about sessions. It owns the signing keys, the [`Store`], refresh at
//! the provider (`refresh.rs`) and the watchers that close websockets when
//! a session ends.
//!
//! The pipeline asks one question, [`Sessions::authenticate`]: the live
//! session of a request (verified cookie, matching binding, live record,
//! refreshed when due) and the caller's roles. The portal opens and closes
//! sessions through it ([`Sessions::open`], [`Sessions::close`]) and never
//! touches the keys or the store itself.
//!
//! What it must not do: trust the cookie alone (its `sid` must name a live
//! record bound to the same node and user), or serve pages.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;

use super::refresh::Retry;
use super::{Binding, Keys, Record, Session, SessionCookie, Store, now, random_token};
use crate::config::{self, Config, Rule, SessionStore};
use crate::http::headers;
use crate::identity::PeerIdentity;
use crate::oidc;
use crate::policy;
use crate::proxy::{LoginHeaders, SessionEnd};

/// Who the caller is at the login side: the live session, if any, and the
/// roles the rules give the caller with it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authenticated {
    pub(crate) session: Option<Session>,
    pub(crate) roles: BTreeSet<String>,
}

impl Authenticated {
    /// The identity headers for the upstream, when signed in.
    pub(crate) fn login_headers(&self) -> Option<LoginHeaders> {
        self.session.as_ref().map(|s| LoginHeaders {
            email: s.email.clone(),
            user: s.sub.clone(),
            name: s.name.clone(),
            groups: s.groups().iter().map(|g| g.to_string()).collect(),
            roles: self.roles.iter().cloned().collect(),
        })
    }
}

/// A session just opened: the signed cookie value and its lifetime.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The signed JWT for the session cookie.
    pub(crate) token: String,
    /// Seconds until it expires.
    pub(crate) max_age: i64,
    /// The roles the sign-in earned (for the log).
    pub(crate) roles: BTreeSet<String>,
    /// Who signed in, as the log shows it (email, else subject).
    pub(crate) shown: String,
}

/// Why a verified sign-in opened no session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The sign-in (shown as email, else subject) maps to no role; nothing
    /// was stored.
    #[error("the sign-in of {0} maps to no role")]
    NoRole(String),
    /// The record could not be persisted.
    #[error("cannot persist a new session: {0}")]
    Store(super::StoreError),
}

/// Keys, store, refresh and watchers of the login sessions.
pub(crate) struct Sessions {
    pub(super) cfg: config::Portal,
    pub(super) keys: Keys,
    pub(super) store: Arc<Store>,
    pub(super) providers: Arc<[oidc::Client]>,
    rules: Vec<Rule>,
    // Shared with the service a reload replaces, so refreshes in progress
    // and back-offs carry over.
    pub(super) refreshing: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    // Sessions whose last refresh failed for a reason that may pass: when
    // to try again (never a token call per request while it is down).
    pub(super) retry: Arc<Mutex<HashMap<String, Retry>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("cookie", &self.cfg.cookie_name)
            .finish()
    }
}

impl Sessions {
    /// The service of `config`'s portal, refreshing at `providers`. On a
    /// reload, `previous` hands over its store (when `portal.state_dir` is
    /// unchanged), its refreshes in progress and its back-offs.
    pub(crate) fn new(
        cfg: &config::Portal,
        config: &Config,
        providers: Arc<[oidc::Client]>,
        dialer: &oidc::Dialer,
        previous: Option<&Sessions>,
    ) -> Result<Sessions, String> {
        let keys = Keys::new(&cfg.session_secret, &cfg.retired_session_secrets)?;
        let store = match previous {
            Some(p) if same_store(&p.cfg, cfg) => p.store.clone(),
            _ => Arc::new(Store::for_portal_via(cfg, Some(dialer)).map_err(|e| e.to_string())?),
        };
        Ok(Sessions {
            cfg: cfg.clone(),
            keys,
            store,
            providers,
            rules: config.rules.clone(),
            refreshing: previous.map(|p| p.refreshing.clone()).unwrap_or_default(),
            retry: previous.map(|p| p.retry.clone()).unwrap_or_default(),
        })
    }

    /// The session cookie's name (the proxy strips it before forwarding).
    pub(crate) fn cookie_name(&self) -> &str {
        &self.cfg.cookie_name
    }

    /// How many sessions are live (the sessions gauge).
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the session store answered last time it was asked.
    pub(crate) fn store_up(&self) -> bool {
        self.store.up()
    }

    pub(super) fn provider(&self, name: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config().name == name)
    }

    /// The caller's live session (refreshed at the provider when due) and
    /// roles. Invalid cookies count as no session (and are logged).
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Authenticated {
        let session = self.session(headers, who).await;
        let roles = self.roles(who, session.as_ref());
        Authenticated { session, roles }
    }

    /// The roles of a caller.
    pub(crate) fn roles(&self, who: &PeerIdentity, session: Option<&Session>) -> BTreeSet<String> {
        policy::roles(&self.rules, who, session)
    }

    async fn session(&self, headers: &HeaderMap, who: &PeerIdentity) -> Option<Session> {
        let token = headers::cookie(headers, &self.cfg.cookie_name)?;
        let binding = Binding::of(who)?;
        let t = now();
        let c: SessionCookie = match self.keys.verify(token, &binding, t) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(peer = %who, reason = %e, "session cookie refused");
                return None;
            }
        };
        let rec = match self.store.get(&c.sid, t).await {
            Ok(Some(r)) if r.binding == binding => r,
            Ok(Some(_)) => {
                tracing::warn!(peer = %who, "session record bound elsewhere; refused");
                return None;
            }
            Ok(None) => {
                tracing::info!(peer = %who, "session revoked or unknown");
                return None;
            }
            Err(e) => {
                tracing::warn!(peer = %who, error = %e, "session not verified");
                return None;
            }
        };
        let rec = self.maybe_refresh(&c.sid, rec, false).await?;
        Some(rec.into_session(&c.sid))
    }

    /// What closes a websocket opened under `session`: its revocation or
    /// its expiry.
    pub(crate) fn end_watch(&self, session: &Session) -> SessionEnd {
        SessionEnd {
            revoked: self.store.watch(&session.sid),
            expires: session.expires,
        }
    }

    /// Opens the session a verified sign-in of `binding` at `provider`
    /// earned, unless it maps to no role; the session this browser had
    /// (its cookie in `headers`) is revoked.
    pub(crate) async fn open(
        &self,
        provider: &str,
        binding: &Binding,
        login: oidc::Login,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Result<Opened, OpenError> {
        let t0 = now();
        let sid = random_token();
        let expires = t0 + self.cfg.session_lifetime.as_secs() as i64;
        let rec = Record {
            provider: provider.to_string(),
            sub: login.sub,
            binding: binding.clone(),
            claims: login.claims,
            id_token: login.id_token,
            refresh_token: login.refresh_token,
            created: t0,
            auth_time: login.auth_time,
            expires,
            refreshed: t0,
        };
        let session = rec.clone().into_session(&sid);
        let shown = session.email.clone().unwrap_or_else(|| session.sub.clone());
        let roles = self.roles(who, Some(&session));
        if roles.is_empty() {
            return Err(OpenError::NoRole(shown));
        }
        self.store.put(&sid, rec).await.map_err(OpenError::Store)?;
        // A new sign-in replaces the session this browser had.
        if let Some(old) = self.cookie_of(headers, binding, t0)
            && old.sid != sid
        {
            let _ = self.store.revoke(&old.sid).await;
        }
        let token = self.keys.sign(&SessionCookie {
            sid,
            node: binding.node.clone(),
            usr: binding.user.clone(),
            iat: t0,
            exp: expires,
        });
        Ok(Opened {
            token,
            max_age: expires - t0,
            roles,
            shown,
        })
    }

    /// Signs out: revokes the session of the cookie in `headers` (its
    /// websockets close). Returns its record, if one was live.
    pub(crate) async fn close(
        &self,
        headers: &HeaderMap,
        who: &PeerIdentity,
    ) -> Result<Option<Record>, super::store::StoreError> {
        let Some(c) = Binding::of(who).and_then(|b| self.cookie_of(headers, &b, now())) else {
            return Ok(None);
        };
        self.store.revoke(&c.sid).await
    }

    /// The verified session cookie in `headers`, bound to `binding`.
    fn cookie_of(&self, headers: &HeaderMap, binding: &Binding, t: i64) -> Option<SessionCookie> {
        let token = headers::cookie(headers, &self.cfg.cookie_name)?;
        self.keys.verify(token, binding, t).ok()
    }

    /// One round of upkeep: drops expired sessions (closing their
    /// websockets) and refreshes sessions that have open websockets, so a
    /// session ended at the provider also closes its long-lived connections.
    pub(crate) async fn tick(&self) {
        if let Err(e) = self.store.upkeep(now()).await {
            tracing::debug!(error = %e, "session store upkeep");
        }
        let backing_off: Vec<String> = (self.retry.lock().unwrap_or_else(|e| e.into_inner()))
            .keys()
            .cloned()
            .collect();
        for sid in backing_off {
            if let Ok(None) = self.store.get(&sid, now()).await {
                self.retry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&sid);
            }
        }
        for sid in self.store.watched() {
            if let Ok(Some(rec)) = self.store.get(&sid, now()).await {
                let _ = self.maybe_refresh(&sid, rec, false).await;
            }
        }
    }

    /// How often [`Sessions::tick`] should run: with a shared store, at
    /// least every 5 s (the re-check behind pub/sub).
    pub(crate) fn upkeep_interval(&self) -> Duration {
        let most = match self.cfg.store {
            SessionStore::File => Duration::from_secs(30),
            SessionStore::Redis(_) => Duration::from_secs(5),
        };
        (self.cfg.refresh_interval / 2).clamp(Duration::from_secs(1), most)
    }

    /// The Redis store, when sessions are shared (sign-ins in flight are
    /// kept there too).
    pub(crate) fn redis(&self) -> Option<Arc<super::Redis>> {
        self.store.redis()
    }
}

/// Whether a reload can keep the store: same place and, for Redis (whose
/// records are sealed with them), the same session secrets.
fn same_store(before: &config::Portal, now: &config::Portal) -> bool {
    before.store == now.store
        && match now.store {
            SessionStore::File => before.state_dir == now.state_dir,
            SessionStore::Redis(_) => {
                before.session_secret == now.session_secret
                    && before.retired_session_secrets == now.retired_session_secrets
            }
        }
}

#[cfg(test)]
impl Sessions {
    /// Whether both services use the same store (a reload kept it).
    pub(crate) fn same_store(&self, other: &Sessions) -> bool {
        Arc::ptr_eq(&self.store, &other.store)
    }
}
