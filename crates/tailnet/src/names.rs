//! Which addresses and names are on the tailnet: the address ranges
//! Tailscale assigns and MagicDNS-style domain suffixes. Shared by
//! everything that must decide whether to dial through a node (the OIDC
//! client, the entry proxy).

use std::net::IpAddr;

/// Whether `ip` is in Tailscale's ranges: 100.64.0.0/10 (IPv4, CGNAT) or
/// fd7a:115c:a1e0::/48 (IPv6).
pub fn is_tailnet_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => v6.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0],
    }
}

/// `host` (an authority host: IPv6 may be in brackets) as a tailnet IP, if
/// it is an IP at all: `Some(true)` for a tailnet address, `Some(false)`
/// for any other address, `None` for a name.
pub fn host_ip_is_tailnet(host: &str) -> Option<bool> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(is_tailnet_ip)
}

/// Whether the name `host` lies strictly below `domain` (`gw.tail1.ts.net`
/// below `tail1.ts.net` or `ts.net`; never `domain` itself or
/// `eviltail1.ts.net`). Case and trailing dots do not matter.
pub fn is_below(host: &str, domain: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    !domain.is_empty()
        && name.len() > domain.len() + 1
        && name.ends_with(&domain)
        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_domains() {
        for ip in ["100.64.0.1", "100.127.255.254", "fd7a:115c:a1e0::1"] {
            assert!(is_tailnet_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "100.128.0.1",
            "100.63.255.255",
            "10.0.0.1",
            "127.0.0.1",
            "::1",
        ] {
            assert!(!is_tailnet_ip(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(host_ip_is_tailnet("[fd7a:115c:a1e0::1]"), Some(true));
        assert_eq!(host_ip_is_tailnet("10.0.0.1"), Some(false));
        assert_eq!(host_ip_is_tailnet("gw"), None);
        assert!(is_below("GW.tail1.ts.net.", "tail1.ts.net"));
        assert!(is_below("gw.tail1.ts.net", ".ts.net"));
        assert!(!is_below("tail1.ts.net", "tail1.ts.net"));
        assert!(!is_below("eviltail1.ts.net", "tail1.ts.net"));
        assert!(!is_below("gw.tail1.ts.net", ""));
    }
}
