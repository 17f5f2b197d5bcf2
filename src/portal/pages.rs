//! The portal's HTML. Every link and asset is under the portal prefix
//! (nothing at `/login` or `/assets` at the root). maud escapes every
//! value, so claims and names cannot inject markup.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The stylesheet served at `{prefix}/assets/portal.css`.
pub(crate) const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:42em;margin:3em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}a.provider,button{display:inline-block;padding:.6em 1.2em;margin:.3em 0;border:1px solid #446;\
border-radius:6px;background:#f4f4fb;color:#223;text-decoration:none;font-size:1em;cursor:pointer}\
#qr svg{width:180px;height:180px}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:600}.muted{color:#666;font-size:.9em}ul.services li{margin:.3em 0}";

fn layout(prefix: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href={ (prefix) "/assets/portal.css" };
            }
            body {
                (body)
                hr;
                p.muted { "tailpass · " a href={ (prefix) "/" } { "portal" } " · " a href={ (prefix) "/whoami" } { "who am I" } }
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
        dl #whoami {
            dt { "Tailnet" } dd { (id.tailnet) }
            @if let Some(u) = &id.tailnet_user { dt { "Tailnet user" } dd.tailnet-user { (u) } }
            @if let Some(n) = &id.node { dt { "Node" } dd { (n) } }
            @if !id.tags.is_empty() { dt { "Tags" } dd { (id.tags.join(", ")) } }
            @match &id.session {
                Some(s) => {
                    dt { "Signed in with" } dd { (s.provider) }
                    dt { "Subject" } dd { (s.sub) }
                    @if let Some(e) = &s.email { dt { "Email" } dd.email { (e) } }
                    @if let Some(n) = &s.name { dt { "Name" } dd { (n) } }
                    @if !s.groups.is_empty() { dt { "Groups" } dd { (s.groups.join(", ")) } }
                    dt { "Signed in at" } dd { (s.auth_time) }
                    dt { "Session ends" } dd { (s.expires) }
                }
                None => { dt { "Signed in" } dd { "no" } }
            }
            dt { "Roles" } dd.roles { @if id.roles.is_empty() { "none" } @else { (id.roles.join(", ")) } }
        }
    }
}

fn logout_form(prefix: &str) -> Markup {
    html! {
        form #logout-form method="post" action={ (prefix) "/logout" } {
            button #logout type="submit" { "Sign out" }
        }
    }
}

pub(crate) fn dashboard(
    prefix: &str,
    title: &str,
    id: &Identity,
    services: &[(String, String)],
    login_href: &str,
) -> Markup {
    layout(
        prefix,
        title,
        html! {
            h1 { (title) }
            @if id.session.is_some() {
                h2 { "Your services" }
                @if services.is_empty() {
                    p { "No service is open to you." }
                } @else {
                    ul.services {
                        @for (name, href) in services { li { a.service href=(href) { (name) } } }
                    }
                }
                (identity(id))
                (logout_form(prefix))
            } @else {
                p { "You are not signed in." }
                p { a.provider href=(login_href) { "Sign in" } }
                (identity(id))
            }
        },
    )
}

/// `/whoami` for browsers.
pub(crate) fn whoami(prefix: &str, title: &str, id: &Identity) -> Markup {
    layout(
        prefix,
        &format!("Who am I · {title}"),
        html! { h1 { "Who am I" } (identity(id)) },
    )
}

/// The sign-out confirmation (a GET never signs out).
pub(crate) fn logout(prefix: &str, title: &str, signed_in: bool) -> Markup {
    layout(
        prefix,
        &format!("Sign out · {title}"),
        html! {
            h1 { "Sign out" }
            @if signed_in { (logout_form(prefix)) } @else { p { "You are not signed in." } }
        },
    )
}

/// The answer to a sign-out: tailpass's session has ended, said first and
/// plainly; the provider's own session is a separate, offered step.
pub(crate) fn signed_out(
    prefix: &str,
    title: &str,
    was_signed_in: bool,
    provider_logout: Option<(&str, &str)>,
) -> Markup {
    layout(
        prefix,
        &format!("Signed out · {title}"),
        html! {
            h1 #signed-out { "You are signed out of " (title) }
            @if was_signed_in {
                p { "Your session has ended, and every page and connection that used it has been closed." }
            } @else {
                p { "There was no session to end." }
            }
            @if let Some((label, url)) = provider_logout {
                p { "You may still be signed in at " (label) ", which would let the next sign-in here pass without asking. The next sign-in from this browser asks " (label) " to check it is you again." }
                p { a #provider-logout .provider href=(url) { "Sign out of " (label) " too" } }
            }
            p { a href={ (prefix) "/login" } { "Sign in again" } }
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
            p { a href={ (prefix) "/login" } { "Sign in again" } }
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
pub(crate) fn forbidden(prefix: &str, title: &str, reason: &str, relogin: Option<&str>) -> Markup {
    layout(
        prefix,
        &format!("Forbidden · {title}"),
        html! {
            h1 #forbidden { "403 Forbidden" }
            p.reason { (reason) }
            @if let Some(h) = relogin { p { a.provider href=(h) { "Sign in as someone else" } } }
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
