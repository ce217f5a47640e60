//! A tenant's settings, as configuration gives them, turned into a
//! detector and a policy — with the defaults each data class implies.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::detector::{CustomPattern, DenyList, Detector, DetectorConfig};
use crate::entity::Entity;
use crate::protect::{Action, Policy};

/// A tenant's data-protection settings, names as written in config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyInput {
    pub default_action: Option<String>,
    pub actions: BTreeMap<String, String>,
    pub thresholds: BTreeMap<String, f32>,
    pub entities: Option<Vec<String>>,
    pub patterns: Vec<CustomPattern>,
    pub deny_lists: Vec<DenyList>,
}

/// The classes an action may be given for.
const CLASSES: &[&str] = &["PII", "PHI", "SECRET", "CUSTOM"];

/// Every problem with `input`, each a sentence naming the value.
pub fn check_policy(input: &PolicyInput) -> Vec<String> {
    let mut problems = Vec::new();
    let actions = "redact, mask, tokenize, block or detect";
    if let Some(a) = &input.default_action
        && Action::parse(a).is_none()
    {
        problems.push(format!("default_action `{a}` is not one of {actions}"));
    }
    let custom: BTreeSet<&str> = input
        .patterns
        .iter()
        .map(|p| p.name.as_str())
        .chain(input.deny_lists.iter().map(|l| l.name.as_str()))
        .collect();
    for (kind, action) in &input.actions {
        if Entity::parse(kind).is_none()
            && !CLASSES.contains(&kind.as_str())
            && !custom.contains(kind.as_str())
        {
            problems.push(format!(
                "actions: `{kind}` is not an entity, a class (PII, PHI, SECRET, CUSTOM) or one of this tenant's patterns or lists"
            ));
        }
        if Action::parse(action).is_none() {
            problems.push(format!(
                "actions.{kind}: `{action}` is not one of {actions}"
            ));
        }
    }
    for (kind, t) in &input.thresholds {
        if Entity::parse(kind).is_none() {
            problems.push(format!("thresholds: `{kind}` is not an entity"));
        }
        if !(0.0..=1.0).contains(t) {
            problems.push(format!("thresholds.{kind}: must be between 0 and 1"));
        }
    }
    for e in input.entities.iter().flatten() {
        if Entity::parse(e).is_none() {
            problems.push(format!("entities: `{e}` is not an entity"));
        }
    }
    if let Err(e) = Detector::new(&detector_config(input)) {
        problems.push(e.to_string());
    }
    problems
}

fn detector_config(input: &PolicyInput) -> DetectorConfig {
    DetectorConfig {
        entities: input
            .entities
            .as_ref()
            .map(|list| list.iter().filter_map(|e| Entity::parse(e)).collect()),
        thresholds: input
            .thresholds
            .iter()
            .filter_map(|(k, v)| Some((Entity::parse(k)?, *v)))
            .collect(),
        patterns: input.patterns.clone(),
        deny_lists: input.deny_lists.clone(),
    }
}

/// A tenant's compiled protection.
pub struct Protection {
    pub detector: Detector,
    pub policy: Policy,
}

/// The policy a tenant's data classes imply, before its own settings:
/// credentials are never sent on (redacted; blocked for `phi` and `pci`);
/// `pii` and `phi` tokenize identifiers; `pci` blocks card numbers;
/// everything else is recorded only.
pub fn class_defaults(data_classes: &[String]) -> Policy {
    let has = |c: &str| data_classes.iter().any(|d| d == c);
    let mut by_kind = HashMap::new();
    by_kind.insert("SECRET".to_owned(), Action::Redact);
    if has("pii") || has("phi") {
        by_kind.insert("PII".to_owned(), Action::Tokenize);
    }
    if has("phi") {
        by_kind.insert("PHI".to_owned(), Action::Tokenize);
        by_kind.insert("SECRET".to_owned(), Action::Block);
    }
    if has("pci") {
        by_kind.insert("CREDIT_CARD".to_owned(), Action::Block);
        by_kind.insert("SECRET".to_owned(), Action::Block);
    }
    Policy {
        default: Action::Detect,
        by_kind,
    }
}

/// Builds a tenant's protection; `input` must have passed
/// [`check_policy`] (an error here names the first problem).
pub fn protection(input: &PolicyInput, data_classes: &[String]) -> Result<Protection, String> {
    if let Some(first) = check_policy(input).into_iter().next() {
        return Err(first);
    }
    let detector = Detector::new(&detector_config(input)).map_err(|e| e.to_string())?;
    let mut policy = class_defaults(data_classes);
    if let Some(a) = input.default_action.as_deref().and_then(Action::parse) {
        policy.default = a;
    }
    for (kind, action) in &input.actions {
        if let Some(a) = Action::parse(action) {
            policy.by_kind.insert(kind.clone(), a);
        }
    }
    Ok(Protection { detector, policy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::Session;

    #[test]
    fn problems_are_named() {
        let input = PolicyInput {
            default_action: Some("erase".into()),
            actions: [
                ("EMAL".into(), "redact".into()),
                ("US_SSN".into(), "nuke".into()),
            ]
            .into(),
            thresholds: [("EMAIL".into(), 1.5)].into(),
            entities: Some(vec!["PHONE".into(), "FAX".into()]),
            patterns: vec![CustomPattern {
                name: "ORDER".into(),
                regex: "(".into(),
                score: 0.9,
            }],
            deny_lists: vec![],
        };
        let problems = check_policy(&input);
        assert_eq!(problems.len(), 6, "{problems:#?}");
        for needle in ["erase", "EMAL", "nuke", "thresholds.EMAIL", "FAX", "ORDER"] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
        assert!(protection(&input, &[]).is_err());
    }

    #[test]
    fn data_classes_imply_defaults_and_settings_override_them() {
        let text = "jane@acme.io ssn 078-05-1120 card 4111 1111 1111 1111 key AKIAIOSFODNN7EXAMPLE";
        let run = |input: &PolicyInput, classes: &[&str]| {
            let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
            let p = protection(input, &classes).unwrap();
            let mut s = Session::new();
            let out = s.protect(&p.detector, &p.policy, text).into_owned();
            (out, s.blocked().map(|b| b.join(",")))
        };
        let none = PolicyInput::default();
        assert_eq!(
            run(&none, &[]),
            (
                "jane@acme.io ssn 078-05-1120 card 4111 1111 1111 1111 key [AWS_ACCESS_KEY_1]"
                    .into(),
                None
            )
        );
        assert_eq!(
            run(&none, &["pii"]),
            (
                "[EMAIL_1] ssn [US_SSN_1] card [CREDIT_CARD_1] key [AWS_ACCESS_KEY_1]".into(),
                None
            )
        );
        assert_eq!(run(&none, &["phi"]).1, Some("AWS_ACCESS_KEY".into()));
        assert_eq!(
            run(&none, &["pci"]).1,
            Some("AWS_ACCESS_KEY,CREDIT_CARD".into())
        );
        let own = PolicyInput {
            default_action: Some("mask".into()),
            actions: [
                ("EMAIL".into(), "redact".into()),
                ("SECRET".into(), "detect".into()),
            ]
            .into(),
            ..PolicyInput::default()
        };
        assert_eq!(
            run(&own, &[]).0,
            "[EMAIL_1] ssn ***-**-1120 card **** **** **** 1111 key AKIAIOSFODNN7EXAMPLE"
        );
    }
}
