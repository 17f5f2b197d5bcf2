//! The node channel: every connection of a node travels over one framed
//! unix stream socket shared with the shim (contract in `tsshim.h`), so a
//! tailnet connection costs no descriptor of its own.
//!
//! - Accepted connections arrive as `OPEN` frames carrying the listener,
//!   the peer's exact address and the origin: the address arrives with the
//!   stream (security invariant 2).
//! - Dials are `DIAL` frames answered by `DIAL_OK`/`DIAL_ERR`: no blocking
//!   call, no thread.
//! - Each stream has a credit window in each direction
//!   ([`frame::INITIAL_WINDOW`]): a stream whose reader stalls stops only
//!   itself, and the bytes buffered for it are bounded by its window.
//!
//! What this module must not do: block in the frame reader (every handler
//! is a few map and buffer operations), hold a stream's lock while taking
//! the channel's (lock order: channel state, then nothing; stream, then
//! nothing; the outbox is a leaf), or panic on anything the shim sends.

mod frame;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};

use self::frame::{Frame, INITIAL_WINDOW, MAX_PAYLOAD, RUST_ID_BIT};
use super::stream::TailnetStream;
use super::{Error, Result};

/// Accepted connections that may wait for `accept`, per listener; beyond
/// it new ones are reset and reported as a hand-off error.
const BACKLOG: usize = 1024;
/// Credit goes back to the shim once this much was read.
const WINDOW_UPDATE: u32 = 64 << 10;
/// Why a channel ended when the shim closed it (node closed).
const CLOSED_BY_SHIM: &str = "the shim closed the channel";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (no invariant spans a panic point), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node's channel. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Channel {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Our end's write half: frames are written straight from `send` when
    /// nothing is queued (no hand-off to the writer task), else queued.
    wr: OwnedWriteHalf,
    out: Mutex<Outbox>,
    /// The writer task has frames to write (or the channel closed).
    out_ready: Notify,
    /// Tells the reader task to stop (the channel failed elsewhere).
    stop_reader: Notify,
}

struct Outbox {
    /// Frames waiting for the writer task (the socket buffer was full).
    buf: BytesMut,
    /// The writer task holds a batch taken from `buf`: writes must queue.
    writing: bool,
    closed: bool,
}

type Accepted = Result<(TailnetStream, SocketAddr)>;
type Dialed = Result<(ChannelStream, SocketAddr)>;

#[derive(Default)]
struct State {
    streams: HashMap<u32, Arc<StreamShared>>,
    dials: HashMap<u32, oneshot::Sender<Dialed>>,
    listeners: HashMap<u32, ListenerSlot>,
    next_stream: u32,
    next_listener: u32,
    /// Why the channel ended; set once.
    failed: Option<String>,
}

struct ListenerSlot {
    tx: mpsc::Sender<Accepted>,
    lost: Arc<Mutex<Lost>>,
}

/// Connections reset because the listener's backlog was full.
#[derive(Default)]
struct Lost {
    count: u64,
    last_peer: String,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("Channel")
            .field("streams", &st.streams.len())
            .field("failed", &st.failed)
            .finish()
    }
}

impl Channel {
    /// Starts the reader and writer tasks on `fd` (the caller's end of the
    /// shim's channel). Must run inside a tokio runtime.
    pub(crate) fn start(fd: OwnedFd) -> Result<Channel> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        let (rd, wr) = tokio::net::UnixStream::from_std(std)?.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wr,
            out: Mutex::new(Outbox {
                buf: BytesMut::new(),
                writing: false,
                closed: false,
            }),
            out_ready: Notify::new(),
            stop_reader: Notify::new(),
        });
        tokio::spawn(read_loop(shared.clone(), rd));
        tokio::spawn(write_loop(shared.clone()));
        Ok(Channel { shared })
    }

    /// False once the channel has ended (a new one may be opened).
    pub(crate) fn is_alive(&self) -> bool {
        lock(&self.shared.state).failed.is_none()
    }

    /// Registers a listener; connections for it queue until accepted.
    pub(crate) fn add_listener(&self) -> Result<ChannelListener> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let lost = Arc::new(Mutex::new(Lost::default()));
        let mut st = lock(&self.shared.state);
        if let Some(why) = &st.failed {
            return Err(closed_error(why));
        }
        let id = loop {
            st.next_listener = (st.next_listener.wrapping_add(1)) & !RUST_ID_BIT;
            if st.next_listener != 0 && !st.listeners.contains_key(&st.next_listener) {
                break st.next_listener;
            }
        };
        st.listeners.insert(
            id,
            ListenerSlot {
                tx,
                lost: lost.clone(),
            },
        );
        Ok(ChannelListener {
            id,
            rx: tokio::sync::Mutex::new(rx),
            lost,
            shared: self.shared.clone(),
        })
    }

    /// Dials `addr` over the channel; the shim gives up after `timeout`.
    pub(crate) async fn dial(&self, addr: &str, timeout: Duration) -> Dialed {
        if addr.contains('\n') || addr.len() > 1024 {
            return Err(Error::InvalidArgument {
                what: "dial address",
                reason: "contains a newline or is too long".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = lock(&self.shared.state);
            if let Some(why) = &st.failed {
                return Err(closed_error(why));
            }
            let id = loop {
                st.next_stream = st.next_stream.wrapping_add(1) | RUST_ID_BIT;
                let id = st.next_stream;
                if !st.streams.contains_key(&id) && !st.dials.contains_key(&id) {
                    break id;
                }
            };
            st.dials.insert(id, tx);
            id
        };
        // Dropping this future forgets the dial; a late DIAL_OK is reset.
        struct Forget<'a>(&'a Shared, u32);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(&self.0.state).dials.remove(&self.1);
            }
        }
        let _forget = Forget(&self.shared, id);
        let ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let mut p = Vec::with_capacity(8 + addr.len());
        p.extend_from_slice(&ms.to_be_bytes());
        p.extend_from_slice(b"tcp\n");
        p.extend_from_slice(addr.as_bytes());
        if !self.shared.send(frame::DIAL, id, &p) {
            return Err(Error::Closed);
        }
        // The shim enforces `timeout`; this bound only guards against a
        // shim that never answers.
        let guard = timeout + Duration::from_secs(5);
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                op: "dial",
                after: guard,
            }),
        }
    }

    #[cfg(test)]
    fn open_streams(&self) -> usize {
        lock(&self.shared.state).streams.len()
    }
}

fn closed_error(why: &str) -> Error {
    if why == CLOSED_BY_SHIM {
        Error::Closed
    } else {
        Error::Protocol(format!("tailnet channel failed: {why}"))
    }
}

impl Shared {
    /// Sends one frame: written at once when nothing is queued and the
    /// socket takes it, else queued for the writer task. False when the
    /// channel is closed. Never blocks.
    fn send(&self, kind: u8, stream: u32, payload: &[u8]) -> bool {
        let mut out = lock(&self.out);
        if out.closed {
            return false;
        }
        let mut written = 0;
        if !out.writing && out.buf.is_empty() {
            let mut hdr = [0u8; frame::HEADER];
            hdr[0] = kind;
            hdr[1..5].copy_from_slice(&stream.to_be_bytes());
            hdr[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
            let bufs = [io::IoSlice::new(&hdr), io::IoSlice::new(payload)];
            match self.wr.try_write_vectored(&bufs) {
                Ok(n) if n == hdr.len() + payload.len() => return true,
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    drop(out);
                    self.fail(format!("writing the channel: {e}"));
                    return false;
                }
            }
        }
        let mut f = BytesMut::new();
        let rest: &[u8] = if written == 0 {
            frame::put_frame(&mut out.buf, kind, stream, payload);
            &[]
        } else {
            frame::put_frame(&mut f, kind, stream, payload);
            &f[written..]
        };
        out.buf.extend_from_slice(rest);
        drop(out);
        self.out_ready.notify_one();
        true
    }

    /// Ends the channel: every stream errors, every pending dial fails,
    /// every listener ends (its accept loop reopens it, on a new channel).
    fn fail(&self, why: String) {
        let (streams, dials, listeners) = {
            let mut st = lock(&self.state);
            if st.failed.is_some() {
                return;
            }
            st.failed = Some(why.clone());
            (
                std::mem::take(&mut st.streams),
                std::mem::take(&mut st.dials),
                std::mem::take(&mut st.listeners),
            )
        };
        if why != CLOSED_BY_SHIM {
            tracing::warn!(reason = %why, streams = streams.len(), "tailnet channel failed: its connections are lost, its listeners reopen");
        }
        {
            let mut out = lock(&self.out);
            out.closed = true;
            out.buf = BytesMut::new();
        }
        // The shim sees end of stream at once, however many streams still
        // hold this channel.
        let _ = nix::sys::socket::shutdown(
            self.wr.as_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
        self.out_ready.notify_one();
        self.stop_reader.notify_one();
        for s in streams.into_values() {
            s.reset("the tailnet channel closed");
        }
        for tx in dials.into_values() {
            let _ = tx.send(Err(closed_error(&why)));
        }
        drop(listeners); // pending accepts see ListenerClosed
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        lock(&self.state).streams.get(&id).cloned()
    }

    fn forget(&self, id: u32) {
        lock(&self.state).streams.remove(&id);
    }

    /// Resets a stream on both sides (the shim misbehaved on it).
    fn reset_stream(&self, s: &StreamShared, why: &'static str) {
        s.reset(why);
        self.forget(s.id);
        self.send(frame::RST, s.id, &[]);
    }

    fn new_stream(self: &Arc<Self>, st: &mut State, id: u32) -> ChannelStream {
        let s = Arc::new(StreamShared {
            id,
            st: Mutex::new(StreamState {
                credit: INITIAL_WINDOW,
                ..StreamState::default()
            }),
        });
        st.streams.insert(id, s.clone());
        ChannelStream {
            s,
            ch: self.clone(),
        }
    }

    /// Handles one frame. Never blocks; an error fails the channel.
    fn dispatch(self: &Arc<Self>, f: Frame) -> Result<(), String> {
        match f {
            Frame::Open {
                stream,
                listener,
                addrs,
            } => self.on_open(stream, listener, addrs)?,
            Frame::DialOk { stream, peer } => self.on_dial_ok(stream, peer)?,
            Frame::DialErr { stream, message } => {
                let tx = lock(&self.state).dials.remove(&stream);
                if let Some(tx) = tx {
                    let _ = tx.send(Err(Error::Go {
                        op: "dial",
                        message,
                    }));
                }
            }
            Frame::Data { stream, data } => self.on_data(stream, data),
            Frame::Window { stream, credit } => {
                if let Some(s) = self.stream(stream) {
                    let mut st = lock(&s.st);
                    st.credit = st.credit.saturating_add(credit).min(1 << 30);
                    wake(&mut st.write_waker);
                }
            }
            Frame::Fin { stream } => self.on_fin(stream),
            Frame::Rst { stream } => {
                let s = lock(&self.state).streams.remove(&stream);
                if let Some(s) = s {
                    s.reset("connection reset by the tailnet peer");
                }
            }
            Frame::HandOffError {
                listener,
                peer,
                reason,
            } => {
                let tx = lock(&self.state)
                    .listeners
                    .get(&listener)
                    .map(|l| l.tx.clone());
                if let Some(tx) = tx {
                    let _ = tx.try_send(Err(Error::HandOff { peer, reason }));
                }
            }
            Frame::ListenerEnd { listener } => {
                let slot = lock(&self.state).listeners.remove(&listener);
                drop(slot);
            }
        }
        Ok(())
    }

    /// A dial of ours succeeded: the stream opens and the dialer gets it.
    fn on_dial_ok(self: &Arc<Self>, stream: u32, peer: Option<SocketAddr>) -> Result<(), String> {
        let mut st = lock(&self.state);
        let Some(tx) = st.dials.remove(&stream) else {
            drop(st);
            self.send(frame::RST, stream, &[]);
            return Ok(());
        };
        if st.streams.contains_key(&stream) {
            return Err(format!("DIAL_OK for stream {stream}, already open"));
        }
        let Some(peer) = peer else {
            drop(st);
            self.send(frame::RST, stream, &[]);
            let _ = tx.send(Err(Error::Protocol(
                "dial: the shim sent a bad remote address".into(),
            )));
            return Ok(());
        };
        let cs = self.new_stream(&mut st, stream);
        drop(st);
        // A dialer that gave up drops the stream here: reset.
        let _ = tx.send(Ok((cs, peer)));
        Ok(())
    }

    /// Data for a stream, within its window; anything else resets it.
    fn on_data(&self, stream: u32, data: Bytes) {
        let Some(s) = self.stream(stream) else {
            return; // reset by us while in flight
        };
        let mut st = lock(&s.st);
        if st.reset.is_some() {
            return;
        }
        if st.dropped {
            drop(st);
            self.reset_stream(&s, "data for a closed stream");
            return;
        }
        if st.recv_fin || st.recv_len + data.len() > INITIAL_WINDOW as usize {
            drop(st);
            self.reset_stream(&s, "the shim sent more than the stream's window");
            return;
        }
        st.recv_len += data.len();
        st.recv.push_back(data);
        wake(&mut st.read_waker);
    }

    /// The peer's half-close; the stream is forgotten once both sides ended.
    fn on_fin(&self, stream: u32) {
        if let Some(s) = self.stream(stream) {
            let mut st = lock(&s.st);
            st.recv_fin = true;
            wake(&mut st.read_waker);
            let done = st.sent_fin || st.dropped;
            drop(st);
            if done {
                self.forget(stream);
            }
        }
    }

    fn on_open(
        self: &Arc<Self>,
        stream: u32,
        listener: u32,
        addrs: Result<frame::OpenAddrs, String>,
    ) -> Result<(), String> {
        if stream & RUST_ID_BIT != 0 {
            return Err(format!("OPEN with a dial's stream id {stream}"));
        }
        let mut st = lock(&self.state);
        if st.streams.contains_key(&stream) {
            return Err(format!("OPEN for stream {stream}, already open"));
        }
        let slot = st
            .listeners
            .get(&listener)
            .map(|l| (l.tx.clone(), l.lost.clone()));
        let (tx, lost, addrs) = match (slot, addrs) {
            (Some((tx, lost)), Ok(a)) if tx.capacity() == 0 => {
                // Backlog full: refuse (reset) rather than queue without bound.
                drop(st);
                self.send(frame::RST, stream, &[]);
                let mut l = lock(&lost);
                l.count += 1;
                l.last_peer = a.peer.to_string();
                drop(tx);
                return Ok(());
            }
            (Some((tx, lost)), Ok(a)) => (tx, lost, a),
            (slot, addrs) => {
                drop(st);
                self.send(frame::RST, stream, &[]);
                if let (Some((tx, _)), Err(why)) = (slot, addrs) {
                    let _ = tx.try_send(Err(Error::Protocol(why)));
                }
                return Ok(());
            }
        };
        let cs = self.new_stream(&mut st, stream);
        drop(st);
        let ts = TailnetStream::from_channel(cs, addrs.peer, addrs.local, addrs.origin);
        // Only this task sends, so there is room; a listener that closed
        // meanwhile gets its stream reset.
        if let Err(e) = tx.try_send(Ok((ts, addrs.peer))) {
            if let Ok((ts, _)) = e.into_inner() {
                ts.reset();
            }
            drop(lost);
        }
        Ok(())
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

async fn read_loop(shared: Arc<Shared>, mut rd: OwnedReadHalf) {
    let mut buf = BytesMut::with_capacity(128 << 10);
    let why = 'outer: loop {
        loop {
            match frame::decode(&mut buf) {
                Ok(Some(f)) => {
                    if let Err(e) = shared.dispatch(f) {
                        break 'outer e;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer e.0,
            }
        }
        if buf.capacity() - buf.len() < frame::HEADER + MAX_PAYLOAD {
            buf.reserve(128 << 10);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => break CLOSED_BY_SHIM.to_string(),
                Ok(0) => break format!("the shim closed the channel inside a frame ({} bytes left)", buf.len()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break format!("reading the channel: {e}"),
            },
            _ = shared.stop_reader.notified() => break "stopped".to_string(),
        }
    };
    shared.fail(why);
}

async fn write_loop(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut out = lock(&shared.out);
            if out.buf.is_empty() {
                out.writing = false;
                if out.closed {
                    return;
                }
                None
            } else {
                out.writing = true;
                Some(out.buf.split())
            }
        };
        let Some(b) = batch else {
            shared.out_ready.notified().await;
            continue;
        };
        let mut off = 0;
        while off < b.len() {
            if let Err(e) = shared.wr.writable().await {
                return shared.fail(format!("writing the channel: {e}"));
            }
            match shared.wr.try_write(&b[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return shared.fail(format!("writing the channel: {e}")),
            }
        }
    }
}

/// A listener's queue of accepted streams.
pub(crate) struct ChannelListener {
    id: u32,
    rx: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    lost: Arc<Mutex<Lost>>,
    shared: Arc<Shared>,
}

impl ChannelListener {
    /// The id the shim tags this listener's OPEN frames with.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The next accepted stream (cancel-safe).
    pub(crate) async fn accept(&self) -> Accepted {
        {
            let mut l = lock(&self.lost);
            if l.count > 0 {
                let e = Error::HandOff {
                    peer: std::mem::take(&mut l.last_peer),
                    reason: format!(
                        "accept backlog of {BACKLOG} full: {} connection(s) reset",
                        l.count
                    ),
                };
                l.count = 0;
                return Err(e);
            }
        }
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(r) => r,
            None => Err(Error::ListenerClosed),
        }
    }
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        let slot = lock(&self.shared.state).listeners.remove(&self.id);
        drop(slot);
        // Connections never accepted are refused (reset).
        let rx = self.rx.get_mut();
        rx.close();
        while let Ok(r) = rx.try_recv() {
            if let Ok((ts, _)) = r {
                ts.reset();
            }
        }
    }
}

/// One stream's shared state: the frame reader fills it, the owning
/// [`ChannelStream`] drains it.
struct StreamShared {
    id: u32,
    st: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    /// The shim sent FIN: after `recv`, end of stream.
    recv_fin: bool,
    /// Read bytes not yet credited back to the shim.
    unacked: u32,
    read_waker: Option<Waker>,
    /// Bytes we may still send.
    credit: u32,
    write_waker: Option<Waker>,
    sent_fin: bool,
    /// The owner dropped the stream after a graceful FIN: data the shim
    /// still sends is answered with RST (like TCP after `close`).
    dropped: bool,
    /// Why the stream is gone (reset, channel failed).
    reset: Option<&'static str>,
}

impl StreamShared {
    fn reset(&self, why: &'static str) {
        let mut st = lock(&self.st);
        if st.reset.is_none() {
            st.reset = Some(why);
        }
        wake(&mut st.read_waker);
        wake(&mut st.write_waker);
    }
}

/// The bytes of one connection on the channel.
pub(crate) struct ChannelStream {
    s: Arc<StreamShared>,
    ch: Arc<Shared>,
}

impl fmt::Debug for ChannelStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelStream")
            .field("id", &self.s.id)
            .finish()
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl ChannelStream {
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = lock(&self.s.st);
        if st.recv.is_empty() {
            if let Some(why) = st.reset {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, why)));
            }
            if st.recv_fin || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            store_waker(&mut st.read_waker, cx);
            return Poll::Pending;
        }
        let mut n = 0usize;
        while buf.remaining() > 0 {
            let Some(front) = st.recv.front_mut() else {
                break;
            };
            let k = front.len().min(buf.remaining());
            buf.put_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                st.recv.pop_front();
            }
            n += k;
        }
        st.recv_len -= n;
        st.unacked = st.unacked.saturating_add(n as u32);
        let give = if st.unacked >= WINDOW_UPDATE && !st.recv_fin && st.reset.is_none() {
            std::mem::take(&mut st.unacked)
        } else {
            0
        };
        drop(st);
        if give > 0 {
            self.ch.send(frame::WINDOW, self.s.id, &give.to_be_bytes());
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = lock(&self.s.st);
        if let Some(why) = st.reset {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, why)));
        }
        if st.sent_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if st.credit == 0 {
            store_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        let n = buf.len().min(st.credit as usize).min(MAX_PAYLOAD);
        st.credit -= n as u32;
        drop(st);
        if !self.ch.send(frame::DATA, self.s.id, &buf[..n]) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the tailnet channel closed",
            )));
        }
        Poll::Ready(Ok(n))
    }

    /// Half-close: the shim closes the connection's write side once the
    /// bytes before it are written.
    pub(crate) fn poll_shutdown(&mut self) -> Poll<io::Result<()>> {
        let mut st = lock(&self.s.st);
        if st.sent_fin || st.reset.is_some() {
            return Poll::Ready(Ok(()));
        }
        st.sent_fin = true;
        let done = st.recv_fin;
        drop(st);
        self.ch.send(frame::FIN, self.s.id, &[]);
        if done {
            self.ch.forget(self.s.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl ChannelStream {
    /// Resets the stream now (a refused connection).
    pub(crate) fn reset(self) {
        let fresh = {
            let mut st = lock(&self.s.st);
            let fresh = st.reset.is_none();
            st.reset.get_or_insert("refused");
            fresh
        };
        self.ch.forget(self.s.id);
        if fresh {
            self.ch.send(frame::RST, self.s.id, &[]);
        }
        // Drop sees the reset and sends nothing more.
    }
}

/// What dropping a stream sends.
enum Close {
    Nothing,
    Fin,
    Rst,
}

/// Dropping a stream closes it like `close` on a TCP socket: bytes written
/// before are delivered, then FIN; if received bytes were never read, or
/// the peer sends more afterwards, the connection is reset.
impl Drop for ChannelStream {
    fn drop(&mut self) {
        let (close, forget) = {
            let mut st = lock(&self.s.st);
            let close = if st.reset.is_some() {
                Close::Nothing
            } else if !st.recv.is_empty() {
                st.reset = Some("dropped");
                Close::Rst
            } else if !st.sent_fin {
                st.sent_fin = true;
                Close::Fin
            } else {
                Close::Nothing
            };
            st.dropped = true;
            st.recv.clear();
            // Kept until the shim's FIN, so later data can be refused.
            let forget = st.reset.is_some() || st.recv_fin;
            (close, forget)
        };
        if forget {
            self.ch.forget(self.s.id);
        }
        match close {
            Close::Nothing => {}
            Close::Fin => {
                self.ch.send(frame::FIN, self.s.id, &[]);
            }
            Close::Rst => {
                self.ch.send(frame::RST, self.s.id, &[]);
            }
        }
    }
}

#[cfg(test)]
mod tests;
