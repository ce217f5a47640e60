//! Budgets per calendar day and month (UTC), in tokens and in cost, per
//! application and tenant.
//!
//! A request reserves its estimate (prompt plus the completion asked for,
//! and their price) against every budget that applies, or is refused with
//! `budget_exceeded`; when the exchange ends the reservation is settled
//! against the usage the provider reported. At start-up, what was spent
//! this month is read back from the ledger's `request.completed` entries
//! (the usage report), so a restart — or a crash — loses no accounted
//! tokens.

use std::collections::HashMap;
use std::sync::Mutex;

use palisade_config::LimitConfig;

use crate::limits::Level;

/// Day (`2026-11-23`) or month (`2026-11`), UTC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Period {
    Day(String),
    Month(String),
}

/// The current day and month, from Unix seconds.
pub fn periods(now: i64) -> (String, String) {
    let t = palisade_ledger::time::rfc3339(now);
    (t[..10].to_owned(), t[..7].to_owned())
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Spent {
    tokens: u64,
    cost: f64,
}

/// One budget that applies to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub level: Level,
    pub who: String,
    pub limits: LimitConfig,
}

impl Budget {
    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        let l = &self.limits;
        l.daily_tokens.is_some()
            || l.monthly_tokens.is_some()
            || l.daily_cost.is_some()
            || l.monthly_cost.is_some()
    }
}

/// A reservation to settle.
#[derive(Debug, Clone)]
pub struct BudgetCharge {
    keys: Vec<(Level, String, Period)>,
    tokens: u64,
    cost: f64,
}

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Default)]
pub struct Budgets {
    spent: Mutex<HashMap<(Level, String, Period), Spent>>,
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
        (day, month): (&str, &str),
    ) -> Result<Option<BudgetCharge>, Exceeded> {
        let budgets: Vec<&Budget> = budgets.iter().filter(|b| b.any()).collect();
        if budgets.is_empty() {
            return Ok(None);
        }
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let get = |spent: &HashMap<_, Spent>, b: &Budget, p: Period| {
            spent
                .get(&(b.level, b.who.clone(), p))
                .copied()
                .unwrap_or_default()
        };
        for b in &budgets {
            let d = get(&spent, b, Period::Day(day.to_owned()));
            let m = get(&spent, b, Period::Month(month.to_owned()));
            let l = &b.limits;
            let over = [
                (
                    "daily_tokens",
                    l.daily_tokens.is_some_and(|x| d.tokens + tokens > x),
                ),
                (
                    "monthly_tokens",
                    l.monthly_tokens.is_some_and(|x| m.tokens + tokens > x),
                ),
                (
                    "daily_cost",
                    l.daily_cost.is_some_and(|x| d.cost + cost > x),
                ),
                (
                    "monthly_cost",
                    l.monthly_cost.is_some_and(|x| m.cost + cost > x),
                ),
            ];
            if let Some((which, _)) = over.iter().find(|(_, o)| *o) {
                return Err(Exceeded {
                    level: b.level,
                    which,
                });
            }
        }
        let mut keys = Vec::new();
        for b in budgets {
            for p in [Period::Day(day.to_owned()), Period::Month(month.to_owned())] {
                let e = spent
                    .entry((b.level, b.who.clone(), p.clone()))
                    .or_default();
                e.tokens += tokens;
                e.cost += cost;
                keys.push((b.level, b.who.clone(), p));
            }
        }
        Ok(Some(BudgetCharge { keys, tokens, cost }))
    }

    /// Replaces a reservation with what the request really used.
    pub fn settle(&self, charge: &BudgetCharge, tokens: u64, cost: f64) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for k in &charge.keys {
            if let Some(e) = spent.get_mut(k) {
                e.tokens = (e.tokens + tokens).saturating_sub(charge.tokens);
                e.cost = (e.cost + cost - charge.cost).max(0.0);
            }
        }
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
            for (level, who) in [
                (Level::Tenant, tenant.clone()),
                (Level::App, format!("{tenant}/{app}")),
                (Level::Key, key.clone()),
            ] {
                let mut add = |p: Period| {
                    let e = spent.entry((level, who.clone(), p)).or_default();
                    e.tokens += tokens;
                    e.cost += cost;
                };
                add(Period::Month(month.to_owned()));
                if day == today {
                    add(Period::Day(today.to_owned()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reserve_settle_and_the_exact_boundary() {
        let b = Budgets::default();
        let p = ("2026-11-23", "2026-11");
        let limits = budget(Some(1000), None);
        let c = b.reserve(&limits, 600, 0.0, p).unwrap().unwrap();
        assert!(b.reserve(&limits, 401, 0.0, p).is_err());
        b.settle(&c, 100, 0.0);
        // 100 spent: exactly 900 more fit, 901 do not.
        assert!(b.reserve(&limits, 901, 0.0, p).is_err());
        let full = b.reserve(&limits, 900, 0.0, p).unwrap().unwrap();
        assert_eq!(
            b.reserve(&limits, 1, 0.0, p).unwrap_err().which,
            "daily_tokens"
        );
        b.settle(&full, 0, 0.0);
        // A new day starts empty.
        assert!(
            b.reserve(&limits, 1000, 0.0, ("2026-11-24", "2026-11"))
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
            .reserve(&limits, 10, 0.6, ("2026-11-23", "2026-11"))
            .unwrap_err();
        assert_eq!(
            (e.which, e.reason()),
            ("monthly_cost", "budget_exceeded_tenant")
        );
        assert!(
            b.reserve(&limits, 10, 0.4, ("2026-11-23", "2026-11"))
                .is_ok()
        );
    }
}
