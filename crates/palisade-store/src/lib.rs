//! Palisade's state: API keys now; tenants, budgets and the audit index as
//! those capabilities land.
//!
//! Callers use the [`Store`] trait and never see SQL. The embedded backend
//! is SQLite ([`SqliteStore`]); a PostgreSQL backend implements the same
//! trait for several gateway nodes. Key material is generated and checked in
//! [`keys`], which does no I/O.

pub mod admins;
pub mod keys;
pub mod scope;
mod sqlite;

use async_trait::async_trait;

pub use admins::{AdminRecord, NewAdmin, Role};
pub use keys::{ApiKey, KeyError, KeyId, KeyRecord, NewKey};
pub use scope::Scope;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the store schema is version {found}, newer than this build understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("invalid key request: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("the store holds a malformed {what}")]
    Corrupt { what: &'static str },
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The state a gateway node reads and writes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a key; the plaintext is returned once and never stored.
    async fn create_key(&self, new: NewKey, now: i64) -> Result<(KeyRecord, ApiKey), StoreError>;

    /// A key by id, revoked ones included.
    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Every key, oldest first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Revokes a key. `Ok(false)` when no such key exists; revoking twice
    /// keeps the first time.
    async fn revoke_key(&self, id: &KeyId, now: i64) -> Result<bool, StoreError>;

    /// Gives a key a new secret; the current one keeps working until
    /// `grace_until` (Unix seconds; `now` or earlier ends it at once). A
    /// secret replaced earlier stops at once, whatever its grace. `None`
    /// when no such key.
    async fn rotate_key(
        &self,
        id: &KeyId,
        grace_until: i64,
        now: i64,
    ) -> Result<Option<(KeyRecord, ApiKey)>, StoreError>;

    /// Disables a key (for disuse). `Ok(false)` when no such key.
    async fn disable_key(&self, id: &KeyId, now: i64) -> Result<bool, StoreError>;

    /// Keys that have expired by `now` (and are not revoked) whose expiry
    /// has not been recorded yet.
    async fn expired_unrecorded(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError>;

    /// Notes that a key's expiry is on record.
    async fn mark_expiry_recorded(&self, id: &KeyId, now: i64) -> Result<(), StoreError>;

    /// Records when keys were last used (the later time wins).
    async fn touch_keys(&self, used: Vec<(KeyId, i64)>) -> Result<(), StoreError>;

    /// Creates an admin principal; its token is returned once.
    async fn create_admin(
        &self,
        new: NewAdmin,
        now: i64,
    ) -> Result<(AdminRecord, ApiKey), StoreError>;

    async fn get_admin(&self, id: &KeyId) -> Result<Option<AdminRecord>, StoreError>;

    /// The active admin principal bound to a client certificate.
    async fn admin_by_cert(&self, fingerprint: &str) -> Result<Option<AdminRecord>, StoreError>;

    /// Every admin principal, oldest first.
    async fn list_admins(&self) -> Result<Vec<AdminRecord>, StoreError>;

    /// `Ok(false)` when no such principal.
    async fn revoke_admin(&self, id: &KeyId, now: i64) -> Result<bool, StoreError>;

    /// Records when admin principals last used their tokens.
    async fn touch_admins(&self, used: Vec<(KeyId, i64)>) -> Result<(), StoreError>;

    /// Adds rows to the search index of the audit ledger. Rows already
    /// present (same `seq`) are left as they are.
    async fn index_audit(&self, rows: Vec<AuditRow>) -> Result<(), StoreError>;

    /// The row of one entry, if indexed.
    async fn audit_row(&self, seq: u64) -> Result<Option<AuditRow>, StoreError>;

    /// One past the highest indexed sequence number (0 when empty).
    async fn audit_indexed_through(&self) -> Result<u64, StoreError>;

    /// Sequence numbers of the entries matching `query`, oldest first.
    async fn search_audit(&self, query: AuditQuery) -> Result<Vec<u64>, StoreError>;
}

/// What the search index keeps of one ledger entry: the fields searched on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub request_id: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub env: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
}

/// A search of the audit index; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// `time >= from` (RFC 3339 text; a date means its start).
    pub from: Option<String>,
    /// `time < to`.
    pub to: Option<String>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub env: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
    pub request_id: Option<String>,
    pub limit: u32,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
