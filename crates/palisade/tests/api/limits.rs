//! Request rates and concurrency on the request path.

use std::time::Duration;

use palisade_config::{LimitConfig, TenantConfig};
use palisade_mock::MockOptions;
use palisade_store::{NewKey, Scope, Store};
use serde_json::Value;

use crate::helpers::*;

const CHAT: &str = r#"{"model":"gpt-test","messages":[]}"#;

/// Tenant `acme`, the test key's, with these limits.
pub(crate) fn acme(limits: LimitConfig) -> TenantConfig {
    TenantConfig {
        name: "acme".into(),
        limits,
        ..TenantConfig::default()
    }
}

/// A one-message chat request asking for `max` completion tokens.
pub(crate) fn ask(stream: bool, max: u32) -> String {
    format!(
        r#"{{"model":"gpt-test","stream":{stream},"max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

async fn key_with(app: &TestApp, scope: Scope) -> String {
    let (_, key) = app
        .store
        .create_key(
            NewKey {
                tenant: "acme".into(),
                app: "tests".into(),
                env: "dev".into(),
                scope,
                ..NewKey::default()
            },
            palisade_store::unix_now(),
        )
        .await
        .unwrap();
    key.expose().to_owned()
}

async fn chat(app: &TestApp, key: &str, extra: &[(&str, &str)]) -> Reply {
    chat_with(app, key, CHAT, extra).await
}

/// A chat request with this body, made with `key`.
async fn chat_with(
    app: &TestApp,
    key: &str,
    body: impl Into<bytes::Bytes>,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    app.send(
        http::Method::POST,
        &app.url("/v1/chat/completions"),
        &headers,
        body,
    )
    .await
}

#[tokio::test]
async fn exactly_n_requests_pass_with_openai_style_headers() {
    let app = spawn_app().await;
    let key = key_with(
        &app,
        Scope {
            rpm: Some(3),
            ..Scope::default()
        },
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let r = chat(&app, &key, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(remaining));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let r = chat(&app, &key, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // Another key is not held back.
    assert_eq!(chat(&app, &app.key, &[]).await.status, 200);
    let entries = app.ledger_entries().await;
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "request.denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "rate_limited_key");
}

#[tokio::test]
async fn the_tightest_of_key_app_and_tenant_wins() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![acme(LimitConfig {
            rpm: Some(2),
            ..LimitConfig::default()
        })];
    })
    .await;
    let key = key_with(
        &app,
        Scope {
            rpm: Some(100),
            ..Scope::default()
        },
    )
    .await;
    assert_eq!(chat(&app, &key, &[]).await.status, 200);
    let r = chat(&app, &app.key, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    // Both keys share the tenant's two per minute.
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":8,"messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let entries = app.ledger_entries().await;
    let denied = entries
        .iter()
        .find(|e| e["kind"] == "request.denied")
        .unwrap();
    assert_eq!(denied["reason"], "rate_limited_tenant");
}

#[tokio::test]
async fn concurrency_slots_are_held_until_the_stream_ends() {
    let app = spawn_app().await;
    let key = key_with(
        &app,
        Scope {
            concurrency: Some(1),
            ..Scope::default()
        },
    )
    .await;
    let auth = format!("Bearer {key}");
    let slow = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth), ("x-mock-chunk-delay-ms", "100")],
            r#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        )
        .await;
    assert_eq!(slow.status(), 200);
    // While the stream is open, a second request is one too many.
    let r = chat(&app, &key, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("in flight"));
    read_events(slow.into_body()).await;
    // The slot comes back when the stream has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if chat(&app, &key, &[]).await.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn token_rates_reserve_the_request_and_settle_on_its_usage() {
    let app = spawn_app().await;
    let key = key_with(
        &app,
        Scope {
            tpm: Some(2000),
            ..Scope::default()
        },
    )
    .await;
    let send = |max: u32| chat_with(&app, &key, ask(false, max), &[]);
    let r = send(1000).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-ratelimit-limit-tokens"),
        Some("2000"),
        "{:?}",
        r.headers
    );
    let remaining: u32 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!((990..1000).contains(&remaining), "{remaining}");
    // The answer used a few dozen tokens, not 1000: the rest came back, so
    // 1500 more fit.
    let r = send(1500).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Now 1500 are reserved until this one settles too — it has; but a
    // request for more than the whole limit never fits.
    let r = send(5000).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
    assert!(r.text().contains("whole limit"), "{}", r.text());
    let entries = app.ledger_entries().await;
    let denied = entries
        .iter()
        .find(|e| e["kind"] == "request.denied")
        .unwrap();
    assert_eq!(denied["reason"], "token_limited_key");
}

#[tokio::test]
async fn usage_reports_come_from_the_ledger() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.models[0].price = Some(palisade_config::Price {
            input: 2.5,
            output: 10.0,
        });
    })
    .await;
    for _ in 0..3 {
        assert_eq!(chat(&app, &app.key, &[]).await.status, 200);
    }
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":8,"messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    app.ledger_entries().await;
    let token = app
        .admin_token(palisade_store::Role::Auditor, "finance")
        .await;
    let auth = format!("Bearer {token}");
    let r = app
        .send(
            http::Method::GET,
            &format!("http://{}/admin/v1/usage?from=2000-01-01", app.admin),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["usage"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let gpt = rows.iter().find(|r| r["model"] == "gpt-test").unwrap();
    assert_eq!(gpt["requests"], 3);
    assert_eq!(gpt["tenant"], "acme");
    assert_eq!(gpt["app"], "tests");
    assert_eq!(
        gpt["completion_tokens"],
        3 * 12,
        "the mock replies with 12 words"
    );
    let prompt = gpt["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    let cost = gpt["cost"].as_f64().unwrap();
    let expected = (prompt as f64 * 2.5 + 36.0 * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-6, "{cost} vs {expected}");
    let claude = rows.iter().find(|r| r["model"] == "claude-test").unwrap();
    assert!(claude["cost"].is_null(), "no price, no cost");
    let r = app
        .send(
            http::Method::GET,
            &format!("http://{}/admin/v1/usage?format=csv", app.admin),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert!(
        r.text().starts_with("day,tenant,app,key_id,model,requests"),
        "{}",
        r.text()
    );
    assert_eq!(r.text().lines().count(), 3);
    // Reading usage is itself on record.
    let entries = app.ledger_entries().await;
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "audit.read" && e["read"]["usage"].is_object())
    );
}

#[tokio::test]
async fn budgets_reserve_settle_and_refuse_with_their_own_error() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![acme(LimitConfig {
            daily_tokens: Some(1500),
            ..LimitConfig::default()
        })];
    })
    .await;
    // 1000 reserved, a few dozen used: most of it comes back.
    assert_eq!(
        app.post("/v1/chat/completions", &ask(false, 1000))
            .await
            .status,
        200
    );
    assert_eq!(
        app.post("/v1/chat/completions", &ask(false, 1000))
            .await
            .status,
        200
    );
    // Now ~100 are spent today; 1400 more would pass the line.
    let r = app.post("/v1/chat/completions", &ask(false, 1450)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert!(r.text().contains("daily_tokens"), "{}", r.text());
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":1450,"messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 429);
    let entries = app.ledger_entries().await;
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "request.denied")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["reason"], "budget_exceeded_tenant");
}

#[tokio::test]
async fn budgets_survive_a_restart_through_the_ledger() {
    let mut app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![acme(LimitConfig {
            daily_tokens: Some(1500),
            ..LimitConfig::default()
        })];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.post("/v1/chat/completions", &ask(false, 10))
                .await
                .status,
            200
        );
    }
    // A few dozen tokens each are spent. After a restart, the new process
    // knows it from the ledger: a request for nearly the whole budget no
    // longer fits (it would, had the spending been forgotten).
    app.restart().await;
    let r = app.post("/v1/chat/completions", &ask(false, 1440)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert_eq!(
        app.post("/v1/chat/completions", &ask(false, 10))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn streams_settle_on_their_usage_and_disconnects_keep_their_reservation() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![acme(LimitConfig {
            daily_tokens: Some(2500),
            ..LimitConfig::default()
        })];
    })
    .await;
    let auth = format!("Bearer {}", app.key);
    // A stream that ends: its usage settles the 1000 reserved.
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            ask(true, 1000),
        )
        .await;
    read_events(resp.into_body()).await;
    // A stream the client abandons: no usage reported, its 1000 stay
    // reserved.
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth), ("x-mock-chunk-delay-ms", "200")],
            ask(true, 1000),
        )
        .await;
    drop(resp);
    // Let the gateway notice the disconnect and record the exchange.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let entries = app.ledger_entries().await;
        if entries
            .iter()
            .any(|e| e["kind"] == "request.completed" && e["client_disconnected"] == true)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "disconnect not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Spent: the first stream's few dozen tokens (~33), plus the abandoned
    // one's ~1001 reserved: ~1034. 1480 more would pass 2500 (they would
    // fit, had the abandoned stream been refunded); 1300 fit.
    let r = app.post("/v1/chat/completions", &ask(false, 1480)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        app.post("/v1/chat/completions", &ask(false, 1300))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_key_can_have_a_budget_of_its_own() {
    let app = spawn_app().await;
    let key = key_with(
        &app,
        Scope {
            daily_tokens: Some(500),
            ..Scope::default()
        },
    )
    .await;
    let post = |max: u32| chat_with(&app, &key, ask(false, max), &[]);
    assert_eq!(post(400).await.status, 200);
    let r = post(490).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    // Other keys of the tenant are not held back.
    assert_eq!(
        app.post("/v1/chat/completions", &ask(false, 490))
            .await
            .status,
        200
    );
    let entries = app.ledger_entries().await;
    let denied = entries
        .iter()
        .find(|e| e["kind"] == "request.denied")
        .unwrap();
    assert_eq!(denied["reason"], "budget_exceeded_key");
}

#[tokio::test]
async fn a_key_can_have_a_cost_budget_that_survives_a_restart() {
    let mut app = spawn_with(MockOptions::default(), |c| {
        c.models[0].price = Some(palisade_config::Price {
            input: 2.5,
            output: 10.0,
        });
    })
    .await;
    // $0.01 a month: 1,000 completion tokens at $10 per million.
    let key = key_with(
        &app,
        Scope {
            monthly_cost: Some(0.01),
            ..Scope::default()
        },
    )
    .await;
    // Alone, 990 completion tokens (and the prompt) would fit.
    assert_eq!(
        chat_with(&app, &key, ask(false, 500), &[]).await.status,
        200
    );
    // The first request really cost $0.0001825 (25 + 12 tokens): 990 more
    // asked for now pass the line, 900 still fit.
    let refused = |r: &Reply| {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "budget_exceeded");
        assert!(r.text().contains("monthly_cost"), "{}", r.text());
    };
    refused(&chat_with(&app, &key, ask(false, 990), &[]).await);
    // What was spent is read back from the ledger after a restart.
    app.restart().await;
    refused(&chat_with(&app, &key, ask(false, 990), &[]).await);
    assert_eq!(
        chat_with(&app, &key, ask(false, 900), &[]).await.status,
        200
    );
    let entries = app.ledger_entries().await;
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "request.denied")
        .collect();
    assert_eq!(denied.len(), 2);
    assert!(denied.iter().all(|e| e["reason"] == "budget_exceeded_key"));
}

/// A chat request whose one message is `words` words of prose (about
/// five bytes and one token each), asking for `max` completion tokens.
pub(crate) fn prose(words: usize, max: u64) -> String {
    let text: Vec<&str> = ["the", "quarterly", "review", "covered", "billing"]
        .into_iter()
        .cycle()
        .take(words)
        .collect();
    format!(
        r#"{{"model":"gpt-test","max_tokens":{max},"messages":[{{"role":"user","content":"{}"}}]}}"#,
        text.join(" ")
    )
}

/// The prompt as the gateway counts it for an OpenAI-kind model.
pub(crate) fn counted(body: &str) -> u64 {
    palisade_server::tokens::estimate_prompt(body.as_bytes(), true)
}

/// `x-ratelimit-remaining-tokens`.
pub(crate) fn remaining_tokens(r: &Reply) -> u64 {
    r.header("x-ratelimit-remaining-tokens")
        .expect("x-ratelimit-remaining-tokens")
        .parse()
        .unwrap()
}

/// A key of tenant `acme` with a token rate of its own.
async fn key_with_tpm(app: &TestApp, tpm: u32) -> String {
    key_with(
        app,
        Scope {
            tpm: Some(tpm),
            ..Scope::default()
        },
    )
    .await
}

#[tokio::test]
async fn the_prompt_is_counted_only_where_the_count_decides() {
    let app = spawn_app().await;
    // Far from the limit, a request reserves its body's length in place of
    // its prompt's count (no count can exceed it): exactly what
    // x-ratelimit-remaining-tokens shows.
    let roomy = key_with_tpm(&app, 1_000_000).await;
    let body = prose(400, 100);
    assert!(counted(&body) * 3 < body.len() as u64, "{}", counted(&body));
    let r = chat_with(&app, &roomy, body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let remaining = remaining_tokens(&r);
    assert_eq!(remaining, 1_000_000 - body.len() as u64 - 100);

    // Near it, the count decides: the body's length plus the completion
    // would pass the limit, the count plus the completion fits.
    let tight = key_with_tpm(&app, 3000).await;
    let max = 3000 - counted(&prose(400, 0)) - 5;
    let body = prose(400, max);
    assert!(body.len() as u64 + max > 3000);
    let r = chat_with(&app, &tight, body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let remaining = remaining_tokens(&r);
    assert_eq!(
        remaining,
        3000 - counted(&body) - max,
        "the count was reserved"
    );
    // And a refusal is the count's: one more than fits is refused.
    let tight2 = key_with_tpm(&app, 3000).await;
    let over = prose(400, 3000 - counted(&prose(400, 0)) + 1);
    let r = chat_with(&app, &tight2, over, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("whole limit"), "{}", r.text());
}

#[tokio::test]
async fn an_exchange_without_usage_is_charged_its_count_not_its_bound() {
    let app = spawn_app().await;
    let key = key_with(
        &app,
        Scope {
            daily_tokens: Some(100_000),
            ..Scope::default()
        },
    )
    .await;
    // Far from the budget: the bound is reserved. The provider fails, so
    // no usage comes back; what stands is the count plus the completion.
    let failed = prose(400, 100);
    let r = chat_with(&app, &key, failed.clone(), &[("x-mock-status", "503")]).await;
    assert!(r.status.is_server_error(), "{}", r.text());
    let spent = counted(&failed) + 100;
    assert!(
        (failed.len() as u64 + 100) - spent > 1000,
        "the bound is well above the count"
    );
    // Exactly what is left fits (counted, being past half); one more does
    // not. Had the bound stood, neither would.
    let hi = counted(&ask(false, 0));
    let left = 100_000 - spent - hi;
    let r = chat_with(&app, &key, ask(false, (left + 1) as u32), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    let r = chat_with(&app, &key, ask(false, left as u32), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
