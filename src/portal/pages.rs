//! The portal's HTML. Every link and asset is under the portal prefix
//! (nothing at `/login` or `/assets` at the root). maud escapes every
//! value, so claims and names cannot inject markup.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The stylesheet served at `{prefix}/assets/portal.css`, and inlined (by
/// its hash in the CSP) in the gateway's error pages so both look alike.
/// Light and dark palettes meet WCAG AA contrast (4.5:1 for text); every
/// link and button shows a keyboard focus ring.
pub(crate) const CSS: &str = crate::http::response::STYLE;

/// The favicon served at `{prefix}/favicon.svg`.
pub(crate) const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\">\
<rect width=\"32\" height=\"32\" rx=\"7\" fill=\"#2b50c8\"/>\
<path d=\"M16 6l8 3v6c0 5-3.4 9.3-8 11-4.6-1.7-8-6-8-11V9z\" fill=\"#fff\"/>\
<path d=\"M12.5 16l2.5 2.5 5-5\" stroke=\"#2b50c8\" stroke-width=\"2.4\" fill=\"none\" stroke-linecap=\"round\" stroke-linejoin=\"round\"/></svg>";

fn layout(prefix: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="icon" type="image/svg+xml" href={ (prefix) "/favicon.svg" };
                link rel="stylesheet" href={ (prefix) "/assets/portal.css" };
            }
            body {
                header.bar {
                    a.brand href={ (prefix) "/" } { "tailpass" }
                    nav { a href={ (prefix) "/" } { "Services" } a href={ (prefix) "/whoami" } { "Who am I" } }
                }
                main { (body) }
                footer.muted { "tailpass · " a href={ (prefix) "/" } { "portal" } " · " a href={ (prefix) "/whoami" } { "who am I" } }
            }
        }
    }
}

/// One provider button.
pub(crate) struct ProviderLink {
    /// Provider name.
    pub(crate) name: String,
    pub(crate) label: String,
    /// Where the button goes.
    pub(crate) href: String,
}

/// The login page.
pub(crate) fn login(
    prefix: &str,
    title: &str,
    providers: &[ProviderLink],
    qr_svg: Option<&str>,
    login_url: &str,
    caller: &str,
) -> Markup {
    layout(
        prefix,
        &format!("Sign in · {title}"),
        html! {
            h1 { "Sign in" }
            p { "You are " strong { (caller) } " on the tailnet. Sign in to continue." }
            @for p in providers {
                p { a.provider data-provider=(p.name) href=(p.href) { "Sign in with " (p.label) } }
            }
            @if let Some(svg) = qr_svg {
                h2 { "On your phone" }
                p.muted { "Scan to open this sign-in page on a device that is on the tailnet." }
                div #qr { (PreEscaped(svg)) }
                p.muted { code { (login_url) } }
            }
        },
    )
}

/// What the dashboard and whoami pages show about the caller.
pub(crate) struct Identity {
    /// Tailnet identity in words.
    pub(crate) tailnet: String,
    /// Tailnet user login (absent for tagged nodes or non-tailnet callers).
    pub(crate) tailnet_user: Option<String>,
    /// Node name.
    pub(crate) node: Option<String>,
    /// Node tags.
    pub(crate) tags: Vec<String>,
    /// Session facts, when signed in.
    pub(crate) session: Option<SessionView>,
    pub(crate) roles: Vec<String>,
}

/// The session part of [`Identity`].
pub(crate) struct SessionView {
    /// Provider label.
    pub(crate) provider: String,
    /// Subject.
    pub(crate) sub: String,
    pub(crate) email: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) groups: Vec<String>,
    /// Authenticated at (RFC 3339).
    pub(crate) auth_time: String,
    /// Expires at (RFC 3339).
    pub(crate) expires: String,
}

fn identity(id: &Identity) -> Markup {
    html! {
        div #whoami .ids {
            section.card {
                h3 { "On the tailnet" }
                dl {
                    dt { "Tailnet" } dd { (id.tailnet) }
                    @if let Some(u) = &id.tailnet_user { dt { "Tailnet user" } dd.tailnet-user { (u) } }
                    @if let Some(n) = &id.node { dt { "Node" } dd { (n) } }
                    @if !id.tags.is_empty() { dt { "Tags" } dd { (id.tags.join(", ")) } }
                    dt { "Roles" } dd.roles { @if id.roles.is_empty() { "none" } @else { (id.roles.join(", ")) } }
                }
            }
            section.card {
                h3 { "Signed in" }
                (session(id.session.as_ref()))
            }
        }
    }
}

fn session(s: Option<&SessionView>) -> Markup {
    html! {
        dl {
            @match s {
                Some(s) => {
                    dt { "Signed in with" } dd { (s.provider) }
                    dt { "Subject" } dd { (s.sub) }
                    @if let Some(e) = &s.email { dt { "Email" } dd.email { (e) } }
                    @if let Some(n) = &s.name { dt { "Name" } dd { (n) } }
                    @if !s.groups.is_empty() { dt { "Groups" } dd { (s.groups.join(", ")) } }
                    dt { "Signed in at" } dd.when { (readable_time(&s.auth_time)) }
                    dt { "Session ends" } dd.when { (readable_time(&s.expires)) }
                }
                None => { dt { "Signed in" } dd { "no" } }
            }
        }
    }
}

/// `2026-11-30T04:59:31Z` as `2026-11-30 04:59:31 UTC` (wraps between
/// date and time on a phone); anything else as it is.
fn readable_time(t: &str) -> String {
    match t.strip_suffix('Z').and_then(|t| t.split_once('T')) {
        Some((date, time)) => format!("{date} {time} UTC"),
        None => t.to_string(),
    }
}

fn logout_form(prefix: &str) -> Markup {
    html! {
        form #logout-form method="post" action={ (prefix) "/logout" } {
            button #logout type="submit" { "Sign out" }
        }
    }
}

/// One service on the dashboard.
pub(crate) struct Service {
    /// The route's title (its path when it has none).
    pub(crate) title: String,
    pub(crate) href: String,
    /// `Some(sign-in link)` when the route asks for a sign-in more recent
    /// than the caller's (`max_auth_age` has passed).
    pub(crate) sign_in_again: Option<String>,
}

fn service_card(s: &Service) -> Markup {
    html! {
        li.card {
            @match &s.sign_in_again {
                None => {
                    a.service href=(s.href) { (s.title) }
                    p.where { (s.href) }
                }
                Some(again) => {
                    span.service-title { (s.title) }
                    p { span.badge { "asks you to sign in again" } }
                    p { a.again href=(again) { "Sign in again to open " (s.title) } }
                }
            }
        }
    }
}

pub(crate) fn dashboard(
    prefix: &str,
    title: &str,
    id: &Identity,
    services: &[Service],
    login_href: &str,
) -> Markup {
    layout(
        prefix,
        title,
        html! {
            h1 { (title) }
            @if let Some(s) = &id.session {
                p.lead {
                    "Signed in as " strong { (s.login()) }
                    @if let Some(n) = &id.node { ", on " strong { (n) } } "."
                }
                h2 { "Your services" }
                @if services.is_empty() {
                    p { "No service is open to you." }
                } @else {
                    ul.cards { @for s in services { (service_card(s)) } }
                }
                h2 { "Who you are" }
                (identity(id))
                (logout_form(prefix))
            } @else {
                p.lead { "You are " strong { (id.tailnet) } " on the tailnet, and not signed in." }
                p { a.provider href=(login_href) { "Sign in" } }
                h2 { "Who you are" }
                (identity(id))
            }
        },
    )
}

impl SessionView {
    /// The login a person recognises: the email, else the subject.
    pub(crate) fn login(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.sub)
    }
}

/// `/whoami` for browsers.
pub(crate) fn whoami(prefix: &str, title: &str, id: &Identity) -> Markup {
    layout(
        prefix,
        &format!("Who am I · {title}"),
        html! { h1 { "Who am I" } (identity(id)) },
    )
}

/// The sign-out confirmation (a GET never signs out): who is signed in and
/// what signing out ends.
pub(crate) fn logout(prefix: &str, title: &str, signed_in: Option<&str>) -> Markup {
    layout(
        prefix,
        &format!("Sign out · {title}"),
        html! {
            h1 { "Sign out" }
            @if let Some(login) = signed_in {
                p.lead { "You are signed in as " strong #login { (login) } "." }
                p { "Signing out ends this session on this node: every page that used it asks you to sign in again, and its open connections (websockets) close." }
                (logout_form(prefix))
            } @else { p { "You are not signed in." } }
        },
    )
}

/// The answer to a sign-out: tailpass's session has ended, said first and
/// plainly; the provider's own session is a separate, offered step.
pub(crate) fn signed_out(
    prefix: &str,
    title: &str,
    signed_out: Option<&str>,
    provider_logout: Option<(&str, &str)>,
) -> Markup {
    layout(
        prefix,
        &format!("Signed out · {title}"),
        html! {
            h1 #signed-out { "You are signed out of " (title) }
            @if let Some(login) = signed_out {
                p.lead { strong #login { (login) } " is signed out on this node." }
                p { "Your session has ended, and every page and connection that used it has been closed." }
            } @else {
                p { "There was no session to end." }
            }
            @if let Some((label, url)) = provider_logout {
                p { "You may still be signed in at " (label) ", which would let the next sign-in here pass without asking. The next sign-in from this browser asks " (label) " to check it is you again." }
                p { a #provider-logout .provider href=(url) { "Sign out of " (label) " too" } }
            }
            p { a.provider.secondary href={ (prefix) "/login" } { "Sign in again" } }
        },
    )
}

/// Where the provider sends the browser after its end-session.
pub(crate) fn logged_out(prefix: &str, title: &str) -> Markup {
    layout(
        prefix,
        &format!("Signed out · {title}"),
        html! {
            h1 #logged-out { "You are signed out" }
            p { "Your session has ended here and at the identity provider." }
            p { a.provider.secondary href={ (prefix) "/login" } { "Sign in again" } }
        },
    )
}

/// A login that maps to no role: said plainly, not a silent guest session.
pub(crate) fn no_role(prefix: &str, title: &str, login: &str, caller: &str) -> Markup {
    layout(
        prefix,
        &format!("No access · {title}"),
        html! {
            h1 #no-role { "Signed in, but no access" }
            p { "You signed in as " strong { (login) } " (" (caller) "), but no rule of this gateway gives that login a role, so there is nothing you may open." }
            p { "Ask the administrator to add a " code { "[[rule]]" } " for you. No session was created." }
        },
    )
}

/// A 403 with the failed requirement, the caller, and a way to sign in as
/// someone else.
pub(crate) fn forbidden(
    prefix: &str,
    title: &str,
    reason: &str,
    relogin: Option<&str>,
    signed_in: Option<&str>,
) -> Markup {
    layout(
        prefix,
        &format!("Forbidden · {title}"),
        html! {
            h1 #forbidden { "403 Forbidden" }
            p.reason { (reason) }
            @if let Some(who) = signed_in { p #signed-in { "You are signed in as " strong { (who) } "." } }
            @if let Some(h) = relogin { p { a.provider href=(h) { "Sign in as someone else" } } }
            p { a href={ (prefix) "/" } { "Your services" } }
        },
    )
}

/// A problem during sign-in, with a way to start again.
pub(crate) fn problem(prefix: &str, title: &str, heading: &str, detail: &str) -> Markup {
    layout(
        prefix,
        &format!("{heading} · {title}"),
        html! {
            h1 #problem { (heading) }
            p { (detail) }
            p { a href={ (prefix) "/login" } { "Start again" } }
        },
    )
}

/// A step-up the provider answered without proof of a fresh sign-in: said
/// plainly, with what the provider needs, instead of a silent pass or a
/// redirect loop.
pub(crate) fn no_fresh_sign_in(prefix: &str, title: &str, provider: &str, why: &str) -> Markup {
    layout(
        prefix,
        &format!("Fresh sign-in needed · {title}"),
        html! {
            h1 { "This page needs a fresh sign-in" }
            p #no-fresh-sign-in { (provider) " cannot prove a fresh sign-in: " (why) "." }
            p { "Your session is unchanged; pages that do not need a recent sign-in still work." }
            p {
                "For the administrator: the provider must put " code { "auth_time" }
                " in its ID tokens (OpenID Connect requires it when " code { "max_age" }
                " is asked for). Pocket ID up to 2.9 does not; from 2.6 on it asks for the passkey again on "
                code { "prompt=login" } ", which tailpass accepts with " code { "trust_prompt_login = true" }
                " in the provider's table. Pocket ID before 2.6 cannot do step-up at all."
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forbidden_page_names_who_is_signed_in() {
        let page = forbidden(
            "/auth",
            "tailpass",
            "route /vault requires role owner",
            Some("/auth/login?rd=%2Fvault&fresh=1"),
            Some("alice@example.com"),
        )
        .into_string();
        assert!(
            page.contains("You are signed in as <strong>alice@example.com</strong>"),
            "{page}"
        );
        assert!(page.contains("Sign in as someone else"));
        let anonymous = forbidden("/auth", "tailpass", "no", None, None).into_string();
        assert!(!anonymous.contains("signed in as"));
    }

    fn alice() -> Identity {
        Identity {
            tailnet: "alice@example.com on laptop.ts.net".into(),
            tailnet_user: Some("alice@example.com".into()),
            node: Some("laptop".into()),
            tags: Vec::new(),
            session: Some(SessionView {
                provider: "Pocket ID".into(),
                sub: "u-1".into(),
                email: Some("alice@corp.example".into()),
                name: Some("Alice".into()),
                groups: Vec::new(),
                auth_time: "2026-01-01T00:00:00Z".into(),
                expires: "2026-01-02T00:00:00Z".into(),
            }),
            roles: vec!["admin".into()],
        }
    }

    #[test]
    fn dashboard_shows_stale_routes_and_both_identities() {
        let services = [
            Service {
                title: "Echo".into(),
                href: "https://gw.ts.net/app".into(),
                sign_in_again: None,
            },
            Service {
                title: "Terminal".into(),
                href: "https://gw.ts.net/term".into(),
                sign_in_again: Some("/auth/oauth2/p/authorize?rd=%2Fterm&max_age=900".into()),
            },
        ];
        let page = dashboard("/auth", "Home", &alice(), &services, "/auth/login").into_string();
        assert!(page.contains(r#"<a class="service" href="https://gw.ts.net/app">Echo</a>"#));
        assert!(page.contains("asks you to sign in again"), "{page}");
        assert!(page.contains(r#"href="/auth/oauth2/p/authorize?rd=%2Fterm&amp;max_age=900""#));
        assert!(!page.contains(r#"class="service" href="https://gw.ts.net/term""#));
        assert!(page.contains("alice@corp.example") && page.contains("laptop"));
        assert!(page.contains("2026-01-01 00:00:00 UTC"), "{page}");
        assert!(page.contains(r#"<html lang="en">"#));
        assert!(page.contains(r#"rel="icon""#) && page.contains("/auth/favicon.svg"));
    }

    #[test]
    fn sign_out_pages_name_who_and_what_ends() {
        let page = logout("/auth", "Home", Some("alice@corp.example")).into_string();
        assert!(page.contains("alice@corp.example"), "{page}");
        assert!(page.contains("websockets") && page.contains(r#"id="logout""#));
        let none = logout("/auth", "Home", None).into_string();
        assert!(none.contains("You are not signed in.") && !none.contains(r#"id="logout""#));
        let out = signed_out("/auth", "Home", Some("alice@corp.example"), None).into_string();
        assert!(out.contains(r#"id="signed-out""#) && out.contains("alice@corp.example"));
    }
}
