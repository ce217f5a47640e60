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
use crate::{Store, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Append only.
const MIGRATIONS: &[&str] = &["CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        app TEXT NOT NULL,
        env TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    )"];

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
