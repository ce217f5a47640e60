//! Budgets per calendar day and month (UTC), in tokens and in cost, per
//! key, application and tenant.
//!
//! A request reserves its estimate (prompt plus the completion asked for,
//! and their price) against every budget that applies, or is refused with
//! `budget_exceeded`; when the exchange ends the reservation is settled
//! against the usage the provider reported. At start-up, what was spent
//! this month is read back from the ledger's `request.completed` entries
//! (the usage report), so a restart — or a crash — loses no accounted
//! tokens.
//!
//! This map is the gateway's own spending. With limits shared through
//! Redis ([`crate::redis_limits`]) each gateway's share is one field of the
//! shared budget, kept equal to this map: set from it at start-up, charged
//! and settled alongside it, and what could not reach Redis (spending
//! counted here while Redis was unreachable, settlements that failed) is
//! held as *pending* and added once Redis answers again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use palisade_config::LimitConfig;

use crate::limits::{Fill, Level, Name};

/// Day (`2026-11-23`) or month (`2026-11`), UTC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Period {
    Day(Name),
    Month(Name),
}

impl Period {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Day(d) | Self::Month(d) => d,
        }
    }
}

/// The current day and month, from Unix seconds; worked out once a day
/// per thread.
pub fn periods(now: i64) -> (Name, Name) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(i64, Name, Name)>> =
            const { std::cell::RefCell::new(None) };
    }
    let day = now.div_euclid(86_400);
    LAST.with_borrow_mut(|last| {
        let (_, d, m) = match last {
            Some(l) if l.0 == day => l,
            _ => {
                let date = palisade_config::format_date(day);
                let month = Name::from(&date[..7]);
                last.insert((day, Name::from(date), month))
            }
        };
        (Name::clone(d), Name::clone(m))
    })
}

/// Tokens and cost spent (or, as a pending change, to add).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub tokens: i64,
    pub cost: f64,
}

/// One budget: whose, and for which period.
pub type BudgetKey = (Level, Name, Period);

/// One budget that applies to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub level: Level,
    pub who: Name,
    pub limits: LimitConfig,
}

impl Budget {
    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        sets_budget(&self.limits)
    }
}

/// Whether `l` sets a budget (a day's or month's tokens or cost).
pub fn sets_budget(l: &LimitConfig) -> bool {
    l.daily_tokens.is_some()
        || l.monthly_tokens.is_some()
        || l.daily_cost.is_some()
        || l.monthly_cost.is_some()
}

/// Where a reservation is mirrored besides this gateway's own map.
#[derive(Debug, Clone, Default)]
pub enum Mirror {
    /// Budgets are this gateway's alone.
    #[default]
    None,
    /// Charged in Redis too.
    Redis(std::sync::Arc<crate::redis_limits::RedisLimits>),
    /// Counted here while Redis was unreachable: its settlement is pending
    /// as well.
    Pending,
}

/// A reservation to settle.
#[derive(Debug, Clone)]
pub struct BudgetCharge {
    keys: Vec<BudgetKey>,
    tokens: u64,
    cost: f64,
    pub mirror: Mirror,
}

impl BudgetCharge {
    pub fn keys(&self) -> &[BudgetKey] {
        &self.keys
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub level: Level,
    /// `daily_tokens`, `monthly_tokens`, `daily_cost` or `monthly_cost`.
    pub which: &'static str,
}

impl Exceeded {
    pub fn reason(&self) -> &'static str {
        match self.level {
            Level::Key => "budget_exceeded_key",
            Level::App => "budget_exceeded_app",
            Level::Tenant => "budget_exceeded_tenant",
        }
    }
}

/// How many budget periods are remembered before past ones are dropped.
const MAX_TRACKED: usize = 50_000;

type Spending = HashMap<BudgetKey, Spent, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Budgets {
    spent: Mutex<Spending>,
    /// Changes counted here that the shared budgets do not have yet.
    pending: Mutex<Spending>,
    has_pending: AtomicBool,
}

/// The budget periods a request is charged against: every budget that
/// is set, for the day and the month.
pub fn keys_for<'a>(
    budgets: impl Iterator<Item = &'a Budget>,
    (day, month): (&Name, &Name),
) -> Vec<BudgetKey> {
    let mut keys = Vec::new();
    for b in budgets.filter(|b| b.any()) {
        keys.push((b.level, Name::clone(&b.who), Period::Day(Name::clone(day))));
        keys.push((
            b.level,
            Name::clone(&b.who),
            Period::Month(Name::clone(month)),
        ));
    }
    keys
}

fn charge_locked(
    spent: &mut Spending,
    keys: Vec<BudgetKey>,
    tokens: u64,
    cost: f64,
    (day, month): (&Name, &Name),
) -> BudgetCharge {
    if spent.len() >= MAX_TRACKED {
        spent.retain(|(_, _, p), _| match p {
            Period::Day(d) => d == day,
            Period::Month(m) => m == month,
        });
    }
    let add = i64::try_from(tokens).unwrap_or(i64::MAX);
    for k in &keys {
        let e = spent.entry(k.clone()).or_default();
        e.tokens = e.tokens.saturating_add(add);
        e.cost += cost;
    }
    BudgetCharge {
        keys,
        tokens,
        cost,
        mirror: Mirror::None,
    }
}

impl Budgets {
    /// Reserves `tokens` and `cost` against every budget in `budgets` for
    /// `day` and `month`, or says which one it would exceed (then nothing
    /// is reserved).
    pub fn reserve(
        &self,
        budgets: &[Budget],
        tokens: u64,
        cost: f64,
        (day, month): (&Name, &Name),
        fill: Fill,
    ) -> Result<Option<BudgetCharge>, Exceeded> {
        let budgets: Vec<&Budget> = budgets.iter().filter(|b| b.any()).collect();
        if budgets.is_empty() {
            return Ok(None);
        }
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let get = |spent: &Spending, b: &Budget, p: Period| {
            spent
                .get(&(b.level, Name::clone(&b.who), p))
                .copied()
                .unwrap_or_default()
        };
        let tokens_i = i64::try_from(tokens).unwrap_or(i64::MAX);
        for b in &budgets {
            let d = get(&spent, b, Period::Day(Name::clone(day)));
            let m = get(&spent, b, Period::Month(Name::clone(month)));
            let over_tokens = |s: Spent, limit: Option<u64>| {
                limit.is_some_and(|x| {
                    s.tokens.saturating_add(tokens_i)
                        > i64::try_from(fill.of_tokens(x)).unwrap_or(i64::MAX)
                })
            };
            let over_cost = |s: Spent, limit: Option<f64>| {
                limit.is_some_and(|x| s.cost + cost > fill.of_cost(x))
            };
            let l = &b.limits;
            let over = [
                ("daily_tokens", over_tokens(d, l.daily_tokens)),
                ("monthly_tokens", over_tokens(m, l.monthly_tokens)),
                ("daily_cost", over_cost(d, l.daily_cost)),
                ("monthly_cost", over_cost(m, l.monthly_cost)),
            ];
            if let Some((which, _)) = over.iter().find(|(_, o)| *o) {
                return Err(Exceeded {
                    level: b.level,
                    which,
                });
            }
        }
        // Charged under the same lock as checked: racing requests never
        // pass a budget together.
        let keys = keys_for(budgets.into_iter(), (day, month));
        Ok(Some(charge_locked(
            &mut spent,
            keys,
            tokens,
            cost,
            (day, month),
        )))
    }

    /// Charges `tokens` and `cost` to every budget in `budgets` without
    /// checking them (the shared budgets already admitted the request).
    pub fn charge(
        &self,
        budgets: &[Budget],
        tokens: u64,
        cost: f64,
        periods: (&Name, &Name),
    ) -> BudgetCharge {
        let keys = keys_for(budgets.iter(), periods);
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        charge_locked(&mut spent, keys, tokens, cost, periods)
    }

    /// Replaces a reservation with what the request really used, and
    /// returns the change.
    pub fn settle(&self, charge: &BudgetCharge, tokens: u64, cost: f64) -> Spent {
        let delta = Spent {
            tokens: i64::try_from(tokens)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(charge.tokens).unwrap_or(i64::MAX)),
            cost: cost - charge.cost,
        };
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for k in &charge.keys {
            if let Some(e) = spent.get_mut(k) {
                e.tokens = e.tokens.saturating_add(delta.tokens).max(0);
                e.cost = (e.cost + delta.cost).max(0.0);
            }
        }
        delta
    }

    /// Adds what was spent before this process started (from the usage
    /// report): `rows` are (day, tenant, app, key, tokens, cost).
    pub fn load(
        &self,
        rows: &[(String, String, String, String, u64, f64)],
        month: &str,
        today: &str,
    ) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for (day, tenant, app, key, tokens, cost) in rows {
            if !day.starts_with(month) {
                continue;
            }
            let tokens = i64::try_from(*tokens).unwrap_or(i64::MAX);
            for (level, who) in [
                (Level::Tenant, Name::from(tenant.as_str())),
                (Level::App, Name::from(format!("{tenant}/{app}"))),
                (Level::Key, Name::from(key.as_str())),
            ] {
                let mut add = |p: Period| {
                    let e = spent.entry((level, who.clone(), p)).or_default();
                    e.tokens = e.tokens.saturating_add(tokens);
                    e.cost += cost;
                };
                add(Period::Month(Name::from(month)));
                if day == today {
                    add(Period::Day(Name::from(today)));
                }
            }
        }
    }

    /// This gateway's spending in the current `day` and `month`.
    pub fn snapshot(&self, (day, month): (&str, &str)) -> Vec<(BudgetKey, Spent)> {
        let spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        spent
            .iter()
            .filter(|((_, _, p), _)| match p {
                Period::Day(d) => **d == *day,
                Period::Month(m) => **m == *month,
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Records a change the shared budgets have not received.
    pub fn add_pending(&self, keys: &[BudgetKey], delta: Spent) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            let e = pending.entry(k.clone()).or_default();
            e.tokens = e.tokens.saturating_add(delta.tokens);
            e.cost += delta.cost;
        }
        self.has_pending.store(true, Ordering::Release);
    }

    /// Whether changes wait for the shared budgets.
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// Takes every pending change (give them back with
    /// [`Budgets::add_pending`] if they cannot be delivered).
    pub fn take_pending(&self) -> Vec<(BudgetKey, Spent)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.has_pending.store(false, Ordering::Release);
        pending.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: &str, month: &str) -> (Name, Name) {
        (Name::from(day), Name::from(month))
    }

    fn on(p: &(Name, Name)) -> (&Name, &Name) {
        (&p.0, &p.1)
    }

    fn budget(daily_tokens: Option<u64>, monthly_cost: Option<f64>) -> Vec<Budget> {
        vec![Budget {
            level: Level::Tenant,
            who: "acme".into(),
            limits: LimitConfig {
                daily_tokens,
                monthly_cost,
                ..LimitConfig::default()
            },
        }]
    }

    #[test]
    fn a_bound_fills_a_budget_only_to_half() {
        let b = Budgets::default();
        let p = at("2026-11-23", "2026-11");
        let p = on(&p);
        let limits = budget(Some(1000), Some(1.0));
        let half = |tokens, cost| b.reserve(&limits, tokens, cost, p, Fill::Half);
        assert_eq!(half(501, 0.0).unwrap_err().which, "daily_tokens");
        assert_eq!(half(10, 0.51).unwrap_err().which, "monthly_cost");
        let c = half(500, 0.5).unwrap().unwrap();
        assert!(half(1, 0.0).is_err());
        // The whole budget is still there for what was counted.
        let whole = b
            .reserve(&limits, 500, 0.5, p, Fill::Whole)
            .unwrap()
            .unwrap();
        assert!(b.reserve(&limits, 1, 0.0, p, Fill::Whole).is_err());
        b.settle(&c, 0, 0.0);
        b.settle(&whole, 0, 0.0);
        assert!(half(500, 0.5).is_ok());
    }

    #[test]
    fn reserve_settle_and_the_exact_boundary() {
        let b = Budgets::default();
        let p = at("2026-11-23", "2026-11");
        let p = on(&p);
        let limits = budget(Some(1000), None);
        let c = b
            .reserve(&limits, 600, 0.0, p, Fill::Whole)
            .unwrap()
            .unwrap();
        assert!(b.reserve(&limits, 401, 0.0, p, Fill::Whole).is_err());
        b.settle(&c, 100, 0.0);
        // 100 spent: exactly 900 more fit, 901 do not.
        assert!(b.reserve(&limits, 901, 0.0, p, Fill::Whole).is_err());
        let full = b
            .reserve(&limits, 900, 0.0, p, Fill::Whole)
            .unwrap()
            .unwrap();
        assert_eq!(
            b.reserve(&limits, 1, 0.0, p, Fill::Whole)
                .unwrap_err()
                .which,
            "daily_tokens"
        );
        b.settle(&full, 0, 0.0);
        // A new day starts empty.
        assert!(
            b.reserve(
                &limits,
                1000,
                0.0,
                on(&at("2026-11-24", "2026-11")),
                Fill::Whole
            )
            .is_ok()
        );
    }

    #[test]
    fn cost_budgets_and_what_the_ledger_says_was_spent() {
        let b = Budgets::default();
        let rows = vec![
            (
                "2026-11-02".to_owned(),
                "acme".to_owned(),
                "bot".to_owned(),
                "k1".to_owned(),
                5_000,
                9.5,
            ),
            (
                "2026-10-30".to_owned(),
                "acme".to_owned(),
                "bot".to_owned(),
                "k1".to_owned(),
                9_000,
                50.0,
            ),
        ];
        b.load(&rows, "2026-11", "2026-11-23");
        let limits = budget(None, Some(10.0));
        let e = b
            .reserve(
                &limits,
                10,
                0.6,
                on(&at("2026-11-23", "2026-11")),
                Fill::Whole,
            )
            .unwrap_err();
        assert_eq!(
            (e.which, e.reason()),
            ("monthly_cost", "budget_exceeded_tenant")
        );
        assert!(
            b.reserve(
                &limits,
                10,
                0.4,
                on(&at("2026-11-23", "2026-11")),
                Fill::Whole
            )
            .is_ok()
        );
    }

    #[test]
    fn charges_snapshots_and_pending_changes() {
        let b = Budgets::default();
        let p = at("2026-11-23", "2026-11");
        let p = on(&p);
        let limits = budget(Some(100), None);
        // Charged without a check (the shared budgets admitted it), even
        // past this gateway's own view of the limit.
        let c = b.charge(&limits, 150, 0.5, p);
        assert_eq!(c.keys().len(), 2, "the day and the month");
        assert!(b.reserve(&limits, 1, 0.0, p, Fill::Whole).is_err());
        let delta = b.settle(&c, 40, 0.125);
        assert_eq!(delta.tokens, -110);
        assert!((delta.cost + 0.375).abs() < 1e-12);
        // Yesterday counts for the month, not for today.
        b.charge(&limits, 5, 0.0, on(&at("2026-11-22", "2026-11")));
        let mut snap: Vec<(String, i64)> = b
            .snapshot((p.0, p.1))
            .into_iter()
            .map(|((_, _, period), s)| (period.as_str().to_owned(), s.tokens))
            .collect();
        snap.sort();
        assert_eq!(
            snap,
            [("2026-11".to_owned(), 45), ("2026-11-23".to_owned(), 40)]
        );
        // Pending changes add up until taken.
        assert!(!b.has_pending());
        for _ in 0..2 {
            b.add_pending(
                c.keys(),
                Spent {
                    tokens: 10,
                    cost: 0.25,
                },
            );
        }
        assert!(b.has_pending());
        let taken = b.take_pending();
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|(_, s)| s.tokens == 20 && s.cost == 0.5));
        assert!(!b.has_pending() && b.take_pending().is_empty());
    }

    #[test]
    fn racing_reservations_never_pass_a_budget() {
        let b = std::sync::Arc::new(Budgets::default());
        let limits = budget(Some(1000), None);
        let passed: usize = (0..8)
            .map(|_| {
                let (b, limits) = (std::sync::Arc::clone(&b), limits.clone());
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| {
                            b.reserve(
                                &limits,
                                3,
                                0.0,
                                on(&at("2026-11-23", "2026-11")),
                                Fill::Whole,
                            )
                            .is_ok()
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(passed, 333);
    }

    #[test]
    fn periods_are_the_utc_day_and_month() {
        for now in [
            0,
            86_399,
            86_400,
            951_782_399,
            951_782_400,
            1_795_392_000,
            1_795_478_399,
        ] {
            let t = palisade_ledger::time::rfc3339(now);
            assert_eq!(
                periods(now),
                (Name::from(&t[..10]), Name::from(&t[..7])),
                "{now}"
            );
        }
    }
}
