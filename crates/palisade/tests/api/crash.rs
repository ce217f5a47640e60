//! The gateway is killed with SIGKILL, repeatedly, while requests are in
//! flight. Afterwards the ledger verifies, and every request that got an
//! answer from the provider through the gateway has its `request.received`
//! entry at the sequence number the response named.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_mock::{MockOptions, MockServer};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

async fn start(dir: &std::path::Path) -> (Child, String) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(BIN)
        .args(["serve", "--ready-file", ready.to_str().unwrap()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return (child, v["proxy"].as_str().unwrap().to_owned());
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "gateway exited at start"
        );
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_recorded_request() {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("palisade.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "./data"

[log]
level = "error"

[ledger]
checkpoint_interval = "100ms"

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"

[[models]]
name = "m"
provider = "local"
"#,
            mock.base_url()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "keys", "create", "--tenant", "t", "--app", "a", "--env", "dev", "--json",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let key: String = serde_json::from_slice::<Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // (request id, audit seq) of every answered request.
    let answered: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    for round in 0..4 {
        let (mut child, proxy) = start(dir.path()).await;
        let stop = Instant::now() + Duration::from_millis(400 + 150 * round);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            let answered = Arc::clone(&answered);
            let (proxy, key) = (proxy.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded in count and time.
                for _ in 0..2_000 {
                    if Instant::now() > stop {
                        break;
                    }
                    let req = http::Request::post(format!("http://{proxy}/v1/chat/completions"))
                        .header("authorization", format!("Bearer {key}"))
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"model":"m","messages":[]}"#,
                        )))
                        .unwrap();
                    let Ok(Ok(resp)) =
                        tokio::time::timeout(Duration::from_secs(5), client.request(req)).await
                    else {
                        break;
                    };
                    if resp.status() != 200 {
                        continue;
                    }
                    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                    let seq: u64 = resp.headers()["x-palisade-audit-seq"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    answered.lock().unwrap().push((id, seq));
                }
            }));
        }
        tokio::time::sleep(stop.saturating_duration_since(Instant::now())).await;
        // Mid-load: no chance to flush anything.
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }

    // A clean start recovers whatever was durable but not checkpointed,
    // then a clean stop checkpoints it.
    let (mut child, _) = start(dir.path()).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let out = Command::new(BIN)
        .args(["audit", "verify", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = report["size"].as_u64().unwrap();

    let ledger = dir.path().join("data/ledger");
    let mut entries = Vec::new();
    for b in 0..size.div_ceil(256) {
        let width = (size - b * 256).min(256);
        let data = palisade_ledger::layout::read_tile(&ledger, None, b, width, None).unwrap();
        for e in palisade_ledger::layout::decode_bundle(&data)
            .unwrap()
            .into_iter()
            .take(width as usize)
        {
            entries.push(serde_json::from_slice::<Value>(e).unwrap());
        }
    }
    let answered = answered.lock().unwrap();
    assert!(
        answered.len() > 50,
        "too little load to mean anything: {}",
        answered.len()
    );
    for (id, seq) in answered.iter() {
        let entry = entries
            .get(*seq as usize)
            .unwrap_or_else(|| panic!("seq {seq} beyond the ledger ({size})"));
        assert_eq!(entry["kind"], "request.received", "seq {seq}");
        assert_eq!(entry["request_id"], id.as_str(), "seq {seq}");
    }
    // Four kills and a clean start each recorded their start-up.
    let starts = entries
        .iter()
        .filter(|e| e["kind"] == "ledger.started")
        .count();
    assert_eq!(starts, 5);
}
