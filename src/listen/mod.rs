//! The door (security invariant 10): accept loops that never die,
//! admission (caps per listener and per source, a reserve of file
//! descriptors), timeouts for connections that have not proved anything
//! yet, and the truth about every listener for `/healthz`.
//!
//! Every listener — tailnet HTTPS, the :80 redirect, Funnel, loopback,
//! public, admin — runs [`run`]: an accept error is logged at WARN once per
//! burst (with a count), backed off (growing to [`MAX_BACKOFF`]) and
//! retried; a listener that was closed under us is opened again. Listeners
//! are independent tasks: one node's trouble never stops another's.
//!
//! Design notes, defaults and threat model: `docs/door.md`.
//!
//! What this module must not do: read a byte of any connection (identity,
//! TLS and HTTP come later, in `server`), or ever return from [`run`]
//! before shutdown.

mod fds;
mod gate;
mod tailnet;
mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub(crate) use fds::Fds;
pub(crate) use fds::raise_limit;
pub(crate) use gate::{Gate, Refusal, Sources, Ticket};
pub(crate) use tailnet::{Kind, TailnetAcceptor, push_cert};
pub(crate) use watchdog::{Activity, Guarded, Timeouts, Watched};

use crate::metrics::Metrics;

/// The longest pause between two accept attempts after errors.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// At most one WARN line per listener and kind of trouble in this window;
/// the next line says how many were left out.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A listener whose last accept error is this recent is reported degraded.
const RECENT: Duration = Duration::from_secs(5);

/// Why an accept did not yield a connection.
#[derive(Debug)]
pub(crate) enum AcceptError {
    /// Try again (resource shortage, a connection lost in hand-off, …).
    Retry(String),
    /// The listening socket is gone; [`Acceptor::reopen`] may bring it back.
    Closed(String),
}

/// A listening socket of any kind.
pub(crate) trait Acceptor: Send + 'static {
    /// An accepted connection.
    type Io: Send + 'static;
    /// The next connection and its peer's address.
    fn accept(
        &mut self,
    ) -> impl Future<Output = Result<(Self::Io, SocketAddr), AcceptError>> + Send;
    /// Listens again after [`AcceptError::Closed`].
    fn reopen(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        async { Err("this kind of listener cannot be opened again".to_string()) }
    }
}

/// A TCP listener that keeps one spare descriptor for the moment the
/// process runs out: on EMFILE it frees the spare, takes the connection
/// that is waiting and closes it at once (a clean refusal, not a client
/// left hanging in the backlog), or — for the admin listener — serves it,
/// so `/healthz` can still say what is wrong.
pub(crate) struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    spare: Option<std::fs::File>,
    serve_on_spare: bool,
}

impl TcpAcceptor {
    pub(crate) fn new(listener: tokio::net::TcpListener, serve_on_spare: bool) -> TcpAcceptor {
        TcpAcceptor {
            listener,
            spare: spare(),
            serve_on_spare,
        }
    }
}

fn spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE) | Some(nix::libc::ENFILE)
    )
}

impl Acceptor for TcpAcceptor {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> Result<(Self::Io, SocketAddr), AcceptError> {
        use futures_util::FutureExt;
        if self.spare.is_none() {
            self.spare = spare();
        }
        // Every error of accept(2) on a listening socket is about one
        // connection or a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM,
        // ECONNABORTED, EPERM from a firewall): the socket itself goes on.
        match self.listener.accept().await {
            Ok(x) => Ok(x),
            Err(e) if out_of_fds(&e) && self.spare.is_some() => {
                drop(self.spare.take());
                // tokio keeps the socket readable after an error other
                // than WouldBlock, so this tries accept(2) again at once.
                let taken = self.listener.accept().now_or_never();
                let r = match taken {
                    Some(Ok(x)) if self.serve_on_spare => return Ok(x),
                    Some(Ok((_closed, peer))) => Err(AcceptError::Retry(format!(
                        "{e}; closed the connection from {peer} that was waiting"
                    ))),
                    _ => Err(AcceptError::Retry(e.to_string())),
                };
                self.spare = spare();
                r
            }
            Err(e) => Err(AcceptError::Retry(e.to_string())),
        }
    }
}

/// Listener states, as `/healthz` reports them.
#[derive(Debug, Clone)]
enum State {
    Serving,
    Retrying {
        last: Instant,
        errors: u64,
        error: String,
    },
    Down {
        since: Instant,
        reason: String,
    },
    Stopped,
}

/// One listener's health.
#[derive(Debug)]
pub(crate) struct ListenerHealth {
    name: String,
    state: Mutex<State>,
}

impl ListenerHealth {
    fn set(&self, s: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn get(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every listener of the process, for `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct Health {
    listeners: Mutex<Vec<Arc<ListenerHealth>>>,
    fds: Mutex<Option<Arc<Fds>>>,
}

/// What `/healthz` says about the listeners.
#[derive(Debug, Clone)]
pub(crate) struct HealthReport {
    /// Listener name → `serving`, `retrying: …`, `down: …`.
    pub(crate) listeners: serde_json::Map<String, serde_json::Value>,
    /// Open descriptors, the soft limit and the reserve, when known.
    pub(crate) fds: Option<(usize, u64, usize)>,
    /// Why not ok, one line per problem.
    pub(crate) problems: Vec<String>,
}

impl Health {
    pub(crate) fn register(&self, name: &str) -> Arc<ListenerHealth> {
        let h = Arc::new(ListenerHealth {
            name: name.to_string(),
            state: Mutex::new(State::Serving),
        });
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.clone());
        h
    }

    pub(crate) fn watch_fds(&self, fds: Arc<Fds>) {
        *self.fds.lock().unwrap_or_else(|e| e.into_inner()) = Some(fds);
    }

    /// Samples descriptors again (for `/metrics`).
    pub(crate) fn sample_fds(&self) {
        if let Some(f) = self.fds.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            f.sample();
        }
    }

    /// The current truth.
    pub(crate) fn report(&self) -> HealthReport {
        let mut problems = Vec::new();
        let mut listeners = serde_json::Map::new();
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let text = match l.get() {
                State::Serving => "serving".to_string(),
                State::Retrying {
                    last,
                    errors,
                    error,
                } if last.elapsed() < RECENT => {
                    let t = format!("retrying after {errors} accept errors: {error}");
                    problems.push(format!("{}: {t}", l.name));
                    t
                }
                State::Retrying { .. } => "serving".to_string(),
                State::Down { since, reason } => {
                    let t = format!("down for {}s: {reason}", since.elapsed().as_secs());
                    problems.push(format!("{}: {t}", l.name));
                    t
                }
                State::Stopped => "stopped".to_string(),
            };
            listeners.insert(l.name.clone(), text.into());
        }
        let fds = self
            .fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|f| {
                let short = f.short();
                let fig = f.figures();
                if short {
                    problems.push(format!(
                        "file descriptors: {} open of {}, reserve {}: new connections are refused",
                        fig.0, fig.1, fig.2
                    ));
                }
                fig
            });
        HealthReport {
            listeners,
            fds,
            problems,
        }
    }
}

/// A burst of the same trouble, logged once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct Burst {
    count: u64,
    unlogged: u64,
    logged: Option<Instant>,
    started: Option<Instant>,
}

impl Burst {
    /// Counts one; returns how many were left out since the last line if
    /// this one should be logged.
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        self.started.get_or_insert_with(Instant::now);
        if self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.logged = Some(Instant::now());
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }

    /// Ends the burst; returns its size and length if there was one.
    fn end(&mut self) -> Option<(u64, Duration)> {
        let r = (self.count > 0).then(|| {
            (
                self.count,
                self.started.map_or(Duration::ZERO, |s| s.elapsed()),
            )
        });
        *self = Burst::default();
        r
    }
}

/// One listener's place in the door: name, admission, health, metrics.
#[derive(Clone)]
pub(crate) struct Door {
    pub(crate) gate: Arc<Gate>,
    health: Arc<ListenerHealth>,
    metrics: Arc<Metrics>,
}

impl Door {
    pub(crate) fn new(health: &Health, gate: Arc<Gate>, metrics: Arc<Metrics>) -> Door {
        let h = health.register(gate.listener());
        metrics.listener_up(gate.listener(), true);
        Door {
            gate,
            health: h,
            metrics,
        }
    }

    fn name(&self) -> &str {
        self.gate.listener()
    }
}

/// Sleeps `d` unless shutdown comes first; false on shutdown.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Accepts until shutdown, whatever happens. Each admitted connection goes
/// to `serve` with its ticket; refused ones are closed at once.
pub(crate) async fn run<A, F>(
    mut acceptor: A,
    door: Door,
    mut stop: watch::Receiver<bool>,
    mut serve: F,
) where
    A: Acceptor,
    F: FnMut(A::Io, SocketAddr, Ticket) + Send,
{
    let mut bursts = Bursts::new(door.name());
    loop {
        if *stop.borrow() {
            break;
        }
        let r = tokio::select! {
            r = acceptor.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match r {
            Ok((io, peer)) => {
                bursts.accepted(&door);
                match door.gate.admit(peer) {
                    Ok(ticket) => {
                        bursts.admitted();
                        serve(io, peer, ticket)
                    }
                    Err(why) => {
                        drop(io);
                        bursts.refused(&door, peer, why);
                    }
                }
            }
            Err(AcceptError::Retry(e)) => {
                let backoff = bursts.accept_failed(&door, e);
                if !pause(backoff, &mut stop).await {
                    break;
                }
            }
            Err(AcceptError::Closed(e)) => {
                if *stop.borrow() || !reopen(&mut acceptor, &door, &mut bursts, e, &mut stop).await
                {
                    break;
                }
            }
        }
    }
    door.health.set(State::Stopped);
}

/// What an accept loop remembers between accepts: bursts of errors and of
/// refusals (each logged once per burst, not per connection) and the
/// current back-off.
struct Bursts {
    name: String,
    errors: Burst,
    refusals: [Burst; 3],
    backoff: Duration,
}

impl Bursts {
    fn new(name: &str) -> Bursts {
        Bursts {
            name: name.to_string(),
            errors: Burst::default(),
            refusals: [Burst::default(), Burst::default(), Burst::default()],
            backoff: FIRST_BACKOFF,
        }
    }

    /// A connection came in: any burst of accept errors is over.
    fn accepted(&mut self, door: &Door) {
        if let Some((n, took)) = self.errors.end() {
            tracing::warn!(listener = %self.name, errors = n, seconds = took.as_secs_f64(), "accepting again after accept errors");
        }
        self.backoff = FIRST_BACKOFF;
        door.health.set(State::Serving);
    }

    /// A connection was admitted: any burst of refusals is over.
    fn admitted(&mut self) {
        for r in &mut self.refusals {
            if let Some((n, _)) = r.end() {
                tracing::info!(listener = %self.name, refused = n, "admitting connections again");
            }
        }
    }

    fn refused(&mut self, door: &Door, peer: SocketAddr, why: Refusal) {
        door.metrics.refused(&self.name, why.label());
        let b = &mut self.refusals[match why {
            Refusal::ListenerFull => 0,
            Refusal::SourceFull => 1,
            Refusal::FdReserve => 2,
        }];
        if let Some(left_out) = b.hit() {
            tracing::warn!(listener = %self.name, %peer, reason = why.label(), open = door.gate.open(), not_logged = left_out, "refused a connection");
        }
    }

    /// An accept failed but the listener lives: how long to back off.
    fn accept_failed(&mut self, door: &Door, e: String) -> Duration {
        door.metrics.accept_error(&self.name);
        let backoff = self.backoff;
        if let Some(left_out) = self.errors.hit() {
            tracing::warn!(listener = %self.name, error = %e, not_logged = left_out, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
        }
        door.health.set(State::Retrying {
            last: Instant::now(),
            errors: self.errors.count,
            error: e,
        });
        self.backoff = (backoff * 2).min(MAX_BACKOFF);
        backoff
    }
}

/// The listener closed: opens it again, backing off, until it works
/// (true) or shutdown comes (false).
async fn reopen<A: Acceptor>(
    acceptor: &mut A,
    door: &Door,
    bursts: &mut Bursts,
    reason: String,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = &bursts.name;
    tracing::warn!(listener = %name, error = %reason, "listener closed; opening it again");
    door.health.set(State::Down {
        since: Instant::now(),
        reason,
    });
    door.metrics.listener_up(name, false);
    let mut wait = FIRST_BACKOFF;
    loop {
        if !pause(wait, stop).await {
            return false;
        }
        match acceptor.reopen().await {
            Ok(()) => break,
            Err(e) => {
                door.metrics.accept_error(name);
                if let Some(left_out) = bursts.errors.hit() {
                    tracing::warn!(listener = %name, error = %e, not_logged = left_out, "opening the listener again failed");
                }
                if let State::Down { since, .. } = door.health.get() {
                    door.health.set(State::Down { since, reason: e });
                }
            }
        }
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    tracing::info!(listener = %name, "listening again");
    door.health.set(State::Serving);
    door.metrics.listener_up(name, true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted listener: a queue of results, then it waits forever.
    struct Script {
        results: std::collections::VecDeque<Result<(u32, SocketAddr), AcceptError>>,
        reopened: Arc<Mutex<u32>>,
    }

    impl Acceptor for Script {
        type Io = u32;
        async fn accept(&mut self) -> Result<(u32, SocketAddr), AcceptError> {
            match self.results.pop_front() {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }
        async fn reopen(&mut self) -> Result<(), String> {
            let mut n = self.reopened.lock().unwrap();
            *n += 1;
            if *n < 3 {
                Err("not yet".into())
            } else {
                Ok(())
            }
        }
    }

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::from(([100, 64, 0, i], 1000))
    }

    #[tokio::test(start_paused = true)]
    async fn survives_errors_and_closes_backs_off_and_reports_health() {
        let metrics = Arc::new(Metrics::new());
        let health = Health::default();
        let gate = Gate::new("test https", 10, 1, Sources::Exact, None, metrics.clone());
        let door = Door::new(&health, gate, metrics.clone());
        let mut results = std::collections::VecDeque::new();
        for _ in 0..50 {
            results.push_back(Err(AcceptError::Retry("Too many open files".into())));
        }
        results.push_back(Ok((1, peer(1))));
        results.push_back(Ok((2, peer(1)))); // same source: over its cap of 1
        results.push_back(Err(AcceptError::Closed("listener closed".into())));
        results.push_back(Ok((3, peer(2))));
        let reopened = Arc::new(Mutex::new(0));
        let script = Script {
            results,
            reopened: reopened.clone(),
        };
        let (tx, rx) = watch::channel(false);
        let served = Arc::new(Mutex::new(Vec::new()));
        let s = served.clone();
        let tickets = Arc::new(Mutex::new(Vec::new()));
        let t2 = tickets.clone();
        let task = tokio::spawn(run(script, door, rx, move |io, _, t| {
            s.lock().unwrap().push(io);
            t2.lock().unwrap().push(t);
        }));
        // In the middle of the errors, health tells the truth.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = health.report();
        assert!(!r.problems.is_empty(), "{r:?}");
        assert!(r.problems[0].contains("Too many open files"), "{r:?}");
        // 50 errors, backoff capped at 1 s: done well within a minute.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*served.lock().unwrap(), vec![1, 3]);
        assert_eq!(*reopened.lock().unwrap(), 3);
        assert!(health.report().problems.is_empty(), "{:?}", health.report());
        let m = metrics.render();
        assert!(
            m.contains(r#"tailpass_accept_errors_total{listener="test https"} 52"#),
            "{m}"
        );
        assert!(m.contains(r#"tailpass_connections_refused_total{listener="test https",reason="source_full"} 1"#), "{m}");
        assert!(
            m.contains(r#"tailpass_listener_up{listener="test https"} 1"#),
            "{m}"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(health.report().listeners["test https"], "stopped");
    }

    #[test]
    fn a_burst_logs_its_first_error_then_counts() {
        let mut b = Burst::default();
        assert_eq!(b.hit(), Some(0));
        for _ in 0..99 {
            assert_eq!(b.hit(), None);
        }
        assert_eq!(b.end().map(|(n, _)| n), Some(100));
        assert_eq!(b.end(), None);
    }
}
