//! Frames of the node channel (contract in `tsshim.h`):
//! `[type u8][stream u32][len u32][payload]`, big endian, `len <= 64 KiB`.
//!
//! [`decode`] is pure and total: any byte sequence yields a frame, "need
//! more bytes" or an error, never a panic, and it never reads past a
//! frame's declared length (tested with random bytes in `tests`).

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::super::stream::Origin;

/// Header length: type, stream, payload length.
pub(crate) const HEADER: usize = 9;
/// Longest payload either side may send.
pub(crate) const MAX_PAYLOAD: usize = 64 << 10;
/// Credit each side grants per stream at open.
pub(crate) const INITIAL_WINDOW: u32 = 256 << 10;
/// Stream ids Rust allocates (dials) have this bit; the shim's do not.
pub(crate) const RUST_ID_BIT: u32 = 1 << 31;

pub(crate) const OPEN: u8 = 1;
pub(crate) const DIAL: u8 = 2;
pub(crate) const DIAL_OK: u8 = 3;
pub(crate) const DIAL_ERR: u8 = 4;
pub(crate) const DATA: u8 = 5;
pub(crate) const WINDOW: u8 = 6;
pub(crate) const FIN: u8 = 7;
pub(crate) const RST: u8 = 8;
pub(crate) const HANDOFF_ERROR: u8 = 9;
pub(crate) const LISTENER_END: u8 = 10;

/// Addresses of an accepted stream, as the OPEN frame carried them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenAddrs {
    pub(crate) peer: SocketAddr,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) origin: Origin,
}

/// A frame from the shim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A listener accepted a connection. A payload that does not parse is
    /// about this stream only: `Err(reason)` (the stream is reset).
    Open {
        stream: u32,
        listener: u32,
        addrs: Result<OpenAddrs, String>,
    },
    DialOk {
        stream: u32,
        peer: Option<SocketAddr>,
    },
    DialErr {
        stream: u32,
        message: String,
    },
    Data {
        stream: u32,
        data: Bytes,
    },
    Window {
        stream: u32,
        credit: u32,
    },
    Fin {
        stream: u32,
    },
    Rst {
        stream: u32,
    },
    HandOffError {
        listener: u32,
        peer: String,
        reason: String,
    },
    ListenerEnd {
        listener: u32,
    },
}

/// Why the channel cannot go on: the two halves disagree (a bug or
/// corruption). The channel is failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

/// Takes one frame off the front of `buf`. `Ok(None)`: not all of it has
/// arrived yet (nothing consumed).
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let kind = buf[0];
    let stream = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(DecodeError(format!(
            "frame of {len} bytes (limit {MAX_PAYLOAD})"
        )));
    }
    if !(OPEN..=LISTENER_END).contains(&kind) {
        return Err(DecodeError(format!("unknown frame type {kind}")));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    buf.advance(HEADER);
    let payload = buf.split_to(len).freeze();
    let frame = match kind {
        OPEN => {
            if payload.len() < 4 {
                return Err(DecodeError("OPEN frame without a listener id".into()));
            }
            let listener = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            Frame::Open {
                stream,
                listener,
                addrs: open_addrs(&payload[4..]),
            }
        }
        DIAL_OK => Frame::DialOk {
            stream,
            peer: std::str::from_utf8(&payload)
                .ok()
                .and_then(|s| s.parse().ok()),
        },
        DIAL_ERR => Frame::DialErr {
            stream,
            message: String::from_utf8_lossy(&payload).into_owned(),
        },
        DATA => Frame::Data {
            stream,
            data: payload,
        },
        WINDOW => {
            let Ok(b) = <[u8; 4]>::try_from(&payload[..]) else {
                return Err(DecodeError(format!(
                    "WINDOW frame of {} bytes",
                    payload.len()
                )));
            };
            Frame::Window {
                stream,
                credit: u32::from_be_bytes(b),
            }
        }
        FIN => Frame::Fin { stream },
        RST => Frame::Rst { stream },
        HANDOFF_ERROR => {
            let text = String::from_utf8_lossy(&payload);
            let (peer, reason) = text.split_once('\n').unwrap_or((&text, ""));
            Frame::HandOffError {
                listener: stream,
                peer: peer.to_string(),
                reason: reason.to_string(),
            }
        }
        LISTENER_END => Frame::ListenerEnd { listener: stream },
        // DIAL goes only from Rust to the shim.
        _ => return Err(DecodeError(format!("unexpected frame type {kind}"))),
    };
    Ok(Some(frame))
}

fn open_addrs(p: &[u8]) -> Result<OpenAddrs, String> {
    let text = std::str::from_utf8(p).map_err(|_| "OPEN addresses are not UTF-8".to_string())?;
    let mut lines = text.split('\n');
    let (remote, local) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let origin = match lines.next() {
        Some("tailnet") => Origin::Tailnet,
        Some("funnel") => Origin::Funnel,
        other => return Err(format!("OPEN has bad origin {other:?}")),
    };
    let peer = remote
        .parse::<SocketAddr>()
        .map_err(|_| format!("OPEN has bad peer address {remote:?}"))?;
    Ok(OpenAddrs {
        peer,
        local: local.parse().ok(),
        origin,
    })
}

/// Appends a frame header; the caller appends `len` payload bytes.
pub(crate) fn put_header(buf: &mut BytesMut, kind: u8, stream: u32, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD);
    buf.put_u8(kind);
    buf.put_u32(stream);
    buf.put_u32(len as u32);
}

/// Appends a whole frame.
pub(crate) fn put_frame(buf: &mut BytesMut, kind: u8, stream: u32, payload: &[u8]) {
    put_header(buf, kind, stream, payload.len());
    buf.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_header(&mut b, kind, stream, payload.len());
        b.put_slice(payload);
        b
    }

    #[test]
    fn open_carries_listener_and_addresses() {
        let mut p = 7u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"100.64.0.2:41000\n100.64.0.1:443\ntailnet");
        let mut b = frame(OPEN, 3, &p);
        let f = decode(&mut b).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Open {
                stream: 3,
                listener: 7,
                addrs: Ok(OpenAddrs {
                    peer: "100.64.0.2:41000".parse().unwrap(),
                    local: Some("100.64.0.1:443".parse().unwrap()),
                    origin: Origin::Tailnet,
                }),
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn bad_open_addresses_are_the_streams_problem_only() {
        for addrs in [&b"nope\n\ntailnet"[..], b"1.2.3.4:5\n\nmars", b"\xff"] {
            let mut p = 1u32.to_be_bytes().to_vec();
            p.extend_from_slice(addrs);
            match decode(&mut frame(OPEN, 3, &p)) {
                Ok(Some(Frame::Open { addrs: Err(_), .. })) => {}
                other => panic!("{addrs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let whole = frame(DATA, 9, b"hello");
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut b), Ok(None), "cut at {cut}");
            assert_eq!(b.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn oversize_unknown_and_misdirected_frames_are_errors() {
        let mut b = BytesMut::new();
        put_header(&mut b, DATA, 1, 0);
        b[5..9].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(decode(&mut b).is_err(), "oversize");
        assert!(decode(&mut frame(0, 1, b"")).is_err(), "type 0");
        assert!(decode(&mut frame(11, 1, b"")).is_err(), "type 11");
        assert!(decode(&mut frame(255, 1, b"")).is_err(), "type 255");
        assert!(
            decode(&mut frame(DIAL, 1, b"")).is_err(),
            "DIAL from the shim"
        );
        assert!(
            decode(&mut frame(WINDOW, 1, b"abc")).is_err(),
            "short WINDOW"
        );
        assert!(
            decode(&mut frame(OPEN, 1, b"ab")).is_err(),
            "OPEN without listener"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random bytes: decode never panics, never consumes a partial
        /// frame, and always consumes exactly header + length on success.
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            loop {
                let before = b.len();
                match decode(&mut b) {
                    Ok(Some(_)) => {
                        prop_assert!(b.len() < before);
                        let declared = u32::from_be_bytes([data[data.len() - before + 5],
                            data[data.len() - before + 6], data[data.len() - before + 7],
                            data[data.len() - before + 8]]) as usize;
                        prop_assert_eq!(before - b.len(), HEADER + declared);
                    }
                    Ok(None) => { prop_assert_eq!(b.len(), before); break; }
                    Err(_) => break,
                }
            }
        }

        /// Valid frames of every type round-trip, also when split anywhere.
        #[test]
        fn valid_frames_split_anywhere(
            kind in prop_oneof![Just(DATA), Just(FIN), Just(RST), Just(DIAL_ERR), Just(LISTENER_END)],
            stream in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
            cut in 0usize..2009,
        ) {
            let whole = frame(kind, stream, &payload);
            let cut = cut.min(whole.len());
            let mut b = BytesMut::from(&whole[..cut]);
            let first = decode(&mut b).unwrap();
            if cut < whole.len() {
                prop_assert!(first.is_none());
                b.extend_from_slice(&whole[cut..]);
            }
            let f = match first { Some(f) => f, None => decode(&mut b).unwrap().unwrap() };
            prop_assert!(b.is_empty());
            match (kind, f) {
                (DATA, Frame::Data { stream: s, data }) => {
                    prop_assert_eq!(s, stream);
                    prop_assert_eq!(&data[..], &payload[..]);
                }
                (FIN, Frame::Fin { stream: s }) | (RST, Frame::Rst { stream: s }) => prop_assert_eq!(s, stream),
                (DIAL_ERR, Frame::DialErr { stream: s, .. }) => prop_assert_eq!(s, stream),
                (LISTENER_END, Frame::ListenerEnd { listener }) => prop_assert_eq!(listener, stream),
                (k, f) => prop_assert!(false, "type {} gave {:?}", k, f),
            }
        }
    }
}
