//! Admission: who may open one more connection. A listener caps its open
//! connections in total and per source, and new client connections are
//! refused while the process is short of file descriptors (the reserve
//! belongs to connections already open and to the admin listener).
//!
//! Refusing happens right after accept and before anything costly (WhoIs,
//! TLS): the connection is closed at once, counted and logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::fds::Fds;
use crate::metrics::Metrics;

/// How a listener tells sources apart for the per-source cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sources {
    /// No per-source cap (loopback, admin: every caller is this host).
    Any,
    /// By exact address: tailnet peers (each node has its own addresses).
    Exact,
    /// Public clients: IPv4 by address, IPv6 by /64 (one customer's
    /// prefix), so one host cannot multiply itself by its address range.
    Public,
}

impl Sources {
    fn key(self, peer: SocketAddr) -> Option<IpAddr> {
        match self {
            Sources::Any => None,
            Sources::Exact => Some(peer.ip().to_canonical()),
            Sources::Public => Some(match peer.ip().to_canonical() {
                IpAddr::V6(v6) => {
                    let mut o = v6.octets();
                    o[8..].fill(0);
                    IpAddr::from(o)
                }
                v4 => v4,
            }),
        }
    }
}

/// Why a connection was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener has `max_connections` open.
    ListenerFull,
    /// This source has `max_connections_per_source` open.
    SourceFull,
    /// Fewer than `fd_reserve` file descriptors are left.
    FdReserve,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::ListenerFull => "listener_full",
            Refusal::SourceFull => "source_full",
            Refusal::FdReserve => "fd_reserve",
        }
    }
}

/// One listener's admission control.
pub(crate) struct Gate {
    listener: Arc<str>,
    max: usize,
    per_source: usize,
    sources: Sources,
    open: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    /// `None`: exempt from the descriptor reserve (the admin listener).
    fds: Option<Arc<Fds>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("listener", &self.listener)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub(crate) fn new(
        listener: &str,
        max: usize,
        per_source: usize,
        sources: Sources,
        fds: Option<Arc<Fds>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Gate> {
        metrics.open_connections(listener, 0);
        Arc::new(Gate {
            listener: listener.into(),
            max,
            per_source,
            sources,
            open: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            fds,
            metrics,
        })
    }

    pub(crate) fn listener(&self) -> &str {
        &self.listener
    }

    /// Admits one connection from `peer`, or says why not. The ticket
    /// counts it as open until dropped.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Ticket, Refusal> {
        if self.fds.as_ref().is_some_and(|f| f.short()) {
            return Err(Refusal::FdReserve);
        }
        // Total first (lock-free), then the source under the map's lock.
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ListenerFull);
        }
        let source = self.sources.key(peer);
        if let Some(ip) = source {
            // A poisoned lock only means another thread panicked while
            // counting; the counts themselves are still whole numbers.
            let mut m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= self.per_source {
                drop(m);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::SourceFull);
            }
            *n += 1;
        }
        if let Some(f) = &self.fds {
            f.opened();
        }
        self.metrics
            .open_connections(&self.listener, prev as i64 + 1);
        Ok(Ticket {
            gate: self.clone(),
            source,
        })
    }

    /// Open connections now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// An admitted connection; dropping it frees its place.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    source: Option<IpAddr>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("listener", &self.gate.listener)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let g = &self.gate;
        if let Some(ip) = self.source {
            let mut m = g.by_source.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
        let now = g.open.fetch_sub(1, Ordering::AcqRel) - 1;
        g.metrics.open_connections(&g.listener, now as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_source_and_in_total_and_frees_on_drop() {
        let m = Arc::new(Metrics::new());
        let g = Gate::new("t", 3, 2, Sources::Exact, None, m.clone());
        let a1 = g.admit(addr("100.64.0.1:1000")).unwrap();
        let _a2 = g.admit(addr("100.64.0.1:1001")).unwrap();
        assert_eq!(
            g.admit(addr("100.64.0.1:1002")).unwrap_err(),
            Refusal::SourceFull
        );
        // Another source is still served.
        let _b1 = g.admit(addr("100.64.0.2:1000")).unwrap();
        assert_eq!(
            g.admit(addr("100.64.0.3:1000")).unwrap_err(),
            Refusal::ListenerFull
        );
        assert_eq!(g.open(), 3);
        drop(a1);
        assert_eq!(g.open(), 2);
        let _a3 = g.admit(addr("100.64.0.1:1003")).unwrap();
        assert!(
            m.render()
                .contains(r#"tailpass_open_connections{listener="t"} 3"#),
            "{}",
            m.render()
        );
    }

    #[test]
    fn public_ipv6_sources_count_by_prefix() {
        let m = Arc::new(Metrics::new());
        let g = Gate::new("p", 10, 1, Sources::Public, None, m);
        let _a = g.admit(addr("[2001:db8:1:2::1]:443")).unwrap();
        assert_eq!(
            g.admit(addr("[2001:db8:1:2:ffff::9]:443")).unwrap_err(),
            Refusal::SourceFull
        );
        let _b = g.admit(addr("[2001:db8:1:3::1]:443")).unwrap();
        // IPv4-mapped IPv6 is the IPv4 source.
        let _c = g.admit(addr("192.0.2.1:1")).unwrap();
        assert_eq!(
            g.admit(addr("[::ffff:192.0.2.1]:2")).unwrap_err(),
            Refusal::SourceFull
        );
    }

    #[test]
    fn any_source_has_no_per_source_cap() {
        let m = Arc::new(Metrics::new());
        let g = Gate::new("l", 3, 1, Sources::Any, None, m);
        let _t: Vec<_> = (0..3)
            .map(|i| g.admit(addr(&format!("127.0.0.1:{}", 1000 + i))).unwrap())
            .collect();
        assert_eq!(
            g.admit(addr("127.0.0.1:2000")).unwrap_err(),
            Refusal::ListenerFull
        );
    }
}
