//! `palisade keys ...`: key management on the data directory.

use anyhow::{Context, bail};
use palisade_server::access_log::rfc3339;
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
            let store = SqliteStore::open_in(&store.data_dir()?)?;
            let (record, key) = store
                .create_key(NewKey { tenant, app, env }, unix_now())
                .await?;
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
            let store = SqliteStore::open_in(&store.data_dir()?)?;
            if !store.revoke_key(&id, unix_now()).await? {
                bail!("no key with id {id}");
            }
            if json {
                println!("{}", json!({"id": id.as_str(), "revoked": true}));
            } else {
                println!("revoked key {id}");
            }
            Ok(())
        }
    }
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
