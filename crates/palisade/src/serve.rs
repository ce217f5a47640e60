//! `palisade serve`, `serve --demo` and `palisade mock`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_config::{Config, LogFormat};
use palisade_mock::{MockOptions, MockServer};
use palisade_server::{Application, Dependencies, audit};
use palisade_store::{NewAdmin, NewKey, Role, SqliteStore, Store, unix_now};
use serde_json::json;

use crate::cli::{self, MockArgs, ServeArgs};
use crate::logging::{FlushGuard, LogSink};

const DEMO_DIR: &str = "./palisade-demo";
const DEMO_TENANT: &str = "demo";
const DEMO_APP: &str = "quickstart";
const DEMO_ADMIN: &str = "demo-admin";

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let env = cli::process_env();
    let lookup = |name: &str| std::env::var(name).ok();
    if args.demo {
        return demo(args.ready_file.as_deref(), env).await;
    }
    let config = Config::load(&args.config, env.clone())?;
    let (sink, _log) = init_logging(&config);
    let file_bytes = std::fs::read(&args.config).unwrap_or_default();
    let (journal, recovery) = audit::open_journal(&config)?;
    let deps = Dependencies {
        store: Arc::new(SqliteStore::open_in(&config.server.data_dir)?),
        access_log: Arc::new(sink),
        journal: Arc::new(journal),
        recovery,
        config_hash: audit::config_hash(&file_bytes, &env),
    };
    let app = Application::build(config, deps, &lookup).await?;
    tokio::spawn(reload_on_sighup(app.tls_reloader()));
    announce(&app, args.ready_file.as_deref())?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

/// SIGHUP reloads the listeners' TLS certificates and keys; connections
/// already open are not dropped.
async fn reload_on_sighup(reloader: palisade_server::app::TlsReloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if reloader.reload().is_empty() {
                tracing::info!("SIGHUP: no TLS listener to reload");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// `serve --demo`: a built-in provider on a loopback port, embedded storage
/// in ./palisade-demo, a fresh demo key. Needs no network and no setup.
async fn demo(ready_file: Option<&Path>, env: Vec<(String, String)>) -> anyhow::Result<()> {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockOptions::default())
        .await
        .context("cannot start the demo provider")?;
    let text = format!(
        r#"
[server]
data_dir = "{DEMO_DIR}"
shutdown_grace = "5s"

[log]
format = "text"

[[providers]]
name = "demo-openai"
kind = "openai"
base_url = "{base}"
region = "us"
compliance = {{ soc2_type2_period_end = "{report}", iso27001 = true, zero_retention = true, trains_on_data = false }}

[[providers]]
name = "demo-anthropic"
kind = "anthropic"
base_url = "{base}"
region = "eu"
compliance = {{ soc2_type2_period_end = "{report}", iso27001 = true, baa = true, zero_retention = true, trains_on_data = false }}

[[models]]
name = "demo"
provider = "demo-openai"
upstream_model = "palisade-demo-1"

[[models]]
name = "demo-claude"
provider = "demo-anthropic"
upstream_model = "palisade-demo-claude-1"
"#,
        base = mock.base_url(),
        // A report whose period ended three months ago.
        report = palisade_config::format_date(palisade_server::routing::today() - 90)
    );
    let config = Config::from_toml("demo configuration", &text, env.clone())?;
    let (sink, _log) = init_logging(&config);
    let store = SqliteStore::open_in(&config.server.data_dir)?;
    // One demo key at a time: earlier ones are revoked.
    for old in store.list_keys().await? {
        if old.tenant == DEMO_TENANT && old.app == DEMO_APP && !old.is_revoked() {
            store.revoke_key(&old.id, unix_now()).await?;
        }
    }
    let (_, key) = store
        .create_key(
            NewKey {
                tenant: DEMO_TENANT.into(),
                app: DEMO_APP.into(),
                env: "dev".into(),
                owner: Some("demo".into()),
                created_by: "demo".into(),
                ..NewKey::default()
            },
            unix_now(),
        )
        .await?;
    for old in store.list_admins().await? {
        if old.name == DEMO_ADMIN && old.revoked_at.is_none() {
            store.revoke_admin(&old.id, unix_now()).await?;
        }
    }
    let (_, admin_token) = store
        .create_admin(
            NewAdmin {
                name: DEMO_ADMIN.into(),
                role: Role::Admin,
                created_by: "demo".into(),
                cert: None,
            },
            unix_now(),
        )
        .await?;
    let lookup = |_: &str| None;
    let (journal, recovery) = audit::open_journal(&config)?;
    let deps = Dependencies {
        store: Arc::new(store),
        access_log: Arc::new(sink),
        journal: Arc::new(journal),
        recovery,
        config_hash: audit::config_hash(text.as_bytes(), &env),
    };
    let app = Application::build(config, deps, &lookup).await?;
    let proxy = app.proxy_addr();
    println!(
        r#"
Palisade demo gateway
  proxy  http://{proxy}   (OpenAI and Anthropic APIs)
  admin  http://{admin}/admin/v1   (admin API; /metrics, /audit/checkpoint)
  models demo (OpenAI dialect), demo-claude (Anthropic dialect)
  data   {DEMO_DIR}

Demo API key (shown once; a new one each start):
  {key}

Try it:
  curl -s http://{proxy}/v1/chat/completions \
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
    -d '{{"model":"demo","messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -sN http://{proxy}/v1/messages \
    -H "x-api-key: {key}" -H "Content-Type: application/json" \
    -d '{{"model":"demo-claude","max_tokens":64,"stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

Demo admin token (role admin; a new one each start):
  {admin_token}

  curl -s http://{admin}/admin/v1/keys/review -H "Authorization: Bearer {admin_token}"
  curl -s http://{admin}/admin/v1/providers/review -H "Authorization: Bearer {admin_token}"

Ctrl-C stops the gateway.
"#,
        admin = app.admin_addr(),
        key = key.expose(),
        admin_token = admin_token.expose()
    );
    announce(&app, ready_file)?;
    app.run_until(shutdown_signal()).await?;
    drop(mock);
    Ok(())
}

/// `palisade mock`: the demo provider on its own, for benchmarks.
pub async fn mock(args: MockArgs) -> anyhow::Result<()> {
    let options = MockOptions {
        latency: Duration::from_millis(args.latency_ms),
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        words_per_chunk: args.words_per_chunk,
        reply_words: args.reply_words,
        status: None,
    };
    let server = MockServer::start(args.listen, options)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("mock provider listening on {}", server.base_url());
    if let Some(path) = &args.ready_file {
        cli::write_atomically(
            path,
            json!({"addr": server.addr().to_string()})
                .to_string()
                .as_bytes(),
        )?;
    }
    shutdown_signal().await;
    Ok(())
}

fn announce(app: &Application, ready_file: Option<&Path>) -> anyhow::Result<()> {
    tracing::info!(proxy = %app.proxy_addr(), admin = %app.admin_addr(), "listening");
    if let Some(path) = ready_file {
        let body =
            json!({"proxy": app.proxy_addr().to_string(), "admin": app.admin_addr().to_string()});
        cli::write_atomically(path, body.to_string().as_bytes())?;
    }
    Ok(())
}

/// Diagnostics and the access log go to stderr through one [`LogSink`];
/// hold the returned guard until the process ends so that buffered lines
/// are written.
fn init_logging(config: &Config) -> (LogSink, FlushGuard) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = LogSink::new(Box::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    // A second initialisation (never in the binary) is harmless.
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    (writer, guard)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
