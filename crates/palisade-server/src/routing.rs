//! Which of a model's targets a request may go to, in which order, and why
//! the others may not.
//!
//! A tenant's [`Policy`] — its allowed regions and the requirements it and
//! its data classes place on providers — is compiled once at start-up. For
//! each request, [`decide`] walks the model's targets: a target is excluded
//! when its provider's attested facts do not satisfy the policy (with the
//! rule it breaks), when it does not speak the request's dialect, or when
//! its circuit is open; the rest are ordered by the model's strategy. The
//! decision, exclusions included, goes into the request's audit entry, and
//! when nothing is left the request is refused naming the rules — never
//! sent to a provider that breaks the policy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use palisade_config::{CircuitConfig, Config, Requirement, Strategy};
use palisade_dialect::Endpoint;

use crate::registry::{Model, Target};

/// Why a target was not eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The provider's region is outside the tenant's (or the request's).
    Region,
    /// The tenant limits regions and the provider states none.
    RegionUnknown,
    /// `baa` required, none signed.
    Baa,
    /// `soc2` required, no report stated.
    Soc2Missing,
    /// `soc2` required, the report is older than the tenant accepts.
    Soc2Stale,
    Iso27001,
    /// `zero_retention` required, not attested.
    Retention,
    /// `no_training` required; the provider trains on data or does not say.
    Training,
    ConfidentialComputing,
    /// The provider speaks another API dialect than the request.
    Dialect,
    /// The target failed too often lately and is not tried until probed.
    CircuitOpen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::RegionUnknown => "region_unknown",
            Self::Baa => "baa",
            Self::Soc2Missing => "soc2_missing",
            Self::Soc2Stale => "soc2_stale",
            Self::Iso27001 => "iso27001",
            Self::Retention => "zero_retention",
            Self::Training => "training",
            Self::ConfidentialComputing => "confidential_computing",
            Self::Dialect => "dialect",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// A tenant's routing policy, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Empty: any region.
    pub regions: Vec<String>,
    /// Bit `r as u8` set for each requirement.
    require: u8,
    pub max_soc2_age_months: u32,
}

fn bit(r: Requirement) -> u8 {
    1 << (r as u8)
}

impl Policy {
    /// `tenant` with its data classes' requirements (built-in, and those in
    /// `[routing.classes]`).
    pub fn new(config: &Config, tenant: &palisade_config::TenantConfig) -> Self {
        let mut require = 0;
        for r in &tenant.require {
            require |= bit(*r);
        }
        for class in &tenant.data_classes {
            for r in palisade_config::class_requirements(class) {
                require |= bit(*r);
            }
            for r in config.routing.classes.get(class).into_iter().flatten() {
                require |= bit(*r);
            }
        }
        Self {
            regions: tenant.regions.clone(),
            require,
            max_soc2_age_months: tenant
                .max_soc2_age_months
                .unwrap_or(palisade_config::DEFAULT_SOC2_MAX_AGE_MONTHS),
        }
    }

    pub fn requires(&self, r: Requirement) -> bool {
        self.require & bit(r) != 0
    }

    /// Whether a request may narrow itself to `region`: it must overlap
    /// the tenant's regions (lie within one, or contain one).
    pub fn admits_region(&self, region: &str) -> bool {
        self.regions.is_empty()
            || self.regions.iter().any(|a| {
                palisade_config::region_within(region, a)
                    || palisade_config::region_within(a, region)
            })
    }

    /// Why a provider with `facts` may not serve this tenant on day `today`
    /// (days since 1970-01-01), the request narrowed to `region`; `None`
    /// when it may.
    pub fn exclusion(&self, facts: &Facts, today: i64, region: Option<&str>) -> Option<Reason> {
        let mut first = None;
        self.check(facts, today, region, &mut |r| {
            first = Some(r);
            false
        });
        first
    }

    /// Every rule of this policy a provider with `facts` breaks, for
    /// reviews.
    pub fn exclusions(&self, facts: &Facts, today: i64) -> Vec<Reason> {
        let mut all = Vec::new();
        self.check(facts, today, None, &mut |r| {
            all.push(r);
            true
        });
        all
    }

    /// Calls `broken` with each rule broken, in order, while it says to go
    /// on.
    fn check(
        &self,
        facts: &Facts,
        today: i64,
        region: Option<&str>,
        broken: &mut dyn FnMut(Reason) -> bool,
    ) {
        if !self.regions.is_empty() || region.is_some() {
            let reason = match facts.region.as_deref() {
                None => Some(Reason::RegionUnknown),
                Some(at) => {
                    let tenant_ok = self.regions.is_empty()
                        || self
                            .regions
                            .iter()
                            .any(|a| palisade_config::region_within(at, a));
                    let request_ok = region.is_none_or(|r| palisade_config::region_within(at, r));
                    (!tenant_ok || !request_ok).then_some(Reason::Region)
                }
            };
            if let Some(r) = reason
                && !broken(r)
            {
                return;
            }
        }
        if self.require == 0 {
            return;
        }
        let c = &facts.compliance;
        let soc2 = match facts.soc2_period_end {
            None => Some(Reason::Soc2Missing),
            Some(end) => (today > palisade_config::add_months(end, self.max_soc2_age_months))
                .then_some(Reason::Soc2Stale),
        };
        let rules = [
            (Requirement::Baa, (!c.baa).then_some(Reason::Baa)),
            (Requirement::Soc2, soc2),
            (
                Requirement::Iso27001,
                (!c.iso27001).then_some(Reason::Iso27001),
            ),
            (
                Requirement::ZeroRetention,
                (!c.zero_retention).then_some(Reason::Retention),
            ),
            (
                Requirement::NoTraining,
                (c.trains_on_data != Some(false)).then_some(Reason::Training),
            ),
            (
                Requirement::ConfidentialComputing,
                (!c.confidential_computing).then_some(Reason::ConfidentialComputing),
            ),
        ];
        for (requirement, reason) in rules {
            if let Some(r) = reason
                && self.requires(requirement)
                && !broken(r)
            {
                return;
            }
        }
    }
}

/// A provider's attested facts, as routing reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub region: Option<String>,
    pub compliance: palisade_config::Compliance,
    /// The SOC 2 Type II period end, in days since 1970-01-01.
    pub soc2_period_end: Option<i64>,
}

impl Facts {
    pub fn of(p: &palisade_config::ProviderConfig) -> Self {
        Self {
            region: p.region.clone(),
            soc2_period_end: p
                .compliance
                .soc2_type2_period_end
                .as_deref()
                .and_then(palisade_config::parse_date),
            compliance: p.compliance.clone(),
        }
    }
}

/// Every tenant's policy; tenants without an entry have none.
#[derive(Debug, Default)]
pub struct Policies {
    tenants: HashMap<String, Policy>,
    default: Policy,
}

impl Policies {
    pub fn new(config: &Config) -> Self {
        Self {
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.name.clone(), Policy::new(config, t)))
                .collect(),
            default: Policy::default(),
        }
    }

    pub fn for_tenant(&self, tenant: &str) -> &Policy {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

/// Where a request may go: the eligible targets in the order to try them,
/// and every other target with the reason it was left out.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub order: Vec<usize>,
    pub excluded: Vec<(usize, Reason)>,
}

/// Today, in days since 1970-01-01 (UTC).
pub fn today() -> i64 {
    palisade_store::unix_now().div_euclid(86_400)
}

/// Decides where a request for `model` at `endpoint` may go under
/// `policy`, narrowed to `region` if the request asks; `pick` (0..1)
/// chooses among weighted targets.
pub fn decide(
    model: &Model,
    endpoint: Endpoint,
    policy: &Policy,
    region: Option<&str>,
    today: i64,
    pick: f64,
    now: Instant,
) -> Decision {
    let mut d = Decision {
        order: Vec::with_capacity(model.targets().len()),
        excluded: Vec::new(),
    };
    for (i, t) in model.targets().iter().enumerate() {
        let reason = if !t.provider().serves(endpoint) {
            Some(Reason::Dialect)
        } else if let Some(r) = policy.exclusion(t.provider().facts(), today, region) {
            Some(r)
        } else if !t.circuit().would_admit(now) {
            Some(Reason::CircuitOpen)
        } else {
            None
        };
        match reason {
            Some(r) => d.excluded.push((i, r)),
            None => d.order.push(i),
        }
    }
    if model.strategy() == Strategy::Weighted && d.order.len() > 1 {
        let targets = model.targets();
        let weight = |i: &usize| u64::from(targets[*i].weight());
        // Heaviest first for the fallbacks; the first by weighted chance.
        d.order.sort_by_key(|i| std::cmp::Reverse(weight(i)));
        let total: u64 = d.order.iter().map(weight).sum();
        let mut point = (pick.clamp(0.0, 1.0) * total as f64) as u64;
        let mut first = 0;
        for (k, i) in d.order.iter().enumerate() {
            if point < weight(i) {
                first = k;
                break;
            }
            point -= weight(i);
            first = k;
        }
        let chosen = d.order.remove(first);
        d.order.insert(0, chosen);
    }
    d
}

/// A number in 0..1 for weighted choices, different on every call.
pub fn pick() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a target's circuit says about one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The cooldown is over: this request probes the target.
    Probe,
    No,
}

#[derive(Debug)]
struct CircuitState {
    window_start: Instant,
    window_failed: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// A target's circuit breaker: opens after `failures` failures in a row, or
/// when `error_rate` of at least `min_requests` in a window failed; after
/// `cooldown`, one request probes it — success closes it, failure opens it
/// again.
///
/// Every request reads it and most succeed, so the closed circuit's
/// success is lock-free (an atomic flag read, a counter added to); the
/// lock is taken for failures and while the circuit is open. A window
/// begins at the first failure after the previous one ended.
#[derive(Debug)]
pub struct Circuit {
    config: CircuitConfig,
    /// Whether `state.open_until` is set.
    open: AtomicBool,
    /// Successes in the current window.
    successes: AtomicU32,
    /// Failures in a row.
    consecutive: AtomicU32,
    state: Mutex<CircuitState>,
}

/// A change of a circuit's state, for the ledger and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

impl Circuit {
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            open: AtomicBool::new(false),
            successes: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            state: Mutex::new(CircuitState {
                window_start: Instant::now(),
                window_failed: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_open(&self, s: &mut CircuitState, until: Option<Instant>) {
        s.open_until = until;
        s.probing = false;
        self.open.store(until.is_some(), Ordering::Release);
    }

    /// Whether a request could be sent now, without taking the probe.
    pub fn would_admit(&self, now: Instant) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return true;
        }
        let s = self.lock();
        match s.open_until {
            None => true,
            Some(until) => now >= until && !s.probing,
        }
    }

    /// Takes the right to send one request now.
    pub fn admit(&self, now: Instant) -> Admit {
        if !self.open.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let mut s = self.lock();
        match s.open_until {
            None => Admit::Yes,
            Some(until) if now >= until && !s.probing => {
                s.probing = true;
                Admit::Probe
            }
            Some(_) => Admit::No,
        }
    }

    /// Records how a request sent to the target ended.
    pub fn record(&self, ok: bool, now: Instant) -> Option<Change> {
        if ok && !self.open.load(Ordering::Acquire) {
            self.successes.fetch_add(1, Ordering::Relaxed);
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let c = &self.config;
        let mut s = self.lock();
        if ok {
            // A probe (or a request let through before the circuit
            // opened) came back well.
            self.consecutive.store(0, Ordering::Relaxed);
            if s.open_until.is_some() {
                self.set_open(&mut s, None);
                s.window_failed = 0;
                self.successes.store(0, Ordering::Relaxed);
                return Some(Change::Closed);
            }
            self.successes.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if now.duration_since(s.window_start) > c.window {
            s.window_start = now;
            s.window_failed = 0;
            self.successes.store(0, Ordering::Relaxed);
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        s.window_failed += 1;
        if s.open_until.is_some() {
            // A failed probe: closed to requests for another cooldown.
            self.set_open(&mut s, Some(now + c.cooldown));
            return None;
        }
        let total = s.window_failed + self.successes.load(Ordering::Relaxed);
        let rate_tripped = total >= c.min_requests
            && f64::from(s.window_failed) >= c.error_rate * f64::from(total);
        if consecutive >= c.failures || rate_tripped {
            self.set_open(&mut s, Some(now + c.cooldown));
            return Some(Change::Opened);
        }
        None
    }

    /// What an active health check found: a failure opens the circuit at
    /// once (for a cooldown), a success closes an open one.
    pub fn checked(&self, ok: bool, now: Instant) -> Option<Change> {
        let mut s = self.lock();
        let was_open = s.open_until.is_some();
        if ok {
            self.consecutive.store(0, Ordering::Relaxed);
            self.set_open(&mut s, None);
            return was_open.then_some(Change::Closed);
        }
        self.set_open(&mut s, Some(now + self.config.cooldown));
        (!was_open).then_some(Change::Opened)
    }

    /// The cooldown, for messages.
    pub fn cooldown(&self) -> Duration {
        self.config.cooldown
    }
}

/// Puts a circuit's change on record: the ledger, the log, the metrics.
pub fn report(
    state: &crate::state::AppState,
    provider: &str,
    upstream_model: &str,
    circuit: &Circuit,
    change: Change,
    cause: &str,
) {
    let opened = change == Change::Opened;
    state
        .metrics()
        .circuit_changed(provider, upstream_model, opened);
    if opened {
        tracing::warn!(target: "palisade::routing", provider, upstream_model, cause, "circuit opened: the target is not tried until its cooldown ends");
    } else {
        tracing::info!(target: "palisade::routing", provider, upstream_model, cause, "circuit closed: the target answers again");
    }
    state.audit().submit(
        if opened {
            "routing.circuit_opened"
        } else {
            "routing.circuit_closed"
        },
        serde_json::json!({"provider": provider, "upstream_model": upstream_model, "cause": cause,
               "cooldown_ms": circuit.cooldown().as_millis() as u64}),
    );
}

/// Active health checks: for each provider with a `health_check`, a `GET`
/// of its path every interval; a failure opens the circuits of all its
/// targets, a success closes them. Runs until `stop`.
pub async fn health_checks(
    state: crate::state::AppState,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tasks = Vec::new();
    for p in &state.config().providers {
        let Some(check) = p.health_check.clone() else {
            continue;
        };
        let Some(provider) = state.registry().provider(&p.name).cloned() else {
            continue;
        };
        let (state, stop) = (state.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(check.interval) => {}
                }
                let ok = provider.check_health(&check.path, check.timeout).await;
                state.metrics().health_checked(provider.name(), ok);
                let now = Instant::now();
                for (upstream_model, circuit) in state.registry().circuits_of(provider.name()) {
                    if let Some(change) = circuit.checked(ok, now) {
                        report(
                            &state,
                            provider.name(),
                            upstream_model,
                            circuit,
                            change,
                            "health_check",
                        );
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// What `target` is, for the audit entry.
pub fn describe(t: &Target) -> serde_json::Value {
    serde_json::json!({"provider": t.provider().name().as_ref(), "upstream_model": t.upstream_model()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::{Compliance, ModelConfig, ProviderConfig, ProviderKind, TargetConfig};

    const TODAY: i64 = 20_415; // 2025-11-23

    fn date(days: i64) -> String {
        palisade_config::format_date(days)
    }

    fn provider(name: &str, region: Option<&str>, compliance: Compliance) -> ProviderConfig {
        ProviderConfig {
            region: region.map(str::to_owned),
            compliance,
            ..ProviderConfig::new(name, ProviderKind::Openai, "http://127.0.0.1:9/v1")
        }
    }

    fn registry(
        providers: Vec<ProviderConfig>,
        strategy: Strategy,
    ) -> (Config, crate::registry::Registry) {
        let mut config = Config::empty("/tmp/unused".into());
        config.models = vec![ModelConfig {
            name: "m".into(),
            provider: String::new(),
            targets: providers
                .iter()
                .enumerate()
                .map(|(i, p)| TargetConfig {
                    provider: p.name.clone(),
                    upstream_model: None,
                    weight: i as u32 + 1,
                    timeouts: None,
                })
                .collect(),
            strategy,
            upstream_model: None,
            price: None,
        }];
        config.providers = providers;
        let registry =
            crate::registry::Registry::build(&config, &|_| None, &crate::metrics::Metrics::new())
                .unwrap();
        (config, registry)
    }

    fn tenant(
        classes: &[&str],
        regions: &[&str],
        require: &[Requirement],
    ) -> palisade_config::TenantConfig {
        palisade_config::TenantConfig {
            name: "t".into(),
            data_classes: classes.iter().map(|c| c.to_string()).collect(),
            regions: regions.iter().map(|c| c.to_string()).collect(),
            require: require.to_vec(),
            ..Default::default()
        }
    }

    fn full() -> Compliance {
        Compliance {
            soc2_type2_period_end: Some(date(TODAY - 100)),
            iso27001: true,
            baa: true,
            zero_retention: true,
            trains_on_data: Some(false),
            confidential_computing: true,
            subprocessors: vec![],
        }
    }

    #[test]
    fn the_policy_matrix() {
        let config = Config::empty("/tmp/unused".into());
        let no_baa = Compliance {
            baa: false,
            ..full()
        };
        let stale = Compliance {
            soc2_type2_period_end: Some(date(TODAY - 600)),
            ..full()
        };
        let no_report = Compliance {
            soc2_type2_period_end: None,
            ..full()
        };
        let trains = Compliance {
            trains_on_data: Some(true),
            ..full()
        };
        let unknown_training = Compliance {
            trains_on_data: None,
            ..full()
        };
        let retains = Compliance {
            zero_retention: false,
            ..full()
        };
        /// (tenant classes, tenant regions, provider region, facts, expected)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a str>,
            Compliance,
            Option<Reason>,
        );
        let cases: Vec<Case> = vec![
            (&[], &[], None, Compliance::default(), None),
            (&[], &["us"], Some("us-east-1"), full(), None),
            (
                &[],
                &["us"],
                Some("eu-west-1"),
                full(),
                Some(Reason::Region),
            ),
            (&[], &["us"], None, full(), Some(Reason::RegionUnknown)),
            (&[], &["eu", "us"], Some("eu"), full(), None),
            (&["phi"], &[], None, full(), None),
            (&["phi"], &[], None, no_baa.clone(), Some(Reason::Baa)),
            (&["phi"], &[], None, stale.clone(), Some(Reason::Soc2Stale)),
            (
                &["phi"],
                &[],
                None,
                no_report.clone(),
                Some(Reason::Soc2Missing),
            ),
            (
                &["phi"],
                &["us"],
                Some("eu"),
                no_baa.clone(),
                Some(Reason::Region),
            ),
            (
                &["pci"],
                &[],
                None,
                retains.clone(),
                Some(Reason::Retention),
            ),
            (&["pci"], &[], None, no_baa.clone(), None),
            (&["pii"], &[], None, trains, Some(Reason::Training)),
            (
                &["pii"],
                &[],
                None,
                unknown_training,
                Some(Reason::Training),
            ),
            (&["pii"], &[], None, stale, None),
            (&["custom"], &[], None, Compliance::default(), None),
        ];
        for (classes, regions, at, facts, want) in cases {
            let policy = Policy::new(&config, &tenant(classes, regions, &[]));
            let facts = Facts::of(&provider("p", at, facts.clone()));
            assert_eq!(
                policy.exclusion(&facts, TODAY, None),
                want,
                "classes {classes:?}, regions {regions:?}, provider in {at:?}"
            );
        }
        // Requirements named by the tenant and by `[routing.classes]`.
        let mut config = Config::empty("/tmp/unused".into());
        config.routing.classes.insert(
            "trade-secret".into(),
            vec![Requirement::ConfidentialComputing],
        );
        let no_tee = Facts::of(&provider(
            "p",
            None,
            Compliance {
                confidential_computing: false,
                ..full()
            },
        ));
        let p = Policy::new(&config, &tenant(&["trade-secret"], &[], &[]));
        assert_eq!(
            p.exclusion(&no_tee, TODAY, None),
            Some(Reason::ConfidentialComputing)
        );
        let p = Policy::new(&config, &tenant(&[], &[], &[Requirement::Iso27001]));
        let no_iso = Facts::of(&provider(
            "p",
            None,
            Compliance {
                iso27001: false,
                ..full()
            },
        ));
        assert_eq!(p.exclusion(&no_iso, TODAY, None), Some(Reason::Iso27001));
        // The report's age limit is the tenant's: 18 months by default.
        let aged = Facts::of(&provider(
            "p",
            None,
            Compliance {
                soc2_type2_period_end: Some(date(TODAY - 400)),
                ..full()
            },
        ));
        let mut t = tenant(&[], &[], &[Requirement::Soc2]);
        assert_eq!(Policy::new(&config, &t).exclusion(&aged, TODAY, None), None);
        t.max_soc2_age_months = Some(12);
        assert_eq!(
            Policy::new(&config, &t).exclusion(&aged, TODAY, None),
            Some(Reason::Soc2Stale)
        );
        // A request narrows its region within the tenant's.
        let p = Policy::new(&config, &tenant(&[], &["us", "eu"], &[]));
        let us = Facts::of(&provider("p", Some("us-east-1"), full()));
        assert_eq!(p.exclusion(&us, TODAY, Some("eu")), Some(Reason::Region));
        assert_eq!(p.exclusion(&us, TODAY, Some("us")), None);
        assert!(p.admits_region("eu-west-1") && !p.admits_region("ap"));
        let anywhere = Policy::new(&config, &tenant(&[], &[], &[]));
        assert_eq!(
            anywhere.exclusion(&us, TODAY, Some("eu")),
            Some(Reason::Region)
        );
    }

    #[test]
    fn order_and_exclusions_follow_the_strategy() {
        let providers = vec![
            provider("us", Some("us"), full()),
            provider("eu", Some("eu"), full()),
            provider("eu2", Some("eu-west-1"), full()),
        ];
        let (config, reg) = registry(providers.clone(), Strategy::Priority);
        let m = reg.model("m").unwrap();
        let policy = Policy::new(&config, &tenant(&[], &["eu"], &[]));
        let d = decide(
            m,
            Endpoint::ChatCompletions,
            &policy,
            None,
            TODAY,
            0.0,
            Instant::now(),
        );
        assert_eq!(d.order, [1, 2]);
        assert_eq!(d.excluded, [(0, Reason::Region)]);
        // Messages: no target speaks Anthropic's dialect.
        let d = decide(
            m,
            Endpoint::Messages,
            &policy,
            None,
            TODAY,
            0.0,
            Instant::now(),
        );
        assert!(d.order.is_empty());
        assert!(d.excluded.iter().all(|(_, r)| *r == Reason::Dialect));
        // Weighted (weights 1, 2, 3): the first by chance, the rest
        // heaviest first.
        let (_, reg) = registry(providers, Strategy::Weighted);
        let m = reg.model("m").unwrap();
        let open = Policy::default();
        let first = |pick| {
            decide(
                m,
                Endpoint::ChatCompletions,
                &open,
                None,
                TODAY,
                pick,
                Instant::now(),
            )
            .order
        };
        assert_eq!(first(0.0), [2, 1, 0]);
        assert_eq!(first(0.4), [2, 1, 0]);
        assert_eq!(first(0.55), [1, 2, 0]);
        assert_eq!(first(0.9), [0, 2, 1]);
        assert_eq!(first(1.0), [0, 2, 1]);
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            counts[first(pick())[0]] += 1;
        }
        for (i, n) in counts.iter().enumerate() {
            let want = 1000 * (i + 1);
            assert!(
                n.abs_diff(want) < 300,
                "target {i}: {n} of 6000, want ~{want}"
            );
        }
    }

    /// Over random registries and policies, no target that breaks the
    /// policy is ever a candidate, every exclusion names a rule the
    /// target really breaks, and every compliant target is a candidate.
    #[test]
    fn no_request_is_ever_routed_to_an_excluded_provider() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let regions = ["us", "us-east-1", "eu", "eu-west-1", "ap"];
        let classes = ["phi", "pci", "pii", "x"];
        for _ in 0..400 {
            let providers: Vec<ProviderConfig> = (0..1 + next(6))
                .map(|i| {
                    let facts = Compliance {
                        soc2_type2_period_end: (next(4) > 0)
                            .then(|| date(TODAY - next(900) as i64)),
                        iso27001: next(2) == 0,
                        baa: next(2) == 0,
                        zero_retention: next(2) == 0,
                        trains_on_data: [None, Some(true), Some(false)][next(3) as usize],
                        confidential_computing: next(2) == 0,
                        subprocessors: vec![],
                    };
                    let region = (next(5) > 0).then(|| regions[next(5) as usize]);
                    provider(&format!("p{i}"), region, facts)
                })
                .collect();
            let (config, reg) = registry(providers.clone(), Strategy::Priority);
            let m = reg.model("m").unwrap();
            let t = palisade_config::TenantConfig {
                max_soc2_age_months: Some(1 + next(24) as u32),
                ..tenant(
                    &classes[..next(5) as usize],
                    &regions[..next(3) as usize],
                    &Requirement::ALL[..next(7) as usize],
                )
            };
            let policy = Policy::new(&config, &t);
            let narrowed = (next(3) == 0).then(|| regions[next(5) as usize]);
            let d = decide(
                m,
                Endpoint::ChatCompletions,
                &policy,
                narrowed,
                TODAY,
                0.5,
                Instant::now(),
            );
            assert_eq!(d.order.len() + d.excluded.len(), providers.len());
            // An independent statement of the rules.
            let compliant = |p: &ProviderConfig| {
                let c = &p.compliance;
                let region_ok = |allowed: &str| {
                    p.region
                        .as_deref()
                        .is_some_and(|r| palisade_config::region_within(r, allowed))
                };
                let mut needs: Vec<Requirement> = t.require.clone();
                for class in &t.data_classes {
                    needs.extend_from_slice(palisade_config::class_requirements(class));
                }
                (t.regions.is_empty() || t.regions.iter().any(|a| region_ok(a)))
                    && narrowed.is_none_or(region_ok)
                    && needs.iter().all(|r| match r {
                        Requirement::Baa => c.baa,
                        Requirement::Soc2 => c
                            .soc2_type2_period_end
                            .as_deref()
                            .and_then(palisade_config::parse_date)
                            .is_some_and(|end| {
                                TODAY
                                    <= palisade_config::add_months(
                                        end,
                                        t.max_soc2_age_months.unwrap_or(18),
                                    )
                            }),
                        Requirement::Iso27001 => c.iso27001,
                        Requirement::ZeroRetention => c.zero_retention,
                        Requirement::NoTraining => c.trains_on_data == Some(false),
                        Requirement::ConfidentialComputing => c.confidential_computing,
                    })
            };
            for i in &d.order {
                assert!(
                    compliant(&providers[*i]),
                    "{:?} routed under {t:?}",
                    providers[*i]
                );
            }
            for (i, reason) in &d.excluded {
                assert!(
                    !compliant(&providers[*i]),
                    "{:?} excluded ({reason:?}) though compliant",
                    providers[*i]
                );
            }
        }
    }

    #[test]
    fn circuits_open_probe_and_close() {
        let config = CircuitConfig {
            failures: 3,
            error_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 10,
            cooldown: Duration::from_millis(100),
        };
        let c = Circuit::new(config);
        let t0 = Instant::now();
        assert_eq!(c.record(false, t0), None);
        assert_eq!(c.record(false, t0), None);
        assert_eq!(c.record(true, t0), None, "a success resets the run");
        assert_eq!(c.record(false, t0), None);
        assert_eq!(c.record(false, t0), None);
        assert_eq!(c.record(false, t0), Some(Change::Opened));
        assert_eq!(c.admit(t0), Admit::No);
        assert!(!c.would_admit(t0 + Duration::from_millis(50)));
        // After the cooldown, one probe; a failed probe shuts it again.
        let t1 = t0 + Duration::from_millis(100);
        assert!(c.would_admit(t1));
        assert_eq!(c.admit(t1), Admit::Probe);
        assert_eq!(c.admit(t1), Admit::No, "one probe at a time");
        assert_eq!(c.record(false, t1), None);
        assert_eq!(c.admit(t1 + Duration::from_millis(50)), Admit::No);
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(c.admit(t2), Admit::Probe);
        assert_eq!(c.record(true, t2), Some(Change::Closed));
        assert_eq!(c.admit(t2), Admit::Yes);
        // The error rate: half of at least ten in the window, with no run
        // of three.
        let c = Circuit::new(config);
        let mut opened = None;
        for i in 0..10 {
            let change = c.record(i % 2 == 0, t0);
            if change.is_some() {
                opened = Some(i);
            }
        }
        assert_eq!(opened, Some(9));
        // Health checks open at the first failure and close at a success.
        let c = Circuit::new(config);
        assert_eq!(c.checked(true, t0), None);
        assert_eq!(c.checked(false, t0), Some(Change::Opened));
        assert_eq!(c.checked(false, t0), None);
        assert_eq!(c.admit(t0), Admit::No);
        assert_eq!(c.checked(true, t0), Some(Change::Closed));
        assert_eq!(c.admit(t0), Admit::Yes);
    }
}
