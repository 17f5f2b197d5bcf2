//! A scripted "browser" for login tests: follows redirects across the
//! gateway (HTTPS over the test tailnet from a client node, trusting the
//! gateway's local CA) and identity providers on 127.0.0.1 (plain HTTP),
//! keeping cookies per host the way a browser does (host-only; `Secure`
//! cookies only over https; `Max-Age=0` deletes).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tailpass::tailnet::Node;

use crate::client::{H1, tls_over};

/// One response, with the URL it answered.
#[derive(Debug)]
pub struct Page {
    /// The URL requested.
    pub url: String,
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Page {
    /// The `Location` header.
    pub fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// The scripted browser.
pub struct Browser {
    /// Dial https hosts through this node …
    node: Option<Node>,
    /// … or through this HTTP proxy (CONNECT), like a real browser.
    proxy: Option<std::net::SocketAddr>,
    ca: String,
    /// host → cookie name → value.
    pub jar: BTreeMap<String, BTreeMap<String, String>>,
    /// Send `Accept: text/html` (a browser) or not (an API client).
    pub html: bool,
    /// Every URL visited, in order.
    pub visited: Vec<String>,
    /// Every `Set-Cookie` received, with the host that sent it.
    pub set_cookies: Vec<(String, String)>,
}

fn split(url: &str) -> (String, String, u16, String) {
    let uri: http::Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
    let scheme = uri.scheme_str().unwrap().to_string();
    let host = uri.host().unwrap().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    (scheme, host, port, pq)
}

/// Resolves `loc` against `base`.
pub fn resolve(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let (scheme, host, port, _) = split(base);
    let default = if scheme == "https" { 443 } else { 80 };
    let hp = if port == default {
        host
    } else {
        format!("{host}:{port}")
    };
    format!("{scheme}://{hp}{loc}")
}

impl Browser {
    /// A browser on `node`, trusting `ca` for https.
    pub fn new(node: &Node, ca: &str) -> Browser {
        Self::with(Some(node.clone()), None, ca)
    }

    /// A browser that reaches https hosts through an HTTP proxy (CONNECT),
    /// e.g. tailpass's entry proxy; plain http goes direct.
    pub fn via_proxy(proxy: std::net::SocketAddr, ca: &str) -> Browser {
        Self::with(None, Some(proxy), ca)
    }

    fn with(node: Option<Node>, proxy: Option<std::net::SocketAddr>, ca: &str) -> Browser {
        Browser {
            node,
            proxy,
            ca: ca.to_string(),
            jar: BTreeMap::new(),
            html: true,
            visited: Vec::new(),
            set_cookies: Vec::new(),
        }
    }

    /// The cookies kept for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host).and_then(|c| c.get(name)).cloned()
    }

    /// Sets a cookie by hand (tests that tamper or replay).
    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.jar
            .entry(host.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    /// Sends one request (no redirect following).
    pub async fn send(
        &mut self,
        method: &str,
        url: &str,
        body: Option<(&str, String)>,
        extra: &[(&str, &str)],
    ) -> Page {
        self.visited.push(url.to_string());
        let (scheme, host, port, pq) = split(url);
        let mut h1 = if scheme == "https" {
            match (&self.node, self.proxy) {
                (Some(node), _) => {
                    let s = node
                        .dial(&format!("{host}:{port}"))
                        .await
                        .unwrap_or_else(|e| panic!("dial {host}:{port}: {e}"));
                    H1::over(tls_over(s, &host, &self.ca, &[b"http/1.1"]).await).await
                }
                (None, Some(proxy)) => {
                    let s = connect_via(proxy, &host, port).await;
                    H1::over(tls_over(s, &host, &self.ca, &[b"http/1.1"]).await).await
                }
                (None, None) => unreachable!("a browser has a node or a proxy"),
            }
        } else {
            let s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"));
            H1::over(s).await
        };
        let hostport = if (scheme == "https" && port == 443) || (scheme == "http" && port == 80) {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let mut b = Request::builder()
            .method(method)
            .uri(&pq)
            .header("host", &hostport);
        if self.html {
            b = b.header("accept", "text/html,application/xhtml+xml");
        }
        if let Some(c) = self.jar.get(&host).filter(|c| !c.is_empty()) {
            let v: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            b = b.header("cookie", v.join("; "));
        }
        // Like a real browser: a POST (any method but GET/HEAD) from a page
        // carries its origin (here: the page's own, unless a test says
        // otherwise or passes `("origin", "")` to send none).
        let sets_origin = extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("origin"));
        if !matches!(method, "GET" | "HEAD") && !sets_origin {
            b = b.header("origin", format!("{scheme}://{hostport}"));
        }
        for (k, v) in extra {
            if !(k.eq_ignore_ascii_case("origin") && v.is_empty()) {
                b = b.header(*k, *v);
            }
        }
        let body = match body {
            Some((ctype, text)) => {
                b = b.header("content-type", ctype);
                Full::new(Bytes::from(text))
            }
            None => Full::new(Bytes::new()),
        };
        let resp: Response<Bytes> = h1.request(b.body(body).unwrap()).await;
        let page = Page {
            url: url.to_string(),
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(resp.body()).into_owned(),
        };
        for sc in page.set_cookies() {
            self.set_cookies.push((host.clone(), sc.clone()));
            self.store_cookie(&host, scheme == "https", &sc);
        }
        page
    }

    fn store_cookie(&mut self, host: &str, https: bool, sc: &str) {
        let mut parts = sc.split(';').map(str::trim);
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let attrs: Vec<String> = parts.map(|a| a.to_ascii_lowercase()).collect();
        if attrs.iter().any(|a| a == "secure") && !https {
            return;
        }
        let jar = self.jar.entry(host.to_string()).or_default();
        if attrs.iter().any(|a| a == "max-age=0") {
            jar.remove(name);
        } else {
            jar.insert(name.to_string(), value.to_string());
        }
    }

    /// GET without following redirects.
    pub async fn get(&mut self, url: &str) -> Page {
        self.send("GET", url, None, &[]).await
    }

    /// GET, following redirects (at most 15); returns the final page.
    pub async fn follow(&mut self, url: &str) -> Page {
        let mut url = url.to_string();
        for _ in 0..15 {
            let p = self.get(&url).await;
            match (p.status, p.location()) {
                (301 | 302 | 303 | 307 | 308, Some(loc)) => url = resolve(&url, &loc),
                _ => return p,
            }
        }
        panic!("too many redirects: {:?}", self.visited);
    }

    /// POSTs a form, then follows redirects.
    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Page {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", urlenc(k), urlenc(v)))
            .collect();
        let p = self
            .send(
                "POST",
                url,
                Some(("application/x-www-form-urlencoded", body.join("&"))),
                &[],
            )
            .await;
        match (p.status, p.location()) {
            (301 | 302 | 303 | 307 | 308, Some(loc)) => self.follow(&resolve(url, &loc)).await,
            _ => p,
        }
    }
}

/// Opens a tunnel to `host:port` through an HTTP proxy (CONNECT).
pub async fn connect_via(
    proxy: std::net::SocketAddr,
    host: &str,
    port: u16,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "proxy closed during CONNECT"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {host}:{port}: {head}"
    );
    s
}

/// Form/URL component encoding.
pub fn urlenc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A query parameter of a URL, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// The value of attribute `name` in one HTML tag.
pub fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].replace("&amp;", "&"))
}

/// The form with `id`: its method, action and hidden inputs.
pub fn parse_form(html: &str, id: &str) -> (String, String, Vec<(String, String)>) {
    let start = html
        .find(&format!("<form id=\"{id}\""))
        .unwrap_or_else(|| panic!("no form {id} in {html}"));
    let end = start + html[start..].find("</form>").expect("unclosed form");
    let f = &html[start..end];
    let open = &f[..f.find('>').unwrap()];
    let inputs = f
        .split("<input")
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap()])
        .filter(|t| attr(t, "type").as_deref() == Some("hidden"))
        .map(|t| {
            (
                attr(t, "name").unwrap(),
                attr(t, "value").unwrap_or_default(),
            )
        })
        .collect();
    (
        attr(open, "method").unwrap(),
        attr(open, "action").unwrap(),
        inputs,
    )
}

/// The `href` of the element with `id` (e.g. the sign-out page's
/// `#provider-logout` link), unescaped.
pub fn link_href(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!(" id=\"{id}\""))?;
    let open = html[..at].rfind('<')?;
    let close = at + html[at..].find('>')?;
    attr(&html[open..close], "href")
}
