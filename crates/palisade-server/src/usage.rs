//! Usage reports: requests and tokens per day, tenant, application, key
//! and model, from the ledger's `request.completed` entries (the search
//! index gives each one the tenant, app, key and model of its
//! `request.received` entry). The ledger is the source, so a report covers
//! everything that was forwarded and nothing else.

use std::collections::BTreeMap;
use std::path::Path;

use palisade_store::{AuditQuery, Store};
use serde::Serialize;

use crate::manage::csv_field;

/// One line of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageRow {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub tenant: String,
    pub app: String,
    pub key_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// From the model's `price` in the configuration; `None` without one.
    pub cost: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Index(#[from] crate::audit_index::IndexError),
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    #[error("reading the ledger: {0}")]
    Ledger(String),
}

/// The most entries one report reads.
pub const MAX_ENTRIES: u32 = 5_000_000;

/// Usage between `from` (inclusive) and `to` (exclusive), RFC 3339 times
/// or dates, bringing the index up to date first.
pub async fn report(
    store: &dyn Store,
    ledger_dir: &Path,
    verifier_key: &str,
    from: Option<String>,
    to: Option<String>,
    prices: &(dyn Fn(&str) -> Option<palisade_config::Price> + Sync),
) -> Result<Vec<UsageRow>, UsageError> {
    let size = crate::audit_index::catch_up(store, ledger_dir, verifier_key).await?;
    let seqs = store
        .search_audit(AuditQuery {
            from,
            to,
            kind: Some("request.completed".into()),
            limit: MAX_ENTRIES,
            ..AuditQuery::default()
        })
        .await?;
    let mut rows = Vec::with_capacity(seqs.len());
    for seq in &seqs {
        if let Some(row) = store.audit_row(*seq).await? {
            rows.push(row);
        }
    }
    let dir = ledger_dir.to_owned();
    let tokens = tokio::task::spawn_blocking(move || {
        seqs.iter()
            .map(|&seq| {
                let entry = palisade_ledger::proof::read_entry(&dir, size, seq)
                    .map_err(|e| e.to_string())?;
                let v: serde_json::Value =
                    serde_json::from_slice(&entry).map_err(|e| e.to_string())?;
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                Ok((n("prompt_tokens"), n("completion_tokens")))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| UsageError::Ledger(e.to_string()))?
    .map_err(UsageError::Ledger)?;
    let mut by: BTreeMap<(String, String, String, String, String), UsageRow> = BTreeMap::new();
    for (row, (prompt, completion)) in rows.into_iter().zip(tokens) {
        let day = row.time.get(..10).unwrap_or_default().to_owned();
        let text = |v: Option<String>| v.unwrap_or_default();
        let key = (
            day,
            text(row.tenant),
            text(row.app),
            text(row.key_id),
            text(row.model),
        );
        let u = by.entry(key.clone()).or_insert_with(|| UsageRow {
            day: key.0.clone(),
            tenant: key.1.clone(),
            app: key.2.clone(),
            key_id: key.3.clone(),
            model: key.4.clone(),
            ..UsageRow::default()
        });
        u.requests += 1;
        u.prompt_tokens += prompt;
        u.completion_tokens += completion;
        u.total_tokens += prompt + completion;
    }
    let mut rows: Vec<UsageRow> = by.into_values().collect();
    for r in &mut rows {
        r.cost = prices(&r.model)
            .map(|p| (p.cost(r.prompt_tokens, r.completion_tokens) * 1e6).round() / 1e6);
    }
    Ok(rows)
}

/// The report as CSV, a header line first; text fields are quoted and
/// defused as in the key inventory export.
pub fn csv(rows: &[UsageRow]) -> String {
    let mut out = String::from(
        "day,tenant,app,key_id,model,requests,prompt_tokens,completion_tokens,total_tokens,cost\r\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\r\n",
            r.day,
            csv_field(&r.tenant),
            csv_field(&r.app),
            r.key_id,
            csv_field(&r.model),
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cost.map(|c| c.to_string()).unwrap_or_default()
        ));
    }
    out
}

/// A model's price from the configuration, by the name clients use.
pub fn price_of(config: &palisade_config::Config, model: &str) -> Option<palisade_config::Price> {
    config
        .models
        .iter()
        .find(|m| m.name == model)
        .and_then(|m| m.price)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_text_fields() {
        let row = UsageRow {
            day: "2026-11-22".into(),
            tenant: "=HYPERLINK(\"x\")".into(),
            app: "a,b".into(),
            key_id: "k1".into(),
            model: "gpt-4o".into(),
            requests: 2,
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            cost: None,
        };
        let out = csv(&[row]);
        let line = out.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "2026-11-22,\"'=HYPERLINK(\"\"x\"\")\",\"a,b\",k1,gpt-4o,2,10,5,15,"
        );
    }
}
