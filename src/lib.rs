//! tailpass: passkey single sign-on in front of private web services on a
//! Tailscale network, in one binary.
//!
//! Map of the crate (one concern per module):
//!
//! - [`tailnet`]: joins the tailnet through an embedded tsnet (Go c-archive
//!   over FFI), accepts and dials connections, identifies peers with WhoIs.
//!
//! Design notes and threat model of the tailnet layer: `docs/tailnet.md`.

pub mod tailnet;
