//! `palisade init`: a starter configuration and data directory.

use std::path::Path;

use anyhow::{Context, bail};
use palisade_store::SqliteStore;

const STARTER: &str = r#"# Palisade configuration. Every key is documented in docs/configuration.md.
# Environment variables override any key: PALISADE__SERVER__LISTEN=0.0.0.0:4400

[server]
listen = "127.0.0.1:4400"        # the proxy: /v1/chat/completions, /v1/messages, ...
admin_listen = "127.0.0.1:4401"  # metrics
data_dir = "DATA_DIR"
# max_body_bytes = 8388608
# shutdown_grace = "30s"

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

pub fn init(dir: &Path) -> anyhow::Result<()> {
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
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("wrote {}", config_path.display());
    println!("created {}", data_dir.display());
    println!(
        "ledger verifier key (give it to your auditors): {}",
        key.verifier_key()
    );
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
