//! File descriptors: the process's limit (raised to the hard limit at
//! start, as Go programs do), how many are open, and whether a new client
//! connection would eat into the reserve.
//!
//! Counting `/proc/self/fd` costs about a millisecond per 10,000 entries, so
//! it is sampled at most every [`SAMPLE_EVERY`]; between samples each
//! admitted connection is assumed to cost [`FDS_PER_CONNECTION`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::metrics::Metrics;

/// How often the open descriptors are counted at most.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// What a new connection is assumed to cost until the next count: its own
/// socket plus the shim's end of a tailnet hand-off. Upstream sockets come
/// later, from the reserve.
const FDS_PER_CONNECTION: usize = 2;

/// What [`raise_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdLimit {
    /// Soft limit before.
    pub(crate) before: u64,
    /// Soft limit now.
    pub(crate) soft: u64,
    /// Hard limit.
    pub(crate) hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Fails only if the
/// kernel refuses (then the limit stays as it was).
pub(crate) fn raise_limit() -> std::io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FdLimit {
        before: soft,
        soft: now,
        hard,
    })
}

/// Open descriptors of this process, if `/proc` can tell.
fn count_open() -> Option<usize> {
    // The directory handle itself is one of the entries.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1))
}

fn soft_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE).ok().map(|(s, _)| s)
}

/// The process's descriptor budget, shared by every listener.
pub(crate) struct Fds {
    reserve: usize,
    sampled: AtomicUsize,
    limit: AtomicU64,
    since: AtomicUsize,
    at: Mutex<Option<Instant>>,
    metrics: std::sync::Arc<Metrics>,
}

impl std::fmt::Debug for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fds")
            .field("reserve", &self.reserve)
            .field("open", &self.sampled.load(Ordering::Relaxed))
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .finish()
    }
}

impl Fds {
    pub(crate) fn new(reserve: usize, metrics: std::sync::Arc<Metrics>) -> Fds {
        let f = Fds {
            reserve,
            sampled: AtomicUsize::new(0),
            limit: AtomicU64::new(u64::MAX),
            since: AtomicUsize::new(0),
            at: Mutex::new(None),
            metrics,
        };
        f.sample();
        f
    }

    /// Counts again now (also feeds the metrics).
    pub(crate) fn sample(&self) -> (usize, u64) {
        // Counting needs a descriptor too: when none is left, the last
        // figure stands (and is at least the limit).
        let open = count_open().unwrap_or_else(|| {
            let last = self.sampled.load(Ordering::Acquire);
            let limit = self.limit.load(Ordering::Acquire);
            last.max(usize::try_from(limit).unwrap_or(usize::MAX))
        });
        let limit = soft_limit().unwrap_or(u64::MAX);
        self.sampled.store(open, Ordering::Release);
        self.limit.store(limit, Ordering::Release);
        self.since.store(0, Ordering::Release);
        self.metrics.fds(open, limit);
        (open, limit)
    }

    fn maybe_sample(&self) {
        // One counter at a time; others use the last figure.
        let Ok(mut at) = self.at.try_lock() else {
            return;
        };
        if at.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY) {
            *at = Some(Instant::now());
            drop(at);
            self.sample();
        }
    }

    /// Whether a new client connection would leave fewer than the reserve.
    /// A reserve of 0 turns the check off.
    pub(crate) fn short(&self) -> bool {
        self.maybe_sample();
        if self.reserve == 0 {
            return false;
        }
        let est = self.sampled.load(Ordering::Acquire)
            + self.since.load(Ordering::Acquire) * FDS_PER_CONNECTION;
        let limit = self.limit.load(Ordering::Acquire);
        (est + self.reserve + FDS_PER_CONNECTION) as u64 > limit
    }

    /// Notes one admitted connection (until the next count).
    pub(crate) fn opened(&self) {
        self.since.fetch_add(1, Ordering::AcqRel);
    }

    /// Last figures: (open, soft limit, reserve).
    pub(crate) fn figures(&self) -> (usize, u64, usize) {
        (
            self.sampled.load(Ordering::Acquire),
            self.limit.load(Ordering::Acquire),
            self.reserve,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_descriptors_and_sees_new_ones() {
        let m = std::sync::Arc::new(Metrics::new());
        let f = Fds::new(0, m.clone());
        let (before, limit) = f.sample();
        assert!(before >= 3 && limit > before as u64);
        let files: Vec<_> = (0..20)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let (after, _) = f.sample();
        // Other tests in this process open and close files too.
        assert!(after >= before + 10, "{before} -> {after}");
        drop(files);
        assert!(m.render().contains("tailpass_fd_limit"));
    }

    #[test]
    fn short_when_the_reserve_would_be_touched() {
        let m = std::sync::Arc::new(Metrics::new());
        let (_, limit) = Fds::new(0, m.clone()).sample();
        assert!(!Fds::new(0, m.clone()).short(), "0 turns the check off");
        assert!(!Fds::new(1, m.clone()).short());
        // A reserve as big as the limit leaves nothing for clients.
        assert!(Fds::new(limit as usize, m).short());
    }
}
