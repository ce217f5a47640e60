//! Access control: key scopes, lifecycle, the admin API and its roles,
//! throttling, and what the audit record says about each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use palisade_mock::MockOptions;
use palisade_store::{NewKey, Role, Store};
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, spawn_app, spawn_prepared, spawn_with};

async fn admin(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> Reply {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    app.send(
        method,
        &format!("http://{}{path}", app.admin),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Creates a key through the admin API and returns (id, key).
async fn create_key(app: &TestApp, token: &str, body: Value) -> (String, String) {
    let r = admin(app, Method::POST, "/admin/v1/keys", token, body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn chat(app: &TestApp, key: &str, model: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    app.send(
        Method::POST,
        &app.url("/v1/chat/completions"),
        &headers,
        json!({"model": model, "messages": []}).to_string(),
    )
    .await
}

fn denial_reasons(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["kind"] == "request.denied")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_scope_matrix_is_enforced_and_every_denial_recorded() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.access.environments = vec!["dev".into(), "prod".into()];
        c.access.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let token = app.admin_token(Role::Admin, "ops").await;
    let base = json!({"tenant": "acme", "app": "bot", "env": "prod", "owner": "team-a"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };

    // Models: globs; the model list shows only what the key may use.
    let (_, gpt_only) = create_key(&app, &token, with(json!({"models": ["gpt-*"]}))).await;
    assert_eq!(chat(&app, &gpt_only, "gpt-test", &[]).await.status, 200);
    let r = chat(&app, &gpt_only, "claude-test", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "permission_denied");
    let r = app
        .send(
            Method::GET,
            &app.url("/v1/models"),
            &[("authorization", &format!("Bearer {gpt_only}"))],
            "",
        )
        .await;
    let listed: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["gpt-test"]);

    // Endpoints.
    let (_, embed_only) =
        create_key(&app, &token, with(json!({"endpoints": ["embeddings"]}))).await;
    assert_eq!(chat(&app, &embed_only, "gpt-test", &[]).await.status, 403);
    let r = app
        .send(
            Method::POST,
            &app.url("/v1/embeddings"),
            &[("authorization", &format!("Bearer {embed_only}"))],
            r#"{"model":"gpt-test","input":"hi"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Networks, with X-Forwarded-For believed from the trusted proxy
    // (127.0.0.1 here) and only the rightmost untrusted hop counting.
    let (_, office) = create_key(&app, &token, with(json!({"networks": ["10.0.0.0/8"]}))).await;
    assert_eq!(chat(&app, &office, "gpt-test", &[]).await.status, 403);
    let inside = [("x-forwarded-for", "10.1.2.3")];
    assert_eq!(chat(&app, &office, "gpt-test", &inside).await.status, 200);
    let spoofed = [("x-forwarded-for", "10.9.9.9, 192.0.2.1")];
    assert_eq!(chat(&app, &office, "gpt-test", &spoofed).await.status, 403);

    // Max tokens: more is refused; none is bounded for the provider.
    let (_, small) = create_key(&app, &token, with(json!({"max_tokens": 100}))).await;
    let auth = format!("Bearer {small}");
    let r = app
        .send(
            Method::POST,
            &app.url("/v1/chat/completions"),
            &[("authorization", &auth)],
            r#"{"model":"gpt-test","messages":[],"max_tokens":500}"#,
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    assert_eq!(chat(&app, &small, "gpt-test", &[]).await.status, 200);
    let sent: Value = serde_json::from_slice(&app.mock.last_request().unwrap().body).unwrap();
    assert_eq!(sent["max_completion_tokens"], 100);

    // Expiry, and an environment no longer declared: invalid, like any
    // unusable key, with the reason on record only.
    let now = palisade_store::unix_now();
    let (_, expired) = app
        .store
        .create_key(
            NewKey {
                tenant: "acme".into(),
                app: "bot".into(),
                env: "prod".into(),
                expires_at: Some(now - 1),
                ..NewKey::default()
            },
            now - 10,
        )
        .await
        .unwrap();
    let r = chat(&app, expired.expose(), "gpt-test", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let (_, staging) = app
        .store
        .create_key(
            NewKey {
                tenant: "acme".into(),
                app: "bot".into(),
                env: "staging".into(),
                ..NewKey::default()
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        chat(&app, staging.expose(), "gpt-test", &[]).await.status,
        401
    );
    // ... and the admin API will not make one.
    let r = admin(
        &app,
        Method::POST,
        "/admin/v1/keys",
        &token,
        with(json!({"env": "staging"})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not declared"), "{}", r.text());

    let entries = app.ledger_entries().await;
    assert_eq!(
        denial_reasons(&entries),
        [
            "model_not_allowed",
            "endpoint_not_allowed",
            "network_not_allowed",
            "network_not_allowed",
            "max_tokens_exceeded",
            "expired",
            "environment_not_declared",
        ]
    );
    let net = entries
        .iter()
        .find(|e| e["reason"] == "network_not_allowed")
        .unwrap();
    assert_eq!(net["source"], "127.0.0.1");
    let forwarded = entries
        .iter()
        .filter(|e| e["kind"] == "request.received")
        .nth(2)
        .unwrap();
    assert_eq!(forwarded["source"], "10.1.2.3", "{forwarded}");
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_its_grace_period_only() {
    let app = spawn_app().await;
    let token = app.admin_token(Role::Admin, "ops").await;
    let (id, old) = create_key(
        &app,
        &token,
        json!({"tenant": "acme", "app": "bot", "env": "dev"}),
    )
    .await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        &token,
        json!({"grace": "2s", "ticket": "CHG-42"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json();
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["id"], id.as_str());
    assert_ne!(new, old);
    assert!(rotated["old_secret_valid_until"].is_string());
    let started = Instant::now();
    assert_eq!(chat(&app, &old, "gpt-test", &[]).await.status, 200);
    assert_eq!(chat(&app, &new, "gpt-test", &[]).await.status, 200);
    // The grace period is whole seconds from the rotation: 2 s, so by 3 s
    // the old secret is refused and the new one still works.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    assert_eq!(chat(&app, &old, "gpt-test", &[]).await.status, 401);
    assert_eq!(chat(&app, &new, "gpt-test", &[]).await.status, 200);

    // Without grace, the old secret stops at once.
    let r = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        &token,
        json!({"grace": "0s"}),
    )
    .await;
    let newest = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(chat(&app, &new, "gpt-test", &[]).await.status, 401);
    assert_eq!(chat(&app, &newest, "gpt-test", &[]).await.status, 200);

    let entries = app.ledger_entries().await;
    let rotations: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "admin.key_rotated")
        .collect();
    assert_eq!(rotations.len(), 2);
    assert_eq!(rotations[0]["actor"], "admin:ops");
    assert_eq!(rotations[0]["ticket"], "CHG-42");
    assert_eq!(rotations[0]["target"], id.as_str());
    assert_eq!(
        denial_reasons(&entries),
        ["rotated_secret", "rotated_secret"]
    );
}

#[tokio::test]
async fn revocation_takes_effect_within_a_second_under_load() {
    let app = Arc::new(spawn_app().await);
    let token = app.admin_token(Role::Admin, "ops").await;
    let (id, key) = create_key(
        &app,
        &token,
        json!({"tenant": "acme", "app": "bot", "env": "dev"}),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Milliseconds after the revocation was answered at which a request
    // that started after it still succeeded (the worst one).
    let revoked_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let worst_ms = Arc::new(AtomicU64::new(0));
    let ok_before = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (app, key, stop) = (Arc::clone(&app), key.clone(), Arc::clone(&stop));
        let (revoked_at, worst_ms, ok_before) = (
            Arc::clone(&revoked_at),
            Arc::clone(&worst_ms),
            Arc::clone(&ok_before),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let status = chat(&app, &key, "gpt-test", &[]).await.status;
                let revoked = *revoked_at.lock().unwrap();
                match revoked {
                    Some(at) if sent > at && status == 200 => {
                        worst_ms.fetch_max(
                            sent.duration_since(at).as_millis() as u64,
                            Ordering::Relaxed,
                        );
                    }
                    None if status == 200 => {
                        ok_before.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/keys/{id}/revoke"),
        &token,
        json!({"ticket": "INC-7"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    *revoked_at.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        ok_before.load(Ordering::Relaxed) > 0,
        "the load never got through"
    );
    let worst = worst_ms.load(Ordering::Relaxed);
    assert!(
        worst < 1000,
        "a request {worst} ms after revocation was served"
    );
    // Refused; by now the address hammering a revoked key is throttled too.
    let status = chat(&app, &key, "gpt-test", &[]).await.status;
    assert!([401, 429].contains(&status.as_u16()), "{status}");
}

#[tokio::test]
async fn the_admin_api_enforces_roles_and_matches_its_openapi_document() {
    // This test fails authentication on purpose, many times.
    let app = spawn_with(MockOptions::default(), |c| {
        c.access.failed_auth_burst = 1000
    })
    .await;
    let admin_token = app.admin_token(Role::Admin, "ops").await;
    let auditor = app.admin_token(Role::Auditor, "auditor").await;
    let base = |p: &str| format!("http://{}{p}", app.admin);

    let doc = app
        .send(Method::GET, &base("/admin/v1/openapi.json"), &[], "")
        .await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let (id, _) = create_key(
        &app,
        &admin_token,
        json!({"tenant": "acme", "app": "bot", "env": "dev"}),
    )
    .await;
    // Everything so far checkpointed, so that entry 0 can be read.
    app.ledger_entries().await;
    let mut operations = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            operations.push((path.clone(), method.to_uppercase(), op.clone()));
        }
    }
    assert!(operations.len() >= 14, "{operations:?}");
    for (path, method, op) in &operations {
        let concrete = path.replace("{id}", &id).replace("{seq}", "0");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let role = op["x-palisade-role"].as_str().unwrap();
        // A proxy key is never an admin credential.
        if role != "none" {
            let r = admin(&app, method.clone(), &concrete, &app.key, Value::Null).await;
            assert_eq!(r.status, 401, "{method} {path} with a proxy key");
            let r = app.send(method.clone(), &base(&concrete), &[], "").await;
            assert_eq!(r.status, 401, "{method} {path} without a token");
        }
        // An auditor may read and never write.
        let r = admin(&app, method.clone(), &concrete, &auditor, Value::Null).await;
        if role == "admin" {
            assert_eq!(r.status, 403, "{method} {path} as auditor: {}", r.text());
        } else {
            assert_eq!(r.status, 200, "{method} {path} as auditor: {}", r.text());
        }
        assert_eq!(method == Method::GET, role != "admin", "{method} {path}");
    }
    // Every documented write is routed: with the admin role it reaches its
    // handler (which may refuse the empty body, but never 404/405).
    for (path, method, op) in &operations {
        if op["x-palisade-role"] != "admin" {
            continue;
        }
        let concrete = path.replace("{id}", "000000000000");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = admin(&app, method.clone(), &concrete, &admin_token, json!({})).await;
        assert!(
            [400, 404].contains(&r.status.as_u16()) && r.json()["error"]["type"] != Value::Null,
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
    }
    // And nothing is routed that the document does not list.
    for (method, path) in [
        (Method::DELETE, "/admin/v1/keys"),
        (Method::GET, "/admin/v1/nothing"),
        (Method::PUT, format!("/admin/v1/keys/{id}").leak() as &str),
    ] {
        let r = admin(&app, method.clone(), path, &admin_token, Value::Null).await;
        assert!(
            [404, 405].contains(&r.status.as_u16()),
            "{method} {path}: {}",
            r.status
        );
    }

    // Auditors see the review and search the ledger; those reads are
    // themselves recorded with who made them.
    let r = admin(
        &app,
        Method::GET,
        "/admin/v1/audit/search?kind=admin.key_created",
        &auditor,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let found = r.json();
    assert_eq!(found["entries"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["entries"][0]["entry"]["target"], id.as_str());
    let entries = app.ledger_entries().await;
    let read = entries
        .iter()
        .rev()
        .find(|e| e["kind"] == "audit.read")
        .unwrap();
    assert_eq!(read["actor"], "admin:auditor");
    assert_eq!(read["read"]["search"]["kind"], "admin.key_created");
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "admin.denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|d| d["reason"] == "role_not_allowed" && d["actor"] == "admin:auditor")
    );
    assert!(
        denied
            .iter()
            .any(|d| d["reason"] == "proxy_key_on_admin_api")
    );

    // Admin principals: created and revoked by an admin, on record.
    let r = admin(
        &app,
        Method::POST,
        "/admin/v1/admins",
        &admin_token,
        json!({"name": "second", "role": "auditor"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.json();
    let second_token = second["token"].as_str().unwrap().to_owned();
    let r = admin(
        &app,
        Method::GET,
        "/admin/v1/whoami",
        &second_token,
        Value::Null,
    )
    .await;
    assert_eq!(r.json()["role"], "auditor");
    let r = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/admins/{}/revoke", second["id"].as_str().unwrap()),
        &admin_token,
        json!({"ticket": "OFFBOARD-1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &app,
        Method::GET,
        "/admin/v1/whoami",
        &second_token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 401, "a revoked token is refused at once");
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_and_recorded() {
    let app = spawn_with(MockOptions::default(), |c| {
        c.access.failed_auth_burst = 3;
        c.access.failed_auth_per_minute = 1;
    })
    .await;
    let bad = "pal_dev_000000000000_00000000000000000000000000aaaaaaaa";
    for _ in 0..3 {
        assert_eq!(chat(&app, bad, "gpt-test", &[]).await.status, 401);
    }
    let r = chat(&app, bad, "gpt-test", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "auth_throttled");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // While throttled, even a good key from that address is not looked at.
    let r = chat(&app, &app.key, "gpt-test", &[]).await;
    assert_eq!(r.status, 429);
    let entries = app.ledger_entries().await;
    let throttled: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "auth.throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "recorded once per episode");
    assert_eq!(throttled[0]["source"], "127.0.0.1");
    assert_eq!(
        denial_reasons(&entries),
        [
            "bad_checksum",
            "bad_checksum",
            "bad_checksum",
            "auth_throttled",
            "auth_throttled"
        ]
    );
}

#[tokio::test]
async fn the_access_review_flags_keys_and_no_log_holds_key_material() {
    let mut app = spawn_app().await;
    let token = app.admin_token(Role::Admin, "ops").await;
    let auditor = app.admin_token(Role::Auditor, "auditor").await;
    let (owned, owned_key) = create_key(
        &app,
        &token,
        json!({"tenant": "acme", "app": "bot", "env": "prod", "owner": "team-a",
               "models": ["gpt-test"], "ticket": "CHG-1", "labels": {"cost-center": "42"}}),
    )
    .await;
    let (wild, _) = create_key(
        &app,
        &token,
        json!({"tenant": "acme", "app": "bot", "env": "prod"}),
    )
    .await;
    assert_eq!(chat(&app, &owned_key, "gpt-test", &[]).await.status, 200);

    let r = admin(
        &app,
        Method::GET,
        "/admin/v1/keys/review",
        &auditor,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200);
    let review = r.json();
    let row = |id: &str| {
        review["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&owned)["flags"], json!([]));
    assert_eq!(row(&owned)["ticket"], "CHG-1");
    assert_eq!(
        row(&wild)["flags"],
        json!(["no_owner", "production_wildcard_models"])
    );
    let r = admin(
        &app,
        Method::GET,
        "/admin/v1/keys/review?format=csv",
        &auditor,
        Value::Null,
    )
    .await;
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(r.text().starts_with("id,tenant,app,env,status,owner"));
    assert!(
        r.text().contains(&format!("{wild},acme,bot,prod,active,,")),
        "{}",
        r.text()
    );

    // Last use reaches the store (flushed at shutdown at the latest).
    let ledger = app.ledger_entries().await;
    app.shutdown().await.unwrap();
    let stored = app
        .store
        .get_key(&palisade_store::KeyId::parse(&owned).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.last_used_at.is_some());
    assert!(stored.labels.contains_key("cost-center"));

    // Neither the access log nor the ledger ever holds a key or token.
    let lines = app.access.lines().join("\n");
    let ledger = serde_json::to_string(&ledger).unwrap();
    for secret in [&owned_key, &token, &auditor, &app.key] {
        let tail = &secret[secret.len() - 34..];
        assert!(!lines.contains(tail), "key material in the access log");
        assert!(!ledger.contains(tail), "key material in the ledger");
    }
}

#[tokio::test]
async fn expiry_and_disuse_are_recorded_by_the_gateway() {
    let day = 86_400;
    let now = palisade_store::unix_now();
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let made = Arc::clone(&ids);
    let app = spawn_prepared(
        MockOptions::default(),
        |c| c.access.disable_unused_after = Some(Duration::from_secs(30 * day as u64)),
        |store| async move {
            let new = |expires_at| NewKey {
                tenant: "acme".into(),
                app: "old".into(),
                env: "dev".into(),
                expires_at,
                ..NewKey::default()
            };
            // Made 40 days ago and never used; one that expired an hour ago.
            let (stale, _) = store.create_key(new(None), now - 40 * day).await.unwrap();
            let (expired, _) = store
                .create_key(new(Some(now - 3600)), now - day)
                .await
                .unwrap();
            made.lock().unwrap().extend([stale.id, expired.id]);
        },
    )
    .await;
    let (stale, expired) = {
        let ids = ids.lock().unwrap();
        (ids[0].clone(), ids[1].clone())
    };
    // The gateway looks at start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = app.ledger_entries().await;
        let of = |kind: &str| {
            entries
                .iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| e["target"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let (disabled, expirations) = (of("admin.key_disabled"), of("admin.key_expired"));
        if !disabled.is_empty() && !expirations.is_empty() {
            assert_eq!(disabled, [stale.to_string()]);
            assert_eq!(expirations, [expired.to_string()]);
            let d = entries
                .iter()
                .find(|e| e["kind"] == "admin.key_disabled")
                .unwrap();
            assert_eq!(d["actor"], "system");
            assert_eq!(d["unused_days"], 40);
            break;
        }
        assert!(Instant::now() < deadline, "not recorded: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = app.store.get_key(&stale).await.unwrap().unwrap();
    assert_eq!(record.status(now), "disabled");
    // The key made for the test (new) is still fine.
    assert_eq!(chat(&app, &app.key, "gpt-test", &[]).await.status, 200);
}
