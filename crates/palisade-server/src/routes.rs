//! Paths and their handlers, nothing else. Layers are added in
//! [`crate::app`].

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;
use crate::{app, health, ledger_http, proxy};

pub fn proxy() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/responses", post(proxy::responses))
        .route("/v1/messages", post(proxy::messages))
        .route("/v1/models", get(proxy::list_models))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(app::not_found)
}

/// The admin listener's open paths. The admin API is added by
/// [`crate::admin::router`], the ledger by [`ledger`].
pub fn admin() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .fallback(app::not_found)
}

/// The ledger in the tlog-tiles layout (guarded by the admin API's
/// authentication, except what `ledger.public` opens).
pub fn ledger() -> Router<AppState> {
    Router::new()
        .route("/audit/checkpoint", get(ledger_http::checkpoint))
        .route("/audit/tile/{*rest}", get(ledger_http::tile))
}
