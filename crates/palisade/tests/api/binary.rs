//! The `palisade` binary, driven as a user would: config files, the ready
//! file, signals, the key commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade_mock::{MockOptions, MockServer};
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_palisade");

pub(crate) fn palisade(dir: &Path, args: &[&str]) -> Output {
    palisade_with(dir, args, &[])
}

fn palisade_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PALISADE_ADMIN_URL")
        .env_remove("PALISADE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits for the ready file and returns its JSON.
pub(crate) async fn wait_ready(path: &Path, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return v;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("palisade exited early: {status}");
        }
        assert!(Instant::now() < deadline, "no ready file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

pub(crate) async fn post(addr: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub(crate) fn write_config(dir: &Path, base_url: &str) -> PathBuf {
    let path = dir.join("palisade.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "./data"

[[providers]]
name = "local"
kind = "openai"
base_url = "{base_url}"
api_key = "env:LOCAL_LLM_KEY"

[[models]]
name = "smol"
provider = "local"
upstream_model = "smollm2-135m-instruct"
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn serve_writes_the_ready_file_proxies_and_stops_on_sigterm() {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock.base_url());

    let out = palisade(
        dir.path(),
        &[
            "keys", "create", "--tenant", "acme", "--app", "bot", "--env", "prod", "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pal_prod_"));
    assert_eq!(created["tenant"], "acme");
    // Bootstrap: the first admin principal, on the data directory.
    let out = palisade(
        dir.path(),
        &[
            "admin", "create", "--role", "admin", "--name", "ops", "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("paladm_"));

    let ready = dir.path().join("ready.json");
    let mut child = Command::new(BIN)
        .args(["serve", "--ready-file", ready.to_str().unwrap()])
        .current_dir(dir.path())
        .env("LOCAL_LLM_KEY", "local-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addrs = wait_ready(&ready, &mut child).await;
    let proxy = addrs["proxy"].as_str().unwrap().to_owned();
    assert!(addrs["admin"].as_str().unwrap().starts_with("127.0.0.1:"));

    let (status, body) = post(
        &proxy,
        "/v1/chat/completions",
        &key,
        r#"{"model":"smol","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        mock.last_request().unwrap().headers["authorization"],
        "Bearer local-secret"
    );
    // Prompt text that must never reach the logs or the ledger.
    let prompt = r#"{"model":"smol","messages":[{"role":"user","content":"PROMPT-MARKER-7f3a my SSN is 078-05-1120"}]}"#;
    let (status, body) = post(&proxy, "/v1/chat/completions", &key, prompt).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        std::str::from_utf8(&mock.last_request().unwrap().body)
            .unwrap()
            .contains("PROMPT-MARKER-7f3a")
    );
    let (status, _) = post(
        &proxy,
        "/v1/chat/completions",
        &key,
        r#"{"model":"PROMPT-MARKER-7f3a""#,
    )
    .await;
    assert_eq!(status, 400);

    // While the server runs it is the only writer: the CLI says to use its
    // admin API, and does so with --url and a token.
    let create = [
        "keys", "create", "--tenant", "acme", "--app", "tmp", "--env", "dev", "--json",
    ];
    let out = palisade(dir.path(), &create);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--url"), "{}", stderr(&out));
    let admin_url = format!("http://{}", addrs["admin"].as_str().unwrap());
    let via_api = [
        ("PALISADE_ADMIN_URL", admin_url.as_str()),
        ("PALISADE_ADMIN_TOKEN", token.as_str()),
    ];
    let out = palisade_with(dir.path(), &create, &via_api);
    assert!(out.status.success(), "{}", stderr(&out));
    let second: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let second_id = second["id"].as_str().unwrap().to_owned();
    let out = palisade_with(dir.path(), &["keys", "revoke", &second_id], &via_api);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade_with(
        dir.path(),
        &["keys", "show", &second_id, "--json"],
        &via_api,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["status"],
        "revoked",
        "{}",
        stderr(&out)
    );
    let out = palisade_with(
        dir.path(),
        &["keys", "list"],
        &[
            ("PALISADE_ADMIN_URL", admin_url.as_str()),
            ("PALISADE_ADMIN_TOKEN", "paladm_wrong"),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    // Structured JSON logs that never contain the key.
    let access = logs
        .lines()
        .find(|l| l.contains("\"palisade::access\""))
        .expect(&logs);
    let line: Value = serde_json::from_str(access).unwrap();
    assert_eq!(line["status"], 200);
    assert!(!logs.contains(&key), "key in logs");
    assert!(!logs.contains(&token), "admin token in logs");
    let second_key = second["key"].as_str().unwrap();
    assert!(
        !logs.contains(second_key),
        "key made through the admin API in logs"
    );
    assert!(!logs.contains("PROMPT-MARKER"), "prompt text in logs");
    assert!(!logs.contains("078-05-1120"), "prompt text in logs");
    assert!(
        !logs.contains("Hello from the Palisade"),
        "completion text in logs"
    );

    // The ledger the server left behind verifies, and says what it holds.
    let out = palisade(dir.path(), &["audit", "verify", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true);
    let dump = |n: u64| {
        let data = std::fs::read(
            dir.path()
                .join(format!("data/ledger/tile/entries/000.p/{n}")),
        )
        .unwrap_or_default();
        palisade_ledger::layout::decode_bundle(&data)
            .unwrap_or_default()
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect::<Vec<_>>()
    };
    // The first key's and the admin's creation (before the server ran),
    // started, config, received + completed twice, a denial, the second
    // key's creation and revocation through the admin API, and the refused
    // admin call.
    assert_eq!(
        report["size"],
        12,
        "{:?}",
        dump(report["size"].as_u64().unwrap())
    );
    let entries = dump(12).join("\n");
    assert!(!entries.contains(&token), "admin token in the ledger");
    assert!(entries.contains(r#""actor":"admin:ops""#), "{entries}");
    assert!(
        !entries.contains("PROMPT-MARKER") && !entries.contains("078-05"),
        "prompt text in the ledger"
    );
    assert!(!entries.contains(&key), "key in the ledger");
    let vkey = stdout(&palisade(dir.path(), &["audit", "key"]))
        .trim()
        .to_owned();
    assert!(vkey.contains("/palisade/"), "{vkey}");

    // Usage, from the ledger, on the data directory.
    let out = palisade(dir.path(), &["usage", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let usage: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(usage["usage"][0]["model"], "smol", "{usage}");
    assert_eq!(usage["usage"][0]["requests"], 2, "{usage}");
    let out = palisade(dir.path(), &["usage", "--csv", "--from", "2000-01-01"]);
    assert!(
        stdout(&out).starts_with("day,tenant,app"),
        "{}",
        stdout(&out)
    );

    // The checkpoint left behind is a valid "earlier" checkpoint for itself.
    let out = palisade(
        dir.path(),
        &["audit", "verify", "--since", "data/ledger/checkpoint"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Everything from today on, exported with proofs, checks out elsewhere.
    let out = palisade(
        dir.path(),
        &[
            "audit",
            "export",
            "--from",
            "2000-01-01",
            "--to",
            "9999-01-01",
            "--out",
            "export",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("exported 12 entries"),
        "{}",
        stdout(&out)
    );
    let out = palisade(
        dir.path(),
        &["audit", "check-export", "export", "--key", &vkey],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Search by tenant and kind.
    let out = palisade(
        dir.path(),
        &[
            "audit",
            "search",
            "--tenant",
            "acme",
            "--kind",
            "request.completed",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let found: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    assert_eq!(found[0]["entry"]["status"], 200);

    // The last entries, in order.
    let out = palisade(dir.path(), &["audit", "tail", "-n", "3"]);
    let tail: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(tail.len(), 3, "{tail:?}");
    assert!(
        tail[0].starts_with("9 {") && tail[2].starts_with("11 {"),
        "{tail:?}"
    );
    assert!(
        tail[0].contains("\"kind\":\"admin.key_created\""),
        "{tail:?}"
    );
    assert!(
        tail[1].contains("\"kind\":\"admin.key_revoked\""),
        "{tail:?}"
    );
    assert!(
        tail[1].contains(&second_id) && tail[1].contains("\"actor\":\"admin:ops\""),
        "{tail:?}"
    );
    assert!(
        tail[2].contains("\"kind\":\"admin.denied\"")
            && tail[2].contains("\"reason\":\"malformed_token\""),
        "{tail:?}"
    );

    // A proof for the first request's received entry checks out.
    let out = palisade(
        dir.path(),
        &["audit", "prove", "4", "--out", "seq2.tlog-proof"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(
        dir.path(),
        &["audit", "check-proof", "seq2.tlog-proof", "--key", &vkey],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"kind\":\"request.received\""),
        "{}",
        stdout(&out)
    );

    // Tampering with one entry is caught and located.
    let bundle = dir.path().join("data/ledger/tile/entries/000.p/12");
    let mut data = std::fs::read(&bundle).unwrap();
    let at = data.len() - 10;
    data[at] ^= 1;
    std::fs::write(&bundle, data).unwrap();
    let out = palisade(
        dir.path(),
        &["audit", "verify", "--ledger", "data/ledger", "--key", &vkey],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("entry 11"), "{}", stderr(&out));
    assert!(!logs.contains("local-secret"), "provider secret in logs");
}

#[tokio::test]
async fn keys_list_and_revoke_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "http://127.0.0.1:9/v1");
    let out = palisade(
        dir.path(),
        &[
            "keys", "create", "--tenant", "acme", "--app", "bot", "--env", "dev", "--json",
        ],
    );
    let id = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = palisade(dir.path(), &["keys", "list", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list["keys"][0]["id"], id.as_str());
    assert!(list["keys"][0]["revoked_at"].is_null());
    assert!(!stdout(&out).contains("pal_dev_"), "secret listed");

    let out = palisade(dir.path(), &["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(dir.path(), &["keys", "list"]);
    assert!(stdout(&out).contains("revoked"), "{}", stdout(&out));

    let out = palisade(dir.path(), &["keys", "revoke", "zzzzzzzzzzzz"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no key"), "{}", stderr(&out));

    // A scoped key with its metadata, shown, rotated and reviewed.
    let out = palisade(
        dir.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--app",
            "search",
            "--env",
            "prod",
            "--models",
            "gpt-4o*,text-embedding-3-small",
            "--endpoints",
            "chat_completions,embeddings",
            "--cidr",
            "10.0.0.0/8,2001:db8::/32",
            "--expires",
            "30d",
            "--max-tokens",
            "512",
            "--owner",
            "search-team",
            "--ticket",
            "CHG-9",
            "--label",
            "cost-center=42",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let scoped: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let scoped_id = scoped["id"].as_str().unwrap().to_owned();
    let out = palisade(dir.path(), &["keys", "show", &scoped_id, "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["scope"]["models"][0], "gpt-4o*");
    assert_eq!(shown["scope"]["networks"][1], "2001:db8::/32");
    assert_eq!(shown["scope"]["max_tokens"], 512);
    assert_eq!(shown["owner"], "search-team");
    assert_eq!(shown["ticket"], "CHG-9");
    assert_eq!(shown["labels"]["cost-center"], "42");
    assert!(shown["expires_at"].is_string());
    assert!(
        shown.get("key").is_none(),
        "the key is shown only at creation"
    );
    let out = palisade(
        dir.path(),
        &[
            "keys", "rotate", &scoped_id, "--grace", "1h", "--ticket", "CHG-10", "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_ne!(rotated["key"], scoped["key"]);
    assert!(rotated["old_secret_valid_until"].is_string());
    let out = palisade(dir.path(), &["keys", "review", "--csv"]);
    let csv = stdout(&out);
    assert!(csv.starts_with("id,tenant,app,env,status"), "{csv}");
    assert!(csv.contains(&format!("{id},acme,bot,dev,revoked")), "{csv}");
    let out = palisade(dir.path(), &["keys", "review", "--json"]);
    let review: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(review["keys"].as_array().unwrap().len(), 2);
    let out = palisade(dir.path(), &["keys", "review"]);
    assert!(stdout(&out).contains("search-team"), "{}", stdout(&out));
    for bad in [
        vec!["--env", "qa"],
        vec!["--env", "prod", "--cidr", "10.0.0.1/8"],
        vec!["--env", "prod", "--endpoints", "chat"],
        vec!["--env", "prod", "--label", "novalue"],
    ] {
        let mut args = vec!["keys", "create", "--tenant", "acme", "--app", "a"];
        args.extend(bad.iter().copied());
        let out = palisade(dir.path(), &args);
        assert!(!out.status.success(), "{bad:?} accepted");
    }
    // Every change is on record, with its ticket.
    let out = palisade(dir.path(), &["audit", "tail", "-n", "10"]);
    let tail = stdout(&out);
    assert!(tail.contains("\"kind\":\"admin.key_rotated\""), "{tail}");
    assert!(tail.contains("\"ticket\":\"CHG-10\""), "{tail}");
    let out = palisade(
        dir.path(),
        &[
            "keys", "create", "--tenant", "Bad Name", "--app", "a", "--env", "dev",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("palisade.toml"),
        r#"
[server]
listen = "127.0.0.1:4400"
lisen = "typo"

[[providers]]
name = "p"
kind = "openai"
base_url = "ftp://nowhere"
api_key = "sk-literal-secret"

[[models]]
name = "m"
provider = "missing"
"#,
    )
    .unwrap();
    let out = palisade(dir.path(), &["check-config"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("server.lisen: unknown key"), "{err}");
    assert!(err.contains("providers[0].api_key"), "{err}");
    assert!(!err.contains("sk-literal-secret"), "{err}");

    std::fs::write(
        dir.path().join("palisade.toml"),
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\n\n[[models]]\nname = \"m\"\nprovider = \"missing\"\n",
    )
    .unwrap();
    let out = palisade(dir.path(), &["check-config"]);
    let err = stderr(&out);
    assert!(
        err.contains("providers[0].base_url") && err.contains("models[0].provider"),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");

    let out = palisade(dir.path(), &["check-config", "--config", "nope.toml"]);
    assert!(stderr(&out).contains("palisade init"), "{}", stderr(&out));
}

#[tokio::test]
async fn init_writes_a_valid_starter_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = palisade(dir.path(), &["init", "--dir", "site"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("site/palisade-data/palisade.db").exists());
    // The first admin token, shown once, and on record.
    assert!(stdout(&out).contains("paladm_"), "{}", stdout(&out));
    let out = palisade(
        dir.path(),
        &["admin", "list", "--json", "--config", "site/palisade.toml"],
    );
    let admins: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(admins["admins"][0]["name"], "admin");
    assert_eq!(admins["admins"][0]["role"], "admin");
    let out = palisade(
        dir.path(),
        &["audit", "tail", "--config", "site/palisade.toml"],
    );
    assert!(
        stdout(&out).contains("\"kind\":\"admin.admin_created\""),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = palisade(
        dir.path(),
        &["check-config", "--config", "site/palisade.toml"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(dir.path(), &["init", "--dir", "site"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"));
}

#[tokio::test]
async fn demo_needs_nothing_and_prints_a_working_key() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(BIN)
        .args(["serve", "--demo", "--ready-file", ready.to_str().unwrap()])
        .current_dir(dir.path())
        .env("PALISADE__SERVER__LISTEN", "127.0.0.1:0")
        .env("PALISADE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addrs = wait_ready(&ready, &mut child).await;
    let proxy = addrs["proxy"].as_str().unwrap().to_owned();
    assert!(dir.path().join("palisade-demo/palisade.db").exists());
    let status = terminate(&mut child);
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("pal_dev_"))
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_owned();
    assert!(out.contains("curl"), "{out}");
    assert!(out.contains("paladm_"), "no admin token in {out}");
    assert!(
        out.contains(&format!("http://{proxy}/v1/chat/completions")),
        "{out}"
    );

    // Run it again: the printed key works against the demo provider.
    std::fs::remove_file(&ready).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--demo", "--ready-file", ready.to_str().unwrap()])
        .current_dir(dir.path())
        .env("PALISADE__SERVER__LISTEN", "127.0.0.1:0")
        .env("PALISADE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addrs = wait_ready(&ready, &mut child).await;
    let proxy = addrs["proxy"].as_str().unwrap().to_owned();
    let mut stdout_pipe = child.stdout.take().unwrap();
    // The banner is printed before the ready file is written.
    let banner = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stdout_pipe, &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    let new_key = banner
        .split_whitespace()
        .find(|w| w.starts_with("pal_dev_"))
        .unwrap()
        .to_owned();
    let (status, body) = post(
        &proxy,
        "/v1/chat/completions",
        &new_key,
        r#"{"model":"demo","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Palisade demo provider"));
    // The previous demo key was revoked.
    let (status, _) = post(&proxy, "/v1/chat/completions", &key, r#"{"model":"demo"}"#).await;
    assert_eq!(status, 401);
    terminate(&mut child);
}
