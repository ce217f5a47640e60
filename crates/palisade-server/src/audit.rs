//! What the gateway writes into the audit ledger, and when.
//!
//! Entries are canonical JSON objects with `schema: "palisade.audit/v1"`,
//! a `kind`, the `time` and the `node` (the ledger's origin). They hold
//! metadata only: never prompt or completion text, never key material.
//!
//! | kind | written |
//! |---|---|
//! | `ledger.started` | at start, with what crash recovery found |
//! | `config.loaded` | at start: the config hash and what it declares |
//! | `request.received` | after routing, **before** anything is sent upstream; the request waits for it (fail closed) |
//! | `request.completed` | when the exchange ends, however it ends |
//! | `request.denied` | for every refused request (bad key, bad input, unknown model, …) |

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use palisade_config::{Config, LedgerDurability};
use palisade_ledger::{Durability, Journal, JournalConfig, JournalError, LedgerKey, Recovery};
use serde_json::{Value, json};

pub use palisade_ledger::canonical::SCHEMA;

#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    #[error("cannot set up the ledger's node id in {path}: {source}")]
    NodeId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] palisade_ledger::KeyError),
    #[error(
        "the ledger key in {path} is for origin `{found}`, but the configured origin is `{configured}`; a new origin needs a new data directory"
    )]
    OriginChanged {
        path: std::path::PathBuf,
        found: String,
        configured: String,
    },
    #[error(transparent)]
    Journal(#[from] palisade_ledger::OpenError),
}

/// Where a data directory keeps its ledger.
pub fn ledger_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("ledger")
}

/// Where a data directory keeps the ledger's private key (outside the
/// ledger directory, whose contents are public).
pub fn key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("ledger.key")
}

/// The configured origin, or `<hostname>/palisade/<node-id>`.
pub fn resolve_origin(config: &Config) -> Result<String, AuditOpenError> {
    if !config.ledger.origin.is_empty() {
        return Ok(config.ledger.origin.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    Ok(format!(
        "{host}/palisade/{}",
        node_id(&config.server.data_dir)?
    ))
}

/// A short random id made once per data directory.
fn node_id(data_dir: &Path) -> Result<String, AuditOpenError> {
    let path = data_dir.join("node-id");
    let fail = |source| AuditOpenError::NodeId {
        path: path.clone(),
        source,
    };
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(id.to_owned());
        }
    }
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{id}\n")).map_err(fail)?;
    Ok(id)
}

/// Loads (or creates) the ledger key and opens the journal for `config`.
pub fn open_journal(config: &Config) -> Result<(Journal, Recovery), AuditOpenError> {
    let data_dir = &config.server.data_dir;
    let origin = resolve_origin(config)?;
    let key_file = key_path(data_dir);
    let key = LedgerKey::load_or_create(&key_file, &origin)?;
    if key.name() != origin {
        return Err(AuditOpenError::OriginChanged {
            path: key_file,
            found: key.name().to_owned(),
            configured: origin,
        });
    }
    let journal_config = JournalConfig {
        durability: match config.ledger.durability {
            LedgerDurability::Strict => Durability::Strict,
            LedgerDurability::Relaxed => Durability::Relaxed,
        },
        checkpoint_interval: config.ledger.checkpoint_interval,
        head_file: Some(data_dir.join("ledger.head")),
    };
    Ok(Journal::open(&ledger_dir(data_dir), key, journal_config)?)
}

/// The gateway's writer of audit entries.
pub struct Audit {
    journal: Arc<Journal>,
    config_hash: String,
}

/// A `request.received` entry's fields.
pub struct Received<'a> {
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub app: &'a str,
    pub env: &'a str,
    pub key_id: &'a str,
    pub source: Option<IpAddr>,
    pub endpoint: &'a str,
    pub dialect: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub stream: bool,
    /// Data protection's counts by kind and action.
    pub detections: Option<&'a Value>,
    /// Routing's decision, when there was a choice or an exclusion.
    pub route: Option<&'a Value>,
}

/// A `request.completed` entry's fields.
pub struct Completed<'a> {
    pub request_id: &'a str,
    pub received_seq: u64,
    pub status: u16,
    pub outcome: &'a str,
    pub error: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_us: u64,
    pub upstream_latency_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_disconnected: bool,
    /// What data protection found in the answer.
    pub response_detections: Option<&'a Value>,
    /// The provider that answered, and the attempts that failed before,
    /// when the first did not.
    pub failover: Option<(&'a str, &'a Value)>,
}

/// A `request.denied` entry's fields.
pub struct Denied<'a> {
    pub request_id: &'a str,
    /// What data protection found, when it refused the request.
    pub detections: Option<&'a Value>,
    pub reason: &'a str,
    /// Routing's exclusions, when no target was left.
    pub route: Option<&'a Value>,
    pub status: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub key_id: &'a str,
    pub source: Option<IpAddr>,
}

fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Audit {
    pub fn new(journal: Arc<Journal>, config_hash: String) -> Self {
        Self {
            journal,
            config_hash,
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    fn entry(&self, kind: &str, fields: Value) -> Vec<u8> {
        // Entries are built here from integers and strings only.
        palisade_ledger::canonical::entry(kind, self.journal.origin(), fields).unwrap_or_default()
    }

    /// Records an entry and waits until it is recorded.
    pub async fn record(&self, kind: &str, fields: Value) -> Result<u64, JournalError> {
        self.journal.append(self.entry(kind, fields)).await
    }

    /// Queues an entry; it is written with the next group.
    pub fn submit(&self, kind: &str, fields: Value) {
        if let Err(e) = self.journal.submit(self.entry(kind, fields)) {
            tracing::error!(target: "palisade::audit", kind, error = %e, "audit entry not recorded");
        }
    }

    /// `ledger.started`, `ledger.recovered` when crash recovery found
    /// anything, and `config.loaded` with what changed since the previous
    /// start on this data directory. Awaited: the gateway does not serve
    /// until they are recorded.
    pub async fn record_start(
        &self,
        config: &Config,
        recovery: &Recovery,
    ) -> Result<(), JournalError> {
        self.record(
            "ledger.started",
            json!({"size": recovery.size, "version": env!("CARGO_PKG_VERSION")}),
        )
        .await?;
        if recovery.replayed > 0 || recovery.truncated_bytes > 0 {
            self.record(
                "ledger.recovered",
                json!({"replayed": recovery.replayed, "truncated_bytes": recovery.truncated_bytes}),
            )
            .await?;
        }
        let summary_path = config.server.data_dir.join("config-summary.json");
        let current = config_summary(config);
        let previous: Option<Value> = std::fs::read(&summary_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let changes = previous.as_ref().map(|p| config_changes(p, &current));
        self.record(
            "config.loaded",
            json!({
                "config_hash": self.config_hash,
                "providers": bounded_list(&current["providers"]),
                "models": bounded_list(&current["models"]),
                "first_load": previous.is_none(),
                "changes": changes,
            }),
        )
        .await?;
        // A provider whose attested facts changed is recorded on its own:
        // routing decisions from here on rest on the new facts.
        if let Some(previous) = &previous {
            for (name, before, after) in facts_changes(previous, &current) {
                self.record(
                    "providers.facts_changed",
                    json!({"provider": name, "before": before, "after": after}),
                )
                .await?;
            }
        }
        // Best effort: a missing summary only makes the next load a "first".
        let _ = std::fs::write(&summary_path, current.to_string());
        Ok(())
    }

    pub async fn received(&self, r: &Received<'_>) -> Result<u64, JournalError> {
        let mut fields = json!({
                "request_id": r.request_id,
                "tenant": r.tenant,
                "app": r.app,
                "env": r.env,
                "key_id": r.key_id,
                "source": r.source.map(|s| s.to_string()),
                "endpoint": r.endpoint,
                "dialect": r.dialect,
                "model": bounded(r.model, 256),
                "provider": r.provider,
                "upstream_model": bounded(r.upstream_model, 256),
                "stream": r.stream,
                "config_hash": self.config_hash,
        });
        if let Some(found) = r.detections {
            fields["detections"] = found.clone();
        }
        if let Some(route) = r.route {
            fields["route"] = route.clone();
        }
        self.record("request.received", fields).await
    }

    pub fn completed(&self, c: &Completed<'_>) {
        let mut fields = json!({
                "request_id": c.request_id,
                "received_seq": c.received_seq,
                "status": c.status,
                "outcome": c.outcome,
                "error": c.error,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens,
                "latency_us": c.latency_us,
                "upstream_latency_us": c.upstream_latency_us,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "client_disconnected": c.client_disconnected,
        });
        if let Some(found) = c.response_detections {
            fields["response_detections"] = found.clone();
        }
        if let Some((provider, failed)) = c.failover {
            fields["provider"] = json!(provider);
            fields["failed_attempts"] = failed.clone();
        }
        self.submit("request.completed", fields);
    }

    /// Failed authentications from `source` passed the configured rate:
    /// its requests are refused for a while without being checked.
    pub fn throttled(&self, source: IpAddr, access: &palisade_config::AccessConfig) {
        self.submit(
            "auth.throttled",
            json!({
                "source": source.to_string(),
                "failed_auth_per_minute": access.failed_auth_per_minute,
                "failed_auth_burst": access.failed_auth_burst,
            }),
        );
    }

    pub fn denied(&self, d: &Denied<'_>) {
        let mut fields = json!({
                "request_id": d.request_id,
                "reason": d.reason,
                "status": d.status,
                "method": d.method,
                "path": bounded(d.path, 200),
                "key_id": d.key_id,
                "source": d.source.map(|s| s.to_string()),
        });
        if let Some(found) = d.detections {
            fields["detections"] = found.clone();
        }
        if let Some(route) = d.route {
            fields["route"] = route.clone();
        }
        self.submit("request.denied", fields);
    }
}

/// Lists in entries are cut to this many items, with the total beside them,
/// so that an entry stays well under the 64 KiB bundle limit.
pub const MAX_LIST: usize = 100;

/// `{"items": [...first MAX_LIST], "total": n}`.
fn bounded_list(list: &Value) -> Value {
    let items = list.as_array().cloned().unwrap_or_default();
    let total = items.len();
    json!({"items": items.into_iter().take(MAX_LIST).collect::<Vec<_>>(), "total": total})
}

/// What a configuration declares, as compared between loads.
fn config_summary(config: &Config) -> Value {
    let providers: Vec<Value> = config
        .providers
        .iter()
        .map(|p| {
            let c = &p.compliance;
            json!({"name": p.name, "kind": p.kind.as_str(), "base_url": p.base_url,
                   "api_version": p.api_version, "credential": p.api_key.as_ref().map(ToString::to_string),
                   "facts": {"region": p.region, "soc2_type2_period_end": c.soc2_type2_period_end,
                             "iso27001": c.iso27001, "baa": c.baa, "zero_retention": c.zero_retention,
                             "trains_on_data": c.trains_on_data,
                             "confidential_computing": c.confidential_computing,
                             "subprocessors": c.subprocessors}})
        })
        .collect();
    let models: Vec<Value> = config
        .models
        .iter()
        .map(|m| {
            let targets: Vec<Value> = m
                .targets()
                .iter()
                .map(|t| json!({"provider": t.provider, "upstream_model": m.target_model(t), "weight": t.weight}))
                .collect();
            let first = m.targets().into_iter().next().map(|t| t.provider);
            json!({"name": m.name, "provider": first, "upstream_model": m.upstream_model(),
                   "targets": targets, "strategy": format!("{:?}", m.strategy).to_lowercase()})
        })
        .collect();
    json!({"providers": providers, "models": models})
}

/// Providers in both summaries whose facts differ: (name, before, after).
fn facts_changes(previous: &Value, current: &Value) -> Vec<(String, Value, Value)> {
    let facts = |v: &Value| -> std::collections::BTreeMap<String, Value> {
        v["providers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["facts"].clone())))
            .collect()
    };
    let (old, new) = (facts(previous), facts(current));
    new.into_iter()
        .filter_map(|(name, after)| {
            let before = old.get(&name)?;
            // Summaries written before facts were recorded have none.
            (!before.is_null() && *before != after).then(|| (name, before.clone(), after))
        })
        .collect()
}

/// Names added, removed and changed, per section, between two summaries.
fn config_changes(previous: &Value, current: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for section in ["providers", "models"] {
        let index = |v: &Value| -> std::collections::BTreeMap<String, Value> {
            v[section]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| Some((item["name"].as_str()?.to_owned(), item.clone())))
                .collect()
        };
        let (old, new) = (index(previous), index(current));
        let added: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
        let removed: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        let changed: Vec<&String> = new
            .keys()
            .filter(|k| old.get(*k).is_some_and(|o| o != &new[*k]))
            .collect();
        out.insert(
            section.to_owned(),
            json!({
                "added": bounded_list(&json!(added)),
                "removed": bounded_list(&json!(removed)),
                "changed": bounded_list(&json!(changed)),
            }),
        );
    }
    Value::Object(out)
}

/// SHA-256 (hex) of the configuration source: the file's bytes and the
/// `PALISADE__` overrides in force, sorted.
pub fn config_hash(file_bytes: &[u8], env: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(file_bytes);
    let mut overrides: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(palisade_config::ENV_PREFIX))
        .collect();
    overrides.sort();
    for (k, v) in overrides {
        h.update(b"\n");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_changes_name_what_was_added_removed_and_changed() {
        let before = json!({
            "providers": [{"name": "a", "base_url": "https://a"}, {"name": "b", "base_url": "https://b"}],
            "models": [{"name": "m1", "provider": "a"}],
        });
        let after = json!({
            "providers": [{"name": "a", "base_url": "https://a2"}, {"name": "c", "base_url": "https://c"}],
            "models": [{"name": "m1", "provider": "a"}],
        });
        let c = config_changes(&before, &after);
        assert_eq!(c["providers"]["added"]["items"], json!(["c"]));
        assert_eq!(c["providers"]["removed"]["items"], json!(["b"]));
        assert_eq!(c["providers"]["changed"]["items"], json!(["a"]));
        assert_eq!(c["models"]["changed"]["total"], 0);
    }

    #[test]
    fn long_lists_are_cut_with_their_total() {
        let long: Vec<u32> = (0..250).collect();
        let b = bounded_list(&json!(long));
        assert_eq!(b["items"].as_array().unwrap().len(), MAX_LIST);
        assert_eq!(b["total"], 250);
    }
}
