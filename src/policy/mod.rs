//! Route access decisions: a pure function of the route, the caller's
//! tailnet identity, its login session (if any) and the role rules. Denies
//! by default and always says why.
//!
//! Roles come from [`roles`]: rules over the login (provider, email,
//! domain, groups, any claim) and the tailnet identity (user, tags, app
//! capabilities). Rule conditions about the login fail without a session.

use std::collections::BTreeSet;

use crate::config::{Access, Combine, Route, Rule};
use crate::identity::{PeerIdentity, Principal};
use crate::session::Session;

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
    /// A (fresh) login could satisfy the route: browsers go to the login
    /// page with their URL kept, other clients get 401.
    Login {
        /// Why.
        reason: String,
        /// Step-up: the session is too old; sign in again with at most
        /// this authentication age (seconds).
        max_age: Option<u64>,
    },
    /// The route does not accept this method (405).
    Method(String),
}

/// The caller as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Tailnet (or Funnel, loopback) identity of the connection.
    pub who: &'a PeerIdentity,
    /// The verified, live, bound session, if any.
    pub session: Option<&'a Session>,
    /// Roles from [`roles`].
    pub roles: &'a BTreeSet<String>,
    /// Now (unix seconds).
    pub now: i64,
}

/// The roles `rules` give a caller.
pub fn roles(rules: &[Rule], who: &PeerIdentity, session: Option<&Session>) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| rule_matches(r, who.principal(), session))
        .flat_map(|r| r.roles.iter().cloned())
        .collect()
}

fn claim_has(v: &serde_json::Value, want: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Array(a) => a.iter().any(|x| x == want),
        other => other == want,
    }
}

fn rule_matches(r: &Rule, who: Option<&Principal>, s: Option<&Session>) -> bool {
    if r.needs_login() {
        let Some(s) = s else { return false };
        if !r.providers.is_empty() && !r.providers.contains(&s.provider) {
            return false;
        }
        // Email conditions need a verified email when the provider says.
        let email = s.email.as_deref().filter(|_| {
            s.claims
                .get("email_verified")
                .is_none_or(|v| v.as_bool() != Some(false))
        });
        if !r.emails.is_empty() && !email.is_some_and(|e| r.emails.iter().any(|x| x == e)) {
            return false;
        }
        if !r.domains.is_empty()
            && !email
                .and_then(|e| e.rsplit_once('@'))
                .is_some_and(|(_, d)| r.domains.iter().any(|x| x == d))
        {
            return false;
        }
        if !r.groups.is_empty() {
            let g = s.groups();
            if !r.groups.iter().any(|x| g.contains(&x.as_str())) {
                return false;
            }
        }
        for (name, wants) in &r.claims {
            let Some(v) = s.claims.get(name) else {
                return false;
            };
            if !wants.iter().any(|w| claim_has(v, w)) {
                return false;
            }
        }
    }
    let tailnet_cond = !r.tailnet_users.is_empty() || !r.tags.is_empty() || r.capability.is_some();
    if tailnet_cond {
        let Some(who) = who else { return false };
        let w = who.whois();
        // A tagged node is never a tailnet user, whoever created it.
        if !r.tailnet_users.is_empty()
            && !who.user().is_some_and(|user| {
                r.tailnet_users
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(&user.login_name))
            })
        {
            return false;
        }
        if !r.tags.is_empty() && !r.tags.iter().any(|t| w.node.tags.contains(t)) {
            return false;
        }
        if let Some(cap) = &r.capability {
            if !w.caps.contains_key(cap) {
                return false;
            }
            if let Some(want) = &r.capability_value {
                let ok = w.cap_values(cap).iter().any(|v| {
                    want.iter()
                        .all(|(k, wv)| v.get(k).is_some_and(|x| claim_has(x, wv)))
                });
                if !ok {
                    return false;
                }
            }
        }
    }
    true
}

/// The tailnet part of a route: `None` when the route has none (any peer),
/// else whether the peer matches and what matched.
fn tailnet_match(access: &Access, who: &Principal) -> Option<Result<String, ()>> {
    let Access::Tailnet {
        users,
        tags,
        capabilities,
    } = access
    else {
        return None;
    };
    if users.is_empty() && tags.is_empty() && capabilities.is_empty() {
        return None;
    }
    // A tagged node acts for its tags only, never for the user who made it.
    if let Principal::User(w) = who
        && let Some(u) = users
            .iter()
            .find(|u| u.eq_ignore_ascii_case(&w.user.login_name))
    {
        return Some(Ok(format!("user {u}")));
    }
    let w = who.whois();
    if let Some(t) = tags.iter().find(|t| w.node.tags.contains(t)) {
        return Some(Ok(format!("tag {t}")));
    }
    if let Some(c) = capabilities.iter().find(|c| w.caps.contains_key(*c)) {
        return Some(Ok(format!("capability {c}")));
    }
    Some(Err(()))
}

enum LoginCheck {
    Pass(String),
    NoSession,
    Stale(u64),
    MissingRole(String),
}

fn login_check(route: &Route, c: &Caller<'_>) -> Option<LoginCheck> {
    let req = route.login.as_ref()?;
    let Some(s) = c.session else {
        return Some(LoginCheck::NoSession);
    };
    if c.roles.is_empty() {
        return Some(LoginCheck::MissingRole(format!(
            "your login {} maps to no role",
            s.email.as_deref().unwrap_or(&s.sub)
        )));
    }
    if !req.roles.is_empty() && !req.roles.iter().any(|r| c.roles.contains(r)) {
        return Some(LoginCheck::MissingRole(format!(
            "requires role {}; you have {}",
            req.roles.join(" or "),
            c.roles.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    // An unknown sign-in time (no `auth_time` from the provider) is never
    // fresh enough.
    if let Some(max) = req.max_auth_age
        && s.auth_time.is_none_or(|t| c.now - t > max.as_secs() as i64)
    {
        return Some(LoginCheck::Stale(max.as_secs()));
    }
    let role = req
        .roles
        .iter()
        .find(|r| c.roles.contains(*r))
        .map(|r| format!("role {r}"))
        .unwrap_or_else(|| "signed in".into());
    Some(LoginCheck::Pass(role))
}

/// Decides whether `c` may use `route` with `method`.
pub fn evaluate(route: &Route, method: &http::Method, c: &Caller<'_>) -> Decision {
    let who = c.who;
    // `access` and `require` were parsed into enums with the config; each
    // is matched exhaustively, so a new kind cannot be passed over.
    match route.access {
        Access::Public => return method_ok(route, method, "public route".into()),
        Access::Tailnet { .. } => {}
    }
    let principal = match who {
        PeerIdentity::Funnel { .. } => {
            return Decision::Hide("protected route asked through Funnel".into());
        }
        PeerIdentity::Internet { .. } => {
            return Decision::Hide("protected route asked on the public listener".into());
        }
        PeerIdentity::Loopback { .. } if route.loopback => {
            return method_ok(route, method, "loopback allowed by the route".into());
        }
        PeerIdentity::Loopback { .. } => {
            return Decision::Hide("protected route asked through loopback".into());
        }
        PeerIdentity::Tailnet { principal, .. } => principal,
    };
    let tailnet = tailnet_match(&route.access, principal);
    let login = login_check(route, c);
    let need_tailnet = || route.access.requirement().unwrap_or_default();
    let decision = match (route.require, tailnet, login) {
        (_, None, None) => Decision::Allow("any tailnet peer".into()),
        (_, Some(Ok(t)), None) => Decision::Allow(t),
        (_, Some(Err(())), None) => {
            Decision::Deny(format!("requires {}; you are {who}", need_tailnet()))
        }
        (Combine::Any, Some(Ok(t)), Some(_)) => Decision::Allow(t),
        (Combine::All, Some(Err(())), Some(_)) => {
            Decision::Deny(format!("requires {}; you are {who}", need_tailnet()))
        }
        (comb, t, Some(l)) => {
            let tail = match (&t, comb) {
                (Some(Ok(t)), _) => format!("{t}, "),
                _ => String::new(),
            };
            match l {
                LoginCheck::Pass(r) => Decision::Allow(format!("{tail}{r}")),
                LoginCheck::NoSession => Decision::Login {
                    reason: "sign-in required".into(),
                    max_age: None,
                },
                LoginCheck::Stale(max) => Decision::Login {
                    reason: format!("this route needs a sign-in within the last {max} s"),
                    max_age: Some(max),
                },
                LoginCheck::MissingRole(why) => {
                    let alt = match (&t, comb) {
                        (Some(Err(())), Combine::Any) => format!(" (or {})", need_tailnet()),
                        _ => String::new(),
                    };
                    Decision::Deny(format!("{why}{alt}; you are {who}"))
                }
            }
        }
    };
    match decision {
        Decision::Allow(why) => method_ok(route, method, why),
        d => d,
    }
}

fn method_ok(route: &Route, method: &http::Method, why: String) -> Decision {
    if route.methods.is_empty() || route.methods.contains(method) {
        Decision::Allow(why)
    } else {
        Decision::Method(format!(
            "{method} is not allowed here (allowed: {})",
            route
                .methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Roles some rule can grant.
pub(crate) fn grantable_roles(rules: &[Rule]) -> BTreeSet<&str> {
    rules
        .iter()
        .flat_map(|r| r.roles.iter().map(String::as_str))
        .collect()
}

/// Warnings about routes no caller can ever pass: a required role that no
/// rule grants, or a login route while no rule grants any role.
pub(crate) fn unsatisfiable(routes: &[Route], rules: &[Rule]) -> Vec<String> {
    let can = grantable_roles(rules);
    let mut out = Vec::new();
    for r in routes {
        let Some(l) = &r.login else { continue };
        let tailnet_alt = r.require == Combine::Any && r.access.requirement().is_some();
        if tailnet_alt {
            continue;
        }
        if can.is_empty() {
            out.push(format!(
                "{}: needs a login, but no [[rule]] grants any role, so every sign-in is refused",
                r.name()
            ));
        } else if !l.roles.is_empty() && !l.roles.iter().any(|x| can.contains(x.as_str())) {
            out.push(format!(
                "{}: requires role {}, which no [[rule]] grants; nobody can ever open it",
                r.name(),
                l.roles.join(" or ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
