//! TLS certificates: where they come from and how they are served.
//!
//! One [`Resolver`] per node holds the current certificate behind an atomic
//! pointer; a background task renews it and swaps it in, so new handshakes
//! get the new certificate while open connections keep theirs (no restart,
//! nothing dropped). Sources:
//!
//! - the node's own `*.ts.net` certificate, fetched through the node;
//! - PEM files, re-read when they change;
//! - a local CA kept in the state dir, issuing short-lived leaf certificates
//!   (for local use and tests; clients must trust its `ca.pem`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tailnet::Node;

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// PEM could not be parsed.
    #[error("certificate PEM: {0}")]
    Pem(String),
    /// The key does not fit rustls.
    #[error("private key: {0}")]
    Key(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating a certificate failed.
    #[error("local CA: {0}")]
    Generate(String),
    /// Fetching the node's certificate failed.
    #[error(transparent)]
    Tailnet(#[from] crate::tailnet::Error),
}

/// The crypto provider every TLS config of tailpass uses (ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config (HTTP/2 and HTTP/1.1 by ALPN) over any resolver.
pub(crate) fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A parsed certificate with its expiry.
#[derive(Clone)]
pub struct LoadedCert {
    key: Arc<CertifiedKey>,
    pem: Arc<(String, String)>,
    /// End of validity of the leaf.
    pub(crate) not_after: SystemTime,
    /// Start of validity of the leaf.
    pub(crate) not_before: SystemTime,
    /// Leaf serial number, hex (to tell renewals apart).
    pub serial: String,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl LoadedCert {
    /// Parses a PEM chain and key.
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Pem(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Pem("no certificate found".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| TlsError::Pem(format!("leaf certificate: {e}")))?;
        let ts = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let not_after = ts(x509.validity().not_after);
        let not_before = ts(x509.validity().not_before);
        let serial = x509.raw_serial_as_string();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let ck = CertifiedKey::new(chain, signing);
        ck.keys_match()
            .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
        Ok(LoadedCert {
            key: Arc::new(ck),
            pem: Arc::new((cert_pem.to_string(), key_pem.to_string())),
            not_after,
            not_before,
            serial,
        })
    }

    /// The certificate chain and key as PEM (for listeners whose TLS is
    /// terminated elsewhere, i.e. Funnel in the Go shim).
    pub(crate) fn pem(&self) -> (&str, &str) {
        (&self.pem.0, &self.pem.1)
    }

    /// When to renew: two thirds into the validity period.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// The rustls certificate resolver for one node; cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    current: Arc<ArcSwapOption<LoadedCert>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            current: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("current", &self.current.load())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl Resolver {
    /// Installs a certificate for new handshakes.
    pub(crate) fn set(&self, cert: LoadedCert) {
        self.current.store(Some(Arc::new(cert)));
        self.changed.send_modify(|g| *g += 1);
    }

    /// Notified after every [`Resolver::set`].
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The certificate currently served.
    pub fn current(&self) -> Option<Arc<LoadedCert>> {
        self.current.load_full()
    }

    /// Waits until there is a certificate to serve (at once when there is).
    pub(crate) async fn ready(&self) {
        let mut changes = self.subscribe();
        while self.current.load().is_none() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// A rustls server config (HTTP/2 and HTTP/1.1 by ALPN) using this resolver.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(Arc::new(self.clone()))
    }
}

/// A local certificate authority stored in a directory (`ca.pem`,
/// `ca-key.pem`, mode 0600), created on first use.
pub struct LocalCa {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

fn gen_err(e: impl fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

impl LocalCa {
    /// Opens the CA in `dir`, creating it if missing.
    pub fn open_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if cert_path.exists() && key_path.exists() {
            let ca_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(gen_err)?;
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).map_err(gen_err)?;
            return Ok(LocalCa { ca_pem, issuer });
        }
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tailpass local CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let now = time_now();
        params.not_before = now - rcgen_duration(Duration::from_secs(3600));
        params.not_after = now + rcgen_duration(Duration::from_secs(10 * 365 * 86400));
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let ca_pem = cert.pem();
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, &ca_pem).map_err(io(&cert_path))?;
        let issuer = rcgen::Issuer::new(params, key);
        Ok(LocalCa { ca_pem, issuer })
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a leaf certificate for `names`, valid for `validity`.
    pub fn issue(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, String), TlsError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let now = time_now();
        params.not_before = now - rcgen_duration(Duration::from_secs(1));
        params.not_after = now + rcgen_duration(validity);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand_serial()));
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn rand_serial() -> [u8; 16] {
    let mut b = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut b)
        .expect("system randomness");
    b[0] &= 0x7f; // positive
    b
}

fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::Io {
            path: path.into(),
            source,
        })?;
    f.write_all(data.as_bytes()).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

/// Where one node's certificate comes from, ready to fetch.
#[derive(Clone)]
pub(crate) enum Source {
    /// The node's own certificate for `domain`.
    Tailnet {
        node: Node,
        /// Its cert domain.
        domain: String,
    },
    /// Leaf certificates from a local CA.
    LocalCa {
        ca: Arc<LocalCa>,
        /// Names on the certificate.
        names: Vec<String>,
        /// Validity of each leaf.
        validity: Duration,
    },
    /// PEM files.
    Files {
        /// Certificate chain.
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Tailnet { domain, .. } => write!(f, "tailnet cert for {domain}"),
            Source::LocalCa { names, .. } => write!(f, "local CA cert for {names:?}"),
            Source::Files { cert_file, .. } => write!(f, "PEM file {}", cert_file.display()),
        }
    }
}

impl Source {
    /// Fetches (or issues, or reads) the certificate.
    pub(crate) async fn fetch(&self) -> Result<LoadedCert, TlsError> {
        match self {
            Source::Tailnet { node, domain } => {
                let pair = node.cert_pair(domain).await?;
                LoadedCert::from_pem(&pair.cert_pem, &pair.key_pem)
            }
            Source::LocalCa {
                ca,
                names,
                validity,
            } => {
                let (c, k) = ca.issue(names, *validity)?;
                LoadedCert::from_pem(&c, &k)
            }
            Source::Files {
                cert_file,
                key_file,
            } => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).map_err(|source| TlsError::Io {
                        path: p.clone(),
                        source,
                    })
                };
                LoadedCert::from_pem(&read(cert_file)?, &read(key_file)?)
            }
        }
    }

    /// How long to wait before asking again.
    fn next_check(&self, cert: &LoadedCert) -> Duration {
        match self {
            // Files may be replaced at any time (certbot, cert-manager).
            Source::Files { .. } => Duration::from_secs(30),
            _ => cert
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(Duration::from_millis(200)),
        }
    }
}

/// First back-off after a failed fetch; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(600);

/// Keeps a certificate in the resolver: fetched now (local sources) or in
/// the background (a ts.net certificate, which may take a minute of ACME or
/// fail while Let's Encrypt or the tailnet's HTTPS setting is off), then
/// renewed. A failure never stops the process: it is logged, retried with a
/// back-off (5 s doubling to 10 min), and the current certificate, if any,
/// stays in service. Until the first one arrives, handshakes wait for it
/// (within the handshake timeout, [`Resolver::ready`]); the node's other
/// listeners, and every other node, serve meanwhile.
pub(crate) async fn manage(source: Source) -> (Resolver, tokio::task::JoinHandle<()>) {
    let resolver = Resolver::default();
    if !matches!(source, Source::Tailnet { .. }) {
        fetch_into(&source, &resolver).await;
    }
    let r = resolver.clone();
    let task = tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            if let Some(cur) = r.current() {
                tokio::time::sleep(source.next_check(&cur)).await;
            }
            if fetch_into(&source, &r).await {
                retry = FIRST_RETRY;
            } else {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    });
    (resolver, task)
}

/// One fetch: a new certificate goes into service; a failure is logged
/// (an error while there is none yet, a warning while the old one serves).
async fn fetch_into(source: &Source, r: &Resolver) -> bool {
    match (source.fetch().await, r.current()) {
        (Ok(new), Some(cur)) if new.serial == cur.serial => true,
        (Ok(new), cur) => {
            let what = if cur.is_some() {
                "certificate renewed"
            } else {
                "certificate loaded"
            };
            tracing::info!(source = ?source, serial = %new.serial, "{what}");
            r.set(new);
            true
        }
        (Err(e), None) => {
            tracing::error!(source = ?source, error = %e, "no certificate yet; HTTPS on this node waits for it, retrying with back-off");
            false
        }
        (Err(e), Some(_)) => {
            tracing::warn!(source = ?source, error = %e, "certificate renewal failed; keeping the current one");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_persists_and_issues_matching_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(dir.path()).unwrap();
        let (c, k) = ca
            .issue(&["gw.tail-test.ts.net".into()], Duration::from_secs(60))
            .unwrap();
        let cert = LoadedCert::from_pem(&c, &k).unwrap();
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(
            life >= Duration::from_secs(60) && life < Duration::from_secs(62),
            "{life:?}"
        );
        let again = LocalCa::open_or_create(dir.path()).unwrap();
        assert_eq!(again.ca_pem(), ca.ca_pem());
        let (c2, k2) = again.issue(&["x".into()], Duration::from_secs(60)).unwrap();
        assert_ne!(LoadedCert::from_pem(&c2, &k2).unwrap().serial, cert.serial);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "CA key readable by others");
        // PEM files as a source.
        let cf = dir.path().join("leaf.pem");
        let kf = dir.path().join("leaf-key.pem");
        std::fs::write(&cf, &c).unwrap();
        std::fs::write(&kf, &k).unwrap();
        let src = Source::Files {
            cert_file: cf.clone(),
            key_file: kf.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(src.fetch()).unwrap().serial, cert.serial);
        std::fs::write(&kf, &k2).unwrap();
        assert!(
            rt.block_on(src.fetch()).is_err(),
            "mismatched key file accepted"
        );
        std::fs::remove_file(&cf).unwrap();
        let e = rt.block_on(src.fetch()).unwrap_err().to_string();
        assert!(e.contains("leaf.pem"), "{e}");
        // A key that does not match is refused.
        assert!(LoadedCert::from_pem(&c, &k2).is_err());
        assert!(LoadedCert::from_pem("junk", &k).is_err());
    }
}
