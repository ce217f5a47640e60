//! Start-up and graceful shutdown.

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use palisade_mock::MockOptions;

use crate::helpers::*;

#[tokio::test]
async fn shutdown_drains_an_in_flight_stream_and_reports_draining() {
    let opts = MockOptions {
        chunk_delay: Duration::from_millis(100),
        ..MockOptions::default()
    };
    let mut app = spawn_with(opts, |_| {}).await;
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

    let stopped = app.begin_shutdown();
    // The stream still runs to its end.
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    stopped.await.unwrap().unwrap();
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(app.proxy).await.is_err());
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let opts = MockOptions {
        chunk_delay: Duration::from_millis(1000),
        reply_words: 100,
        words_per_chunk: 1,
        ..MockOptions::default()
    };
    let mut app = spawn_with(opts, |c| {
        c.server.shutdown_grace = Duration::from_millis(300)
    })
    .await;
    let auth = format!("Bearer {}", app.key);
    let resp = app
        .open(
            Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            r#"{"model":"gpt-test","stream":true}"#,
        )
        .await;
    let _body = resp.into_body();
    let (dir, vkey) = (
        app.journal.dir().to_owned(),
        app.journal.verifier_key().to_owned(),
    );
    let started = std::time::Instant::now();
    app.shutdown().await.unwrap();
    // A 100-second stream did not hold shutdown beyond the grace period.
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stream was ended, and its end recorded, before the ledger
    // closed.
    let entries = checkpointed_entries(&dir, &vkey);
    let received = entries
        .iter()
        .find(|e| e["kind"] == "request.received")
        .expect("the request is on record");
    let completed = entries
        .iter()
        .find(|e| e["kind"] == "request.completed")
        .expect("its end is on record");
    assert_eq!(completed["request_id"], received["request_id"]);
}
