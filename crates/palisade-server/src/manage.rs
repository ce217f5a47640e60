//! Key and admin lifecycle: create, rotate, revoke, disable, review.
//!
//! The one implementation behind both the admin API and the CLI working
//! offline on a data directory. Every change is an audit entry with its
//! actor and ticket, and is on record before it takes effect: a revocation
//! or rotation that cannot be recorded is not made, and a key whose
//! creation cannot be recorded is revoked before anyone sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_config::{Config, parse_duration};
use palisade_dialect::Endpoint;
use palisade_ledger::time::rfc3339;
use palisade_store::keys::is_text;
use palisade_store::scope::{ANY, parse_network};
use palisade_store::{
    AdminRecord, ApiKey, KeyId, KeyRecord, NewAdmin, NewKey, Role, Scope, Store, StoreError,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::Audit;

/// Who acts, and under which approval.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `admin:<name>` for the admin API, `cli:<user>` offline, `system`.
    pub name: String,
    pub ticket: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: String },
    #[error("the audit ledger cannot record this change, so it was not made: {0}")]
    Audit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key to create, as the admin API and the CLI take it. Lists left out
/// mean "any"; `expires_in` is a duration such as `90d`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub tenant: String,
    pub app: String,
    pub env: String,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Bind the key to a client certificate (SHA-256, hex).
    #[serde(default)]
    pub client_cert_sha256: Option<String>,
    /// Requests per minute for this key.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Requests in flight at once for this key.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Tokens per minute for this key.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Tokens per UTC day for this key.
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// Tokens per UTC month for this key.
    #[serde(default)]
    pub monthly_tokens: Option<u64>,
    /// Cost per UTC day for this key.
    #[serde(default)]
    pub daily_cost: Option<f64>,
    /// Cost per UTC month for this key.
    #[serde(default)]
    pub monthly_cost: Option<f64>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The endpoint labels a key's scope may name.
pub fn endpoint_labels() -> Vec<&'static str> {
    Endpoint::ALL.iter().map(|e| e.label()).collect()
}

/// Checks a request against the configuration and turns it into a
/// [`NewKey`].
pub fn new_key(
    req: KeyRequest,
    config: &Config,
    actor: &Actor,
    now: i64,
) -> Result<NewKey, ManageError> {
    let invalid = |m: String| ManageError::Invalid(m);
    if !config.access.environments.contains(&req.env) {
        return Err(invalid(format!(
            "environment `{}` is not declared; access.environments is [{}]",
            printable(&req.env),
            config.access.environments.join(", ")
        )));
    }
    let labels = endpoint_labels();
    let endpoints = req.endpoints.unwrap_or_else(|| vec![ANY.to_owned()]);
    for e in &endpoints {
        if e != ANY && !labels.contains(&e.as_str()) {
            return Err(invalid(format!(
                "unknown endpoint `{}`; use * or some of: {}",
                printable(e),
                labels.join(", ")
            )));
        }
    }
    let networks = req
        .networks
        .unwrap_or_default()
        .iter()
        .map(|n| parse_network(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let expires_at = match req.expires_in.as_deref() {
        None | Some("") => None,
        Some(d) => {
            let d = parse_duration(d).map_err(|e| invalid(format!("expires_in: {e}")))?;
            Some(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        }
    };
    let ticket = req.ticket.or_else(|| actor.ticket.clone());
    let new = NewKey {
        tenant: req.tenant,
        app: req.app,
        env: req.env,
        scope: Scope {
            models: req.models.unwrap_or_else(|| vec![ANY.to_owned()]),
            endpoints,
            networks,
            max_tokens: req.max_tokens,
            client_cert: req.client_cert_sha256,
            rpm: req.rpm,
            concurrency: req.concurrency,
            tpm: req.tpm,
            daily_tokens: req.daily_tokens,
            monthly_tokens: req.monthly_tokens,
            daily_cost: req.daily_cost,
            monthly_cost: req.monthly_cost,
        },
        expires_at,
        owner: req.owner,
        ticket,
        labels: req.labels,
        created_by: actor.name.clone(),
    };
    new.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(new)
}

/// What the gateway's caches need to hear about a change made here.
pub trait OnChange: Send + Sync {
    fn key_changed(&self, id: &KeyId);
    fn admin_changed(&self, id: &KeyId);
}

/// Nothing to tell (the CLI offline).
pub struct NoCache;

impl OnChange for NoCache {
    fn key_changed(&self, _: &KeyId) {}
    fn admin_changed(&self, _: &KeyId) {}
}

/// The lifecycle operations over one store and one ledger.
pub struct Manager<'a> {
    pub store: &'a dyn Store,
    pub audit: &'a Audit,
    pub config: &'a Config,
    pub cache: &'a dyn OnChange,
}

impl Manager<'_> {
    async fn record(&self, kind: &str, actor: &Actor, fields: Value) -> Result<u64, ManageError> {
        let mut fields = fields;
        fields["actor"] = json!(actor.name);
        if fields.get("ticket").is_none() {
            fields["ticket"] = json!(actor.ticket);
        }
        self.audit
            .record(kind, fields)
            .await
            .map_err(|e| ManageError::Audit(e.to_string()))
    }

    pub async fn create_key(
        &self,
        req: KeyRequest,
        actor: &Actor,
        now: i64,
    ) -> Result<(KeyRecord, ApiKey), ManageError> {
        let new = new_key(req, self.config, actor, now)?;
        let (record, key) = self.store.create_key(new, now).await?;
        let entry = json!({
            "action": "key.create", "target": record.id.as_str(),
            "ticket": record.ticket,
            "after": summary(&record),
        });
        if let Err(e) = self.record("admin.key_created", actor, entry).await {
            self.store.revoke_key(&record.id, now).await?;
            return Err(e);
        }
        Ok((record, key))
    }

    async fn key(&self, id: &KeyId) -> Result<KeyRecord, ManageError> {
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| ManageError::NotFound {
                what: "key",
                id: id.to_string(),
            })
    }

    /// A new secret; the old one works for `grace` (default
    /// `access.rotation_grace`).
    pub async fn rotate_key(
        &self,
        id: &KeyId,
        grace: Option<Duration>,
        actor: &Actor,
        now: i64,
    ) -> Result<(KeyRecord, ApiKey), ManageError> {
        let before = self.key(id).await?;
        if before.revoked_at.is_some() {
            return Err(ManageError::Invalid(format!("key {id} is revoked")));
        }
        let grace = grace.unwrap_or(self.config.access.rotation_grace);
        let grace_until = now.saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
        self.record(
            "admin.key_rotated",
            actor,
            json!({
                "action": "key.rotate", "target": id.as_str(),
                "before": summary(&before),
                "after": {"old_secret_valid_until": rfc3339(grace_until)},
            }),
        )
        .await?;
        let rotated = self
            .store
            .rotate_key(id, grace_until, now)
            .await?
            .ok_or_else(|| ManageError::NotFound {
                what: "key",
                id: id.to_string(),
            })?;
        self.cache.key_changed(id);
        Ok(rotated)
    }

    pub async fn revoke_key(
        &self,
        id: &KeyId,
        actor: &Actor,
        now: i64,
    ) -> Result<KeyRecord, ManageError> {
        let before = self.key(id).await?;
        if before.revoked_at.is_none() {
            self.record(
                "admin.key_revoked",
                actor,
                json!({
                    "action": "key.revoke", "target": id.as_str(),
                    "before": summary(&before),
                    "after": {"status": "revoked"},
                }),
            )
            .await?;
            self.store.revoke_key(id, now).await?;
        }
        self.cache.key_changed(id);
        self.key(id).await
    }

    /// Disables every active key unused for `after` (a key never used
    /// counts from its creation). Returns the ids disabled.
    pub async fn disable_unused(
        &self,
        after: Duration,
        now: i64,
    ) -> Result<Vec<KeyId>, ManageError> {
        let cutoff = now.saturating_sub(i64::try_from(after.as_secs()).unwrap_or(i64::MAX));
        let actor = Actor {
            name: "system".into(),
            ticket: None,
        };
        let mut disabled = Vec::new();
        for k in self.store.list_keys().await? {
            let last = k.last_used_at.unwrap_or(k.created_at);
            if k.status(now) != "active" || last >= cutoff {
                continue;
            }
            self.record(
                "admin.key_disabled",
                &actor,
                json!({
                    "action": "key.disable", "target": k.id.as_str(),
                    "reason": "unused",
                    "unused_days": (now - last) / 86_400,
                    "before": summary(&k),
                    "after": {"status": "disabled"},
                }),
            )
            .await?;
            self.store.disable_key(&k.id, now).await?;
            self.cache.key_changed(&k.id);
            disabled.push(k.id);
        }
        Ok(disabled)
    }

    /// Records every key that has expired since the last look
    /// (`admin.key_expired`, actor `system`). Expiry is in force from its
    /// moment whether or not this has run; this puts the transition on
    /// record. Returns the ids recorded.
    pub async fn record_expired(&self, now: i64) -> Result<Vec<KeyId>, ManageError> {
        let actor = Actor {
            name: "system".into(),
            ticket: None,
        };
        let mut recorded = Vec::new();
        for k in self.store.expired_unrecorded(now).await? {
            self.record(
                "admin.key_expired",
                &actor,
                json!({
                    "action": "key.expire", "target": k.id.as_str(),
                    "expired_at": k.expires_at.map(rfc3339),
                    "before": summary(&k),
                    "after": {"status": "expired"},
                }),
            )
            .await?;
            self.store.mark_expiry_recorded(&k.id, now).await?;
            recorded.push(k.id);
        }
        Ok(recorded)
    }

    pub async fn create_admin(
        &self,
        name: String,
        role: Role,
        cert: Option<String>,
        actor: &Actor,
        now: i64,
    ) -> Result<(AdminRecord, ApiKey), ManageError> {
        let new = NewAdmin {
            name,
            role,
            created_by: actor.name.clone(),
            cert,
        };
        new.validate()
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        let (record, token) = self.store.create_admin(new, now).await?;
        let entry = json!({
            "action": "admin.create", "target": record.id.as_str(),
            "after": {"name": record.name, "role": record.role.as_str(), "client_cert_sha256": record.cert},
        });
        if let Err(e) = self.record("admin.admin_created", actor, entry).await {
            self.store.revoke_admin(&record.id, now).await?;
            return Err(e);
        }
        Ok((record, token))
    }

    pub async fn revoke_admin(
        &self,
        id: &KeyId,
        actor: &Actor,
        now: i64,
    ) -> Result<AdminRecord, ManageError> {
        let not_found = || ManageError::NotFound {
            what: "admin",
            id: id.to_string(),
        };
        let before = self.store.get_admin(id).await?.ok_or_else(not_found)?;
        if before.revoked_at.is_none() {
            self.record(
                "admin.admin_revoked",
                actor,
                json!({
                    "action": "admin.revoke", "target": id.as_str(),
                    "before": {"name": before.name, "role": before.role.as_str()},
                    "after": {"status": "revoked"},
                }),
            )
            .await?;
            self.store.revoke_admin(id, now).await?;
        }
        self.cache.admin_changed(id);
        self.store.get_admin(id).await?.ok_or_else(not_found)
    }
}

/// What an audit entry keeps of a key: no secret, no hash.
fn summary(k: &KeyRecord) -> Value {
    json!({
        "tenant": k.tenant, "app": k.app, "env": k.env,
        "models": k.scope.models, "endpoints": k.scope.endpoints,
        "networks": k.scope.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_tokens": k.scope.max_tokens,
        "client_cert_sha256": k.scope.client_cert,
        "expires_at": k.expires_at.map(rfc3339),
        "owner": k.owner,
        "status": if k.revoked_at.is_some() { "revoked" } else if k.disabled_at.is_some() { "disabled" } else { "active" },
    })
}

/// A key as the admin API and `keys show --json` present it.
pub fn key_json(k: &KeyRecord, now: i64) -> Value {
    json!({
        "id": k.id.as_str(),
        "tenant": k.tenant,
        "app": k.app,
        "env": k.env,
        "status": k.status(now),
        "scope": {
            "models": k.scope.models,
            "endpoints": k.scope.endpoints,
            "networks": k.scope.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "max_tokens": k.scope.max_tokens,
            "client_cert_sha256": k.scope.client_cert,
            "rpm": k.scope.rpm,
            "tpm": k.scope.tpm,
            "daily_tokens": k.scope.daily_tokens,
            "monthly_tokens": k.scope.monthly_tokens,
            "daily_cost": k.scope.daily_cost,
            "monthly_cost": k.scope.monthly_cost,
            "concurrency": k.scope.concurrency,
        },
        "expires_at": k.expires_at.map(rfc3339),
        "owner": k.owner,
        "ticket": k.ticket,
        "labels": k.labels,
        "created_at": rfc3339(k.created_at),
        "created_by": k.created_by,
        "rotated_at": k.rotated_at.map(rfc3339),
        "old_secret_valid_until": k.previous.as_ref().filter(|p| p.valid_until > now).map(|p| rfc3339(p.valid_until)),
        "last_used_at": k.last_used_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "disabled_at": k.disabled_at.map(rfc3339),
    })
}

pub fn admin_json(a: &AdminRecord) -> Value {
    json!({
        "id": a.id.as_str(),
        "name": a.name,
        "role": a.role.as_str(),
        "status": if a.revoked_at.is_some() { "revoked" } else { "active" },
        "client_cert_sha256": a.cert,
        "created_at": rfc3339(a.created_at),
        "created_by": a.created_by,
        "last_used_at": a.last_used_at.map(rfc3339),
        "revoked_at": a.revoked_at.map(rfc3339),
    })
}

/// Keys unused this long are flagged by the review.
pub const UNUSED_FLAG_DAYS: i64 = 90;

/// One line of the access review.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReviewRow {
    pub id: String,
    pub tenant: String,
    pub app: String,
    pub env: String,
    pub status: &'static str,
    pub owner: Option<String>,
    pub ticket: Option<String>,
    pub models: String,
    pub endpoints: String,
    pub networks: String,
    pub max_tokens: Option<u32>,
    pub created_at: String,
    pub created_by: String,
    pub last_used_at: Option<String>,
    pub age_days: i64,
    pub unused_days: i64,
    pub rotation_due: String,
    pub expires_at: Option<String>,
    pub flags: Vec<&'static str>,
}

/// Whether `env` names a production environment (`prod`, `production`,
/// `prod2`, ...).
pub fn is_production(env: &str) -> bool {
    env.starts_with("prod")
}

/// The access review: every key, with its scope, its age and use, and the
/// flags an auditor asks about.
pub fn review(keys: &[KeyRecord], config: &Config, now: i64) -> Vec<ReviewRow> {
    let period = i64::try_from(config.access.rotation_period.as_secs()).unwrap_or(i64::MAX);
    keys.iter()
        .map(|k| {
            let status = k.status(now);
            let last_secret = k.rotated_at.unwrap_or(k.created_at);
            let rotation_due = last_secret.saturating_add(period);
            let unused_days = (now - k.last_used_at.unwrap_or(k.created_at)) / 86_400;
            let mut flags = Vec::new();
            if status == "expired" {
                flags.push("expired_but_present");
            }
            if status == "active" {
                if unused_days > UNUSED_FLAG_DAYS {
                    flags.push("unused_over_90_days");
                }
                if k.owner.is_none() {
                    flags.push("no_owner");
                }
                if is_production(&k.env) && k.scope.any_model() {
                    flags.push("production_wildcard_models");
                }
                if now >= rotation_due {
                    flags.push("rotation_overdue");
                }
            }
            ReviewRow {
                id: k.id.to_string(),
                tenant: k.tenant.clone(),
                app: k.app.clone(),
                env: k.env.clone(),
                status,
                owner: k.owner.clone(),
                ticket: k.ticket.clone(),
                models: k.scope.models.join(" "),
                endpoints: k.scope.endpoints.join(" "),
                networks: k
                    .scope
                    .networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                max_tokens: k.scope.max_tokens,
                created_at: rfc3339(k.created_at),
                created_by: k.created_by.clone(),
                last_used_at: k.last_used_at.map(rfc3339),
                age_days: (now - k.created_at) / 86_400,
                unused_days,
                rotation_due: rfc3339(rotation_due),
                expires_at: k.expires_at.map(rfc3339),
                flags,
            }
        })
        .collect()
}

/// The review as CSV (RFC 4180), a header line first.
pub fn review_csv(rows: &[ReviewRow]) -> String {
    let mut out = String::from(
        "id,tenant,app,env,status,owner,ticket,models,endpoints,networks,max_tokens,created_at,created_by,last_used_at,age_days,unused_days,rotation_due,expires_at,flags\r\n",
    );
    for r in rows {
        let fields = [
            r.id.clone(),
            r.tenant.clone(),
            r.app.clone(),
            r.env.clone(),
            r.status.to_owned(),
            r.owner.clone().unwrap_or_default(),
            r.ticket.clone().unwrap_or_default(),
            r.models.clone(),
            r.endpoints.clone(),
            r.networks.clone(),
            r.max_tokens.map(|n| n.to_string()).unwrap_or_default(),
            r.created_at.clone(),
            r.created_by.clone(),
            r.last_used_at.clone().unwrap_or_default(),
            r.age_days.to_string(),
            r.unused_days.to_string(),
            r.rotation_due.clone(),
            r.expires_at.clone().unwrap_or_default(),
            r.flags.join(" "),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Quotes a field when it needs it; a leading `=`, `+`, `-` or `@` is
/// prefixed with `'` so that a spreadsheet does not run it as a formula.
pub(crate) fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Checks an optional approval ticket given on its own (rotate, revoke).
pub fn check_ticket(ticket: Option<&str>) -> Result<(), ManageError> {
    match ticket {
        Some(t) if !is_text(t) => Err(ManageError::Invalid(
            "ticket must be 1 to 200 characters without control characters".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_store::keys::generate;

    fn config() -> Config {
        Config::empty("/nonexistent".into())
    }

    fn actor() -> Actor {
        Actor {
            name: "admin:alice".into(),
            ticket: Some("CHG-1".into()),
        }
    }

    fn req() -> KeyRequest {
        KeyRequest {
            tenant: "acme".into(),
            app: "bot".into(),
            env: "prod".into(),
            ..KeyRequest::default()
        }
    }

    #[test]
    fn requests_are_checked_against_the_config() {
        let c = config();
        let new = new_key(req(), &c, &actor(), 1000).unwrap();
        assert_eq!(new.scope, Scope::default());
        assert_eq!(new.ticket.as_deref(), Some("CHG-1"));
        assert_eq!(new.created_by, "admin:alice");
        for (f, want) in [
            (
                (|r: &mut KeyRequest| r.env = "qa".into()) as fn(&mut KeyRequest),
                "not declared",
            ),
            (
                |r| r.endpoints = Some(vec!["chat".into()]),
                "unknown endpoint",
            ),
            (
                |r| r.networks = Some(vec!["10.0.0.1/8".into()]),
                "not a network",
            ),
            (|r| r.expires_in = Some("soon".into()), "expires_in"),
            (|r| r.models = Some(vec![]), "at least one model"),
            (|r| r.max_tokens = Some(0), "max_tokens"),
            (|r| r.owner = Some(String::new()), "owner"),
        ] {
            let mut r = req();
            f(&mut r);
            let err = new_key(r, &c, &actor(), 1000).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let mut r = req();
        r.expires_in = Some("1d".into());
        r.endpoints = Some(vec!["embeddings".into()]);
        let new = new_key(r, &c, &actor(), 1000).unwrap();
        assert_eq!(new.expires_at, Some(1000 + 86_400));
    }

    #[test]
    fn review_flags_what_an_auditor_asks_about() {
        let c = config();
        let day = 86_400;
        let now = 400 * day;
        let make = |f: fn(&mut NewKey), created: i64| {
            let mut n = new_key(req(), &c, &actor(), created).unwrap();
            n.owner = Some("team".into());
            n.scope.models = vec!["gpt-4o".into()];
            f(&mut n);
            generate(&n, created).unwrap().0
        };
        let fresh = make(|_| {}, now - day);
        let no_owner = make(|n| n.owner = None, now - day);
        let wildcard = make(|n| n.scope.models = vec!["*".into()], now - day);
        let mut old = make(|_| {}, now - 100 * day);
        old.last_used_at = Some(now - 95 * day);
        let expired = make(|n| n.expires_at = Some(1), now - day);
        let mut dev_wildcard = make(|n| n.scope.models = vec!["*".into()], now - day);
        dev_wildcard.env = "dev".into();
        let rows = review(
            &[fresh, no_owner, wildcard, old, expired, dev_wildcard],
            &c,
            now,
        );
        let flags: Vec<Vec<&str>> = rows.iter().map(|r| r.flags.clone()).collect();
        assert_eq!(
            flags,
            vec![
                vec![],
                vec!["no_owner"],
                vec!["production_wildcard_models"],
                vec!["unused_over_90_days", "rotation_overdue"],
                vec!["expired_but_present"],
                vec![],
            ]
        );
        assert_eq!(rows[3].age_days, 100);
        assert_eq!(rows[3].unused_days, 95);
        let csv = review_csv(&rows);
        assert_eq!(csv.lines().count(), 7);
        assert!(
            csv.lines()
                .nth(4)
                .unwrap()
                .ends_with(",unused_over_90_days rotation_overdue")
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
