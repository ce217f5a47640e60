//! A seeded, deterministic labelled corpus and the precision / recall of a
//! detector on it.
//!
//! Samples are realistic snippets in several formats — prose, chat, JSON,
//! code, logs, CSV, e-mail — with entities in many formats, and hard
//! negatives that look like entities but are not (order numbers,
//! timestamps, UUIDs, version strings, ISBNs, hashes, arithmetic). About a
//! third of the people's names come from a held-out list that the detector
//! does not ship, so that recall is not just the lists looked up again.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::detector::Detector;
use crate::entity::Entity;
use crate::scan::{luhn_check_digit, mod97};

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub format: &'static str,
    pub text: String,
    /// Gold spans: entity and byte range.
    pub spans: Vec<(Entity, usize, usize)>,
}

/// xorshift64*: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(alphabet))).collect()
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";

const FIRST: &[&str] = &[
    "James", "Maria", "Wei", "Priya", "Carlos", "Aisha", "John", "Emma", "Hiroshi", "Fatima",
    "David", "Sofia", "Kwame", "Olga", "Lucas", "Mei", "Rahul", "Elena", "Omar", "Grace",
];
const LAST: &[&str] = &[
    "Smith", "Garcia", "Chen", "Patel", "Nguyen", "Okafor", "Mueller", "Rossi", "Kim", "Johnson",
    "Tanaka", "Silva", "Kowalski", "Ivanov", "Haddad", "Brown", "Dubois", "Jensen", "Khan",
    "Walsh",
];
/// Names the detector does not ship.
const HELD_OUT_FIRST: &[&str] = &[
    "Thaddeus",
    "Marisol",
    "Ignatius",
    "Saoirse",
    "Bartholomew",
    "Ximena",
    "Leopold",
    "Anouk",
    "Cornelius",
    "Esperanza",
    "Florian",
    "Ottilie",
    "Dashiell",
    "Rosalind",
    "Evander",
];
const HELD_OUT_LAST: &[&str] = &[
    "Abernathy",
    "Quiroga",
    "Vanterpool",
    "Szymanski",
    "Okonjo",
    "Delacroix",
    "Thistlewood",
    "Brannigan",
    "Kowalczyk",
    "Ferreira-Lind",
    "Mbeki",
    "Oyelaran",
    "Castellanos",
    "Whitlock",
];
const STREETS: &[&str] = &[
    "Baker",
    "Main",
    "Oak",
    "Maple",
    "Pennsylvania",
    "Market",
    "Elm",
    "Sunset",
    "Cedar Hill",
    "Lake Shore",
];
const SUFFIXES: &[&str] = &[
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Boulevard",
    "Blvd",
    "Lane",
    "Drive",
    "Court",
    "Way",
];
const CITIES: &[(&str, &str)] = &[
    ("Springfield", "IL"),
    ("Austin", "TX"),
    ("Portland", "OR"),
    ("Boston", "MA"),
    ("San Jose", "CA"),
];
const DOMAINS: &[&str] = &[
    "example.com",
    "acme.io",
    "mail.example.co.uk",
    "corp.example.org",
    "health-system.net",
];

/// A value of `entity`, in one of its formats, with the context words it
/// needs (prefix, value, suffix); the value is the labelled span.
fn value(rng: &mut Rng, entity: Entity) -> (String, String) {
    let name = |rng: &mut Rng| {
        if rng.chance(33) {
            format!("{} {}", rng.pick(HELD_OUT_FIRST), rng.pick(HELD_OUT_LAST))
        } else {
            format!("{} {}", rng.pick(FIRST), rng.pick(LAST))
        }
    };
    match entity {
        Entity::Email => {
            let local = match rng.below(4) {
                0 => format!("{}.{}", rng.pick(FIRST), rng.pick(LAST)).to_lowercase(),
                1 => format!("{}{}", rng.pick(FIRST).to_lowercase(), rng.digits(2)),
                2 => format!("{}+news", rng.pick(LAST).to_lowercase()),
                _ => format!("{}_{}", rng.pick(FIRST), rng.digits(3)),
            };
            (String::new(), format!("{local}@{}", rng.pick(DOMAINS)))
        }
        Entity::Phone => {
            let area = 200 + rng.below(799);
            let exch = 200 + rng.below(799);
            let line = rng.digits(4);
            let v = match rng.below(7) {
                0 => format!("({area}) {exch}-{line}"),
                1 => format!("{area}-{exch}-{line}"),
                2 => format!("{area}.{exch}.{line}"),
                3 => format!("+1 {area} {exch} {line}"),
                4 => format!("+44 20 {} {}", rng.digits(4), rng.digits(4)),
                5 => format!("+49 30 {}", rng.digits(7)),
                _ => format!(
                    "+33 6 {} {} {} {}",
                    rng.digits(2),
                    rng.digits(2),
                    rng.digits(2),
                    rng.digits(2)
                ),
            };
            ("phone: ".into(), v)
        }
        Entity::UsSsn => {
            let area = loop {
                let a = 1 + rng.below(899);
                if a != 666 {
                    break a;
                }
            };
            let group = 1 + rng.below(99);
            let serial = 1 + rng.below(9999);
            let v = if rng.chance(20) {
                format!("{area:03}{group:02}{serial:04}")
            } else {
                format!("{area:03}-{group:02}-{serial:04}")
            };
            ("SSN ".into(), v)
        }
        Entity::CreditCard => {
            let (prefix, len): (String, usize) = match rng.below(4) {
                0 => ("4".into(), 16),
                1 => (format!("5{}", 1 + rng.below(5)), 16),
                2 => (if rng.chance(50) { "34" } else { "37" }.into(), 15),
                _ => ("6011".into(), 16),
            };
            let mut digits: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            while digits.len() < len - 1 {
                digits.push(rng.below(10) as u8);
            }
            digits.push(luhn_check_digit(&digits));
            let plain: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            let v = match (len, rng.below(3)) {
                (15, 0) => format!("{} {} {}", &plain[..4], &plain[4..10], &plain[10..]),
                (16, 0) => format!(
                    "{} {} {} {}",
                    &plain[..4],
                    &plain[4..8],
                    &plain[8..12],
                    &plain[12..]
                ),
                (16, 1) => format!(
                    "{}-{}-{}-{}",
                    &plain[..4],
                    &plain[4..8],
                    &plain[8..12],
                    &plain[12..]
                ),
                _ => plain,
            };
            ("card ".into(), v)
        }
        Entity::Iban => {
            let (cc, len) = *rng.pick(&[
                ("DE", 22usize),
                ("GB", 22),
                ("FR", 27),
                ("NL", 18),
                ("ES", 24),
            ]);
            let bban = if cc == "GB" || cc == "NL" {
                format!(
                    "{}{}",
                    rng.chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                    rng.digits(len - 8)
                )
            } else {
                rng.digits(len - 4)
            };
            let check = 98 - mod97(format!("{bban}{cc}00").bytes());
            let raw = format!("{cc}{check:02}{bban}");
            let v = if rng.chance(50) {
                raw.as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                raw
            };
            ("IBAN ".into(), v)
        }
        Entity::IpAddress => {
            let v = if rng.chance(70) {
                format!(
                    "{}.{}.{}.{}",
                    11 + rng.below(200),
                    rng.below(256),
                    rng.below(256),
                    1 + rng.below(254)
                )
            } else {
                let g: Vec<String> = (0..8).map(|_| format!("{:x}", rng.below(65536))).collect();
                if rng.chance(50) {
                    g.join(":")
                } else {
                    format!("2001:db8::{}:{}", g[6], g[7])
                }
            };
            ("from ".into(), v)
        }
        Entity::DateOfBirth => {
            let (y, m, d) = (1940 + rng.below(65), 1 + rng.below(12), 1 + rng.below(28));
            let v = match rng.below(3) {
                0 => format!("{y}-{m:02}-{d:02}"),
                1 => format!("{m:02}/{d:02}/{y}"),
                _ => format!("{d}.{m}.{y}"),
            };
            (
                rng.pick(&["DOB: ", "date of birth ", "born "]).to_string(),
                v,
            )
        }
        Entity::MedicalRecordNumber => (
            rng.pick(&["MRN: ", "medical record number ", "MRN #"])
                .to_string(),
            rng.digits(8),
        ),
        Entity::UsNpi => {
            let mut digits: Vec<u8> = vec![1];
            digits.extend((0..8).map(|_| rng.below(10) as u8));
            let mut with_prefix = vec![8, 0, 8, 4, 0];
            with_prefix.extend(&digits);
            digits.push(luhn_check_digit(&with_prefix));
            (
                "NPI ".into(),
                digits.iter().map(|d| char::from(b'0' + d)).collect(),
            )
        }
        Entity::UsPassport => ("passport no. ".into(), rng.digits(9)),
        Entity::UsDriverLicense => (
            "driver's license ".into(),
            format!("{}{}", rng.chars(b"ABCDEFGHJKLMNPRSTWY", 1), rng.digits(8)),
        ),
        Entity::Person => (
            rng.pick(&["", "", "Dear ", "patient "]).to_string(),
            name(rng),
        ),
        Entity::StreetAddress => {
            let street = format!(
                "{} {} {}",
                1 + rng.below(9899),
                rng.pick(STREETS),
                rng.pick(SUFFIXES)
            );
            let v = if rng.chance(40) {
                let (city, st) = rng.pick(CITIES);
                format!("{street}, {city}, {st} {}", rng.digits(5))
            } else {
                street
            };
            ("ship to ".into(), v)
        }
        Entity::AwsAccessKey => (String::new(), format!("AKIA{}", rng.chars(UPPER_ALNUM, 16))),
        Entity::GoogleApiKey => (String::new(), format!("AIza{}", rng.chars(B64URL, 35))),
        Entity::GithubToken => (String::new(), format!("ghp_{}", rng.chars(ALNUM, 36))),
        Entity::GitlabToken => (String::new(), format!("glpat-{}", rng.chars(ALNUM, 20))),
        Entity::SlackToken => (
            String::new(),
            format!(
                "xoxb-{}-{}-{}",
                rng.digits(12),
                rng.digits(13),
                rng.chars(ALNUM, 24)
            ),
        ),
        Entity::StripeKey => (String::new(), format!("sk_live_{}", rng.chars(ALNUM, 24))),
        Entity::OpenaiKey => (String::new(), format!("sk-proj-{}", rng.chars(B64URL, 48))),
        Entity::AnthropicKey => (
            String::new(),
            format!("sk-ant-api03-{}", rng.chars(B64URL, 93)),
        ),
        Entity::Jwt => (
            "Bearer ".into(),
            format!(
                "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
                rng.chars(B64URL, 40),
                rng.chars(B64URL, 43)
            ),
        ),
        Entity::PrivateKey => (
            String::new(),
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n{}\n-----END PRIVATE KEY-----",
                rng.chars(ALNUM, 64),
                rng.chars(ALNUM, 40)
            ),
        ),
        Entity::GenericSecret => (
            rng.pick(&[
                "password=",
                "db_password: ",
                "\"client_secret\": \"",
                "API_TOKEN=",
            ])
            .to_string(),
            format!(
                "{}{}!{}",
                rng.chars(ALNUM, 8),
                rng.digits(3),
                rng.chars(ALNUM, 6)
            ),
        ),
        Entity::Custom => (String::new(), String::new()),
    }
}

/// Text that looks like an entity and is not one.
fn hard_negative(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => format!("Order #{}-{}", rng.digits(3), rng.digits(7)),
        1 => format!(
            "at 2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
        2 => format!(
            "id {}-{}-4{}-a{}-{}",
            rng.chars(HEX, 8),
            rng.chars(HEX, 4),
            rng.chars(HEX, 3),
            rng.chars(HEX, 3),
            rng.chars(HEX, 12)
        ),
        3 => format!(
            "version {}.{}.{}",
            rng.below(20),
            rng.below(50),
            rng.below(100)
        ),
        4 => format!(
            "ISBN 978-{}-{}-{}-{}",
            rng.below(10),
            rng.digits(3),
            rng.digits(5),
            rng.below(10)
        ),
        5 => format!("sha256 {}", rng.chars(HEX, 64)),
        6 => format!(
            "{} + {} = {}",
            rng.below(1000),
            rng.below(1000),
            rng.below(2000)
        ),
        7 => format!("invoice INV-{}", rng.digits(8)),
        8 => format!("tracking 1Z{}", rng.chars(UPPER_ALNUM, 16)),
        9 => format!("commit {}", rng.chars(HEX, 40)),
        10 => format!(
            "{} units at ${}.{}",
            rng.below(500),
            rng.below(100),
            rng.digits(2)
        ),
        _ => format!(
            "build {}.{}.{}.{}",
            rng.below(10),
            rng.below(10),
            rng.below(100),
            rng.below(1000)
        ),
    }
}

const FORMATS: &[&str] = &["prose", "chat", "json", "code", "log", "csv", "email"];

/// `n` samples from `seed`.
pub fn corpus(seed: u64, n: usize) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    let kinds: Vec<Entity> = Entity::ALL
        .iter()
        .copied()
        .filter(|e| *e != Entity::Custom)
        .collect();
    (0..n)
        .map(|_| {
            let format = *rng.pick(FORMATS);
            let mut text = String::new();
            let mut spans = Vec::new();
            let parts = 1 + rng.below(3);
            let (open, sep, close) = match format {
                "prose" => ("Note: ", " Also, ", "."),
                "chat" => ("user: hi, ", "\nuser: and ", "\nassistant: noted"),
                "json" => ("{\"note\": \"", "\", \"more\": \"", "\"}"),
                "code" => ("# config\nvalue = \"", "\"\nother = \"", "\"\n"),
                "log" => ("2024-06-01T10:00:00Z INFO request ", " | ", " status=200"),
                "csv" => ("id,value\n1,", "\n2,", "\n"),
                _ => ("Subject: follow-up\n\nHello, ", "\n\nAlso ", "\n\nThanks"),
            };
            text.push_str(open);
            for i in 0..parts {
                if i > 0 {
                    text.push_str(sep);
                }
                if rng.chance(25) {
                    text.push_str(&hard_negative(&mut rng));
                    continue;
                }
                let entity = *rng.pick(&kinds);
                let (prefix, v) = value(&mut rng, entity);
                text.push_str(&prefix);
                let start = text.len();
                text.push_str(&v);
                spans.push((entity, start, text.len()));
                if entity == Entity::GenericSecret && prefix.ends_with('"') {
                    text.push('"');
                }
            }
            text.push_str(close);
            Sample {
                format,
                text,
                spans,
            }
        })
        .collect()
}

/// True and false positives and false negatives of one entity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
}

impl Counts {
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The corpus as JSON lines, for other tools (Presidio): the text and its
/// spans with byte and character offsets.
pub fn jsonl(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let spans: Vec<serde_json::Value> = s
            .spans
            .iter()
            .map(|&(e, a, b)| {
                serde_json::json!({
                    "entity": e.name(), "start": a, "end": b,
                    "char_start": s.text[..a].chars().count(),
                    "char_end": s.text[..b].chars().count(),
                })
            })
            .collect();
        out.push_str(
            &serde_json::json!({"format": s.format, "text": s.text, "spans": spans}).to_string(),
        );
        out.push('\n');
    }
    out
}

/// A finding matches a gold span of the same entity it overlaps.
pub fn evaluate(detector: &Detector, samples: &[Sample]) -> BTreeMap<Entity, Counts> {
    let mut counts: BTreeMap<Entity, Counts> = BTreeMap::new();
    for s in samples {
        let found = detector.detect(&s.text);
        let overlaps = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        for &(entity, start, end) in &s.spans {
            let hit = found
                .iter()
                .any(|f| f.entity == entity && overlaps((f.start, f.end), (start, end)));
            let c = counts.entry(entity).or_default();
            if hit { c.tp += 1 } else { c.fn_ += 1 }
        }
        for f in &found {
            let gold = s
                .spans
                .iter()
                .any(|&(e, a, b)| e == f.entity && overlaps((f.start, f.end), (a, b)));
            if !gold {
                counts.entry(f.entity).or_default().fp += 1;
            }
        }
    }
    counts
}

/// The mistakes for one entity: missed gold values and false findings,
/// each with the sample it is in, for looking into.
pub fn mistakes(detector: &Detector, samples: &[Sample], entity: Entity) -> Vec<String> {
    let mut out = Vec::new();
    for s in samples {
        let found = detector.detect(&s.text);
        let overlaps = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        for &(e, start, end) in &s.spans {
            if e == entity
                && !found
                    .iter()
                    .any(|f| f.entity == e && overlaps((f.start, f.end), (start, end)))
            {
                let other: Vec<String> = found
                    .iter()
                    .filter(|f| overlaps((f.start, f.end), (start, end)))
                    .map(|f| format!("{} {:.2}", f.entity, f.score))
                    .collect();
                out.push(format!(
                    "missed {:?} (found instead: {other:?}) in {:?}",
                    &s.text[start..end],
                    s.text
                ));
            }
        }
        for f in found.iter().filter(|f| f.entity == entity) {
            if !s
                .spans
                .iter()
                .any(|&(e, a, b)| e == entity && overlaps((f.start, f.end), (a, b)))
            {
                out.push(format!(
                    "false {:?} ({:.2}) in {:?}",
                    &s.text[f.start..f.end],
                    f.score,
                    s.text
                ));
            }
        }
    }
    out
}

/// The report as a Markdown table.
pub fn table(counts: &BTreeMap<Entity, Counts>) -> String {
    let mut out = String::from(
        "| entity | precision | recall | F1 | TP | FP | FN |\n|---|---|---|---|---|---|---|\n",
    );
    for (e, c) in counts {
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            e.name(),
            c.precision(),
            c.recall(),
            c.f1(),
            c.tp,
            c.fp,
            c.fn_
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorConfig;

    #[test]
    fn the_corpus_is_deterministic_and_labelled_correctly() {
        let a = corpus(7, 200);
        assert_eq!(a, corpus(7, 200));
        assert_ne!(a, corpus(8, 200));
        for s in &a {
            for &(e, start, end) in &s.spans {
                assert!(
                    start < end && end <= s.text.len() && s.text.is_char_boundary(start),
                    "{e:?} in {s:?}"
                );
            }
        }
    }

    #[test]
    fn quality_targets_hold_on_a_small_corpus() {
        let d = Detector::new(&DetectorConfig::default()).unwrap();
        let counts = evaluate(&d, &corpus(42, 2000));
        let table = table(&counts);
        eprintln!("{table}");
        for e in [
            Entity::Phone,
            Entity::UsSsn,
            Entity::IpAddress,
            Entity::UsPassport,
            Entity::Person,
            Entity::StreetAddress,
            Entity::Jwt,
            Entity::GenericSecret,
        ] {
            for m in mistakes(&d, &corpus(42, 2000), e).iter().take(6) {
                eprintln!("{e}: {m}");
            }
        }
        for (e, c) in &counts {
            let structured = !matches!(e, Entity::Person | Entity::StreetAddress);
            if structured {
                assert!(c.recall() >= 0.97, "{table}");
            } else {
                assert!(c.recall() >= 0.8, "{table}");
            }
        }
    }
}
