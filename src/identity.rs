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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(login: &str, tags: &[&str]) -> PeerIdentity {
        let j = serde_json::json!({
            "Node": {"StableID": "n1", "Name": "box.example.ts.net.", "Tags": tags},
            "UserProfile": {"ID": 1, "LoginName": login, "DisplayName": "X"},
        });
        PeerIdentity::tailnet(
            "100.64.0.9:1".parse().unwrap(),
            WhoIs::from_json(&j.to_string()).unwrap(),
        )
    }

    #[test]
    fn a_tagged_node_never_acts_for_a_user() {
        let alice = peer("alice@example.com", &[]);
        let p = alice.principal().unwrap();
        assert!(matches!(p, Principal::User(_)));
        assert_eq!(p.user().unwrap().login_name, "alice@example.com");
        assert_eq!(alice.to_string(), "alice@example.com on box.example.ts.net");
        // Tags win over the user who created the node.
        for who in [
            peer("alice@example.com", &["tag:ci"]),
            peer(tailnet::TAGGED_DEVICES, &["tag:ci"]),
        ] {
            let p = who.principal().unwrap();
            assert!(matches!(p, Principal::Tagged(_)), "{who}");
            assert!(p.user().is_none());
            assert_eq!(who.to_string(), "node box.example.ts.net (tags tag:ci)");
        }
        let p = peer(tailnet::TAGGED_DEVICES, &[]);
        assert!(matches!(p.principal(), Some(Principal::Tagged(_))));
        let funnel = PeerIdentity::Funnel {
            addr: "203.0.113.1:5".parse().unwrap(),
        };
        assert!(funnel.principal().is_none() && funnel.whois().is_none());
    }
}
