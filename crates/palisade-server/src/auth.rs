//! Authentication of proxy requests by gateway API key.
//!
//! The presented key's format and checksum are checked first (no lookup for
//! a mistyped key); then the record is found by id — from a short-lived
//! cache, so a revocation made by another process is in force within
//! [`CACHE_TTL`] (plus the moment it takes to read it again) — and the key's hash is compared in constant time. Every
//! way a key can be wrong yields the same answer, so a caller cannot learn
//! whether a key id exists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use palisade_store::keys::PresentedKey;
use palisade_store::{KeyId, KeyRecord, Store, StoreError};

/// How long a looked-up key record is trusted before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 100_000;

/// Who is calling: attached to every authenticated request.
#[derive(Debug, Clone)]
pub struct Principal {
    record: Arc<KeyRecord>,
}

impl Principal {
    pub fn key_id(&self) -> &KeyId {
        &self.record.id
    }

    pub fn tenant(&self) -> &str {
        &self.record.tenant
    }

    pub fn app(&self) -> &str {
        &self.record.app
    }

    pub fn env(&self) -> &str {
        &self.record.env
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key presented")]
    Missing,
    /// Malformed, unknown, mismatched or revoked: deliberately one variant.
    #[error("invalid API key")]
    Invalid,
    #[error("key store unavailable: {0}")]
    Store(#[from] StoreError),
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<KeyId, Cached>>,
}

/// A record and when it was read. When it goes stale, one request reads it
/// again while the others keep using it for at most [`REFRESH_GRACE`] more,
/// so that a busy key does not send every concurrent request to the store
/// at once.
#[derive(Clone)]
struct Cached {
    record: Arc<KeyRecord>,
    at: Instant,
    refreshing: Arc<AtomicBool>,
}

/// How long past [`CACHE_TTL`] a record may be used while one request is
/// reading it again.
const REFRESH_GRACE: Duration = Duration::from_millis(500);

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let presented = presented_key(headers).ok_or(AuthError::Missing)?;
        let key = PresentedKey::parse(presented).map_err(|_| AuthError::Invalid)?;
        let record = self.record(key.id()).await?.ok_or(AuthError::Invalid)?;
        if !key.matches(&record) || record.is_revoked() {
            return Err(AuthError::Invalid);
        }
        Ok(Principal { record })
    }

    async fn record(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let now = Instant::now();
        let cached = self.cache.read().ok().and_then(|c| c.get(id).cloned());
        let mut claimed = None;
        if let Some(c) = &cached {
            let age = now.duration_since(c.at);
            if age < CACHE_TTL {
                return Ok(Some(Arc::clone(&c.record)));
            }
            let someone_else = c.refreshing.swap(true, Ordering::AcqRel);
            if someone_else && age < CACHE_TTL + REFRESH_GRACE {
                return Ok(Some(Arc::clone(&c.record)));
            }
            claimed = Some(Arc::clone(&c.refreshing));
        }
        let fetched = self.store.get_key(id).await;
        let record = match fetched {
            Ok(Some(record)) => Arc::new(record),
            other => {
                // Let the next request try again.
                if let Some(flag) = claimed {
                    flag.store(false, Ordering::Release);
                }
                if let Ok(None) = other
                    && let Ok(mut cache) = self.cache.write()
                {
                    cache.remove(id);
                }
                return other.map(|_| None);
            }
        };
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                id.clone(),
                Cached {
                    record: Arc::clone(&record),
                    at: now,
                    refreshing: Arc::new(AtomicBool::new(false)),
                },
            );
        }
        Ok(Some(record))
    }
}

/// `Authorization: Bearer <key>` first, then `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_bearer_then_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("b"));
        assert_eq!(presented_key(&h), Some("b"));
        h.insert("authorization", HeaderValue::from_static("Bearer a"));
        assert_eq!(presented_key(&h), Some("a"));
        h.insert("authorization", HeaderValue::from_static("Basic a"));
        assert_eq!(presented_key(&h), None);
    }
}
