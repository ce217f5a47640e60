//! Limits shared through Redis: several gateways, one limit; Redis going
//! away and coming back. These run against the Redis whose URL is in
//! `PALISADE_TEST_REDIS` (`.ci/run` sets it to the machine's
//! `redis://127.0.0.1:6379/0`) and are skipped, saying so, without it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_config::{Config, LimitConfig, LimitsBackend, LimitsConfig, OnUnavailable};
use palisade_mock::{MockOptions, MockServer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::binary::{BIN, palisade, stderr, stdout, terminate, wait_ready, write_config};
use crate::helpers::*;
use crate::limits::{acme, ask, counted, prose, remaining_tokens};

const CHAT: &str = r#"{"model":"gpt-test","messages":[]}"#;

/// The test Redis, or `None` after saying why the test does not run.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("PALISADE_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: PALISADE_TEST_REDIS is not set (.ci/run sets it to the local Redis)"
            );
            None
        }
    }
}

/// A prefix no other test (or earlier run) uses.
fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("palisade-test-{}-{nanos}", std::process::id())
}

fn shared(url: &str, prefix: &str, on_unavailable: OnUnavailable) -> LimitsConfig {
    LimitsConfig {
        backend: LimitsBackend::Redis,
        redis_url: url.to_owned(),
        redis_prefix: prefix.to_owned(),
        redis_timeout: Duration::from_millis(500),
        on_unavailable,
        ..LimitsConfig::default()
    }
}

/// A gateway whose tenant `acme` (its test key's) has `limits`, counted
/// as `backend` says.
async fn gateway(backend: LimitsConfig, limits: LimitConfig) -> TestApp {
    spawn_with(MockOptions::default(), move |c: &mut Config| {
        c.limits = backend;
        c.tenants = vec![acme(limits)];
    })
    .await
}

/// A chat request with the test key and `extra` headers.
pub(crate) async fn chat(app: &TestApp, body: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {}", app.key);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    app.send(
        http::Method::POST,
        &app.url("/v1/chat/completions"),
        &headers,
        body.to_owned(),
    )
    .await
}

fn kinds(entries: &[Value], prefix: &str) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Polls until `f` gives a reply with `status`, for at most five seconds.
async fn eventually<F, Fut>(status: u16, mut f: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = f().await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {status}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_gateways_share_request_rates_tokens_and_concurrency() {
    let Some(url) = redis_url("two_gateways_share_request_rates_tokens_and_concurrency") else {
        return;
    };
    // Request rate: 4 per minute for the tenant, across both gateways.
    let prefix = fresh_prefix();
    let rpm = LimitConfig {
        rpm: Some(4),
        ..LimitConfig::default()
    };
    let a = gateway(shared(&url, &prefix, OnUnavailable::Closed), rpm).await;
    let b = gateway(shared(&url, &prefix, OnUnavailable::Closed), rpm).await;
    let mut passed = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = chat(app, CHAT, &[]).await;
        passed.push(r.status);
        if r.status == 200 {
            assert_eq!(r.header("x-ratelimit-limit-requests"), Some("4"));
            let left = (4 - passed.iter().filter(|s| **s == 200).count()).to_string();
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(&*left));
        } else {
            assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((14..=15).contains(&retry), "{retry}");
        }
    }
    assert_eq!(passed, [200, 200, 200, 200, 429, 429]);
    let denied: Vec<Value> = b
        .ledger_entries()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "request.denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "rate_limited_tenant");

    // Concurrency: one request in flight for the tenant, wherever it is.
    let prefix = fresh_prefix();
    let one = LimitConfig {
        concurrency: Some(1),
        tpm: Some(3000),
        ..LimitConfig::default()
    };
    let a = gateway(shared(&url, &prefix, OnUnavailable::Closed), one).await;
    let b = gateway(shared(&url, &prefix, OnUnavailable::Closed), one).await;
    let auth = format!("Bearer {}", a.key);
    let slow = a
        .open(
            http::Method::POST,
            &a.url("/v1/chat/completions"),
            &[("authorization", &auth), ("x-mock-chunk-delay-ms", "100")],
            r#"{"model":"gpt-test","stream":true,"max_tokens":2000,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(slow.status(), 200);
    let small = r#"{"model":"gpt-test","max_tokens":1,"messages":[]}"#;
    let r = chat(&b, small, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("in flight"), "{}", r.text());
    read_events(slow.into_body()).await;
    // The slot comes back, and the stream's 2,000 reserved tokens are
    // settled against its small usage: B may now reserve 2,000 too.
    let big =
        r#"{"model":"gpt-test","max_tokens":2000,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = eventually(200, || chat(&b, big, &[])).await;
    let left: u32 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 1000, "{left}");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("3000"));
}

/// With Redis the prompt is counted before the one round trip (in one
/// process, a request far from its limits reserves its body's length
/// instead, see `limits::the_prompt_is_counted_only_where_the_count_decides`).
#[tokio::test]
async fn shared_token_rates_reserve_the_prompts_count() {
    let Some(url) = redis_url("shared_token_rates_reserve_the_prompts_count") else {
        return;
    };
    let tpm = LimitConfig {
        tpm: Some(1_000_000),
        ..LimitConfig::default()
    };
    let app = gateway(shared(&url, &fresh_prefix(), OnUnavailable::Closed), tpm).await;
    let body = prose(400, 100);
    let r = chat(&app, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(remaining_tokens(&r), 1_000_000 - counted(&body) - 100);
}

#[tokio::test]
async fn two_gateway_processes_share_one_limit() {
    let Some(url) = redis_url("two_gateway_processes_share_one_limit") else {
        return;
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockOptions::default())
        .await
        .unwrap();
    let prefix = fresh_prefix();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &mock.base_url());
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n\n[[tenants]]\nname = \"acme\"\nlimits = {{ rpm = 3 }}\n"
        ));
        std::fs::write(&config, text).unwrap();
        let out = palisade(
            dir.path(),
            &[
                "keys", "create", "--tenant", "acme", "--app", "bot", "--env", "prod", "--json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let key = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let ready = dir.path().join("ready.json");
        let mut child = Command::new(BIN)
            .args(["serve", "--ready-file", ready.to_str().unwrap()])
            .current_dir(dir.path())
            .env("LOCAL_LLM_KEY", "local-secret")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addrs = wait_ready(&ready, &mut child).await;
        let proxy = addrs["proxy"].as_str().unwrap().to_owned();
        nodes.push((dir, child, proxy, key));
    }
    let mut statuses = Vec::new();
    for i in 0..5 {
        let (_, _, proxy, key) = &nodes[i % 2];
        let (status, body) = crate::binary::post(
            proxy,
            "/v1/chat/completions",
            key,
            r#"{"model":"smol","messages":[]}"#,
        )
        .await;
        assert!(
            status == 200 || body.contains("rate_limit_exceeded"),
            "{body}"
        );
        statuses.push(status);
    }
    for (_, child, _, _) in &mut nodes {
        assert!(terminate(child).success());
    }
    // Three for the tenant in all, however they were spread.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

/// A TCP relay to Redis that the test can cut and restore, to stand for
/// Redis going away.
struct Relay {
    port: u16,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        Relay {
            port,
            accept,
            conns,
        }
    }

    /// Closes the listener and every relayed connection.
    fn cut(self) -> u16 {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.port
    }
}

fn redis_addr(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let host = rest.split('/').next().unwrap();
    host.parse().unwrap()
}

#[tokio::test]
async fn an_outage_is_refused_when_closed_and_each_switch_is_recorded() {
    let Some(url) = redis_url("an_outage_is_refused_when_closed_and_each_switch_is_recorded")
    else {
        return;
    };
    let relay = Relay::start(0, redis_addr(&url)).await;
    let via = format!("redis://127.0.0.1:{}/0", relay.port);
    let limits = LimitConfig {
        rpm: Some(100),
        ..LimitConfig::default()
    };
    let app = gateway(shared(&via, &fresh_prefix(), OnUnavailable::Closed), limits).await;
    assert_eq!(chat(&app, CHAT, &[]).await.status, 200);
    assert_eq!(
        metric(&app.metrics().await, "palisade_limits_backend_up"),
        Some(1.0)
    );

    let port = relay.cut();
    for _ in 0..3 {
        let r = chat(&app, CHAT, &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("rate-limit store is unreachable"));
        assert_eq!(r.json()["error"]["code"], "limits_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let m = app.metrics().await;
    assert_eq!(metric(&m, "palisade_limits_backend_up"), Some(0.0));
    assert_eq!(
        metric(&m, r#"palisade_limits_fallbacks_total{outcome="refused"}"#),
        Some(3.0)
    );

    // Redis comes back: requests pass again, once reconnected.
    let _relay = Relay::start(port, redis_addr(&url)).await;
    eventually(200, || chat(&app, CHAT, &[])).await;
    let entries = app.ledger_entries().await;
    assert_eq!(
        kinds(&entries, "limits."),
        ["limits.backend_unavailable", "limits.backend_available"],
        "one entry per switch, not per request"
    );
    let down = entries
        .iter()
        .find(|e| e["kind"] == "limits.backend_unavailable")
        .unwrap();
    assert_eq!(down["on_unavailable"], "closed");
    let refused = entries
        .iter()
        .filter(|e| e["kind"] == "request.denied" && e["reason"] == "limits_unavailable")
        .count();
    assert_eq!(refused, 3);
    let m = app.metrics().await;
    for outcome in ["unavailable", "available"] {
        let name = format!(r#"palisade_limits_backend_switches_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &name), Some(1.0), "{name}");
    }
}

/// `n` chat requests at once: the client opens a connection for each, so
/// they land on different connection threads.
async fn chats_at_once(app: &TestApp, n: usize) -> Vec<u16> {
    let all = (0..n).map(|_| chat(app, CHAT, &[]));
    futures_util::future::join_all(all)
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect()
}

/// Every connection thread talks to Redis over a connection of its own.
/// After an outage, the threads find Redis again one after another; the
/// record still shows one outage and one recovery, and no request is
/// refused once Redis answers.
#[tokio::test]
async fn a_recovery_found_by_many_connection_threads_is_one_switch() {
    let Some(url) = redis_url("a_recovery_found_by_many_connection_threads_is_one_switch") else {
        return;
    };
    let relay = Relay::start(0, redis_addr(&url)).await;
    let via = format!("redis://127.0.0.1:{}/0", relay.port);
    let limits = LimitConfig {
        rpm: Some(10_000),
        ..LimitConfig::default()
    };
    let backend = shared(&via, &fresh_prefix(), OnUnavailable::Closed);
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        c.server.workers = Some(4);
        c.limits = backend;
        c.tenants = vec![acme(limits)];
    })
    .await;
    // Every thread has its connection to Redis.
    for _ in 0..3 {
        assert_eq!(chats_at_once(&app, 8).await, [200; 8]);
    }

    let port = relay.cut();
    for _ in 0..2 {
        assert_eq!(chats_at_once(&app, 8).await, [503; 8]);
    }
    // An outage longer than the connections' own reconnection attempts
    // (at most 200 ms apart): every thread is left with a failed one.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let _relay = Relay::start(port, redis_addr(&url)).await;
    eventually(200, || chat(&app, CHAT, &[])).await;
    for round in 0..4 {
        assert_eq!(chats_at_once(&app, 8).await, [200; 8], "round {round}");
    }
    assert_eq!(
        kinds(&app.ledger_entries().await, "limits."),
        ["limits.backend_unavailable", "limits.backend_available"],
        "one entry per switch, however many threads saw it"
    );
    let m = app.metrics().await;
    for outcome in ["unavailable", "available"] {
        let name = format!(r#"palisade_limits_backend_switches_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &name), Some(1.0), "{name}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_counts_in_process_when_open() {
    // Nothing listens on this port: no Redis is needed for this test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let limits = LimitConfig {
        rpm: Some(2),
        ..LimitConfig::default()
    };
    let app = gateway(shared(&url, "unreachable", OnUnavailable::Open), limits).await;
    // Recorded at start-up, before any request.
    let entries = app.ledger_entries().await;
    assert_eq!(kinds(&entries, "limits."), ["limits.backend_unavailable"]);
    let down = &entries
        .iter()
        .find(|e| e["kind"] == "limits.backend_unavailable")
        .unwrap();
    assert_eq!(down["on_unavailable"], "open");
    assert!(down["error"].as_str().unwrap().contains("Redis"), "{down}");
    // The tenant's limit still holds, counted by this gateway alone.
    assert_eq!(chat(&app, CHAT, &[]).await.status, 200);
    assert_eq!(chat(&app, CHAT, &[]).await.status, 200);
    let r = chat(&app, CHAT, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_limits_fallbacks_total{outcome="counted_locally"}"#
        ),
        Some(3.0)
    );
    assert_eq!(metric(&m, "palisade_limits_backend_up"), Some(0.0));
    assert_eq!(
        kinds(&app.ledger_entries().await, "limits."),
        ["limits.backend_unavailable"]
    );
}

#[tokio::test]
async fn requests_without_limits_never_wait_for_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    // Closed, and Redis unreachable: a tenant without limits is not refused.
    let app = gateway(
        shared(&url, "unreachable", OnUnavailable::Closed),
        LimitConfig::default(),
    )
    .await;
    let r = chat(&app, CHAT, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Tokens this gateway's ledger says were used this day.
async fn ledger_tokens(app: &TestApp) -> i64 {
    app.ledger_entries()
        .await
        .iter()
        .filter(|e| e["kind"] == "request.completed")
        .map(|e| e["prompt_tokens"].as_i64().unwrap() + e["completion_tokens"].as_i64().unwrap())
        .sum()
}

/// Today's budget of tenant `acme` in Redis.
fn acme_today() -> palisade_server::budgets::BudgetKey {
    let (day, _) = palisade_server::budgets::periods(palisade_store::unix_now());
    (
        palisade_server::limits::Level::Tenant,
        "acme".into(),
        palisade_server::budgets::Period::Day(day),
    )
}

/// Waits until Redis holds `want` tokens spent in tenant `acme`'s budget
/// today (settlements reach Redis off the request's path).
async fn redis_spent_becomes(redis: &palisade_server::redis_limits::RedisLimits, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (tokens, _) = redis.budget_spent(&acme_today()).await.unwrap();
        if tokens == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis holds {tokens} tokens spent, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_gateways_share_budgets_and_a_restart_sets_its_share_from_its_ledger() {
    let Some(url) =
        redis_url("two_gateways_share_budgets_and_a_restart_sets_its_share_from_its_ledger")
    else {
        return;
    };
    let prefix = fresh_prefix();
    let backend = shared(&url, &prefix, OnUnavailable::Closed);
    let budget = LimitConfig {
        daily_tokens: Some(1500),
        ..LimitConfig::default()
    };
    let mut a = gateway(backend.clone(), budget).await;
    let b = gateway(backend.clone(), budget).await;
    let redis = palisade_server::redis_limits::RedisLimits::new(&backend, None).unwrap();

    // A reserves 1,000 twice and spends a few dozen; B sees what A spent.
    for _ in 0..2 {
        assert_eq!(chat(&a, &ask(false, 1000), &[]).await.status, 200);
    }
    let spent_a = ledger_tokens(&a).await;
    assert!(spent_a > 0);
    redis_spent_becomes(&redis, spent_a).await;
    // 1,450 more would fit a budget of B's own; shared, it passes the line.
    let r = chat(&b, &ask(false, 1450), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert!(r.text().contains("daily_tokens"), "{}", r.text());
    let denied: Vec<Value> = b
        .ledger_entries()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "request.denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "budget_exceeded_tenant");
    assert_eq!(chat(&b, &ask(false, 10), &[]).await.status, 200);
    let spent_b = ledger_tokens(&b).await;
    redis_spent_becomes(&redis, spent_a + spent_b).await;

    // A gateway that crashed with a reservation in flight left it in its
    // share (here: put there by hand); 600 more do not fit...
    let node = a.ledger_entries().await[0]["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let stale = palisade_server::budgets::Spent {
        tokens: 1000,
        cost: 0.0,
    };
    redis
        .add_budgets(&node, &redis.budget_changes(&[(acme_today(), stale)]))
        .await
        .unwrap();
    redis_spent_becomes(&redis, spent_a + spent_b + 1000).await;
    let r = chat(&b, &ask(false, 600), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    // ...until it starts again: its share is set from its own ledger,
    // which holds what it completed and nothing else.
    a.restart().await;
    redis_spent_becomes(&redis, spent_a + spent_b).await;
    assert_eq!(ledger_tokens(&a).await, spent_a);
    assert_eq!(chat(&b, &ask(false, 600), &[]).await.status, 200);
}

#[tokio::test]
async fn budget_spending_counted_during_an_outage_reaches_redis_when_it_answers() {
    let Some(url) =
        redis_url("budget_spending_counted_during_an_outage_reaches_redis_when_it_answers")
    else {
        return;
    };
    let relay = Relay::start(0, redis_addr(&url)).await;
    let prefix = fresh_prefix();
    let via = shared(
        &format!("redis://127.0.0.1:{}/0", relay.port),
        &prefix,
        OnUnavailable::Open,
    );
    let budget = LimitConfig {
        daily_tokens: Some(100_000),
        ..LimitConfig::default()
    };
    let a = gateway(via, budget).await;
    let redis = palisade_server::redis_limits::RedisLimits::new(
        &shared(&url, &prefix, OnUnavailable::Open),
        None,
    )
    .unwrap();
    assert_eq!(chat(&a, &ask(false, 1000), &[]).await.status, 200);
    redis_spent_becomes(&redis, ledger_tokens(&a).await).await;

    // Redis goes away: A counts by itself (open), a reservation and its
    // settlement both kept for Redis.
    let port = relay.cut();
    let auth = format!("Bearer {}", a.key);
    for _ in 0..2 {
        assert_eq!(chat(&a, &ask(false, 1000), &[]).await.status, 200);
    }
    let resp = a
        .open(
            http::Method::POST,
            &a.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            ask(true, 700),
        )
        .await;
    read_events(resp.into_body()).await;
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_limits_fallbacks_total{outcome="counted_locally"}"#
        ),
        Some(3.0)
    );

    // Back: the next admission that finds Redis hands over what it missed.
    // (A 200 alone does not say Redis answered: open counts locally until
    // the client has reconnected.)
    let _relay = Relay::start(port, redis_addr(&url)).await;
    let small = ask(false, 10);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(chat(&a, &small, &[]).await.status, 200);
        if metric(&a.metrics().await, "palisade_limits_backend_up") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A settlement of the last request counted locally may land just after
    // that hand-over; the next admission hands it over too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(chat(&a, &small, &[]).await.status, 200);
    redis_spent_becomes(&redis, ledger_tokens(&a).await).await;
    assert_eq!(
        kinds(&a.ledger_entries().await, "limits."),
        ["limits.backend_unavailable", "limits.backend_available"]
    );
}
