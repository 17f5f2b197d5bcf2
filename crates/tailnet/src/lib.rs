//! The tailnet: tailscale's tsnet, embedded through our Go shim
//! (`vendor/tsshim`), as async Rust.
//!
//! - [`Node`] joins the tailnet (`up`), listens, dials, answers WhoIs, fetches
//!   its TLS certificate and reports its status.
//! - [`Listener::accept`] yields a [`TailnetStream`] together with the peer's
//!   exact address, delivered in the same message as the connection itself
//!   (security invariant 2: never looked up later by fd number).
//! - [`WhoIs`] is the typed answer to "who is this peer".
//!
//! What this module must not do: trust anything a peer says about itself,
//! block an async worker thread on a Go call, or hold an OS thread per
//! connection. All `unsafe` code of the crate lives in `ffi`.

mod channel;
mod error;
mod ffi;
mod listener;
pub mod names;
mod node;
mod status;
mod stream;
mod whois;

pub use error::{Error, Result};
pub use listener::Listener;
pub use node::{CertPair, LogSink, Node, NodeConfig, global};
pub use status::{Peer, SelfNode, Status};
pub use stream::{DataPath, Origin, TailnetStream};
pub use whois::{
    CapMap, PeerNode, Principal, StableNodeId, TAGGED_DEVICES, UserId, UserProfile, WhoIs,
};
