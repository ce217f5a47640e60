//! Routing: what each provider has attested (region and compliance facts),
//! what each tenant requires, the targets behind a model name, and how
//! failures are retried.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration;

/// What a provider has attested, from its reports and agreements. A fact
/// that is not stated counts as absent: a provider whose training use is
/// unknown does not satisfy `no_training`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compliance {
    /// The last day of the period the current SOC 2 Type II report covers
    /// (`2026-03-31`).
    pub soc2_type2_period_end: Option<String>,
    pub iso27001: bool,
    /// A business associate agreement (HIPAA) is signed.
    pub baa: bool,
    /// Prompts and completions are not retained.
    pub zero_retention: bool,
    /// Whether the provider trains on customer data; unstated is unknown.
    pub trains_on_data: Option<bool>,
    /// Requests run in an attested trusted execution environment.
    pub confidential_computing: bool,
    /// The sub-processors the provider discloses.
    pub subprocessors: Vec<String>,
}

/// A requirement a tenant's policy (or one of its data classes) places on
/// the providers its requests may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// A business associate agreement.
    Baa,
    /// A SOC 2 Type II report no older than the tenant's limit.
    Soc2,
    Iso27001,
    ZeroRetention,
    /// The provider states that it does not train on customer data.
    NoTraining,
    ConfidentialComputing,
}

impl Requirement {
    pub const ALL: [Requirement; 6] = [
        Self::Baa,
        Self::Soc2,
        Self::Iso27001,
        Self::ZeroRetention,
        Self::NoTraining,
        Self::ConfidentialComputing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baa => "baa",
            Self::Soc2 => "soc2",
            Self::Iso27001 => "iso27001",
            Self::ZeroRetention => "zero_retention",
            Self::NoTraining => "no_training",
            Self::ConfidentialComputing => "confidential_computing",
        }
    }
}

/// What the built-in data classes require; `[routing.classes]` adds to
/// them and defines others.
pub fn class_requirements(class: &str) -> &'static [Requirement] {
    match class {
        "phi" => &[Requirement::Baa, Requirement::Soc2],
        "pci" => &[Requirement::Soc2, Requirement::ZeroRetention],
        "pii" => &[Requirement::NoTraining],
        _ => &[],
    }
}

/// The default for a tenant's `max_soc2_age_months`.
pub const DEFAULT_SOC2_MAX_AGE_MONTHS: u32 = 18;

/// Active health checks of one provider (off unless configured: a paid
/// API is not polled without being asked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// A path under the provider's `base_url`, asked with `GET`.
    pub path: String,
    #[serde(with = "duration::serde_str")]
    pub interval: Duration,
    #[serde(with = "duration::serde_str")]
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/models".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// When a target's circuit opens, and how it is probed again.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// The share of failed requests in `window` that opens it, once the
    /// window holds at least `min_requests`.
    pub error_rate: f64,
    #[serde(with = "duration::serde_str")]
    pub window: Duration,
    pub min_requests: u32,
    /// How long an open circuit refuses before one request probes it.
    #[serde(with = "duration::serde_str")]
    pub cooldown: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 20,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// How a model's targets are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first eligible target in order; the rest in order on failure.
    #[default]
    Priority,
    /// Eligible targets shared by weight; the rest, heaviest first, on
    /// failure.
    Weighted,
}

/// One provider behind a model name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    /// The model name sent upstream; defaults to the model's name.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// With `strategy = "weighted"`: this target's share (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// This target's timeouts, instead of its provider's.
    #[serde(default)]
    pub timeouts: Option<crate::Timeouts>,
}

fn one() -> u32 {
    1
}

/// `[routing]`: retries and data-class requirements.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Attempts per request, the first included, across targets.
    pub max_attempts: u32,
    /// The first backoff before trying a target again; doubled each time,
    /// with jitter.
    #[serde(with = "duration::serde_str")]
    pub backoff: Duration,
    #[serde(with = "duration::serde_str")]
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this is not waited for.
    #[serde(with = "duration::serde_str")]
    pub retry_after_max: Duration,
    /// Data classes and what they require, on top of the built-in ones
    /// (`phi`: baa, soc2; `pci`: soc2, zero_retention; `pii`: no_training).
    pub classes: BTreeMap<String, Vec<Requirement>>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(10),
            classes: BTreeMap::new(),
        }
    }
}

/// A calendar date `YYYY-MM-DD` as days since 1970-01-01, or `None`.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `months` calendar months after the date `days` (days since
/// 1970-01-01), the day clamped to the month's length.
pub fn add_months(days: i64, months: u32) -> i64 {
    let (y, m, d) = civil_from_days(days);
    let total = y * 12 + (m - 1) + i64::from(months);
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    days_from_civil(y, m, d.min(days_in_month(y, m)))
}

/// `YYYY-MM-DD` of a day count since 1970-01-01.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Whether `region` lies within `allowed`: the same, or a part of it
/// (`us-east-1` lies within `us`).
pub fn region_within(region: &str, allowed: &str) -> bool {
    region == allowed
        || region
            .strip_prefix(allowed)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Region names: lowercase letters, digits and `-`, such as `us`, `eu`,
/// `us-east-1`.
pub fn is_region(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_months_add_up() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-03-31"), Some(days_from_civil(2026, 3, 31)));
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-01-01x",
            "2026/01/01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(parse_date("2024-02-29").is_some());
        for days in [-800_000, -1, 0, 59, 20_000, 20_513, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let d = |s| parse_date(s).unwrap();
        assert_eq!(add_months(d("2026-03-31"), 18), d("2027-09-30"));
        assert_eq!(add_months(d("2025-08-31"), 6), d("2026-02-28"));
        assert_eq!(add_months(d("2023-11-15"), 3), d("2024-02-15"));
    }

    #[test]
    fn regions_nest_by_prefix() {
        assert!(region_within("us-east-1", "us"));
        assert!(region_within("us", "us"));
        assert!(!region_within("usa", "us"));
        assert!(!region_within("us", "us-east-1"));
        assert!(!region_within("eu-west-1", "us"));
        assert!(is_region("eu-central-1") && !is_region("EU") && !is_region("-us"));
    }
}
