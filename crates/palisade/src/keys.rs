//! `palisade keys ...`: key management on the data directory.

use anyhow::{Context, bail};
use palisade_server::access_log::rfc3339;
use palisade_server::audit;
use palisade_store::{KeyId, KeyRecord, NewKey, SqliteStore, Store, unix_now};
use serde_json::json;

use crate::cli::KeysCommand;

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            tenant,
            app,
            env,
            json,
            store,
        } => {
            let config = store.config()?;
            let store = SqliteStore::open_in(&config.server.data_dir)?;
            let (record, key) = store
                .create_key(NewKey { tenant, app, env }, unix_now())
                .await?;
            // The key is not shown until its creation is on record; if it
            // cannot be recorded, it is revoked unseen.
            let fields = json!({
                "actor": actor(), "action": "key.create", "target": record.id.as_str(),
                "after": {"tenant": record.tenant, "app": record.app, "env": record.env},
            });
            if let Err(e) = audit::record_offline(&config, "admin.key_created", fields).await {
                store.revoke_key(&record.id, unix_now()).await?;
                bail!("{e}; the new key was revoked before it was shown");
            }
            if json {
                let mut v = record_json(&record);
                v["key"] = json!(key.expose());
                println!("{v}");
            } else {
                println!(
                    "created key {} for {}/{} ({})",
                    record.id, record.tenant, record.app, record.env
                );
                println!();
                println!("  {}", key.expose());
                println!();
                println!("This is the only time the key is shown; Palisade stores only its hash.");
            }
            Ok(())
        }
        KeysCommand::List { json, store } => {
            let store = SqliteStore::open_in(&store.data_dir()?)?;
            let keys = store.list_keys().await?;
            if json {
                let list: Vec<_> = keys.iter().map(record_json).collect();
                println!("{}", json!({ "keys": list }));
            } else {
                println!(
                    "{:<12}  {:<16}  {:<16}  {:<8}  {:<20}  status",
                    "id", "tenant", "app", "env", "created"
                );
                for k in &keys {
                    let status = match k.revoked_at {
                        Some(t) => format!("revoked {}", rfc3339(t)),
                        None => "active".to_owned(),
                    };
                    println!(
                        "{:<12}  {:<16}  {:<16}  {:<8}  {:<20}  {status}",
                        k.id,
                        k.tenant,
                        k.app,
                        k.env,
                        rfc3339(k.created_at)
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { id, json, store } => {
            let id = KeyId::parse(&id)
                .context("not a key id (12 characters, as shown by `keys list`)")?;
            let config = store.config()?;
            let store = SqliteStore::open_in(&config.server.data_dir)?;
            let Some(record) = store.get_key(&id).await? else {
                bail!("no key with id {id}");
            };
            // On record first: a revocation that cannot be recorded is not made.
            let fields = json!({
                "actor": actor(), "action": "key.revoke", "target": id.as_str(),
                "before": {"tenant": record.tenant, "app": record.app, "env": record.env,
                           "revoked": record.revoked_at.is_some()},
            });
            audit::record_offline(&config, "admin.key_revoked", fields).await?;
            store.revoke_key(&id, unix_now()).await?;
            if json {
                println!("{}", json!({"id": id.as_str(), "revoked": true}));
            } else {
                println!("revoked key {id}");
            }
            Ok(())
        }
    }
}

/// Who acted, as far as the CLI can tell: the local account.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!(
        "cli:{}",
        user.chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect::<String>()
    )
}

fn record_json(k: &KeyRecord) -> serde_json::Value {
    json!({
        "id": k.id.as_str(),
        "tenant": k.tenant,
        "app": k.app,
        "env": k.env,
        "created_at": rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map(rfc3339),
    })
}
