use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_config::{Config, ModelConfig, ProviderConfig, ProviderKind, SecretRef};
use palisade_mock::{MockOptions, MockServer};
use palisade_server::access_log::MemorySink;
use palisade_server::{Application, Dependencies};
use palisade_store::{NewKey, SqliteStore, Store};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const OPENAI_SECRET: &str = "provider-secret-openai";
pub const ANTHROPIC_SECRET: &str = "provider-secret-anthropic";

pub struct TestApp {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub key: String,
    pub mock: MockServer,
    pub store: SqliteStore,
    pub dir: TempDir,
    /// The access log's lines.
    pub access: MemorySink,
    /// The audit ledger's writer.
    pub journal: Arc<palisade_ledger::Journal>,
    /// Reloads the listeners' TLS files, as SIGHUP does in the binary.
    pub tls: palisade_server::app::TlsReloader,
    /// The configuration it runs with, for [`TestApp::restart`] (which a
    /// test may change first).
    pub config: Config,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn provider(
    name: &str,
    kind: ProviderKind,
    base_url: &str,
    secret_env: &str,
) -> ProviderConfig {
    ProviderConfig {
        api_key: Some(SecretRef::Env(secret_env.into())),
        compliance: attested(),
        ..ProviderConfig::new(name, kind, base_url)
    }
}

/// Facts that satisfy every built-in data class: a SOC 2 report a month
/// old, a BAA, zero retention, no training.
pub fn attested() -> palisade_config::Compliance {
    palisade_config::Compliance {
        soc2_type2_period_end: Some(palisade_config::format_date(
            palisade_store::unix_now() / 86_400 - 30,
        )),
        iso27001: true,
        baa: true,
        zero_retention: true,
        trains_on_data: Some(false),
        ..Default::default()
    }
}

pub fn model(name: &str, provider: &str, upstream: &str) -> ModelConfig {
    ModelConfig {
        price: None,
        name: name.into(),
        provider: provider.into(),
        targets: Vec::new(),
        strategy: Default::default(),
        upstream_model: Some(upstream.into()),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(MockOptions::default(), |_| {}).await
}

/// A gateway with two providers on one mock: `gpt-test` (OpenAI kind) and
/// `claude-test` (Anthropic kind). `tweak` may change the config.
pub async fn spawn_with(mock_options: MockOptions, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_prepared(mock_options, tweak, |_| async {}).await
}

/// [`spawn_with`], and `prepare` runs on the store before the gateway
/// starts.
pub async fn spawn_prepared<F: std::future::Future<Output = ()>>(
    mock_options: MockOptions,
    tweak: impl FnOnce(&mut Config),
    prepare: impl FnOnce(SqliteStore) -> F,
) -> TestApp {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), mock_options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::empty(dir.path().join("data"));
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin_listen = ([127, 0, 0, 1], 0).into();
    config.server.shutdown_grace = Duration::from_secs(5);
    config.providers = vec![
        provider(
            "openai-mock",
            ProviderKind::Openai,
            &mock.base_url(),
            "MOCK_OPENAI_KEY",
        ),
        provider(
            "anthropic-mock",
            ProviderKind::Anthropic,
            &mock.base_url(),
            "MOCK_ANTHROPIC_KEY",
        ),
    ];
    config.models = vec![
        model("gpt-test", "openai-mock", "mock-gpt"),
        model("claude-test", "anthropic-mock", "mock-claude"),
    ];
    tweak(&mut config);

    let store = SqliteStore::open_in(&config.server.data_dir).unwrap();
    let (_, key) = store
        .create_key(
            NewKey {
                tenant: "acme".into(),
                app: "tests".into(),
                env: "dev".into(),
                ..Default::default()
            },
            palisade_store::unix_now(),
        )
        .await
        .unwrap();
    prepare(store.clone()).await;
    let env = test_env;
    let access = MemorySink::default();
    config.ledger.checkpoint_interval = Duration::from_millis(100);
    let (journal, recovery) = palisade_server::audit::open_journal(&config).unwrap();
    let journal = Arc::new(journal);
    let deps = Dependencies {
        store: Arc::new(store.clone()),
        access_log: Arc::new(access.clone()),
        journal: Arc::clone(&journal),
        recovery,
        config_hash: "test-config".into(),
    };
    let app = Application::build(config.clone(), deps, &env)
        .await
        .unwrap();
    let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
    let tls = app.tls_reloader();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        proxy,
        admin,
        key: key.expose().to_owned(),
        mock,
        store,
        dir,
        access,
        journal,
        tls,
        config,
        client: Client::builder(TokioExecutor::new()).build_http(),
        shutdown: Some(tx),
        task: Some(task),
    }
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "MOCK_OPENAI_KEY" => Some(OPENAI_SECRET.to_owned()),
        "MOCK_ANTHROPIC_KEY" => Some(ANTHROPIC_SECRET.to_owned()),
        _ => None,
    }
}

impl TestApp {
    /// Stops the gateway and starts a new one on the same data directory,
    /// configuration and mock provider (new ports), as a restart would.
    pub async fn restart(&mut self) {
        self.shutdown().await.unwrap();
        let (journal, recovery) = palisade_server::audit::open_journal(&self.config).unwrap();
        let journal = Arc::new(journal);
        let deps = Dependencies {
            store: Arc::new(self.store.clone()),
            access_log: Arc::new(self.access.clone()),
            journal: Arc::clone(&journal),
            recovery,
            config_hash: "test-config".into(),
        };
        let app = Application::build(self.config.clone(), deps, &test_env)
            .await
            .unwrap();
        self.proxy = app.proxy_addr();
        self.admin = app.admin_addr();
        self.tls = app.tls_reloader();
        self.journal = journal;
        let (tx, rx) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        })));
        self.shutdown = Some(tx);
    }

    /// A new admin principal's token.
    pub async fn admin_token(&self, role: palisade_store::Role, name: &str) -> String {
        let (_, token) = palisade_store::Store::create_admin(
            &self.store,
            palisade_store::NewAdmin {
                name: name.into(),
                role,
                created_by: "test".into(),
                cert: None,
            },
            palisade_store::unix_now(),
        )
        .await
        .unwrap();
        token.expose().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Sends a request and returns the response head with its body unread.
    pub async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper::Response<Incoming> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed")
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let resp = self.open(method, url, headers, body).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .expect("body timed out")
            .expect("body failed")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// POST with this app's key as a bearer token.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, &[], body).await
    }

    pub async fn post_with(&self, path: &str, extra: &[(&str, &str)], body: &str) -> Reply {
        let auth = format!("Bearer {}", self.key);
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        self.send(Method::POST, &self.url(path), &headers, body.to_owned())
            .await
    }

    /// POST in the Anthropic style: `x-api-key`.
    pub async fn post_anthropic(&self, body: &str, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![
            ("x-api-key", self.key.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        self.send(
            Method::POST,
            &self.url("/v1/messages"),
            &headers,
            body.to_owned(),
        )
        .await
    }

    /// Checkpoints the ledger and returns every entry in it, parsed.
    pub async fn ledger_entries(&self) -> Vec<Value> {
        self.journal.checkpoint().await.unwrap();
        checkpointed_entries(self.journal.dir(), self.journal.verifier_key())
    }

    pub async fn metrics(&self) -> String {
        self.send(
            Method::GET,
            &format!("http://{}/metrics", self.admin),
            &[],
            Bytes::new(),
        )
        .await
        .text()
    }

    /// Sends the shutdown signal and waits for the server to stop.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }
}

/// Reads SSE events from a streaming body until it ends.
pub async fn read_events(body: Incoming) -> Vec<String> {
    let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("stream timed out")
        .expect("stream failed")
        .to_bytes();
    split_events(&String::from_utf8_lossy(&bytes))
}

pub fn split_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The JSON of each `data:` line that is not `[DONE]`.
pub fn data_json(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event data {d}: {e}")))
        .collect()
}

/// The value of a counter or gauge line in Prometheus text output.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every entry of the verified ledger in `dir`, up to its last checkpoint.
pub fn checkpointed_entries(dir: &std::path::Path, verifier_key: &str) -> Vec<Value> {
    let verified = palisade_ledger::verify(dir, verifier_key).unwrap();
    let size = verified.head.size;
    let mut out = Vec::new();
    for b in 0..size.div_ceil(256) {
        let width = (size - b * 256).min(256);
        let data = palisade_ledger::layout::read_tile(dir, None, b, width, None).unwrap();
        for e in palisade_ledger::layout::decode_bundle(&data)
            .unwrap()
            .into_iter()
            .take(width as usize)
        {
            out.push(serde_json::from_slice(e).unwrap());
        }
    }
    out
}
