//! Per-connection timeouts while no request is in flight: a connection is
//! closed when a request head takes longer than `header_read_timeout` from
//! its first byte (slowloris), or when it sits with no request in flight
//! for `idle_timeout` (keep-alive, idle HTTP/2).
//!
//! While a request is in flight (from its head until its response body has
//! been sent) nothing here applies: long downloads and SSE streams are
//! never cut, uploads are bounded by the proxy's body idle timeout instead.
//! A websocket leaves HTTP behind when it upgrades, and the watchdog with it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
// tokio's clock, so tests can pause it.
use tokio::time::Instant;

/// What the watchdog knows about one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `base` + 1 when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `base` + 1 of the first byte read while idle;
    /// 0 when none.
    head_since: AtomicU64,
    /// Whether any request has begun on this connection.
    used: AtomicBool,
    wake: Notify,
}

/// The timeouts the watchdog applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From connection start to the first request's head.
    pub(crate) first: Duration,
    /// From a head's first byte to its end.
    pub(crate) header_read: Duration,
    /// With no request in flight.
    pub(crate) idle: Duration,
    /// Whether bytes read while idle start a head (false for HTTP/2, whose
    /// control frames arrive while no request is in flight).
    pub(crate) heads: bool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            used: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn stamp(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, stamp: u64) -> Instant {
        self.base + Duration::from_millis(stamp.saturating_sub(1))
    }

    /// Bytes arrived. The first ones while idle start the head timer.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
            && self
                .head_since
                .compare_exchange(0, self.stamp(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// A request head has been read; the returned guard ends it.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.used.store(true, Ordering::Release);
        self.head_since.store(0, Ordering::Release);
        self.wake.notify_one();
        InFlight(self.clone())
    }

    /// Resolves when the connection has waited too long: for its first
    /// request, in a request head, or idle.
    pub(crate) async fn expired(&self, t: Timeouts) {
        loop {
            // Register for wake-ups before reading the state: none is lost.
            let woken = self.wake.notified();
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                None
            } else {
                let head = self.head_since.load(Ordering::Acquire);
                let mut d = self.at(self.idle_since.load(Ordering::Acquire)) + t.idle;
                if !self.used.load(Ordering::Acquire) {
                    d = d.min(self.base + t.first);
                }
                if t.heads && head != 0 {
                    d = d.min(self.at(head) + t.header_read);
                }
                Some(d)
            };
            match deadline {
                None => woken.await,
                Some(d) if d <= Instant::now() => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = woken => {}
                    }
                }
            }
        }
    }
}

/// One request in flight; the connection counts as busy until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.stamp(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.wake.notify_one();
    }
}

/// A response body that keeps its request in flight until it ends.
pub(crate) struct Guarded<B> {
    inner: B,
    _guard: InFlight,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, guard: InFlight) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's bytes, watched: reads feed [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, act: Arc<Activity>) -> Self {
        Watched { inner, act }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.act.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);

    fn tos(heads: bool) -> Timeouts {
        Timeouts {
            first: Duration::from_secs(3600),
            header_read: HEAD,
            idle: IDLE,
            heads,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_expires_after_the_idle_timeout() {
        let a = Activity::new();
        let t = Instant::now();
        a.expired(tos(true)).await;
        assert!(t.elapsed() >= IDLE && t.elapsed() < IDLE + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_end_within_the_header_timeout() {
        let a = Activity::new();
        let t = Instant::now();
        let w = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(tos(true)).await })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        a.read();
        w.await.unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(15) && took < Duration::from_secs(16),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_do_not_start_the_head_timer() {
        let a = Activity::new();
        a.read();
        let t = Instant::now();
        a.expired(tos(false)).await;
        assert!(t.elapsed() >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_must_come_soon_later_ones_may_wait() {
        let a = Activity::new();
        let first = Timeouts {
            first: Duration::from_secs(20),
            ..tos(true)
        };
        let t0 = Instant::now();
        a.expired(first).await;
        assert!(t0.elapsed() >= Duration::from_secs(20) && t0.elapsed() < IDLE);
        let b = Activity::new();
        drop(b.begin());
        let t0 = Instant::now();
        b.expired(first).await;
        assert!(t0.elapsed() >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_in_flight() {
        let a = Activity::new();
        let g = a.begin();
        let w = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(tos(true)).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!w.is_finished());
        let t = Instant::now();
        drop(g);
        w.await.unwrap();
        // The idle clock starts when the response ended.
        assert!(t.elapsed() >= IDLE, "{:?}", t.elapsed());
    }
}
