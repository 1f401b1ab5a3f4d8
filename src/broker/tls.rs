//! TLS listeners with rustls (ring provider): certificate chain and key from PEM files, TLS 1.2 and 1.3,
//! optional or required client certificates against a CA file, and the client certificate's identity as
//! the user name. The files are re-read on SIGHUP; connections already open keep their session.

use crate::config::TlsConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built; each names the file it concerns.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{}: cannot read certificates: {source}", file.display())]
    Certificates {
        file: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{}: not a usable CA certificate: {source}", file.display())]
    CaCertificate {
        file: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: cannot read the private key: {source}", file.display())]
    PrivateKey {
        file: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: the key does not fit the certificate: {source}", file.display())]
    KeyMismatch {
        file: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused the protocol versions or the provider.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA certificates.
    #[error("TLS client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The certificates of a PEM file (at least one). Shared with the client's TLS connector.
pub(crate) fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |source| TlsError::Certificates {
        file: p.to_path_buf(),
        source,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(p)
        .map_err(bad)?
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: p.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The CA certificates of a PEM file as a trust store. Shared with the client's TLS connector.
pub(crate) fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|source| TlsError::CaCertificate {
            file: ca.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(p: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(p).map_err(|source| TlsError::PrivateKey {
        file: p.to_path_buf(),
        source,
    })
}

/// Builds a rustls server configuration from the files.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.cert)?;
    let key = private_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &cfg.ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
            let verifier = if cfg.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::KeyMismatch {
            file: cfg.key.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// Mutual TLS for the cluster's peer links: this node's certificate both ways, the cluster's CA required of
/// every peer (see `[cluster.tls]`).
pub fn peer_tls(cfg: &crate::config::PeerTlsSection) -> Result<cicada_cluster::PeerTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(&cfg.ca)?);
    let server = server_config(&TlsConfig {
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        ca: Some(cfg.ca.clone()),
        require_certificate: true,
        use_identity_as_username: false,
    })?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&cfg.cert)?, private_key(&cfg.key)?)
        .map_err(|source| TlsError::KeyMismatch {
            file: cfg.key.clone(),
            source,
        })?;
    Ok(cicada_cluster::PeerTls {
        server,
        client: Arc::new(client),
    })
}

/// The acceptor of one listener; `reload` swaps in freshly read files for new connections.
pub struct Tls {
    pub config: TlsConfig,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    pub fn load(config: TlsConfig) -> Result<Tls, TlsError> {
        let acceptor = TlsAcceptor::from(server_config(&config)?);
        Ok(Tls {
            config,
            current: RwLock::new(acceptor),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads certificate, key and CA; on an error the old ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = TlsAcceptor::from(server_config(&self.config)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The identity of a client certificate: its subject CN, else its first DNS name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}
