//! HTTP/2 limits, with hand-written frames (a well-behaved client library
//! cannot send the floods): the advertised stream and header-list bounds,
//! an oversized header list refused without harm to the connection, a
//! CONTINUATION flood and a rapid-reset flood each ended with GOAWAY
//! `ENHANCE_YOUR_CALM`, and the gateway serving normally afterwards.
//!
//! The loopback listener speaks h2c with prior knowledge; every listener
//! shares the same HTTP/2 settings (`server::http_builder`).

use std::net::SocketAddr;
use std::time::Duration;

use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, Section, TestNet, free_port, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header, not indexed, with a new name.
fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// `GET /` with `:authority: localhost`, nothing indexed into the dynamic
/// table: GET, http, / from the static table, then :authority (index 1).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    hpack_int(0, 7, 9, &mut b);
    b.extend_from_slice(b"localhost");
    b
}

struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        ty: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Opens an h2c connection; returns it with the server's SETTINGS.
async fn open(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let f = read_frame(&mut s).await.expect("server SETTINGS");
    assert_eq!(f.ty, SETTINGS);
    let settings = f
        .payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap(); // ACK
    (s, settings)
}

/// Frames until GOAWAY or the end: the GOAWAY's error code, if any.
async fn goaway(s: &mut TcpStream) -> Option<u32> {
    while let Some(f) = read_frame(s).await {
        if f.ty == GOAWAY {
            return Some(u32::from_be_bytes([
                f.payload[4],
                f.payload[5],
                f.payload[6],
                f.payload[7],
            ]));
        }
    }
    None
}

/// The first frame on `stream` that answers a request: HEADERS (a
/// response) or RST_STREAM. Returns (type, payload).
async fn answer(s: &mut TcpStream, stream: u32) -> Option<(u8, Vec<u8>)> {
    while let Some(f) = read_frame(s).await {
        if f.stream == stream && (f.ty == HEADERS || f.ty == RST_STREAM) {
            return Some((f.ty, f.payload));
        }
        if f.ty == GOAWAY {
            return None;
        }
        let _ = f.flags;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bounds_and_floods() {
    let _permit = tailpass_testkit::light().await;
    let net = TestNet::start();
    let echo = upstream::start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .loopback(&format!("127.0.0.1:{port}"))
        .section(
            Section::new("limits")
                .set("http2_max_concurrent_streams", 16)
                .set("max_header_bytes", 20480),
        )
        .route(RouteSpec::new("/", format!("http://{echo}")).access("public"))
        .build();
    let config = Config::parse(&toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, Options::default()).await.unwrap();
    let addr = gw.loopback.unwrap();

    // The bounds are advertised.
    let (mut s, settings) = open(addr).await;
    assert!(
        settings.contains(&(0x3, 16)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert!(
        settings.contains(&(0x6, 20480)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );

    // A 40 KB header list is refused (431 or REFUSED_STREAM); the same
    // connection then serves a normal request.
    let mut big = get_block();
    for i in 0..10 {
        literal(&format!("x-big-{i}"), &[b'a'; 4000], &mut big);
    }
    let (first, rest) = big.split_at(16_000);
    let mut out = frame(HEADERS, END_STREAM, 1, first);
    out.extend(frame(CONTINUATION, 0, 1, &rest[..16_000]));
    out.extend(frame(CONTINUATION, END_HEADERS, 1, &rest[16_000..]));
    s.write_all(&out).await.unwrap();
    let (ty, payload) = answer(&mut s, 1)
        .await
        .expect("an answer to the big request");
    match ty {
        RST_STREAM => assert_eq!(
            u32::from_be_bytes(payload[..4].try_into().unwrap()),
            REFUSED_STREAM
        ),
        _ => assert!(
            payload.windows(3).any(|w| w == b"431") || payload.first() == Some(&0x48),
            "not a 431: {payload:x?}"
        ),
    }
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 3, &get_block()))
        .await
        .unwrap();
    let (ty, payload) = answer(&mut s, 3)
        .await
        .expect("an answer to the normal request");
    assert_eq!(ty, HEADERS);
    assert_eq!(
        payload.first(),
        Some(&0x88),
        ":status 200 (static index 8): {payload:x?}"
    );

    // CONTINUATION flood: a header block that never ends.
    let (s, _) = open(addr).await;
    let mut junk = Vec::new();
    while junk.len() < 16_000 {
        literal("x-junk", &[b'j'; 100], &mut junk);
    }
    let writer = {
        let (mut r, mut w) = s.into_split();
        let t = tokio::spawn(async move {
            if w.write_all(&frame(HEADERS, END_STREAM, 1, &get_block()))
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..1000 {
                if w.write_all(&frame(CONTINUATION, 0, 1, &junk))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let code = {
            let mut s = ReadHalf(&mut r);
            s.goaway().await
        };
        t.abort();
        code
    };
    assert_eq!(
        writer,
        Some(ENHANCE_YOUR_CALM),
        "CONTINUATION flood not stopped"
    );

    // Rapid reset: streams opened and cancelled at once, by the thousand.
    let (mut s, _) = open(addr).await;
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block()));
        flood.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    }
    let _ = s.write_all(&flood).await;
    assert_eq!(
        goaway(&mut s).await,
        Some(ENHANCE_YOUR_CALM),
        "rapid reset not stopped"
    );

    // And the gateway serves normally.
    let (mut s, _) = open(addr).await;
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .unwrap();
    let (ty, payload) = answer(&mut s, 1).await.expect("served after the floods");
    assert_eq!((ty, payload.first()), (HEADERS, Some(&0x88)));
    gw.shutdown().await;
}

/// Reading frames from the read half of a split connection.
struct ReadHalf<'a>(&'a mut tokio::net::tcp::OwnedReadHalf);

impl ReadHalf<'_> {
    async fn goaway(&mut self) -> Option<u32> {
        loop {
            let mut head = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut head))
                .await
                .ok()?
                .ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.0.read_exact(&mut payload).await.ok()?;
            if head[3] == GOAWAY {
                return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
    }
}
