//! Inbound TLS: HTTPS on the listeners, reloading certificates without
//! dropping connections, and mutual TLS mapping client certificates to
//! admin principals and to keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_config::TlsConfig;
use palisade_mock::MockOptions;
use palisade_store::{NewAdmin, Role, Store};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::helpers::*;

/// A test certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn server(&self) -> Leaf {
        self.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes a leaf's certificate and key; returns the TLS section for them.
fn write_tls(dir: &Path, name: &str, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsConfig {
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, &leaf.cert_pem).unwrap();
    std::fs::write(&key_file, &leaf.key_pem).unwrap();
    let client_ca_file = client_ca.map(|ca| {
        let path: PathBuf = dir.join(format!("{name}-clients.pem"));
        std::fs::write(&path, &ca.pem).unwrap();
        path
    });
    TlsConfig {
        cert_file,
        key_file,
        client_ca_file,
    }
}

/// One HTTPS connection to `addr`, trusting `ca`, optionally presenting a
/// client certificate. Returns the sender and the server's certificate.
async fn connect(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Leaf>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        CertificateDer<'static>,
    ),
    std::io::Error,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        CertificateDer::pem_slice_iter(ca.pem.as_bytes()).map(|c| c.unwrap()),
    );
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::try_from(leaf.key_der.clone()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await?;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok((sender, server_cert))
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Value), hyper::Error> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

const CHAT: &str = r#"{"model":"gpt-test","messages":[]}"#;

#[tokio::test]
async fn the_proxy_serves_https_and_reloads_its_certificate_without_dropping_connections() {
    let ca = Ca::new("Palisade test CA");
    let files = tempfile::tempdir().unwrap();
    let first = ca.server();
    let tls = write_tls(files.path(), "proxy", &first, None);
    let app = spawn_with(MockOptions::default(), |c| c.server.tls = Some(tls.clone())).await;
    let auth = format!("Bearer {}", app.key);

    let (mut open, seen) = connect(app.proxy, &ca, None).await.unwrap();
    assert_eq!(seen, first.der);
    let (status, body) = send(
        &mut open,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Plain HTTP to the TLS port gets nowhere.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://{}/healthz", app.proxy))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(plain.request(req).await.is_err());

    // New files, reloaded: new handshakes get the new certificate, the
    // open connection keeps working.
    let second = ca.server();
    write_tls(files.path(), "proxy", &second, None);
    let outcomes = app.tls.reload();
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].1.is_ok());
    let (status, _) = send(
        &mut open,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "the open connection survived the reload");
    let (mut fresh, seen) = connect(app.proxy, &ca, None).await.unwrap();
    assert_eq!(seen, second.der);
    let (status, _) = send(&mut fresh, "GET", "/healthz", &[], "").await.unwrap();
    assert_eq!(status, 200);

    // Broken files: the reload fails and the certificate in force stays.
    std::fs::write(&tls.key_file, "not a key").unwrap();
    let outcomes = app.tls.reload();
    assert!(outcomes[0].1.is_err());
    let (_, seen) = connect(app.proxy, &ca, None).await.unwrap();
    assert_eq!(seen, second.der);

    let entries = app.ledger_entries().await;
    let kinds: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("tls."))
        .collect();
    assert_eq!(kinds, ["tls.reloaded", "tls.reload_failed"]);
}

#[tokio::test]
async fn mutual_tls_maps_client_certificates_to_admins_and_binds_keys() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let outsider_ca = Ca::new("someone else's CA");
    let files = tempfile::tempdir().unwrap();
    let proxy_tls = write_tls(files.path(), "proxy", &server_ca.server(), Some(&client_ca));
    let admin_tls = write_tls(files.path(), "admin", &server_ca.server(), Some(&client_ca));
    let app = spawn_with(MockOptions::default(), |c| {
        c.server.tls = Some(proxy_tls);
        c.server.admin_tls = Some(admin_tls);
        c.server.require_admin_tls = true;
    })
    .await;
    let ops = client_ca.client("ops-laptop");
    let other = client_ca.client("ci-runner");
    let stranger = outsider_ca.client("stranger");

    // No certificate, or one from another CA: no TLS session at all.
    for leaf in [None, Some(&stranger)] {
        let refused = match connect(app.admin, &server_ca, leaf).await {
            Err(_) => true,
            Ok((mut s, _)) => send(&mut s, "GET", "/healthz", &[], "").await.is_err(),
        };
        assert!(refused, "handshake without a trusted client certificate");
    }

    // A certificate bound to an admin principal authenticates as it.
    let ops_fp = palisade_server::tls::fingerprint(&ops.der);
    app.store
        .create_admin(
            NewAdmin {
                name: "ops".into(),
                role: Role::Auditor,
                created_by: "test".into(),
                cert: Some(ops_fp.clone()),
            },
            palisade_store::unix_now(),
        )
        .await
        .unwrap();
    let (mut admin, _) = connect(app.admin, &server_ca, Some(&ops)).await.unwrap();
    let (status, who) = send(&mut admin, "GET", "/admin/v1/whoami", &[], "")
        .await
        .unwrap();
    assert_eq!((status, who["name"].as_str()), (200, Some("ops")), "{who}");
    // Its role still applies.
    let (status, _) = send(&mut admin, "POST", "/admin/v1/keys", &[], "{}")
        .await
        .unwrap();
    assert_eq!(status, 403);
    // A trusted certificate bound to nobody needs a token.
    let (mut unbound, _) = connect(app.admin, &server_ca, Some(&other)).await.unwrap();
    let (status, _) = send(&mut unbound, "GET", "/admin/v1/whoami", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 401);
    let token = app.admin_token(Role::Admin, "root").await;
    let bearer = format!("Bearer {token}");
    let (status, who) = send(
        &mut unbound,
        "GET",
        "/admin/v1/whoami",
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!((status, who["name"].as_str()), (200, Some("root")));

    // A key bound to a certificate works only with it.
    let body = json!({"tenant": "acme", "app": "bot", "env": "dev", "client_cert_sha256": palisade_server::tls::fingerprint(&other.der)});
    let (status, created) = send(
        &mut unbound,
        "POST",
        "/admin/v1/keys",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    let bound_key = format!("Bearer {}", created["key"].as_str().unwrap());
    let (mut with_cert, _) = connect(app.proxy, &server_ca, Some(&other)).await.unwrap();
    let (status, body) = send(
        &mut with_cert,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &bound_key)],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (mut wrong_cert, _) = connect(app.proxy, &server_ca, Some(&ops)).await.unwrap();
    let (status, body) = send(
        &mut wrong_cert,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &bound_key)],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    // An unbound key works with any trusted client certificate.
    let plain_key = format!("Bearer {}", app.key);
    let (status, _) = send(
        &mut wrong_cert,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &plain_key)],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    let entries = app.ledger_entries().await;
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "request.denied" && e["reason"] == "client_cert_mismatch")
    );
    let created_entry = entries
        .iter()
        .find(|e| e["kind"] == "admin.key_created")
        .unwrap();
    assert_eq!(created_entry["actor"], "admin:root");
}

#[tokio::test]
async fn unusable_tls_files_stop_start_up_with_their_path() {
    let files = tempfile::tempdir().unwrap();
    let cert = files.path().join("missing.pem");
    let tls = TlsConfig {
        cert_file: cert.clone(),
        key_file: files.path().join("missing.key"),
        client_ca_file: None,
    };
    let err = palisade_server::tls::TlsListener::load(&tls).err().unwrap();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(palisade_server::tls::TlsListener::load(&tls).is_err());
}

#[tokio::test]
async fn the_binary_reloads_certificates_on_sighup() {
    let ca = Ca::new("Palisade test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.server();
    let tls = write_tls(dir.path(), "admin", &first, None);
    std::fs::write(
        dir.path().join("palisade.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "./data"
require_admin_tls = true

[server.admin_tls]
cert_file = "{}"
key_file = "{}"
"#,
            tls.cert_file.display(),
            tls.key_file.display()
        ),
    )
    .unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--ready-file", ready.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let admin: SocketAddr = loop {
        if let Ok(v) = std::fs::read_to_string(&ready)
            .map_err(|_| ())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|_| ()))
        {
            break v["admin"].as_str().unwrap().parse().unwrap();
        }
        assert!(child.try_wait().unwrap().is_none(), "palisade exited");
        assert!(std::time::Instant::now() < deadline, "no ready file");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (mut open, seen) = connect(admin, &ca, None).await.unwrap();
    assert_eq!(seen, first.der);

    let second = ca.server();
    write_tls(dir.path(), "admin", &second, None);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, seen) = connect(admin, &ca, None).await.unwrap();
        if seen == second.der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The process is still serving, and the connection opened before the
    // reload still works.
    assert!(child.try_wait().unwrap().is_none());
    let (status, _) = send(&mut open, "GET", "/healthz", &[], "").await.unwrap();
    assert_eq!(status, 200);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}
