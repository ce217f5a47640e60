//! The search index of the audit ledger, kept in the store.
//!
//! The indexer reads entries back from the ledger's checkpointed bundles
//! and writes one row per entry — off the request path entirely: requests
//! only ever append to the ledger. A `request.completed` row takes tenant,
//! app, environment, key and model from its `request.received` entry so
//! that searches by tenant find both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_store::{AuditRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the ledger: {0}")]
    Ledger(String),
}

const CHUNK: u64 = 4096;

/// The fields of an entry the index keeps.
#[derive(serde::Deserialize)]
struct Indexed<'a> {
    #[serde(borrow)]
    time: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tenant: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    app: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    env: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    status: Option<u64>,
    received_seq: Option<u64>,
}

/// Runs a read of the ledger's files on the blocking pool.
async fn read_ledger<T, E>(
    read: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, IndexError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| IndexError::Ledger(e.to_string()))?
        .map_err(|e| IndexError::Ledger(e.to_string()))
}

/// Indexes every checkpointed entry not yet in the index. Returns one past
/// the last indexed sequence number.
pub async fn catch_up(
    store: &dyn Store,
    ledger_dir: &Path,
    verifier_key: &str,
) -> Result<u64, IndexError> {
    let dir: PathBuf = ledger_dir.to_owned();
    let vkey = verifier_key.to_owned();
    let size = read_ledger(move || palisade_ledger::read_checkpoint(&dir, &vkey))
        .await?
        .map_or(0, |(head, _)| head.size);
    let mut from = store.audit_indexed_through().await?;
    while from < size {
        let to = (from + CHUNK).min(size);
        let dir = ledger_dir.to_owned();
        let entries =
            read_ledger(move || palisade_ledger::proof::read_entries(&dir, size, from, to)).await?;
        let mut rows: Vec<AuditRow> = Vec::with_capacity(entries.len());
        let mut received: HashMap<u64, usize> = HashMap::new();
        for (seq, bytes) in entries {
            // Only the indexed fields are decoded; the rest is skipped.
            let Ok(entry) = serde_json::from_slice::<Indexed<'_>>(&bytes) else {
                continue;
            };
            let text = |v: Option<std::borrow::Cow<'_, str>>| v.map(|s| s.into_owned());
            let mut row = AuditRow {
                seq,
                time: text(entry.time).unwrap_or_default(),
                kind: text(entry.kind).unwrap_or_default(),
                request_id: text(entry.request_id),
                tenant: text(entry.tenant),
                app: text(entry.app),
                env: text(entry.env),
                key_id: text(entry.key_id).filter(|k| !k.is_empty()),
                model: text(entry.model),
                status: entry.status.and_then(|s| u16::try_from(s).ok()),
            };
            if row.kind == "request.received" {
                received.insert(seq, rows.len());
            }
            if row.kind == "request.completed"
                && let Some(r_seq) = entry.received_seq
            {
                let origin = match received.get(&r_seq) {
                    Some(&i) => Some(rows[i].clone()),
                    None => store.audit_row(r_seq).await?,
                };
                if let Some(o) = origin {
                    row.tenant = o.tenant;
                    row.app = o.app;
                    row.env = o.env;
                    row.key_id = o.key_id;
                    row.model = o.model;
                }
            }
            rows.push(row);
        }
        store.index_audit(rows).await?;
        from = to;
    }
    Ok(from)
}

/// Every `every` until `stop` is cancelled: brings the index up to date.
pub async fn run(
    store: Arc<dyn Store>,
    journal: Arc<palisade_ledger::Journal>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = catch_up(store.as_ref(), journal.dir(), journal.verifier_key()).await {
            tracing::warn!(target: "palisade::audit", error = %e, "audit index not updated");
        }
    }
}
