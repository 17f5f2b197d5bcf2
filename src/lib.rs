//! tailpass: passkey single sign-on in front of private web services on a
//! Tailscale network, in one binary.
//!
//! Map of the crate, in the order a request meets it (the whole path, with
//! before/after, is in `docs/architecture.md`):
//!
//! - [`listen`]: the door: accept loops that never die, connection caps,
//!   the file-descriptor reserve, per-connection timeouts, listener health.
//! - [`server`]: wiring (start, reload, shutdown) and the one accept loop
//!   every listener runs: a handshake fixes who is calling (WhoIs on the
//!   accepting node via [`tailnet`], or the kind of listener) and
//!   terminates TLS ([`tls`]; [`public`] for custom domains), then HTTP is
//!   served under the watchdog.
//! - [`identity`]: who is calling, fixed per connection (WhoIs, Funnel,
//!   public, loopback).
//! - `gateway`: the request pipeline — normalize ([`http`]), route,
//!   authenticate ([`portal`], [`session`]), decide ([`policy`]), forward
//!   ([`proxy`]) — and the `Outcome` that alone picks each answer's status,
//!   page, access-log word and metric labels.
//! - [`portal`]: the login portal's pages and the session check; [`oidc`]:
//!   the OpenID Connect relying party behind it; [`session`]: signed
//!   cookies and the persisted session store.
//! - [`config`]: the TOML file, validated with every error naming its field.
//! - [`admin`], [`metrics`]: `/healthz` and Prometheus metrics.
//! - [`cli`]: the binary's commands.
//! - [`entry`]: a loopback HTTP proxy that carries a local browser into the
//!   tailnet through a node (demo and browser tests).
//!
//! Design notes and threat model of the tailnet layer: `docs/tailnet.md`.

pub mod admin;
pub mod cli;
pub mod config;
pub mod entry;
pub(crate) mod gateway;
pub mod http;
pub mod identity;
pub mod listen;
pub mod metrics;
pub mod oidc;
pub mod policy;
pub mod portal;
pub mod proxy;
pub mod public;
pub mod server;
pub mod session;
pub mod tailnet;
pub mod tls;
