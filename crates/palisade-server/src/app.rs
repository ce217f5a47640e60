//! The application: both listeners, their routers and the layer stack.
//!
//! # The proxy layer stack, outermost first
//!
//! 1. **request id** ([`request_id::layer`]) — reads or makes the id, puts
//!    [`RequestId`] in the extensions and `x-request-id` on every response.
//!    Outermost so that even errors from later layers carry the id.
//! 2. **access log** ([`access_log`]) — counts the answer by endpoint and
//!    status and writes the request's one log line, with the error kind
//!    left by [`ApiError`]; for a proxied answer the line and the latency
//!    are left to the exchange's `Completion`, which knows when the body
//!    ended. Outside authentication so that refusals are counted.
//! 3. **authenticate** ([`authenticate`]) — deny by default: every route,
//!    the fallback included, needs a valid key, except the paths in
//!    [`OPEN_PATHS`]. Adds [`Principal`] to the extensions.
//! 4. **method not allowed** ([`method_not_allowed`]) — turns axum's bare
//!    405 into an error body in the caller's dialect.
//! 5. **routes** ([`crate::routes`]) — the handlers.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use palisade_config::Config;
use palisade_dialect::{Dialect, Endpoint};
use palisade_store::Store;
use tokio::net::TcpListener;

use crate::access_log::{AccessLog, AccessRecord, AccessSink};
use crate::audit::{Audit, Denied};
use crate::auth::{Authenticator, Refused, RefusedKind, client_ip};
use crate::error::{ApiError, DenyReason, ErrorKind};
use crate::metrics::{EndpointLabels, Metrics, RequestLabels};
use crate::proxy::DeferredCompletion;
use crate::registry::{Registry, RegistryError};
use crate::request_id::{self, RequestId};
use crate::routes;
use crate::state::AppState;
use crate::tls::TlsListener;
use palisade_ledger::{Journal, Recovery};

/// Paths served without a key.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] palisade_config::ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the audit ledger cannot record the start-up entries: {0}")]
    Audit(#[from] palisade_ledger::JournalError),
    #[error("data protection: {0}")]
    Dlp(String),
    #[error("limits: {0}")]
    Limits(String),
    #[error("inbound TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The proxy router with its whole layer stack.
pub fn proxy_router(state: AppState) -> Router {
    routes::proxy()
        .layer(middleware::from_fn(method_not_allowed))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .layer(middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The admin router: metrics and health (open), the ledger's tiles and
/// the admin API (an admin token; `ledger.public` may open the checkpoint or all of it).
pub fn admin_router(state: AppState) -> Router {
    let ledger = routes::ledger().layer(middleware::from_fn_with_state(
        state.clone(),
        crate::admin::authenticate,
    ));
    routes::admin()
        .merge(ledger)
        .merge(crate::admin::router(state.clone()))
        .layer(middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The backends an application is built on.
pub struct Dependencies {
    pub store: Arc<dyn Store>,
    /// Where the access log's lines go.
    pub access_log: Arc<dyn AccessSink>,
    /// The audit ledger's writer (see [`crate::audit::open_journal`]) and
    /// what opening it recovered.
    pub journal: Arc<Journal>,
    pub recovery: Recovery,
    /// See [`crate::audit::config_hash`].
    pub config_hash: String,
}

/// A gateway bound to its listeners, ready to run.
pub struct Application {
    proxy: TcpListener,
    admin: TcpListener,
    proxy_tls: Option<Arc<TlsListener>>,
    admin_tls: Option<Arc<TlsListener>>,
    state: AppState,
    /// The store the audit search index lives in, and how often it is
    /// brought up to date.
    indexer: (Arc<dyn Store>, Duration),
}

/// Where limits are counted: this process, or Redis (connected lazily; an
/// unreachable Redis is not a start-up error, it is `limits.on_unavailable`).
fn build_limits(
    config: &Config,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::limits::Limits, BuildError> {
    let plan = crate::limits::Plan::new(config);
    let l = &config.limits;
    if l.backend != palisade_config::LimitsBackend::Redis {
        return Ok(crate::limits::Limits::new(plan, None));
    }
    let password = l
        .redis_password
        .as_ref()
        .map(|p| p.resolve(env))
        .transpose()
        .map_err(|e| BuildError::Limits(format!("limits.redis_password: {e}")))?;
    let redis = crate::redis_limits::RedisLimits::new(l, password.as_ref().map(|p| p.expose()))
        .map_err(|e| BuildError::Limits(e.to_string()))?;
    Ok(crate::limits::Limits::new(
        plan,
        Some(crate::limits::SharedBackend {
            redis,
            on_unavailable: l.on_unavailable,
            origin: origin.to_owned(),
        }),
    ))
}

/// How often the audit search index is brought up to date.
const INDEX_EVERY: Duration = Duration::from_secs(2);

impl Application {
    /// Resolves providers, binds both listeners (port 0 picks a free port).
    /// `env` resolves `env:` secret references.
    pub async fn build(
        config: Config,
        deps: Dependencies,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, BuildError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::build(&config, env, &metrics)?;
        let load_tls = |files: &Option<palisade_config::TlsConfig>| {
            files
                .as_ref()
                .map(|f| TlsListener::load(f).map(Arc::new))
                .transpose()
        };
        let proxy_tls = load_tls(&config.server.tls)?;
        let admin_tls = load_tls(&config.server.admin_tls)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BuildError::Bind { addr, source })
        };
        let proxy = bind(config.server.listen).await?;
        let admin = bind(config.server.admin_listen).await?;
        let access_log = AccessLog::new(deps.access_log, config.log.format);
        let audit = Audit::new(deps.journal, deps.config_hash);
        audit.record_start(&config, &deps.recovery).await?;
        let protections =
            crate::protection::Protections::build(&config).map_err(BuildError::Dlp)?;
        let limits = build_limits(&config, audit.journal().origin(), env)?;
        let policies = crate::routing::Policies::new(&config);
        let store = Arc::clone(&deps.store);
        let auth = Authenticator::new(deps.store, &config.access);
        let state = AppState::new(
            config,
            registry,
            auth,
            access_log,
            metrics,
            audit,
            crate::state::Controls {
                protections,
                limits,
                policies,
            },
        );
        state.limits().probe(state.audit(), state.metrics()).await;
        if reconcile_budgets(&state, store.as_ref()).await {
            state.limits().sync_budgets().await;
        }
        let indexer = (store, INDEX_EVERY);
        Ok(Self {
            proxy,
            admin,
            proxy_tls,
            admin_tls,
            state,
            indexer,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .unwrap_or_else(|_| self.state.config().server.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| self.state.config().server.admin_listen)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Reloads both listeners' TLS files (the binary calls it on SIGHUP).
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader {
            listeners: [
                ("proxy", self.proxy_tls.clone()),
                ("admin", self.admin_tls.clone()),
            ],
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests and streams finish for up to
    /// `server.shutdown_grace`, and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.config().server.shutdown_grace;
        let token = tokio_util::sync::CancellationToken::new();
        let workers = Arc::new(crate::listener::Workers::start(
            self.state.config().server.workers(),
        )?);
        let proxy = crate::listener::serve(
            self.proxy,
            self.proxy_tls,
            proxy_router(self.state.clone()),
            Arc::clone(&workers),
            token.clone(),
        );
        let admin = crate::listener::serve(
            self.admin,
            self.admin_tls,
            admin_router(self.state.clone()),
            Arc::clone(&workers),
            token.clone(),
        );
        // The accept loops run as tasks on the runtime's workers, not on the
        // thread that awaits this future, so that no request has to wake it.
        let proxy = tokio::spawn(proxy);
        let admin = tokio::spawn(admin);
        let aborts = [proxy.abort_handle(), admin.abort_handle()];
        let (store, every) = self.indexer;
        let journal = Arc::clone(self.state.audit().journal());
        let indexer = tokio::spawn(crate::audit_index::run(
            store,
            journal,
            every,
            token.clone(),
        ));
        let housekeeping = tokio::spawn(housekeeping(self.state.clone(), token.clone()));
        let health = tokio::spawn(crate::routing::health_checks(
            self.state.clone(),
            token.clone(),
        ));
        let servers = async move {
            let (p, a) = tokio::join!(proxy, admin);
            p.map_err(std::io::Error::other)??;
            a.map_err(std::io::Error::other)??;
            Ok(())
        };
        tokio::pin!(servers);
        let result = tokio::select! {
            result = &mut servers => result,
            () = shutdown => {
                tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: draining in-flight requests");
                self.state.start_draining();
                token.cancel();
                drain(servers, grace).await
            }
        };
        for abort in aborts {
            abort.abort();
        }
        token.cancel();
        let _ = indexer.await;
        let _ = housekeeping.await;
        let _ = health.await;
        // Connections still open after the grace period end here; their
        // exchanges are recorded before the journal closes. The aborted
        // accept loops let go of the threads as their tasks are dropped.
        let mut workers = workers;
        for _ in 0..200 {
            match Arc::try_unwrap(workers) {
                Ok(owned) => {
                    let _ = tokio::task::spawn_blocking(move || owned.stop()).await;
                    break;
                }
                Err(shared) => {
                    workers = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        // Everything queued goes into a final checkpoint.
        let journal = Arc::clone(self.state.audit().journal());
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        result
    }
}

/// Budgets count what this month already spent, read back from the ledger
/// (through the usage report), so that a restart or a crash loses nothing
/// that was accounted. Says whether this gateway's spending is now known
/// (then its share of shared budgets is set from it).
async fn reconcile_budgets(state: &AppState, store: &dyn Store) -> bool {
    let any = state.config().tenants.iter().any(|t| {
        std::iter::once(&t.limits)
            .chain(t.apps.iter().map(|a| &a.limits))
            .any(|l| {
                l.daily_tokens.is_some()
                    || l.monthly_tokens.is_some()
                    || l.daily_cost.is_some()
                    || l.monthly_cost.is_some()
            })
    });
    let keys_have_budgets = || async {
        store.list_keys().await.is_ok_and(|keys| {
            keys.iter().any(|k| {
                let s = &k.scope;
                k.revoked_at.is_none()
                    && (s.daily_tokens.is_some()
                        || s.monthly_tokens.is_some()
                        || s.daily_cost.is_some()
                        || s.monthly_cost.is_some())
            })
        })
    };
    if !any && !keys_have_budgets().await {
        return false;
    }
    let (day, month) = crate::budgets::periods(palisade_store::unix_now());
    let journal = state.audit().journal();
    let config = state.config();
    match crate::usage::report(
        store,
        journal.dir(),
        journal.verifier_key(),
        Some(format!("{month}-01")),
        None,
        &|m| crate::usage::price_of(config, m),
    )
    .await
    {
        Ok(rows) => {
            let rows: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    (
                        r.day,
                        r.tenant,
                        r.app,
                        r.key_id,
                        r.total_tokens,
                        r.cost.unwrap_or(0.0),
                    )
                })
                .collect();
            state.limits().budgets().load(&rows, &month, &day);
            tracing::info!(target: "palisade::limits", rows = rows.len(), "budgets reconciled from the ledger");
            true
        }
        Err(e) => {
            // Shared budgets keep this gateway's share as it was.
            tracing::error!(target: "palisade::limits", error = %e, "budgets not reconciled from the ledger; this month's earlier spending is not counted here");
            false
        }
    }
}

/// How often last-use times are written to the store.
const FLUSH_USE_EVERY: Duration = Duration::from_secs(10);
/// How often keys that expired are put on record.
const RECORD_EXPIRED_EVERY: Duration = Duration::from_secs(60);
/// How often keys unused past `access.disable_unused_after` are disabled.
const DISABLE_UNUSED_EVERY: Duration = Duration::from_secs(3600);

/// Key upkeep until `stop`: writes last-use times, records expiries, and
/// disables keys unused for too long (each at start-up, then
/// periodically); a last flush on the way out.
async fn housekeeping(state: AppState, stop: tokio_util::sync::CancellationToken) {
    let mut flush = tokio::time::interval(FLUSH_USE_EVERY);
    let mut expired = tokio::time::interval(RECORD_EXPIRED_EVERY);
    let mut disable = tokio::time::interval(DISABLE_UNUSED_EVERY);
    let manager = || crate::manage::Manager {
        store: state.auth().store().as_ref(),
        audit: state.audit(),
        config: state.config(),
        cache: state.auth(),
    };
    loop {
        tokio::select! {
            _ = flush.tick() => {
                if let Err(e) = state.auth().flush_use().await {
                    tracing::warn!(target: "palisade::auth", error = %e, "key last-use times not written");
                }
            }
            _ = expired.tick() => {
                if let Err(e) = manager().record_expired(palisade_store::unix_now()).await {
                    tracing::warn!(target: "palisade::auth", error = %e, "key expiries not recorded");
                }
            }
            _ = disable.tick() => {
                if let Some(after) = state.config().access.disable_unused_after {
                    // Use noted since the last flush counts.
                    let _ = state.auth().flush_use().await;
                    match manager().disable_unused(after, palisade_store::unix_now()).await {
                        Ok(ids) if !ids.is_empty() => {
                            tracing::info!(target: "palisade::auth", count = ids.len(), "disabled unused keys");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(target: "palisade::auth", error = %e, "unused keys not disabled"),
                    }
                }
            }
            () = stop.cancelled() => break,
        }
    }
    if let Err(e) = state.auth().flush_use().await {
        tracing::warn!(target: "palisade::auth", error = %e, "key last-use times not written");
    }
}

/// Reloads the listeners' TLS certificates and keys; see
/// [`Application::tls_reloader`].
#[derive(Clone)]
pub struct TlsReloader {
    listeners: [(&'static str, Option<Arc<TlsListener>>); 2],
    state: AppState,
}

impl TlsReloader {
    /// Reads every listener's files again. A listener whose files are bad
    /// keeps its configuration; each outcome is logged and recorded.
    pub fn reload(&self) -> Vec<(&'static str, Result<(), crate::tls::TlsError>)> {
        let mut outcomes = Vec::new();
        for (name, tls) in &self.listeners {
            let Some(tls) = tls else { continue };
            let result = tls.reload();
            match &result {
                Ok(()) => {
                    tracing::info!(listener = name, "TLS certificate reloaded");
                    self.state.audit().submit(
                        "tls.reloaded",
                        serde_json::json!({
                            "listener": name,
                            "cert_file": tls.files().cert_file.display().to_string(),
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "TLS reload failed; the previous certificate stays in force");
                    self.state.audit().submit(
                        "tls.reload_failed",
                        serde_json::json!({"listener": name, "error": e.to_string()}),
                    );
                }
            }
            outcomes.push((*name, result));
        }
        outcomes
    }
}

async fn drain(
    servers: impl Future<Output = std::io::Result<()>>,
    grace: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(grace, servers).await {
        Ok(result) => {
            tracing::info!("drained; stopped");
            result
        }
        Err(_) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            Ok(())
        }
    }
}

/// The metrics label for a path: its endpoint, or a fixed word.
fn endpoint_label(path: &str) -> &'static str {
    Endpoint::ALL
        .iter()
        .find(|e| e.path() == path)
        .map(|e| e.label())
        .unwrap_or(match path {
            "/v1/models" => "models",
            "/healthz" => "healthz",
            "/readyz" => "readyz",
            _ => "unmatched",
        })
}

async fn access_log(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let endpoint = endpoint_label(&path);
    let request_id = req.extensions().get::<RequestId>().cloned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let resp = next.run(req).await;
    let status = resp.status();
    let metrics = state.metrics();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            status: status.as_u16(),
        })
        .inc();
    if resp.extensions().get::<DeferredCompletion>().is_some() {
        // The exchange's Completion records its duration and log line.
        return resp;
    }
    let duration = started.elapsed();
    let key_id = resp
        .extensions()
        .get::<KeyIdTag>()
        .map(|k| k.0.as_str())
        .unwrap_or_default();
    let error = resp
        .extensions()
        .get::<ErrorKind>()
        .map_or("", |k| k.label());
    if status.as_u16() >= 400 {
        let reason = resp.extensions().get::<DenyReason>().map_or(error, |r| r.0);
        let client = resp
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or(peer.map(|p| p.ip()));
        let detections = resp
            .extensions()
            .get::<crate::proxy::Detections>()
            .map(|d| &d.0);
        let route = resp
            .extensions()
            .get::<crate::proxy::RouteRecord>()
            .map(|r| &r.0);
        state.audit().denied(&Denied {
            request_id: request_id
                .as_ref()
                .map(RequestId::as_str)
                .unwrap_or_default(),
            detections,
            reason,
            route,
            status: status.as_u16(),
            method: method.as_str(),
            path: &path,
            key_id,
            source: client,
        });
    }
    metrics
        .request_duration
        .get_or_create(&EndpointLabels { endpoint })
        .observe(duration.as_secs_f64());
    state.access_log().record(&AccessRecord {
        request_id: request_id
            .as_ref()
            .map(RequestId::as_str)
            .unwrap_or_default(),
        method: method.as_str(),
        path: &path,
        status: status.as_u16(),
        error,
        key_id,
        peer,
        exchange: None,
        duration,
    });
    resp
}

/// The key id of a request — the authenticated one, or the one a refused
/// caller claimed — carried to the access log and the audit record.
#[derive(Debug, Clone)]
struct KeyIdTag(String);

/// The address a request is judged by: the peer, or the client a trusted
/// proxy names (see [`crate::auth::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Who is on the other end: the address the request is judged by (see
/// [`client_ip`]) and the fingerprint of the client certificate presented
/// over mutual TLS.
pub(crate) fn caller(req: &Request, state: &AppState) -> (IpAddr, Option<String>) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = client_ip(peer, req.headers(), &state.config().access.trusted_proxies);
    let cert = req
        .extensions()
        .get::<crate::tls::ClientCert>()
        .map(|c| c.0.clone());
    (client, cert)
}

/// The scope label of a proxy path; `None` for paths every key may use
/// (the model list, which is filtered by the key's model scope) and for
/// unknown paths (which answer 404).
fn scope_label(path: &str) -> Option<&'static str> {
    Endpoint::ALL
        .iter()
        .find(|e| e.path() == path)
        .map(|e| e.label())
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(req).await;
    }
    let dialect = Dialect::of_path(path);
    let endpoint = scope_label(path);
    let (client, cert) = caller(&req, &state);
    req.extensions_mut().insert(ClientAddr(client));
    match state
        .auth()
        .authenticate(req.headers(), client, endpoint, cert.as_deref())
        .await
    {
        Ok(principal) => {
            let tag = KeyIdTag(principal.key_id().as_str().to_owned());
            req.extensions_mut().insert(principal);
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(tag);
            resp.extensions_mut().insert(ClientAddr(client));
            resp
        }
        Err(refused) => {
            if refused.throttling_started {
                state.audit().throttled(client, &state.config().access);
            }
            let mut resp = refusal(&refused, dialect).into_response();
            if let Some(id) = refused.claimed_id {
                resp.extensions_mut()
                    .insert(KeyIdTag(id.as_str().to_owned()));
            }
            resp.extensions_mut().insert(ClientAddr(client));
            resp
        }
    }
}

/// What a refused caller is told: the same for every unusable key.
pub(crate) fn refusal(refused: &Refused, dialect: Dialect) -> ApiError {
    let e = match &refused.kind {
        RefusedKind::Missing => ApiError::new(
            ErrorKind::MissingKey,
            dialect,
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ),
        RefusedKind::Invalid | RefusedKind::WrongKind => {
            ApiError::new(ErrorKind::InvalidKey, dialect, "invalid API key")
        }
        RefusedKind::Throttled { retry_after } => ApiError::new(
            ErrorKind::AuthThrottled,
            dialect,
            "too many failed authentication attempts from this address; try again later",
        )
        .with_retry_after(*retry_after),
        RefusedKind::Network => ApiError::new(
            ErrorKind::PermissionDenied,
            dialect,
            "this API key may not be used from this network address",
        ),
        RefusedKind::Endpoint => ApiError::new(
            ErrorKind::PermissionDenied,
            dialect,
            "this API key may not use this endpoint",
        ),
        RefusedKind::Certificate => ApiError::new(
            ErrorKind::PermissionDenied,
            dialect,
            "this API key must be used with the client certificate it is bound to",
        ),
        RefusedKind::Store(e) => {
            tracing::error!(target: "palisade::auth", error = %e, "key store unavailable; refusing requests");
            ApiError::new(
                ErrorKind::Unavailable,
                dialect,
                "the gateway cannot check API keys right now",
            )
        }
    };
    e.with_reason(refused.reason)
}

/// axum answers a known path with the wrong method with an empty 405; give
/// it a body in the caller's dialect, keeping the `Allow` header.
async fn method_not_allowed(req: Request, next: Next) -> Response {
    let dialect = Dialect::of_path(req.uri().path());
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let allow: Option<HeaderValue> = resp.headers().get(header::ALLOW).cloned();
    let mut out = ApiError::new(
        ErrorKind::MethodNotAllowed,
        dialect,
        format!("method {method} is not allowed on this path"),
    )
    .into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// Unknown paths on the proxy listener.
pub(crate) async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(
        ErrorKind::NotFound,
        Dialect::of_path(path),
        format!(
            "no such endpoint: {} {}",
            req.method(),
            printable_path(path)
        ),
    )
    .into_response()
}

fn printable_path(path: &str) -> String {
    path.chars().filter(|c| !c.is_control()).take(200).collect()
}
