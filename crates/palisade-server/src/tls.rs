//! Inbound TLS on either listener: rustls, certificate and key from PEM
//! files, optional mutual TLS, and reloading on demand (SIGHUP in the
//! binary) without dropping a connection — each new handshake uses the
//! configuration in force when it starts; established connections keep
//! theirs.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use palisade_config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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

    fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
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

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS until `stop`, then lets open connections finish
/// their requests (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsListener>,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: back off, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls.acceptor() else {
            continue;
        };
        let router = router.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCert(fingerprint(c)));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(cert) = &cert {
                    req.extensions_mut().insert(cert.clone());
                }
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {}))
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}
