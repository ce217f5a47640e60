//! `palisade init`: a starter configuration and data directory.

use std::path::Path;

use anyhow::{Context, bail};
use palisade_store::SqliteStore;

const STARTER: &str = r#"# Palisade configuration. Every key is documented in docs/configuration.md.
# Environment variables override any key: PALISADE__SERVER__LISTEN=0.0.0.0:4400

[server]
listen = "127.0.0.1:4400"        # the proxy: /v1/chat/completions, /v1/messages, ...
admin_listen = "127.0.0.1:4401"  # the admin API (/admin/v1), the ledger (/audit), metrics
data_dir = "DATA_DIR"
# max_body_bytes = 8388608
# shutdown_grace = "30s"

[access]
environments = ["prod", "staging", "dev"]
# trusted_proxies = ["10.0.0.0/8"]   # whose X-Forwarded-For is believed
# rotation_period = "90d"            # the access review flags older keys
# rotation_grace = "24h"             # how long a rotated key's old secret works
# disable_unused_after = "90d"       # unset: never

[log]
level = "info"
format = "json"                  # or "text"

# An OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp).
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "env:OPENAI_API_KEY"   # env:NAME or file:PATH, never the key itself
# timeouts = { connect = "5s", first_byte = "60s", idle = "60s", total = "10m" }

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com/v1"
api_key = "env:ANTHROPIC_API_KEY"

[[models]]
name = "gpt-4o-mini"             # what clients ask for
provider = "openai"

[[models]]
name = "claude-sonnet"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
"#;

/// The first admin principal, `admin`, its creation on record.
async fn first_admin(
    config: &palisade_config::Config,
    config_bytes: &[u8],
) -> anyhow::Result<palisade_store::ApiKey> {
    let (journal, _) = palisade_server::audit::open_journal(config)?;
    let journal = std::sync::Arc::new(journal);
    let audit = palisade_server::audit::Audit::new(
        std::sync::Arc::clone(&journal),
        palisade_server::audit::config_hash(config_bytes, &[]),
    );
    let store = SqliteStore::open_in(&config.server.data_dir)?;
    let manager = palisade_server::manage::Manager {
        store: &store,
        audit: &audit,
        config,
        cache: &palisade_server::manage::NoCache,
    };
    let actor = palisade_server::manage::Actor {
        name: "cli:init".into(),
        ticket: None,
    };
    let (_, token) = manager
        .create_admin(
            "admin".into(),
            palisade_store::Role::Admin,
            None,
            &actor,
            palisade_store::unix_now(),
        )
        .await?;
    drop(audit);
    let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    Ok(token)
}

pub async fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("palisade.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; not overwriting it",
            config_path.display()
        );
    }
    let data_dir = dir.join("palisade-data");
    let text = STARTER.replace(
        "DATA_DIR",
        &data_dir.display().to_string().replace('\\', "/"),
    );
    // The starter must itself be a valid configuration.
    let config = palisade_config::Config::from_toml("starter", &text, Vec::new())?;
    SqliteStore::open_in(&data_dir)?;
    let origin = palisade_server::audit::resolve_origin(&config)?;
    let key = palisade_ledger::LedgerKey::load_or_create(
        &palisade_server::audit::key_path(&data_dir),
        &origin,
    )?;
    std::fs::write(&config_path, text.as_bytes())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let token = first_admin(&config, text.as_bytes()).await?;
    println!("wrote {}", config_path.display());
    println!("created {}", data_dir.display());
    println!(
        "ledger verifier key (give it to your auditors): {}",
        key.verifier_key()
    );
    println!();
    println!("first admin token (shown once; Palisade stores only its hash):");
    println!("  {}", token.expose());
    println!();
    println!("next:");
    println!("  export OPENAI_API_KEY=...   # and/or ANTHROPIC_API_KEY");
    println!(
        "  palisade keys create --config {} --tenant acme --app chatbot --env dev",
        config_path.display()
    );
    println!("  palisade serve --config {}", config_path.display());
    Ok(())
}
