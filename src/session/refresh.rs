//! Refresh at the provider, lazily: when a request (or the upkeep of a
//! session with open websockets) finds the refresh interval passed. One
//! refresh per session at a time; failures that may pass back off per
//! session; a provider's refusal, or no refresh for longer than
//! `refresh_grace` past the interval, ends the session (which closes its
//! websockets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::service::Sessions;
use super::{Record, now};
use crate::oidc::RefreshError;

/// Backoff of a session whose refresh keeps failing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    failures: u32,
    next: Instant,
}

/// The wait after `failures` failed refreshes in a row: 2 s, doubling, at
/// most the refresh interval (at least 5 s, at most 5 min).
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let cap = interval.clamp(Duration::from_secs(5), Duration::from_secs(300));
    Duration::from_secs(2)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap)
}

impl Sessions {
    fn due(&self, r: &Record, force: bool) -> bool {
        force || now() - r.refreshed >= self.cfg.refresh_interval.as_secs() as i64
    }

    fn overdue(&self, r: &Record) -> bool {
        let interval = self.cfg.refresh_interval.as_secs() as i64;
        now() - r.refreshed > interval + self.cfg.refresh_grace.as_secs() as i64
    }

    fn backing_off(&self, sid: &str) -> bool {
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .is_some_and(|r| Instant::now() < r.next)
    }

    /// Refreshes `rec` at its provider when the refresh interval has passed
    /// (or `force`). Returns `None` when the session ended: the provider
    /// refused the refresh (any OAuth error answer but "try later"), or it
    /// could not be refreshed for longer than `refresh_grace` past its
    /// interval. It is then revoked here too, which closes its websockets.
    /// Failures that may pass keep the session and back off per session.
    pub(super) async fn maybe_refresh(
        &self,
        sid: &str,
        rec: Record,
        force: bool,
    ) -> Option<Record> {
        if rec.refresh_token.is_none() || !self.due(&rec, force) {
            return Some(rec);
        }
        if self.backing_off(sid) {
            return if self.overdue(&rec) {
                self.end_unrefreshable(sid, &rec).await
            } else {
                Some(rec)
            };
        }
        // One refresh per session at a time: refresh tokens may rotate, and
        // a second use of the old one would end the session.
        let lock = {
            let mut m = self.refreshing.lock().await;
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(sid.to_string()).or_default().clone()
        };
        let _g = lock.lock().await;
        let rec = self.store.get(sid, now()).await.ok()??;
        if !self.due(&rec, force) || self.backing_off(sid) {
            return Some(rec);
        }
        // And one host at a time (a shared store): the others go on with
        // the record as it is, as they do while Redis is unreachable (a
        // refreshed token that cannot be stored would end the session).
        let Ok(token) = self.store.lock_refresh(sid).await else {
            return Some(rec);
        };
        // Another host may have refreshed it just before.
        let out = match self.store.get(sid, now()).await {
            Ok(Some(rec)) if self.due(&rec, force) => self.refresh(sid, rec).await,
            Ok(Some(rec)) => Some(rec),
            Ok(None) => None,
            Err(_) => Some(rec),
        };
        self.store.unlock_refresh(sid, token).await;
        out
    }

    /// One refresh call at the provider, and what its answer means.
    async fn refresh(&self, sid: &str, rec: Record) -> Option<Record> {
        let (Some(rt), Some(p)) = (rec.refresh_token.clone(), self.provider(&rec.provider)) else {
            return Some(rec);
        };
        let outcome = p.refresh(&rt, &rec.sub).await;
        if !matches!(outcome, Err(RefreshError::Unavailable(_))) {
            self.retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(sid);
        }
        match outcome {
            Ok((new_rt, id)) => {
                let mut r = rec;
                r.refreshed = now();
                if let Some(n) = new_rt {
                    r.refresh_token = Some(n);
                }
                if let Some((idt, claims)) = id {
                    r.id_token = idt;
                    // The provider's current claims replace the old ones
                    // (a group removed there is removed here).
                    r.claims = claims;
                }
                if let Err(e) = self.store.put(sid, r.clone()).await {
                    tracing::error!(error = %e, "cannot persist a refreshed session");
                }
                tracing::debug!(provider = %r.provider, "session refreshed");
                Some(r)
            }
            Err(RefreshError::Ended(why)) => {
                tracing::info!(provider = %rec.provider, sub = %rec.sub, reason = %why, "provider ended the session; revoking");
                self.revoke_ended(sid).await;
                None
            }
            Err(RefreshError::Unavailable(why)) => {
                if self.overdue(&rec) {
                    tracing::warn!(provider = %rec.provider, reason = %why, "cannot refresh the session now");
                    return self.end_unrefreshable(sid, &rec).await;
                }
                let wait = self.back_off(sid);
                tracing::warn!(provider = %rec.provider, reason = %why, retry_in = ?wait, "cannot refresh the session now; kept, trying again later");
                Some(rec)
            }
        }
    }

    /// Counts one more failed refresh of `sid`; returns the wait before the
    /// next try.
    fn back_off(&self, sid: &str) -> Duration {
        let mut m = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.entry(sid.to_string()).or_insert(Retry {
            failures: 0,
            next: Instant::now(),
        });
        r.failures += 1;
        let wait = retry_delay(r.failures, self.cfg.refresh_interval);
        r.next = Instant::now() + wait;
        wait
    }

    /// Ends a session that could not be refreshed within its grace period.
    async fn end_unrefreshable(&self, sid: &str, rec: &Record) -> Option<Record> {
        tracing::warn!(
            provider = %rec.provider,
            sub = %rec.sub,
            grace = ?self.cfg.refresh_grace,
            "the session could not be refreshed within refresh_interval + refresh_grace; ending it"
        );
        self.revoke_ended(sid).await;
        None
    }

    async fn revoke_ended(&self, sid: &str) {
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid);
        if let Err(e) = self.store.revoke(sid).await {
            tracing::error!(error = %e, "cannot persist a revocation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_retries_back_off_up_to_the_interval() {
        let secs = |n, i| retry_delay(n, Duration::from_secs(i)).as_secs();
        assert_eq!(
            (1..=9).map(|n| secs(n, 300)).collect::<Vec<_>>(),
            [2, 4, 8, 16, 32, 64, 128, 256, 300]
        );
        assert_eq!(secs(40, 300), 300, "no overflow");
        assert_eq!(secs(3, 1), 5, "at least 5 s between tries");
        assert_eq!(secs(30, 3600), 300, "at most 5 min");
    }
}
