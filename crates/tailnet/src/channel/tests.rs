//! Fault tests of the channel against a fake shim speaking the frame
//! protocol on the other end of a socketpair: flow control, resets,
//! half-close, many streams, a failing channel.

use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::frame::*;
use super::*;

const T: Duration = Duration::from_secs(10);

/// The shim's end of the channel.
struct Shim {
    io: UnixStream,
    buf: Vec<u8>,
}

impl Shim {
    fn new() -> (Channel, Shim) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let ch = Channel::start(OwnedFd::from(a)).unwrap();
        (
            ch,
            Shim {
                io: UnixStream::from_std(b).unwrap(),
                buf: Vec::new(),
            },
        )
    }

    async fn send(&mut self, kind: u8, stream: u32, payload: &[u8]) {
        let mut b = BytesMut::new();
        put_frame(&mut b, kind, stream, payload);
        self.io.write_all(&b).await.unwrap();
    }

    async fn open(&mut self, listener: u32, stream: u32, peer: &str) {
        let mut p = listener.to_be_bytes().to_vec();
        p.extend_from_slice(format!("{peer}\n100.64.0.1:443\ntailnet").as_bytes());
        self.send(OPEN, stream, &p).await;
    }

    /// The next frame Rust sent: (type, stream, payload).
    async fn next(&mut self) -> (u8, u32, Vec<u8>) {
        tokio::time::timeout(T, async {
            loop {
                if self.buf.len() >= HEADER {
                    let len = u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) as usize;
                    if self.buf.len() >= HEADER + len {
                        let f: Vec<u8> = self.buf.drain(..HEADER + len).collect();
                        let id = u32::from_be_bytes(f[1..5].try_into().unwrap());
                        return (f[0], id, f[HEADER..].to_vec());
                    }
                }
                let mut chunk = [0u8; 65536];
                let n = self.io.read(&mut chunk).await.unwrap();
                assert!(n > 0, "channel closed by Rust");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("no frame from Rust")
    }

    /// The next frame that is not a WINDOW.
    async fn next_not_window(&mut self) -> (u8, u32, Vec<u8>) {
        loop {
            let f = self.next().await;
            if f.0 != WINDOW {
                return f;
            }
        }
    }

    /// Collects `n` bytes of DATA for `stream` (other frames are kept out).
    async fn data(&mut self, stream: u32, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let (k, id, p) = self.next().await;
            if k == DATA && id == stream {
                got.extend_from_slice(&p);
            }
        }
        got
    }

    /// True if Rust sends nothing for `d`.
    async fn silent_for(&mut self, d: Duration) -> bool {
        self.buf.is_empty() && tokio::time::timeout(d, self.io.readable()).await.is_err()
    }
}

async fn accept(l: &ChannelListener) -> TailnetStream {
    tokio::time::timeout(T, l.accept())
        .await
        .expect("accept hung")
        .unwrap()
        .0
}

#[tokio::test]
async fn open_carries_the_peer_and_bytes_flow_both_ways_with_half_close() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 1, "100.64.0.2:41000").await;
    let (mut s, peer) = l.accept().await.unwrap();
    assert_eq!(peer, "100.64.0.2:41000".parse::<SocketAddr>().unwrap());
    assert_eq!(s.peer_addr(), peer);
    assert_eq!(s.local_addr(), Some("100.64.0.1:443".parse().unwrap()));

    // Shim → Rust, then the shim half-closes; Rust can still answer.
    shim.send(DATA, 1, b"hello").await;
    shim.send(FIN, 1, b"").await;
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello");
    s.write_all(b"world").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(shim.next_not_window().await, (DATA, 1, b"world".to_vec()));
    assert_eq!(shim.next_not_window().await, (FIN, 1, vec![]));
    // Both sides closed cleanly: no RST on drop, the stream is forgotten.
    drop(s);
    assert!(shim.silent_for(Duration::from_millis(200)).await);
    assert_eq!(ch.open_streams(), 0);
}

#[tokio::test]
async fn rust_half_closes_first_and_still_reads() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 2, "100.64.0.2:1").await;
    let mut s = accept(&l).await;
    s.write_all(b"request").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(shim.next().await, (DATA, 2, b"request".to_vec()));
    assert_eq!(shim.next().await, (FIN, 2, vec![]));
    // Writing after shutdown is an error, reading goes on.
    assert!(s.write_all(b"x").await.is_err());
    shim.send(DATA, 2, b"answer").await;
    shim.send(FIN, 2, b"").await;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"answer");
    drop(s);
    assert!(shim.silent_for(Duration::from_millis(200)).await);
    assert_eq!(ch.open_streams(), 0);
}

#[tokio::test]
async fn a_stalled_stream_stops_at_its_window_while_another_keeps_flowing() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 1, "100.64.0.2:1").await;
    shim.open(l.id(), 3, "100.64.0.2:3").await;
    let mut stalled = accept(&l).await;
    let mut flowing = accept(&l).await;

    // Rust → shim: the stalled stream's writer gets exactly the window,
    // then blocks until the shim credits more.
    let big = vec![7u8; INITIAL_WINDOW as usize + 1000];
    let writer = tokio::spawn(async move {
        stalled.write_all(&big).await.unwrap();
        stalled
    });
    let got = shim.data(1, INITIAL_WINDOW as usize).await;
    assert_eq!(got.len(), INITIAL_WINDOW as usize);
    assert!(
        shim.silent_for(Duration::from_millis(300)).await,
        "wrote past the window"
    );
    assert!(!writer.is_finished());

    // Meanwhile the other stream flows both ways, many windows' worth.
    let chunk = vec![1u8; 60_000];
    for _ in 0..20 {
        shim.send(DATA, 3, &chunk).await;
        let mut buf = vec![0u8; chunk.len()];
        flowing.read_exact(&mut buf).await.unwrap();
    }
    // ... and it credited the shim back as it read (never more than read).
    let mut credited = 0u64;
    let mut frames = 0;
    while credited < 20 * 60_000 - u64::from(WINDOW_UPDATE) {
        let (k, id, p) = shim.next().await;
        assert_eq!((k, id), (WINDOW, 3));
        credited += u64::from(u32::from_be_bytes(p.try_into().unwrap()));
        frames += 1;
    }
    assert!(
        credited <= 20 * 60_000 && frames > 1,
        "{credited} in {frames}"
    );

    // Credit for the stalled stream releases the rest.
    shim.send(WINDOW, 1, &1000u32.to_be_bytes()).await;
    assert_eq!(shim.data(1, 1000).await.len(), 1000);
    tokio::time::timeout(T, writer).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reader_that_does_not_read_pins_at_most_its_window() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 5, "100.64.0.2:5").await;
    shim.open(l.id(), 7, "100.64.0.2:7").await;
    let mut idle = accept(&l).await;
    let mut other = accept(&l).await;
    let chunk = vec![2u8; 64 << 10];
    for _ in 0..4 {
        shim.send(DATA, 5, &chunk).await; // exactly the window
    }
    // One byte more is a broken shim: that stream is reset, nothing else.
    shim.send(DATA, 5, b"x").await;
    assert_eq!(shim.next().await, (RST, 5, vec![]));
    shim.send(DATA, 7, b"still fine").await;
    let mut buf = [0u8; 10];
    other.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still fine");
    let mut sink = Vec::new();
    let e = idle.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_peer_reset_mid_stream_errors_reads_and_writes() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 9, "100.64.0.2:9").await;
    let mut s = accept(&l).await;
    shim.send(DATA, 9, b"partial").await;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    // A reader parked when the reset comes is woken with an error.
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 8];
        let r = s.read(&mut b).await;
        (s, r)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    shim.send(RST, 9, b"").await;
    let (mut s, r) = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert!(s.write_all(b"late").await.is_err());
    // Frames for the gone stream are ignored; no RST echo for a reset one.
    shim.send(DATA, 9, b"zombie").await;
    shim.send(WINDOW, 9, &5u32.to_be_bytes()).await;
    shim.send(FIN, 9, b"").await;
    drop(s);
    assert!(shim.silent_for(Duration::from_millis(200)).await);
    assert_eq!(ch.open_streams(), 0);
}

#[tokio::test]
async fn dropping_a_stream_closes_it_like_tcp() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    // Written, then dropped: the bytes go out, then FIN (not a reset).
    shim.open(l.id(), 11, "100.64.0.2:11").await;
    let mut s = accept(&l).await;
    s.write_all(&[1]).await.unwrap();
    drop(s);
    assert_eq!(shim.next().await, (DATA, 11, vec![1]));
    assert_eq!(shim.next().await, (FIN, 11, vec![]));
    // The peer's FIN ends it.
    shim.send(FIN, 11, b"").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ch.open_streams(), 0);

    // Dropped, and the peer keeps sending: reset.
    shim.open(l.id(), 13, "100.64.0.2:13").await;
    drop(accept(&l).await);
    assert_eq!(shim.next().await, (FIN, 13, vec![]));
    shim.send(DATA, 13, b"more").await;
    assert_eq!(shim.next().await, (RST, 13, vec![]));
    assert_eq!(ch.open_streams(), 0);

    // Dropped with received bytes unread: reset at once.
    shim.open(l.id(), 15, "100.64.0.2:15").await;
    let s = accept(&l).await;
    shim.send(DATA, 15, b"unread").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    assert_eq!(shim.next().await, (RST, 15, vec![]));
    assert_eq!(ch.open_streams(), 0);
}

#[tokio::test]
async fn dials_are_answered_asynchronously() {
    let (ch, mut shim) = Shim::new();
    let ch2 = ch.clone();
    let d = tokio::spawn(async move { ch2.dial("peer.example:80", Duration::from_secs(3)).await });
    let (k, id, p) = shim.next().await;
    assert_eq!(k, DIAL);
    assert!(id & RUST_ID_BIT != 0);
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), 3000);
    assert_eq!(&p[4..], b"tcp\npeer.example:80");
    shim.send(DIAL_OK, id, b"100.64.0.9:80").await;
    let (mut s, peer) = d.await.unwrap().unwrap();
    assert_eq!(peer, "100.64.0.9:80".parse::<SocketAddr>().unwrap());
    shim.send(DATA, id, b"hi").await;
    let mut b = [0u8; 2];
    ChannelStreamRead(&mut s).read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hi");

    // A failed dial carries the shim's text.
    let ch2 = ch.clone();
    let d = tokio::spawn(async move { ch2.dial("nobody:1", Duration::from_secs(3)).await });
    let (_, id2, _) = shim.next().await;
    shim.send(DIAL_ERR, id2, b"dial nobody:1: no such host")
        .await;
    match d.await.unwrap() {
        Err(Error::Go {
            op: "dial",
            message,
        }) => assert!(message.contains("no such host")),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A dial given up before its answer: the late stream is reset.
    let ch2 = ch.clone();
    let d = tokio::spawn(async move { ch2.dial("slow:1", Duration::from_secs(3)).await });
    let (_, id3, _) = shim.next().await;
    d.abort();
    let _ = d.await;
    shim.send(DIAL_OK, id3, b"100.64.0.9:1").await;
    assert_eq!(shim.next().await, (RST, id3, vec![]));
    // An answer for a dial nobody made is reset too.
    shim.send(DIAL_OK, 0x8000_0f00, b"100.64.0.9:1").await;
    assert_eq!(shim.next().await, (RST, 0x8000_0f00, vec![]));
    drop(s);
}

/// `ChannelStream` through tokio's read helpers.
struct ChannelStreamRead<'a>(&'a mut ChannelStream);

impl tokio::io::AsyncRead for ChannelStreamRead<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

#[tokio::test]
async fn many_streams_open_echo_and_close_concurrently() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    const N: u32 = 400;
    for i in 0..N {
        shim.open(l.id(), i + 1, &format!("100.64.0.2:{}", 1000 + i))
            .await;
    }
    let mut tasks = Vec::new();
    for _ in 0..N {
        let mut s = accept(&l).await;
        tasks.push(tokio::spawn(async move {
            let port = s.peer_addr().port();
            s.write_all(format!("from {port}").as_bytes())
                .await
                .unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, format!("to {port}").into_bytes());
        }));
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N as usize {
        let (k, id, p) = shim.next().await;
        match k {
            DATA => {
                assert_eq!(p, format!("from {}", 1000 + id - 1).into_bytes());
            }
            FIN => {
                shim.send(DATA, id, format!("to {}", 1000 + id - 1).as_bytes())
                    .await;
                shim.send(FIN, id, b"").await;
                seen.insert(id);
            }
            other => panic!("unexpected frame {other}"),
        }
    }
    for t in tasks {
        tokio::time::timeout(T, t).await.unwrap().unwrap();
    }
    assert_eq!(ch.open_streams(), 0);
}

#[tokio::test]
async fn garbage_fails_the_channel_and_everything_on_it_ends() {
    for garbage in [
        vec![0u8; 9],                                   // type 0
        vec![DATA, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff], // oversize
        vec![DIAL, 0x80, 0, 0, 1, 0, 0, 0, 0],          // DIAL from the shim
        vec![WINDOW, 0, 0, 0, 1, 0, 0, 0, 1, 9],        // short WINDOW
    ] {
        let (ch, mut shim) = Shim::new();
        let l = ch.add_listener().unwrap();
        shim.open(l.id(), 1, "100.64.0.2:1").await;
        let mut s = accept(&l).await;
        let ch2 = ch.clone();
        let dial = tokio::spawn(async move { ch2.dial("x:1", Duration::from_secs(30)).await });
        let _ = shim.next().await; // the DIAL
        let parked = tokio::spawn(async move {
            let mut b = [0u8; 1];
            let r = s.read(&mut b).await;
            (s, r)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        shim.io.write_all(&garbage).await.unwrap();

        let (mut s, r) = tokio::time::timeout(T, parked).await.unwrap().unwrap();
        assert_eq!(
            r.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset,
            "{garbage:?}"
        );
        assert!(s.write_all(b"x").await.is_err());
        let e = tokio::time::timeout(T, dial)
            .await
            .unwrap()
            .unwrap()
            .err()
            .unwrap();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        let e = tokio::time::timeout(T, l.accept())
            .await
            .unwrap()
            .err()
            .unwrap();
        assert!(e.is_closed(), "{e:?}");
        assert!(!ch.is_alive());
        assert!(ch.add_listener().is_err());
        // Rust closed its end.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(T, shim.io.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(n.is_ok() || n.is_err());
    }
}

#[tokio::test]
async fn the_shim_closing_the_channel_ends_streams_and_listeners_as_closed() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.open(l.id(), 1, "100.64.0.2:1").await;
    let mut s = accept(&l).await;
    drop(shim);
    let mut b = [0u8; 1];
    assert!(s.read(&mut b).await.is_err());
    let e = l.accept().await.err().unwrap();
    assert!(matches!(e, Error::ListenerClosed), "{e:?}");
    let e = ch.dial("x:1", T).await.err().unwrap();
    assert!(matches!(e, Error::Closed), "{e:?}");
}

#[tokio::test]
async fn listener_end_hand_off_errors_and_bad_opens_reach_accept() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    shim.send(HANDOFF_ERROR, l.id(), b"100.64.0.3:42000\nnode is closing")
        .await;
    match l.accept().await {
        Err(Error::HandOff { peer, reason }) => {
            assert_eq!(peer, "100.64.0.3:42000");
            assert_eq!(reason, "node is closing");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // An OPEN whose addresses do not parse: reset, reported, listener fine.
    let mut p = l.id().to_be_bytes().to_vec();
    p.put_slice(b"garbage\n\ntailnet");
    shim.send(OPEN, 4, &p).await;
    assert_eq!(shim.next().await, (RST, 4, vec![]));
    assert!(matches!(l.accept().await, Err(Error::Protocol(_))));
    // An OPEN for a listener that does not exist is reset.
    shim.open(999, 6, "100.64.0.2:6").await;
    assert_eq!(shim.next().await, (RST, 6, vec![]));
    shim.send(LISTENER_END, l.id(), b"").await;
    let e = l.accept().await.err().unwrap();
    assert!(e.is_closed());
    assert!(ch.is_alive(), "one listener's end is not the channel's");
}

#[tokio::test]
async fn a_full_backlog_resets_and_reports_instead_of_growing() {
    let (ch, mut shim) = Shim::new();
    let l = ch.add_listener().unwrap();
    for i in 0..(BACKLOG as u32 + 3) {
        shim.open(l.id(), i + 1, "100.64.0.2:7").await;
    }
    let mut rst = 0;
    while rst < 3 {
        let (k, _, _) = shim.next().await;
        assert_eq!(k, RST);
        rst += 1;
    }
    match l.accept().await {
        Err(e @ Error::HandOff { .. }) => {
            assert!(e.is_retryable() && e.to_string().contains("3 connection"))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    for _ in 0..BACKLOG {
        accept(&l).await;
    }
}
