//! Data protection on the request path: what the provider receives under
//! each action, what the client gets back, and what the ledger records.

use palisade_config::{DlpConfig, TenantConfig};
use palisade_mock::MockOptions;
use serde_json::{Value, json};

use crate::helpers::*;

const EMAIL: &str = "jane.doe@example.com";
const SSN: &str = "078-05-1120";
const CARD: &str = "4111 1111 1111 1111";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

fn tenant(actions: &[(&str, &str)], classes: &[&str]) -> TenantConfig {
    TenantConfig {
        // The tests' key belongs to tenant `acme`.
        name: "acme".into(),
        data_classes: classes.iter().map(|c| c.to_string()).collect(),
        dlp: DlpConfig {
            actions: actions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..DlpConfig::default()
        },
        ..TenantConfig::default()
    }
}

fn prompt() -> String {
    format!("Write to {EMAIL} about SSN {SSN}, card {CARD}, key {AWS}.")
}

fn sent_to_provider(app: &TestApp) -> String {
    String::from_utf8(app.mock.last_request().unwrap().body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_provider_never_sees_what_the_policy_protects() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![tenant(
            &[
                ("EMAIL", "tokenize"),
                ("US_SSN", "redact"),
                ("CREDIT_CARD", "mask"),
            ],
            &[],
        )];
    })
    .await;
    // Every place a prompt can hide: string content, text parts, tool-call
    // arguments, metadata.
    let body = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": format!("The user is {EMAIL}.")},
            {"role": "user", "content": [{"type": "text", "text": prompt()}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "mail", "arguments": json!({"to": EMAIL}).to_string()}}]},
            {"role": "tool", "tool_call_id": "c1", "content": format!("sent to {EMAIL}")},
        ],
        "metadata": {"ssn": SSN},
    });
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-echo", "1")],
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = sent_to_provider(&app);
    for secret in [EMAIL, SSN, "4111 1111 1111 1111", AWS] {
        assert!(
            !sent.contains(secret),
            "{secret} reached the provider: {sent}"
        );
    }
    assert!(
        sent.contains("[EMAIL_1]") && sent.contains("[US_SSN_1]"),
        "{sent}"
    );
    assert!(sent.contains("**** **** **** 1111"), "{sent}");
    assert!(
        sent.contains("[AWS_ACCESS_KEY_1]"),
        "credentials are redacted by default: {sent}"
    );
    // The model echoed the last message (the tool result); the client gets
    // the tokenized e-mail back.
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        format!("sent to {EMAIL}")
    );

    // The ledger has counts by kind and action, never a value.
    let entries = app.ledger_entries().await;
    let received = entries
        .iter()
        .find(|e| e["kind"] == "request.received")
        .unwrap();
    assert_eq!(received["detections"]["EMAIL"]["tokenize"], 4);
    assert_eq!(received["detections"]["US_SSN"]["redact"], 2);
    assert_eq!(received["detections"]["CREDIT_CARD"]["mask"], 1);
    assert_eq!(received["detections"]["AWS_ACCESS_KEY"]["redact"], 1);
    let ledger = serde_json::to_string(&entries).unwrap();
    for secret in [EMAIL, SSN, AWS, "4111"] {
        assert!(!ledger.contains(secret), "{secret} in the ledger");
    }
}

#[tokio::test]
async fn block_refuses_naming_the_kinds_and_sends_nothing() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![tenant(&[], &["phi"])];
    })
    .await;
    let body = json!({"model": "claude-test", "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("MRN: 00482913, key {AWS}")}]});
    let r = app.post_anthropic(&body.to_string(), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("AWS_ACCESS_KEY"), "{message}");
    assert!(
        !message.contains(AWS) && !message.contains("00482913"),
        "{message}"
    );
    assert!(app.mock.last_request().is_none(), "nothing was sent");
    let entries = app.ledger_entries().await;
    let denied = entries
        .iter()
        .find(|e| e["kind"] == "request.denied")
        .unwrap();
    assert_eq!(denied["reason"], "dlp_blocked");
    assert_eq!(denied["detections"]["AWS_ACCESS_KEY"]["block"], 1);
    assert_eq!(denied["detections"]["MEDICAL_RECORD_NUMBER"]["tokenize"], 1);
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains("00482913")
    );

    // OpenAI dialect: the code says why.
    let r = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-test", "messages": [{"role": "user", "content": AWS}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "content_blocked");
}

#[tokio::test]
async fn tokenized_values_come_back_in_anthropic_answers_too() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![tenant(&[], &["pii"])];
    })
    .await;
    let body = json!({"model": "claude-test", "max_tokens": 64,
        "system": format!("Account owner: {EMAIL}"),
        "messages": [{"role": "user", "content": [{"type": "text", "text": format!("Call me on +44 20 7946 0958 or mail {EMAIL}")}]}]});
    let r = app
        .post_anthropic(&body.to_string(), &[("x-mock-echo", "1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = sent_to_provider(&app);
    assert!(!sent.contains(EMAIL) && !sent.contains("7946"), "{sent}");
    assert_eq!(
        r.json()["content"][0]["text"],
        format!("Call me on +44 20 7946 0958 or mail {EMAIL}")
    );
}

#[tokio::test]
async fn hostile_bodies_are_refused_clearly() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![tenant(&[], &["pii"])];
    })
    .await;
    let deep = format!(
        r#"{{"model":"gpt-test","messages":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let r = app.post("/v1/chat/completions", &deep).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("nested more than"), "{}", r.text());
    let dup =
        r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi","content":"jane@x.io"}]}"#;
    let r = app.post("/v1/chat/completions", dup).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("more than once"), "{}", r.text());
    let mut invalid = br#"{"model":"gpt-test","messages":[{"role":"user","content":"caf"#.to_vec();
    invalid.extend_from_slice(b"\xff\xfe\"}]}");
    let r = app
        .send(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &format!("Bearer {}", app.key))],
            invalid,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(app.mock.last_request().is_none());
    // A large clean prompt goes through unchanged (byte for byte).
    let big = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "lorem ipsum ".repeat(60_000)}], "temperature": 0.70});
    let text = big.to_string();
    let r = app.post("/v1/chat/completions", &text).await;
    assert_eq!(r.status, 200);
    let sent: Value = serde_json::from_slice(&app.mock.last_request().unwrap().body).unwrap();
    assert_eq!(sent["messages"], big["messages"]);
}

#[tokio::test]
async fn tokenized_values_are_restored_inside_streams() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.tenants = vec![tenant(&[], &["pii"])];
    })
    .await;
    let original =
        format!("Write to {EMAIL} or call +44 20 7946 0958, then {EMAIL} again [EMAIL_1].");
    // OpenAI: the mock echoes the message in 5-byte pieces, so every
    // placeholder arrives split across events.
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": original}]});
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[
                ("authorization", &format!("Bearer {}", app.key)),
                ("x-mock-echo", "1"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp.into_body()).await;
    let sent = sent_to_provider(&app);
    assert!(!sent.contains(EMAIL) && !sent.contains("7946"), "{sent}");
    let text: String = data_json(&events)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, original);
    assert_eq!(events.last().unwrap(), "data: [DONE]");

    // Anthropic.
    let body = json!({"model": "claude-test", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": original}]});
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/messages"),
            &[("x-api-key", &app.key), ("x-mock-echo", "1")],
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp.into_body()).await;
    let text: String = data_json(&events)
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, original);
}

#[tokio::test]
async fn the_models_output_can_be_scanned_too() {
    let app = spawn_with(MockOptions::default(), |c| {
        let mut t = tenant(&[("PHONE", "tokenize")], &[]);
        t.dlp.responses = Some("redact".into());
        c.tenants = vec![t];
    })
    .await;
    // EMAIL is only recorded on the way in (the default), so the mock
    // echoes it; on the way out it is redacted. The phone number was
    // tokenized, so it comes back as the caller wrote it.
    let body = json!({"model": "gpt-test",
        "messages": [{"role": "user", "content": format!("{EMAIL} / +44 20 7946 0958")}]});
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-echo", "1")],
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "[EMAIL_1] / +44 20 7946 0958"
    );
    // Streams are counted.
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": format!("write to {EMAIL}")}]});
    let resp = app
        .open(
            http::Method::POST,
            &app.url("/v1/chat/completions"),
            &[
                ("authorization", &format!("Bearer {}", app.key)),
                ("x-mock-echo", "1"),
            ],
            body.to_string(),
        )
        .await;
    read_events(resp.into_body()).await;
    let entries = app.ledger_entries().await;
    let completed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "request.completed")
        .collect();
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0]["response_detections"]["EMAIL"]["redact"], 1);
    assert_eq!(completed[1]["response_detections"]["EMAIL"]["redact"], 1);
    assert!(!serde_json::to_string(&entries).unwrap().contains(EMAIL));
}
