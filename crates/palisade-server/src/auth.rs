//! Who is calling, and may they: gateway API keys on the proxy listener,
//! admin tokens on the admin listener.
//!
//! A presented key's format and checksum are checked first (no lookup for a
//! mistyped key); then its record is found by id — from a short-lived cache,
//! so a change made by another process is in force within [`CACHE_TTL`]
//! (plus the moment it takes to read it again; changes made through this
//! node's admin API take effect at once) — and its hash is compared in
//! constant time. Every way a key can be unusable yields the same answer to
//! the caller, so a caller cannot learn whether a key id exists; the reason
//! goes only into the audit record.
//!
//! Failed authentications are counted per source address; past
//! `access.failed_auth_burst` and `failed_auth_per_minute`, requests from
//! that address are refused with 429 without their key being looked at.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use palisade_config::AccessConfig;
use palisade_store::keys::{PresentedAdminToken, PresentedKey};
use palisade_store::{AdminRecord, KeyId, KeyRecord, Role, Scope, Store, StoreError};

/// How long a looked-up record is trusted before it is read again. With
/// [`REFRESH_GRACE`], a change made elsewhere (another node sharing the
/// store) is in force within a second.
pub const CACHE_TTL: Duration = Duration::from_millis(600);
const CACHE_MAX: usize = 100_000;

/// An authenticated proxy caller.
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

    pub fn scope(&self) -> &Scope {
        &self.record.scope
    }
}

/// An authenticated admin API caller.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    record: Arc<AdminRecord>,
}

impl AdminPrincipal {
    pub fn id(&self) -> &KeyId {
        &self.record.id
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn role(&self) -> Role {
        self.record.role
    }

    /// How audit entries name this principal: `admin:<name>`.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.record.name)
    }
}

/// Why a caller was refused. `reason` is for the audit record only.
#[derive(Debug)]
pub struct Refused {
    pub kind: RefusedKind,
    /// A fixed, low-cardinality word (`unknown_key`, `revoked`, ...).
    pub reason: &'static str,
    /// The key id the caller claimed, when the key was well formed.
    pub claimed_id: Option<KeyId>,
    /// Set on the failure that started throttling this address.
    pub throttling_started: bool,
}

#[derive(Debug)]
pub enum RefusedKind {
    /// No credential presented.
    Missing,
    /// Malformed, unknown, wrong, rotated out, revoked, disabled or
    /// expired: deliberately one answer.
    Invalid,
    /// Too many failed attempts from this address.
    Throttled {
        retry_after: Duration,
    },
    /// A valid key used from a network outside its scope.
    Network,
    /// A valid key used on an endpoint outside its scope.
    Endpoint,
    /// A key bound to a client certificate, used without it.
    Certificate,
    /// A valid credential of the wrong kind (a proxy key on the admin API).
    WrongKind,
    Store(StoreError),
}

impl Refused {
    fn new(kind: RefusedKind, reason: &'static str) -> Self {
        Self {
            kind,
            reason,
            claimed_id: None,
            throttling_started: false,
        }
    }
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    keys: RecordCache<KeyRecord>,
    admins: RecordCache<AdminRecord>,
    failures: FailureLimiter,
    environments: Vec<String>,
    key_use: UseBuffer,
    admin_use: UseBuffer,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, access: &AccessConfig) -> Self {
        Self {
            store,
            keys: RecordCache::default(),
            admins: RecordCache::default(),
            failures: FailureLimiter::new(access.failed_auth_per_minute, access.failed_auth_burst),
            environments: access.environments.clone(),
            key_use: UseBuffer::default(),
            admin_use: UseBuffer::default(),
        }
    }

    /// Checks a proxy request's key, then its scope for `endpoint` (a label;
    /// `None` for paths every key may use), `client` and the client
    /// certificate's fingerprint (over mutual TLS).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        endpoint: Option<&str>,
        cert: Option<&str>,
    ) -> Result<Principal, Refused> {
        let now = Instant::now();
        if let Some(retry_after) = self.failures.throttled(client, now) {
            return Err(Refused::new(
                RefusedKind::Throttled { retry_after },
                "auth_throttled",
            ));
        }
        let result = self.check_key(headers).await;
        let record = match result {
            Ok(record) => record,
            Err(mut refused) => {
                if !matches!(refused.kind, RefusedKind::Store(_)) {
                    refused.throttling_started = self.failures.fail(client, now);
                }
                return Err(refused);
            }
        };
        let principal = Principal { record };
        let denied = |kind, reason| {
            let mut r = Refused::new(kind, reason);
            r.claimed_id = Some(principal.key_id().clone());
            Err(r)
        };
        if !principal.scope().allows_source(client) {
            return denied(RefusedKind::Network, "network_not_allowed");
        }
        if let Some(label) = endpoint
            && !principal.scope().allows_endpoint(label)
        {
            return denied(RefusedKind::Endpoint, "endpoint_not_allowed");
        }
        if let Some(bound) = &principal.scope().client_cert
            && cert != Some(bound.as_str())
        {
            return denied(RefusedKind::Certificate, "client_cert_mismatch");
        }
        self.key_use.note(principal.key_id(), unix_now());
        Ok(principal)
    }

    async fn check_key(&self, headers: &HeaderMap) -> Result<Arc<KeyRecord>, Refused> {
        let presented =
            presented_key(headers).ok_or(Refused::new(RefusedKind::Missing, "missing_key"))?;
        let key = PresentedKey::parse(presented).map_err(|e| {
            Refused::new(
                RefusedKind::Invalid,
                match e {
                    palisade_store::KeyError::Checksum => "bad_checksum",
                    _ => "malformed_key",
                },
            )
        })?;
        let invalid = |reason| Refused {
            kind: RefusedKind::Invalid,
            reason,
            claimed_id: Some(key.id().clone()),
            throttling_started: false,
        };
        let store = &self.store;
        let record = self
            .keys
            .get(key.id(), || store.get_key(key.id()))
            .await
            .map_err(|e| Refused::new(RefusedKind::Store(e), "store_unavailable"))?
            .ok_or_else(|| invalid("unknown_key"))?;
        key.check(&record, unix_now())
            .map_err(|r| invalid(r.as_str()))?;
        if !self.environments.iter().any(|e| *e == record.env) {
            return Err(invalid("environment_not_declared"));
        }
        Ok(record)
    }

    /// Checks an admin API request's token; without one, a client
    /// certificate bound to an admin principal (mutual TLS) stands in.
    pub async fn authenticate_admin(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        cert: Option<&str>,
    ) -> Result<AdminPrincipal, Refused> {
        let now = Instant::now();
        if let Some(retry_after) = self.failures.throttled(client, now) {
            return Err(Refused::new(
                RefusedKind::Throttled { retry_after },
                "auth_throttled",
            ));
        }
        let checked = match cert {
            Some(fp) if presented_key(headers).is_none() => self.admin_by_cert(fp).await,
            _ => self.check_admin(headers).await,
        };
        match checked {
            Ok(record) => {
                self.admin_use.note(&record.id, unix_now());
                Ok(AdminPrincipal { record })
            }
            Err(mut refused) => {
                if !matches!(refused.kind, RefusedKind::Store(_)) {
                    refused.throttling_started = self.failures.fail(client, now);
                }
                Err(refused)
            }
        }
    }

    async fn check_admin(&self, headers: &HeaderMap) -> Result<Arc<AdminRecord>, Refused> {
        let presented =
            presented_key(headers).ok_or(Refused::new(RefusedKind::Missing, "missing_token"))?;
        let token = match PresentedAdminToken::parse(presented) {
            Ok(token) => token,
            Err(_) if PresentedKey::parse(presented).is_ok() => {
                return Err(Refused::new(
                    RefusedKind::WrongKind,
                    "proxy_key_on_admin_api",
                ));
            }
            Err(_) => return Err(Refused::new(RefusedKind::Invalid, "malformed_token")),
        };
        let invalid = |reason| Refused {
            kind: RefusedKind::Invalid,
            reason,
            claimed_id: Some(token.id().clone()),
            throttling_started: false,
        };
        let store = &self.store;
        let record = self
            .admins
            .get(token.id(), || store.get_admin(token.id()))
            .await
            .map_err(|e| Refused::new(RefusedKind::Store(e), "store_unavailable"))?
            .ok_or_else(|| invalid("unknown_token"))?;
        if !token.matches(&record.hash) {
            return Err(invalid("wrong_secret"));
        }
        if record.revoked_at.is_some() {
            return Err(invalid("revoked"));
        }
        Ok(record)
    }

    async fn admin_by_cert(&self, fingerprint: &str) -> Result<Arc<AdminRecord>, Refused> {
        match self.store.admin_by_cert(fingerprint).await {
            Ok(Some(record)) => Ok(Arc::new(record)),
            Ok(None) => Err(Refused::new(RefusedKind::Invalid, "unknown_certificate")),
            Err(e) => Err(Refused::new(RefusedKind::Store(e), "store_unavailable")),
        }
    }

    /// Drops a cached key record, so that a change made through this node
    /// is in force for the next request.
    pub fn forget_key(&self, id: &KeyId) {
        self.keys.forget(id);
    }

    pub fn forget_admin(&self, id: &KeyId) {
        self.admins.forget(id);
    }

    /// The store, for the admin API.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Writes the last-use times gathered since the previous flush.
    pub async fn flush_use(&self) -> Result<(), StoreError> {
        let keys = self.key_use.take();
        if !keys.is_empty() {
            self.store.touch_keys(keys).await?;
        }
        let admins = self.admin_use.take();
        if !admins.is_empty() {
            self.store.touch_admins(admins).await?;
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    palisade_store::unix_now()
}

/// Records by id, each trusted for [`CACHE_TTL`]. When one goes stale, one
/// request reads it again while the others keep using it for at most
/// [`REFRESH_GRACE`] more, so that a busy key does not send every
/// concurrent request to the store at once.
struct RecordCache<R> {
    map: RwLock<HashMap<KeyId, Cached<R>>>,
}

impl<R> Default for RecordCache<R> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
        }
    }
}

/// A record, or the knowledge that there is none: unknown ids are cached
/// too, so that a known and an unknown id take the same time to refuse and
/// a flood of made-up ids does not reach the store each time.
struct Cached<R> {
    record: Option<Arc<R>>,
    at: Instant,
    refreshing: Arc<AtomicBool>,
}

impl<R> Clone for Cached<R> {
    fn clone(&self) -> Self {
        Self {
            record: self.record.clone(),
            at: self.at,
            refreshing: Arc::clone(&self.refreshing),
        }
    }
}

/// How long past [`CACHE_TTL`] a record may be used while one request is
/// reading it again.
pub const REFRESH_GRACE: Duration = Duration::from_millis(300);

impl<R> RecordCache<R> {
    async fn get<F, Fut>(&self, id: &KeyId, fetch: F) -> Result<Option<Arc<R>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<R>, StoreError>>,
    {
        let now = Instant::now();
        let cached = self.map.read().ok().and_then(|c| c.get(id).cloned());
        let mut claimed = None;
        if let Some(c) = &cached {
            let age = now.duration_since(c.at);
            if age < CACHE_TTL {
                return Ok(c.record.clone());
            }
            let someone_else = c.refreshing.swap(true, Ordering::AcqRel);
            if someone_else && age < CACHE_TTL + REFRESH_GRACE {
                return Ok(c.record.clone());
            }
            claimed = Some(Arc::clone(&c.refreshing));
        }
        let record = match fetch().await {
            Ok(found) => found.map(Arc::new),
            Err(e) => {
                // Let the next request try again.
                if let Some(flag) = claimed {
                    flag.store(false, Ordering::Release);
                }
                return Err(e);
            }
        };
        if let Ok(mut map) = self.map.write() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(
                id.clone(),
                Cached {
                    record: record.clone(),
                    at: now,
                    refreshing: Arc::new(AtomicBool::new(false)),
                },
            );
        }
        Ok(record)
    }

    fn forget(&self, id: &KeyId) {
        if let Ok(mut map) = self.map.write() {
            map.remove(id);
        }
    }
}

/// Last-use times waiting to be written to the store.
#[derive(Default)]
struct UseBuffer {
    pending: Mutex<HashMap<KeyId, i64>>,
}

impl UseBuffer {
    fn note(&self, id: &KeyId, now: i64) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if let Some(t) = pending.get_mut(id) {
            *t = (*t).max(now);
        } else if pending.len() < CACHE_MAX {
            pending.insert(id.clone(), now);
        }
    }

    fn take(&self) -> Vec<(KeyId, i64)> {
        self.pending
            .lock()
            .map(|mut p| p.drain().collect())
            .unwrap_or_default()
    }
}

/// Failed attempts per source address: a token bucket of `burst` that
/// refills at `per_minute`. An address whose bucket is empty is throttled.
struct FailureLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    throttled: bool,
}

const LIMITER_MAX: usize = 100_000;

impl FailureLimiter {
    fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.throttled = false;
        }
    }

    /// How long until `ip` may try again, when it is throttled.
    fn throttled(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().ok()?;
        let b = buckets.get_mut(&ip)?;
        self.refill(b, now);
        (b.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
    }

    /// Counts a failure; true when it is the one that starts throttling.
    fn fail(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        if buckets.len() >= LIMITER_MAX && !buckets.contains_key(&ip) {
            // Forget addresses that have recovered fully.
            let full = self.burst;
            let per_sec = self.per_sec;
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < full
            });
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            throttled: false,
        });
        self.refill(b, now);
        b.tokens -= 1.0;
        if b.tokens < 1.0 && !b.throttled {
            b.throttled = true;
            return true;
        }
        false
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

/// The address a request comes from: the peer, or — when the peer is a
/// trusted proxy — the rightmost `X-Forwarded-For` address that is not
/// itself a trusted proxy (addresses further left were supplied by the
/// client and prove nothing).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = palisade_store::scope::canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for part in value.rsplit(',') {
            let Some(ip) = parse_forwarded(part.trim()) else {
                return client;
            };
            client = palisade_store::scope::canonical(ip);
            if !is_trusted(&client) {
                return client;
            }
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`,
/// with an optional port.
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
    host.parse().ok()
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

    #[test]
    fn limiter_throttles_after_the_burst_and_recovers() {
        let l = FailureLimiter::new(60, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.throttled(ip, t0), None);
        assert!(!l.fail(ip, t0));
        assert!(!l.fail(ip, t0));
        assert!(l.fail(ip, t0), "the third failure empties a burst of 3");
        assert!(!l.fail(ip, t0), "throttling starts once");
        let wait = l.throttled(ip, t0).unwrap();
        assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(3));
        assert_eq!(l.throttled(other, t0), None);
        // One per second refills: after the wait, one more try.
        assert_eq!(l.throttled(ip, t0 + wait + Duration::from_millis(1)), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.1.1"),
        );
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::5]:443"),
        );
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        h.remove("x-forwarded-for");
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
    }
}

/// Every combination of the five things a key's use depends on — model,
/// endpoint, network, expiry, environment — against what the gateway
/// decides, including which refusal comes first.
#[cfg(test)]
mod scope_matrix {
    use super::*;
    use axum::http::HeaderValue;
    use palisade_store::scope::parse_network;
    use palisade_store::{NewKey, SqliteStore, unix_now};

    #[tokio::test]
    async fn the_full_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let access = AccessConfig {
            environments: vec!["prod".into()],
            failed_auth_burst: 10_000,
            ..AccessConfig::default()
        };
        let now = unix_now();
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let mut checked = 0;
        for bits in 0u8..32 {
            let [model_ok, endpoint_ok, network_ok, unexpired, env_declared] =
                [0, 1, 2, 3, 4].map(|i| bits & (1 << i) != 0);
            let new = NewKey {
                tenant: "acme".into(),
                app: "matrix".into(),
                env: if env_declared { "prod" } else { "qa" }.into(),
                scope: Scope {
                    models: vec![if model_ok { "gpt-*" } else { "claude-*" }.into()],
                    endpoints: vec![
                        if endpoint_ok {
                            "chat_completions"
                        } else {
                            "embeddings"
                        }
                        .into(),
                    ],
                    networks: vec![
                        parse_network(if network_ok {
                            "10.0.0.0/8"
                        } else {
                            "192.168.0.0/16"
                        })
                        .unwrap(),
                    ],
                    ..Scope::default()
                },
                expires_at: Some(if unexpired { now + 3600 } else { now - 1 }),
                ..NewKey::default()
            };
            let (_, key) = store.create_key(new, now - 10).await.unwrap();
            // A fresh authenticator per key, so no throttling carries over.
            let auth = Authenticator::new(Arc::new(store.clone()), &access);
            let mut headers = HeaderMap::new();
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).unwrap(),
            );
            let got = match auth
                .authenticate(&headers, client, Some("chat_completions"), None)
                .await
            {
                Ok(p) if p.scope().allows_model("gpt-4o") => "ok",
                Ok(_) => "model_not_allowed",
                Err(r) => r.reason,
            };
            let want = if !unexpired {
                "expired"
            } else if !env_declared {
                "environment_not_declared"
            } else if !network_ok {
                "network_not_allowed"
            } else if !endpoint_ok {
                "endpoint_not_allowed"
            } else if !model_ok {
                "model_not_allowed"
            } else {
                "ok"
            };
            assert_eq!(
                got, want,
                "model {model_ok} endpoint {endpoint_ok} network {network_ok} unexpired {unexpired} env {env_declared}"
            );
            checked += 1;
        }
        assert_eq!(checked, 32);
    }
}
