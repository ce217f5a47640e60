//! Inbound TLS on either listener: rustls, certificate and key from PEM
//! files, optional mutual TLS, and reloading on demand (SIGHUP in the
//! binary) without dropping a connection — each new handshake uses the
//! configuration in force when it starts; established connections keep
//! theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use palisade_config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration from {cert} and {key}: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// A listener's TLS configuration, replaceable while it serves.
pub struct TlsListener {
    files: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsListener {
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(build(files)?)),
            files: files.clone(),
        })
    }

    /// Reads the files again. On error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(build(&self.files)?);
        if let Ok(mut current) = self.current.write() {
            *current = fresh;
        }
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    pub fn files(&self) -> &TlsConfig {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let config = self.current.read().ok()?;
        Some(tokio_rustls::TlsAcceptor::from(Arc::clone(&config)))
    }
}

fn read_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn build(files: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(Iterator::collect)
        .map_err(read_err(&files.cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(read_err(&files.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_err = |source| TlsError::Config {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        source,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let ca_err = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|e| ca_err(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(ca_err("no usable CA certificate".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(config_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate a client presented over mutual TLS (verified against the
/// listener's client CA): its SHA-256 fingerprint, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub String);

/// SHA-256 of a DER certificate, lowercase hex: how keys and admin
/// principals name the certificate bound to them.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, TlsError> {
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(read_err(path))?
        .next()
        .ok_or_else(|| TlsError::NoCertificate {
            path: path.to_owned(),
        })?
        .map_err(read_err(path))?;
    Ok(fingerprint(&cert))
}
