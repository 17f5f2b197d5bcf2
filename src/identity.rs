//! Who is calling: the identity of a connection, established once when it
//! is accepted and never from anything the client sends.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::tailnet::{self, UserProfile, WhoIs};

/// Who a tailnet peer acts for, decided once from its WhoIs answer when
/// the connection is accepted. Everything that treats users and tagged
/// nodes differently (policy, identity headers, session binding, pages)
/// matches on this instead of asking the WhoIs answer again.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A node owned by a user: it acts for that user.
    User(Arc<WhoIs>),
    /// A tagged node: it acts for its tags only, never for whoever
    /// created it (its WhoIs user is `tagged-devices` or its creator).
    Tagged(Arc<WhoIs>),
}

impl Principal {
    /// Classifies a WhoIs answer (tailnet's rule: tags, or the
    /// `tagged-devices` owner, make a tagged node).
    pub fn of(whois: Arc<WhoIs>) -> Principal {
        match whois.principal() {
            tailnet::Principal::User { .. } => Principal::User(whois),
            tailnet::Principal::Tagged { .. } => Principal::Tagged(whois),
        }
    }

    /// The whole WhoIs answer (node, caps).
    pub fn whois(&self) -> &WhoIs {
        match self {
            Principal::User(w) | Principal::Tagged(w) => w,
        }
    }

    /// The user it acts for; `None` for a tagged node.
    pub fn user(&self) -> Option<&UserProfile> {
        match self {
            Principal::User(w) => Some(&w.user),
            Principal::Tagged(_) => None,
        }
    }
}

/// The caller behind one connection.
#[derive(Clone, Debug)]
pub enum PeerIdentity {
    /// A tailnet peer, identified by WhoIs on the node that accepted it.
    Tailnet {
        /// The peer's tailnet address.
        addr: SocketAddr,
        /// Who it acts for, with its WhoIs answer.
        principal: Principal,
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
    /// A tailnet peer at `addr` with its WhoIs answer.
    pub fn tailnet(addr: SocketAddr, whois: WhoIs) -> PeerIdentity {
        PeerIdentity::Tailnet {
            addr,
            principal: Principal::of(Arc::new(whois)),
        }
    }

    /// Who a tailnet peer acts for; `None` off the tailnet.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        match self {
            PeerIdentity::Tailnet { principal, .. } => Some(principal),
            _ => None,
        }
    }

    /// The WhoIs answer, for tailnet peers.
    pub(crate) fn whois(&self) -> Option<&WhoIs> {
        self.principal().map(Principal::whois)
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
            PeerIdentity::Tailnet {
                principal: Principal::Tagged(w),
                ..
            } => write!(f, "node {} (tags {})", w.node.name, w.node.tags.join(",")),
            PeerIdentity::Tailnet {
                principal: Principal::User(w),
                ..
            } => write!(f, "{} on {}", w.user.login_name, w.node.name),
            PeerIdentity::Funnel { addr } => write!(f, "public client {addr} (Funnel)"),
            PeerIdentity::Internet { addr } => write!(f, "public client {addr}"),
            PeerIdentity::Loopback { addr } => write!(f, "local client {addr}"),
        }
    }
}
