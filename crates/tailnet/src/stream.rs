//! [`TailnetStream`]: the bytes of one tailnet connection.
//!
//! By default a stream of the node's channel (`super::channel`: no
//! descriptor per connection); with [`DataPath::SocketPair`] a unix stream
//! socket the shim pumps. Either way it carries the tailnet addresses it
//! stands for, and `shutdown` half-closes: the peer reads end of stream
//! and can still reply.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::Result;
use super::channel::ChannelStream;

/// How a node's connections travel between the shim and Rust.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPath {
    /// One framed channel per node carries every connection: no descriptor
    /// per connection, asynchronous dials (see docs/tailnet.md).
    #[default]
    Channel,
    /// A unix socketpair per connection (two descriptors each), handed over
    /// with SCM_RIGHTS; dials are blocking calls on tokio's blocking pool.
    SocketPair,
}

impl DataPath {
    /// Environment variable that picks the data path for every node whose
    /// config does not set one: `socketpair` or `channel` (the default).
    pub const ENV: &'static str = "TAILPASS_TAILNET_DATA_PATH";

    /// [`DataPath::Channel`], unless [`DataPath::ENV`] says `socketpair`.
    pub fn from_env() -> DataPath {
        match std::env::var(Self::ENV).as_deref() {
            Ok("socketpair") => DataPath::SocketPair,
            _ => DataPath::Channel,
        }
    }
}

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
    inner: Io,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    origin: Origin,
}

#[derive(Debug)]
enum Io {
    Socket(UnixStream),
    Channel(ChannelStream),
}

impl TailnetStream {
    pub(crate) fn from_channel(
        s: ChannelStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        origin: Origin,
    ) -> Self {
        TailnetStream {
            inner: Io::Channel(s),
            peer,
            local,
            origin,
        }
    }

    /// Refuses the connection: reset now instead of closing gracefully.
    pub(crate) fn reset(self) {
        match self.inner {
            Io::Channel(s) => s.reset(),
            Io::Socket(s) => drop(s),
        }
    }

    pub(crate) fn from_fd(
        fd: OwnedFd,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        origin: Origin,
    ) -> Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(TailnetStream {
            inner: Io::Socket(UnixStream::from_std(std)?),
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
        match &mut self.inner {
            Io::Socket(s) => Pin::new(s).poll_read(cx, buf),
            Io::Channel(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TailnetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Io::Socket(s) => Pin::new(s).poll_write(cx, buf),
            Io::Channel(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Io::Socket(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Channel(s) => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                s.poll_write(cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Io::Socket(s) => s.is_write_vectored(),
            Io::Channel(_) => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Io::Socket(s) => Pin::new(s).poll_flush(cx),
            // Bytes handed to the channel are on their way, like bytes in
            // a socket's send buffer.
            Io::Channel(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Io::Socket(s) => Pin::new(s).poll_shutdown(cx),
            Io::Channel(s) => s.poll_shutdown(),
        }
    }
}
