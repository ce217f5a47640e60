//! Palisade's configuration.
//!
//! Loading happens in two steps, so that a user sees every problem at once:
//!
//! 1. **Raw:** the TOML file is parsed into a table, environment overrides
//!    (`PALISADE__SECTION__KEY=value`) are applied to that table, and each
//!    top-level section is deserialized on its own. Unknown keys are collected
//!    (not fatal on the first one) and a type error names its exact path.
//! 2. **Validated:** cross-field rules (unique names, models that point at
//!    declared providers, URL schemes, limits) are checked and every failure
//!    is added to the same list.
//!
//! The environment is passed in as an iterator, so tests never touch the
//! process environment.

mod duration;
mod routing;
mod secret;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use duration::{format_duration, parse_duration};
pub use routing::{
    CircuitConfig, Compliance, DEFAULT_SOC2_MAX_AGE_MONTHS, HealthCheck, Requirement,
    RoutingConfig, Strategy, TargetConfig, add_months, civil_from_days, class_requirements,
    days_from_civil, format_date, is_region, parse_date, region_within,
};
pub use secret::{Secret, SecretError, SecretRef};

/// The prefix of environment overrides: `PALISADE__SERVER__LISTEN=...`.
pub const ENV_PREFIX: &str = "PALISADE__";

/// The default config path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "palisade.toml";

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub ledger: LedgerConfig,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub routing: RoutingConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub tenants: Vec<TenantConfig>,
}

/// Where rate and concurrency limits are counted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub backend: LimitsBackend,
    /// `redis://host:port/db` (or `rediss://` for TLS), without a password.
    pub redis_url: String,
    /// The Redis password (`env:NAME` or `file:PATH`), if it needs one.
    pub redis_password: Option<SecretRef>,
    /// Every key Palisade writes in Redis starts with this and a colon, so
    /// that gateways sharing limits share it and others keep apart.
    pub redis_prefix: String,
    /// How long an admission waits for Redis before it counts as
    /// unreachable.
    #[serde(with = "duration::serde_str")]
    pub redis_timeout: Duration,
    /// What happens while Redis is unreachable: `closed` refuses requests
    /// (503), `open` counts them in this process alone.
    pub on_unavailable: OnUnavailable,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: LimitsBackend::Memory,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_password: None,
            redis_prefix: "palisade".into(),
            redis_timeout: Duration::from_millis(100),
            on_unavailable: OnUnavailable::Closed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    /// In this process: each gateway counts its own requests.
    Memory,
    /// In Redis: every gateway with the same `redis_prefix` shares them.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse requests that have limits while the backend is unreachable.
    Closed,
    /// Admit them against this process's own counts.
    Open,
}

/// A tenant's policy. Tenants without an entry get the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// `phi`, `pci`, `pii` (or custom): each implies defaults (see
    /// docs/data-protection.md) and requirements on providers (see
    /// docs/routing.md).
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// The regions this tenant's requests may be processed in (`us`
    /// also admits `us-east-1`); empty: anywhere.
    #[serde(default)]
    pub regions: Vec<String>,
    /// What every provider serving this tenant must have attested, on top
    /// of what its data classes require.
    #[serde(default)]
    pub require: Vec<Requirement>,
    /// With `soc2` required: the oldest SOC 2 Type II report accepted,
    /// counted from the end of its period (default 18).
    #[serde(default)]
    pub max_soc2_age_months: Option<u32>,
    #[serde(default)]
    pub dlp: DlpConfig,
    /// Limits for the whole tenant.
    #[serde(default)]
    pub limits: LimitConfig,
    /// Limits per application.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// Rate and concurrency limits and budgets (unset: none at this level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
    /// Tokens per minute (prompt estimate plus the completion asked for,
    /// settled against the usage reported).
    pub tpm: Option<u32>,
    /// Tokens per calendar day (UTC).
    pub daily_tokens: Option<u64>,
    /// Tokens per calendar month (UTC).
    pub monthly_tokens: Option<u64>,
    /// Cost per day, in the currency of the models' prices.
    pub daily_cost: Option<f64>,
    /// Cost per month.
    pub monthly_cost: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    #[serde(default)]
    pub limits: LimitConfig,
}

/// Data protection for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlpConfig {
    /// The action for kinds without one of their own: `redact`, `mask`,
    /// `tokenize`, `block` or `detect`. Unset: from the data classes.
    pub default_action: Option<String>,
    /// Per kind (`EMAIL`, `US_SSN`, a pattern's name) or class (`PII`,
    /// `PHI`, `SECRET`, `CUSTOM`).
    pub actions: std::collections::BTreeMap<String, String>,
    /// Minimum confidence per entity (0 to 1; default 0.5).
    pub thresholds: std::collections::BTreeMap<String, f32>,
    /// Only these entities are looked for. Unset: all of them.
    pub entities: Option<Vec<String>>,
    pub patterns: Vec<PatternConfig>,
    pub deny_lists: Vec<DenyListConfig>,
    /// The model's output: `off` (default), `detect` (counted in the
    /// `request.completed` entry) or `redact` (whole answers; streams are
    /// counted).
    pub responses: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub name: String,
    pub regex: String,
    #[serde(default = "default_pattern_score")]
    pub score: f32,
}

fn default_pattern_score() -> f32 {
    0.9
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyListConfig {
    pub name: String,
    pub terms: Vec<String>,
}

/// Who may call, from where, and how keys age.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AccessConfig {
    /// The environments a key can be bound to.
    pub environments: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed. A request from any
    /// other address is judged by the address it connected from.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Keys not rotated for this long are flagged by the access review.
    #[serde(with = "duration::serde_str")]
    pub rotation_period: Duration,
    /// How long a rotated key's old secret keeps working, unless the
    /// rotation names another grace period.
    #[serde(with = "duration::serde_str")]
    pub rotation_grace: Duration,
    /// Keys unused for this long are disabled (each one an audit entry).
    /// Unset: never.
    #[serde(with = "duration::serde_opt")]
    pub disable_unused_after: Option<Duration>,
    /// Failed authentications allowed per source address per minute,
    /// after a burst of `failed_auth_burst`; beyond that, 429 without
    /// looking at the key.
    pub failed_auth_per_minute: u32,
    pub failed_auth_burst: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            environments: ["prod", "staging", "dev"].map(str::to_owned).to_vec(),
            trusted_proxies: Vec::new(),
            rotation_period: Duration::from_secs(90 * 86_400),
            rotation_grace: Duration::from_secs(86_400),
            disable_unused_after: None,
            failed_auth_per_minute: 30,
            failed_auth_burst: 10,
        }
    }
}

/// The audit ledger.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LedgerConfig {
    /// The log's origin line and signing-key name. Empty means
    /// `<hostname>/palisade/<node-id>`, with a node id made once and kept in
    /// the data directory.
    pub origin: String,
    pub durability: LedgerDurability,
    /// How often entries go into tiles and a new signed checkpoint.
    #[serde(with = "duration::serde_str")]
    pub checkpoint_interval: Duration,
    /// What of the ledger is served without an admin or auditor token.
    pub public: LedgerPublic,
}

/// What of the ledger the admin listener serves to anyone who reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerPublic {
    /// Nothing: `/audit/...` needs an admin or auditor token.
    None,
    /// `/audit/checkpoint` only, so that anyone can watch the log grow
    /// (and witnesses can cosign); the tiles, which hold the entries, still
    /// need a token.
    Checkpoint,
    /// The checkpoint and every tile.
    All,
}

impl LedgerPublic {
    /// Whether `path` (`/audit/...`) is served without a token.
    pub fn serves(self, path: &str) -> bool {
        match self {
            Self::None => false,
            Self::Checkpoint => path == "/audit/checkpoint",
            Self::All => path.starts_with("/audit/"),
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            origin: String::new(),
            durability: LedgerDurability::Strict,
            checkpoint_interval: Duration::from_secs(1),
            public: LedgerPublic::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerDurability {
    /// A request waits until its `request.received` entry is on disk.
    Strict,
    /// Entries are synced at each checkpoint; a machine crash can lose up to
    /// one `checkpoint_interval` of them.
    Relaxed,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Proxy listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin listener (metrics, later the admin API and the ledger).
    pub admin_listen: SocketAddr,
    /// Embedded storage: the SQLite store and, later, the ledger.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests and streams.
    #[serde(with = "duration::serde_str")]
    pub shutdown_grace: Duration,
    /// TLS on the proxy listener.
    pub tls: Option<TlsConfig>,
    /// TLS on the admin listener.
    pub admin_tls: Option<TlsConfig>,
    /// Refuse to start unless the admin listener has TLS.
    pub require_admin_tls: bool,
    /// Connection threads: each connection is served start to end on one
    /// of them. Unset: one per available core.
    pub workers: Option<usize>,
}

impl ServerConfig {
    /// How many connection threads to run.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

/// Inbound TLS: PEM files, read at start-up and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by one of these
    /// CAs (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4400)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 4401)),
            data_dir: PathBuf::from("./palisade-data"),
            max_body_bytes: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            admin_tls: None,
            require_admin_tls: false,
            workers: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A `tracing` filter directive, e.g. `info` or `palisade_server=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: OpenAI, Azure OpenAI (with
    /// `api_version`), vLLM, Ollama, llama.cpp.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// The API root, e.g. `https://api.openai.com/v1`; endpoint paths such as
    /// `/chat/completions` are appended to it.
    pub base_url: String,
    /// `env:NAME` or `file:PATH`. Omitted for servers that need no key.
    #[serde(default)]
    pub api_key: Option<SecretRef>,
    /// Azure OpenAI: the `api-version` query parameter. When set, requests
    /// go to `<base_url>/deployments/<upstream_model>/<endpoint>` with an
    /// `api-key` header.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Extra PEM roots trusted for this provider, on top of the web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Where the provider processes requests (`us`, `eu`, `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// What the provider has attested.
    #[serde(default)]
    pub compliance: Compliance,
    /// Active health checks; off unless set.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// When the provider's targets stop being tried, and how they are
    /// probed again.
    #[serde(default)]
    pub circuit: CircuitConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// TCP + TLS connection establishment.
    #[serde(with = "duration::serde_str")]
    pub connect: Duration,
    /// From sending the request to the response head.
    #[serde(with = "duration::serde_str")]
    pub first_byte: Duration,
    /// Longest silence between two body chunks.
    #[serde(with = "duration::serde_str")]
    pub idle: Duration,
    /// The whole exchange, streams included.
    #[serde(with = "duration::serde_str")]
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelConfig {
    /// What clients ask for.
    pub name: String,
    /// The `[[providers]]` entry that serves it (or `targets`).
    #[serde(default)]
    pub provider: String,
    /// The providers that serve it, instead of `provider`.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// How `targets` are chosen.
    #[serde(default)]
    pub strategy: Strategy,
    /// The model name sent upstream; defaults to `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// What a million tokens cost, for usage reports and budgets.
    #[serde(default)]
    pub price: Option<Price>,
}

/// Prices per million tokens, in the operator's currency.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// The cost of a request's tokens.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input + completion_tokens as f64 * self.output) / 1e6
    }
}

impl ProviderConfig {
    /// A provider with defaults for everything but its name, kind and URL.
    pub fn new(name: &str, kind: ProviderKind, base_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            base_url: base_url.to_owned(),
            api_key: None,
            api_version: None,
            ca_file: None,
            timeouts: Timeouts::default(),
            region: None,
            compliance: Compliance::default(),
            health_check: None,
            circuit: CircuitConfig::default(),
        }
    }
}

impl ModelConfig {
    pub fn upstream_model(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }

    /// The targets, `provider` and `upstream_model` being the one-target
    /// form.
    pub fn targets(&self) -> Vec<TargetConfig> {
        if self.targets.is_empty() {
            vec![TargetConfig {
                provider: self.provider.clone(),
                upstream_model: self.upstream_model.clone(),
                weight: 1,
                timeouts: None,
            }]
        } else {
            self.targets.clone()
        }
    }

    /// A target's upstream model name.
    pub fn target_model<'a>(&'a self, t: &'a TargetConfig) -> &'a str {
        t.upstream_model.as_deref().unwrap_or(&self.name)
    }
}

/// One problem found while loading: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A dotted path such as `providers[0].base_url`, or `<file>`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration, in file order where possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads `path` and applies overrides from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                path: "<file>".into(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "not found (create one with `palisade init`)".into()
                } else {
                    format!("cannot be read: {e}")
                },
            }],
        })?;
        Self::from_toml(&name, &text, env)
    }

    /// Parses TOML text, applies overrides from `env`, validates.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                path: "<file>".into(),
                message: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let mut problems = Vec::new();
        apply_env_overrides(&mut table, env, &mut problems);
        let config = raw_from_table(table, &mut problems);
        if let Some(config) = &config {
            validate(config, &mut problems);
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(fail(problems)),
        }
    }

    /// The configuration `serve --demo` and the tests start from: loopback
    /// listeners and no providers.
    pub fn empty(data_dir: PathBuf) -> Self {
        Self {
            server: ServerConfig {
                data_dir,
                ..ServerConfig::default()
            },
            log: LogConfig::default(),
            ledger: LedgerConfig::default(),
            access: AccessConfig::default(),
            limits: LimitsConfig::default(),
            routing: RoutingConfig::default(),
            providers: Vec::new(),
            models: Vec::new(),
            tenants: Vec::new(),
        }
    }

    /// Checks cross-field rules on a configuration built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        validate(self, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                source_name: "configuration".into(),
                problems,
            })
        }
    }
}

/// Applies `PALISADE__A__B=v` as `a.b = v`. A numeric segment indexes an
/// array of tables (`PALISADE__PROVIDERS__0__BASE_URL`). The value is read as
/// a TOML value when it is one (`8`, `true`, `"x"`) and as a string otherwise.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    for (key, raw) in overrides {
        let segments: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            problems.push(Problem {
                path: key.clone(),
                message: "empty segment in environment override".into(),
            });
            continue;
        }
        let value = parse_env_value(&raw);
        if let Err(message) = set_path(table, &segments, value) {
            problems.push(Problem { path: key, message });
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    toml::from_str::<toml::Table>(&doc)
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(
    table: &mut toml::Table,
    segments: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        return Err("empty override path".into());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(entry, rest, value)
}

fn set_in_value(
    target: &mut toml::Value,
    segments: &[String],
    value: toml::Value,
) -> Result<(), String> {
    match target {
        toml::Value::Table(t) => set_path(t, segments, value),
        toml::Value::Array(items) => {
            let (index, rest) = segments
                .split_first()
                .ok_or_else(|| "override names an array, not an element".to_owned())?;
            let i: usize = index
                .parse()
                .map_err(|_| format!("`{index}` is not an array index"))?;
            let len = items.len();
            let item = items
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of the array ({len} entries)"))?;
            if rest.is_empty() {
                *item = value;
                Ok(())
            } else {
                set_in_value(item, rest, value)
            }
        }
        _ => Err("override descends into a value that is not a table".into()),
    }
}

/// The raw step: each top-level section is deserialized on its own so that a
/// type error in one does not hide problems in the others.
fn raw_from_table(mut table: toml::Table, problems: &mut Vec<Problem>) -> Option<Config> {
    let server = section::<ServerConfig>(&mut table, "server", problems);
    let log = section::<LogConfig>(&mut table, "log", problems);
    let providers = section::<Vec<ProviderConfig>>(&mut table, "providers", problems);
    let models = section::<Vec<ModelConfig>>(&mut table, "models", problems);
    let ledger = section::<LedgerConfig>(&mut table, "ledger", problems);
    let tenants = section::<Vec<TenantConfig>>(&mut table, "tenants", problems);
    let access = section::<AccessConfig>(&mut table, "access", problems);
    let limits = section::<LimitsConfig>(&mut table, "limits", problems);
    let routing = section::<RoutingConfig>(&mut table, "routing", problems);
    for key in table.keys() {
        problems.push(Problem {
            path: key.clone(),
            message: "unknown section".into(),
        });
    }
    Some(Config {
        server: server?,
        log: log?,
        ledger: ledger?,
        access: access?,
        limits: limits?,
        routing: routing?,
        providers: providers?,
        models: models?,
        tenants: tenants?,
    })
}

fn section<T>(table: &mut toml::Table, name: &str, problems: &mut Vec<Problem>) -> Option<T>
where
    T: for<'de> Deserialize<'de> + Default,
{
    let Some(value) = table.remove(name) else {
        return Some(T::default());
    };
    let mut unknown: Vec<String> = Vec::new();
    let result: Result<T, _> = {
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
        serde_path_to_error::deserialize(ignored)
    };
    for path in unknown {
        problems.push(Problem {
            path: join_path(name, &path),
            message: "unknown key".into(),
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(Problem {
                path: join_path(name, &e.path().to_string()),
                message: e.inner().message().trim().to_owned(),
            });
            None
        }
    }
}

/// Joins a section name and a serde path (`0.base_url`, `?` for the root)
/// into `providers[0].base_url`.
fn join_path(section: &str, path: &str) -> String {
    let mut out = section.to_owned();
    if path.is_empty() || path == "." || path == "?" {
        return out;
    }
    for part in path.replace('[', ".[").split('.') {
        if part.is_empty() || part == "?" {
            continue;
        }
        if part.starts_with('[') {
            out.push_str(part);
        } else if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            out.push('.');
            out.push_str(part);
        }
    }
    out
}

/// The validated step.
const REGION_RULE: &str =
    "must be a region such as us, eu or us-east-1 (lowercase letters, digits, `-`)";

fn validate(config: &Config, problems: &mut Vec<Problem>) {
    let mut push = |path: String, message: String| problems.push(Problem { path, message });
    let limits = &config.limits;
    if limits.backend == LimitsBackend::Redis {
        let scheme = limits.redis_url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss") || !limits.redis_url.contains("://") {
            push(
                "limits.redis_url".into(),
                "must be a redis:// or rediss:// URL".into(),
            );
        } else if limits.redis_url.contains('@') {
            push(
                "limits.redis_url".into(),
                "must not hold credentials; use limits.redis_password = \"env:NAME\"".into(),
            );
        }
    }
    if limits.redis_prefix.is_empty()
        || !limits
            .redis_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        push(
            "limits.redis_prefix".into(),
            "must be letters, digits, `-`, `_` or `.`".into(),
        );
    }
    if limits.redis_timeout.is_zero() {
        push(
            "limits.redis_timeout".into(),
            "must be more than zero".into(),
        );
    }
    let mut tenant_names = HashSet::new();
    for (i, t) in config.tenants.iter().enumerate() {
        let at = |field: &str| format!("tenants[{i}].{field}");
        if !is_name(&t.name) {
            push(at("name"), NAME_RULE.into());
        }
        if !tenant_names.insert(t.name.as_str()) {
            push(at("name"), format!("duplicate tenant `{}`", t.name));
        }
        for (j, class) in t.data_classes.iter().enumerate() {
            if !is_name(class) {
                push(format!("tenants[{i}].data_classes[{j}]"), NAME_RULE.into());
            }
        }
        for (j, r) in t.regions.iter().enumerate() {
            if !is_region(r) {
                push(format!("tenants[{i}].regions[{j}]"), REGION_RULE.into());
            }
        }
        if t.max_soc2_age_months == Some(0) {
            push(at("max_soc2_age_months"), "must be at least 1".into());
        }
        for message in palisade_dlp::check_policy(&policy_input(&t.dlp)) {
            push(at("dlp"), message);
        }
        let zero = |l: &LimitConfig| {
            [l.rpm, l.concurrency, l.tpm].contains(&Some(0))
                || [l.daily_tokens, l.monthly_tokens].contains(&Some(0))
                || [l.daily_cost, l.monthly_cost]
                    .iter()
                    .flatten()
                    .any(|c| !c.is_finite() || *c <= 0.0)
        };
        const LIMIT_RULE: &str =
            "rpm, tpm, concurrency and budgets must be above zero (leave them out for no limit)";
        if zero(&t.limits) {
            push(at("limits"), LIMIT_RULE.into());
        }
        let mut app_names = HashSet::new();
        for (j, app) in t.apps.iter().enumerate() {
            if zero(&app.limits) {
                push(format!("tenants[{i}].apps[{j}].limits"), LIMIT_RULE.into());
            }
            if !is_name(&app.name) || !app_names.insert(app.name.as_str()) {
                push(
                    format!("tenants[{i}].apps[{j}].name"),
                    format!("must be a unique name: {NAME_RULE}"),
                );
            }
        }
        if let Some(r) = &t.dlp.responses
            && !matches!(r.as_str(), "off" | "detect" | "redact")
        {
            push(
                at("dlp.responses"),
                format!("`{r}` is not off, detect or redact"),
            );
        }
    }
    let server = &config.server;
    if server.max_body_bytes == 0 {
        push(
            "server.max_body_bytes".into(),
            "must be greater than 0".into(),
        );
    }
    if let Some(n) = server.workers
        && !(1..=1024).contains(&n)
    {
        push(
            "server.workers".into(),
            format!("{n} is not between 1 and 1024"),
        );
    }
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        push(
            "server.admin_listen".into(),
            "must differ from server.listen".into(),
        );
    }
    if server.data_dir.as_os_str().is_empty() {
        push("server.data_dir".into(), "must not be empty".into());
    }
    if server.require_admin_tls && server.admin_tls.is_none() {
        push(
            "server.require_admin_tls".into(),
            "is true but [server.admin_tls] is not configured".into(),
        );
    }

    let ledger = &config.ledger;
    if !ledger.origin.is_empty()
        && (ledger.origin.len() > 255
            || ledger
                .origin
                .chars()
                .any(|c| c.is_whitespace() || c == '+' || c.is_control()))
    {
        push(
            "ledger.origin".into(),
            "must be a single token without spaces or '+', e.g. gw.example.com/palisade/node-1"
                .into(),
        );
    }
    if ledger.checkpoint_interval.is_zero()
        || ledger.checkpoint_interval > Duration::from_secs(3600)
    {
        push(
            "ledger.checkpoint_interval".into(),
            "must be between 1ms and 1h".into(),
        );
    }

    let access = &config.access;
    let mut envs = HashSet::new();
    if access.environments.is_empty() {
        push(
            "access.environments".into(),
            "declare at least one environment, e.g. [\"prod\", \"dev\"]".into(),
        );
    }
    for (i, e) in access.environments.iter().enumerate() {
        let ok = (1..=16).contains(&e.len())
            && e.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            push(
                format!("access.environments[{i}]"),
                "must be 1 to 16 characters of a-z and 0-9".into(),
            );
        }
        if !envs.insert(e.as_str()) {
            push(
                format!("access.environments[{i}]"),
                format!("duplicate environment `{e}`"),
            );
        }
    }
    if access.rotation_period.is_zero() {
        push(
            "access.rotation_period".into(),
            "must be greater than 0".into(),
        );
    }
    if access
        .disable_unused_after
        .is_some_and(|d| d < Duration::from_secs(86_400))
    {
        push(
            "access.disable_unused_after".into(),
            "must be at least 1d".into(),
        );
    }
    if access.failed_auth_per_minute == 0 || access.failed_auth_burst == 0 {
        push(
            "access.failed_auth_per_minute".into(),
            "failed_auth_per_minute and failed_auth_burst must be at least 1".into(),
        );
    }

    let mut provider_names = HashSet::new();
    for (i, p) in config.providers.iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        if !is_name(&p.name) {
            push(at("name"), NAME_RULE.into());
        }
        if !provider_names.insert(p.name.as_str()) {
            push(at("name"), format!("duplicate provider name `{}`", p.name));
        }
        if let Err(message) = check_base_url(&p.base_url) {
            push(at("base_url"), message);
        }
        if p.api_version.is_some() && p.kind != ProviderKind::Openai {
            push(
                at("api_version"),
                "only applies to providers of kind \"openai\" (Azure OpenAI)".into(),
            );
        }
        if let Some(v) = &p.api_version
            && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            push(at("api_version"), "must look like 2024-10-21".into());
        }
        let t = &p.timeouts;
        for (field, d) in [
            ("timeouts.connect", t.connect),
            ("timeouts.first_byte", t.first_byte),
            ("timeouts.idle", t.idle),
            ("timeouts.total", t.total),
        ] {
            if d.is_zero() {
                push(at(field), "must be greater than 0".into());
            }
        }
        if let Some(r) = &p.region
            && !is_region(r)
        {
            push(at("region"), REGION_RULE.into());
        }
        if let Some(d) = &p.compliance.soc2_type2_period_end
            && parse_date(d).is_none()
        {
            push(
                at("compliance.soc2_type2_period_end"),
                format!("`{d}` is not a date such as 2026-03-31"),
            );
        }
        if let Some(h) = &p.health_check {
            if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_control() || c == ' ') {
                push(
                    at("health_check.path"),
                    "must be a path such as /models".into(),
                );
            }
            if h.interval < Duration::from_secs(1) || h.timeout.is_zero() {
                push(
                    at("health_check"),
                    "interval must be at least 1s and timeout more than 0".into(),
                );
            }
        }
        let c = &p.circuit;
        if c.failures == 0
            || !(c.error_rate > 0.0 && c.error_rate <= 1.0)
            || c.window.is_zero()
            || c.min_requests == 0
            || c.cooldown.is_zero()
        {
            push(
                at("circuit"),
                "failures and min_requests must be at least 1, error_rate in (0, 1], window and cooldown more than 0".into(),
            );
        }
    }
    let routing = &config.routing;
    if routing.max_attempts == 0 || routing.max_attempts > 10 {
        push(
            "routing.max_attempts".into(),
            "must be between 1 and 10".into(),
        );
    }
    if routing.backoff.is_zero() || routing.backoff_max < routing.backoff {
        push(
            "routing.backoff".into(),
            "must be more than 0 and no more than routing.backoff_max".into(),
        );
    }
    for class in routing.classes.keys() {
        if !is_name(class) {
            push(format!("routing.classes.{class}"), NAME_RULE.into());
        }
    }

    let mut model_names = HashSet::new();
    for (i, m) in config.models.iter().enumerate() {
        let at = |field: &str| format!("models[{i}].{field}");
        if m.name.is_empty() || m.name.len() > 256 || m.name.chars().any(char::is_control) {
            push(at("name"), "must be 1 to 256 printable characters".into());
        }
        if !model_names.insert(m.name.as_str()) {
            push(at("name"), format!("duplicate model name `{}`", m.name));
        }
        match (m.provider.is_empty(), m.targets.is_empty()) {
            (true, true) => push(
                at("provider"),
                "name a provider, or list targets = [{ provider = \"…\" }, …]".into(),
            ),
            (false, false) => push(
                at("targets"),
                "give either provider or targets, not both".into(),
            ),
            _ => {}
        }
        let targets = m.targets();
        let mut seen = HashSet::new();
        for (j, t) in targets.iter().enumerate() {
            let path = |field: &str| {
                if m.targets.is_empty() {
                    at(field)
                } else {
                    format!("models[{i}].targets[{j}].{field}")
                }
            };
            if !t.provider.is_empty() && !provider_names.contains(t.provider.as_str()) {
                push(
                    path("provider"),
                    format!("no [[providers]] entry is named `{}`", t.provider),
                );
            }
            if t.weight == 0 {
                push(path("weight"), "must be at least 1".into());
            }
            if let Some(d) = &t.timeouts
                && [d.connect, d.first_byte, d.idle, d.total]
                    .iter()
                    .any(Duration::is_zero)
            {
                push(
                    path("timeouts"),
                    "every timeout must be greater than 0".into(),
                );
            }
            if !seen.insert((t.provider.as_str(), m.target_model(t))) {
                push(
                    path("provider"),
                    "the same provider and upstream model twice".into(),
                );
            }
            if let Some(u) = &t.upstream_model
                && !m.targets.is_empty()
                && (u.is_empty() || u.chars().any(char::is_control))
            {
                push(
                    path("upstream_model"),
                    "must be printable and not empty".into(),
                );
            }
        }
        if let Some(p) = &m.price
            && !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0)
        {
            push(
                at("price"),
                "input and output must be prices of zero or more".into(),
            );
        }
        if let Some(u) = &m.upstream_model
            && (u.is_empty() || u.chars().any(char::is_control))
        {
            push(
                at("upstream_model"),
                "must be printable and not empty".into(),
            );
        }
    }
}

/// The engine's view of a tenant's settings, for checking.
pub fn policy_input(d: &DlpConfig) -> palisade_dlp::PolicyInput {
    palisade_dlp::PolicyInput {
        default_action: d.default_action.clone(),
        actions: d.actions.clone(),
        thresholds: d.thresholds.clone(),
        entities: d.entities.clone(),
        patterns: d
            .patterns
            .iter()
            .map(|p| palisade_dlp::CustomPattern {
                name: p.name.clone(),
                regex: p.regex.clone(),
                score: p.score,
            })
            .collect(),
        deny_lists: d
            .deny_lists
            .iter()
            .map(|l| palisade_dlp::DenyList {
                name: l.name.clone(),
                terms: l.terms.clone(),
            })
            .collect(),
    }
}

const NAME_RULE: &str = "must be 1 to 64 characters of a-z, 0-9, '-' or '_'";

/// Names used in metrics labels and audit entries stay short and plain.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with https:// or http://".to_owned())?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("has no host".into());
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a plain URL without query, fragment or spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
