//! The node's own view of itself, from the shim's status JSON.

use std::net::IpAddr;

use serde::Deserialize;

use super::Error;
use super::whois::StableNodeId;

/// A node's status.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// tailscale's backend state: `Running`, `NeedsLogin`, `Starting`, …
    pub backend_state: String,
    /// This node, once it has registered.
    #[serde(rename = "self")]
    pub self_node: Option<SelfNode>,
    /// The peers this node knows of (from its netmap).
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// The tailnet's MagicDNS suffix (`tail-scale.ts.net`), empty without MagicDNS.
    pub magic_dns_suffix: String,
    /// Domains this node can get a TLS certificate for (empty when HTTPS is off).
    #[serde(default)]
    pub cert_domains: Vec<String>,
    /// Health warnings.
    #[serde(default)]
    pub health: Vec<String>,
}

/// This node as the tailnet sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SelfNode {
    /// Stable node ID.
    pub stable_id: StableNodeId,
    /// Host name.
    pub host_name: String,
    /// MagicDNS name with a trailing dot, as tailscale reports it.
    pub dns_name: String,
    /// Tailnet addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// ACL tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Owner's login name.
    #[serde(default)]
    pub user_login: String,
}

/// A peer in this node's netmap.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Peer {
    /// Stable node ID.
    pub stable_id: StableNodeId,
    /// Host name.
    pub host_name: String,
    /// MagicDNS name with a trailing dot.
    pub dns_name: String,
    /// Tailnet addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// ACL tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether control reports it online.
    pub online: bool,
    /// The peer's peerAPI base URLs (`http://ip:port`).
    #[serde(default)]
    pub peer_api: Vec<String>,
}

impl Status {
    pub(crate) fn from_json(json: &str) -> Result<Self, Error> {
        serde_json::from_str(json).map_err(|e| Error::Protocol(format!("status answer: {e}")))
    }

    /// True when the node is connected.
    pub fn is_running(&self) -> bool {
        self.backend_state == "Running"
    }

    /// The node's MagicDNS name without the trailing dot, if it has one.
    pub fn fqdn(&self) -> Option<&str> {
        self.self_node
            .as_ref()
            .map(|s| s.dns_name.trim_end_matches('.'))
            .filter(|s| !s.is_empty())
    }

    /// The peer with this MagicDNS name (with or without trailing dot) or host name.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        let name = name.trim_end_matches('.');
        self.peers
            .iter()
            .find(|p| p.dns_name.trim_end_matches('.') == name || p.host_name == name)
    }

    /// The node's first IPv4 tailnet address, else its first address.
    pub fn ip(&self) -> Option<IpAddr> {
        let addrs = &self.self_node.as_ref()?.addresses;
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = Status::from_json(
            r#"{"backend_state":"Running","self":{"stable_id":"n1","host_name":"a",
            "dns_name":"a.tail-test.ts.net.","addresses":["fd7a:115c:a1e0::1","100.64.0.1"],
            "tags":[],"user_login":"u@x"},"peers":[{"stable_id":"n2","host_name":"b",
            "dns_name":"b.tail-test.ts.net.","addresses":["100.64.0.2"],"tags":[],"online":true}],
            "magic_dns_suffix":"tail-test.ts.net",
            "cert_domains":["a.tail-test.ts.net"],"health":[]}"#,
        )
        .unwrap();
        assert!(s.is_running());
        assert_eq!(s.fqdn(), Some("a.tail-test.ts.net"));
        assert_eq!(s.ip(), Some("100.64.0.1".parse().unwrap()));
        assert_eq!(s.peer("b.tail-test.ts.net").unwrap().stable_id.0, "n2");
        assert!(s.peer("b").unwrap().online);
        assert!(s.peer("c").is_none());
        assert!(Status::from_json("{").is_err());
    }
}
