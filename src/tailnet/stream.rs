//! [`TailnetStream`]: the bytes of one tailnet connection.
//!
//! The shim pumps each tsnet connection through a unix stream socket, so
//! this is a tokio `UnixStream` plus the tailnet addresses it stands for.
//! `shutdown` half-closes: the peer reads end of stream and can still reply.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::Result;

/// Where an accepted connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A tailnet peer: its address identifies it (WhoIs).
    Tailnet,
    /// The public internet through Funnel: the address is the client's
    /// public address as the Funnel relay reported it. It carries no tailnet
    /// identity and must never be asked to WhoIs.
    Funnel,
}

/// A tailnet TCP connection.
#[derive(Debug)]
pub struct TailnetStream {
    inner: UnixStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    origin: Origin,
}

impl TailnetStream {
    pub(crate) fn from_fd(
        fd: OwnedFd,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        origin: Origin,
    ) -> Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(TailnetStream {
            inner: UnixStream::from_std(std)?,
            peer,
            local,
            origin,
        })
    }

    /// Where the connection came from (dialed streams are `Tailnet`).
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The remote address: a tailnet peer, or for [`Origin::Funnel`] the
    /// public client.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The local tailnet address (known for accepted connections).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

impl AsyncRead for TailnetStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TailnetStream {
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
