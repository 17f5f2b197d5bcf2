//! The public listener: HTTPS for custom domains on a normal interface,
//! public routes only. Certificates come from ACME (TLS-ALPN-01, answered on
//! this same listener, via rustls-acme) or from PEM files.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::config::{PublicCert, PublicListener};
use crate::identity::PeerIdentity;
use crate::listen::TcpAcceptor;
use crate::server::{Established, Handshake, StartError};
use crate::tls::{self, provider, server_config};

fn acme_client_config(ca_file: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

/// The public listener's handshake: TLS with the listener's certificate,
/// or — for an ACME server validating us over TLS-ALPN-01 — the challenge
/// certificate, which is the whole exchange.
pub(crate) struct PublicTls {
    main: Arc<rustls::ServerConfig>,
    challenge: Option<Arc<rustls::ServerConfig>>,
}

impl Handshake<TcpStream> for PublicTls {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;
    type Who = PeerIdentity;

    async fn establish(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<Established<Self::Stream, PeerIdentity>> {
        let start =
            match tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "public TLS hello");
                    return None;
                }
            };
        let is_challenge = start
            .client_hello()
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == rustls_acme::acme::ACME_TLS_ALPN_NAME));
        if is_challenge {
            if let Some(cc) = self.challenge.clone() {
                let _ = start.into_stream(cc).await;
            }
            return None;
        }
        match start.into_stream(self.main.clone()).await {
            Ok(io) => {
                let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
                let who = PeerIdentity::Internet { addr: peer };
                Some(Established { io, who, h2 })
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "public TLS handshake");
                None
            }
        }
    }
}

/// Sets up the listener's certificate (the ACME state machine or the PEM
/// files' renewal run in `tasks`) and binds it; the server runs the accept
/// loop.
pub(crate) async fn start(
    pl: &PublicListener,
    tasks: &mut JoinSet<()>,
) -> Result<(TcpAcceptor, PublicTls, SocketAddr), StartError> {
    let err = |e: String| StartError::Public(e);
    let (main, challenge) = match &pl.cert {
        PublicCert::Files {
            cert_file,
            key_file,
        } => {
            let (resolver, renew) = tls::manage(tls::Source::Files {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            })
            .await;
            tasks.spawn(async move {
                let _ = renew.await;
            });
            (server_config(Arc::new(resolver)), None)
        }
        PublicCert::Acme {
            directory,
            contact,
            cache_dir,
            ca_file,
        } => {
            let cfg = match ca_file {
                Some(f) => rustls_acme::AcmeConfig::new_with_client_config(
                    &pl.domains,
                    acme_client_config(f).map_err(err)?,
                ),
                None => rustls_acme::AcmeConfig::new_with_provider(&pl.domains, provider()),
            };
            let mut state = cfg
                .contact(contact)
                .cache(rustls_acme::caches::DirCache::new(cache_dir.clone()))
                .directory(directory)
                .state();
            let resolver = state.resolver();
            let challenge = state.challenge_rustls_config_with_provider(provider());
            let domains = pl.domains.clone();
            // The ACME state machine runs as long as it is polled.
            tasks.spawn(async move {
                while let Some(ev) = state.next().await {
                    match ev {
                        Ok(ok) => tracing::info!(domains = ?domains, event = ?ok, "acme"),
                        Err(e) => tracing::warn!(domains = ?domains, error = %e, "acme"),
                    }
                }
            });
            (server_config(resolver), Some(challenge))
        }
    };
    let listener = tokio::net::TcpListener::bind(pl.listen)
        .await
        .map_err(|e| err(format!("{}: {e}", pl.listen)))?;
    let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
    tracing::info!(%addr, domains = ?pl.domains, "public listener");
    let acceptor = TcpAcceptor::new(listener, false);
    Ok((acceptor, PublicTls { main, challenge }, addr))
}
