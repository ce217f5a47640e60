//! Request rates and concurrency per key, application and tenant (the
//! tightest level wins), counted in this process or, with
//! `limits.backend = "redis"`, in Redis shared by every gateway
//! ([`crate::redis_limits`]).
//!
//! Rates use GCRA (the generic cell rate algorithm): one "theoretical
//! arrival time" per limited thing, so a limit of N per minute lets N
//! requests through at once and then one every 60/N seconds, with no
//! window edges to game. Every level is checked before any is charged, so a
//! request refused by its tenant's limit does not use up its key's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_config::OnUnavailable;

use crate::budgets::{Budget, BudgetCharge, Budgets, Exceeded, Mirror, Spent};
use crate::redis_limits::{RedisLimits, SharedError};

/// What a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Key,
    App,
    Tenant,
}

impl Level {
    /// Its place in a [`PerLevel`] table.
    fn index(self) -> usize {
        match self {
            Self::Key => 0,
            Self::App => 1,
            Self::Tenant => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::App => "app",
            Self::Tenant => "tenant",
        }
    }
}

/// Whom a limit counts: a key's id, `tenant/app`, or a tenant. Shared, so
/// that naming the same one again on every request costs no allocation.
pub type Name = Arc<str>;

/// A map per level keyed by name, so that a lookup borrows the name.
type PerLevel<V> = [HashMap<Name, V, foldhash::fast::RandomState>; 3];

/// The limits that apply to one request, by level.
#[derive(Debug, Clone, Default)]
pub struct Applicable {
    /// (level, who, requests per minute)
    pub rates: Vec<(Level, Name, u32)>,
    /// (level, who, concurrent requests)
    pub concurrency: Vec<(Level, Name, u32)>,
    /// (level, who, tokens per minute)
    pub tokens: Vec<(Level, Name, u32)>,
    /// Budgets per day and month.
    pub budgets: Vec<Budget>,
}

impl Applicable {
    /// Whether no limit and no budget applies.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
            && self.tokens.is_empty()
            && self.concurrency.is_empty()
            && !self.budgets.iter().any(Budget::any)
    }

    /// Whether a request must be counted in tokens: a token rate or a
    /// budget applies.
    pub fn counts_tokens(&self) -> bool {
        !self.tokens.is_empty() || self.budgets.iter().any(Budget::any)
    }
}

/// What a request reserves at admission: its prompt plus the completion
/// it may ask for, and their price.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reservation {
    pub tokens: u64,
    pub cost: f64,
}

/// What a request asks of token rates and budgets: its prompt, the
/// completion it may ask for, and the model's price.
///
/// Counting a new prompt is most of what limits cost a request (about
/// 3–7 µs per KiB), so it is counted only where the count can change an
/// answer: a request first reserves [`Ask::bound`], which no count can
/// exceed and which costs nothing to work out, and only if that would fill
/// a token rate or budget past half ([`Fill::Half`]) is the prompt counted
/// and the request admitted, or refused, on the count. Every refusal is
/// decided on a count, and a limit past half holds only counted
/// reservations from then on. An exchange that ends without a usage report
/// is settled to the count, so it is charged what it would have been had
/// it been counted at admission.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The request's body as received: the prompt is its strings.
    pub body: bytes::Bytes,
    /// Counted with `o200k_base` (OpenAI-kind providers), else estimated
    /// as one token per four bytes.
    pub openai: bool,
    /// The completion's tokens: `max_tokens`, or
    /// [`DEFAULT_COMPLETION_RESERVE`].
    pub completion: u64,
    pub price: Option<palisade_config::Price>,
}

impl Ask {
    /// At least [`Ask::count`]: a string is no longer decoded than written
    /// in the body, and counts no more tokens than it has bytes.
    pub fn bound(&self) -> Reservation {
        self.with_prompt(self.body.len() as u64)
    }

    /// The prompt counted, plus the completion.
    pub fn count(&self) -> Reservation {
        self.with_prompt(crate::tokens::estimate_prompt(&self.body, self.openai))
    }

    fn with_prompt(&self, prompt: u64) -> Reservation {
        Reservation {
            tokens: prompt.saturating_add(self.completion),
            cost: self.price.map_or(0.0, |p| p.cost(prompt, self.completion)),
        }
    }
}

/// How much of a token rate or budget an admission may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// All of it: what is reserved was counted.
    Whole,
    /// Half of it: what is reserved is an upper bound ([`Ask::bound`]).
    Half,
}

impl Fill {
    pub fn of_tokens(self, limit: u64) -> u64 {
        match self {
            Self::Whole => limit,
            Self::Half => limit / 2,
        }
    }

    pub fn of_cost(self, limit: f64) -> f64 {
        match self {
            Self::Whole => limit,
            Self::Half => limit / 2.0,
        }
    }

    fn of_time(self, burst: Duration) -> Duration {
        match self {
            Self::Whole => burst,
            Self::Half => burst / 2,
        }
    }
}

/// The state of the tightest rate after an admission, for the
/// `x-ratelimit-*-requests` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u32,
    pub remaining: u32,
    /// Until the limit is whole again.
    pub reset: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over a rate; try again after `retry_after`.
    Rate {
        level: Level,
        retry_after: Duration,
        status: RateStatus,
    },
    /// Over a token rate; try again after `retry_after` (`None`: the
    /// request alone asks for more than the whole limit).
    Tokens {
        level: Level,
        retry_after: Option<Duration>,
        status: RateStatus,
    },
    /// Over a concurrency limit.
    Concurrency { level: Level, limit: u32 },
    /// A day's or month's budget would be passed.
    Budget(Exceeded),
    /// The shared backend is unreachable and `limits.on_unavailable` is
    /// `closed`.
    Unavailable,
}

impl Refusal {
    /// The audit record's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rate { level, .. } => match level {
                Level::Key => "rate_limited_key",
                Level::App => "rate_limited_app",
                Level::Tenant => "rate_limited_tenant",
            },
            Self::Tokens { level, .. } => match level {
                Level::Key => "token_limited_key",
                Level::App => "token_limited_app",
                Level::Tenant => "token_limited_tenant",
            },
            Self::Concurrency { level, .. } => match level {
                Level::Key => "concurrency_limited_key",
                Level::App => "concurrency_limited_app",
                Level::Tenant => "concurrency_limited_tenant",
            },
            Self::Budget(e) => e.reason(),
            Self::Unavailable => "limits_unavailable",
        }
    }
}

/// Which limits apply to whom, from configuration and keys.
#[derive(Debug, Default)]
pub struct Plan {
    tenants: HashMap<String, TenantPlan, foldhash::fast::RandomState>,
}

/// A tenant's limits and its applications', with the names they are
/// counted under.
#[derive(Debug)]
struct TenantPlan {
    name: Name,
    limits: palisade_config::LimitConfig,
    /// app → (`tenant/app`, its limits)
    apps: HashMap<String, (Name, palisade_config::LimitConfig), foldhash::fast::RandomState>,
}

impl Plan {
    pub fn new(config: &palisade_config::Config) -> Self {
        Self {
            tenants: config
                .tenants
                .iter()
                .map(|t| {
                    let apps = t
                        .apps
                        .iter()
                        .map(|a| {
                            let name = Name::from(format!("{}/{}", t.name, a.name));
                            (a.name.clone(), (name, a.limits))
                        })
                        .collect();
                    let plan = TenantPlan {
                        name: Name::from(t.name.as_str()),
                        limits: t.limits,
                        apps,
                    };
                    (t.name.clone(), plan)
                })
                .collect(),
        }
    }

    /// The budgets on a key's requests: its own (tokens), its
    /// application's and its tenant's.
    fn budgets(
        &self,
        key: &mut KeyName<'_>,
        scope: &palisade_store::Scope,
        tenant: &str,
        app: &str,
    ) -> Vec<Budget> {
        let mut out = Vec::new();
        let own = palisade_config::LimitConfig {
            daily_tokens: scope.daily_tokens,
            monthly_tokens: scope.monthly_tokens,
            daily_cost: scope.daily_cost,
            monthly_cost: scope.monthly_cost,
            ..palisade_config::LimitConfig::default()
        };
        if crate::budgets::sets_budget(&own) {
            out.push(Budget {
                level: Level::Key,
                who: key.get(),
                limits: own,
            });
        }
        if let Some(t) = self.tenants.get(tenant) {
            if let Some((name, limits)) = t.apps.get(app) {
                out.push(Budget {
                    level: Level::App,
                    who: Arc::clone(name),
                    limits: *limits,
                });
            }
            out.push(Budget {
                level: Level::Tenant,
                who: Arc::clone(&t.name),
                limits: t.limits,
            });
        }
        out
    }

    /// The limits on a key's requests: its own, its application's, its
    /// tenant's.
    pub fn applicable(
        &self,
        key: &str,
        scope: &palisade_store::Scope,
        tenant: &str,
        app: &str,
    ) -> Applicable {
        let mut key = KeyName {
            id: key,
            name: None,
        };
        let mut out = Applicable {
            budgets: self.budgets(&mut key, scope, tenant, app),
            ..Applicable::default()
        };
        let mut add = |level: Level, who: &Name, l: (Option<u32>, Option<u32>, Option<u32>)| {
            let (rpm, concurrency, tpm) = l;
            if let Some(r) = rpm {
                out.rates.push((level, Arc::clone(who), r));
            }
            if let Some(t) = tpm {
                out.tokens.push((level, Arc::clone(who), t));
            }
            if let Some(c) = concurrency {
                out.concurrency.push((level, Arc::clone(who), c));
            }
        };
        if scope.rpm.is_some() || scope.concurrency.is_some() || scope.tpm.is_some() {
            add(
                Level::Key,
                &key.get(),
                (scope.rpm, scope.concurrency, scope.tpm),
            );
        }
        if let Some(t) = self.tenants.get(tenant) {
            if let Some((name, a)) = t.apps.get(app) {
                add(Level::App, name, (a.rpm, a.concurrency, a.tpm));
            }
            let l = &t.limits;
            add(Level::Tenant, &t.name, (l.rpm, l.concurrency, l.tpm));
        }
        out
    }
}

/// A key's id, made a [`Name`] only if one of its own limits needs it.
struct KeyName<'a> {
    id: &'a str,
    name: Option<Name>,
}

impl KeyName<'_> {
    fn get(&mut self) -> Name {
        Arc::clone(self.name.get_or_insert_with(|| Name::from(self.id)))
    }
}

/// What an admitted request reserved of its token rates, settled against
/// the usage the provider reports when the exchange ends.
#[derive(Debug, Clone)]
pub struct TokenCharge {
    /// (level, who) and the time one token is worth there.
    per: Vec<((Level, Name), Duration)>,
    pub reserved: u64,
    /// Reserved in Redis instead: the keys charged, with their limits.
    shared: Option<SharedTokens>,
}

/// Where a shared reservation lives: Redis, and the token keys charged
/// with their limits.
type SharedTokens = (Arc<RedisLimits>, Vec<(String, u32)>);

/// What admitting a request gives back.
#[derive(Debug)]
pub struct Admission {
    /// The tightest request rate, for `x-ratelimit-*-requests`.
    pub requests: Option<RateStatus>,
    /// The tightest token rate, for `x-ratelimit-*-tokens`.
    pub tokens: Option<RateStatus>,
    pub slots: Slots,
    pub charge: Option<TokenCharge>,
    /// Budgets reserved.
    pub budget: Option<BudgetCharge>,
    /// Whether [`Ask::bound`] was reserved instead of the prompt's count:
    /// without a usage report, the exchange settles to [`Ask::count`].
    pub uncounted: bool,
}

/// What a [`Limiter`] counts.
#[derive(Default)]
struct Counts {
    /// Theoretical arrival time per level and name.
    tat: PerLevel<Instant>,
    /// The same for token rates.
    token_tat: PerLevel<Instant>,
    /// Requests in flight per level and name.
    in_flight: PerLevel<u32>,
}

/// Rates, token rates and concurrency in this process, under one lock: an
/// admission checks and charges them all at once, so racing requests never
/// pass a limit together, and a request touches one lock to be admitted,
/// one to be settled and one to be let go.
#[derive(Default)]
pub struct Limiter {
    counts: Arc<Mutex<Counts>>,
}

/// Holds a request's concurrency slots; they are given back when it is
/// dropped (when the exchange ends, streams included).
pub struct Slots {
    held: Vec<(Level, Name)>,
    counts: Arc<Mutex<Counts>>,
    /// Leases in Redis: the sets, and this request's name in them.
    shared: Option<(Arc<RedisLimits>, Vec<String>, String)>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some((redis, sets, member)) = self.shared.take() {
            // Given back off the request's path; if Redis is unreachable
            // the leases run out by themselves (`SLOT_LEASE`).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = redis.release(&sets, &member).await {
                        tracing::warn!(error = %e, "concurrency slots not given back to Redis; their lease will expire");
                    }
                });
            }
        }
        if self.held.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (level, who) in self.held.drain(..) {
            let in_flight = &mut counts.in_flight[level.index()];
            if let Some(n) = in_flight.get_mut(&who) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    in_flight.remove(&who);
                }
            }
        }
    }
}

/// How many limited things are remembered before the idle ones are
/// forgotten.
const MAX_TRACKED: usize = 100_000;

/// A token-rate reservation worked out but not yet charged.
type TokenPlan = (RateStatus, Vec<((Level, Name), Instant)>, TokenCharge);

impl Limiter {
    /// Admits a request costing `tokens` (its prompt estimate plus the
    /// completion it may ask for) at `now`, filling token rates up to
    /// `fill` of them, or says which limit refuses it: token rates, then
    /// concurrency, then request rates, every level checked before any is
    /// charged. Nothing is charged on a refusal.
    pub fn admit_with(
        &self,
        limits: &Applicable,
        tokens: u64,
        now: Instant,
        fill: Fill,
    ) -> Result<Admission, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *counts;
        let token_plan = check_tokens(&mut c.token_tat, limits, tokens, now, fill)?;
        for (level, who, limit) in &limits.concurrency {
            if c.in_flight[level.index()].get(who).copied().unwrap_or(0) >= *limit {
                return Err(Refusal::Concurrency {
                    level: *level,
                    limit: *limit,
                });
            }
        }
        let (requests, next) = check_rates(&mut c.tat, limits, now)?;
        // Every limit passed: charge them all.
        let (status, charge) = match token_plan {
            Some((status, next, charge)) => {
                set(&mut c.token_tat, next);
                (Some(status), Some(charge))
            }
            None => (None, None),
        };
        let mut held = Vec::with_capacity(limits.concurrency.len());
        for (level, who, _) in &limits.concurrency {
            *c.in_flight[level.index()]
                .entry(Arc::clone(who))
                .or_default() += 1;
            held.push((*level, Arc::clone(who)));
        }
        set(&mut c.tat, next);
        drop(counts);
        Ok(Admission {
            requests,
            tokens: status,
            slots: Slots {
                held,
                counts: Arc::clone(&self.counts),
                shared: None,
            },
            charge,
            budget: None,
            uncounted: false,
        })
    }

    /// Admits a request at `now` by its request rates and concurrency.
    pub fn admit(
        &self,
        limits: &Applicable,
        now: Instant,
    ) -> Result<(Option<RateStatus>, Slots), Refusal> {
        self.admit_with(limits, 0, now, Fill::Whole)
            .map(|a| (a.requests, a.slots))
    }

    /// Settles a reservation against what the request really used: the
    /// difference is given back (or taken).
    pub fn settle(&self, charge: &TokenCharge, used: u64) {
        if charge.per.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for ((level, who), interval) in &charge.per {
            let Some(t) = counts.token_tat[level.index()].get_mut(who) else {
                continue;
            };
            if used >= charge.reserved {
                let extra = u32::try_from(used - charge.reserved).unwrap_or(u32::MAX);
                *t += interval.saturating_mul(extra);
            } else {
                let refund = u32::try_from(charge.reserved - used).unwrap_or(u32::MAX);
                if let Some(earlier) = t.checked_sub(interval.saturating_mul(refund)) {
                    *t = earlier;
                }
            }
        }
    }

    /// Slots that hold nothing here: the admission was counted in Redis,
    /// under `shared`'s leases.
    fn no_slots(&self, shared: Option<(Arc<RedisLimits>, Vec<String>, String)>) -> Slots {
        Slots {
            held: Vec::new(),
            counts: Arc::clone(&self.counts),
            shared,
        }
    }
}

/// Stores new arrival times.
fn set(tat: &mut PerLevel<Instant>, next: Vec<((Level, Name), Instant)>) {
    for ((level, who), t) in next {
        tat[level.index()].insert(who, t);
    }
}

/// Forgets the arrival times that are past (their limits are whole
/// again) once too many things are tracked.
fn forget_idle(tat: &mut PerLevel<Instant>, now: Instant) {
    if tat.iter().map(HashMap::len).sum::<usize>() >= MAX_TRACKED {
        for map in tat.iter_mut() {
            map.retain(|_, t| *t > now);
        }
    }
}

/// Token rates: the tightest status and the new arrival times, or the
/// refusal; nothing is changed.
fn check_tokens(
    tat: &mut PerLevel<Instant>,
    limits: &Applicable,
    cost: u64,
    now: Instant,
    fill: Fill,
) -> Result<Option<TokenPlan>, Refusal> {
    if limits.tokens.is_empty() {
        return Ok(None);
    }
    forget_idle(tat, now);
    let mut tightest: Option<RateStatus> = None;
    let mut next = Vec::new();
    let mut per = Vec::new();
    for (level, who, tpm) in &limits.tokens {
        let tpm = (*tpm).max(1);
        let interval = Duration::from_secs(60) / tpm;
        let burst = interval * tpm;
        let current = tat[level.index()].get(who).copied().unwrap_or(now).max(now);
        let spent = interval.saturating_mul(u32::try_from(cost).unwrap_or(u32::MAX));
        let new_tat = current + spent;
        let ahead = new_tat - now;
        let remaining_now = u32::try_from(
            (burst.saturating_sub(current - now)).as_nanos() / interval.as_nanos().max(1),
        )
        .unwrap_or(u32::MAX);
        let room = fill.of_time(burst);
        if ahead > room {
            let status = RateStatus {
                limit: tpm,
                remaining: remaining_now,
                reset: current - now,
            };
            let retry_after = (cost <= fill.of_tokens(u64::from(tpm))).then(|| ahead - room);
            return Err(Refusal::Tokens {
                level: *level,
                retry_after,
                status,
            });
        }
        let remaining = u32::try_from((burst - ahead).as_nanos() / interval.as_nanos().max(1))
            .unwrap_or(u32::MAX);
        let status = RateStatus {
            limit: tpm,
            remaining,
            reset: ahead,
        };
        if tightest.is_none_or(|t| remaining < t.remaining) {
            tightest = Some(status);
        }
        next.push(((*level, Arc::clone(who)), new_tat));
        per.push(((*level, Arc::clone(who)), interval));
    }
    Ok(tightest.map(|t| {
        (
            t,
            next,
            TokenCharge {
                per,
                reserved: cost,
                shared: None,
            },
        )
    }))
}

/// Request rates: the tightest status and the new arrival times, or the
/// refusal; nothing is changed.
#[allow(clippy::type_complexity)]
fn check_rates(
    tat: &mut PerLevel<Instant>,
    limits: &Applicable,
    now: Instant,
) -> Result<(Option<RateStatus>, Vec<((Level, Name), Instant)>), Refusal> {
    if limits.rates.is_empty() {
        return Ok((None, Vec::new()));
    }
    forget_idle(tat, now);
    let mut tightest: Option<RateStatus> = None;
    let mut next = Vec::with_capacity(limits.rates.len());
    for (level, who, rpm) in &limits.rates {
        let rpm = (*rpm).max(1);
        let interval = Duration::from_secs(60) / rpm;
        let burst = interval * rpm;
        let current = tat[level.index()].get(who).copied().unwrap_or(now).max(now);
        let new_tat = current + interval;
        let ahead = new_tat - now;
        if ahead > burst {
            let status = RateStatus {
                limit: rpm,
                remaining: 0,
                reset: current - now,
            };
            return Err(Refusal::Rate {
                level: *level,
                retry_after: ahead - burst,
                status,
            });
        }
        let remaining = u32::try_from((burst - ahead).as_nanos() / interval.as_nanos().max(1))
            .unwrap_or(u32::MAX);
        let status = RateStatus {
            limit: rpm,
            remaining,
            reset: ahead,
        };
        if tightest.is_none_or(|t| remaining < t.remaining) {
            tightest = Some(status);
        }
        next.push(((*level, Arc::clone(who)), new_tat));
    }
    Ok((tightest, next))
}

/// Which limits apply and where they are counted: in this process, or in
/// Redis with this process as the fallback while Redis is unreachable and
/// `limits.on_unavailable = "open"`.
pub struct Limits {
    plan: Plan,
    local: Limiter,
    /// This gateway's own spending against budgets.
    budgets: Arc<Budgets>,
    shared: Option<Arc<Shared>>,
}

struct Shared {
    redis: Arc<RedisLimits>,
    on_unavailable: OnUnavailable,
    /// Whether the last exchange with Redis succeeded.
    up: AtomicBool,
    /// Names this gateway's share of the shared budgets: its ledger's
    /// origin, the same after a restart.
    origin: String,
    /// Names this process's concurrency leases.
    node: String,
    next: AtomicU64,
    /// Whether this gateway's share of the budgets must be set again in
    /// full (the start-up sync did not reach Redis).
    needs_sync: AtomicBool,
    /// Whether pending budget changes are being delivered.
    delivering: AtomicBool,
}

/// Where limits are shared: Redis, what to do when it is unreachable, and
/// this gateway's ledger origin.
pub struct SharedBackend {
    pub redis: Arc<RedisLimits>,
    pub on_unavailable: OnUnavailable,
    pub origin: String,
}

impl Limits {
    pub fn new(plan: Plan, shared: Option<SharedBackend>) -> Self {
        Self {
            plan,
            local: Limiter::default(),
            budgets: Arc::new(Budgets::default()),
            shared: shared.map(|b| {
                Arc::new(Shared {
                    redis: b.redis,
                    on_unavailable: b.on_unavailable,
                    up: AtomicBool::new(true),
                    origin: b.origin,
                    node: uuid::Uuid::now_v7().simple().to_string(),
                    next: AtomicU64::new(0),
                    needs_sync: AtomicBool::new(false),
                    delivering: AtomicBool::new(false),
                })
            }),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The in-process counts (the fallback when a shared backend is set).
    pub fn local(&self) -> &Limiter {
        &self.local
    }

    /// This gateway's spending against budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Whether limits are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Admits a request reserving `ask` or says which limit or budget
    /// refuses it; nothing is charged on a refusal. In this process, the
    /// prompt is counted only if its bound would fill a token rate or
    /// budget past half ([`Ask`]); with Redis it is counted first, for one
    /// round trip.
    pub async fn admit(
        &self,
        limits: &Applicable,
        ask: &Ask,
        audit: &crate::audit::Audit,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Admission, Refusal> {
        let Some(shared) = self.shared.as_ref().filter(|_| !limits.is_empty()) else {
            return self.admit_here(limits, ask);
        };
        let ask = if limits.counts_tokens() {
            ask.count()
        } else {
            Reservation::default()
        };
        let member = format!(
            "{}-{}",
            shared.node,
            shared.next.fetch_add(1, Ordering::Relaxed)
        );
        let periods = crate::budgets::periods(palisade_store::unix_now());
        let decided = shared
            .redis
            .admit(
                limits,
                ask,
                (&periods.0, &periods.1),
                &shared.origin,
                &member,
            )
            .await;
        match decided {
            Ok(decided) => {
                let back = shared.switch(true, None, audit, metrics);
                if back || self.budgets.has_pending() || shared.needs_sync.load(Ordering::Relaxed) {
                    self.deliver(shared);
                }
                let a = decided?;
                // This gateway's own count follows what Redis charged.
                let budget = limits.budgets.iter().any(Budget::any).then(|| {
                    let mut c = self.budgets.charge(
                        &limits.budgets,
                        ask.tokens,
                        ask.cost,
                        (&periods.0, &periods.1),
                    );
                    c.mirror = Mirror::Redis(Arc::clone(&shared.redis));
                    c
                });
                Ok(Admission {
                    requests: a.requests,
                    tokens: a.tokens,
                    slots: self.local.no_slots(
                        (!a.slots.is_empty()).then(|| (Arc::clone(&shared.redis), a.slots, member)),
                    ),
                    charge: (!a.token_keys.is_empty()).then(|| TokenCharge {
                        per: Vec::new(),
                        reserved: ask.tokens,
                        shared: Some((Arc::clone(&shared.redis), a.token_keys)),
                    }),
                    budget,
                    uncounted: false,
                })
            }
            Err(e) => {
                shared.switch(false, Some(&e), audit, metrics);
                match shared.on_unavailable {
                    OnUnavailable::Open => {
                        metrics
                            .limits_fallbacks
                            .get_or_create(&crate::metrics::OutcomeLabels {
                                outcome: "counted_locally",
                            })
                            .inc();
                        self.admit_locally(limits, ask, Mirror::Pending, Fill::Whole)
                    }
                    OnUnavailable::Closed => {
                        metrics
                            .limits_fallbacks
                            .get_or_create(&crate::metrics::OutcomeLabels { outcome: "refused" })
                            .inc();
                        Err(Refusal::Unavailable)
                    }
                }
            }
        }
    }

    /// In this process only: on the prompt's bound while that leaves every
    /// token rate and budget half free, else on its count.
    fn admit_here(&self, limits: &Applicable, ask: &Ask) -> Result<Admission, Refusal> {
        if !limits.counts_tokens() {
            return self.admit_locally(limits, Reservation::default(), Mirror::None, Fill::Whole);
        }
        match self.admit_locally(limits, ask.bound(), Mirror::None, Fill::Half) {
            Ok(admitted) => Ok(Admission {
                uncounted: true,
                ..admitted
            }),
            // Past half on the bound: the count decides.
            Err(Refusal::Tokens { .. } | Refusal::Budget(_)) => {
                self.admit_locally(limits, ask.count(), Mirror::None, Fill::Whole)
            }
            Err(refused) => Err(refused),
        }
    }

    /// Budgets first, then rates, in this process, filling token rates and
    /// budgets up to `fill`; whichever refuses, nothing stays charged.
    fn admit_locally(
        &self,
        limits: &Applicable,
        ask: Reservation,
        mirror: Mirror,
        fill: Fill,
    ) -> Result<Admission, Refusal> {
        let budget = if limits.budgets.iter().any(Budget::any) {
            let periods = crate::budgets::periods(palisade_store::unix_now());
            self.budgets
                .reserve(
                    &limits.budgets,
                    ask.tokens,
                    ask.cost,
                    (&periods.0, &periods.1),
                    fill,
                )
                .map_err(Refusal::Budget)?
        } else {
            None
        };
        match self
            .local
            .admit_with(limits, ask.tokens, Instant::now(), fill)
        {
            Ok(mut admission) => {
                admission.budget = budget.map(|mut c| {
                    if matches!(mirror, Mirror::Pending) {
                        self.budgets.add_pending(
                            c.keys(),
                            Spent {
                                tokens: i64::try_from(ask.tokens).unwrap_or(i64::MAX),
                                cost: ask.cost,
                            },
                        );
                    }
                    c.mirror = mirror;
                    c
                });
                Ok(admission)
            }
            Err(refused) => {
                if let Some(c) = &budget {
                    self.budgets.settle(c, 0, 0.0);
                }
                Err(refused)
            }
        }
    }

    /// Settles a reservation against what the request used.
    pub fn settle(&self, charge: &TokenCharge, used: u64) {
        let Some((redis, keys)) = &charge.shared else {
            self.local.settle(charge, used);
            return;
        };
        let delta = i64::try_from(used).unwrap_or(i64::MAX)
            - i64::try_from(charge.reserved).unwrap_or(i64::MAX);
        let (redis, keys) = (Arc::clone(redis), keys.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = redis.settle(&keys, delta).await {
                    tracing::warn!(error = %e, "token reservation not settled in Redis; it stands until the minute passes");
                }
            });
        }
    }

    /// Settles a budget reservation against what the request used (`tokens`
    /// costing `cost`), here and, off the request's path, in Redis; a
    /// settlement Redis does not take waits as pending.
    pub fn settle_budget(&self, charge: &BudgetCharge, tokens: u64, cost: f64) {
        let delta = self.budgets.settle(charge, tokens, cost);
        if delta == Spent::default() {
            return;
        }
        match (&charge.mirror, &self.shared) {
            (Mirror::None, _) | (_, None) => {}
            (Mirror::Pending, Some(_)) => self.budgets.add_pending(charge.keys(), delta),
            (Mirror::Redis(redis), Some(shared)) => {
                let changes: Vec<_> = charge.keys().iter().map(|k| (k.clone(), delta)).collect();
                let (redis, budgets, origin) = (
                    Arc::clone(redis),
                    Arc::clone(&self.budgets),
                    shared.origin.clone(),
                );
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let keyed = redis.budget_changes(&changes);
                        if let Err(e) = redis.add_budgets(&origin, &keyed).await {
                            tracing::warn!(error = %e, "budget settlement not delivered to Redis; it is kept and sent when Redis answers");
                            for (k, d) in changes {
                                budgets.add_pending(&[k], d);
                            }
                        }
                    });
                }
            }
        }
    }

    /// Sets this gateway's share of the shared budgets from its own
    /// spending (read back from its ledger), at start-up before the first
    /// request. If Redis does not answer, it is done when Redis answers
    /// again.
    pub async fn sync_budgets(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        if let Err(e) = shared.sync(&self.budgets).await {
            tracing::warn!(target: "palisade::limits", error = %e, "this gateway's budget spending is not in Redis yet; it is sent when Redis answers");
        }
    }

    /// Sends what Redis has not received of this gateway's budget
    /// spending, off the request's path, one delivery at a time.
    fn deliver(&self, shared: &Arc<Shared>) {
        if shared.delivering.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            shared.delivering.store(false, Ordering::Release);
            return;
        };
        let (shared, budgets) = (Arc::clone(shared), Arc::clone(&self.budgets));
        rt.spawn(async move {
            let result = if shared.needs_sync.load(Ordering::Acquire) {
                shared.sync(&budgets).await
            } else {
                let pending = budgets.take_pending();
                let keyed = shared.redis.budget_changes(&pending);
                let r = shared.redis.add_budgets(&shared.origin, &keyed).await;
                if r.is_err() {
                    for (k, d) in pending {
                        budgets.add_pending(&[k], d);
                    }
                }
                r
            };
            match result {
                Ok(()) => tracing::info!(target: "palisade::limits", "budget spending counted while Redis was unreachable is now shared"),
                Err(e) => tracing::warn!(target: "palisade::limits", error = %e, "budget spending not delivered to Redis; retried on the next admission"),
            }
            shared.delivering.store(false, Ordering::Release);
        });
    }

    /// Asks Redis whether it answers, at start-up, so that an unreachable
    /// backend is recorded before the first request.
    pub async fn probe(&self, audit: &crate::audit::Audit, metrics: &crate::metrics::Metrics) {
        if let Some(shared) = &self.shared {
            let r = shared.redis.ping().await;
            shared.switch(r.is_ok(), r.as_ref().err(), audit, metrics);
            metrics.limits_backend_up.set(i64::from(r.is_ok()));
        }
    }
}

impl Shared {
    /// Sets this gateway's share of the shared budgets to its whole
    /// spending this day and month; until that succeeds, it is retried.
    async fn sync(&self, budgets: &Budgets) -> Result<(), SharedError> {
        self.needs_sync.store(true, Ordering::Release);
        let periods = crate::budgets::periods(palisade_store::unix_now());
        // Pending changes are in the snapshot already.
        drop(budgets.take_pending());
        let snapshot = budgets.snapshot((&periods.0, &periods.1));
        self.redis.sync_budgets(&self.origin, &snapshot).await?;
        self.needs_sync.store(false, Ordering::Release);
        Ok(())
    }

    /// Records a change between reachable and unreachable: a log line, a
    /// ledger entry and the metrics. Says whether Redis has just come back.
    fn switch(
        &self,
        up: bool,
        error: Option<&SharedError>,
        audit: &crate::audit::Audit,
        metrics: &crate::metrics::Metrics,
    ) -> bool {
        // A plain load on the usual path; the swap only when it changes.
        if self.up.load(Ordering::Relaxed) == up || self.up.swap(up, Ordering::AcqRel) == up {
            return false;
        }
        metrics.limits_backend_up.set(i64::from(up));
        let mode = match self.on_unavailable {
            OnUnavailable::Open => "open",
            OnUnavailable::Closed => "closed",
        };
        if up {
            tracing::info!("the Redis limits backend answers again; limits are shared");
            metrics
                .limits_backend_switches
                .get_or_create(&crate::metrics::OutcomeLabels {
                    outcome: "available",
                })
                .inc();
            audit.submit(
                "limits.backend_available",
                serde_json::json!({"backend": "redis"}),
            );
        } else {
            let error = error.map(ToString::to_string).unwrap_or_default();
            tracing::error!(error = %error, on_unavailable = mode, "the Redis limits backend is unreachable");
            metrics
                .limits_backend_switches
                .get_or_create(&crate::metrics::OutcomeLabels {
                    outcome: "unavailable",
                })
                .inc();
            audit.submit(
                "limits.backend_unavailable",
                serde_json::json!({"backend": "redis", "on_unavailable": mode, "error": error}),
            );
        }
        up
    }
}

/// What a request that sets no bound is assumed to ask for, for token
/// rates, until its usage settles it.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 1024;

/// `6m0s`, `1s`, `120ms`: the duration form OpenAI's reset headers use.
pub fn reset_header(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{}ms", ms.max(1));
    }
    let secs = d.as_secs_f64();
    let minutes = (secs / 60.0).floor() as u64;
    let rest = secs - minutes as f64 * 60.0;
    if minutes > 0 {
        format!("{minutes}m{}s", rest.round() as u64)
    } else {
        format!("{}s", (rest * 10.0).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(who: &str, rpm: u32) -> Applicable {
        Applicable {
            rates: vec![(Level::Key, who.into(), rpm)],
            ..Applicable::default()
        }
    }

    fn token_rate(who: &str, tpm: u32) -> Applicable {
        Applicable {
            tokens: vec![(Level::Key, who.into(), tpm)],
            ..Applicable::default()
        }
    }

    fn nothing_in_flight(l: &Limiter) -> bool {
        let counts = l.counts.lock().unwrap();
        counts.in_flight.iter().all(HashMap::is_empty)
    }

    #[test]
    fn a_bound_fills_a_token_rate_only_to_half() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let limits = token_rate("k", 6000);
        assert!(l.admit_with(&limits, 3001, t0, Fill::Half).is_err());
        let a = l.admit_with(&limits, 3000, t0, Fill::Half).unwrap();
        assert_eq!(a.tokens.unwrap().remaining, 3000);
        // Past half, only what fits the whole limit.
        assert!(l.admit_with(&limits, 1, t0, Fill::Half).is_err());
        assert!(l.admit_with(&limits, 3001, t0, Fill::Whole).is_err());
        assert!(l.admit_with(&limits, 3000, t0, Fill::Whole).is_ok());
        // Settling gives back what the bound held over the count.
        l.settle(a.charge.as_ref().unwrap(), 100);
        let b = l.admit_with(&limits, 2900, t0, Fill::Whole).unwrap();
        assert_eq!(b.tokens.unwrap().remaining, 0);
    }

    #[test]
    fn token_rates_reserve_then_settle() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let limits = token_rate("k", 6000);
        // 5000 reserved: 1000 left.
        let a = l.admit_with(&limits, 5000, t0, Fill::Whole).unwrap();
        assert_eq!(a.tokens.unwrap().remaining, 1000);
        let Err(Refusal::Tokens { retry_after, .. }) = l.admit_with(&limits, 2000, t0, Fill::Whole)
        else {
            panic!("2000 more must wait");
        };
        assert_eq!(retry_after, Some(Duration::from_secs(10)));
        // The request used only 500: 4500 come back.
        l.settle(a.charge.as_ref().unwrap(), 500);
        let b = l.admit_with(&limits, 2000, t0, Fill::Whole).unwrap();
        assert_eq!(b.tokens.unwrap().remaining, 3500);
        // More than the whole limit can never pass.
        let Err(Refusal::Tokens { retry_after, .. }) = l.admit_with(&limits, 7000, t0, Fill::Whole)
        else {
            panic!("too large");
        };
        assert_eq!(retry_after, None);
        // A refusal by tokens charges no request rate.
        let both = Applicable {
            rates: vec![(Level::Key, "k".into(), 1)],
            tokens: vec![(Level::Key, "k".into(), 6000)],
            ..Applicable::default()
        };
        assert!(l.admit_with(&both, 99_999, t0, Fill::Whole).is_err());
        assert!(l.admit_with(&both, 1, t0, Fill::Whole).is_ok());
    }

    #[test]
    fn exactly_n_pass_then_the_window_refills_one_at_a_time() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let limits = rate("k", 6); // one every 10 s, burst 6
        for i in 0..6 {
            let (status, _) = l.admit(&limits, t0).unwrap();
            assert_eq!(status.unwrap().remaining, 5 - i, "request {i}");
        }
        let Err(Refusal::Rate { retry_after, .. }) = l.admit(&limits, t0) else {
            panic!("the seventh must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(10));
        assert!(l.admit(&limits, t0 + Duration::from_millis(9_999)).is_err());
        assert!(l.admit(&limits, t0 + Duration::from_secs(10)).is_ok());
        assert!(l.admit(&limits, t0 + Duration::from_secs(10)).is_err());
        // After a full minute of quiet, the whole burst again.
        let later = t0 + Duration::from_secs(80);
        for _ in 0..6 {
            assert!(l.admit(&limits, later).is_ok());
        }
        assert!(l.admit(&limits, later).is_err());
        // Other keys are not affected.
        assert!(l.admit(&rate("other", 6), t0).is_ok());
    }

    #[test]
    fn the_tightest_level_wins_and_a_refusal_charges_nothing() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let limits = Applicable {
            rates: vec![
                (Level::Key, "k".into(), 100),
                (Level::Tenant, "t".into(), 2),
            ],
            ..Applicable::default()
        };
        let (status, _) = l.admit(&limits, t0).unwrap();
        assert_eq!(status.unwrap().limit, 2);
        assert!(l.admit(&limits, t0).is_ok());
        let refused = l.admit(&limits, t0).unwrap_err();
        assert_eq!(refused.reason(), "rate_limited_tenant");
        // The key was charged twice, not three times: 98 left.
        let (status, _) = l.admit(&rate("k", 100), t0).unwrap();
        assert_eq!(status.unwrap().remaining, 97);
    }

    #[test]
    fn concurrency_slots_come_back_when_the_request_ends() {
        let l = Limiter::default();
        let limits = Applicable {
            concurrency: vec![(Level::App, "a".into(), 2)],
            ..Applicable::default()
        };
        let now = Instant::now();
        let a = l.admit(&limits, now).unwrap();
        let b = l.admit(&limits, now).unwrap();
        assert_eq!(
            l.admit(&limits, now).unwrap_err().reason(),
            "concurrency_limited_app"
        );
        drop(a);
        let c = l.admit(&limits, now).unwrap();
        drop((b, c));
        assert!(nothing_in_flight(&l));
    }

    #[test]
    fn many_threads_racing_one_limit_never_overshoot() {
        let l = Arc::new(Limiter::default());
        let t0 = Instant::now();
        let admitted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, admitted) = (Arc::clone(&l), Arc::clone(&admitted));
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if l.admit(&rate("shared", 1000), t0).is_ok() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 1000);
    }

    /// Token rates, concurrency and request rates together: each request
    /// reserves 100 of 10,000 tokens a minute; exactly 100 pass, however
    /// the threads interleave, and the slots all come back.
    #[test]
    fn racing_token_reservations_never_overshoot() {
        let l = Arc::new(Limiter::default());
        let t0 = Instant::now();
        let limits = Applicable {
            tokens: vec![(Level::Tenant, "acme".into(), 10_000)],
            concurrency: vec![(Level::Key, "k".into(), 1_000_000)],
            rates: vec![(Level::App, "acme/bot".into(), 1_000_000)],
            ..Applicable::default()
        };
        let passed: usize = (0..8)
            .map(|_| {
                let (l, limits) = (Arc::clone(&l), limits.clone());
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| l.admit_with(&limits, 100, t0, Fill::Whole).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(passed, 100);
        assert!(nothing_in_flight(&l));
    }

    #[test]
    fn reset_headers_look_like_openais() {
        assert_eq!(reset_header(Duration::from_millis(120)), "120ms");
        assert_eq!(reset_header(Duration::from_secs(1)), "1s");
        assert_eq!(reset_header(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_header(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn the_plan_names_every_level_that_has_a_limit() {
        let text = r#"
[[tenants]]
name = "acme"
limits = { rpm = 600 }
apps = [{ name = "bot", limits = { rpm = 60, concurrency = 4 } }]
"#;
        let config = palisade_config::Config::from_toml("t", text, Vec::new()).unwrap();
        let plan = Plan::new(&config);
        let scope = palisade_store::Scope {
            rpm: Some(10),
            ..palisade_store::Scope::default()
        };
        let a = plan.applicable("k1", &scope, "acme", "bot");
        assert_eq!(
            a.rates,
            [
                (Level::Key, Name::from("k1"), 10),
                (Level::App, Name::from("acme/bot"), 60),
                (Level::Tenant, Name::from("acme"), 600)
            ]
        );
        assert_eq!(a.concurrency, [(Level::App, Name::from("acme/bot"), 4)]);
        let other = plan.applicable("k2", &palisade_store::Scope::default(), "globex", "x");
        assert!(other.rates.is_empty() && other.concurrency.is_empty());
        assert!(
            palisade_config::Config::from_toml(
                "t",
                "[[tenants]]\nname = \"a\"\nlimits = { tpm = 0 }\n",
                Vec::new()
            )
            .is_err()
        );
    }
}
