use std::time::Duration;

/// Everything that can go wrong talking to the tailnet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// tsnet (Go) reported an error; `message` is its text.
    #[error("tailnet {op}: {message}")]
    Go {
        /// The operation that failed (`up`, `dial`, `whois`, …).
        op: &'static str,
        /// The Go error text.
        message: String,
    },
    /// A node setting was rejected.
    #[error("tailnet node setting `{setting}`: {message}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// An argument could not be passed to tsnet at all.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What the argument is.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The operation did not finish in time (measured on the Rust side).
    #[error("tailnet {op}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout that passed.
        after: Duration,
    },
    /// The node was closed.
    #[error("tailnet node is closed")]
    Closed,
    /// The listener was closed; no more connections will come.
    #[error("tailnet listener is closed")]
    ListenerClosed,
    /// The shim answered something we could not understand (a bug).
    #[error("tailnet shim protocol error: {0}")]
    Protocol(String),
    /// An I/O error on a socket shared with the shim.
    #[error("tailnet I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn in_setting(self, setting: &'static str) -> Self {
        match self {
            Error::Go { message, .. } => Error::Setting { setting, message },
            other => other,
        }
    }

    /// True when the error means the node or listener is gone for good.
    pub fn is_closed(&self) -> bool {
        match self {
            Error::Closed | Error::ListenerClosed => true,
            Error::Go { message, .. } => message.contains("unknown or closed node handle"),
            _ => false,
        }
    }
}

/// Result alias for the tailnet module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
