//! The embedded backend: one SQLite file in the data directory.
//!
//! Calls run on Tokio's blocking pool; the connection is guarded by a mutex
//! (SQLite serialises writers anyway). WAL mode lets the CLI read and write
//! the same file while a server holds it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::admins::{AdminRecord, NewAdmin, Role};
use crate::keys::{self, ApiKey, KeyId, KeyRecord, NewKey, PreviousSecret};
use crate::{AuditQuery, AuditRow, Store, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Append only.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        app TEXT NOT NULL,
        env TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    )",
    "CREATE TABLE audit_index (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        tenant TEXT,
        app TEXT,
        env TEXT,
        key_id TEXT,
        model TEXT,
        status INTEGER
    );
    CREATE INDEX audit_index_time ON audit_index (time);
    CREATE INDEX audit_index_tenant ON audit_index (tenant, time);
    CREATE INDEX audit_index_key ON audit_index (key_id, time);
    CREATE INDEX audit_index_request ON audit_index (request_id)",
    "ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN owner TEXT;
    ALTER TABLE api_keys ADD COLUMN ticket TEXT;
    ALTER TABLE api_keys ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN rotated_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN prev_hash BLOB;
    ALTER TABLE api_keys ADD COLUMN prev_valid_until INTEGER;
    ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN disabled_at INTEGER;
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at INTEGER,
        last_used_at INTEGER
    )",
    "ALTER TABLE admin_tokens ADD COLUMN cert_sha256 TEXT;
    CREATE INDEX admin_tokens_cert ON admin_tokens (cert_sha256)",
    "ALTER TABLE api_keys ADD COLUMN expiry_recorded_at INTEGER;
    CREATE INDEX api_keys_expires ON api_keys (expires_at) WHERE expires_at IS NOT NULL",
];

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/palisade.db`.
    pub fn open_in(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Open {
            path: data_dir.to_owned(),
            source,
        })?;
        Self::open(&data_dir.join("palisade.db"))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&conn);
            f(&mut guard)
        })
        .await?
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite half-written: every
    // write is a transaction. Keep serving.
    conn.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, tenant, app, env, hash, created_at, revoked_at, created_by, \
    scope, expires_at, owner, ticket, labels, rotated_at, prev_hash, prev_valid_until, \
    last_used_at, disabled_at";

fn corrupt(i: usize) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(i, "key".into(), rusqlite::types::Type::Text)
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(4)?;
    let scope: String = row.get(8)?;
    let labels: String = row.get(12)?;
    let prev_hash: Option<Vec<u8>> = row.get(14)?;
    let prev_valid_until: Option<i64> = row.get(15)?;
    let previous = match (prev_hash, prev_valid_until) {
        (Some(h), Some(valid_until)) => Some(PreviousSecret {
            hash: h.try_into().map_err(|_| corrupt(14))?,
            valid_until,
        }),
        _ => None,
    };
    Ok(KeyRecord {
        id: KeyId::parse(&id).map_err(|_| corrupt(0))?,
        tenant: row.get(1)?,
        app: row.get(2)?,
        env: row.get(3)?,
        hash: hash.try_into().map_err(|_| corrupt(4))?,
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
        created_by: row.get(7)?,
        scope: serde_json::from_str(&scope).map_err(|_| corrupt(8))?,
        expires_at: row.get(9)?,
        owner: row.get(10)?,
        ticket: row.get(11)?,
        labels: serde_json::from_str(&labels).map_err(|_| corrupt(12))?,
        rotated_at: row.get(13)?,
        previous,
        last_used_at: row.get(16)?,
        disabled_at: row.get(17)?,
    })
}

const ADMIN_COLUMNS: &str =
    "id, name, role, hash, created_at, created_by, revoked_at, last_used_at, cert_sha256";

fn admin_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AdminRecord> {
    let id: String = row.get(0)?;
    let role: String = row.get(2)?;
    let hash: Vec<u8> = row.get(3)?;
    Ok(AdminRecord {
        id: KeyId::parse(&id).map_err(|_| corrupt(0))?,
        name: row.get(1)?,
        role: Role::parse(&role).ok_or_else(|| corrupt(2))?,
        hash: hash.try_into().map_err(|_| corrupt(3))?,
        created_at: row.get(4)?,
        created_by: row.get(5)?,
        revoked_at: row.get(6)?,
        last_used_at: row.get(7)?,
        cert: row.get(8)?,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|_| StoreError::Corrupt { what: "scope" })
}

/// `UPDATE <table> SET last_used_at = max(...)` for each pair, in one
/// transaction.
fn touch(c: &mut Connection, table: &str, used: &[(KeyId, i64)]) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "UPDATE {table} SET last_used_at = ?2 \
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)"
        ))?;
        for (id, at) in used {
            stmt.execute(params![id.as_str(), at])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, new: NewKey, now: i64) -> Result<(KeyRecord, ApiKey), StoreError> {
        let (record, key) = keys::generate(&new, now)?;
        let stored = record.clone();
        let scope = to_json(&stored.scope)?;
        let labels = to_json(&stored.labels)?;
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, tenant, app, env, hash, created_at, created_by, \
                 scope, expires_at, owner, ticket, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    stored.id.as_str(),
                    stored.tenant,
                    stored.app,
                    stored.env,
                    stored.hash.as_slice(),
                    stored.created_at,
                    stored.created_by,
                    scope,
                    stored.expires_at,
                    stored.owner,
                    stored.ticket,
                    labels,
                ],
            )?;
            Ok(())
        })
        .await?;
        Ok((record, key))
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?;
            Ok(stmt.query_row([id.as_str()], key_from_row).optional()?)
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], key_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn index_audit(&self, rows: Vec<AuditRow>) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO audit_index ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ))?;
                for r in &rows {
                    stmt.execute(params![
                        r.seq as i64,
                        r.time,
                        r.kind,
                        r.request_id,
                        r.tenant,
                        r.app,
                        r.env,
                        r.key_id,
                        r.model,
                        r.status.map(i64::from)
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn audit_row(&self, seq: u64) -> Result<Option<AuditRow>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_index WHERE seq = ?1"
            ))?;
            Ok(stmt.query_row([seq as i64], audit_row).optional()?)
        })
        .await
    }

    async fn audit_indexed_through(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let max: Option<i64> =
                c.query_row("SELECT MAX(seq) FROM audit_index", [], |r| r.get(0))?;
            Ok(max.map_or(0, |m| m as u64 + 1))
        })
        .await
    }

    async fn search_audit(&self, q: AuditQuery) -> Result<Vec<u64>, StoreError> {
        self.with_conn(move |c| {
            let mut sql = String::from("SELECT seq FROM audit_index WHERE 1 = 1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            let mut add = |clause: &str, value: Box<dyn rusqlite::ToSql>| {
                args.push(value);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(v) = q.from {
                add("time >=", Box::new(v));
            }
            if let Some(v) = q.to {
                add("time <", Box::new(v));
            }
            for (column, value) in [
                ("kind", q.kind),
                ("tenant", q.tenant),
                ("app", q.app),
                ("env", q.env),
                ("key_id", q.key_id),
                ("model", q.model),
                ("request_id", q.request_id),
            ] {
                if let Some(v) = value {
                    add(&format!("{column} ="), Box::new(v));
                }
            }
            if let Some(s) = q.status {
                add("status =", Box::new(i64::from(s)));
            }
            sql.push_str(&format!(" ORDER BY seq LIMIT {}", q.limit.max(1)));
            let mut stmt = c.prepare(&sql)?;
            let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let rows = stmt.query_map(refs.as_slice(), |r| r.get::<_, i64>(0))?;
            Ok(rows
                .map(|r| r.map(|s| s as u64))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke_key(&self, id: &KeyId, now: i64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let exists = exists(&tx, "api_keys", &id)?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.commit()?;
            Ok(exists)
        })
        .await
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        grace_until: i64,
        now: i64,
    ) -> Result<Option<(KeyRecord, ApiKey)>, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let current = {
                let mut stmt = tx
                    .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?;
                stmt.query_row([id.as_str()], key_from_row).optional()?
            };
            let Some(mut record) = current else {
                return Ok(None);
            };
            let (hash, key) = keys::fresh_secret(&record.id, &record.env)?;
            // Kept even without grace, so that its later use is recorded as
            // a rotated-out secret rather than a wrong one.
            record.previous = Some(PreviousSecret {
                hash: record.hash,
                valid_until: grace_until.max(now),
            });
            record.hash = hash;
            record.rotated_at = Some(now);
            tx.execute(
                "UPDATE api_keys SET hash = ?2, prev_hash = ?3, prev_valid_until = ?4, \
                 rotated_at = ?5 WHERE id = ?1",
                params![
                    id.as_str(),
                    record.hash.as_slice(),
                    record.previous.as_ref().map(|p| p.hash.to_vec()),
                    record.previous.as_ref().map(|p| p.valid_until),
                    now
                ],
            )?;
            tx.commit()?;
            Ok(Some((record, key)))
        })
        .await
    }

    async fn disable_key(&self, id: &KeyId, now: i64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let exists = exists(&tx, "api_keys", &id)?;
            tx.execute(
                "UPDATE api_keys SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.commit()?;
            Ok(exists)
        })
        .await
    }

    async fn expired_unrecorded(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE expires_at IS NOT NULL \
                 AND expires_at <= ?1 AND expiry_recorded_at IS NULL AND revoked_at IS NULL \
                 ORDER BY expires_at, id"
            ))?;
            let rows = stmt.query_map([now], key_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn mark_expiry_recorded(&self, id: &KeyId, now: i64) -> Result<(), StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            c.execute(
                "UPDATE api_keys SET expiry_recorded_at = ?2 WHERE id = ?1 AND expiry_recorded_at IS NULL",
                params![id.as_str(), now],
            )?;
            Ok(())
        })
        .await
    }

    async fn touch_keys(&self, used: Vec<(KeyId, i64)>) -> Result<(), StoreError> {
        self.with_conn(move |c| touch(c, "api_keys", &used)).await
    }

    async fn create_admin(
        &self,
        new: NewAdmin,
        now: i64,
    ) -> Result<(AdminRecord, ApiKey), StoreError> {
        new.validate()?;
        let (id, hash, token) = keys::generate_admin_token()?;
        let record = AdminRecord {
            id,
            name: new.name,
            role: new.role,
            hash,
            created_at: now,
            created_by: new.created_by,
            revoked_at: None,
            last_used_at: None,
            cert: new.cert,
        };
        let stored = record.clone();
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO admin_tokens (id, name, role, hash, created_at, created_by, cert_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    stored.id.as_str(),
                    stored.name,
                    stored.role.as_str(),
                    stored.hash.as_slice(),
                    stored.created_at,
                    stored.created_by,
                    stored.cert
                ],
            )?;
            Ok(())
        })
        .await?;
        Ok((record, token))
    }

    async fn get_admin(&self, id: &KeyId) -> Result<Option<AdminRecord>, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ADMIN_COLUMNS} FROM admin_tokens WHERE id = ?1"
            ))?;
            Ok(stmt.query_row([id.as_str()], admin_from_row).optional()?)
        })
        .await
    }

    async fn admin_by_cert(&self, fingerprint: &str) -> Result<Option<AdminRecord>, StoreError> {
        let fp = fingerprint.to_owned();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ADMIN_COLUMNS} FROM admin_tokens WHERE cert_sha256 = ?1 \
                 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1"
            ))?;
            Ok(stmt.query_row([fp], admin_from_row).optional()?)
        })
        .await
    }

    async fn list_admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ADMIN_COLUMNS} FROM admin_tokens ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], admin_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke_admin(&self, id: &KeyId, now: i64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let exists = exists(&tx, "admin_tokens", &id)?;
            tx.execute(
                "UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.commit()?;
            Ok(exists)
        })
        .await
    }

    async fn touch_admins(&self, used: Vec<(KeyId, i64)>) -> Result<(), StoreError> {
        self.with_conn(move |c| touch(c, "admin_tokens", &used))
            .await
    }
}

fn exists(c: &Connection, table: &str, id: &KeyId) -> Result<bool, StoreError> {
    Ok(c.query_row(
        &format!("SELECT 1 FROM {table} WHERE id = ?1"),
        [id.as_str()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: row.get::<_, i64>(0)? as u64,
        time: row.get(1)?,
        kind: row.get(2)?,
        request_id: row.get(3)?,
        tenant: row.get(4)?,
        app: row.get(5)?,
        env: row.get(6)?,
        key_id: row.get(7)?,
        model: row.get(8)?,
        status: row.get::<_, Option<i64>>(9)?.map(|s| s as u16),
    })
}

const AUDIT_COLUMNS: &str = "seq, time, kind, request_id, tenant, app, env, key_id, model, status";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PresentedKey;

    fn new_key(env: &str) -> NewKey {
        NewKey {
            tenant: "acme".into(),
            app: "bot".into(),
            env: env.into(),
            ..NewKey::default()
        }
    }

    #[tokio::test]
    async fn keys_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (record, key) = store.create_key(new_key("prod"), 100).await.unwrap();
        let (other, _) = store.create_key(new_key("dev"), 101).await.unwrap();
        drop(store);

        let store = SqliteStore::open_in(dir.path()).unwrap();
        let got = store.get_key(&record.id).await.unwrap().unwrap();
        assert_eq!(got, record);
        assert!(PresentedKey::parse(key.expose()).unwrap().matches(&got));
        let all = store.list_keys().await.unwrap();
        assert_eq!(
            all.iter().map(|k| &k.id).collect::<Vec<_>>(),
            vec![&record.id, &other.id]
        );
    }

    #[tokio::test]
    async fn the_plaintext_is_not_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (_, key) = store.create_key(new_key("prod"), 1).await.unwrap();
        drop(store);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let secret = &key.expose()[key.expose().len() - 34..];
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    #[tokio::test]
    async fn revoke_is_idempotent_and_reports_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (record, _) = store.create_key(new_key("prod"), 1).await.unwrap();
        assert!(store.revoke_key(&record.id, 50).await.unwrap());
        assert!(store.revoke_key(&record.id, 60).await.unwrap());
        assert_eq!(
            store.get_key(&record.id).await.unwrap().unwrap().revoked_at,
            Some(50)
        );
        let unknown = KeyId::parse("000000000000").unwrap();
        assert!(!store.revoke_key(&unknown, 1).await.unwrap());
        assert_eq!(store.get_key(&unknown).await.unwrap(), None);
    }

    #[tokio::test]
    async fn scopes_and_metadata_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let mut new = new_key("prod");
        new.scope = crate::Scope {
            models: vec!["gpt-4o*".into()],
            endpoints: vec!["chat_completions".into()],
            networks: vec![crate::scope::parse_network("10.0.0.0/8").unwrap()],
            max_tokens: Some(512),
            client_cert: Some("0f".repeat(32)),
            rpm: Some(60),
            concurrency: Some(4),
            tpm: Some(40_000),
            daily_tokens: Some(1_000_000),
            monthly_tokens: None,
            daily_cost: None,
            monthly_cost: Some(250.5),
        };
        new.expires_at = Some(5000);
        new.owner = Some("search-team".into());
        new.ticket = Some("CHG-7".into());
        new.labels.insert("cost-center".into(), "42".into());
        new.created_by = "admin:alice".into();
        let (record, _) = store.create_key(new, 10).await.unwrap();
        drop(store);
        let store = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(store.get_key(&record.id).await.unwrap().unwrap(), record);
    }

    #[tokio::test]
    async fn rotation_keeps_the_id_and_the_old_secret_for_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (record, old) = store.create_key(new_key("prod"), 10).await.unwrap();
        let (rotated, new) = store
            .rotate_key(&record.id, 110, 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rotated.id, record.id);
        assert_ne!(old, new);
        let got = store.get_key(&record.id).await.unwrap().unwrap();
        assert_eq!(got, rotated);
        assert_eq!(got.rotated_at, Some(100));
        let old = PresentedKey::parse(old.expose()).unwrap();
        let new = PresentedKey::parse(new.expose()).unwrap();
        assert!(old.check(&got, 109).is_ok());
        assert!(old.check(&got, 110).is_err());
        assert!(new.check(&got, 110).is_ok());
        // Rotating again ends the first secret at once.
        let (again, newest) = store
            .rotate_key(&record.id, 200, 105)
            .await
            .unwrap()
            .unwrap();
        assert!(old.check(&again, 106).is_err());
        assert!(new.check(&again, 106).is_ok());
        assert!(
            PresentedKey::parse(newest.expose())
                .unwrap()
                .check(&again, 106)
                .is_ok()
        );
        // No grace: the old secret stops at once, and is known as rotated.
        let (none, _) = store.rotate_key(&record.id, 0, 300).await.unwrap().unwrap();
        let replaced = PresentedKey::parse(newest.expose()).unwrap();
        assert_eq!(
            replaced.check(&none, 300),
            Err(crate::keys::Refusal::RotatedOut)
        );
        let unknown = KeyId::parse("000000000000").unwrap();
        assert!(store.rotate_key(&unknown, 0, 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn last_use_only_moves_forward_and_disable_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (record, _) = store.create_key(new_key("prod"), 10).await.unwrap();
        store
            .touch_keys(vec![(record.id.clone(), 50), (record.id.clone(), 40)])
            .await
            .unwrap();
        let got = store.get_key(&record.id).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(50));
        assert!(store.expired_unrecorded(1000).await.unwrap().is_empty());
        let mut expiring = new_key("prod");
        expiring.expires_at = Some(100);
        let (expiring, _) = store.create_key(expiring, 10).await.unwrap();
        assert!(store.expired_unrecorded(99).await.unwrap().is_empty());
        let due = store.expired_unrecorded(100).await.unwrap();
        assert_eq!(
            due.iter().map(|k| &k.id).collect::<Vec<_>>(),
            [&expiring.id]
        );
        store.mark_expiry_recorded(&expiring.id, 101).await.unwrap();
        assert!(store.expired_unrecorded(1000).await.unwrap().is_empty());
        assert!(store.disable_key(&record.id, 60).await.unwrap());
        assert!(store.disable_key(&record.id, 70).await.unwrap());
        let got = store.get_key(&record.id).await.unwrap().unwrap();
        assert_eq!((got.disabled_at, got.status(80)), (Some(60), "disabled"));
    }

    #[tokio::test]
    async fn admin_principals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (alice, token) = store
            .create_admin(
                NewAdmin {
                    name: "alice".into(),
                    role: Role::Admin,
                    created_by: "cli:root".into(),
                    cert: Some("ab".repeat(32)),
                },
                5,
            )
            .await
            .unwrap();
        let presented = keys::PresentedAdminToken::parse(token.expose()).unwrap();
        let got = store.get_admin(presented.id()).await.unwrap().unwrap();
        assert!(presented.matches(&got.hash));
        assert_eq!(got, alice);
        store
            .touch_admins(vec![(alice.id.clone(), 9)])
            .await
            .unwrap();
        assert!(store.revoke_admin(&alice.id, 10).await.unwrap());
        assert!(
            store
                .admin_by_cert(&"ab".repeat(32))
                .await
                .unwrap()
                .is_none()
        );
        let all = store.list_admins().await.unwrap();
        assert_eq!(
            (all.len(), all[0].revoked_at, all[0].last_used_at),
            (1, Some(10), Some(9))
        );
        assert!(
            store
                .create_admin(
                    NewAdmin {
                        name: "Bad Name".into(),
                        role: Role::Auditor,
                        created_by: String::new(),
                        cert: None,
                    },
                    5
                )
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn keys_from_before_scopes_keep_working_with_full_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.db");
        {
            // The schema as the first two migrations left it, with a key.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO api_keys VALUES ('0123456789ab', 'acme', 'bot', 'prod', ?1, 7, NULL)",
                [vec![0u8; 32]],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let got = store
            .get_key(&KeyId::parse("0123456789ab").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.scope, crate::Scope::default());
        assert_eq!((got.created_at, got.status(8)), (7, "active"));
    }

    #[tokio::test]
    async fn refuses_a_schema_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[tokio::test]
    async fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        assert!(matches!(
            store.create_key(new_key("Prod!"), 1).await,
            Err(StoreError::InvalidKey(_))
        ));
    }
}

#[cfg(test)]
mod audit_index_tests {
    use super::*;

    fn row(seq: u64, tenant: &str, kind: &str, status: Option<u16>) -> AuditRow {
        AuditRow {
            seq,
            time: format!("2026-11-{:02}T00:00:00.000000Z", 20 + seq % 3),
            kind: kind.into(),
            request_id: Some(format!("r{seq}")),
            tenant: Some(tenant.into()),
            app: Some("bot".into()),
            env: Some("prod".into()),
            key_id: Some("k".into()),
            model: Some("m".into()),
            status,
        }
    }

    #[tokio::test]
    async fn searches_by_every_field_and_ignores_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(store.audit_indexed_through().await.unwrap(), 0);
        let rows: Vec<AuditRow> = (0..30)
            .map(|i| {
                row(
                    i,
                    if i % 2 == 0 { "acme" } else { "globex" },
                    if i % 5 == 0 {
                        "request.denied"
                    } else {
                        "request.received"
                    },
                    Some(if i % 7 == 0 { 502 } else { 200 }),
                )
            })
            .collect();
        store.index_audit(rows.clone()).await.unwrap();
        store.index_audit(rows[..5].to_vec()).await.unwrap();
        assert_eq!(store.audit_indexed_through().await.unwrap(), 30);
        assert_eq!(store.audit_row(3).await.unwrap(), Some(rows[3].clone()));

        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery {
                limit: 1000,
                ..AuditQuery::default()
            };
            f(&mut q);
            q
        };
        let acme = store
            .search_audit(q(|q| q.tenant = Some("acme".into())))
            .await
            .unwrap();
        assert_eq!(acme, (0..30).step_by(2).collect::<Vec<_>>());
        let denied = store
            .search_audit(q(|q| q.kind = Some("request.denied".into())))
            .await
            .unwrap();
        assert_eq!(denied, vec![0, 5, 10, 15, 20, 25]);
        let failed_acme = store
            .search_audit(q(|q| {
                q.tenant = Some("acme".into());
                q.status = Some(502);
            }))
            .await
            .unwrap();
        assert_eq!(failed_acme, vec![0, 14, 28]);
        let day = store
            .search_audit(q(|q| {
                q.from = Some("2026-11-21".into());
                q.to = Some("2026-11-22".into());
            }))
            .await
            .unwrap();
        assert!(day.iter().all(|s| s % 3 == 1) && day.len() == 10, "{day:?}");
        let limited = store
            .search_audit(AuditQuery {
                limit: 4,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(limited, vec![0, 1, 2, 3]);
        // Values are bound, never spliced into SQL.
        let none = store
            .search_audit(q(|q| q.tenant = Some("x' OR '1'='1".into())))
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
