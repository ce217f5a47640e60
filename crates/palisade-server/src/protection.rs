//! Each tenant's data protection, compiled once at start-up from
//! `[[tenants]]`; tenants without an entry get the defaults (credentials
//! redacted, everything else recorded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use palisade_config::{Config, policy_input};
use palisade_dlp::{Action, PolicyInput, Protection, Session, protection};
use serde_json::{Value, json};

pub struct Protections {
    tenants: HashMap<String, Arc<Protection>>,
    default: Arc<Protection>,
}

impl Protections {
    pub fn build(config: &Config) -> Result<Self, String> {
        let default = Arc::new(protection(&PolicyInput::default(), &[])?);
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let p = protection(&policy_input(&t.dlp), &t.data_classes)
                .map_err(|e| format!("tenant `{}`: {e}", t.name))?;
            tenants.insert(t.name.clone(), Arc::new(p));
        }
        Ok(Self { tenants, default })
    }

    pub fn for_tenant(&self, tenant: &str) -> &Arc<Protection> {
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
