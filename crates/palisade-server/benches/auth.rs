//! Key verification for a cached key: the work every proxy request does
//! before anything else (format and checksum, cache lookup, constant-time
//! hash comparison, expiry, environment, network and endpoint scope, the
//! last-use note). Target: at most 5 µs.
//!
//! `cargo bench -p palisade-server --bench auth`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{Criterion, criterion_group, criterion_main};
use palisade_config::AccessConfig;
use palisade_server::auth::Authenticator;
use palisade_store::scope::parse_network;
use palisade_store::{NewKey, Scope, SqliteStore, Store};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).unwrap();
    let (_, key) = rt
        .block_on(store.create_key(
            NewKey {
                tenant: "acme".into(),
                app: "bench".into(),
                env: "prod".into(),
                scope: Scope {
                    models: vec!["gpt-4o*".into()],
                    endpoints: vec!["chat_completions".into(), "embeddings".into()],
                    networks: vec![parse_network("127.0.0.0/8").unwrap()],
                    ..Scope::default()
                },
                ..NewKey::default()
            },
            palisade_store::unix_now(),
        ))
        .unwrap();
    let auth = Authenticator::new(Arc::new(store), &AccessConfig::default());
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", key.expose())).unwrap(),
    );
    let client = "127.0.0.1".parse().unwrap();
    // Warm the cache.
    rt.block_on(auth.authenticate(&headers, client, Some("chat_completions"), None))
        .unwrap();
    c.bench_function("authenticate a cached key", |b| {
        b.to_async(&rt).iter(|| async {
            auth.authenticate(&headers, client, Some("chat_completions"), None)
                .await
                .unwrap()
        })
    });
}

/// Admission against a key's, an app's and a tenant's request rate and
/// concurrency (the slots given back each time). Target: at most 2 µs.
fn admission(c: &mut Criterion) {
    use palisade_server::limits::{Applicable, Level, Limiter};
    let limiter = Limiter::default();
    let limits = Applicable {
        rates: vec![
            (Level::Key, "k".into(), u32::MAX),
            (Level::App, "acme/bot".into(), u32::MAX),
            (Level::Tenant, "acme".into(), u32::MAX),
        ],
        concurrency: vec![(Level::Key, "k".into(), 1_000)],
        ..Applicable::default()
    };
    c.bench_function("admit: three rates and a concurrency limit", |b| {
        b.iter(|| limiter.admit(&limits, std::time::Instant::now()).is_ok())
    });
    let with_tokens = Applicable {
        tokens: vec![
            (Level::Key, "k".into(), u32::MAX),
            (Level::Tenant, "acme".into(), u32::MAX),
        ],
        ..limits.clone()
    };
    c.bench_function("admit: the same and two token rates, settled", |b| {
        b.iter(|| {
            let a = limiter
                .admit_with(&with_tokens, 1_500, std::time::Instant::now())
                .unwrap();
            if let Some(charge) = &a.charge {
                limiter.settle(charge, 300);
            }
        })
    });
    let prompt = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::to_string(&"The committee met on Tuesday to review the roadmap. ".repeat(70))
            .unwrap()
    );
    palisade_server::tokens::estimate_prompt(prompt.as_bytes(), true);
    c.bench_function("estimate a 3.6 KiB prompt seen before (o200k_base)", |b| {
        b.iter(|| palisade_server::tokens::estimate_prompt(prompt.as_bytes(), true))
    });
    let mut n = 0u64;
    c.bench_function("estimate a new 3.6 KiB prompt (o200k_base)", |b| {
        b.iter(|| {
            n += 1;
            let fresh = prompt.replace("roadmap", &format!("roadmap {n}"));
            palisade_server::tokens::estimate_prompt(fresh.as_bytes(), true)
        })
    });
}

criterion_group!(benches, bench, admission);
criterion_main!(benches);
