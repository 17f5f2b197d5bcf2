//! Where a browser may be sent after signing in (security invariant 5):
//! a path on the same origin, or an https URL on a configured host.
//! Anything else lands on the portal.

/// Returns the target if it is safe to redirect to, else `None`.
///
/// `allowed_hosts` are lowercase host names (the nodes' names, route hosts
/// and `portal.redirect_hosts`); `https_port` is the port our HTTPS
/// listeners use (443 means no explicit port).
pub(crate) fn safe_target(
    target: &str,
    allowed_hosts: &[String],
    https_port: u16,
) -> Option<String> {
    if target.is_empty()
        || target.len() > 4096
        || target
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
    {
        return None;
    }
    if let Some(rest) = target.strip_prefix('/') {
        // "//host" and "/\host" are network paths to another origin.
        if rest.starts_with('/') {
            return None;
        }
        return target
            .parse::<http::uri::PathAndQuery>()
            .ok()
            .map(|_| target.to_string());
    }
    let uri: http::Uri = target.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let auth = uri.authority()?;
    if auth.as_str().contains('@') {
        return None;
    }
    let host = auth.host().trim_end_matches('.').to_ascii_lowercase();
    if !allowed_hosts.contains(&host) {
        return None;
    }
    match auth.port_u16() {
        None if https_port == 443 => {}
        Some(p) if p == https_port => {}
        _ => return None,
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{}{pq}", auth.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_paths_and_configured_hosts() {
        let hosts = vec![
            "gw.tail-test.ts.net".to_string(),
            "blog.example".to_string(),
        ];
        let ok = |t: &str| safe_target(t, &hosts, 443);
        assert_eq!(ok("/ttyd/?a=1").as_deref(), Some("/ttyd/?a=1"));
        assert_eq!(ok("/").as_deref(), Some("/"));
        assert_eq!(
            ok("https://gw.tail-test.ts.net/x?y").as_deref(),
            Some("https://gw.tail-test.ts.net/x?y")
        );
        assert!(ok("https://GW.tail-test.ts.net./x").is_some());
        for bad in [
            "",
            "//evil.example/x",
            "/\\evil.example",
            "/\\/evil.example",
            "https://evil.example/",
            "http://gw.tail-test.ts.net/",
            "https://gw.tail-test.ts.net:8443/",
            "https://user@gw.tail-test.ts.net/",
            "https://gw.tail-test.ts.net@evil.example/",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.example",
            "/x\r\nSet-Cookie: a=b",
            "/ x",
            "https://gw.tail-test.ts.net.evil.example/",
            "\\\\evil.example",
        ] {
            assert_eq!(ok(bad), None, "{bad:?} must be refused");
        }
        assert!(safe_target("https://gw.tail-test.ts.net:8443/", &hosts, 8443).is_some());
    }
}
