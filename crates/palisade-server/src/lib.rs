//! The Palisade gateway: listeners, the layer stack, the proxy path and the
//! upstream client. See [`app`] for the order of layers and `ARCHITECTURE.md`
//! for the map.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod audit;
pub mod audit_index;
pub mod auth;
pub mod budgets;
pub mod error;
mod health;
mod ledger_http;
pub mod limits;
pub mod listener;
pub mod manage;
pub mod metrics;
pub mod protection;
pub mod proxy;
pub mod redis_limits;
pub mod registry;
pub mod relay;
pub mod request_id;
pub mod restore;
pub mod review;
mod routes;
pub mod routing;
pub mod state;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod usage;

pub use app::{Application, BuildError, Dependencies, admin_router, proxy_router};
pub use state::AppState;
