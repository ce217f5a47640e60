//! The upstream client: one pooled HTTP/1.1 + HTTP/2 client per provider,
//! TLS by rustls with the standard web roots plus the provider's own CA file,
//! certificate verification always on, `TCP_NODELAY` set.
//!
//! Failures are typed: [`UpstreamError`] says which provider failed, how, and
//! whether another attempt could succeed. Nothing downstream matches on
//! message strings.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_config::ProviderConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {path} holds no usable certificate")]
    CaEmpty { path: std::path::PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A TLS client configuration trusting the web roots plus the PEM
/// certificates in `ca_file`. Certificate verification cannot be turned off.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|source| ClientBuildError::CaFile {
                path: path.to_owned(),
                source,
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ClientBuildError::CaEmpty {
                path: path.to_owned(),
            });
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Builds the client for one provider.
pub fn build_client(provider: &ProviderConfig) -> Result<HttpClient, ClientBuildError> {
    let tls = tls_client_config(provider.ca_file.as_deref())?;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(provider.timeouts.connect));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    FirstByte,
    Idle,
    Total,
}

impl TimeoutPhase {
    pub fn label(self) -> &'static str {
        match self {
            Self::FirstByte => "first_byte",
            Self::Idle => "idle",
            Self::Total => "total",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made (refused, DNS, TLS handshake, connect
    /// timeout). Nothing reached the provider.
    Connect,
    Timeout(TimeoutPhase),
    /// The provider answered with a non-success status. `detail` holds the
    /// provider's short error type/code tokens, never its message.
    Status {
        status: u16,
        detail: Option<String>,
    },
    /// The connection broke or the response was malformed.
    Protocol,
    /// A response or event exceeded the gateway's bounds.
    TooLarge,
    /// The target's circuit opened before the attempt; nothing was sent.
    CircuitOpen,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream `{provider}`: {kind:?}")]
pub struct UpstreamError {
    provider: Arc<str>,
    kind: UpstreamErrorKind,
    retry_after: Option<HeaderValue>,
}

impl UpstreamError {
    pub fn new(provider: Arc<str>, kind: UpstreamErrorKind) -> Self {
        Self {
            provider,
            kind,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, value: Option<HeaderValue>) -> Self {
        self.retry_after = value;
        self
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn kind(&self) -> &UpstreamErrorKind {
        &self.kind
    }

    pub fn retry_after(&self) -> Option<&HeaderValue> {
        self.retry_after.as_ref()
    }

    /// Whether the same request could succeed on another attempt or another
    /// provider (used by failover; only while nothing reached the client).
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            UpstreamErrorKind::Connect
            | UpstreamErrorKind::CircuitOpen
            | UpstreamErrorKind::Timeout(TimeoutPhase::FirstByte) => true,
            UpstreamErrorKind::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match &self.kind {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout(TimeoutPhase::FirstByte) => "timeout_first_byte",
            UpstreamErrorKind::Timeout(TimeoutPhase::Idle) => "timeout_idle",
            UpstreamErrorKind::Timeout(TimeoutPhase::Total) => "timeout_total",
            UpstreamErrorKind::Status { status, .. } if *status < 500 => "status_4xx",
            UpstreamErrorKind::Status { .. } => "status_5xx",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::TooLarge => "too_large",
            UpstreamErrorKind::CircuitOpen => "circuit_open",
        }
    }
}

/// The provider's `error.type` and `error.code` (OpenAI) or `error.type`
/// (Anthropic), if they are short plain tokens. Free-text messages are not
/// read: they can quote the prompt.
pub fn error_detail(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
        code: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Option<Inner>,
    }
    let inner = serde_json::from_slice::<Outer>(body).ok()?.error?;
    let token = |v: Option<serde_json::Value>| {
        let s = match v? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let plain = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        plain.then_some(s)
    };
    let parts: Vec<String> = [token(inner.kind), token(inner.code)]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_keeps_only_plain_tokens() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"my SSN is 123-45-6789","type":"invalid_request_error","code":"context_length_exceeded"}}"#),
            Some("invalid_request_error/context_length_exceeded".into())
        );
        assert_eq!(
            error_detail(br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#),
            Some("overloaded_error".into())
        );
        assert_eq!(
            error_detail(br#"{"error":{"type":"has spaces and SSN 123"}}"#),
            None
        );
        assert_eq!(error_detail(b"<html>"), None);
    }

    #[test]
    fn retryability_follows_the_kind() {
        let e = |k| UpstreamError::new("p".into(), k);
        assert!(e(UpstreamErrorKind::Connect).is_retryable());
        assert!(
            e(UpstreamErrorKind::Status {
                status: 503,
                detail: None
            })
            .is_retryable()
        );
        assert!(
            e(UpstreamErrorKind::Status {
                status: 429,
                detail: None
            })
            .is_retryable()
        );
        assert!(
            !e(UpstreamErrorKind::Status {
                status: 400,
                detail: None
            })
            .is_retryable()
        );
        assert!(!e(UpstreamErrorKind::Timeout(TimeoutPhase::Idle)).is_retryable());
    }
}
