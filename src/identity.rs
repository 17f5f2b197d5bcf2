//! Who is calling: the identity of a connection, established once when it
//! is accepted and never from anything the client sends.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::tailnet::WhoIs;

/// The caller behind one connection.
#[derive(Clone, Debug)]
pub enum PeerIdentity {
    /// A tailnet peer, identified by WhoIs on the node that accepted it.
    Tailnet {
        /// The peer's tailnet address.
        addr: SocketAddr,
        /// WhoIs answer.
        whois: Arc<WhoIs>,
    },
    /// The public internet through Funnel (no tailnet identity).
    Funnel {
        /// The client's public address as the Funnel relay reported it.
        addr: SocketAddr,
    },
    /// The public internet on the public (custom domain) listener.
    Internet {
        /// The client's address.
        addr: SocketAddr,
    },
    /// A local client on the loopback listener (no tailnet identity).
    Loopback {
        /// The local address.
        addr: SocketAddr,
    },
}

impl PeerIdentity {
    /// The WhoIs answer, for tailnet peers.
    pub(crate) fn whois(&self) -> Option<&WhoIs> {
        match self {
            PeerIdentity::Tailnet { whois, .. } => Some(whois),
            _ => None,
        }
    }

    /// The remote address.
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            PeerIdentity::Tailnet { addr, .. }
            | PeerIdentity::Funnel { addr }
            | PeerIdentity::Internet { addr }
            | PeerIdentity::Loopback { addr } => *addr,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Tailnet { whois, .. } if whois.is_tagged() => {
                write!(
                    f,
                    "node {} (tags {})",
                    whois.node.name,
                    whois.node.tags.join(",")
                )
            }
            PeerIdentity::Tailnet { whois, .. } => {
                write!(f, "{} on {}", whois.user.login_name, whois.node.name)
            }
            PeerIdentity::Funnel { addr } => write!(f, "public client {addr} (Funnel)"),
            PeerIdentity::Internet { addr } => write!(f, "public client {addr}"),
            PeerIdentity::Loopback { addr } => write!(f, "local client {addr}"),
        }
    }
}
