//! Streams: event-by-event relay, usage capture, errors mid-stream,
//! client disconnects.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use palisade_mock::MockOptions;

use crate::helpers::*;

async fn stream(
    app: &TestApp,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (http::StatusCode, Vec<String>) {
    let auth = format!("Bearer {}", app.key);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let resp = app
        .open(Method::POST, &app.url(path), &headers, body.to_owned())
        .await;
    let status = resp.status();
    if status == 200 {
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
    }
    (status, read_events(resp.into_body()).await)
}

#[tokio::test]
async fn chat_stream_hides_the_usage_the_gateway_asked_for_but_counts_it() {
    let app = spawn_app().await;
    let (status, events) = stream(
        &app,
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    // The gateway asked upstream for usage...
    let seen: serde_json::Value =
        serde_json::from_slice(&app.mock.last_request().unwrap().body).unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    // ...but the client sees exactly what it asked for.
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let chunks = data_json(&events);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{events:?}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        text.starts_with("Hello from the Palisade demo provider."),
        "{text}"
    );

    let m = app.metrics().await;
    let completion = metric(
        &m,
        r#"palisade_tokens_total{endpoint="chat_completions",kind="completion"}"#,
    );
    assert_eq!(completion, Some(12.0), "{m}");
    assert_eq!(metric(&m, "palisade_open_streams"), Some(0.0));
}

#[tokio::test]
async fn chat_stream_keeps_usage_when_the_client_asked() {
    let app = spawn_app().await;
    let (_, events) = stream(
        &app,
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true}}"#,
        &[],
    )
    .await;
    let chunks = data_json(&events);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert!(
        chunks[0].get("usage").is_some(),
        "usage:null kept for a client that asked"
    );
}

#[tokio::test]
async fn completions_and_responses_stream() {
    let app = spawn_app().await;
    let (status, events) = stream(
        &app,
        "/v1/completions",
        r#"{"model":"gpt-test","prompt":"x","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    assert!(data_json(&events).iter().all(|c| c.get("usage").is_none()));

    let (status, events) = stream(
        &app,
        "/v1/responses",
        r#"{"model":"gpt-test","input":"x","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        events
            .first()
            .unwrap()
            .starts_with("event: response.created")
    );
    assert!(
        events
            .last()
            .unwrap()
            .starts_with("event: response.completed")
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_tokens_total{endpoint="responses",kind="completion"}"#
        ),
        Some(12.0),
        "{m}"
    );
}

#[tokio::test]
async fn anthropic_stream_is_relayed_and_counted() {
    let app = spawn_app().await;
    let resp = app
        .open(
            Method::POST,
            &app.url("/v1/messages"),
            &[("x-api-key", &app.key)],
            r#"{"model":"claude-test","max_tokens":64,"stream":true,"messages":[]}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp.into_body()).await;
    let names: Vec<_> = events
        .iter()
        .map(|e| {
            e.lines()
                .next()
                .unwrap()
                .trim_start_matches("event: ")
                .to_owned()
        })
        .collect();
    assert_eq!(names.first().unwrap(), "message_start");
    assert_eq!(names.last().unwrap(), "message_stop");
    assert!(names.contains(&"content_block_delta".to_owned()));
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_tokens_total{endpoint="messages",kind="completion"}"#
        ),
        Some(12.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"palisade_tokens_total{endpoint="messages",kind="prompt"}"#
        )
        .unwrap()
            > 0.0
    );
}

#[tokio::test]
async fn events_are_forwarded_as_they_arrive_not_buffered() {
    let opts = MockOptions {
        chunk_delay: Duration::from_millis(300),
        words_per_chunk: 4,
        ..MockOptions::default()
    };
    let app = spawn_with(opts, |_| {}).await;
    let auth = format!("Bearer {}", app.key);
    let started = Instant::now();
    let resp = app
        .open(
            Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            r#"{"model":"gpt-test","stream":true}"#,
        )
        .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let rest = body.collect().await.unwrap().to_bytes();
    let total = started.elapsed();
    // The mock needs ≥ 5 × 300 ms for the whole stream; the first event
    // must not wait for it.
    assert!(total >= Duration::from_millis(1500), "{total:?}");
    assert!(
        first_at < total / 2,
        "first event after {first_at:?} of {total:?}"
    );
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn upstream_failure_mid_stream_becomes_an_error_event() {
    let app = spawn_app().await;
    let (status, events) = stream(
        &app,
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true}"#,
        &[("x-mock-fail-after", "3"), ("x-mock-chunk-delay-ms", "20")],
    )
    .await;
    assert_eq!(status, 200);
    let chunks = data_json(&events);
    assert_eq!(chunks.len(), 4, "{events:?}");
    let err = &chunks[3]["error"];
    assert_eq!(err["type"], "upstream_error");
    assert!(err["message"].as_str().unwrap().contains("openai-mock"));
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"palisade_upstream_errors_total{provider="openai-mock",kind="protocol"}"#
        ),
        Some(1.0),
        "{m}"
    );

    // Anthropic clients get an `event: error`.
    let resp = app
        .open(
            Method::POST,
            &app.url("/v1/messages"),
            &[
                ("x-api-key", &app.key),
                ("x-mock-fail-after", "2"),
                ("x-mock-chunk-delay-ms", "20"),
            ],
            r#"{"model":"claude-test","max_tokens":5,"stream":true}"#,
        )
        .await;
    let events = read_events(resp.into_body()).await;
    let last = events.last().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{last}");
    let data: serde_json::Value =
        serde_json::from_str(last.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");
}

#[tokio::test]
async fn idle_upstream_mid_stream_times_out_with_an_error_event() {
    let opts = MockOptions {
        chunk_delay: Duration::from_millis(2_000),
        ..MockOptions::default()
    };
    let app = spawn_with(opts, |c| {
        c.providers[0].timeouts.idle = Duration::from_millis(200)
    })
    .await;
    let (status, events) = stream(
        &app,
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let chunks = data_json(&events);
    assert_eq!(chunks.len(), 2, "{events:?}");
    assert_eq!(chunks[1]["error"]["code"], "upstream_timeout");
    assert!(
        chunks[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idle")
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let opts = MockOptions {
        chunk_delay: Duration::from_millis(100),
        reply_words: 200,
        words_per_chunk: 1,
        ..MockOptions::default()
    };
    let app = spawn_with(opts, |_| {}).await;
    let auth = format!("Bearer {}", app.key);
    let resp = app
        .open(
            Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            r#"{"model":"gpt-test","stream":true}"#,
        )
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(
        metric(&app.metrics().await, "palisade_open_streams"),
        Some(1.0)
    );
    drop(body);

    // The gateway notices on its next write and drops the upstream request.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = app.metrics().await;
        let disconnects = metric(
            &m,
            r#"palisade_client_disconnects_total{endpoint="chat_completions"}"#,
        );
        if disconnects == Some(1.0) && app.mock.streams_dropped() == 1 {
            assert_eq!(metric(&m, "palisade_open_streams"), Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "upstream not cancelled: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
