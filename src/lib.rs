//! tailpass: passkey single sign-on in front of private web services on a
//! Tailscale network, in one binary.
//!
//! Map of the crate (one concern per module, in request order):
//!
//! - [`tailnet`]: joins the tailnet through an embedded tsnet (Go c-archive
//!   over FFI), accepts and dials connections, identifies peers with WhoIs.
//! - [`config`]: the TOML file, validated with every error naming its field.
//! - [`tls`]: certificate sources (the node's ts.net cert, PEM files, a local
//!   CA) behind one hot-swappable rustls resolver.
//! - [`identity`]: who is calling, fixed per connection (WhoIs, Funnel, loopback).
//! - [`http`]: path normalization, header hygiene, error responses.
//! - [`policy`]: route access decisions with reasons.
//! - [`proxy`]: forwarding to upstreams (streaming, websockets, SSE).
//! - [`listen`]: the door: accept loops that never die, connection caps,
//!   the file-descriptor reserve, per-connection timeouts, listener health.
//! - [`server`]: listeners and the wiring of all of the above.
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
