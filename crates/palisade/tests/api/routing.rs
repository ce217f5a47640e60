//! Compliance-aware routing: policies choose the targets, failures move a
//! request to the next target, circuits open and close, and every decision
//! is in the ledger.

use std::time::Duration;

use palisade_config::{
    Compliance, Config, ModelConfig, ProviderKind, Strategy, TargetConfig, TenantConfig,
};
use palisade_mock::{MockOptions, MockServer};
use serde_json::Value;

use crate::helpers::*;

const CHAT: &str = r#"{"model":"routed","messages":[{"role":"user","content":"hi"}]}"#;

/// Model `routed` over these providers, in this order.
fn routed(providers: &[&str]) -> ModelConfig {
    ModelConfig {
        name: "routed".into(),
        provider: String::new(),
        targets: providers
            .iter()
            .map(|p| TargetConfig {
                provider: (*p).into(),
                upstream_model: Some(format!("{p}-model")),
                weight: 1,
                timeouts: None,
            })
            .collect(),
        strategy: Strategy::Priority,
        upstream_model: None,
        price: None,
    }
}

fn acme(regions: &[&str], classes: &[&str]) -> TenantConfig {
    TenantConfig {
        name: "acme".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        data_classes: classes.iter().map(|c| c.to_string()).collect(),
        ..TenantConfig::default()
    }
}

async fn mock(options: MockOptions) -> MockServer {
    MockServer::start(([127, 0, 0, 1], 0).into(), options)
        .await
        .unwrap()
}

/// The base URL of a mock that is gone: nothing listens on its port.
async fn dead_url() -> String {
    mock(MockOptions::default()).await.base_url()
}

fn entries_of<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

async fn chat(app: &TestApp, extra: &[(&str, &str)]) -> Reply {
    crate::shared_limits::chat(app, CHAT, extra).await
}

#[tokio::test]
async fn the_tenants_regions_and_classes_choose_the_target_and_say_why() {
    let us = mock(MockOptions::default()).await;
    let eu = mock(MockOptions::default()).await;
    let (us_url, eu_url) = (us.base_url(), eu.base_url());
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        let mut a = provider("us-1", ProviderKind::Openai, &us_url, "MOCK_OPENAI_KEY");
        a.region = Some("us-east-1".into());
        let mut b = provider("eu-1", ProviderKind::Openai, &eu_url, "MOCK_OPENAI_KEY");
        b.region = Some("eu-west-1".into());
        c.providers.extend([a, b]);
        c.models.push(routed(&["us-1", "eu-1"]));
        c.tenants = vec![acme(&["eu"], &[])];
    })
    .await;
    let r = chat(&app, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((us.requests(), eu.requests()), (0, 1));
    let sent: Value = serde_json::from_slice(&eu.last_request().unwrap().body).unwrap();
    assert_eq!(sent["model"], "eu-1-model");
    let entries = app.ledger_entries().await;
    let received = entries_of(&entries, "request.received")[0];
    assert_eq!(received["provider"], "eu-1");
    assert_eq!(received["upstream_model"], "eu-1-model");
    assert_eq!(received["route"]["candidates"][0]["provider"], "eu-1");
    assert_eq!(received["route"]["excluded"][0]["provider"], "us-1");
    assert_eq!(received["route"]["excluded"][0]["reason"], "region");

    // A region outside the tenant's is refused; one inside narrows.
    let r = chat(&app, &[("x-palisade-region", "us")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_compliant_provider");
    assert!(
        r.text().contains("outside this tenant's regions"),
        "{}",
        r.text()
    );
    let r = chat(&app, &[("x-palisade-region", "eu-west-1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat(&app, &[("x-palisade-region", "not a region")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn nothing_compliant_is_refused_naming_the_rule_never_sent() {
    let plain = mock(MockOptions::default()).await;
    let url = plain.base_url();
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        let mut p = provider("no-baa", ProviderKind::Openai, &url, "MOCK_OPENAI_KEY");
        p.compliance = Compliance {
            baa: false,
            ..attested()
        };
        c.providers.push(p);
        c.models.push(routed(&["no-baa"]));
        c.tenants = vec![acme(&[], &["phi"])];
    })
    .await;
    let r = chat(&app, &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_compliant_provider");
    assert!(r.text().contains("no-baa (baa)"), "{}", r.text());
    assert_eq!(plain.requests(), 0);
    let entries = app.ledger_entries().await;
    let denied = entries_of(&entries, "request.denied")[0];
    assert_eq!(denied["reason"], "no_compliant_provider");
    assert_eq!(denied["route"]["excluded"][0]["reason"], "baa");
    assert!(entries_of(&entries, "request.received").is_empty());
}

/// A gateway whose model `routed` tries `first` (on its own mock) and then
/// `second`; the first target waits 300 ms for an answer.
async fn failover_app(first: &MockServer, second: &MockServer) -> TestApp {
    let (a, b) = (first.base_url(), second.base_url());
    spawn_with(MockOptions::default(), move |c: &mut Config| {
        let mut p = provider("first", ProviderKind::Openai, &a, "MOCK_OPENAI_KEY");
        p.timeouts.connect = Duration::from_millis(300);
        c.providers.push(p);
        c.providers.push(provider(
            "second",
            ProviderKind::Openai,
            &b,
            "MOCK_OPENAI_KEY",
        ));
        let mut model = routed(&["first", "second"]);
        // The first target's own timeouts, not its provider's (60 s).
        model.targets[0].timeouts = Some(palisade_config::Timeouts {
            first_byte: Duration::from_millis(300),
            ..Default::default()
        });
        c.models.push(model);
    })
    .await
}

async fn assert_failed_over(app: &TestApp, second: &MockServer, error: &str) {
    let r = chat(app, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(second.requests(), 1);
    let entries = app.ledger_entries().await;
    let completed = entries_of(&entries, "request.completed")[0];
    assert_eq!(completed["provider"], "second");
    assert_eq!(completed["failed_attempts"][0]["provider"], "first");
    assert_eq!(completed["failed_attempts"][0]["error"], error);
    // Both were named before anything was sent.
    let received = entries_of(&entries, "request.received")[0];
    assert_eq!(received["route"]["candidates"][1]["provider"], "second");
}

#[tokio::test]
async fn a_refused_connection_fails_over_at_once() {
    let dead_url = dead_url().await;
    let second = mock(MockOptions::default()).await;
    let b = second.base_url();
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        c.providers.push(provider(
            "first",
            ProviderKind::Openai,
            &dead_url,
            "MOCK_OPENAI_KEY",
        ));
        c.providers.push(provider(
            "second",
            ProviderKind::Openai,
            &b,
            "MOCK_OPENAI_KEY",
        ));
        c.models.push(routed(&["first", "second"]));
    })
    .await;
    assert_failed_over(&app, &second, "connect").await;
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_upstream_retries_total{provider="first",kind="connect"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_500_fails_over() {
    let failing = mock(MockOptions {
        status: Some(500),
        ..MockOptions::default()
    })
    .await;
    let second = mock(MockOptions::default()).await;
    let app = failover_app(&failing, &second).await;
    assert_failed_over(&app, &second, "status_5xx").await;
    assert_eq!(failing.requests(), 1);
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_fails_over() {
    let slow = mock(MockOptions {
        latency: Duration::from_secs(3),
        ..MockOptions::default()
    })
    .await;
    let second = mock(MockOptions::default()).await;
    let app = failover_app(&slow, &second).await;
    let started = std::time::Instant::now();
    assert_failed_over(&app, &second, "timeout_first_byte").await;
    // No more than the failed attempt's own time (300 ms) on top.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stream_cut_midway_is_not_retried() {
    let first = mock(MockOptions::default()).await;
    let second = mock(MockOptions::default()).await;
    let app = failover_app(&first, &second).await;
    let auth = format!("Bearer {}", app.key);
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[
                ("authorization", &auth),
                ("x-mock-fail-after", "2"),
                ("x-mock-chunk-delay-ms", "20"),
            ],
            r#"{"model":"routed","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp.into_body()).await;
    // The client sees the stream's error as its last event.
    let chunks = data_json(&events);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{events:?}");
    assert_eq!((first.requests(), second.requests()), (1, 0));
    let entries = app.ledger_entries().await;
    let completed = entries_of(&entries, "request.completed")[0];
    assert!(completed.get("failed_attempts").is_none(), "{completed}");
    assert_ne!(completed["outcome"], "completed");
}

#[tokio::test]
async fn a_circuit_opens_then_a_probe_closes_it() {
    let flaky = mock(MockOptions::default()).await;
    let url = flaky.base_url();
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        let mut p = provider("flaky", ProviderKind::Openai, &url, "MOCK_OPENAI_KEY");
        p.circuit.failures = 2;
        p.circuit.cooldown = Duration::from_millis(400);
        c.providers.push(p);
        c.models.push(routed(&["flaky"]));
        c.routing.max_attempts = 1;
    })
    .await;
    let failing = [("x-mock-status", "503")];
    for _ in 0..2 {
        assert_eq!(chat(&app, &failing).await.status, 502);
    }
    // Open: refused without asking the provider.
    let r = chat(&app, &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_healthy_provider");
    assert!(r.header("retry-after").is_some());
    assert_eq!(flaky.requests(), 2);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_circuit_open{provider="flaky",upstream_model="flaky-model"}"#
        ),
        Some(1.0)
    );
    // After the cooldown one request probes; it succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(chat(&app, &[]).await.status, 200);
    assert_eq!(chat(&app, &[]).await.status, 200);
    let entries = app.ledger_entries().await;
    let kinds: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("routing."))
        .collect();
    assert_eq!(kinds, ["routing.circuit_opened", "routing.circuit_closed"]);
    let denied = entries_of(&entries, "request.denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["route"]["excluded"][0]["reason"], "circuit_open");
}

#[tokio::test]
async fn the_same_target_is_retried_after_a_backoff_and_retry_after_is_honoured() {
    let one = mock(MockOptions::default()).await;
    let url = one.base_url();
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        c.providers.push(provider(
            "only",
            ProviderKind::Openai,
            &url,
            "MOCK_OPENAI_KEY",
        ));
        c.models.push(routed(&["only"]));
        c.routing.backoff = Duration::from_millis(20);
    })
    .await;
    // Three attempts in all, then the provider's failure is the answer.
    let r = chat(&app, &[("x-mock-status", "503")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(one.requests(), 3);
    // A 429 asking for longer than retry_after_max (10 s) is not retried.
    let r = chat(
        &app,
        &[("x-mock-status", "429"), ("x-mock-retry-after", "30")],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(one.requests(), 4);
    // One asking for a second is waited for.
    let started = std::time::Instant::now();
    let r = chat(
        &app,
        &[("x-mock-status", "429"), ("x-mock-retry-after", "1")],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(one.requests(), 7);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A 400 is the caller's: not retried.
    let r = chat(&app, &[("x-mock-status", "400")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(one.requests(), 8);
}

#[tokio::test]
async fn a_load_that_changes_a_providers_facts_is_recorded() {
    let mut app = spawn_app().await;
    app.restart().await;
    let entries = app.ledger_entries().await;
    assert!(entries_of(&entries, "providers.facts_changed").is_empty());
    // The operator learns the provider no longer has a BAA, and moves it.
    app.config.providers[0].compliance.baa = false;
    app.config.providers[0].region = Some("eu".into());
    app.restart().await;
    let entries = app.ledger_entries().await;
    let changed = entries_of(&entries, "providers.facts_changed");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["provider"], "openai-mock");
    assert_eq!(changed[0]["before"]["baa"], true);
    assert_eq!(changed[0]["after"]["baa"], false);
    assert_eq!(changed[0]["after"]["region"], "eu");
    assert!(changed[0]["before"]["region"].is_null());
}

#[tokio::test]
async fn a_failing_health_check_takes_a_target_out_before_any_request() {
    let dead_url = dead_url().await;
    let second = mock(MockOptions::default()).await;
    let b = second.base_url();
    let app = spawn_with(MockOptions::default(), move |c: &mut Config| {
        let check = palisade_config::HealthCheck {
            path: "/models".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
        };
        let mut first = provider("first", ProviderKind::Openai, &dead_url, "MOCK_OPENAI_KEY");
        first.health_check = Some(check.clone());
        let mut live = provider("second", ProviderKind::Openai, &b, "MOCK_OPENAI_KEY");
        live.health_check = Some(check);
        c.providers.extend([first, live]);
        c.models.push(routed(&["first", "second"]));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"palisade_health_check_up{provider="first"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, r#"palisade_health_check_up{provider="second"}"#),
        Some(1.0)
    );
    let r = chat(&app, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = app.ledger_entries().await;
    let opened = entries_of(&entries, "routing.circuit_opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["provider"], "first");
    assert_eq!(opened[0]["cause"], "health_check");
    let received = entries_of(&entries, "request.received")[0];
    assert_eq!(received["provider"], "second");
    assert_eq!(received["route"]["excluded"][0]["reason"], "circuit_open");
    let completed = entries_of(&entries, "request.completed")[0];
    assert!(completed.get("failed_attempts").is_none(), "{completed}");
}

#[tokio::test]
async fn the_provider_review_flags_what_needs_attention() {
    let app = spawn_with(MockOptions::default(), |c: &mut Config| {
        c.providers[0].compliance.soc2_type2_period_end = Some("2020-01-31".into());
        c.providers[1].compliance.baa = false;
        c.tenants = vec![acme(&[], &["phi"])];
    })
    .await;
    let token = app
        .admin_token(palisade_store::Role::Auditor, "reviewer")
        .await;
    let auth = format!("Bearer {token}");
    let r = app
        .send(
            http::Method::GET,
            &format!("http://{}/admin/v1/providers/review", app.admin),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let review = r.json();
    let by = |name: &str| {
        review["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let openai = by("openai-mock");
    let flags = openai["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f["flag"] == "soc2_stale"), "{openai}");
    assert!(
        flags
            .iter()
            .any(|f| f["flag"] == "fails_tenant_policy" && f["reason"] == "soc2_stale"),
        "{openai}"
    );
    assert_eq!(openai["models"], serde_json::json!(["gpt-test"]));
    let anthropic = by("anthropic-mock");
    assert!(
        anthropic["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["tenant"] == "acme" && f["reason"] == "baa"),
        "{anthropic}"
    );
    assert_eq!(anthropic["tenants_allowed"], serde_json::json!([]));

    // The same from the command line, offline, on a config file.
    let dir = tempfile::tempdir().unwrap();
    let config = crate::binary::write_config(dir.path(), "http://127.0.0.1:9/v1");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "kind = \"openai\"",
        "kind = \"openai\"\nregion = \"eu\"\ncompliance = { soc2_type2_period_end = \"2020-01-31\" }",
    );
    text.push_str(
        "\n[[tenants]]\nname = \"clinic\"\ndata_classes = [\"phi\"]\nregions = [\"us\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let out = crate::binary::palisade(dir.path(), &["providers", "review"]);
    assert!(out.status.success(), "{}", crate::binary::stderr(&out));
    let table = crate::binary::stdout(&out);
    assert!(
        table.contains("FLAG fails tenant clinic's policy: region"),
        "{table}"
    );
    assert!(
        table.contains("FLAG fails tenant clinic's policy: baa"),
        "{table}"
    );
    assert!(
        table.contains("FLAG SOC 2 report older than 18 months"),
        "{table}"
    );
    let out = crate::binary::palisade(dir.path(), &["providers", "review", "--json"]);
    let v: Value = serde_json::from_str(&crate::binary::stdout(&out)).unwrap();
    assert_eq!(v["providers"][0]["region"], "eu");
}
