//! [`Listener`]: accepted tailnet connections, each delivered by the shim as
//! one SOCK_SEQPACKET message holding the connection's descriptor and its
//! exact peer address together (never a later lookup by fd number).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::unix::AsyncFd;

use super::channel::ChannelListener;
use super::node::Node;
use super::stream::{Origin, TailnetStream};
use super::{Error, Result, ffi};

/// A tailnet listener. Dropping it stops listening.
pub struct Listener {
    node: Node,
    handle: i64,
    source: Source,
    addr: String,
}

/// Where accepted connections come from.
enum Source {
    /// One SOCK_SEQPACKET message per connection (socketpair data path).
    Socket(AsyncFd<OwnedFd>),
    /// OPEN frames on the node's channel.
    Channel(ChannelListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("node", &self.node.hostname())
            .field("addr", &self.addr)
            .finish()
    }
}

/// One received hand-off message.
enum Received {
    Conn(OwnedFd, SocketAddr, Option<SocketAddr>, Origin),
    Eof,
}

impl Listener {
    pub(crate) fn new(node: Node, handle: i64, ctl: OwnedFd, addr: String) -> Result<Self> {
        nix::fcntl::fcntl(
            &ctl,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::Io(e.into()))?;
        let ctl = match ffi::register_readable(ctl) {
            Ok(c) => c,
            Err(e) => {
                let _ = ffi::listener_close(handle);
                return Err(Error::Io(e));
            }
        };
        Ok(Listener {
            node,
            handle,
            source: Source::Socket(ctl),
            addr,
        })
    }

    pub(crate) fn on_channel(node: Node, handle: i64, ch: ChannelListener, addr: String) -> Self {
        Listener {
            node,
            handle,
            source: Source::Channel(ch),
            addr,
        }
    }

    /// The node this listener belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Sets the certificate (PEM chain and key) a Funnel listener presents;
    /// call again to renew. Funnel handshakes fail until one is set.
    pub fn set_cert(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        ffi::listener_set_cert(self.handle, cert_pem, key_pem)
    }

    /// Waits for the next connection. Returns the stream and the peer's
    /// exact address. For [`Origin::Tailnet`] streams that address is ready
    /// for [`Node::whois`]; Funnel streams ([`TailnetStream::origin`]) carry
    /// the public client's address and no tailnet identity.
    ///
    /// Cancel-safe: a dropped `accept` future loses no connection.
    ///
    /// Errors: [`Error::ListenerClosed`] (or [`Error::Closed`]) means the
    /// listener is finished ([`Error::is_closed`]). Every other error is
    /// about one connection, which is lost, and the listener stays usable:
    /// [`Error::Resource`] (the kernel dropped the connection's descriptor,
    /// e.g. our descriptor table is full), [`Error::HandOff`] (the shim
    /// could not hand the connection over) and transient I/O errors are
    /// [`Error::is_retryable`]; log them, back off and call `accept` again.
    pub async fn accept(&self) -> Result<(TailnetStream, SocketAddr)> {
        let ctl = match &self.source {
            Source::Channel(ch) => return ch.accept().await,
            Source::Socket(ctl) => ctl,
        };
        loop {
            let mut guard = ctl.readable().await?;
            match guard.try_io(|fd| recv_conn(fd.get_ref())) {
                Ok(Ok(Ok(Received::Conn(fd, peer, local, origin)))) => {
                    let stream = TailnetStream::from_fd(fd, peer, local, origin)?;
                    return Ok((stream, peer));
                }
                Ok(Ok(Ok(Received::Eof))) => return Err(Error::ListenerClosed),
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(Error::Io(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Closing the Go listener is quick (no network round trip); an
        // already-closed one (node closed first) just reports unknown handle.
        let _ = ffi::listener_close(self.handle);
    }
}

/// First line of a hand-off failure message (see `tsshim.h`).
const HANDOFF_ERROR: &[u8] = b"handoff-error\n";

/// Reads one hand-off message. The outer `io::Result` carries only
/// WouldBlock (for `try_io` to clear readiness); everything else is inside.
fn recv_conn(fd: &OwnedFd) -> io::Result<Result<Received>> {
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => break m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => {
                let e = io::Error::from(e);
                if super::error::is_transient_io(&e) {
                    return Ok(Err(Error::Resource(format!("receiving a connection: {e}"))));
                }
                return Ok(Err(Error::Io(e)));
            }
        }
    };
    // Take ownership of every descriptor first so none can leak, whatever
    // else is wrong with the message.
    let mut fds: Vec<OwnedFd> = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds.extend(raw.into_iter().map(ffi::own_received_fd));
            }
        }
    }
    let n = msg.bytes;
    let ctrunc = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let trunc = msg.flags.contains(MsgFlags::MSG_TRUNC);
    Ok(decode(&buf[..n], fds, ctrunc, trunc))
}

/// Decodes one hand-off message (see the contract in `tsshim.h`). Pure, so
/// every malformed shape is unit-tested without a kernel in the way.
fn decode(payload: &[u8], mut fds: Vec<OwnedFd>, ctrunc: bool, trunc: bool) -> Result<Received> {
    if payload.is_empty() && fds.is_empty() && !ctrunc {
        return Ok(Received::Eof);
    }
    if let Some(rest) = payload.strip_prefix(HANDOFF_ERROR) {
        // No descriptor belongs to this message; any that came are dropped
        // (closed) with `fds`.
        let text = String::from_utf8_lossy(rest);
        let (peer, reason) = text.split_once('\n').unwrap_or((&text, ""));
        return Err(Error::HandOff {
            peer: peer.to_string(),
            reason: reason.to_string(),
        });
    }
    if ctrunc {
        // The kernel could not install the connection's descriptor in our
        // table (EMFILE/ENFILE while receiving SCM_RIGHTS) and dropped it.
        // That connection is lost (the shim's end reads EOF and closes
        // it); the listener is fine.
        return Err(Error::Resource(format!(
            "the kernel dropped a connection's descriptor (MSG_CTRUNC, {} received): \
             the descriptor table is probably full",
            fds.len()
        )));
    }
    if trunc || fds.len() != 1 {
        return Err(Error::Protocol(format!(
            "listener message with {} descriptors{}",
            fds.len(),
            if trunc { " (truncated)" } else { "" }
        )));
    }
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(_) => return Err(Error::Protocol("listener message is not UTF-8".into())),
    };
    let mut lines = text.split('\n');
    let (remote, local) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let origin = match lines.next() {
        Some("tailnet") => Origin::Tailnet,
        Some("funnel") => Origin::Funnel,
        other => {
            return Err(Error::Protocol(format!(
                "listener message has bad origin {other:?}"
            )));
        }
    };
    let Ok(peer) = remote.parse::<SocketAddr>() else {
        return Err(Error::Protocol(format!(
            "listener message has bad peer address {remote:?}"
        )));
    };
    let local = local.parse::<SocketAddr>().ok();
    let Some(fd) = fds.pop() else {
        return Err(Error::Protocol(
            "listener message lost its descriptor".into(),
        ));
    };
    Ok(Received::Conn(fd, peer, local, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        nix::unistd::pipe().expect("pipe").0
    }

    #[test]
    fn connection_message_decodes_with_its_address() {
        let r = decode(
            b"100.64.0.2:41000\n100.64.0.1:443\ntailnet",
            vec![fd()],
            false,
            false,
        );
        match r {
            Ok(Received::Conn(_, peer, local, Origin::Tailnet)) => {
                assert_eq!(peer, "100.64.0.2:41000".parse().unwrap());
                assert_eq!(local, Some("100.64.0.1:443".parse().unwrap()));
            }
            other => panic!("unexpected {:?}", other.err()),
        }
    }

    #[test]
    fn empty_message_is_end_of_listener() {
        assert!(matches!(
            decode(b"", vec![], false, false),
            Ok(Received::Eof)
        ));
    }

    #[test]
    fn dropped_descriptor_is_a_retryable_resource_error() {
        // What the kernel delivers when our fd table is full: the payload
        // arrives, the descriptor does not, MSG_CTRUNC is set.
        let e = decode(
            b"100.64.0.2:41000\n100.64.0.1:443\ntailnet",
            vec![],
            true,
            false,
        )
        .err()
        .expect("an error");
        assert!(matches!(e, Error::Resource(_)), "{e:?}");
        assert!(e.is_retryable() && !e.is_closed(), "{e:?}");
    }

    #[test]
    fn handoff_failure_carries_peer_and_reason() {
        let e = decode(
            b"handoff-error\n100.64.0.3:42000\nsocketpair: too many open files",
            vec![],
            false,
            false,
        )
        .err()
        .expect("an error");
        match &e {
            Error::HandOff { peer, reason } => {
                assert_eq!(peer, "100.64.0.3:42000");
                assert_eq!(reason, "socketpair: too many open files");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.is_retryable() && !e.is_closed());
    }

    #[test]
    fn malformed_messages_are_protocol_errors_and_close_their_fds() {
        for (payload, fds, trunc) in [
            (&b"100.64.0.2:1\n\ntailnet"[..], 0, false),
            (&b"100.64.0.2:1\n\ntailnet"[..], 2, false),
            (&b"100.64.0.2:1\n\nmars"[..], 1, false),
            (&b"not an address\n\ntailnet"[..], 1, false),
            (&b"\xff\xfe"[..], 1, false),
            (&b"100.64.0.2:1\n\ntailnet"[..], 1, true),
        ] {
            let fds: Vec<OwnedFd> = (0..fds).map(|_| fd()).collect();
            let e = decode(payload, fds, false, trunc).err().expect("an error");
            assert!(matches!(e, Error::Protocol(_)), "{payload:?}: {e:?}");
            assert!(!e.is_closed());
        }
    }

    #[test]
    fn retryable_classification() {
        let emfile = Error::Io(io::Error::from_raw_os_error(nix::libc::EMFILE));
        assert!(emfile.is_retryable());
        assert!(!Error::ListenerClosed.is_retryable());
        assert!(Error::ListenerClosed.is_closed());
        assert!(!Error::Protocol("x".into()).is_retryable());
        let go = Error::Go {
            op: "dial",
            message: "hand-off: socketpair: too many open files".into(),
        };
        assert!(go.is_retryable());
    }
}
