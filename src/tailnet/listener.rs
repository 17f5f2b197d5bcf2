//! [`Listener`]: accepted tailnet connections, each delivered by the shim as
//! one SOCK_SEQPACKET message holding the connection's descriptor and its
//! exact peer address together (never a later lookup by fd number).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::unix::AsyncFd;

use super::node::Node;
use super::stream::{Origin, TailnetStream};
use super::{Error, Result, ffi};

/// A tailnet listener. Dropping it stops listening.
pub struct Listener {
    node: Node,
    handle: i64,
    ctl: AsyncFd<OwnedFd>,
    addr: String,
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
            ctl,
            addr,
        })
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

    /// The address listened on (`:443`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits for the next connection. Returns the stream and the peer's
    /// exact address. For [`Origin::Tailnet`] streams that address is ready
    /// for [`Node::whois`]; Funnel streams ([`TailnetStream::origin`]) carry
    /// the public client's address and no tailnet identity.
    ///
    /// Cancel-safe: a dropped `accept` future loses no connection.
    pub async fn accept(&self) -> Result<(TailnetStream, SocketAddr)> {
        loop {
            let mut guard = self.ctl.readable().await?;
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
            Err(e) => return Ok(Err(Error::Io(e.into()))),
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
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC);
    if n == 0 && fds.is_empty() {
        return Ok(Ok(Received::Eof));
    }
    if truncated || fds.len() != 1 {
        return Ok(Err(Error::Protocol(format!(
            "listener message with {} descriptors{}",
            fds.len(),
            if truncated { " (truncated)" } else { "" }
        ))));
    }
    let text = match std::str::from_utf8(&buf[..n]) {
        Ok(t) => t,
        Err(_) => return Ok(Err(Error::Protocol("listener message is not UTF-8".into()))),
    };
    let mut lines = text.split('\n');
    let (remote, local) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let origin = match lines.next() {
        Some("tailnet") => Origin::Tailnet,
        Some("funnel") => Origin::Funnel,
        other => {
            return Ok(Err(Error::Protocol(format!(
                "listener message has bad origin {other:?}"
            ))));
        }
    };
    let Ok(peer) = remote.parse::<SocketAddr>() else {
        return Ok(Err(Error::Protocol(format!(
            "listener message has bad peer address {remote:?}"
        ))));
    };
    let local = local.parse::<SocketAddr>().ok();
    let fd = fds.pop().expect("checked: exactly one descriptor");
    Ok(Ok(Received::Conn(fd, peer, local, origin)))
}
