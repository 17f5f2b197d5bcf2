//! Route access decisions: a pure function of the route and the caller's
//! identity. Denies by default and always says why.

use crate::config::{Access, Route};
use crate::identity::PeerIdentity;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; the reason names what matched.
    Allow(String),
    /// Forbidden (403); the reason says which requirement failed.
    Deny(String),
    /// Pretend the route does not exist (404): protected routes seen
    /// through Funnel or loopback (security invariant 3).
    Hide(String),
}

impl Decision {
    /// A short word for the access log.
    pub fn word(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::Hide(_) => "hide",
        }
    }
}

/// Decides whether `who` may use `route`.
pub fn evaluate(route: &Route, who: &PeerIdentity) -> Decision {
    let (users, tags, caps) = match &route.access {
        Access::Public => return Decision::Allow("public route".into()),
        Access::Tailnet {
            users,
            tags,
            capabilities,
        } => (users, tags, capabilities),
    };
    let whois = match who {
        PeerIdentity::Funnel { .. } => {
            return Decision::Hide("tailnet route asked through Funnel".into());
        }
        PeerIdentity::Internet { .. } => {
            return Decision::Hide("tailnet route asked on the public listener".into());
        }
        PeerIdentity::Loopback { .. } if route.loopback => {
            return Decision::Allow("loopback allowed by the route".into());
        }
        PeerIdentity::Loopback { .. } => {
            return Decision::Hide("tailnet route asked through loopback".into());
        }
        PeerIdentity::Tailnet { whois, .. } => whois,
    };
    if users.is_empty() && tags.is_empty() && caps.is_empty() {
        return Decision::Allow("any tailnet peer".into());
    }
    // A tagged node acts for its tags only, never for the user who made it.
    if !whois.is_tagged()
        && let Some(u) = users
            .iter()
            .find(|u| u.eq_ignore_ascii_case(&whois.user.login_name))
    {
        return Decision::Allow(format!("user {u}"));
    }
    if let Some(t) = tags.iter().find(|t| whois.node.tags.contains(t)) {
        return Decision::Allow(format!("tag {t}"));
    }
    if let Some(c) = caps.iter().find(|c| whois.caps.contains_key(*c)) {
        return Decision::Allow(format!("capability {c}"));
    }
    let need = route.access.requirement().unwrap_or_default();
    Decision::Deny(format!("requires {need}; you are {who}"))
}

#[cfg(test)]
mod tests;
