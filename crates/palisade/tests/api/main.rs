//! API tests: each spawns a gateway on 127.0.0.1:0 with a temporary data
//! directory and its own mock provider, and talks to it over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod binary;
mod crash;
mod dlp;
mod errors;
mod helpers;
mod inbound_tls;
mod ledger;
mod lifecycle;
mod limits;
mod proxy;
mod routing;
mod sdk;
mod shared_limits;
mod streaming;
mod tls;
