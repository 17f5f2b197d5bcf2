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
//!
//! Upstreams read paths more loosely than tailpass does: Tomcat and Spring
//! drop `;` parameters (`/admin;x`, `..;`), some decode twice (`%252e`),
//! some fold Unicode compatibility forms (full-width `／`, `ａ`) or letter
//! case. So that whatever the route matched is what the upstream acts on,
//! two more rules apply after matching (see `gateway::route`):
//!
//! 1. **Strict form on non-public routes** ([`strict`]): a canonical path
//!    with a `;`, an encoded `%` (`%25`), a non-ASCII character or an encoded
//!    control character is refused with 400. Such a path has no single
//!    reading, so it is not forwarded at all.
//! 2. **No other route under a loose reading, on every route**
//!    ([`loose`]): the path read the loosest way an upstream might — decoded
//!    once more, full-width forms folded to ASCII, `;` parameters dropped,
//!    letter case folded, dot segments resolved again — must match the same
//!    route (compared case-insensitively) as the path itself; otherwise 400.
//!    `/ADMIN`, `/%252e%252e/admin` or `/ａdmin` landing on the public `/`
//!    route are refused instead of being forwarded to an upstream that may
//!    read them as `/admin`.

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
    /// A `;` (path parameter) on a route that is not public.
    #[error("path parameters (';') are not accepted on this route")]
    Parameter,
    /// An encoded `%` (`%25`) on a route that is not public.
    #[error("an encoded '%' is not accepted on this route")]
    EncodedPercent,
    /// A non-ASCII or control character on a route that is not public.
    #[error("non-ASCII and control characters are not accepted on this route")]
    NonAscii,
    /// Read loosely (decoded again, folded, parameters dropped), the path
    /// names another route than the one it matched.
    #[error("the path reads as another route when decoded, folded or stripped of ';' parameters")]
    Ambiguous,
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

/// A request path in canonical form (module doc). Only [`normalize`]
/// makes one, so a function that takes it — routing, the policy's path
/// rules, `proxy::forward` — knows the path was normalized, and the
/// upstream gets the very path that was routed and authorized.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    /// The canonical path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for NormalizedPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for NormalizedPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NormalizedPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Normalizes a request path (without query).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
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
    Ok(NormalizedPath(path))
}

/// Validates a route prefix from the config: it must already be canonical
/// (apart from one trailing slash, which is dropped).
pub(crate) fn normalize_prefix(raw: &str) -> Result<String, PathError> {
    let n = normalize(raw)?.0;
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

/// Rule 1 (module doc): refuses a canonical path that has more than one
/// reading, for routes that are not public.
pub fn strict(canonical: &str) -> Result<(), PathError> {
    if canonical.contains(';') {
        return Err(PathError::Parameter);
    }
    let b = canonical.as_bytes();
    for (i, _) in canonical.match_indices('%') {
        let v = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathError::BadEscape)?;
        match v {
            b'%' => return Err(PathError::EncodedPercent),
            0x80.. | 0..0x20 | 0x7f => return Err(PathError::NonAscii),
            _ => {}
        }
    }
    if !canonical.is_ascii() {
        return Err(PathError::NonAscii);
    }
    Ok(())
}

/// Rule 2 (module doc): the loosest reading of a canonical path an upstream
/// might make — decoded again, full-width forms (U+FF01–U+FF5E) folded to
/// ASCII, `;` parameters dropped from every segment, ASCII letters in lower
/// case, dot segments resolved again — repeated until nothing changes (at
/// most four rounds; a path that still changes is refused). The result is
/// canonical and its own loose reading. An error when the reading is
/// ambiguous (e.g. a doubly encoded slash).
pub fn loose(canonical: &str) -> Result<String, PathError> {
    let mut cur = normalize(canonical)?.0;
    for _ in 0..4 {
        let next = loose_once(&cur)?;
        if next == cur {
            return Ok(cur);
        }
        cur = next;
    }
    Err(PathError::Ambiguous)
}

fn loose_once(canonical: &str) -> Result<String, PathError> {
    let decoded = percent_decode(canonical.as_bytes()).decode_utf8_lossy();
    let folded: String = decoded
        .chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            c => c,
        })
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut out = String::with_capacity(folded.len() + 8);
    for (i, seg) in folded.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let seg = seg.split(';').next().unwrap_or("");
        // What was decoded is re-read as a path: a '%' that starts an
        // escape is decoded by `normalize` below, any other is literal.
        let b = seg.as_bytes();
        for (j, ch) in seg.char_indices() {
            let escape = b
                .get(j + 1..j + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if ch == '%' && !escape {
                out.push_str("%25");
            } else {
                out.push(ch);
            }
        }
    }
    let n = normalize(&out)?;
    // Decoded escapes may hold upper-case letters (`%2541` → `A`).
    Ok(lower_outside_escapes(&n))
}

/// ASCII lower case, escapes (`%C3`) kept in upper-case hex.
fn lower_outside_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hex = 0;
    for ch in s.chars() {
        if hex > 0 {
            out.push(ch);
            hex -= 1;
        } else {
            if ch == '%' {
                hex = 2;
            }
            out.push(ch.to_ascii_lowercase());
        }
    }
    out
}

/// Whether canonical `path` is under canonical `prefix` (segment-wise:
/// `/files` matches `/files` and `/files/x`, not `/filesystem`).
pub(crate) fn under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The upstream path: `path` with `prefix` removed if `strip`, appended to
/// the upstream's own base path.
pub(crate) fn upstream_path(
    base: &str,
    prefix: &str,
    path: &NormalizedPath,
    strip: bool,
) -> String {
    let path = path.as_str();
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
        let n = |p: &str| normalize(p).unwrap();
        assert_eq!(upstream_path("", "/ttyd", &n("/ttyd/ws"), true), "/ws");
        assert_eq!(upstream_path("/", "/ttyd", &n("/ttyd"), true), "/");
        assert_eq!(upstream_path("/base/", "/f", &n("/f/x"), true), "/base/x");
        assert_eq!(upstream_path("", "/f", &n("/f/x"), false), "/f/x");
    }

    #[test]
    fn strict_form_for_routes_that_are_not_public() {
        for ok in ["/", "/admin", "/a%20b", "/files/x.txt", "/a:b@c!$&'()*+,="] {
            assert_eq!(strict(&normalize(ok).unwrap()), Ok(()), "{ok}");
        }
        for (raw, why) in [
            ("/admin;x", PathError::Parameter),
            ("/admin/..;/x", PathError::Parameter),
            ("/admin%3bx", PathError::Parameter),
            ("/%252e%252e/admin", PathError::EncodedPercent),
            ("/100%25", PathError::EncodedPercent),
            ("/%EF%BC%8Fadmin", PathError::NonAscii),
            ("/caf\u{e9}", PathError::NonAscii),
            ("/a%01b", PathError::NonAscii),
            ("/a%7F", PathError::NonAscii),
        ] {
            assert_eq!(strict(&normalize(raw).unwrap()), Err(why), "{raw}");
        }
    }

    #[test]
    fn loose_readings() {
        for (raw, want) in [
            ("/admin", "/admin"),
            ("/ADMIN", "/admin"),
            ("/Admin/X", "/admin/x"),
            ("/admin;x", "/admin"),
            ("/echo/..;/admin", "/admin"),
            ("/%252e%252e/admin", "/admin"),
            ("/x/%25252e%25252e/admin", "/admin"),
            ("/%EF%BC%8Fadmin", "/admin"),
            ("/%EF%BD%81dmin", "/admin"),
            ("/\u{ff41}dmin", "/admin"),
            ("/x/%EF%BC%8E%EF%BC%8E/admin", "/admin"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/CAF%C3%89", "/caf%C3%89"),
            ("/100%25", "/100%25"),
            ("/%2541", "/a"),
            ("/a%20b", "/a%20b"),
        ] {
            let n = normalize(raw).unwrap();
            assert_eq!(loose(&n).as_deref(), Ok(want), "{raw}");
            assert_eq!(loose(want).as_deref(), Ok(want), "idempotent: {want}");
        }
        for raw in ["/a%252fb", "/a%255cb", "/a%2500", "/%25%32%66"] {
            assert!(loose(&normalize(raw).unwrap()).is_err(), "{raw}");
        }
    }
}
