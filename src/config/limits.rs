//! The `[limits]` table: timeouts and connection caps that keep the door
//! standing (security invariant 10). Every key is optional; the defaults
//! suit a home server and are documented in the README.

use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_idle_timeout: Option<String>,
    http2_keepalive_interval: Option<String>,
    http2_keepalive_timeout: Option<String>,
    http2_max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    fd_reserve: Option<usize>,
}

/// Validated limits, shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// From accept to the end of the TLS handshake, WhoIs included: a
    /// connection that never sends a ClientHello is closed after this.
    pub(crate) handshake_timeout: Duration,
    /// From the first byte of a request to the end of its headers
    /// (slowloris).
    pub(crate) header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight
    /// (HTTP/1 keep-alive and idle HTTP/2 connections).
    pub(crate) idle_timeout: Duration,
    /// How long an upload may pause between two chunks of its body. There
    /// is no total: an upload may last as long as it keeps moving.
    pub(crate) body_idle_timeout: Duration,
    /// HTTP/2 PING interval on otherwise silent connections.
    pub(crate) http2_keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is
    /// closed.
    pub(crate) http2_keepalive_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub(crate) http2_max_concurrent_streams: u32,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), bytes.
    pub(crate) max_header_bytes: usize,
    /// Open connections per listener.
    pub(crate) max_connections: usize,
    /// Open connections per source: a tailnet address, or a public IP
    /// (IPv6 by /64) on Funnel and the public listener.
    pub(crate) max_connections_per_source: usize,
    /// File descriptors kept free for connections already open (their
    /// upstream sockets) and the admin listener: new client connections
    /// are refused when fewer are left. 0 turns the check off.
    pub(crate) fd_reserve: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(120),
            body_idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            http2_max_concurrent_streams: 128,
            max_header_bytes: 64 * 1024,
            max_connections: 16_384,
            max_connections_per_source: 1_024,
            fd_reserve: 256,
        }
    }
}

pub(super) fn validate(raw: Option<RawLimits>, p: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let Some(raw) = raw else { return d };
    let dur = |k: &str, v: &Option<String>, def: Duration, p: &mut Vec<String>| {
        super::parse_duration(&format!("limits.{k}"), v, def, p)
    };
    let l = Limits {
        handshake_timeout: dur(
            "handshake_timeout",
            &raw.handshake_timeout,
            d.handshake_timeout,
            p,
        ),
        header_read_timeout: dur(
            "header_read_timeout",
            &raw.header_read_timeout,
            d.header_read_timeout,
            p,
        ),
        idle_timeout: dur("idle_timeout", &raw.idle_timeout, d.idle_timeout, p),
        body_idle_timeout: dur(
            "body_idle_timeout",
            &raw.body_idle_timeout,
            d.body_idle_timeout,
            p,
        ),
        http2_keepalive_interval: dur(
            "http2_keepalive_interval",
            &raw.http2_keepalive_interval,
            d.http2_keepalive_interval,
            p,
        ),
        http2_keepalive_timeout: dur(
            "http2_keepalive_timeout",
            &raw.http2_keepalive_timeout,
            d.http2_keepalive_timeout,
            p,
        ),
        http2_max_concurrent_streams: within(
            "http2_max_concurrent_streams",
            raw.http2_max_concurrent_streams,
            1..=10_000,
            d.http2_max_concurrent_streams,
            p,
        ),
        max_header_bytes: within(
            "max_header_bytes",
            raw.max_header_bytes,
            8 * 1024..=1024 * 1024,
            d.max_header_bytes,
            p,
        ),
        max_connections: count(
            "max_connections",
            raw.max_connections,
            d.max_connections,
            1,
            p,
        ),
        max_connections_per_source: count(
            "max_connections_per_source",
            raw.max_connections_per_source,
            d.max_connections_per_source,
            1,
            p,
        ),
        fd_reserve: count("fd_reserve", raw.fd_reserve, d.fd_reserve, 0, p),
    };
    if l.max_connections_per_source > l.max_connections {
        p.push(format!(
            "limits.max_connections_per_source: {} is more than limits.max_connections ({})",
            l.max_connections_per_source, l.max_connections
        ));
    }
    l
}

/// A count of at least `min` (`def` when absent or smaller).
fn count(k: &str, v: Option<usize>, def: usize, min: usize, p: &mut Vec<String>) -> usize {
    match v {
        None => def,
        Some(n) if n >= min => n,
        Some(n) => {
            p.push(format!("limits.{k}: {n} is too small (at least {min})"));
            def
        }
    }
}

/// A number that must lie in `range` (`def` when absent or out of range).
fn within<T>(
    k: &str,
    v: Option<T>,
    range: std::ops::RangeInclusive<T>,
    def: T,
    p: &mut Vec<String>,
) -> T
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    match v {
        None => def,
        Some(n) if range.contains(&n) => n,
        Some(n) => {
            p.push(format!(
                "limits.{k}: {n} is not between {} and {}",
                range.start(),
                range.end()
            ));
            def
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Limits, Vec<String>) {
        let raw: RawLimits = toml::from_str(text).unwrap();
        let mut p = Vec::new();
        (validate(Some(raw), &mut p), p)
    }

    #[test]
    fn defaults_when_absent_or_empty() {
        let mut p = Vec::new();
        assert_eq!(validate(None, &mut p), Limits::default());
        assert_eq!(parse("").0, Limits::default());
        assert!(p.is_empty());
    }

    #[test]
    fn every_key_parses() {
        let (l, p) = parse(
            r#"
            handshake_timeout = "3s"
            header_read_timeout = "4s"
            idle_timeout = "5m"
            body_idle_timeout = "90s"
            http2_keepalive_interval = "10s"
            http2_keepalive_timeout = "5s"
            http2_max_concurrent_streams = 50
            max_header_bytes = 16384
            max_connections = 100
            max_connections_per_source = 10
            fd_reserve = 0
            "#,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(l.handshake_timeout, Duration::from_secs(3));
        assert_eq!(l.header_read_timeout, Duration::from_secs(4));
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.body_idle_timeout, Duration::from_secs(90));
        assert_eq!(l.http2_keepalive_interval, Duration::from_secs(10));
        assert_eq!(l.http2_keepalive_timeout, Duration::from_secs(5));
        assert_eq!(l.http2_max_concurrent_streams, 50);
        assert_eq!(l.max_header_bytes, 16384);
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.max_connections_per_source, 10);
        assert_eq!(l.fd_reserve, 0);
    }

    #[test]
    fn bad_values_name_their_field() {
        let (_, p) = parse(
            r#"
            idle_timeout = "forever"
            header_read_timeout = "0s"
            http2_max_concurrent_streams = 0
            max_header_bytes = 10
            max_connections = 0
            "#,
        );
        let all = p.join("\n");
        for field in [
            "limits.idle_timeout",
            "limits.header_read_timeout",
            "limits.http2_max_concurrent_streams",
            "limits.max_header_bytes",
            "limits.max_connections",
        ] {
            assert!(all.contains(field), "{field} not named in {all}");
        }
        let (_, p) = parse("max_connections = 10\nmax_connections_per_source = 20");
        assert!(p[0].contains("limits.max_connections_per_source"), "{p:?}");
    }
}
