//! The provider review: every provider with its attested facts, the models
//! and tenants that use it, and what a reviewer should look at — a SOC 2
//! report past a tenant's limit or about to be, and every tenant whose
//! policy it fails (a BAA missing where a PHI tenant could route, a region
//! outside a tenant's, training use, retention). The same report backs
//! `palisade providers review` and `GET /admin/v1/providers/review`.

use palisade_config::{Config, Requirement};
use serde_json::{Value, json};

use crate::routing::{Facts, Policy};

/// A report that becomes stale within this many days is flagged.
pub const EXPIRY_WARNING_DAYS: i64 = 60;

/// The review on day `today` (days since 1970-01-01).
pub fn providers(config: &Config, today: i64) -> Value {
    let policies: Vec<(&str, Policy)> = config
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), Policy::new(config, t)))
        .collect();
    let providers: Vec<Value> = config
        .providers
        .iter()
        .map(|p| {
            let facts = Facts::of(p);
            let models: Vec<&str> = config
                .models
                .iter()
                .filter(|m| m.targets().iter().any(|t| t.provider == p.name))
                .map(|m| m.name.as_str())
                .collect();
            let mut flags = Vec::new();
            let mut allowed = Vec::new();
            for (tenant, policy) in &policies {
                let broken = policy.exclusions(&facts, today);
                if broken.is_empty() {
                    allowed.push(*tenant);
                } else if !models.is_empty() {
                    for reason in broken {
                        flags.push(json!({
                            "flag": "fails_tenant_policy",
                            "tenant": tenant,
                            "reason": reason.as_str(),
                        }));
                    }
                }
            }
            // The strictest report age among tenants that require one, or
            // the default.
            let max_months = policies
                .iter()
                .filter(|(_, p)| p.requires(Requirement::Soc2))
                .map(|(_, p)| p.max_soc2_age_months)
                .min()
                .unwrap_or(palisade_config::DEFAULT_SOC2_MAX_AGE_MONTHS);
            let mut soc2 = json!({"max_age_months": max_months});
            match facts.soc2_period_end {
                None => flags.push(json!({"flag": "soc2_missing"})),
                Some(end) => {
                    let stale_after = palisade_config::add_months(end, max_months);
                    soc2["stale_after"] = json!(palisade_config::format_date(stale_after));
                    soc2["age_days"] = json!(today - end);
                    if today > stale_after {
                        flags.push(json!({"flag": "soc2_stale", "max_age_months": max_months}));
                    } else if stale_after - today <= EXPIRY_WARNING_DAYS {
                        flags.push(
                            json!({"flag": "soc2_expiring", "days_left": stale_after - today}),
                        );
                    }
                }
            }
            let c = &p.compliance;
            json!({
                "name": p.name,
                "kind": p.kind.as_str(),
                "region": p.region,
                "compliance": {
                    "soc2_type2_period_end": c.soc2_type2_period_end,
                    "iso27001": c.iso27001,
                    "baa": c.baa,
                    "zero_retention": c.zero_retention,
                    "trains_on_data": c.trains_on_data,
                    "confidential_computing": c.confidential_computing,
                    "subprocessors": c.subprocessors,
                },
                "soc2": soc2,
                "models": models,
                "tenants_allowed": allowed,
                "flags": flags,
            })
        })
        .collect();
    json!({"date": palisade_config::format_date(today), "providers": providers})
}

/// The review as a table for a terminal.
pub fn text(review: &Value) -> String {
    let mut out = format!(
        "Provider review, {}\n",
        review["date"].as_str().unwrap_or("")
    );
    for p in review["providers"].as_array().into_iter().flatten() {
        let s = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let c = &p["compliance"];
        out.push_str(&format!(
            "\n{} ({}), region {}\n  SOC 2 Type II period end {}, ISO 27001 {}, BAA {}, zero retention {}, trains on data {}, confidential computing {}\n",
            s(&p["name"]),
            s(&p["kind"]),
            s(&p["region"]),
            s(&c["soc2_type2_period_end"]),
            s(&c["iso27001"]),
            s(&c["baa"]),
            s(&c["zero_retention"]),
            s(&c["trains_on_data"]),
            s(&c["confidential_computing"]),
        ));
        let list = |v: &Value| {
            let items: Vec<String> = v.as_array().into_iter().flatten().map(&s).collect();
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        out.push_str(&format!("  models: {}\n", list(&p["models"])));
        out.push_str(&format!(
            "  tenants allowed: {}\n",
            list(&p["tenants_allowed"])
        ));
        for f in p["flags"].as_array().into_iter().flatten() {
            let detail = match f["flag"].as_str() {
                Some("fails_tenant_policy") => format!(
                    "fails tenant {}'s policy: {}",
                    s(&f["tenant"]),
                    s(&f["reason"])
                ),
                Some("soc2_stale") => {
                    format!("SOC 2 report older than {} months", s(&f["max_age_months"]))
                }
                Some("soc2_expiring") => {
                    format!("SOC 2 report goes stale in {} days", s(&f["days_left"]))
                }
                Some("soc2_missing") => "no SOC 2 Type II report stated".to_owned(),
                _ => f.to_string(),
            };
            out.push_str(&format!("  FLAG {detail}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::{Compliance, ModelConfig, ProviderConfig, ProviderKind, TenantConfig};

    fn provider(name: &str, region: &str, compliance: Compliance) -> ProviderConfig {
        ProviderConfig {
            region: Some(region.into()),
            compliance,
            ..ProviderConfig::new(name, ProviderKind::Openai, "http://127.0.0.1:9/v1")
        }
    }

    #[test]
    fn flags_stale_and_expiring_reports_and_failed_policies() {
        let today = palisade_config::parse_date("2026-11-23").unwrap();
        let mut config = Config::empty("/tmp/unused".into());
        config.providers = vec![
            provider(
                "fresh-us",
                "us",
                Compliance {
                    soc2_type2_period_end: Some("2026-06-30".into()),
                    baa: true,
                    ..Compliance::default()
                },
            ),
            // 18 months after 2025-06-30 is 2026-12-30: 37 days left.
            provider(
                "expiring-eu",
                "eu",
                Compliance {
                    soc2_type2_period_end: Some("2025-06-30".into()),
                    ..Compliance::default()
                },
            ),
            provider(
                "stale-us",
                "us",
                Compliance {
                    soc2_type2_period_end: Some("2024-12-31".into()),
                    baa: true,
                    ..Compliance::default()
                },
            ),
        ];
        config.models = vec![ModelConfig {
            name: "m".into(),
            provider: String::new(),
            targets: ["fresh-us", "expiring-eu", "stale-us"]
                .iter()
                .map(|p| palisade_config::TargetConfig {
                    provider: (*p).into(),
                    upstream_model: None,
                    weight: 1,
                    timeouts: None,
                })
                .collect(),
            strategy: Default::default(),
            upstream_model: None,
            price: None,
        }];
        config.tenants = vec![TenantConfig {
            name: "clinic".into(),
            data_classes: vec!["phi".into()],
            regions: vec!["us".into()],
            ..TenantConfig::default()
        }];
        let r = providers(&config, today);
        let by = |name: &str| {
            r["providers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()
                .clone()
        };
        let fresh = by("fresh-us");
        assert_eq!(fresh["flags"], json!([]));
        assert_eq!(fresh["tenants_allowed"], json!(["clinic"]));
        assert_eq!(fresh["models"], json!(["m"]));
        let expiring = by("expiring-eu");
        let flags = expiring["flags"].as_array().unwrap();
        assert!(flags.contains(
            &json!({"flag": "fails_tenant_policy", "tenant": "clinic", "reason": "region"})
        ));
        // A BAA missing where a PHI tenant could route is named even when
        // the region rules the provider out first.
        assert!(flags.contains(
            &json!({"flag": "fails_tenant_policy", "tenant": "clinic", "reason": "baa"})
        ));
        assert!(flags.contains(&json!({"flag": "soc2_expiring", "days_left": 37})));
        let stale = by("stale-us");
        let flags = stale["flags"].as_array().unwrap();
        assert!(flags.contains(&json!({"flag": "soc2_stale", "max_age_months": 18})));
        assert!(flags.contains(
            &json!({"flag": "fails_tenant_policy", "tenant": "clinic", "reason": "soc2_stale"})
        ));
        let table = text(&r);
        assert!(
            table.contains("FLAG SOC 2 report goes stale in 37 days"),
            "{table}"
        );
        assert!(
            table.contains("FLAG fails tenant clinic's policy: region"),
            "{table}"
        );
    }
}
