//! The admin API: `/admin/v1/...` on the admin listener, JSON in and out.
//!
//! Every route is listed once, in [`api`], with its method, path, the role
//! it needs and its OpenAPI description; the router and the OpenAPI
//! document at `/admin/v1/openapi.json` are both built from that list.
//!
//! Callers present an admin token (`Authorization: Bearer paladm_...`).
//! Reads (`GET`) are open to both roles; every other method needs the
//! `admin` role. Proxy API keys are refused outright. Refusals are audit
//! entries; reads of the ledger and its index are audit entries too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json};
use palisade_store::{AuditQuery, KeyId, Role, unix_now};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{AdminPrincipal, Refused, RefusedKind};
use crate::manage::{
    self, Actor, KeyRequest, ManageError, Manager, OnChange, admin_json, key_json,
};
use crate::state::AppState;

/// Where the admin API lives.
pub const BASE: &str = "/admin/v1";

/// An admin API error: `{"error": {"type": ..., "message": ...}}`.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl AdminError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ManageError> for AdminError {
    fn from(e: ManageError) -> Self {
        match &e {
            ManageError::Invalid(_) => Self::invalid(e.to_string()),
            ManageError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ManageError::Audit(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                e.to_string(),
            ),
            ManageError::Store(err) => {
                tracing::error!(target: "palisade::admin", error = %err, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store failed; see the gateway's log",
                )
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"type": self.kind, "message": self.message}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (the OpenAPI document).
    Open,
    /// Admins and auditors.
    Read,
    /// Admins only.
    Write,
}

/// One route of the admin API.
pub struct ApiRoute {
    pub method: Method,
    /// Relative to [`BASE`], in axum's syntax (`/keys/{id}`).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// The JSON schema of the request body, for writes that take one.
    pub body: Option<fn() -> Value>,
    handler: MethodRouter<AppState>,
}

impl ApiRoute {
    fn new(
        method: Method,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: MethodRouter<AppState>,
    ) -> Self {
        Self {
            method,
            path,
            access,
            summary,
            body: None,
            handler,
        }
    }

    fn with_body(mut self, schema: fn() -> Value) -> Self {
        self.body = Some(schema);
        self
    }
}

/// Every route of the admin API.
pub fn api() -> Vec<ApiRoute> {
    use Access::{Open, Read, Write};
    vec![
        ApiRoute::new(
            Method::GET,
            "/openapi.json",
            Open,
            "This document",
            get(openapi),
        ),
        ApiRoute::new(
            Method::GET,
            "/whoami",
            Read,
            "The calling principal and its role",
            get(whoami),
        ),
        ApiRoute::new(
            Method::GET,
            "/keys",
            Read,
            "List keys (filters: tenant, app, env, status)",
            get(list_keys),
        ),
        ApiRoute::new(
            Method::POST,
            "/keys",
            Write,
            "Create a key; the response holds the key, shown once",
            post(create_key),
        )
        .with_body(key_request_schema),
        ApiRoute::new(
            Method::GET,
            "/keys/review",
            Read,
            "The access review: every key with its scope, age, use and flags (format=json|csv)",
            get(review),
        ),
        ApiRoute::new(Method::GET, "/keys/{id}", Read, "One key", get(show_key)),
        ApiRoute::new(
            Method::GET,
            "/providers/review",
            Read,
            "The provider review: every provider's compliance facts, the models and tenants that use it, and flags (stale or expiring SOC 2 report, tenant policies it fails)",
            get(providers_review),
        ),
        ApiRoute::new(
            Method::POST,
            "/keys/{id}/rotate",
            Write,
            "New secret; the old one works for the grace period",
            post(rotate_key),
        )
        .with_body(rotate_schema),
        ApiRoute::new(
            Method::POST,
            "/keys/{id}/revoke",
            Write,
            "Revoke a key, in force at once on this node",
            post(revoke_key),
        )
        .with_body(ticket_schema),
        ApiRoute::new(
            Method::GET,
            "/tenants",
            Read,
            "Tenants, their applications and key counts",
            get(tenants),
        ),
        ApiRoute::new(
            Method::GET,
            "/admins",
            Read,
            "Admin principals",
            get(list_admins),
        ),
        ApiRoute::new(
            Method::POST,
            "/admins",
            Write,
            "Create an admin principal; the response holds its token, shown once",
            post(create_admin),
        )
        .with_body(admin_schema),
        ApiRoute::new(
            Method::POST,
            "/admins/{id}/revoke",
            Write,
            "Revoke an admin principal",
            post(revoke_admin),
        )
        .with_body(ticket_schema),
        ApiRoute::new(
            Method::GET,
            "/usage",
            Read,
            "Requests and tokens per day, tenant, app, key and model (from, to, format=json|csv); recorded as a read",
            get(usage),
        ),
        ApiRoute::new(
            Method::GET,
            "/audit/search",
            Read,
            "Search the audit ledger's index (from, to, kind, tenant, app, env, key, model, status, request_id, limit); recorded as a read",
            get(audit_search),
        ),
        ApiRoute::new(
            Method::GET,
            "/audit/entries/{seq}",
            Read,
            "One ledger entry by sequence number; recorded as a read",
            get(audit_entry),
        ),
    ]
}

/// The admin API's router, with its authentication layer.
pub fn router(state: AppState) -> Router<AppState> {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for r in api() {
        let merged = match by_path.remove(r.path) {
            Some(existing) => existing.merge(r.handler),
            None => r.handler,
        };
        by_path.insert(r.path, merged);
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(&format!("{BASE}{path}"), handler);
    }
    router.layer(middleware::from_fn_with_state(state, authenticate))
}

/// The access a request needs, by method and path.
fn access_for(method: &Method, path: &str) -> Access {
    if method == Method::GET && path == format!("{BASE}/openapi.json") {
        Access::Open
    } else if method == Method::GET || method == Method::HEAD {
        Access::Read
    } else {
        Access::Write
    }
}

/// Authenticates an admin token and checks its role against the method.
/// Also guards the ledger (`/audit/...`), except what `ledger.public` opens.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let access = access_for(req.method(), req.uri().path());
    let public_ledger = state.config().ledger.public.serves(req.uri().path());
    if access == Access::Open || public_ledger {
        return next.run(req).await;
    }
    let (client, cert) = crate::app::caller(&req, &state);
    match state
        .auth()
        .authenticate_admin(req.headers(), client, cert.as_deref())
        .await
    {
        Ok(principal) => {
            if access == Access::Write && !principal.role().can_write() {
                record_denied(
                    &state,
                    &req,
                    client,
                    "role_not_allowed",
                    Some(principal.actor()),
                    403,
                );
                return AdminError::new(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    format!("the {} role is read-only", principal.role()),
                )
                .into_response();
            }
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(crate::app::ClientAddr(client));
            next.run(req).await
        }
        Err(refused) => {
            if refused.throttling_started {
                state.audit().throttled(client, &state.config().access);
            }
            let err = admin_refusal(&refused);
            record_denied(
                &state,
                &req,
                client,
                refused.reason,
                None,
                err.status.as_u16(),
            );
            err.into_response()
        }
    }
}

/// What a refused admin caller is told.
pub(crate) fn admin_refusal(refused: &Refused) -> AdminError {
    match &refused.kind {
        RefusedKind::Missing => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send an admin token: `Authorization: Bearer paladm_...`",
        ),
        RefusedKind::WrongKind => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "proxy API keys cannot use the admin API; use an admin token (palisade admin create)",
        ),
        RefusedKind::Throttled { retry_after } => {
            let mut e = AdminError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "auth_throttled",
                "too many failed authentication attempts from this address; try again later",
            );
            e.retry_after = Some(retry_after.as_secs().max(1));
            e
        }
        RefusedKind::Store(e) => {
            tracing::error!(target: "palisade::admin", error = %e, "store unavailable");
            AdminError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the gateway cannot check tokens right now",
            )
        }
        RefusedKind::Invalid
        | RefusedKind::Network
        | RefusedKind::Endpoint
        | RefusedKind::Certificate => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "invalid admin token",
        ),
    }
}

fn record_denied(
    state: &AppState,
    req: &Request,
    client: IpAddr,
    reason: &str,
    actor: Option<String>,
    status: u16,
) {
    state.audit().submit(
        "admin.denied",
        json!({
            "reason": reason,
            "status": status,
            "method": req.method().as_str(),
            "path": req.uri().path().chars().filter(|c| !c.is_control()).take(200).collect::<String>(),
            "actor": actor,
            "source": client.to_string(),
        }),
    );
}

impl OnChange for crate::auth::Authenticator {
    fn key_changed(&self, id: &KeyId) {
        self.forget_key(id);
    }

    fn admin_changed(&self, id: &KeyId) {
        self.forget_admin(id);
    }
}

fn manager(state: &AppState) -> Manager<'_> {
    Manager {
        store: state.auth().store().as_ref(),
        audit: state.audit(),
        config: state.config(),
        cache: state.auth(),
    }
}

fn actor(p: &AdminPrincipal, ticket: Option<String>) -> Actor {
    Actor {
        name: p.actor(),
        ticket,
    }
}

/// Parses a JSON body, naming the problem; an empty body is `{}`.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, AdminError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| AdminError::invalid(format!("request body: {e}")))
}

fn key_id(id: &str) -> Result<KeyId, AdminError> {
    KeyId::parse(id)
        .map_err(|_| AdminError::invalid("not a key id (12 characters of lowercase base32)"))
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

async fn whoami(Extension(p): Extension<AdminPrincipal>) -> Json<Value> {
    Json(json!({"id": p.id().as_str(), "name": p.name(), "role": p.role().as_str()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFilter {
    tenant: Option<String>,
    app: Option<String>,
    env: Option<String>,
    status: Option<String>,
}

async fn list_keys(
    State(state): State<AppState>,
    Query(f): Query<KeyFilter>,
) -> Result<Json<Value>, AdminError> {
    let now = unix_now();
    let keys = state
        .auth()
        .store()
        .list_keys()
        .await
        .map_err(ManageError::from)?;
    let list: Vec<Value> = keys
        .iter()
        .filter(|k| f.tenant.as_ref().is_none_or(|t| *t == k.tenant))
        .filter(|k| f.app.as_ref().is_none_or(|a| *a == k.app))
        .filter(|k| f.env.as_ref().is_none_or(|e| *e == k.env))
        .filter(|k| f.status.as_ref().is_none_or(|s| s == k.status(now)))
        .map(|k| key_json(k, now))
        .collect();
    Ok(Json(json!({"keys": list})))
}

async fn create_key(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    raw: Bytes,
) -> Result<Response, AdminError> {
    let req: KeyRequest = body(&raw)?;
    let now = unix_now();
    let actor = actor(&p, req.ticket.clone());
    let (record, key) = manager(&state).create_key(req, &actor, now).await?;
    let mut v = key_json(&record, now);
    v["key"] = json!(key.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn show_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = key_id(&id)?;
    let record = state
        .auth()
        .store()
        .get_key(&id)
        .await
        .map_err(ManageError::from)?
        .ok_or_else(|| {
            AdminError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no key with id {id}"),
            )
        })?;
    Ok(Json(key_json(&record, unix_now())))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    grace: Option<String>,
    ticket: Option<String>,
}

async fn rotate_key(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = key_id(&id)?;
    let req: RotateRequest = body(&raw)?;
    manage::check_ticket(req.ticket.as_deref())?;
    let grace = req
        .grace
        .as_deref()
        .map(palisade_config::parse_duration)
        .transpose()
        .map_err(|e| AdminError::invalid(format!("grace: {e}")))?;
    let now = unix_now();
    let (record, key) = manager(&state)
        .rotate_key(&id, grace, &actor(&p, req.ticket), now)
        .await?;
    let mut v = key_json(&record, now);
    v["key"] = json!(key.expose());
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TicketRequest {
    ticket: Option<String>,
}

async fn revoke_key(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = key_id(&id)?;
    let req: TicketRequest = body(&raw)?;
    manage::check_ticket(req.ticket.as_deref())?;
    let now = unix_now();
    let record = manager(&state)
        .revoke_key(&id, &actor(&p, req.ticket), now)
        .await?;
    Ok(Json(key_json(&record, now)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewQuery {
    format: Option<String>,
}

async fn review(
    State(state): State<AppState>,
    Query(q): Query<ReviewQuery>,
) -> Result<Response, AdminError> {
    let keys = state
        .auth()
        .store()
        .list_keys()
        .await
        .map_err(ManageError::from)?;
    let rows = manage::review(&keys, state.config(), unix_now());
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(json!({"keys": rows})).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            manage::review_csv(&rows),
        )
            .into_response()),
        Some(_) => Err(AdminError::invalid("format must be json or csv")),
    }
}

async fn providers_review(State(state): State<AppState>) -> Json<Value> {
    Json(crate::review::providers(
        state.config(),
        crate::routing::today(),
    ))
}

async fn tenants(State(state): State<AppState>) -> Result<Json<Value>, AdminError> {
    let now = unix_now();
    let keys = state
        .auth()
        .store()
        .list_keys()
        .await
        .map_err(ManageError::from)?;
    // tenant → app → (keys, active keys)
    let mut tree: BTreeMap<&str, BTreeMap<&str, (u64, u64)>> = BTreeMap::new();
    for k in &keys {
        let counts = tree
            .entry(k.tenant.as_str())
            .or_default()
            .entry(k.app.as_str())
            .or_default();
        counts.0 += 1;
        counts.1 += u64::from(k.status(now) == "active");
    }
    let list: Vec<Value> = tree
        .iter()
        .map(|(tenant, apps)| {
            let apps: Vec<Value> = apps
                .iter()
                .map(
                    |(app, (all, active))| json!({"name": app, "keys": all, "active_keys": active}),
                )
                .collect();
            json!({"name": tenant, "apps": apps})
        })
        .collect();
    Ok(Json(json!({"tenants": list})))
}

async fn list_admins(State(state): State<AppState>) -> Result<Json<Value>, AdminError> {
    let admins = state
        .auth()
        .store()
        .list_admins()
        .await
        .map_err(ManageError::from)?;
    Ok(Json(
        json!({"admins": admins.iter().map(admin_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRequest {
    name: String,
    role: Role,
    ticket: Option<String>,
    /// SHA-256 fingerprint of a client certificate that authenticates as
    /// this principal over mutual TLS.
    client_cert_sha256: Option<String>,
}

async fn create_admin(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    raw: Bytes,
) -> Result<Response, AdminError> {
    let req: AdminRequest = body(&raw)?;
    manage::check_ticket(req.ticket.as_deref())?;
    let (record, token) = manager(&state)
        .create_admin(
            req.name,
            req.role,
            req.client_cert_sha256,
            &actor(&p, req.ticket),
            unix_now(),
        )
        .await?;
    let mut v = admin_json(&record);
    v["token"] = json!(token.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke_admin(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = key_id(&id)?;
    let req: TicketRequest = body(&raw)?;
    manage::check_ticket(req.ticket.as_deref())?;
    let record = manager(&state)
        .revoke_admin(&id, &actor(&p, req.ticket), unix_now())
        .await?;
    Ok(Json(admin_json(&record)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    tenant: Option<String>,
    app: Option<String>,
    env: Option<String>,
    key: Option<String>,
    model: Option<String>,
    status: Option<u16>,
    request_id: Option<String>,
    limit: Option<u32>,
}

/// Records that `p` read `what` from the ledger or its index.
fn record_read(state: &AppState, p: &AdminPrincipal, what: Value) {
    state.audit().submit(
        "audit.read",
        json!({"actor": p.actor(), "role": p.role().as_str(), "read": what}),
    );
}

async fn audit_search(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let journal = state.audit().journal();
    let store = state.auth().store();
    let size = crate::audit_index::catch_up(store.as_ref(), journal.dir(), journal.verifier_key())
        .await
        .map_err(|e| {
            AdminError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
    let filters = json!({
        "from": q.from, "to": q.to, "kind": q.kind, "tenant": q.tenant, "app": q.app,
        "env": q.env, "key": q.key, "model": q.model, "status": q.status,
        "request_id": q.request_id, "limit": limit,
    });
    let query = AuditQuery {
        from: q.from,
        to: q.to,
        kind: q.kind,
        tenant: q.tenant,
        app: q.app,
        env: q.env,
        key_id: q.key,
        model: q.model,
        status: q.status,
        request_id: q.request_id,
        limit,
    };
    let seqs = store.search_audit(query).await.map_err(ManageError::from)?;
    let dir = journal.dir().to_owned();
    let found = seqs.clone();
    let entries = tokio::task::spawn_blocking(move || {
        found
            .into_iter()
            .map(|seq| {
                palisade_ledger::proof::read_entry(&dir, size, seq).map(|e| {
                    json!({"seq": seq, "entry": serde_json::from_slice::<Value>(&e).unwrap_or(Value::Null)})
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| AdminError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))?;
    record_read(
        &state,
        &p,
        json!({"search": filters, "results": seqs.len()}),
    );
    Ok(Json(json!({"tree_size": size, "entries": entries})))
}

async fn audit_entry(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Path(seq): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| AdminError::invalid("seq must be a whole number"))?;
    let journal = state.audit().journal();
    let dir = journal.dir().to_owned();
    let vkey = journal.verifier_key().to_owned();
    let read = tokio::task::spawn_blocking(move || {
        let size = palisade_ledger::read_checkpoint(&dir, &vkey)
            .map_err(|e| e.to_string())?
            .map_or(0, |(head, _)| head.size);
        palisade_ledger::proof::read_entry(&dir, size, seq)
            .map(|e| (size, e))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    record_read(&state, &p, json!({"entry": seq}));
    match read {
        Ok((size, entry)) => Ok(Json(json!({
            "seq": seq,
            "tree_size": size,
            "entry": serde_json::from_slice::<Value>(&entry).unwrap_or(Value::Null),
        }))),
        Err(e) => Err(AdminError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no checkpointed entry {seq}: {e}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

async fn usage(
    State(state): State<AppState>,
    Extension(p): Extension<AdminPrincipal>,
    Query(q): Query<UsageQuery>,
) -> Result<Response, AdminError> {
    let journal = state.audit().journal();
    let rows = crate::usage::report(
        state.auth().store().as_ref(),
        journal.dir(),
        journal.verifier_key(),
        q.from.clone(),
        q.to.clone(),
        &|m| crate::usage::price_of(state.config(), m),
    )
    .await
    .map_err(|e| {
        AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    record_read(
        &state,
        &p,
        json!({"usage": {"from": q.from, "to": q.to}, "rows": rows.len()}),
    );
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(json!({"usage": rows})).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::usage::csv(&rows),
        )
            .into_response()),
        Some(_) => Err(AdminError::invalid("format must be json or csv")),
    }
}

fn key_request_schema() -> Value {
    json!({
        "type": "object",
        "required": ["tenant", "app", "env"],
        "additionalProperties": false,
        "properties": {
            "tenant": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "app": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "env": {"type": "string", "description": "one of access.environments"},
            "models": {"type": "array", "items": {"type": "string"}, "description": "globs; default [\"*\"]"},
            "endpoints": {"type": "array", "items": {"type": "string", "enum": endpoint_enum()}, "description": "default [\"*\"]"},
            "networks": {"type": "array", "items": {"type": "string"}, "description": "CIDR; default any"},
            "expires_in": {"type": "string", "description": "duration such as 90d"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "rpm": {"type": "integer", "minimum": 1, "description": "requests per minute for this key"},
            "tpm": {"type": "integer", "minimum": 1, "description": "tokens per minute for this key"},
            "daily_tokens": {"type": "integer", "minimum": 1, "description": "tokens per UTC day for this key"},
            "monthly_tokens": {"type": "integer", "minimum": 1, "description": "tokens per UTC month for this key"},
            "daily_cost": {"type": "number", "exclusiveMinimum": 0, "description": "cost per UTC day for this key, at the models' prices"},
            "monthly_cost": {"type": "number", "exclusiveMinimum": 0, "description": "cost per UTC month for this key, at the models' prices"},
            "concurrency": {"type": "integer", "minimum": 1, "description": "requests in flight at once for this key"},
            "client_cert_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "bind the key to a client certificate (mutual TLS)"},
            "owner": {"type": "string"},
            "ticket": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    })
}

fn endpoint_enum() -> Vec<&'static str> {
    let mut v = vec!["*"];
    v.extend(manage::endpoint_labels());
    v
}

fn rotate_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "grace": {"type": "string", "description": "how long the old secret keeps working, e.g. 24h; default access.rotation_grace"},
            "ticket": {"type": "string"},
        }
    })
}

fn ticket_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {"ticket": {"type": "string"}}
    })
}

fn admin_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "role"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "role": {"type": "string", "enum": ["admin", "auditor"]},
            "ticket": {"type": "string"},
            "client_cert_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        }
    })
}

/// The OpenAPI 3.1 document of the admin API, built from [`api`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in api() {
        let full = format!("{BASE}{}", r.path);
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": operation_id(&r.method, r.path),
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
            },
            "x-palisade-role": match r.access {
                Access::Open => "none",
                Access::Read => "auditor",
                Access::Write => "admin",
            },
        });
        if r.access == Access::Open {
            op["security"] = json!([]);
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = r.body {
            op["requestBody"] =
                json!({"required": false, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths
            .entry(full)
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        entry[r.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Palisade admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Keys, admin principals, access reviews and the audit ledger. GET needs the auditor or admin role; every other method needs admin.",
        },
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "an admin token, paladm_..."}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}
            }}}}},
        },
    })
}

fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        id.push('_');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_the_method() {
        assert_eq!(
            access_for(&Method::GET, "/admin/v1/openapi.json"),
            Access::Open
        );
        assert_eq!(access_for(&Method::GET, "/admin/v1/keys"), Access::Read);
        assert_eq!(access_for(&Method::POST, "/admin/v1/keys"), Access::Write);
        assert_eq!(
            access_for(&Method::DELETE, "/admin/v1/keys/x"),
            Access::Write
        );
        // The table agrees with the rule the middleware applies.
        for r in api() {
            assert_eq!(
                access_for(&r.method, &format!("{BASE}{}", r.path)),
                r.access,
                "{}",
                r.path
            );
        }
    }

    #[test]
    fn openapi_lists_every_route_once() {
        let doc = openapi_document();
        let mut n = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with(BASE));
            n += ops.as_object().unwrap().len();
        }
        assert_eq!(n, api().len());
        assert_eq!(
            operation_id(&Method::POST, "/keys/{id}/rotate"),
            "post_keys_id_rotate"
        );
    }
}
