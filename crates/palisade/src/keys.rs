//! `palisade keys ...` and `palisade admin ...`.
//!
//! Each command works one of two ways, never both at once:
//! - offline, on the data directory, when no gateway holds it: the command
//!   takes the ledger's lock for its duration, so it is the only writer;
//! - with `--url`, through a running gateway's admin API, which is then
//!   the only writer.
//!
//! Both paths use the same operations (`palisade_server::manage`) and print
//! the same output.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use palisade_config::Config;
use palisade_ledger::OpenError;
use palisade_server::audit::{self, Audit, AuditOpenError};
use palisade_server::manage::{self, Actor, KeyRequest, Manager, NoCache, admin_json, key_json};
use palisade_store::{KeyId, Role, SqliteStore, Store, unix_now};
use serde_json::{Value, json};

use crate::cli::{AdminCommand, KeysCommand, Target};
use crate::remote::Remote;

/// The data directory opened for writing: its store and its ledger, the
/// ledger's lock held until this is dropped.
struct Offline {
    config: Config,
    store: SqliteStore,
    audit: Audit,
}

impl Offline {
    fn open(target: &Target) -> anyhow::Result<Self> {
        let config = target.store.config()?;
        let journal = match audit::open_journal(&config) {
            Ok((journal, _)) => journal,
            Err(AuditOpenError::Journal(OpenError::Locked(_))) => bail!(
                "a gateway is running on {} and is its only writer; run this command through its admin API: \
                 --url http://{} with an admin token in PALISADE_ADMIN_TOKEN",
                config.server.data_dir.display(),
                config.server.admin_listen
            ),
            Err(e) => return Err(e.into()),
        };
        let store = SqliteStore::open_in(&config.server.data_dir)?;
        let file = std::fs::read(&target.store.config).unwrap_or_default();
        let audit = Audit::new(Arc::new(journal), audit::config_hash(&file, &[]));
        Ok(Self {
            config,
            store,
            audit,
        })
    }

    fn manager(&self) -> Manager<'_> {
        Manager {
            store: &self.store,
            audit: &self.audit,
            config: &self.config,
            cache: &NoCache,
        }
    }

    /// Checkpoints what was recorded and releases the ledger.
    async fn close(self) {
        let journal = Arc::clone(self.audit.journal());
        drop(self.audit);
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    }
}

/// Who acts, as far as the CLI can tell: the local account.
fn cli_actor(ticket: Option<String>) -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    Actor {
        name: format!(
            "cli:{}",
            user.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        ),
        ticket,
    }
}

/// The SHA-256 fingerprint of the certificate in a PEM file.
fn cert_fingerprint(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(palisade_server::tls::fingerprint_file(path)?)
}

fn key_id(id: &str) -> anyhow::Result<KeyId> {
    KeyId::parse(id).context("not a key id (12 characters, as shown by `keys list`)")
}

/// Runs `offline` on the data directory, or asks the admin API.
async fn write<F>(target: &Target, offline: F, remote: (&str, Value)) -> anyhow::Result<Value>
where
    F: AsyncFnOnce(&Manager<'_>) -> anyhow::Result<Value>,
{
    match &target.url {
        Some(url) => Remote::new(url)?.post(remote.0, &remote.1).await,
        None => {
            let local = Offline::open(target)?;
            let result = offline(&local.manager()).await;
            local.close().await;
            result
        }
    }
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            tenant,
            app,
            env,
            models,
            endpoints,
            cidr,
            expires,
            max_tokens,
            rpm,
            concurrency,
            tpm,
            daily_tokens,
            monthly_tokens,
            daily_cost,
            monthly_cost,
            cert,
            owner,
            ticket,
            labels,
            json,
            target,
        } => {
            let client_cert_sha256 = cert.as_deref().map(cert_fingerprint).transpose()?;
            let req = KeyRequest {
                tenant,
                app,
                env,
                models,
                endpoints,
                networks: cidr,
                expires_in: expires,
                max_tokens,
                client_cert_sha256,
                rpm,
                concurrency,
                tpm,
                daily_tokens,
                monthly_tokens,
                daily_cost,
                monthly_cost,
                owner,
                ticket,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let body = key_request_json(&req);
            let created = write(
                &target,
                async |m| {
                    let now = unix_now();
                    let actor = cli_actor(req.ticket.clone());
                    let (record, key) = m.create_key(req, &actor, now).await?;
                    let mut v = key_json(&record, now);
                    v["key"] = json!(key.expose());
                    Ok(v)
                },
                ("/keys", body),
            )
            .await?;
            if json {
                println!("{created}");
            } else {
                print_secret(
                    &format!(
                        "created key {} for {}/{} ({})",
                        s(&created["id"]),
                        s(&created["tenant"]),
                        s(&created["app"]),
                        s(&created["env"])
                    ),
                    &created["key"],
                    "This is the only time the key is shown; Palisade stores only its hash.",
                );
            }
            Ok(())
        }
        KeysCommand::List { json, target } => {
            let keys = match &target.url {
                Some(url) => Remote::new(url)?.get("/keys").await?,
                None => {
                    let store = SqliteStore::open_in(&target.store.data_dir()?)?;
                    let now = unix_now();
                    let list: Vec<Value> = store
                        .list_keys()
                        .await?
                        .iter()
                        .map(|k| key_json(k, now))
                        .collect();
                    json!({ "keys": list })
                }
            };
            if json {
                println!("{keys}");
            } else {
                println!(
                    "{:<12}  {:<16}  {:<16}  {:<8}  {:<20}  {:<8}  owner",
                    "id", "tenant", "app", "env", "created", "status"
                );
                for k in keys["keys"].as_array().into_iter().flatten() {
                    println!(
                        "{:<12}  {:<16}  {:<16}  {:<8}  {:<20}  {:<8}  {}",
                        s(&k["id"]),
                        s(&k["tenant"]),
                        s(&k["app"]),
                        s(&k["env"]),
                        s(&k["created_at"]),
                        s(&k["status"]),
                        s(&k["owner"]),
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Show { id, json, target } => {
            let id = key_id(&id)?;
            let key = match &target.url {
                Some(url) => Remote::new(url)?.get(&format!("/keys/{id}")).await?,
                None => {
                    let store = SqliteStore::open_in(&target.store.data_dir()?)?;
                    let Some(k) = store.get_key(&id).await? else {
                        bail!("no key with id {id}");
                    };
                    key_json(&k, unix_now())
                }
            };
            if json {
                println!("{key}");
            } else {
                print_fields(&key, "");
            }
            Ok(())
        }
        KeysCommand::Rotate {
            id,
            grace,
            ticket,
            json,
            target,
        } => {
            let id = key_id(&id)?;
            manage::check_ticket(ticket.as_deref())?;
            let grace_d = grace
                .as_deref()
                .map(palisade_config::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
            let body = json!({"grace": grace, "ticket": ticket});
            let rotated = write(
                &target,
                async |m| {
                    let now = unix_now();
                    let (record, key) = m
                        .rotate_key(&id, grace_d, &cli_actor(ticket.clone()), now)
                        .await?;
                    let mut v = key_json(&record, now);
                    v["key"] = json!(key.expose());
                    Ok(v)
                },
                (&format!("/keys/{id}/rotate"), body),
            )
            .await?;
            if json {
                println!("{rotated}");
            } else {
                let old = match rotated["old_secret_valid_until"].as_str() {
                    Some(t) => format!("The old secret keeps working until {t}."),
                    None => "The old secret no longer works.".to_owned(),
                };
                print_secret(
                    &format!("rotated key {id}"),
                    &rotated["key"],
                    &format!("{old}\nThis is the only time the new key is shown."),
                );
            }
            Ok(())
        }
        KeysCommand::Revoke {
            id,
            ticket,
            json,
            target,
        } => {
            let id = key_id(&id)?;
            manage::check_ticket(ticket.as_deref())?;
            let body = json!({"ticket": ticket});
            let revoked = write(
                &target,
                async |m| {
                    let now = unix_now();
                    let record = m.revoke_key(&id, &cli_actor(ticket.clone()), now).await?;
                    Ok(key_json(&record, now))
                },
                (&format!("/keys/{id}/revoke"), body),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    json!({"id": id.as_str(), "revoked": true, "key": revoked})
                );
            } else {
                println!("revoked key {id}");
            }
            Ok(())
        }
        KeysCommand::Review { json, csv, target } => {
            if let Some(url) = &target.url {
                let remote = Remote::new(url)?;
                if csv {
                    print!("{}", remote.get_text("/keys/review?format=csv").await?);
                } else {
                    let v = remote.get("/keys/review").await?;
                    if json {
                        println!("{v}");
                    } else {
                        print_review_json(&v);
                    }
                }
                return Ok(());
            }
            let config = target.store.config()?;
            let store = SqliteStore::open_in(&config.server.data_dir)?;
            let rows = manage::review(&store.list_keys().await?, &config, unix_now());
            if csv {
                print!("{}", manage::review_csv(&rows));
            } else if json {
                println!("{}", json!({"keys": rows}));
            } else {
                print_review_json(&json!({"keys": rows}));
            }
            Ok(())
        }
    }
}

pub async fn run_admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Create {
            role,
            name,
            cert,
            ticket,
            json,
            target,
        } => {
            let role = Role::parse(&role).context("--role is admin or auditor")?;
            manage::check_ticket(ticket.as_deref())?;
            let cert = cert.as_deref().map(cert_fingerprint).transpose()?;
            let body = json!({"name": name, "role": role.as_str(), "ticket": ticket,
                              "client_cert_sha256": cert});
            let created = write(
                &target,
                async |m| {
                    let (record, token) = m
                        .create_admin(
                            name.clone(),
                            role,
                            cert.clone(),
                            &cli_actor(ticket.clone()),
                            unix_now(),
                        )
                        .await?;
                    let mut v = admin_json(&record);
                    v["token"] = json!(token.expose());
                    Ok(v)
                },
                ("/admins", body),
            )
            .await?;
            if json {
                println!("{created}");
            } else {
                print_secret(
                    &format!(
                        "created {} principal {} ({})",
                        s(&created["role"]),
                        s(&created["name"]),
                        s(&created["id"])
                    ),
                    &created["token"],
                    "This is the only time the token is shown. Use it as `Authorization: Bearer <token>` \
                     on the admin API, or export PALISADE_ADMIN_TOKEN for `--url`.",
                );
            }
            Ok(())
        }
        AdminCommand::List { json, target } => {
            let admins = match &target.url {
                Some(url) => Remote::new(url)?.get("/admins").await?,
                None => {
                    let store = SqliteStore::open_in(&target.store.data_dir()?)?;
                    let list: Vec<Value> =
                        store.list_admins().await?.iter().map(admin_json).collect();
                    json!({ "admins": list })
                }
            };
            if json {
                println!("{admins}");
            } else {
                println!(
                    "{:<12}  {:<20}  {:<8}  {:<8}  {:<20}  last used",
                    "id", "name", "role", "status", "created"
                );
                for a in admins["admins"].as_array().into_iter().flatten() {
                    println!(
                        "{:<12}  {:<20}  {:<8}  {:<8}  {:<20}  {}",
                        s(&a["id"]),
                        s(&a["name"]),
                        s(&a["role"]),
                        s(&a["status"]),
                        s(&a["created_at"]),
                        s(&a["last_used_at"])
                    );
                }
            }
            Ok(())
        }
        AdminCommand::Revoke {
            id,
            ticket,
            json,
            target,
        } => {
            let id = key_id(&id)?;
            manage::check_ticket(ticket.as_deref())?;
            let body = json!({"ticket": ticket});
            let revoked = write(
                &target,
                async |m| {
                    let record = m
                        .revoke_admin(&id, &cli_actor(ticket.clone()), unix_now())
                        .await?;
                    Ok(admin_json(&record))
                },
                (&format!("/admins/{id}/revoke"), body),
            )
            .await?;
            if json {
                println!("{revoked}");
            } else {
                println!("revoked admin principal {id}");
            }
            Ok(())
        }
    }
}

/// The admin API's body for a key request.
fn key_request_json(r: &KeyRequest) -> Value {
    let mut v = json!({"tenant": r.tenant, "app": r.app, "env": r.env});
    let mut set = |k: &str, value: Value| {
        if !value.is_null() {
            v[k] = value;
        }
    };
    set("models", json!(r.models));
    set("endpoints", json!(r.endpoints));
    set("networks", json!(r.networks));
    set("expires_in", json!(r.expires_in));
    set("max_tokens", json!(r.max_tokens));
    set("client_cert_sha256", json!(r.client_cert_sha256));
    set("rpm", json!(r.rpm));
    set("concurrency", json!(r.concurrency));
    set("tpm", json!(r.tpm));
    set("daily_tokens", json!(r.daily_tokens));
    set("monthly_tokens", json!(r.monthly_tokens));
    set("daily_cost", json!(r.daily_cost));
    set("monthly_cost", json!(r.monthly_cost));
    set("owner", json!(r.owner));
    set("ticket", json!(r.ticket));
    if !r.labels.is_empty() {
        v["labels"] = json!(r.labels);
    }
    v
}

/// A key or token, shown once, between a headline and a note.
fn print_secret(headline: &str, secret: &Value, note: &str) {
    println!("{headline}");
    println!();
    println!("  {}", s(secret));
    println!();
    println!("{note}");
}

/// A JSON string's text, or `-` for null.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_fields(v: &Value, indent: &str) {
    for (k, value) in v.as_object().into_iter().flatten() {
        match value {
            Value::Object(_) => {
                println!("{indent}{k}:");
                print_fields(value, &format!("{indent}  "));
            }
            Value::Array(items) => println!(
                "{indent}{k}: {}",
                items.iter().map(s).collect::<Vec<_>>().join(", ")
            ),
            _ => println!("{indent}{k}: {}", s(value)),
        }
    }
}

fn print_review_json(v: &Value) {
    println!(
        "{:<12}  {:<12}  {:<12}  {:<6}  {:<8}  {:<14}  {:>4}  {:>6}  {:<10}  flags",
        "id", "tenant", "app", "env", "status", "owner", "age", "unused", "rotate by"
    );
    for r in v["keys"].as_array().into_iter().flatten() {
        let flags: Vec<String> = r["flags"].as_array().into_iter().flatten().map(s).collect();
        println!(
            "{:<12}  {:<12}  {:<12}  {:<6}  {:<8}  {:<14}  {:>3}d  {:>5}d  {:<10}  {}",
            s(&r["id"]),
            s(&r["tenant"]),
            s(&r["app"]),
            s(&r["env"]),
            s(&r["status"]),
            s(&r["owner"]),
            s(&r["age_days"]),
            s(&r["unused_days"]),
            s(&r["rotation_due"]).get(..10).unwrap_or("-"),
            flags.join(" ")
        );
    }
}

/// `palisade usage`: requests and tokens per day, tenant, app, key and model.
pub async fn usage(
    from: Option<String>,
    to: Option<String>,
    json: bool,
    csv: bool,
    target: &Target,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(f) = &from {
        query.push(format!("from={f}"));
    }
    if let Some(t) = &to {
        query.push(format!("to={t}"));
    }
    let rows: Vec<Value> = match &target.url {
        Some(url) => {
            let remote = Remote::new(url)?;
            if csv {
                query.push("format=csv".into());
                print!(
                    "{}",
                    remote
                        .get_text(&format!("/usage?{}", query.join("&")))
                        .await?
                );
                return Ok(());
            }
            let v = remote.get(&format!("/usage?{}", query.join("&"))).await?;
            v["usage"].as_array().cloned().unwrap_or_default()
        }
        None => {
            let config = target.store.config()?;
            let data_dir = &config.server.data_dir;
            let key = palisade_ledger::LedgerKey::load(&palisade_server::audit::key_path(data_dir))
                .context(
                    "no ledger yet: `palisade init` or the first `palisade serve` creates it",
                )?;
            let store = SqliteStore::open_in(data_dir)?;
            let rows = palisade_server::usage::report(
                &store,
                &palisade_server::audit::ledger_dir(data_dir),
                key.verifier_key(),
                from,
                to,
                &|m| palisade_server::usage::price_of(&config, m),
            )
            .await?;
            if csv {
                print!("{}", palisade_server::usage::csv(&rows));
                return Ok(());
            }
            rows.iter().map(|r| json!(r)).collect()
        }
    };
    if json {
        println!("{}", json!({ "usage": rows }));
        return Ok(());
    }
    println!(
        "{:<10}  {:<12}  {:<12}  {:<12}  {:<16}  {:>8}  {:>10}  {:>10}  {:>10}",
        "day", "tenant", "app", "key", "model", "requests", "prompt", "completion", "cost"
    );
    for r in &rows {
        println!(
            "{:<10}  {:<12}  {:<12}  {:<12}  {:<16}  {:>8}  {:>10}  {:>10}  {:>10}",
            s(&r["day"]),
            s(&r["tenant"]),
            s(&r["app"]),
            s(&r["key_id"]),
            s(&r["model"]),
            s(&r["requests"]),
            s(&r["prompt_tokens"]),
            s(&r["completion_tokens"]),
            s(&r["cost"])
        );
    }
    Ok(())
}
