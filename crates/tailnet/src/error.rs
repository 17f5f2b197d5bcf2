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
    /// The process ran short of a resource (file descriptors, kernel
    /// memory, socket buffers) while a connection was being handed from the
    /// Go shim to Rust: that one connection is lost, the listener or node is
    /// not. Typical cause: `EMFILE`, the descriptor table is full, so the
    /// kernel dropped the connection's descriptor from the hand-off message.
    /// Retry after a pause ([`Error::is_retryable`]).
    #[error("tailnet connection lost for lack of resources: {0}")]
    Resource(String),
    /// The shim accepted a connection from `peer` but could not hand it
    /// over (for example `socketpair: too many open files`); it closed that
    /// connection and the listener goes on. Retry after a pause.
    #[error("tailnet hand-off of a connection from {peer} failed: {reason}")]
    HandOff {
        /// The peer whose connection was lost, as the shim reported it.
        peer: String,
        /// The shim's reason.
        reason: String,
    },
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

    /// True when trying again later may succeed: the error concerned one
    /// connection or a passing shortage ([`Error::Resource`],
    /// [`Error::HandOff`], a [`Error::Timeout`], an I/O error such as
    /// `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` or `EINTR`).
    ///
    /// Accept loops: after an error from [`Listener::accept`](super::Listener::accept)
    /// for which [`Error::is_closed`] is false, the listener is still usable
    /// and nothing of it was consumed but one connection. Log the error,
    /// back off (longer while errors repeat) and accept again; only
    /// [`Error::is_closed`] means the listener is finished.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Resource(_) | Error::HandOff { .. } | Error::Timeout { .. } => true,
            Error::Io(e) => is_transient_io(e),
            Error::Go { message, .. } => is_resource_text(message),
            _ => false,
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

/// I/O errors that say "not now" rather than "never".
pub(crate) fn is_transient_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), Interrupted | WouldBlock | TimedOut | OutOfMemory) {
        return true;
    }
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(
            nix::errno::Errno::EMFILE
                | nix::errno::Errno::ENFILE
                | nix::errno::Errno::ENOBUFS
                | nix::errno::Errno::ENOMEM
                | nix::errno::Errno::ETOOMANYREFS
        )
    )
}

/// Whether a Go error text names a resource shortage.
fn is_resource_text(message: &str) -> bool {
    [
        "too many open files",
        "cannot allocate memory",
        "no buffer space",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Result alias for the tailnet module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
