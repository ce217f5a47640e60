//! The embedded backend: one SQLite file in the data directory.
//!
//! Calls run on Tokio's blocking pool; the connection is guarded by a mutex
//! (SQLite serialises writers anyway). WAL mode lets the CLI read and write
//! the same file while a server holds it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::keys::{self, ApiKey, KeyId, KeyRecord, NewKey};
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

const KEY_COLUMNS: &str = "id, tenant, app, env, hash, created_at, revoked_at";

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(4)?;
    let bad = |i| rusqlite::Error::InvalidColumnType(i, "key".into(), rusqlite::types::Type::Text);
    Ok(KeyRecord {
        id: KeyId::parse(&id).map_err(|_| bad(0))?,
        tenant: row.get(1)?,
        app: row.get(2)?,
        env: row.get(3)?,
        hash: hash.try_into().map_err(|_| bad(4))?,
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, new: NewKey, now: i64) -> Result<(KeyRecord, ApiKey), StoreError> {
        let (record, key) = keys::generate(&new, now)?;
        let stored = record.clone();
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, tenant, app, env, hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
                params![
                    stored.id.as_str(),
                    stored.tenant,
                    stored.app,
                    stored.env,
                    stored.hash.as_slice(),
                    stored.created_at
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
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM api_keys WHERE id = ?1",
                    [id.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.commit()?;
            Ok(exists)
        })
        .await
    }
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
