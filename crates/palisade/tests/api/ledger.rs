//! The audit ledger through the gateway: what is recorded, when, and that
//! nothing is forwarded that was not recorded first.

use http::Method;
use serde_json::Value;

use crate::helpers::*;

fn of_kind<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test]
async fn start_up_is_recorded_first() {
    let app = spawn_app().await;
    let entries = app.ledger_entries().await;
    assert_eq!(entries[0]["kind"], "ledger.started");
    assert_eq!(entries[0]["schema"], "palisade.audit/v1");
    assert_eq!(entries[1]["kind"], "config.loaded");
    assert_eq!(entries[1]["config_hash"], "test-config");
    assert_eq!(entries[1]["models"]["items"][0]["name"], "gpt-test");
    assert_eq!(entries[1]["models"]["total"], 2);
    assert_eq!(entries[1]["first_load"], true);
    assert!(entries[1]["changes"].is_null());
    assert_eq!(entries[1]["node"], app.journal.origin());
}

#[tokio::test]
async fn forwarded_requests_carry_their_received_entry_and_complete() {
    let app = spawn_app().await;
    let marker = "PROMPT-MARKER-4d1e";
    let body = format!(
        r#"{{"model":"gpt-test","stream":true,"messages":[{{"role":"user","content":"{marker}"}}]}}"#
    );
    let r = app.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    let seq: usize = r.header("x-palisade-audit-seq").unwrap().parse().unwrap();

    let entries = app.ledger_entries().await;
    let received = &entries[seq];
    assert_eq!(received["kind"], "request.received");
    assert_eq!(received["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(received["tenant"], "acme");
    assert_eq!(received["app"], "tests");
    assert_eq!(received["env"], "dev");
    assert_eq!(received["model"], "gpt-test");
    assert_eq!(received["provider"], "openai-mock");
    assert_eq!(received["upstream_model"], "mock-gpt");
    assert_eq!(received["stream"], true);
    assert_eq!(received["source"], "127.0.0.1");
    assert_eq!(received["endpoint"], "/v1/chat/completions");

    let completed = of_kind(&entries, "request.completed");
    assert_eq!(completed.len(), 1);
    let c = completed[0];
    assert_eq!(c["received_seq"], seq as u64);
    assert_eq!(c["status"], 200);
    assert_eq!(c["outcome"], "completed");
    assert_eq!(c["completion_tokens"], 12);
    assert_eq!(c["client_disconnected"], false);
    assert!(c["bytes_in"].as_u64().unwrap() > 0);

    // Metadata only: no prompt, no completion, no key.
    let all = serde_json::to_string(&entries).unwrap();
    assert!(!all.contains(marker), "prompt text in the ledger");
    assert!(!all.contains("Hello from"), "completion text in the ledger");
    assert!(!all.contains(&app.key), "key in the ledger");
}

#[tokio::test]
async fn provider_failures_complete_with_their_error_and_carry_the_seq() {
    let app = spawn_app().await;
    let r = app
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-status", "503")],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_eq!(r.status, 502);
    let seq: u64 = r.header("x-palisade-audit-seq").unwrap().parse().unwrap();
    let entries = app.ledger_entries().await;
    let c = of_kind(&entries, "request.completed")[0];
    assert_eq!(c["received_seq"], seq);
    assert_eq!(c["status"], 502);
    assert_eq!(c["outcome"], "upstream_failed");
    assert_eq!(c["error"], "status_5xx");
}

#[tokio::test]
async fn refusals_are_recorded_as_denials_without_key_material() {
    let app = spawn_app().await;
    let bad_key = "pal_dev_000000000000_00000000000000000000000000000000zz";
    let auth = format!("Bearer {bad_key}");
    let url = app.url("/v1/chat/completions");
    let r = app
        .send(
            Method::POST,
            &url,
            &[("authorization", &auth)],
            r#"{"model":"gpt-test"}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("x-palisade-audit-seq").is_none(),
        "nothing was forwarded"
    );
    let r = app
        .post("/v1/chat/completions", r#"{"model":"nope"}"#)
        .await;
    assert_eq!(r.status, 404);
    let r = app.post("/v1/chat/completions", "{not json").await;
    assert_eq!(r.status, 400);

    let entries = app.ledger_entries().await;
    let denied = of_kind(&entries, "request.denied");
    let reasons: Vec<_> = denied
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["bad_checksum", "model_not_found", "invalid_request"]
    );
    assert_eq!(denied[0]["key_id"], "");
    assert_eq!(denied[1]["key_id"].as_str().unwrap().len(), 12);
    assert_eq!(denied[0]["status"], 401);
    assert!(of_kind(&entries, "request.received").is_empty());
    let all = serde_json::to_string(&entries).unwrap();
    assert!(
        !all.contains(bad_key) && !all.contains(&app.key),
        "key material in the ledger"
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_recorded_is_not_forwarded() {
    let app = spawn_app().await;
    app.journal.close();
    let r = app
        .post(
            "/v1/chat/completions",
            r#"{"model":"gpt-test","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "audit_unavailable");
    assert!(
        app.mock.last_request().is_none(),
        "forwarded without a record"
    );
    let r = app
        .post_anthropic(
            r#"{"model":"claude-test","max_tokens":5,"messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert!(app.mock.last_request().is_none());
}

#[tokio::test]
async fn the_admin_listener_serves_the_checkpoint_and_tiles() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
            .await;
    }
    let admin = |path: &str| format!("http://{}{path}", app.admin);
    // The ledger is for admins and auditors (unless `ledger.public` opens it).
    let r = app
        .send(Method::GET, &admin("/audit/checkpoint"), &[], "")
        .await;
    assert_eq!(r.status, 401);
    let r = app
        .send(
            Method::GET,
            &admin("/audit/checkpoint"),
            &[("authorization", &format!("Bearer {}", app.key))],
            "",
        )
        .await;
    assert_eq!(r.status, 401, "a proxy key is no admin token");
    let token = app
        .admin_token(palisade_store::Role::Auditor, "auditor-1")
        .await;
    let auth = format!("Bearer {token}");
    let auth = [("authorization", auth.as_str())];
    let entries = app.ledger_entries().await;

    let r = app
        .send(Method::GET, &admin("/audit/checkpoint"), &auth, "")
        .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(app.journal.origin()));
    assert_eq!(lines.next(), Some(entries.len().to_string().as_str()));
    assert_eq!(r.header("cache-control"), Some("no-cache"));

    let bundle = format!("/audit/tile/entries/000.p/{}", entries.len());
    let r = app.send(Method::GET, &admin(&bundle), &auth, "").await;
    assert_eq!(r.status, 200);
    let decoded = palisade_ledger::layout::decode_bundle(&r.body).unwrap();
    assert_eq!(decoded.len(), entries.len());
    let r = app
        .send(
            Method::GET,
            &admin(&format!("/audit/tile/0/000.p/{}", entries.len())),
            &auth,
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 32 * entries.len());

    for bad in [
        "/audit/tile/../ledger.key",
        "/audit/tile/0/../../ledger.key",
        "/audit/tile/0/000.p/999",
        "/audit/tile/entries/001",
    ] {
        let r = app.send(Method::GET, &admin(bad), &auth, "").await;
        assert_eq!(r.status, 404, "{bad}");
    }

    // Every one of those reads is itself on record.
    let after = app.ledger_entries().await;
    let reads = of_kind(&after, "audit.read");
    assert_eq!(reads.len(), 7, "{reads:?}");
    assert_eq!(reads[0]["path"], "/audit/checkpoint");
    assert_eq!(reads[0]["status"], 200);
    assert_eq!(reads[0]["source"], "127.0.0.1");
    assert_eq!(reads[0]["actor"], "admin:auditor-1");
    assert_eq!(reads[6]["status"], 404);
    let denied = of_kind(&after, "admin.denied");
    let reasons: Vec<_> = denied
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["missing_token", "proxy_key_on_admin_api"]);
}

#[tokio::test]
async fn the_search_index_finds_entries_by_tenant_kind_and_status() {
    let app = spawn_app().await;
    app.post("/v1/chat/completions", r#"{"model":"gpt-test"}"#)
        .await;
    app.post("/v1/chat/completions", r#"{"model":"nope"}"#)
        .await;
    let entries = app.ledger_entries().await;
    let through = palisade_server::audit_index::catch_up(
        &app.store,
        app.journal.dir(),
        app.journal.verifier_key(),
    )
    .await
    .unwrap();
    assert_eq!(through, entries.len() as u64);
    // Indexing again changes nothing.
    palisade_server::audit_index::catch_up(
        &app.store,
        app.journal.dir(),
        app.journal.verifier_key(),
    )
    .await
    .unwrap();

    let search = |f: fn(&mut palisade_store::AuditQuery)| {
        let mut q = palisade_store::AuditQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        palisade_store::Store::search_audit(&app.store, q)
    };
    let acme = search(|q| q.tenant = Some("acme".into())).await.unwrap();
    let kinds: Vec<_> = acme
        .iter()
        .map(|s| entries[*s as usize]["kind"].as_str().unwrap())
        .collect();
    // The completed entry inherits the tenant of its received entry.
    assert_eq!(kinds, ["request.received", "request.completed"]);
    let denied = search(|q| q.status = Some(404)).await.unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(entries[denied[0] as usize]["reason"], "model_not_found");
    let nothing = search(|q| q.tenant = Some("globex".into())).await.unwrap();
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn a_public_checkpoint_keeps_the_tiles_private() {
    let app = spawn_with(palisade_mock::MockOptions::default(), |c| {
        c.ledger.public = palisade_config::LedgerPublic::Checkpoint;
    })
    .await;
    let entries = app.ledger_entries().await;
    let admin = |path: &str| format!("http://{}{path}", app.admin);
    let r = app
        .send(Method::GET, &admin("/audit/checkpoint"), &[], "")
        .await;
    assert_eq!(r.status, 200);
    let tile = format!("/audit/tile/entries/000.p/{}", entries.len());
    let r = app.send(Method::GET, &admin(&tile), &[], "").await;
    assert_eq!(r.status, 401);
    let after = app.ledger_entries().await;
    let reads = of_kind(&after, "audit.read");
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["actor"], "anonymous");
}
