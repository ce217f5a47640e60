//! Command-line arguments and dispatch.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use palisade_config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "A self-hosted compliance gateway for AI inference"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Write a starter palisade.toml and create the data directory.
    Init {
        /// Where to write palisade.toml.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Load and validate the configuration, report every problem, and exit.
    CheckConfig {
        #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Manage gateway API keys: on the data directory, or with --url
    /// through a running gateway's admin API.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage admin principals (admin and auditor tokens).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The audit ledger: print its verifier key, verify it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the deterministic mock provider (for tests and benchmarks).
    Mock(MockArgs),
    /// Requests and tokens per day, tenant, application, key and model,
    /// from the ledger.
    Usage {
        /// Start, inclusive: RFC 3339 time or date.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Measure data-protection quality: precision, recall and F1 per entity
    /// on a seeded, labelled corpus.
    DlpEval(DlpEvalArgs),
    /// Providers and their compliance facts.
    #[command(subcommand)]
    Providers(ProvidersCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Every provider with its facts, the models and tenants that use it,
    /// and what needs attention: SOC 2 reports stale or going stale within
    /// 60 days, tenant policies it fails (a BAA missing for a PHI tenant, a
    /// region outside a tenant's, training use).
    Review {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Review what a running gateway has loaded (its admin API, e.g.
        /// http://127.0.0.1:4401; the token from PALISADE_ADMIN_TOKEN)
        /// instead of the config file.
        #[arg(long, env = "PALISADE_ADMIN_URL")]
        url: Option<String>,
        #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DlpEvalArgs {
    /// How many samples to generate.
    #[arg(long, default_value_t = 12_000)]
    pub samples: usize,
    /// The generator's seed (the same seed, the same corpus).
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the corpus here as JSON lines (for other tools).
    #[arg(long)]
    pub corpus_out: Option<PathBuf>,
    /// Print the mistakes for this entity (e.g. PERSON).
    #[arg(long)]
    pub show: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the ledger's verifier key (`name+keyid+base64`), for auditors.
    Key {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a C2SP tlog-proof that entry SEQ is in the ledger under the
    /// current checkpoint (self-contained: it carries the entry).
    Prove {
        seq: u64,
        #[command(flatten)]
        store: StoreArgs,
        /// Write the proof here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the last entries (`SEQ <entry>` per line); `-f` keeps
    /// printing new ones as checkpoints cover them.
    Tail {
        #[command(flatten)]
        store: StoreArgs,
        /// How many of the latest entries to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Export the entries of a time range, each with its inclusion proof,
    /// and the checkpoint they are proved against (entries.jsonl +
    /// checkpoint in OUT).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Start, inclusive: RFC 3339 time or date (`2026-11-22`).
        #[arg(long)]
        from: String,
        /// End, exclusive.
        #[arg(long)]
        to: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an export directory against a verifier key.
    CheckExport {
        dir: PathBuf,
        #[arg(long)]
        key: String,
    },
    /// Find entries by time, tenant, app, environment, key, model, status
    /// or kind (the index is brought up to date first).
    Search {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// A key id (as shown by `keys list`).
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        /// e.g. request.received, request.completed, request.denied
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON array instead of `SEQ <entry>` lines.
        #[arg(long)]
        json: bool,
    },
    /// Check a tlog-proof file against a verifier key and print the entry.
    CheckProof {
        file: PathBuf,
        #[arg(long)]
        key: String,
    },
    /// Recompute every tile and the root from the entries and check the
    /// checkpoint's signature; names the first bad entry on failure.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// A ledger directory to verify instead of the data directory's
        /// (for example a copy fetched from /audit/...).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// The verifier key to check against instead of the local one.
        #[arg(long)]
        key: Option<String>,
        /// A checkpoint saved earlier from this log: check that the current
        /// log extends it (nothing before it was rewritten).
        #[arg(long)]
        since: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// No network, no setup: embedded storage in ./palisade-demo, a built-in
    /// demo provider, and a demo key printed with a ready-to-paste command.
    #[arg(long)]
    pub demo: bool,
    /// Once both listeners accept connections, write their addresses here as
    /// JSON: {"proxy": "127.0.0.1:PORT", "admin": "127.0.0.1:PORT"}.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Use this data directory instead of the one in the config.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(self.config()?.server.data_dir)
    }

    /// The configuration in force: the file's, or defaults around
    /// `--data-dir` when there is no file.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match (&self.data_dir, self.config.exists()) {
            (Some(dir), false) => Config::empty(dir.clone()),
            _ => load_config(&self.config)?,
        };
        if let Some(dir) = &self.data_dir {
            config.server.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Where a management command acts: on the data directory (no gateway
/// running on it), or through a running gateway's admin API.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The admin API of a running gateway, e.g. http://127.0.0.1:4401; the
    /// token is read from PALISADE_ADMIN_TOKEN.
    #[arg(long, env = "PALISADE_ADMIN_URL")]
    pub url: Option<String>,
}

// Parsed once per run; the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed once and never stored.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        app: String,
        /// One of access.environments.
        #[arg(long)]
        env: String,
        /// Models the key may use: names or globs (`gpt-4o*`). Default: all.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Endpoints the key may use (chat_completions, completions,
        /// embeddings, responses, messages). Default: all.
        #[arg(long, value_delimiter = ',')]
        endpoints: Option<Vec<String>>,
        /// Source networks the key may be used from (CIDR). Default: any.
        #[arg(long, value_delimiter = ',')]
        cidr: Option<Vec<String>>,
        /// Expire after this long (e.g. 90d).
        #[arg(long)]
        expires: Option<String>,
        /// Most completion tokens one request may ask for.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Requests per minute for this key.
        #[arg(long)]
        rpm: Option<u32>,
        /// Requests in flight at once for this key.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Tokens per minute for this key.
        #[arg(long)]
        tpm: Option<u32>,
        /// Tokens per UTC day for this key.
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// Tokens per UTC month for this key.
        #[arg(long)]
        monthly_tokens: Option<u64>,
        /// Cost per UTC day for this key, at the models' prices.
        #[arg(long)]
        daily_cost: Option<f64>,
        /// Cost per UTC month for this key, at the models' prices.
        #[arg(long)]
        monthly_cost: Option<f64>,
        /// Bind the key to this client certificate (PEM): over mutual TLS,
        /// the key works only with it.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The team or person answerable for the key.
        #[arg(long)]
        owner: Option<String>,
        /// The approval ticket the key is granted under.
        #[arg(long)]
        ticket: Option<String>,
        /// A free label, NAME=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show one key: scope, owner, ticket, dates.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Give a key a new secret; the old one keeps working for the grace
    /// period (default access.rotation_grace), then stops.
    Rotate {
        id: String,
        /// How long the old secret keeps working (e.g. 24h; 0s ends it now).
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        ticket: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a key by id; in force at once through the admin API, within
    /// a second on gateways sharing the store otherwise.
    Revoke {
        id: String,
        #[arg(long)]
        ticket: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The access review: every key with its scope, owner, age, last use,
    /// rotation due date and flags.
    Review {
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin principal and print its token once. Works on the
    /// data directory (bootstrap) or, with --url, through the admin API.
    Create {
        #[arg(long, value_parser = ["admin", "auditor"])]
        role: String,
        #[arg(long)]
        name: String,
        /// A client certificate (PEM) that authenticates as this principal
        /// over mutual TLS on the admin listener, without the token.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        ticket: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List admin principals.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke an admin principal's token.
    Revoke {
        id: String,
        #[arg(long)]
        ticket: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| "a label is NAME=VALUE".to_owned())?;
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Delay before each response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Words of the reply per stream event.
    #[arg(long, default_value_t = 2)]
    pub words_per_chunk: usize,
    /// Words in each reply.
    #[arg(long, default_value_t = 12)]
    pub reply_words: usize,
    /// Write {"addr": "127.0.0.1:PORT"} here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// The process environment as key/value pairs (overrides and secrets).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, process_env())?)
}

/// Writes `contents` to `path` atomically (temp file, then rename).
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::serve(args).await,
        Command::Init { dir } => crate::init::init(&dir).await,
        Command::CheckConfig { config } => {
            let c = load_config(&config)?;
            println!(
                "{}: ok ({} provider(s), {} model(s))",
                config.display(),
                c.providers.len(),
                c.models.len()
            );
            Ok(())
        }
        Command::Keys(cmd) => crate::keys::run(cmd).await,
        Command::Admin(cmd) => crate::keys::run_admin(cmd).await,
        Command::Audit(cmd) => crate::audit::run(cmd).await,
        Command::Mock(args) => crate::serve::mock(args).await,
        Command::DlpEval(args) => dlp_eval(&args),
        Command::Usage {
            from,
            to,
            json,
            csv,
            target,
        } => crate::keys::usage(from, to, json, csv, &target).await,
        Command::Providers(ProvidersCommand::Review { json, url, config }) => {
            let review = match url {
                Some(url) => {
                    crate::remote::Remote::new(&url)?
                        .get("/providers/review")
                        .await?
                }
                None => {
                    let config = Config::load(&config, std::env::vars())?;
                    palisade_server::review::providers(&config, palisade_server::routing::today())
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&review)?);
            } else {
                print!("{}", palisade_server::review::text(&review));
            }
            Ok(())
        }
    }
}

/// `palisade dlp-eval`: the detector's quality on a generated corpus.
fn dlp_eval(args: &DlpEvalArgs) -> anyhow::Result<()> {
    use palisade_dlp::eval;
    let detector = palisade_dlp::Detector::new(&palisade_dlp::DetectorConfig::default())?;
    let samples = eval::corpus(args.seed, args.samples);
    if let Some(path) = &args.corpus_out {
        std::fs::write(path, eval::jsonl(&samples))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let started = std::time::Instant::now();
    let counts = eval::evaluate(&detector, &samples);
    let elapsed = started.elapsed();
    let bytes: usize = samples.iter().map(|s| s.text.len()).sum();
    if let Some(name) = &args.show {
        let entity = palisade_dlp::Entity::parse(name)
            .with_context(|| format!("{name} is not an entity"))?;
        for m in eval::mistakes(&detector, &samples, entity) {
            println!("{m}");
        }
        return Ok(());
    }
    if args.json {
        let per: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(e, c)| {
                (
                    e.name().to_owned(),
                    serde_json::json!({"precision": c.precision(), "recall": c.recall(), "f1": c.f1(),
                                       "tp": c.tp, "fp": c.fp, "fn": c.fn_}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"seed": args.seed, "samples": samples.len(), "bytes": bytes, "entities": per})
        );
    } else {
        println!(
            "{} samples ({} KiB), seed {}, evaluated in {} ms\n",
            samples.len(),
            bytes / 1024,
            args.seed,
            elapsed.as_millis()
        );
        print!("{}", eval::table(&counts));
    }
    Ok(())
}
