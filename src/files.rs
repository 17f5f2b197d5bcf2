//! Static files for a route with `root = "/srv/blog"`, as Caddy's
//! `file_server` did for the seed's blog: index files, `ETag` and
//! `Last-Modified` with conditional requests, single byte ranges,
//! precompressed `.br`/`.gz` siblings, a directory listing only when asked,
//! and never a byte from outside the root (symlinks included: every path is
//! resolved and must stay below the resolved root).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::http::response::{Body, escape, full, with_type};

const TEXT: &str = "text/plain; charset=utf-8";

/// Index files tried, in order, for a directory.
const INDEX: [&str; 2] = ["index.html", "index.htm"];

/// One route's file root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRoot {
    /// The root as configured (logs, errors).
    pub(crate) root: PathBuf,
    /// Whether a directory without an index file is listed.
    pub(crate) browse: bool,
}

/// A file found below the root, with what the answer needs.
struct Found {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    encoding: Option<&'static str>,
    ctype: String,
}

/// How a request for a file ends before any byte is read.
enum Lookup {
    File(Found),
    /// A directory asked without its trailing slash.
    AddSlash,
    /// A directory without an index file (listed if `browse`).
    Dir(PathBuf),
    Missing,
}

impl FileRoot {
    /// Answers `method` for `rel` (the request path below the route's
    /// prefix, normalized, starting with `/`); `full_path` is the whole
    /// request path, for the trailing-slash redirect.
    pub(crate) async fn serve(
        &self,
        method: &Method,
        rel: &str,
        full_path: &str,
        headers: &HeaderMap,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = with_type(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "405 method not allowed\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match self.lookup(rel, headers).await {
            Lookup::File(f) => answer(f, method, headers).await,
            Lookup::AddSlash => {
                let loc = format!("{full_path}/");
                Response::builder()
                    .status(StatusCode::PERMANENT_REDIRECT)
                    .header(header::LOCATION, loc)
                    .body(full(Bytes::new()))
                    .expect("a normalized path is a valid Location")
            }
            Lookup::Dir(dir) if self.browse => listing(&dir, full_path, method).await,
            Lookup::Dir(_) | Lookup::Missing => {
                with_type(StatusCode::NOT_FOUND, TEXT, "404 not found\n")
            }
        }
    }

    async fn lookup(&self, rel: &str, headers: &HeaderMap) -> Lookup {
        let Some(root) = canonical(&self.root).await else {
            tracing::warn!(root = %self.root.display(), "file root is not readable");
            return Lookup::Missing;
        };
        let Some(candidate) = below(&root, rel) else {
            return Lookup::Missing;
        };
        let Some(real) = inside(&root, &candidate).await else {
            return Lookup::Missing;
        };
        let Ok(meta) = tokio::fs::metadata(&real).await else {
            return Lookup::Missing;
        };
        if meta.is_dir() {
            if !rel.ends_with('/') {
                return Lookup::AddSlash;
            }
            for name in INDEX {
                if let Some(f) = self.file(&root, &real.join(name), headers).await {
                    return Lookup::File(f);
                }
            }
            return Lookup::Dir(real);
        }
        if rel.ends_with('/') {
            return Lookup::Missing; // a file named like a directory
        }
        match self.file(&root, &real, headers).await {
            Some(f) => Lookup::File(f),
            None => Lookup::Missing,
        }
    }

    /// A regular file below the root, or its precompressed sibling when
    /// the client takes that encoding and it exists below the root too.
    async fn file(&self, root: &Path, path: &Path, headers: &HeaderMap) -> Option<Found> {
        let real = inside(root, path).await?;
        let meta = tokio::fs::metadata(&real).await.ok()?;
        if !meta.is_file() {
            return None;
        }
        let ctype = mime_guess::from_path(path)
            .first_raw()
            .map(
                |m| match m.starts_with("text/") || m.ends_with("javascript") {
                    true => format!("{m}; charset=utf-8"),
                    false => m.to_string(),
                },
            )
            .unwrap_or_else(|| "application/octet-stream".into());
        for (enc, ext) in [("br", "br"), ("gzip", "gz")] {
            if !accepts(headers, enc) {
                continue;
            }
            let mut sibling = path.as_os_str().to_owned();
            sibling.push(format!(".{ext}"));
            let Some(real) = inside(root, Path::new(&sibling)).await else {
                continue;
            };
            if let Ok(m) = tokio::fs::metadata(&real).await
                && m.is_file()
            {
                return Some(Found {
                    path: real,
                    len: m.len(),
                    modified: m.modified().ok(),
                    encoding: Some(enc),
                    ctype,
                });
            }
        }
        Some(Found {
            path: real,
            len: meta.len(),
            modified: meta.modified().ok(),
            encoding: None,
            ctype,
        })
    }
}

/// The resolved root (symlinks followed once, at the top).
async fn canonical(root: &Path) -> Option<PathBuf> {
    tokio::fs::canonicalize(root).await.ok()
}

/// `rel`, percent-decoded segment by segment, joined below `root`; `None`
/// for anything that could step out (`..`, `.`, empty, NUL or `/` inside a
/// segment).
fn below(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
        if bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.contains(&0)
            || bytes.contains(&b'/')
        {
            return None;
        }
        p.push(OsStr::from_bytes(&bytes));
    }
    Some(p)
}

/// `path` with every symlink resolved, if that is below `root` (itself
/// resolved); `None` if it escapes or does not exist.
async fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let real = tokio::fs::canonicalize(path).await.ok()?;
    real.starts_with(root).then_some(real)
}

fn accepts(headers: &HeaderMap, encoding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            name.eq_ignore_ascii_case(encoding) && !q_zero
        })
}

/// A strong validator from size, modification time and encoding.
fn etag(f: &Found) -> String {
    let nanos = f
        .modified
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    match f.encoding {
        Some(e) => format!("\"{nanos:x}-{:x}-{e}\"", f.len),
        None => format!("\"{nanos:x}-{:x}\"", f.len),
    }
}

/// Whether the client's copy is current (`If-None-Match` first, then
/// `If-Modified-Since`, as RFC 9110 orders them).
fn not_modified(headers: &HeaderMap, tag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag);
    }
    match (
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        modified,
    ) {
        (Some(since), Some(m)) => m <= since + std::time::Duration::from_secs(1),
        _ => false,
    }
}

/// The one byte range asked for, if any and if `If-Range` allows it:
/// `Ok(None)` for the whole file, `Err(())` if unsatisfiable.
fn range(
    headers: &HeaderMap,
    len: u64,
    tag: &str,
    modified: Option<SystemTime>,
) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let current = if ir.starts_with('"') {
            ir == tag
        } else {
            httpdate::parse_http_date(ir)
                .ok()
                .zip(modified)
                .is_some_and(|(d, m)| httpdate::fmt_http_date(m) == httpdate::fmt_http_date(d))
        };
        if !current {
            return Ok(None);
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None); // another unit: ignored
    };
    if set.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let (a, b) = set.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = match b {
            "" => len.checked_sub(1).ok_or(())?,
            b => b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1)),
        };
        (start, end)
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn answer(f: Found, method: &Method, headers: &HeaderMap) -> Response<Body> {
    let tag = etag(&f);
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, &f.ctype)
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::VARY, "Accept-Encoding");
    if let Some(m) = f.modified {
        b = b.header(header::LAST_MODIFIED, httpdate::fmt_http_date(m));
    }
    if let Some(e) = f.encoding {
        b = b.header(header::CONTENT_ENCODING, e);
    }
    if not_modified(headers, &tag, f.modified) {
        return b
            .status(StatusCode::NOT_MODIFIED)
            .body(full(Bytes::new()))
            .expect("valid parts");
    }
    let (status, start, len) = match range(headers, f.len, &tag, f.modified) {
        Ok(None) => (StatusCode::OK, 0, f.len),
        Ok(Some((s, e))) => {
            b = b.header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{}", f.len));
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        Err(()) => {
            return b
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", f.len))
                .body(full(Bytes::new()))
                .expect("valid parts");
        }
    };
    b = b.status(status).header(header::CONTENT_LENGTH, len);
    if method == Method::HEAD {
        return b.body(full(Bytes::new())).expect("valid parts");
    }
    let body = match open_at(&f.path, start).await {
        Ok(file) => FileBody {
            file,
            left: len,
            path: f.path,
        }
        .boxed(),
        Err(e) => {
            tracing::warn!(path = %f.path.display(), error = %e, "reading a static file");
            return with_type(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "500 cannot read the file\n",
            );
        }
    };
    b.body(body).expect("valid parts")
}

async fn open_at(path: &Path, start: u64) -> std::io::Result<tokio::fs::File> {
    let mut f = tokio::fs::File::open(path).await?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await?;
    }
    Ok(f)
}

/// An HTML list of a directory's entries, names escaped, links encoded.
async fn listing(dir: &Path, full_path: &str, method: &Method) -> Response<Body> {
    let mut names = Vec::new();
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let is_dir = e.file_type().await.is_ok_and(|t| t.is_dir());
            names.push((e.file_name().as_bytes().to_vec(), is_dir));
        }
    }
    names.sort();
    let title = escape(full_path);
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head><body><h1>{title}</h1><ul>\n"
    );
    if full_path != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in names {
        let slash = if is_dir { "/" } else { "" };
        let href: String =
            percent_encoding::percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).collect();
        let shown = escape(&String::from_utf8_lossy(&name));
        html.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{shown}{slash}</a></li>\n"
        ));
    }
    html.push_str("</ul></body></html>\n");
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(html)
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(body))
        .expect("valid parts")
}

/// A file's bytes from its current position, `left` of them, in chunks.
/// A read error ends the body early: the declared length then tells the
/// client (and hyper, which closes the connection) that it is cut off.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    path: PathBuf,
}

const CHUNK: usize = 64 * 1024;

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = (self.left as usize).min(CHUNK);
        let mut buf = BytesMut::zeroed(want);
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    tracing::warn!(path = %self.path.display(), "static file shrank while being sent");
                    self.left = 0;
                    return Poll::Ready(None);
                }
                buf.truncate(n);
                self.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
            Poll::Ready(Err(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "reading a static file");
                self.left = 0;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(
        root: &FileRoot,
        path: &str,
        h: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        for (k, v) in h {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let r = root.serve(&Method::GET, path, path, &headers).await;
        let (parts, body) = r.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    fn site() -> (tempfile::TempDir, FileRoot) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("site");
        std::fs::create_dir_all(root.join("posts/empty")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("posts/index.html"), "posts").unwrap();
        std::fs::write(root.join("style.css"), "body{}").unwrap();
        std::fs::write(root.join("style.css.gz"), "GZ").unwrap();
        std::fs::write(root.join("style.css.br"), "BR").unwrap();
        std::fs::write(root.join("café.txt"), "0123456789").unwrap();
        std::fs::write(d.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        std::fs::write(root.join("posts/empty/.keep"), "").unwrap();
        let fr = FileRoot {
            root,
            browse: false,
        };
        (d, fr)
    }

    #[tokio::test]
    async fn index_files_types_and_trailing_slash() {
        let (_d, r) = site();
        let (s, h, b) = get(&r, "/", &[]).await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"<h1>home</h1>"[..]));
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let (s, h, _) = get(&r, "/posts", &[]).await;
        assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(h[header::LOCATION], "/posts/");
        assert_eq!(get(&r, "/posts/", &[]).await.2, "posts");
        assert_eq!(get(&r, "/caf%C3%A9.txt", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&r, "/nope", &[]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&r, "/style.css/", &[]).await.0, StatusCode::NOT_FOUND);
        let resp = r.serve(&Method::POST, "/", "/", &HeaderMap::new()).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn nothing_outside_the_root_not_even_by_symlink() {
        let (_d, r) = site();
        for p in [
            "/leak.txt",
            "/up/secret.txt",
            "/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/a%00b",
        ] {
            assert_eq!(get(&r, p, &[]).await.0, StatusCode::NOT_FOUND, "{p}");
        }
    }

    #[tokio::test]
    async fn directories_are_listed_only_when_asked() {
        let (_d, mut r) = site();
        assert_eq!(get(&r, "/posts/empty/", &[]).await.0, StatusCode::NOT_FOUND);
        r.browse = true;
        let (s, _, b) = get(&r, "/posts/empty/", &[]).await;
        assert_eq!(s, StatusCode::OK);
        let page = String::from_utf8_lossy(&b);
        assert!(page.contains("href=\"%2Ekeep\">.keep</a>"), "{page}");
    }

    #[tokio::test]
    async fn precompressed_siblings_follow_accept_encoding() {
        let (_d, r) = site();
        let (_, h, b) = get(&r, "/style.css", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(
            (&b[..], &h[header::CONTENT_ENCODING]),
            (&b"BR"[..], &HeaderValue::from_static("br"))
        );
        assert_eq!(h[header::CONTENT_TYPE], "text/css; charset=utf-8");
        let (_, h, b) = get(&r, "/style.css", &[("accept-encoding", "gzip, br;q=0")]).await;
        assert_eq!(
            (&b[..], &h[header::CONTENT_ENCODING]),
            (&b"GZ"[..], &HeaderValue::from_static("gzip"))
        );
        let (_, h, b) = get(&r, "/style.css", &[]).await;
        assert_eq!(&b[..], b"body{}");
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(h[header::VARY], "Accept-Encoding");
    }

    #[tokio::test]
    async fn validators_and_ranges() {
        let (_d, r) = site();
        let (_, h, _) = get(&r, "/caf%C3%A9.txt", &[]).await;
        let tag = h[header::ETAG].to_str().unwrap().to_string();
        let lm = h[header::LAST_MODIFIED].to_str().unwrap().to_string();
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("if-none-match", &tag)])
                .await
                .0,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("if-modified-since", &lm)])
                .await
                .0,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("if-none-match", "\"other\"")])
                .await
                .0,
            StatusCode::OK
        );
        let (s, h, b) = get(&r, "/caf%C3%A9.txt", &[("range", "bytes=2-4")]).await;
        assert_eq!((s, &b[..]), (StatusCode::PARTIAL_CONTENT, &b"234"[..]));
        assert_eq!(h[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("range", "bytes=-3")]).await.2,
            "789"
        );
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("range", "bytes=7-")]).await.2,
            "789"
        );
        assert_eq!(
            get(&r, "/caf%C3%A9.txt", &[("range", "bytes=5-99")])
                .await
                .2,
            "56789"
        );
        let (s, h, _) = get(&r, "/caf%C3%A9.txt", &[("range", "bytes=10-")]).await;
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h[header::CONTENT_RANGE], "bytes */10");
        // A stale If-Range gets the whole file.
        let (s, _, b) = get(
            &r,
            "/caf%C3%A9.txt",
            &[("range", "bytes=2-4"), ("if-range", "\"old\"")],
        )
        .await;
        assert_eq!((s, b.len()), (StatusCode::OK, 10));
        let (s, _, _) = get(
            &r,
            "/caf%C3%A9.txt",
            &[("range", "bytes=2-4"), ("if-range", &tag)],
        )
        .await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    }

    #[tokio::test]
    async fn a_large_file_streams_whole() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("big.bin"), &data).unwrap();
        let r = FileRoot {
            root: d.path().to_path_buf(),
            browse: false,
        };
        let (s, h, b) = get(&r, "/big.bin", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_LENGTH], "300000");
        assert_eq!(&b[..], &data[..]);
    }
}
