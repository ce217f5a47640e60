//! Each tenant's data protection, compiled once at start-up from
//! `[[tenants]]`; tenants without an entry get the defaults (credentials
//! redacted, everything else recorded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use palisade_config::{Config, policy_input};
use palisade_dlp::{Action, Policy, PolicyInput, Protection, Session, protection};
use serde_json::{Value, json};

/// What is done to the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responses {
    Off,
    /// Counted in `request.completed`.
    Detect,
    /// Redacted in whole answers (counted in streams).
    Redact,
}

/// A tenant's protection and what it does to answers.
pub struct TenantProtection {
    pub protection: Protection,
    pub responses: Responses,
}

impl std::ops::Deref for TenantProtection {
    type Target = Protection;

    fn deref(&self) -> &Protection {
        &self.protection
    }
}

pub struct Protections {
    tenants: HashMap<String, Arc<TenantProtection>>,
    default: Arc<TenantProtection>,
}

impl Protections {
    pub fn build(config: &Config) -> Result<Self, String> {
        let default = Arc::new(TenantProtection {
            protection: protection(&PolicyInput::default(), &[])?,
            responses: Responses::Off,
        });
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let p = protection(&policy_input(&t.dlp), &t.data_classes)
                .map_err(|e| format!("tenant `{}`: {e}", t.name))?;
            let responses = match t.dlp.responses.as_deref() {
                Some("detect") => Responses::Detect,
                Some("redact") => Responses::Redact,
                _ => Responses::Off,
            };
            tenants.insert(
                t.name.clone(),
                Arc::new(TenantProtection {
                    protection: p,
                    responses,
                }),
            );
        }
        Ok(Self { tenants, default })
    }

    pub fn for_tenant(&self, tenant: &str) -> &Arc<TenantProtection> {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

/// What a request's audit entry says of its data protection: counts by
/// kind and action (`{"EMAIL": {"tokenize": 2}}`); never a value.
pub fn detections(session: &Session) -> Option<Value> {
    let counts = session.counts();
    if counts.is_empty() {
        return None;
    }
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((kind, action), n) in counts {
        by_kind
            .entry(kind.as_str())
            .or_default()
            .insert(Action::name(*action), *n);
    }
    Some(json!(by_kind))
}

/// Scans (and with `Redact`, redacts) a whole JSON answer before tokens
/// are restored into it, so that values the caller sent are never taken
/// for the model's. Returns the answer to send and the counts.
pub fn scan_answer(tenant: &TenantProtection, body: &[u8]) -> (Option<Vec<u8>>, Option<Value>) {
    if tenant.responses == Responses::Off {
        return (None, None);
    }
    let policy = Policy::new(match tenant.responses {
        Responses::Redact => Action::Redact,
        _ => Action::Detect,
    });
    let mut session = Session::new();
    let rewritten = palisade_dlp::json::rewrite_strings(
        body,
        palisade_dlp::json::MAX_DEPTH,
        &palisade_dlp::json::structural,
        &mut |s| match session.protect(&tenant.detector, &policy, s) {
            std::borrow::Cow::Owned(o) => Some(o),
            std::borrow::Cow::Borrowed(_) => None,
        },
    )
    .ok()
    .flatten();
    (rewritten, detections(&session))
}
