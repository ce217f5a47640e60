//! `palisade keys ...`: key management on the data directory.

use anyhow::{Context, bail};
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

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
