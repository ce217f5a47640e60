//! Key verification for a cached key: the work every proxy request does
//! before anything else (format and checksum, cache lookup, constant-time
//! hash comparison, expiry, environment, network and endpoint scope, the
//! last-use note). Target: at most 5 µs.
//!
//! Also: admission against limits (target 2 µs), token counts, and a
//! routing decision over 50 targets (target 5 µs).
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
    use palisade_server::limits::{Applicable, Fill, Level, Limiter};
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
                .admit_with(&with_tokens, 1_500, std::time::Instant::now(), Fill::Whole)
                .unwrap();
            // All of it given back: at tens of millions of iterations a
            // partial refund would use up even a limit of u32::MAX a
            // minute, and the bench would be refused.
            if let Some(charge) = &a.charge {
                limiter.settle(charge, 0);
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
    // Varied text (the README: prose, lists, commands, tables), where the
    // repeated sentence above meets few distinct words.
    let readme = include_str!("../../../README.md");
    let varied = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::to_string(&readme[..readme.len().min(16 * 1024)]).unwrap()
    );
    c.bench_function(
        "estimate a new prompt of up to 16 KiB of varied text (o200k_base)",
        |b| {
            b.iter(|| {
                n += 1;
                let fresh = varied.replacen("Palisade", &format!("Palisade {n}"), 1);
                palisade_server::tokens::estimate_prompt(fresh.as_bytes(), true)
            })
        },
    );
}

/// A routing decision for a PHI tenant limited to the EU over a model with
/// 50 targets: half in the US, a fifth without a BAA, some with stale
/// reports, the rest eligible and ordered by weight. Target: at most 5 µs.
fn routing(c: &mut Criterion) {
    use palisade_config::{
        Compliance, Config, ModelConfig, ProviderConfig, ProviderKind, Strategy, TargetConfig,
        TenantConfig,
    };
    let today = palisade_server::routing::today();
    let date = palisade_config::format_date;
    let mut config = Config::empty("/tmp/unused".into());
    for i in 0..50i64 {
        config.providers.push(ProviderConfig {
            region: Some(if i % 2 == 0 { "us-east-1" } else { "eu-west-1" }.into()),
            compliance: Compliance {
                soc2_type2_period_end: Some(date(today - if i % 7 == 0 { 900 } else { 90 })),
                baa: i % 5 != 0,
                zero_retention: true,
                trains_on_data: Some(false),
                ..Compliance::default()
            },
            ..ProviderConfig::new(
                &format!("p{i}"),
                ProviderKind::Openai,
                "http://127.0.0.1:9/v1",
            )
        });
    }
    config.models.push(ModelConfig {
        name: "m".into(),
        provider: String::new(),
        targets: (0..50)
            .map(|i| TargetConfig {
                provider: format!("p{i}"),
                upstream_model: None,
                weight: 1 + i % 3,
                timeouts: None,
            })
            .collect(),
        strategy: Strategy::Weighted,
        upstream_model: None,
        price: None,
    });
    let registry = palisade_server::registry::Registry::build(
        &config,
        &|_| None,
        &palisade_server::metrics::Metrics::new(),
    )
    .unwrap();
    let model = registry.model("m").unwrap();
    let tenant = TenantConfig {
        name: "acme".into(),
        data_classes: vec!["phi".into()],
        regions: vec!["eu".into()],
        ..TenantConfig::default()
    };
    let policy = palisade_server::routing::Policy::new(&config, &tenant);
    let d = palisade_server::routing::decide(
        model,
        palisade_dialect::Endpoint::ChatCompletions,
        &policy,
        None,
        today,
        0.5,
        std::time::Instant::now(),
    );
    assert!(!d.order.is_empty() && d.excluded.len() > 25);
    c.bench_function("route: 50 targets, PHI tenant in the EU", |b| {
        b.iter(|| {
            palisade_server::routing::decide(
                model,
                palisade_dialect::Endpoint::ChatCompletions,
                &policy,
                None,
                today,
                palisade_server::routing::pick(),
                std::time::Instant::now(),
            )
        })
    });
}

criterion_group!(benches, bench, admission, routing);
criterion_main!(benches);
