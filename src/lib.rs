//! tailpass: passkey single sign-on in front of private web services on a
//! Tailscale network, in one binary.
//!
//! Map of the crate. Every module, in the order a request meets it (the
//! whole path, with before/after, is in `docs/architecture.md`):
//!
//! 1. `listen`: the door: accept loops that never die, admission (caps per
//!    listener and per source, the file-descriptor reserve), back-off,
//!    per-connection timeouts, listener health.
//! 2. [`server`]: wiring (start, reload, shutdown) and the one accept loop
//!    every listener runs (`server::accept`): a handshake fixes who is
//!    calling — WhoIs on the accepting node via [`tailnet`], or the kind of
//!    listener — and terminates TLS ([`tls`]; `public` for custom domains
//!    with ACME); then HTTP is served under the watchdog (`server::conn`).
//! 3. [`identity`]: who is calling, fixed per connection (WhoIs, Funnel,
//!    public, loopback); never taken from what the client sends.
//! 4. `gateway`: the request pipeline, one function generic over the body:
//!    normalize ([`http`]`::path`) → route → authenticate (one question to
//!    the [`session`] service) → decide ([`policy`]) → forward (`proxy`,
//!    with [`http`]`::headers` hygiene, over TCP, a Unix socket or the
//!    tailnet (dialed through the node, optionally WhoIs-pinned); or
//!    `files` for a route with a static root; `assertion` signs the
//!    identity for routes that want proof); its `Outcome` alone picks
//!    each answer's status, page, access-log word and metric labels.
//! 5. [`session`]: the session service — signing keys, the persisted
//!    store, refresh at the provider, the watchers that close websockets
//!    when a session ends — asked by the pipeline (`authenticate`) and by
//!    the portal (open, close).
//! 6. [`portal`]: the login portal's pages on an axum `Router` (login,
//!    sign-in flow, dashboard, whoami, logout), reached when the route step
//!    picks it; `oidc`: the OpenID Connect relying party behind it and the
//!    session refresh (its HTTP goes out through a node).
//! 7. `admin` and [`metrics`]: `/healthz` and Prometheus metrics, on the
//!    admin listener (an axum `Router`).
//!
//! Beside the request path: [`config`] (the TOML file, validated with every
//! error naming its field, before any port is bound); [`cli`] (the
//! binary's commands).
//!
//! Not in this crate: the dev-only test kit (`crates/testkit`: the test
//! tailnet, the IdP harnesses, a config builder and the loopback entry
//! proxy the demo and browser tests use).
//!
//! Public are the modules the binary, the integration tests, the examples,
//! the benches and the test kit use, and in them only what those use; everything else is
//! `pub(crate)`, so the compiler reports dead code (`unreachable_pub` keeps
//! it that way).
//!
//! Design notes and threat model of the tailnet layer: `docs/tailnet.md`.

// Items are `pub(crate)` unless the binary, tests, examples or benches
// need them; `pub` inside a private module is written `pub(crate)`.
#![warn(unreachable_pub)]
// The only unsafe code (the FFI to the Go shim) lives in the
// `tailpass-tailnet` crate (crates/tailnet); this crate cannot have any.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod assertion;
pub mod cli;
pub mod config;
pub(crate) mod files;
pub(crate) mod gateway;
pub mod http;
pub mod identity;
pub(crate) mod listen;
pub mod metrics;
pub(crate) mod oidc;
pub mod policy;
pub mod portal;
pub(crate) mod proxy;
pub(crate) mod public;
pub mod server;
pub mod session;
pub use tailpass_tailnet as tailnet;
pub mod tls;
