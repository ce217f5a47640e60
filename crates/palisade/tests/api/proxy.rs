//! Requests that succeed: forwarding, rewriting, headers, every endpoint.

use http::Method;
use palisade_config::ProviderKind;
use palisade_mock::MockOptions;

use crate::helpers::*;

#[tokio::test]
async fn chat_is_forwarded_with_the_model_rewritten_and_unknown_fields_kept() {
    let app = spawn_app().await;
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"héllo"}],"x_future_field":{"nested":[1,2.50,true]},"temperature":0.70}"#;
    let reply = app.post("/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "mock-gpt");
    assert!(
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello")
    );

    let seen = app.mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    // Byte for byte, except the model.
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        body.replace(r#""gpt-test""#, r#""mock-gpt""#)
    );
}

#[tokio::test]
async fn provider_credentials_are_injected_and_client_credentials_never_forwarded() {
    let app = spawn_app().await;
    let reply = app
        .post_with(
            "/v1/chat/completions",
            &[
                ("x-api-key", "client-other-key"),
                ("cookie", "session=1"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "hop-by-hop"),
                ("openai-organization", "org-client"),
                ("x-custom-trace", "kept"),
            ],
            r#"{"model":"gpt-test","messages":[]}"#,
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.mock.last_request().unwrap();
    let h = &seen.headers;
    assert_eq!(
        h["authorization"],
        format!("Bearer {OPENAI_SECRET}").as_str()
    );
    assert!(h.get("x-api-key").is_none());
    assert!(h.get("cookie").is_none());
    assert!(h.get("x-hop").is_none());
    assert!(h.get("openai-organization").is_none());
    assert_eq!(h["x-custom-trace"], "kept");
    assert_eq!(h["accept-encoding"], "identity");
    // The gateway key appears nowhere upstream.
    for (_, v) in h {
        assert!(!v.to_str().unwrap_or_default().contains(&app.key));
    }
    // The request id travels upstream and back.
    assert_eq!(
        h["x-request-id"].to_str().unwrap(),
        reply.header("x-request-id").unwrap()
    );
}

#[tokio::test]
async fn request_ids_are_kept_when_well_formed_and_made_otherwise() {
    let app = spawn_app().await;
    let reply = app
        .post_with(
            "/v1/chat/completions",
            &[("x-request-id", "trace-42.a:b")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some("trace-42.a:b"));
    let reply = app
        .post_with(
            "/v1/chat/completions",
            &[("x-request-id", "bad id with spaces")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    let id = reply.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "7", "not a UUIDv7: {id}");
    // Errors carry one too.
    let reply = app.send(Method::GET, &app.url("/nope"), &[], "").await;
    assert!(reply.header("x-request-id").is_some());
}

#[tokio::test]
async fn completions_embeddings_and_responses_are_served() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/v1/completions",
            r#"{"model":"gpt-test","prompt":"Say hi"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(app.mock.last_request().unwrap().path, "/v1/completions");

    let r = app
        .post(
            "/v1/embeddings",
            r#"{"model":"gpt-test","input":["a","b"]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(app.mock.last_request().unwrap().path, "/v1/embeddings");

    let r = app
        .post("/v1/responses", r#"{"model":"gpt-test","input":"Say hi"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "response");
    assert_eq!(app.mock.last_request().unwrap().path, "/v1/responses");

    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"palisade_tokens_total{endpoint="embeddings",kind="prompt"}"#
        )
        .unwrap()
            > 0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"palisade_requests_total{endpoint="responses",status="200"}"#
        ) == Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn anthropic_messages_use_the_anthropic_credential_and_version() {
    let app = spawn_app().await;
    let r = app
        .post_anthropic(r#"{"model":"claude-test","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}"#, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.json()["model"], "mock-claude");
    let seen = app.mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(seen.headers.get("authorization").is_none());

    // A client's own version header is respected.
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":8,"messages":[]}"#,
            &[("anthropic-version", "2024-01-01")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.mock.last_request().unwrap().headers["anthropic-version"],
        "2024-01-01"
    );
}

#[tokio::test]
async fn models_lists_configured_models_in_either_shape() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.key);
    let r = app
        .send(
            Method::GET,
            &app.url("/v1/models"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let ids: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["gpt-test", "claude-test"]);
    assert_eq!(r.json()["object"], "list");

    let r = app
        .send(
            Method::GET,
            &app.url("/v1/models"),
            &[("x-api-key", &app.key), ("anthropic-version", "2023-06-01")],
            "",
        )
        .await;
    assert_eq!(r.json()["data"][1]["type"], "model");
    assert_eq!(r.json()["has_more"], false);
}

#[tokio::test]
async fn azure_openai_uses_deployments_api_version_and_api_key() {
    let mock_opts = MockOptions::default();
    let app = spawn_with(mock_opts, |c| {
        let base = c.providers[0].base_url.trim_end_matches("/v1").to_owned();
        let mut azure = provider(
            "azure",
            ProviderKind::Openai,
            &format!("{base}/openai"),
            "MOCK_OPENAI_KEY",
        );
        azure.api_version = Some("2024-10-21".into());
        c.providers.push(azure);
        c.models.push(model("azure-gpt", "azure", "my-deployment"));
    })
    .await;
    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"azure-gpt","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = app.mock.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.headers["api-key"], OPENAI_SECRET);
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn health_is_open_and_everything_else_needs_a_key() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let r = app.send(Method::GET, &app.url(path), &[], "").await;
        assert_eq!(r.status, 200, "{path}");
    }
    for path in ["/v1/models", "/v1/anything", "/admin"] {
        let r = app.send(Method::GET, &app.url(path), &[], "").await;
        assert_eq!(r.status, 401, "{path}");
    }
}

#[tokio::test]
async fn metrics_count_requests_and_upstream_latency() {
    let app = spawn_app().await;
    app.post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
        .await;
    app.post("/v1/chat/completions", r#"{"model":"nope"}"#)
        .await;
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_requests_total{endpoint="chat_completions",status="200"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"palisade_requests_total{endpoint="chat_completions",status="404"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"palisade_upstream_duration_seconds_count{provider="openai-mock"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"palisade_request_duration_seconds_count{endpoint="chat_completions"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "palisade_open_streams"), Some(0.0), "{m}");
}

#[tokio::test]
async fn every_request_writes_one_access_line_without_content() {
    let app = spawn_app().await;
    let marker = "PROMPT-MARKER-91c2";
    let body = format!(
        r#"{{"model":"gpt-test","stream":true,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    );
    let ok = app.post("/v1/chat/completions", &body).await;
    assert_eq!(ok.status, 200);
    let refused = app
        .post(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{marker}"}}"#),
        )
        .await;
    assert_eq!(refused.status, 404);

    let failed = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "500")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_eq!(failed.status, 502);

    let lines = app.access.lines();
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    for line in &lines {
        assert!(!line.contains(marker), "content in the access log: {line}");
        assert!(!line.contains(&app.key), "key in the access log: {line}");
        assert!(
            !line.contains("Hello from"),
            "completion in the access log: {line}"
        );
    }
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], ok.header("x-request-id").unwrap());
    assert_eq!(first["status"], 200);
    assert_eq!(first["model"], "gpt-test");
    assert_eq!(first["provider"], "openai-mock");
    assert_eq!(first["stream"], true);
    assert_eq!(first["outcome"], "completed");
    assert_eq!(first["completion_tokens"], 12);
    assert_eq!(first["key_id"].as_str().unwrap().len(), 12);
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "model_not_found");
    let third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(third["status"], 502);
    assert_eq!(third["error"], "status_5xx");
    assert_eq!(third["provider"], "openai-mock");
    assert_eq!(third["outcome"], "upstream_failed");
}
