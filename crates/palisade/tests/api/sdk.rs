//! The official OpenAI and Anthropic Python SDKs against a running gateway
//! (tests/sdk/test_sdk.py). Needs `PALISADE_SDK_PYTHON`: a Python with both
//! SDKs installed, which `scripts/test` prepares.

use std::process::Command;
use std::time::Duration;

use palisade_config::ProviderKind;
use palisade_mock::MockOptions;

use crate::helpers::*;

#[tokio::test]
async fn official_sdks_parse_every_response_and_error() {
    let Ok(python) = std::env::var("PALISADE_SDK_PYTHON") else {
        eprintln!(
            "SKIPPED official_sdks_parse_every_response_and_error: PALISADE_SDK_PYTHON is not set (scripts/test sets it)"
        );
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_with(MockOptions::default(), |c| {
        c.server.max_body_bytes = 256 * 1024;
        let down = format!("http://127.0.0.1:{closed}/v1");
        let mock_url = c.providers[0].base_url.clone();
        c.providers.push(provider(
            "openai-down",
            ProviderKind::Openai,
            &down,
            "MOCK_OPENAI_KEY",
        ));
        c.providers.push(provider(
            "anthropic-down",
            ProviderKind::Anthropic,
            &down,
            "MOCK_ANTHROPIC_KEY",
        ));
        let mut slow = provider(
            "openai-slow",
            ProviderKind::Openai,
            &mock_url,
            "MOCK_OPENAI_KEY",
        );
        slow.timeouts.first_byte = Duration::from_millis(300);
        c.providers.push(slow);
        let mut slow = provider(
            "anthropic-slow",
            ProviderKind::Anthropic,
            &mock_url,
            "MOCK_ANTHROPIC_KEY",
        );
        slow.timeouts.first_byte = Duration::from_millis(300);
        c.providers.push(slow);
        c.models.push(model("gpt-down", "openai-down", "mock-gpt"));
        c.models
            .push(model("claude-down", "anthropic-down", "mock-claude"));
        c.models.push(model("gpt-slow", "openai-slow", "mock-gpt"));
        c.models
            .push(model("claude-slow", "anthropic-slow", "mock-claude"));
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/test_sdk.py");
    let proxy = app.proxy.to_string();
    let key = app.key.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("PALISADE_PROXY", proxy)
            .env("PALISADE_KEY", key)
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(output.status.success(), "SDK suite failed:\n{report}");
    assert!(report.contains("OK"), "{report}");
}
