//! The detector: normalisation, every scanner, context words, the
//! tenant's own patterns and deny-lists, thresholds, and overlap
//! resolution — then findings mapped back to the text as given.

use std::collections::{BTreeSet, HashMap};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use crate::entity::{Entity, Finding};
use crate::normalize::Normalized;
use crate::secrets::Secrets;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DlpError {
    #[error("pattern `{name}` is not a valid regular expression: {reason}")]
    BadPattern { name: String, reason: String },
    #[error("`{0}` is not a valid name for a pattern or list (1 to 40 of A-Z, 0-9 and _)")]
    BadName(String),
    #[error("deny-list `{0}` is empty")]
    EmptyList(String),
    #[error("cannot build the matcher: {0}")]
    Automaton(String),
}

/// A tenant's own regular expression (linear-time: the `regex` crate never
/// backtracks). Matches are reported under `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomPattern {
    pub name: String,
    pub regex: String,
    pub score: f32,
}

/// Terms (code names, customer ids) matched as whole words, ignoring ASCII
/// case, reported under `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyList {
    pub name: String,
    pub terms: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetectorConfig {
    /// The entities to look for; `None`: every built-in one.
    pub entities: Option<BTreeSet<Entity>>,
    /// Minimum score per entity (default [`DEFAULT_THRESHOLD`]).
    pub thresholds: HashMap<Entity, f32>,
    pub patterns: Vec<CustomPattern>,
    pub deny_lists: Vec<DenyList>,
}

pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// What a context word does.
#[derive(Clone, Copy)]
enum Role {
    /// A word after which a value is a credential (see
    /// [`crate::secrets::KEYWORDS`]).
    Keyword,
    /// Raises (or lowers) the score of nearby findings of an entity.
    Boost(Entity, f32),
    /// Starts a value that only context identifies (a medical record
    /// number after `MRN:`).
    Anchor(Entity),
    /// A greeting: a full name (two or more capitalised words) may follow.
    Greeting,
}

const CONTEXT: &[(&str, Role)] = &[
    ("ssn", Role::Boost(Entity::UsSsn, 0.5)),
    ("social security", Role::Boost(Entity::UsSsn, 0.5)),
    ("ss#", Role::Boost(Entity::UsSsn, 0.5)),
    ("taxpayer", Role::Boost(Entity::UsSsn, 0.4)),
    ("phone", Role::Boost(Entity::Phone, 0.4)),
    ("tel", Role::Boost(Entity::Phone, 0.4)),
    ("telephone", Role::Boost(Entity::Phone, 0.4)),
    ("mobile", Role::Boost(Entity::Phone, 0.4)),
    ("cell", Role::Boost(Entity::Phone, 0.4)),
    ("call", Role::Boost(Entity::Phone, 0.3)),
    ("fax", Role::Boost(Entity::Phone, 0.4)),
    ("sms", Role::Boost(Entity::Phone, 0.4)),
    ("text me", Role::Boost(Entity::Phone, 0.4)),
    ("whatsapp", Role::Boost(Entity::Phone, 0.4)),
    ("contact", Role::Boost(Entity::Phone, 0.2)),
    ("card", Role::Boost(Entity::CreditCard, 0.05)),
    ("born", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("dob", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("d.o.b", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("date of birth", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("birth date", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("birthdate", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("birthday", Role::Boost(Entity::DateOfBirth, 0.6)),
    ("npi", Role::Boost(Entity::UsNpi, 0.6)),
    ("national provider", Role::Boost(Entity::UsNpi, 0.6)),
    ("version", Role::Boost(Entity::IpAddress, -0.5)),
    ("release", Role::Boost(Entity::IpAddress, -0.4)),
    ("build", Role::Boost(Entity::IpAddress, -0.5)),
    ("ver", Role::Boost(Entity::IpAddress, -0.5)),
    ("order", Role::Boost(Entity::Phone, -0.5)),
    ("invoice", Role::Boost(Entity::Phone, -0.5)),
    ("isbn", Role::Boost(Entity::Phone, -0.5)),
    ("tracking", Role::Boost(Entity::Phone, -0.3)),
    ("serial", Role::Boost(Entity::Phone, -0.3)),
    ("name is", Role::Anchor(Entity::Person)),
    ("named", Role::Anchor(Entity::Person)),
    ("dear", Role::Anchor(Entity::Person)),
    ("patient", Role::Anchor(Entity::Person)),
    ("signed", Role::Anchor(Entity::Person)),
    ("regards", Role::Anchor(Entity::Person)),
    ("sincerely", Role::Anchor(Entity::Person)),
    ("attn", Role::Anchor(Entity::Person)),
    ("patient name", Role::Anchor(Entity::Person)),
    ("hello", Role::Greeting),
    ("hi ", Role::Greeting),
    ("hi,", Role::Greeting),
    ("hey", Role::Greeting),
    ("thanks", Role::Greeting),
    ("mrn", Role::Anchor(Entity::MedicalRecordNumber)),
    ("medical record", Role::Anchor(Entity::MedicalRecordNumber)),
    (
        "medical record number",
        Role::Anchor(Entity::MedicalRecordNumber),
    ),
    ("patient id", Role::Anchor(Entity::MedicalRecordNumber)),
    ("chart number", Role::Anchor(Entity::MedicalRecordNumber)),
    ("passport", Role::Anchor(Entity::UsPassport)),
    ("passport number", Role::Anchor(Entity::UsPassport)),
    ("driver's license", Role::Anchor(Entity::UsDriverLicense)),
    ("drivers license", Role::Anchor(Entity::UsDriverLicense)),
    ("driver license", Role::Anchor(Entity::UsDriverLicense)),
    ("driver's licence", Role::Anchor(Entity::UsDriverLicense)),
    ("driving licence", Role::Anchor(Entity::UsDriverLicense)),
    ("license number", Role::Anchor(Entity::UsDriverLicense)),
    ("licence number", Role::Anchor(Entity::UsDriverLicense)),
    ("dl#", Role::Anchor(Entity::UsDriverLicense)),
];

/// How far before and after a finding its context words are looked for.
const BEFORE: usize = 48;
const AFTER: usize = 24;
/// How close before a value a word against it must be.
const NEAR_BEFORE: usize = 20;

pub struct Detector {
    entities: BTreeSet<Entity>,
    thresholds: HashMap<Entity, f32>,
    secrets: Secrets,
    names: &'static crate::names::Names,
    context: AhoCorasick,
    /// The role of each of `context`'s words.
    roles: Vec<Role>,
    patterns: Vec<(String, f32, Regex)>,
    deny: Option<(AhoCorasick, Vec<String>)>,
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

impl Detector {
    pub fn new(config: &DetectorConfig) -> Result<Self, DlpError> {
        let entities = config.entities.clone().unwrap_or_else(|| {
            Entity::ALL
                .iter()
                .copied()
                .filter(|e| *e != Entity::Custom)
                .collect()
        });
        let mut patterns = Vec::new();
        for p in &config.patterns {
            if !valid_name(&p.name) {
                return Err(DlpError::BadName(p.name.clone()));
            }
            let regex = regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .build()
                .map_err(|e| DlpError::BadPattern {
                    name: p.name.clone(),
                    reason: e.to_string(),
                })?;
            patterns.push((p.name.clone(), p.score, regex));
        }
        let mut terms = Vec::new();
        let mut labels = Vec::new();
        for list in &config.deny_lists {
            if !valid_name(&list.name) {
                return Err(DlpError::BadName(list.name.clone()));
            }
            let listed: Vec<&String> = list.terms.iter().filter(|t| !t.trim().is_empty()).collect();
            if listed.is_empty() {
                return Err(DlpError::EmptyList(list.name.clone()));
            }
            for t in listed {
                terms.push(t.trim().to_owned());
                labels.push(list.name.clone());
            }
        }
        let automaton = |e: aho_corasick::BuildError| DlpError::Automaton(e.to_string());
        let deny = if terms.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&terms)
                .map_err(automaton)?;
            Some((ac, labels))
        };
        // One pass finds every word: context words and credential keywords.
        let mut roles: Vec<(&str, Role)> = CONTEXT.to_vec();
        roles.extend(crate::secrets::KEYWORDS.iter().map(|k| (*k, Role::Keyword)));
        let context = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(roles.iter().map(|(w, _)| *w))
            .map_err(automaton)?;
        let roles = roles.into_iter().map(|(_, r)| r).collect();
        Ok(Self {
            entities,
            thresholds: config.thresholds.clone(),
            secrets: Secrets::new().map_err(automaton)?,
            names: crate::names::Names::shared().map_err(DlpError::Automaton)?,
            context,
            roles,
            patterns,
            deny,
        })
    }

    fn threshold(&self, e: Entity) -> f32 {
        self.thresholds
            .get(&e)
            .copied()
            .unwrap_or(DEFAULT_THRESHOLD)
    }

    /// Every sensitive value in `text`, in order, not overlapping, with
    /// byte ranges in `text` as given.
    pub fn detect(&self, text: &str) -> Vec<Finding> {
        let norm = Normalized::of(text);
        let t = norm.text();
        let s = t.as_bytes();
        let mut raw = Vec::new();
        crate::scan::structured(t, &mut raw);

        // Context words (whole words only) and credential keywords (which
        // may start a longer key name: `password_hash`).
        let mut context: Vec<(usize, usize, Role)> = Vec::new();
        let mut keywords: Vec<(usize, usize)> = Vec::new();
        for m in self.context.find_iter(t) {
            let role = self.roles[m.pattern().as_usize()];
            if let Role::Keyword = role {
                keywords.push((m.start(), m.end()));
                continue;
            }
            // Whole words: no letter just outside a word's letters (a
            // pattern ending in `,` or a space is complete as it is).
            let word_start = m.start() == 0 || !s[m.start() - 1].is_ascii_alphabetic();
            let word_end = m.end() >= s.len()
                || !s[m.end() - 1].is_ascii_alphabetic()
                || !s[m.end()].is_ascii_alphabetic();
            if word_start && word_end {
                context.push((m.start(), m.end(), role));
            }
        }
        self.secrets.scan(t, &keywords, &mut raw);
        if self.entities.contains(&Entity::Person) || self.entities.contains(&Entity::StreetAddress)
        {
            self.names.scan(t, &mut raw);
        }
        for &(_, end, role) in &context {
            let found = match role {
                Role::Anchor(entity) => anchored(s, end, entity),
                Role::Greeting => person_after(s, end, 2),
                _ => None,
            };
            raw.extend(found);
        }
        if !context.is_empty() {
            for f in &mut raw {
                let lo = f.start.saturating_sub(BEFORE);
                let hi = f.end + AFTER;
                // The strongest word for, plus the strongest against; a
                // word against counts only just before the value
                // (`version 10.0.0.1`).
                let (mut up, mut down): (f32, f32) = (0.0, 0.0);
                for &(cs, ce, role) in &context {
                    if let Role::Boost(entity, delta) = role
                        && entity == f.entity
                    {
                        if delta > 0.0 && ce >= lo && cs <= hi {
                            up = up.max(delta);
                        } else if delta < 0.0
                            && ce <= f.start
                            && ce + NEAR_BEFORE >= f.start
                            && s[ce..f.start]
                                .iter()
                                .all(|b| matches!(b, b' ' | b':' | b'=' | b'#' | b'-' | b'v'))
                        {
                            // Only right before it: `version 10.0.0.1`,
                            // `Order #037-8672867`.
                            down = down.min(delta);
                        }
                    }
                }
                f.score = (f.score + up + down).clamp(0.0, 1.0);
            }
        }

        for (name, score, regex) in &self.patterns {
            for m in regex.find_iter(t) {
                if m.start() < m.end() {
                    let mut f = Finding::new(Entity::Custom, m.start(), m.end(), *score);
                    f.label = Some(name.clone());
                    raw.push(f);
                }
            }
        }
        if let Some((ac, labels)) = &self.deny {
            for m in ac.find_iter(t) {
                let alnum = |i: usize| s[i].is_ascii_alphanumeric();
                if (m.start() > 0 && alnum(m.start() - 1)) || (m.end() < s.len() && alnum(m.end()))
                {
                    continue;
                }
                let mut f = Finding::new(Entity::Custom, m.start(), m.end(), 1.0);
                f.label = Some(labels[m.pattern().as_usize()].clone());
                raw.push(f);
            }
        }

        raw.retain(|f| {
            (f.entity == Entity::Custom || self.entities.contains(&f.entity))
                && f.score >= self.threshold(f.entity)
        });
        let mut kept = resolve_overlaps(raw);
        for f in &mut kept {
            let (start, end) = norm.original(f.start, f.end);
            f.start = start;
            f.end = end;
        }
        kept
    }
}

/// Keeps, among overlapping findings, the most confident (then the
/// longest); the result is sorted and disjoint.
fn resolve_overlaps(mut raw: Vec<Finding>) -> Vec<Finding> {
    raw.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(raw.len());
    for f in raw {
        match kept.last_mut() {
            Some(last) if f.start < last.end => {
                let better = f.score > last.score
                    || (f.score == last.score && f.end - f.start > last.end - last.start);
                if better {
                    *last = f;
                }
            }
            _ => kept.push(f),
        }
    }
    kept
}

/// The value after a context word: `MRN: 00482913`, `passport no.
/// 912803456`, `driver's license D1234-5678`.
fn anchored(s: &[u8], mut i: usize, entity: Entity) -> Option<Finding> {
    if entity == Entity::Person {
        return person_after(s, i, 1);
    }
    let limit = (i + 24).min(s.len());
    // Words and punctuation between the anchor and the value.
    loop {
        while i < limit
            && matches!(
                s[i],
                b' ' | b':' | b'#' | b'.' | b'=' | b'-' | b'"' | b'\'' | b'(' | b'\t'
            )
        {
            i += 1;
        }
        let rest = &s[i..limit];
        let filler = ["number", "num", "no", "is", "id"].iter().find(|w| {
            rest.len() > w.len()
                && rest[..w.len()].eq_ignore_ascii_case(w.as_bytes())
                && !rest[w.len()].is_ascii_alphanumeric()
        });
        match filler {
            Some(w) => i += w.len(),
            None => break,
        }
    }
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'-') && i - start <= 20 {
        i += 1;
    }
    while i > start && s[i - 1] == b'-' {
        i -= 1;
    }
    let value = &s[start..i];
    let digits = value.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = value.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let ok = match entity {
        Entity::MedicalRecordNumber => (5..=15).contains(&value.len()) && digits >= 4,
        Entity::UsPassport => {
            (6..=9).contains(&value.len())
                && digits >= 6
                && value.iter().all(|b| b.is_ascii_alphanumeric())
                && letters <= 2
        }
        Entity::UsDriverLicense => (5..=15).contains(&value.len()) && digits >= 4,
        _ => false,
    };
    // Named by its context: more certain than a shape alone.
    ok.then(|| Finding::new(entity, start, i, 0.9))
}

/// `Dear Saoirse Szymanski`, `patient: Thaddeus Vanterpool`: one to three
/// capitalised words (at least `min_words`) after a word that introduces a
/// person.
fn person_after(s: &[u8], mut i: usize, min_words: usize) -> Option<Finding> {
    while i < s.len() && matches!(s[i], b' ' | b':' | b',' | b'\n' | b'\t') && i < s.len() {
        i += 1;
    }
    let start = i;
    let mut end = i;
    let mut words = 0;
    while words < 3 && s.get(i).is_some_and(u8::is_ascii_uppercase) {
        let w = i;
        i += 1;
        while i < s.len() && (s[i].is_ascii_alphabetic() || s[i] == b'\'' || s[i] == b'-') {
            i += 1;
        }
        // `J.` initials count; acronyms and labels (`MRN`, `DOB`) do not.
        let word = &s[w..i];
        let label = (word.len() <= 3 && word.iter().all(u8::is_ascii_uppercase))
            || [
                &b"Name"[..],
                b"Number",
                b"The",
                b"Is",
                b"Was",
                b"Record",
                b"Patient",
            ]
            .contains(&word);
        if i - w == 1 && s.get(i) == Some(&b'.') {
            i += 1;
        } else if i - w < 2 || label {
            break;
        }
        end = i;
        words += 1;
        if s.get(i) != Some(&b' ') {
            break;
        }
        i += 1;
    }
    (words >= min_words.max(1)).then(|| Finding::new(Entity::Person, start, end, 0.8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(cfg: &DetectorConfig, text: &str) -> Vec<(String, String)> {
        Detector::new(cfg)
            .unwrap()
            .detect(text)
            .iter()
            .map(|f| (f.kind().to_owned(), text[f.start..f.end].to_owned()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn context_raises_and_lowers() {
        let d = DetectorConfig::default();
        assert_eq!(detect(&d, "ref 078051120"), []);
        assert_eq!(
            detect(&d, "my SSN is 078051120"),
            pairs(&[("US_SSN", "078051120")])
        );
        assert_eq!(detect(&d, "on 1985-03-04 we met"), []);
        assert_eq!(
            detect(&d, "DOB: 1985-03-04"),
            pairs(&[("DATE_OF_BIRTH", "1985-03-04")])
        );
        assert_eq!(
            detect(&d, "NPI 1234567893"),
            pairs(&[("US_NPI", "1234567893")])
        );
        assert_eq!(
            detect(&d, "ip 10.0.0.1"),
            pairs(&[("IP_ADDRESS", "10.0.0.1")])
        );
        assert_eq!(detect(&d, "release version 10.0.0.1"), []);
        assert_eq!(
            detect(&d, "cell 4155550132"),
            pairs(&[("PHONE", "4155550132")])
        );
        // Whole words only: "tel" in "telegraph" is not context.
        assert_eq!(detect(&d, "telegraph 4155550132"), []);
    }

    #[test]
    fn anchored_identifiers() {
        let d = DetectorConfig::default();
        assert_eq!(
            detect(&d, "Patient MRN: 00482913, seen today"),
            pairs(&[("MEDICAL_RECORD_NUMBER", "00482913")])
        );
        assert_eq!(
            detect(&d, "passport no. 912803456"),
            pairs(&[("US_PASSPORT", "912803456")])
        );
        assert_eq!(
            detect(&d, "Driver's license number is D123-4567-8901"),
            pairs(&[("US_DRIVER_LICENSE", "D123-4567-8901")])
        );
        assert_eq!(detect(&d, "passport photos are due"), []);
        assert_eq!(
            detect(&d, "Hi Saoirse Szymanski, thanks"),
            pairs(&[("PERSON", "Saoirse Szymanski")])
        );
        assert_eq!(detect(&d, "Hello, ISBN 978-0 and hi, Order #5"), []);
        assert_eq!(detect(&d, "this is his"), []);
    }

    #[test]
    fn evasions_are_found_at_their_original_position() {
        let d = DetectorConfig::default();
        let text = "mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ or ssn 078\u{200B}-05-1120";
        assert_eq!(
            detect(&d, text),
            pairs(&[
                ("EMAIL", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
                ("US_SSN", "078\u{200B}-05-1120")
            ])
        );
    }

    #[test]
    fn tenant_patterns_and_deny_lists() {
        let cfg = DetectorConfig {
            patterns: vec![CustomPattern {
                name: "CUSTOMER_ID".into(),
                regex: r"\bCUST-[0-9]{6}\b".into(),
                score: 0.9,
            }],
            deny_lists: vec![DenyList {
                name: "CODENAME".into(),
                terms: vec!["Project Falcon".into(), "bluebird".into()],
            }],
            ..DetectorConfig::default()
        };
        assert_eq!(
            detect(
                &cfg,
                "CUST-004211 asked about project falcon; bluebirds fly"
            ),
            pairs(&[
                ("CUSTOMER_ID", "CUST-004211"),
                ("CODENAME", "project falcon")
            ])
        );
        let bad = DetectorConfig {
            patterns: vec![CustomPattern {
                name: "X".into(),
                regex: "(".into(),
                score: 1.0,
            }],
            ..DetectorConfig::default()
        };
        assert!(matches!(
            Detector::new(&bad),
            Err(DlpError::BadPattern { .. })
        ));
        let bad = DetectorConfig {
            deny_lists: vec![DenyList {
                name: "lower".into(),
                terms: vec!["x".into()],
            }],
            ..DetectorConfig::default()
        };
        assert!(matches!(Detector::new(&bad), Err(DlpError::BadName(_))));
    }

    #[test]
    fn thresholds_and_entity_sets() {
        let only_email = DetectorConfig {
            entities: Some([Entity::Email].into()),
            ..DetectorConfig::default()
        };
        assert_eq!(
            detect(&only_email, "a@b.io 078-05-1120"),
            pairs(&[("EMAIL", "a@b.io")])
        );
        let strict = DetectorConfig {
            thresholds: [(Entity::UsSsn, 0.9)].into(),
            ..DetectorConfig::default()
        };
        assert_eq!(detect(&strict, "078-05-1120"), []);
        assert_eq!(
            detect(&strict, "SSN 078-05-1120"),
            pairs(&[("US_SSN", "078-05-1120")])
        );
    }

    /// Inputs built to be slow: each completes in linear time (a
    /// super-linear path would not finish at these sizes).
    #[test]
    fn hostile_inputs_stay_linear() {
        let evil = DetectorConfig {
            patterns: vec![CustomPattern {
                name: "EVIL".into(),
                regex: "(a+)+$".into(),
                score: 0.9,
            }],
            ..DetectorConfig::default()
        };
        let d = Detector::new(&evil).unwrap();
        let n = 200_000;
        for text in [
            format!("{}!", "a".repeat(n)),
            "@".repeat(n),
            "a@".repeat(n / 2),
            "1".repeat(n),
            "1-".repeat(n / 2),
            "1.".repeat(n / 2),
            ":".repeat(n),
            "a:".repeat(n / 2),
            "[".repeat(n),
            "password=".repeat(n / 9),
            "eyJ.".repeat(n / 4),
            "-----BEGIN ".repeat(n / 11),
            "Mr ".repeat(n / 3),
            "John ".repeat(n / 5),
            "1 Main ".repeat(n / 7),
            "\u{200B}".repeat(n / 3),
            "ｊ".repeat(n / 3),
        ] {
            let _ = d.detect(&text);
        }
    }

    #[test]
    fn overlaps_keep_the_most_confident() {
        let d = DetectorConfig::default();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(
            detect(&d, &format!("Authorization: Bearer {jwt}")),
            pairs(&[("JWT", jwt)])
        );
    }
}
