//! Request path normalization (security invariant 4): routing and the
//! upstream see the same canonical path, so `/ttyd/../admin`, `%2e%2e`,
//! `//` or an encoded slash cannot reach a route its policy forbids.
//!
//! The canonical form: starts with `/`; percent-escapes of unreserved
//! characters decoded (`%2e` → `.`, `%41` → `A`); `.` and `..` segments
//! resolved (never above the root); empty segments (`//`) collapsed; every
//! byte outside the unreserved/sub-delim set escaped again, upper-case hex.
//! Encoded `/`, `\` and NUL, and raw `\`, are refused: no server behind us
//! can be trusted to treat them the same way.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// Contains `%2F`, `%5C`, `%00` or a raw backslash.
    #[error("path contains an encoded slash, a backslash or NUL")]
    AmbiguousSeparator,
    /// A `%` not followed by two hex digits.
    #[error("path has a malformed percent-escape")]
    BadEscape,
    /// Prefix in the config is not in canonical form.
    #[error("{0:?} is not canonical; write {1:?}")]
    NotCanonical(String, String),
}

/// Characters escaped when re-encoding a segment: everything but RFC 3986
/// unreserved and the sub-delims, ':' and '@' allowed in segments.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(0x7f);

/// Normalizes a request path (without query).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.contains('\\') {
        return Err(PathError::AmbiguousSeparator);
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::BadEscape);
            }
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                .map_err(|_| PathError::BadEscape)?;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::AmbiguousSeparator);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    // RFC 3986 remove_dot_segments: a final "." or ".." leaves a trailing slash.
    let last: Vec<u8> = percent_decode(raw.rsplit('/').next().unwrap_or("").as_bytes()).collect();
    let trailing = (raw.len() > 1 && raw.ends_with('/')) || last == b"." || last == b"..";
    let mut out: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let decoded: Vec<u8> = percent_decode(seg.as_bytes()).collect();
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => {
                let s = String::from_utf8_lossy(&decoded);
                out.push(utf8_percent_encode(&s, SEGMENT).to_string());
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || (trailing && !path.ends_with('/')) {
        path.push('/');
    }
    Ok(path)
}

/// Validates a route prefix from the config: it must already be canonical
/// (apart from one trailing slash, which is dropped).
pub fn normalize_prefix(raw: &str) -> Result<String, PathError> {
    let n = normalize(raw)?;
    let n = if n.len() > 1 {
        n.trim_end_matches('/').to_string()
    } else {
        n
    };
    let want = if raw.len() > 1 {
        raw.trim_end_matches('/')
    } else {
        raw
    };
    if n != want {
        return Err(PathError::NotCanonical(raw.into(), n));
    }
    Ok(n)
}

/// Whether canonical `path` is under canonical `prefix` (segment-wise:
/// `/files` matches `/files` and `/files/x`, not `/filesystem`).
pub fn under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The upstream path: `path` with `prefix` removed if `strip`, appended to
/// the upstream's own base path.
pub fn upstream_path(base: &str, prefix: &str, path: &str, strip: bool) -> String {
    let rest = if strip && prefix != "/" {
        let r = &path[prefix.len().min(path.len())..];
        if r.is_empty() { "/" } else { r }
    } else {
        path
    };
    let base = base.trim_end_matches('/');
    format!("{base}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (raw, want) in [
            ("/", "/"),
            ("/ttyd", "/ttyd"),
            ("/ttyd/", "/ttyd/"),
            ("/ttyd/../admin", "/admin"),
            ("/ttyd/%2e%2e/admin", "/admin"),
            ("/ttyd/%2E%2E/admin", "/admin"),
            ("/ttyd/.%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/files//x///y", "/files/x/y"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/%2e%2e", "/a/"),
            ("/a/b/../", "/a/"),
            ("/%41bc", "/Abc"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/x?y", "/x%3Fy"),
            ("/..", "/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
            // Idempotent.
            assert_eq!(normalize(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        for raw in [
            "/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b", "/a%00", "/a%", "/a%g1", "/a%2",
        ] {
            assert!(normalize(raw).is_err(), "{raw} accepted");
        }
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn prefixes_and_matching() {
        assert_eq!(normalize_prefix("/ttyd/").unwrap(), "/ttyd");
        assert_eq!(normalize_prefix("/").unwrap(), "/");
        assert!(normalize_prefix("/a/../b").is_err());
        assert!(normalize_prefix("/a//b").is_err());
        assert!(normalize_prefix("files").is_err());
        assert!(under("/files", "/files"));
        assert!(under("/files", "/files/a"));
        assert!(!under("/files", "/filesystem"));
        assert!(under("/", "/anything"));
        assert_eq!(upstream_path("", "/ttyd", "/ttyd/ws", true), "/ws");
        assert_eq!(upstream_path("/", "/ttyd", "/ttyd", true), "/");
        assert_eq!(upstream_path("/base/", "/f", "/f/x", true), "/base/x");
        assert_eq!(upstream_path("", "/f", "/f/x", false), "/f/x");
    }
}
