use super::*;

const SMALL: &str = r#"
[server]
listen = "127.0.0.1:4400"
admin_listen = "127.0.0.1:4401"
data_dir = "./palisade-data"

[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:8080/v1"
api_key = "env:LOCAL_LLM_KEY"

[[models]]
name = "smol"
provider = "local"
upstream_model = "smollm2-135m-instruct"
"#;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn paths(err: &ConfigError) -> Vec<&str> {
    err.problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn loads_the_smallest_useful_config() {
    let c = Config::from_toml("t", SMALL, no_env()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:4400".parse().unwrap());
    assert_eq!(c.providers[0].kind, ProviderKind::Openai);
    assert_eq!(
        c.providers[0].api_key,
        Some(SecretRef::Env("LOCAL_LLM_KEY".into()))
    );
    assert_eq!(c.models[0].upstream_model(), "smollm2-135m-instruct");
    assert_eq!(c.server.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(c.providers[0].timeouts, Timeouts::default());
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_toml("t", "", no_env()).unwrap();
    assert_eq!(c.server, ServerConfig::default());
    assert!(c.providers.is_empty());
}

#[test]
fn reports_every_unknown_key_with_its_path_at_once() {
    let text = format!("{SMALL}\n[log]\nlevell = \"debug\"\n[bogus]\nx = 1\n")
        .replace("kind = \"openai\"", "kind = \"openai\"\nbase_ulr = \"x\"");
    let err = Config::from_toml("t", &text, no_env()).unwrap_err();
    let p = paths(&err);
    assert!(p.contains(&"providers[0].base_ulr"), "{err}");
    assert!(p.contains(&"log.levell"), "{err}");
    assert!(p.contains(&"bogus"), "{err}");
}

#[test]
fn type_errors_name_the_path_and_other_sections_still_report() {
    let text = SMALL
        .replace("listen = \"127.0.0.1:4400\"", "listen = 4400")
        .replace("provider = \"local\"", "provider = \"nope\"");
    let err = Config::from_toml("t", &text, no_env()).unwrap_err();
    let p = paths(&err);
    assert!(p.contains(&"server.listen"), "{err}");
    // The models section is still checked on its own.
    assert!(err.to_string().contains("server.listen"), "{err}");
}

#[test]
fn validation_collects_every_problem() {
    let text = r#"
[[providers]]
name = "Bad Name"
kind = "anthropic"
base_url = "ftp://x"
api_version = "2024-10-21"
timeouts = { connect = "0s" }

[[providers]]
name = "ok"
kind = "openai"
base_url = "https://api.example.com/v1"

[[models]]
name = "m"
provider = "missing"

[[models]]
name = "m"
provider = "ok"
"#;
    let err = Config::from_toml("t", text, no_env()).unwrap_err();
    let p = paths(&err);
    for want in [
        "providers[0].name",
        "providers[0].base_url",
        "providers[0].api_version",
        "providers[0].timeouts.connect",
        "models[0].provider",
        "models[1].name",
    ] {
        assert!(p.contains(&want), "missing {want} in {err}");
    }
}

#[test]
fn bad_enum_and_literal_secret_are_reported() {
    let text = SMALL
        .replace("kind = \"openai\"", "kind = \"gemini\"")
        .replace("env:LOCAL_LLM_KEY", "sk-secret-value");
    let err = Config::from_toml("t", &text, no_env()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("providers[0]"), "{msg}");
    assert!(!msg.contains("sk-secret-value"), "secret echoed: {msg}");
}

#[test]
fn env_overrides_apply_by_path_and_type() {
    let env = vec![
        (
            "PALISADE__SERVER__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "PALISADE__SERVER__MAX_BODY_BYTES".to_owned(),
            "1024".to_owned(),
        ),
        (
            "PALISADE__PROVIDERS__0__BASE_URL".to_owned(),
            "http://127.0.0.1:9/v1".to_owned(),
        ),
        ("PALISADE__LOG__FORMAT".to_owned(), "text".to_owned()),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let c = Config::from_toml("t", SMALL, env).unwrap();
    assert_eq!(c.server.listen.port(), 0);
    assert_eq!(c.server.max_body_bytes, 1024);
    assert_eq!(c.providers[0].base_url, "http://127.0.0.1:9/v1");
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn bad_env_overrides_are_problems() {
    let env = vec![
        ("PALISADE__PROVIDERS__5__NAME".to_owned(), "x".to_owned()),
        ("PALISADE__SERVER__NOPE".to_owned(), "1".to_owned()),
    ];
    let err = Config::from_toml("t", SMALL, env).unwrap_err();
    let p = paths(&err);
    assert!(p.contains(&"PALISADE__PROVIDERS__5__NAME"), "{err}");
    assert!(p.contains(&"server.nope"), "{err}");
}

#[test]
fn invalid_toml_is_one_clear_problem() {
    let err = Config::from_toml("t", "[server\nlisten=", no_env()).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].message.starts_with("invalid TOML"));
}

#[test]
fn missing_file_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let err = Config::load(&dir.path().join("palisade.toml"), no_env()).unwrap_err();
    assert!(err.to_string().contains("palisade init"), "{err}");
}

#[test]
fn join_path_formats_indices() {
    assert_eq!(
        join_path("providers", "0.base_url"),
        "providers[0].base_url"
    );
    assert_eq!(join_path("server", "listen"), "server.listen");
    assert_eq!(join_path("server", "?"), "server");
    assert_eq!(
        join_path("providers", "[0].api_key"),
        "providers[0].api_key"
    );
    assert_eq!(
        join_path("providers", "[1].timeouts.idle"),
        "providers[1].timeouts.idle"
    );
}

#[test]
fn ledger_section_defaults_and_validation() {
    let c = Config::from_toml("t", "", no_env()).unwrap();
    assert_eq!(c.ledger.durability, LedgerDurability::Strict);
    assert_eq!(
        c.ledger.checkpoint_interval,
        std::time::Duration::from_secs(1)
    );
    let c = Config::from_toml(
        "t",
        "[ledger]\norigin = \"gw.example.com/palisade/n1\"\ndurability = \"relaxed\"\ncheckpoint_interval = \"250ms\"\n",
        no_env(),
    )
    .unwrap();
    assert_eq!(c.ledger.origin, "gw.example.com/palisade/n1");
    assert_eq!(c.ledger.durability, LedgerDurability::Relaxed);
    let err = Config::from_toml(
        "t",
        "[ledger]\norigin = \"has space\"\ncheckpoint_interval = \"0s\"\n",
        no_env(),
    )
    .unwrap_err();
    let p = paths(&err);
    assert!(
        p.contains(&"ledger.origin") && p.contains(&"ledger.checkpoint_interval"),
        "{err}"
    );
}

#[test]
fn access_section_defaults_and_validation() {
    let c = Config::from_toml("t", "", no_env()).unwrap();
    assert_eq!(c.access.environments, ["prod", "staging", "dev"]);
    assert_eq!(c.access.disable_unused_after, None);
    assert_eq!(c.ledger.public, LedgerPublic::None);
    let c = Config::from_toml("t", "[ledger]\npublic = \"checkpoint\"\n", no_env()).unwrap();
    assert!(c.ledger.public.serves("/audit/checkpoint"));
    assert!(!c.ledger.public.serves("/audit/tile/0/000"));
    assert!(LedgerPublic::All.serves("/audit/tile/0/000"));
    assert!(Config::from_toml("t", "[ledger]\npublic = true\n", no_env()).is_err());
    let text = r#"
[access]
environments = ["prod", "ci"]
trusted_proxies = ["10.0.0.0/8", "::1/128"]
rotation_period = "30d"
disable_unused_after = "60d"
"#;
    let c = Config::from_toml("t", text, no_env()).unwrap();
    assert_eq!(c.access.environments, ["prod", "ci"]);
    assert_eq!(c.access.trusted_proxies.len(), 2);
    assert_eq!(
        c.access.disable_unused_after,
        Some(Duration::from_secs(60 * 86_400))
    );
    let bad = r#"
[access]
environments = ["Prod", "dev", "dev"]
trusted_proxies = ["not-a-net"]
"#;
    let err = Config::from_toml("t", bad, no_env()).unwrap_err();
    assert_eq!(paths(&err), ["access.trusted_proxies[0]"], "{err}");
    let bad = r#"
[access]
environments = ["Prod", "dev", "dev"]
disable_unused_after = "1h"
failed_auth_burst = 0
"#;
    let err = Config::from_toml("t", bad, no_env()).unwrap_err();
    assert_eq!(
        paths(&err),
        [
            "access.environments[0]",
            "access.environments[2]",
            "access.disable_unused_after",
            "access.failed_auth_per_minute"
        ],
        "{err}"
    );
}

#[test]
fn tls_sections_and_the_admin_tls_requirement() {
    let text = r#"
[server]
require_admin_tls = true

[server.tls]
cert_file = "proxy.pem"
key_file = "proxy.key"

[server.admin_tls]
cert_file = "admin.pem"
key_file = "admin.key"
client_ca_file = "clients.pem"
"#;
    let c = Config::from_toml("t", text, no_env()).unwrap();
    assert_eq!(
        c.server.tls.as_ref().unwrap().cert_file,
        PathBuf::from("proxy.pem")
    );
    assert_eq!(
        c.server.admin_tls.as_ref().unwrap().client_ca_file,
        Some(PathBuf::from("clients.pem"))
    );
    let err = Config::from_toml("t", "[server]\nrequire_admin_tls = true\n", no_env()).unwrap_err();
    assert_eq!(paths(&err), ["server.require_admin_tls"], "{err}");
    let err = Config::from_toml("t", "[server.tls]\ncert_file = \"a\"\n", no_env()).unwrap_err();
    assert!(err.to_string().contains("key_file"), "{err}");
}

#[test]
fn model_prices_are_checked() {
    let ok = format!("{SMALL}price = {{ input = 2.5, output = 10 }}\n");
    let c = Config::from_toml("t", &ok, no_env()).unwrap();
    let p = c.models[0].price.unwrap();
    assert!((p.cost(1_000_000, 500_000) - 7.5).abs() < 1e-9);
    let bad = format!("{SMALL}price = {{ input = -1, output = 10 }}\n");
    let err = Config::from_toml("t", &bad, no_env()).unwrap_err();
    assert_eq!(paths(&err), ["models[0].price"], "{err}");
}

#[test]
fn limits_section_defaults_and_validation() {
    let c = Config::from_toml("t", "", no_env()).unwrap();
    assert_eq!(c.limits.backend, LimitsBackend::Memory);
    assert_eq!(c.limits.on_unavailable, OnUnavailable::Closed);
    let c = Config::from_toml(
        "t",
        "[limits]\nbackend = \"redis\"\nredis_url = \"redis://10.0.0.5:6380/2\"\nredis_password = \"env:REDIS_PASSWORD\"\non_unavailable = \"open\"\nredis_timeout = \"20ms\"\nredis_prefix = \"gw-eu\"\n",
        no_env(),
    )
    .unwrap();
    assert_eq!(c.limits.backend, LimitsBackend::Redis);
    assert_eq!(c.limits.on_unavailable, OnUnavailable::Open);
    assert_eq!(c.limits.redis_timeout, std::time::Duration::from_millis(20));
    assert_eq!(
        c.limits.redis_password,
        Some(SecretRef::Env("REDIS_PASSWORD".into()))
    );
    let err = Config::from_toml(
        "t",
        "[limits]\nbackend = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5\"\nredis_prefix = \"a b\"\nredis_timeout = \"0s\"\n",
        no_env(),
    )
    .unwrap_err();
    let p = paths(&err);
    assert!(
        p.contains(&"limits.redis_url")
            && p.contains(&"limits.redis_prefix")
            && p.contains(&"limits.redis_timeout"),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Config::from_toml("t", "[limits]\nbackend = \"etcd\"\n", no_env()).unwrap_err();
    assert_eq!(paths(&err), ["limits.backend"]);
    let err = Config::from_toml(
        "t",
        "[limits]\nredis_url = \"http://x\"\nbackend = \"redis\"\n",
        no_env(),
    )
    .unwrap_err();
    assert_eq!(paths(&err), ["limits.redis_url"]);
}

#[test]
fn routing_facts_targets_and_policies_load_and_are_checked() {
    let good = format!(
        "{SMALL}{}",
        r#"
[[providers]]
name = "openai-eu"
kind = "openai"
base_url = "https://eu.example.com/v1"
region = "eu-west-1"
compliance = { soc2_type2_period_end = "2026-03-31", iso27001 = true, baa = true, zero_retention = true, trains_on_data = false, subprocessors = ["Example Cloud"] }
health_check = { path = "/models", interval = "15s" }
circuit = { failures = 3, cooldown = "10s" }

[[models]]
name = "gpt-4o"
strategy = "weighted"
targets = [
  { provider = "local", upstream_model = "gpt-4o", weight = 3 },
  { provider = "openai-eu" },
]

[routing]
max_attempts = 2
classes = { trade-secret = ["zero_retention", "no_training"] }

[[tenants]]
name = "acme"
data_classes = ["phi", "trade-secret"]
regions = ["eu"]
require = ["iso27001"]
max_soc2_age_months = 12
"#
    );
    let c = Config::from_toml("t", &good, no_env()).unwrap();
    let eu = &c.providers[1];
    assert_eq!(eu.region.as_deref(), Some("eu-west-1"));
    assert_eq!(eu.compliance.trains_on_data, Some(false));
    assert_eq!(eu.circuit.failures, 3);
    assert_eq!(eu.circuit.min_requests, 20);
    assert_eq!(
        eu.health_check.as_ref().unwrap().timeout,
        Duration::from_secs(5)
    );
    let m = &c.models[1];
    assert_eq!(m.strategy, Strategy::Weighted);
    let targets = m.targets();
    assert_eq!((targets[0].weight, targets[1].weight), (3, 1));
    assert_eq!(m.target_model(&targets[1]), "gpt-4o");
    // The one-target form is a target too.
    assert_eq!(c.models[0].targets()[0].provider, "local");
    assert_eq!(c.routing.max_attempts, 2);
    assert_eq!(c.routing.backoff, Duration::from_millis(100));
    assert_eq!(
        c.routing.classes["trade-secret"],
        [Requirement::ZeroRetention, Requirement::NoTraining]
    );
    assert_eq!(c.tenants[0].require, [Requirement::Iso27001]);

    let bad = format!(
        "{SMALL}{}",
        r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "https://p.example.com/v1"
region = "EU West"
compliance = { soc2_type2_period_end = "2026-02-30" }
circuit = { error_rate = 1.5 }

[[models]]
name = "both"
provider = "p"
targets = [{ provider = "p" }]

[[models]]
name = "neither"

[[models]]
name = "bad-targets"
targets = [{ provider = "nowhere" }, { provider = "p", weight = 0 }, { provider = "p" }]

[routing]
max_attempts = 0

[[tenants]]
name = "acme"
regions = ["Mars!"]
max_soc2_age_months = 0
"#
    );
    let err = Config::from_toml("t", &bad, no_env()).unwrap_err();
    let p = paths(&err);
    for want in [
        "providers[1].region",
        "providers[1].compliance.soc2_type2_period_end",
        "providers[1].circuit",
        "models[1].targets",
        "models[2].provider",
        "models[3].targets[0].provider",
        "models[3].targets[1].weight",
        "models[3].targets[2].provider",
        "routing.max_attempts",
        "tenants[0].regions[0]",
        "tenants[0].max_soc2_age_months",
    ] {
        assert!(p.contains(&want), "{want} missing from {err}");
    }
    let unknown = Config::from_toml(
        "t",
        &format!("{SMALL}\n[[tenants]]\nname = \"a\"\nrequire = [\"pci-dss\"]\n"),
        no_env(),
    )
    .unwrap_err();
    assert!(
        unknown.to_string().contains("tenants[0].require"),
        "{unknown}"
    );
}

#[test]
fn connection_threads_default_to_the_cores_and_are_checked() {
    let c = Config::from_toml("t", SMALL, no_env()).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.server.workers(), cores);
    let c = Config::from_toml(
        "t",
        &SMALL.replace("[server]\n", "[server]\nworkers = 3\n"),
        no_env(),
    )
    .unwrap();
    assert_eq!(c.server.workers(), 3);
    for bad in ["0", "5000"] {
        let err = Config::from_toml(
            "t",
            &SMALL.replace("[server]\n", &format!("[server]\nworkers = {bad}\n")),
            no_env(),
        )
        .unwrap_err();
        assert_eq!(paths(&err), ["server.workers"], "{bad}");
        assert!(err.problems[0].message.contains(bad));
    }
}
