//! Every error case: right status, the caller's dialect, no echo of the
//! prompt, the upstream body or a secret, and the gateway keeps serving.

use std::time::Duration;

use http::Method;
use palisade_mock::MockOptions;
use serde_json::Value;

use crate::helpers::*;

/// OpenAI shape: {"error":{"message","type","param","code"}}.
fn assert_openai_error(r: &Reply, status: u16, code: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{v}");
    }
    v
}

/// Anthropic shape: {"type":"error","error":{"type","message"}}.
fn assert_anthropic_error(r: &Reply, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string());
    v
}

async fn still_serving(app: &TestApp) {
    let r = app
        .post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
        .await;
    assert_eq!(r.status, 200, "gateway stopped serving: {}", r.text());
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_problem_without_quoting_it() {
    let app = spawn_app().await;
    let secret_prompt = "my SSN is 078-05-1120";
    for body in [
        format!(r#"{{"model":"gpt-test","messages":[{{"content":"{secret_prompt}"}}]"#),
        format!(
            r#"{{"model":"gpt-test", "messages": [{{"content": "{secret_prompt}"}}]}} trailing"#
        ),
        format!(r#"{{"model":"gpt-test","stream":"{secret_prompt}"}}"#),
        "[1,2,3]".to_owned(),
        String::new(),
        r#"{"messages":[]}"#.to_owned(),
        r#"{"model":"gpt-test","model":"other"}"#.to_owned(),
    ] {
        let r = app.post("/v1/chat/completions", &body).await;
        let v = assert_openai_error(&r, 400, None);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(!r.text().contains("SSN"), "echoed: {}", r.text());
    }
    let r = app
        .post("/v1/chat/completions", r#"{"model":"gpt-test""#)
        .await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ends early")
    );
    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"gpt-test","model":"x"}"#,
        )
        .await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );

    let r = app.post_anthropic(r#"{"model": oops}"#, &[]).await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
    let r = app
        .post(
            "/v1/embeddings",
            r#"{"model":"gpt-test","input":"x","stream":true}"#,
        )
        .await;
    assert_openai_error(&r, 400, None);
    still_serving(&app).await;
}

#[tokio::test]
async fn oversized_bodies_are_413_whether_declared_or_not() {
    let app = spawn_with(MockOptions::default(), |c| c.server.max_body_bytes = 1024).await;
    let big = format!(r#"{{"model":"gpt-test","input":"{}"}}"#, "x".repeat(2000));
    let r = app.post("/v1/chat/completions", &big).await;
    assert_openai_error(&r, 413, Some("request_too_large"));
    let r = app.post_anthropic(&big, &[]).await;
    assert_anthropic_error(&r, 413, "request_too_large");

    // A chunked body with no Content-Length.
    let auth = format!("Bearer {}", app.key);
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b' ';
                600
            ])))
        })
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(app.url("/v1/chat/completions"))
        .header("authorization", auth)
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    still_serving(&app).await;
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found_in_both_dialects() {
    let app = spawn_app().await;
    let r = app
        .post("/v1/chat/completions", r#"{"model":"gpt-unknown"}"#)
        .await;
    let v = assert_openai_error(&r, 404, Some("model_not_found"));
    assert_eq!(v["error"]["param"], "model");
    let r = app
        .post_anthropic(
            r#"{"model":"claude-unknown","max_tokens":5,"messages":[]}"#,
            &[],
        )
        .await;
    assert_anthropic_error(&r, 404, "not_found_error");
    assert!(
        app.mock.last_request().is_none(),
        "nothing reached the provider"
    );
}

#[tokio::test]
async fn dialect_mismatch_is_a_clear_400() {
    let app = spawn_app().await;
    let r = app
        .post("/v1/chat/completions", r#"{"model":"claude-test"}"#)
        .await;
    let v = assert_openai_error(&r, 400, None);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("translating")
    );
    let r = app
        .post_anthropic(r#"{"model":"gpt-test","max_tokens":5,"messages":[]}"#, &[])
        .await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
}

#[tokio::test]
async fn bad_keys_are_401_and_indistinguishable() {
    let app = spawn_app().await;
    let url = app.url("/v1/chat/completions");
    let body = r#"{"model":"gpt-test"}"#;

    let r = app.send(Method::POST, &url, &[], body).await;
    assert_openai_error(&r, 401, Some("missing_api_key"));
    let r = app
        .send(Method::POST, &app.url("/v1/messages"), &[], body)
        .await;
    assert_anthropic_error(&r, 401, "authentication_error");

    // Same id, different (well-formed) secret: build one by creating a key
    // and revoking it, then comparing against garbage and a typo.
    let (revoked, revoked_key) = palisade_store::Store::create_key(
        &app.store,
        palisade_store::NewKey {
            tenant: "acme".into(),
            app: "x".into(),
            env: "dev".into(),
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    palisade_store::Store::revoke_key(&app.store, &revoked.id, 2)
        .await
        .unwrap();
    let mut typo = app.key.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown_but_valid = {
        let (_, k) = palisade_store::keys::generate(
            &palisade_store::NewKey {
                tenant: "acme".into(),
                app: "x".into(),
                env: "dev".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        k.expose().to_owned()
    };
    let mut bodies = Vec::new();
    for key in [
        "garbage",
        typo.as_str(),
        revoked_key.expose(),
        unknown_but_valid.as_str(),
    ] {
        let auth = format!("Bearer {key}");
        let r = app
            .send(
                Method::POST,
                &url,
                &[("authorization", auth.as_str())],
                body,
            )
            .await;
        let v = assert_openai_error(&r, 401, Some("invalid_api_key"));
        assert!(!r.text().contains(key), "key echoed");
        bodies.push(v);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "responses differ: {bodies:?}"
    );
    still_serving(&app).await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_in_dialect() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.key);
    let r = app
        .send(
            Method::POST,
            &app.url("/v1/nothing-here"),
            &[("authorization", &auth)],
            "{}",
        )
        .await;
    assert_openai_error(&r, 404, None);
    let r = app
        .send(
            Method::GET,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_openai_error(&r, 405, None);
    assert!(r.header("allow").unwrap().contains("POST"));
    let r = app
        .send(
            Method::GET,
            &app.url("/v1/messages"),
            &[("x-api-key", &app.key)],
            "",
        )
        .await;
    assert_anthropic_error(&r, 405, "invalid_request_error");
    let r = app
        .send(
            Method::DELETE,
            &app.url("/v1/models"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_openai_error(&r, 405, None);
}

#[tokio::test]
async fn unreachable_provider_is_502_naming_the_provider() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_with(MockOptions::default(), |c| {
        c.providers[0].base_url = format!("http://127.0.0.1:{port}/v1");
        c.providers[1].base_url = format!("http://127.0.0.1:{port}/v1");
    })
    .await;
    let r = app
        .post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
        .await;
    let v = assert_openai_error(&r, 502, Some("upstream_unreachable"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openai-mock")
    );
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":5,"messages":[]}"#,
            &[],
        )
        .await;
    assert_anthropic_error(&r, 502, "api_error");
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_upstream_errors_total{provider="openai-mock",kind="connect"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn slow_provider_is_504() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.providers[0].timeouts.first_byte = Duration::from_millis(200);
    })
    .await;
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-delay-ms", "3000")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    let v = assert_openai_error(&r, 504, Some("upstream_timeout"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first_byte")
    );
    still_serving(&app).await;
}

#[tokio::test]
async fn provider_errors_map_to_our_errors_without_their_bodies() {
    let app = spawn_app().await;
    // 5xx → 502, provider's body not echoed.
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "500")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    let v = assert_openai_error(&r, 502, Some("upstream_failed"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("HTTP 500") && msg.contains("server_error/mock_failure"),
        "{msg}"
    );
    assert!(
        !msg.contains("mock failure"),
        "provider message echoed: {msg}"
    );

    // 429 → 429 with Retry-After passed on.
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_openai_error(&r, 429, Some("upstream_rate_limited"));
    assert_eq!(r.header("retry-after"), Some("7"));

    // 4xx → same status: the caller's request was refused.
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "422")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_openai_error(&r, 422, None);

    // 401 from the provider is our misconfiguration, not the caller's: 502.
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "401")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_openai_error(&r, 502, Some("upstream_failed"));

    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":5,"messages":[]}"#,
            &[("x-mock-status", "503")],
        )
        .await;
    assert_anthropic_error(&r, 502, "api_error");
    still_serving(&app).await;
}

#[tokio::test]
async fn revoked_keys_stop_working_promptly() {
    let app = spawn_app().await;
    still_serving(&app).await;
    // Another handle on the same database, as the CLI would use.
    let other = palisade_store::SqliteStore::open_in(&app.dir.path().join("data")).unwrap();
    let id = palisade_store::keys::PresentedKey::parse(&app.key)
        .unwrap()
        .id()
        .clone();
    assert!(
        palisade_store::Store::revoke_key(&other, &id, 5)
            .await
            .unwrap()
    );
    // Within a second, whatever is cached.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = app
        .post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
        .await;
    assert_openai_error(&r, 401, Some("invalid_api_key"));
}
