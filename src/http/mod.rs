//! HTTP plumbing shared by the gateway: path normalization, header hygiene
//! and the one place that turns errors into responses.

pub mod headers;
pub mod path;
pub(crate) mod response;
