//! The HTTP client the OIDC library uses to reach providers. Names on the
//! tailnet (`*.ts.net`, the configured tailnet domain, tailnet addresses)
//! are dialed through the gateway's own node, so a provider that is only
//! reachable on the tailnet — Pocket ID at `https://auth.<tailnet>.ts.net`
//! — works without a tailscaled on the host. Everything else is dialed
//! directly. One connection per request: provider calls are rare.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tailnet::{Node, names};

/// Largest provider response accepted (discovery, JWKS, tokens, userinfo).
const MAX_BODY: usize = 1 << 20;
/// Time allowed for one provider request, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a provider request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HttpError {
    /// The URL cannot be used.
    #[error("bad provider URL {0}")]
    Url(String),
    /// Could not connect.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// Host and port.
        host: String,
        reason: String,
    },
    /// TLS failed (certificate not trusted, …).
    #[error("TLS with {host}: {reason}")]
    Tls { host: String, reason: String },
    /// The exchange failed.
    #[error("HTTP with {host}: {reason}")]
    Http { host: String, reason: String },
    /// No answer in time.
    #[error("{0} did not answer within 15 s")]
    Timeout(String),
    /// The provider answered with a server error (5xx): whatever its body
    /// says, it is a failure that may pass, never a verdict on the session.
    #[error("{host} answered {status}")]
    ServerError { host: String, status: u16 },
}

/// Where tailnet names are dialed from.
#[derive(Clone, Debug)]
pub(crate) struct Dialer {
    /// The node to dial tailnet names through (unset: dial everything
    /// directly). Set once the node is up.
    pub(crate) node: Arc<std::sync::OnceLock<Node>>,
    /// Host suffixes that are on the tailnet (`.ts.net` and the configured domain).
    pub(crate) tailnet_suffixes: Vec<String>,
}

impl Dialer {
    /// Whether `host` is on the tailnet.
    pub(crate) fn is_tailnet(&self, host: &str) -> bool {
        match names::host_ip_is_tailnet(host) {
            Some(is) => is,
            None => self
                .tailnet_suffixes
                .iter()
                .any(|s| names::is_below(host, s)),
        }
    }
}

/// An HTTP(S) client for one provider.
#[derive(Clone)]
pub(crate) struct HttpClient {
    dialer: Dialer,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("dialer", &self.dialer)
            .finish()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl HttpClient {
    /// A client trusting the public web PKI plus `ca_file` (PEM), if given.
    pub(crate) fn new(dialer: Dialer, ca_file: Option<&Path>) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(f) = ca_file {
            let certs = CertificateDer::pem_file_iter(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", f.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", f.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            dialer,
            tls: Arc::new(tls),
        })
    }

    /// Sends one request and reads the whole (bounded) response.
    pub(crate) async fn send(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        let uri = req.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Url(uri.to_string()))?
            .to_string();
        match tokio::time::timeout(TIMEOUT, self.send_inner(req, &uri, &host)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(host)),
        }
    }

    async fn send_inner(
        &self,
        req: http::Request<Vec<u8>>,
        uri: &http::Uri,
        host: &str,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        let io = self.connect(uri, host).await?;
        exchange(io, req, uri, host).await
    }

    /// A connection to `uri`'s host and port: through the node for tailnet
    /// hosts, else directly; TLS for `https`.
    async fn connect(&self, uri: &http::Uri, host: &str) -> Result<Box<dyn Io>, HttpError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(uri.to_string())),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let conn_err = |reason: String| HttpError::Connect {
            host: target.clone(),
            reason,
        };
        let raw: Box<dyn Io> = match self.dialer.node.get() {
            Some(node) if self.dialer.is_tailnet(host) => Box::new(
                node.dial(&target)
                    .await
                    .map_err(|e| conn_err(format!("over the tailnet: {e}")))?,
            ),
            _ => Box::new(
                tokio::net::TcpStream::connect(&target)
                    .await
                    .map_err(|e| conn_err(e.to_string()))?,
            ),
        };
        if !https {
            return Ok(raw);
        }
        let name =
            ServerName::try_from(host.to_string()).map_err(|_| HttpError::Url(uri.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, raw)
            .await
            .map_err(|e| HttpError::Tls {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Box::new(tls))
    }
}

/// One HTTP/1.1 request on `io` (origin-form path with Host, as HTTP/1.1
/// servers expect) and its whole response, at most `MAX_BODY` bytes.
async fn exchange(
    io: Box<dyn Io>,
    req: http::Request<Vec<u8>>,
    uri: &http::Uri,
    host: &str,
) -> Result<http::Response<Vec<u8>>, HttpError> {
    let herr = |reason: String| HttpError::Http {
        host: host.to_string(),
        reason,
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| herr(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| HttpError::Url(uri.to_string()))?;
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(&authority).map_err(|_| HttpError::Url(uri.to_string()))?,
    );
    let resp = send
        .send_request(http::Request::from_parts(
            parts,
            Full::new(Bytes::from(body)),
        ))
        .await
        .map_err(|e| herr(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| herr(format!("reading the response: {e}")))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

impl<'c> openidconnect::AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: http::Request<Vec<u8>>) -> Self::Future {
        // The OIDC library reads any non-200 answer with a JSON `error` as
        // the provider's verdict; a 5xx is not one (a proxy's 502, a
        // provider restarting), so it becomes a transport failure here.
        let host = request.uri().host().unwrap_or_default().to_string();
        Box::pin(async move {
            let r = self.send(request).await?;
            if r.status().is_server_error() {
                return Err(HttpError::ServerError {
                    host,
                    status: r.status().as_u16(),
                });
            }
            Ok(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailnet_names_and_addresses() {
        let d = Dialer {
            node: Default::default(),
            tailnet_suffixes: vec!["ts.net".into(), "corp.example".into()],
        };
        for h in [
            "auth.mist-walleye.ts.net",
            "AUTH.mist-walleye.ts.net.",
            "100.64.0.1",
            "100.127.255.254",
            "[fd7a:115c:a1e0::1]",
            "idp.corp.example",
        ] {
            assert!(d.is_tailnet(h), "{h}");
        }
        for h in [
            "ts.net",
            "evil-ts.net",
            "accounts.google.com",
            "127.0.0.1",
            "100.128.0.1",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(!d.is_tailnet(h), "{h}");
        }
    }
}
