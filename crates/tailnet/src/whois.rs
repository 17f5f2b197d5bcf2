//! Typed WhoIs answers: who is behind a tailnet connection.
//!
//! Parsed from tailscale's `apitype.WhoIsResponse` JSON as the shim returns
//! it. Only fields tailpass relies on are kept; anything else is ignored so a
//! tsnet upgrade that adds fields changes nothing here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::Error;

/// The login name tailscale gives the owner of tagged nodes.
pub const TAGGED_DEVICES: &str = "tagged-devices";

/// A node's stable ID (`nXXXXCNTRL`-style; stays the same across key rotation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct StableNodeId(pub String);

impl fmt::Display for StableNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tailnet user ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// App-capability grants: capability name → the JSON values granted.
pub type CapMap = BTreeMap<String, Vec<serde_json::Value>>;

/// The user that owns the peer node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserProfile {
    /// Numeric user ID.
    pub id: UserId,
    /// Login name, e.g. `alice@example.com`; [`TAGGED_DEVICES`] for tagged nodes.
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Profile picture URL, if any.
    pub profile_pic_url: Option<String>,
}

/// The node at the other end: its stable ID, MagicDNS name and tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    /// Stable node ID.
    pub stable_id: StableNodeId,
    /// Fully qualified MagicDNS name without the trailing dot
    /// (`laptop.tail-scale.ts.net`), or the bare host name without MagicDNS.
    pub name: String,
    /// The node's host name as it reported it.
    pub host_name: String,
    /// Tailnet addresses of the node.
    pub addresses: Vec<IpAddr>,
    /// ACL tags (`tag:…`); empty for user-owned nodes.
    pub tags: Vec<String>,
}

/// Who is at the other end of a tailnet connection.
#[derive(Clone, Debug, PartialEq)]
pub struct WhoIs {
    /// The owning user.
    pub user: UserProfile,
    /// The peer's node (for a tagged node, the only identity there is).
    pub node: PeerNode,
    /// App capabilities granted to the peer towards this node.
    pub caps: CapMap,
}

/// What a policy should treat as "who": a user, or for tagged nodes the tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal<'a> {
    /// A node owned by a user.
    User {
        /// The user's login name.
        login: &'a str,
    },
    /// A tagged node: it acts for its tags, not for whoever created it.
    Tagged {
        /// The node's ACL tags (`tag:…`).
        tags: &'a [String],
    },
}

impl WhoIs {
    /// Parses the shim's WhoIs JSON.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let raw: RawWhoIs = serde_json::from_str(json)
            .map_err(|e| Error::Protocol(format!("whois answer: {e}")))?;
        let node = raw
            .node
            .ok_or_else(|| Error::Protocol("whois answer without a node".into()))?;
        let user = raw
            .user_profile
            .ok_or_else(|| Error::Protocol("whois answer without a user profile".into()))?;
        let addresses = node
            .addresses
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let ip = p.split('/').next().unwrap_or(p);
                ip.parse::<IpAddr>()
                    .map_err(|_| Error::Protocol(format!("whois: bad node address {p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = node.name.trim_end_matches('.').to_string();
        let host_name = node
            .hostinfo
            .and_then(|h| h.hostname)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| name.split('.').next().unwrap_or_default().to_string());
        Ok(WhoIs {
            user: UserProfile {
                id: user.id,
                login_name: user.login_name,
                display_name: user.display_name,
                profile_pic_url: user.profile_pic_url.filter(|u| !u.is_empty()),
            },
            node: PeerNode {
                stable_id: node.stable_id,
                name,
                host_name,
                addresses,
                tags: node.tags.unwrap_or_default(),
            },
            // A capability granted without values comes as null: keep the
            // grant, with no values.
            caps: raw
                .cap_map
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
        })
    }

    /// True for tagged nodes (they act for their tags, not a user).
    pub fn is_tagged(&self) -> bool {
        !self.node.tags.is_empty() || self.user.login_name == TAGGED_DEVICES
    }

    /// The principal a policy should consider.
    pub fn principal(&self) -> Principal<'_> {
        if self.is_tagged() {
            Principal::Tagged {
                tags: &self.node.tags,
            }
        } else {
            Principal::User {
                login: &self.user.login_name,
            }
        }
    }

    /// The values granted for one app capability (empty if not granted).
    pub fn cap_values(&self, cap: &str) -> &[serde_json::Value] {
        self.caps.get(cap).map(Vec::as_slice).unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct RawWhoIs {
    #[serde(rename = "Node")]
    node: Option<RawNode>,
    #[serde(rename = "UserProfile")]
    user_profile: Option<RawUser>,
    #[serde(rename = "CapMap")]
    cap_map: Option<BTreeMap<String, Option<Vec<serde_json::Value>>>>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(rename = "StableID")]
    stable_id: StableNodeId,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Addresses")]
    addresses: Option<Vec<String>>,
    #[serde(rename = "Tags")]
    tags: Option<Vec<String>>,
    #[serde(rename = "Hostinfo")]
    hostinfo: Option<RawHostinfo>,
}

#[derive(Deserialize)]
struct RawHostinfo {
    #[serde(rename = "Hostname")]
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(rename = "ID")]
    id: UserId,
    #[serde(rename = "LoginName", default)]
    login_name: String,
    #[serde(rename = "DisplayName", default)]
    display_name: String,
    #[serde(rename = "ProfilePicURL")]
    profile_pic_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"{
        "Node": {"ID": 3, "StableID": "TESTCTRL00000003", "Name": "laptop.tail-test.ts.net.",
                 "User": 7, "Addresses": ["100.64.0.3/32", "fd7a:115c:a1e0::3/128"],
                 "Hostinfo": {"Hostname": "laptop", "OS": "linux"}},
        "UserProfile": {"ID": 7, "LoginName": "alice@example.com", "DisplayName": "Alice",
                        "ProfilePicURL": "https://example.com/a.png"},
        "CapMap": {"example.com/cap/files": [{"path": "/srv"}, "ro"], "example.com/cap/bare": null}
    }"#;

    #[test]
    fn parses_a_user_node() {
        let w = WhoIs::from_json(USER).unwrap();
        assert_eq!(w.user.login_name, "alice@example.com");
        assert_eq!(w.user.id, UserId(7));
        assert_eq!(w.node.name, "laptop.tail-test.ts.net");
        assert_eq!(w.node.host_name, "laptop");
        assert_eq!(w.node.stable_id.0, "TESTCTRL00000003");
        assert_eq!(w.node.addresses.len(), 2);
        assert!(!w.is_tagged());
        assert_eq!(
            w.principal(),
            Principal::User {
                login: "alice@example.com"
            }
        );
        assert_eq!(w.cap_values("example.com/cap/files").len(), 2);
        assert!(w.cap_values("example.com/cap/none").is_empty());
        assert!(w.caps.contains_key("example.com/cap/bare"));
    }

    #[test]
    fn recognises_tagged_nodes() {
        let j = r#"{"Node": {"StableID": "n1", "Name": "ci.ts.net.", "Tags": ["tag:ci"]},
                    "UserProfile": {"ID": 1, "LoginName": "tagged-devices", "DisplayName": "Tagged Devices"}}"#;
        let w = WhoIs::from_json(j).unwrap();
        assert!(w.is_tagged());
        assert_eq!(w.node.host_name, "ci");
        match w.principal() {
            Principal::Tagged { tags } => assert_eq!(tags, ["tag:ci"]),
            other => panic!("{other:?}"),
        }
        // Owned by the tagged-devices user even with no tag list: still tagged.
        let j = r#"{"Node": {"StableID": "n1"}, "UserProfile": {"ID": 1, "LoginName": "tagged-devices"}}"#;
        assert!(WhoIs::from_json(j).unwrap().is_tagged());
    }

    #[test]
    fn rejects_incomplete_or_bad_answers() {
        for bad in [
            "",
            "null",
            "{}",
            r#"{"Node": {"StableID": "n"}}"#,
            r#"{"UserProfile": {"ID": 1}}"#,
            r#"{"Node": {"StableID": "n", "Addresses": ["nope"]}, "UserProfile": {"ID": 1}}"#,
        ] {
            assert!(WhoIs::from_json(bad).is_err(), "{bad:?} accepted");
        }
    }
}
