//! Upstream TLS: verification is always on; a provider's `ca_file` adds
//! trust roots for private certificate authorities.

use std::sync::Arc;

use palisade_config::ProviderKind;
use palisade_mock::MockOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::helpers::*;

/// A private CA and an HTTPS mock provider whose certificate it signed.
struct TlsProvider {
    ca_pem: String,
    base_url: String,
    /// The HTTP version of each request the provider received.
    versions: Arc<std::sync::Mutex<Vec<http::Version>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn tls_provider() -> TlsProvider {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Palisade test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&versions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = palisade_mock::router(MockOptions::default());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                // Failed handshakes (an untrusting client) just end here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(req.version());
                        let mut router = router.clone();
                        async move { tower::Service::call(&mut router, req).await }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    TlsProvider {
        ca_pem: ca.pem(),
        base_url: format!("https://127.0.0.1:{}/v1", addr.port()),
        versions,
        _task: task,
    }
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_through_ca_file() {
    let tls = tls_provider().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_path, &tls.ca_pem).unwrap();

    let base = tls.base_url.clone();
    let app = spawn_with(MockOptions::default(), move |c| {
        let mut trusted = provider(
            "tls-trusted",
            ProviderKind::Openai,
            &base,
            "MOCK_OPENAI_KEY",
        );
        trusted.ca_file = Some(ca_path);
        c.providers.push(trusted);
        c.providers.push(provider(
            "tls-untrusted",
            ProviderKind::Openai,
            &base,
            "MOCK_OPENAI_KEY",
        ));
        c.models
            .push(model("via-trusted", "tls-trusted", "mock-gpt"));
        c.models
            .push(model("via-untrusted", "tls-untrusted", "mock-gpt"));
    })
    .await;

    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"via-trusted","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "mock-gpt");
    // ALPN negotiated HTTP/2 with the provider.
    assert_eq!(*tls.versions.lock().unwrap(), vec![http::Version::HTTP_2]);
    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"via-trusted","stream":true}"#,
        )
        .await;
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());

    // The same server without the CA: the certificate is refused and
    // nothing is sent.
    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"via-untrusted","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn an_unusable_ca_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "this is not PEM").unwrap();
    let mut config = palisade_config::Config::empty(dir.path().join("data"));
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin_listen = ([127, 0, 0, 1], 0).into();
    let mut p = provider(
        "private",
        ProviderKind::Openai,
        "https://127.0.0.1:1/v1",
        "K",
    );
    p.api_key = None;
    p.ca_file = Some(bad);
    config.providers.push(p);
    let store = palisade_store::SqliteStore::open_in(&config.server.data_dir).unwrap();
    let (journal, recovery) = palisade_server::audit::open_journal(&config).unwrap();
    let deps = palisade_server::Dependencies {
        store: Arc::new(store),
        access_log: Arc::new(palisade_server::access_log::MemorySink::default()),
        journal: Arc::new(journal),
        recovery,
        config_hash: String::new(),
    };
    let err = palisade_server::Application::build(config, deps, &|_| None)
        .await
        .err()
        .expect("start-up must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("private") && msg.contains("not-a-cert.pem"),
        "{msg}"
    );
}
