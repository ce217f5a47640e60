//! What happens to what was found: redact, mask, tokenize, block or
//! detect — per entity, per tenant — and the restoration of tokenized
//! values in what the client receives, streams included.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::detector::Detector;
use crate::entity::{Entity, Finding};

/// What to do with a kind of value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// A typed placeholder (`[EMAIL_1]`), the same for the same value
    /// within a request.
    Redact,
    /// Most characters replaced by `*`; cards, SSNs, phone numbers and
    /// IBANs keep their last four.
    Mask,
    /// A placeholder to the provider; the original restored in what the
    /// client receives.
    Tokenize,
    /// The request is refused, naming the kinds found (never the values).
    Block,
    /// Recorded only.
    Detect,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Redact => "redact",
            Self::Mask => "mask",
            Self::Tokenize => "tokenize",
            Self::Block => "block",
            Self::Detect => "detect",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Redact,
            Self::Mask,
            Self::Tokenize,
            Self::Block,
            Self::Detect,
        ]
        .into_iter()
        .find(|a| a.name() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tenant's actions: one per kind (entity name, custom label, or a class
/// — `SECRET`, `PII`, `PHI`), and a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default: Action,
    pub by_kind: HashMap<String, Action>,
}

impl Policy {
    pub fn new(default: Action) -> Self {
        Self {
            default,
            by_kind: HashMap::new(),
        }
    }

    pub fn with(mut self, kind: &str, action: Action) -> Self {
        self.by_kind.insert(kind.to_owned(), action);
        self
    }

    /// The action for a finding: its kind's, else its class's, else the
    /// default.
    pub fn action(&self, f: &Finding) -> Action {
        let class = match f.entity.class() {
            crate::entity::Class::Pii => "PII",
            crate::entity::Class::Phi => "PHI",
            crate::entity::Class::Secret => "SECRET",
            crate::entity::Class::Custom => "CUSTOM",
        };
        self.by_kind
            .get(f.kind())
            .or_else(|| self.by_kind.get(class))
            .copied()
            .unwrap_or(self.default)
    }
}

/// The longest placeholder a restorer waits for.
const MAX_PLACEHOLDER: usize = 64;

/// One request's protection: placeholders numbered per kind and stable
/// for a value, the tokenized originals, and counts by kind and action.
/// The originals live only here and in the [`Restorer`], and are
/// overwritten with zeros when both are gone.
#[derive(Default)]
pub struct Session {
    numbers: HashMap<String, u32>,
    /// Placeholder-shaped text the request itself contains: never used,
    /// so that restoring cannot turn the caller's own text into a value.
    reserved: std::collections::HashSet<String>,
    placeholders: HashMap<(String, String), String>,
    tokens: TokenMap,
    counts: BTreeMap<(String, Action), u64>,
    blocked: BTreeSet<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("counts", &self.counts)
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `policy` to everything `detector` finds in `text`.
    pub fn protect<'t>(
        &mut self,
        detector: &Detector,
        policy: &Policy,
        text: &'t str,
    ) -> Cow<'t, str> {
        let findings = detector.detect(text);
        self.apply(policy, text, &findings)
    }

    /// Applies `policy` to every string of a JSON body the provider would
    /// see (see [`crate::json`]): placeholders are first reserved against
    /// every string of the body, then each string is protected. `None`
    /// when nothing changed.
    pub fn protect_json(
        &mut self,
        detector: &Detector,
        policy: &Policy,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, crate::json::JsonError> {
        use crate::json::{MAX_DEPTH, rewrite_strings, structural};
        // Only a body with placeholder-shaped text (`[` then a capital)
        // needs the reservation pass; JSON's own `[{` and `["` do not.
        // (An escaped `\u005b` could be one too.)
        let shaped = memchr::memchr_iter(b'[', body)
            .any(|i| body.get(i + 1).is_some_and(u8::is_ascii_uppercase))
            || memchr::memmem::find(body, b"\\u005").is_some();
        if shaped {
            rewrite_strings(body, MAX_DEPTH, &structural, &mut |s| {
                self.reserve(s);
                None
            })?;
        }
        rewrite_strings(body, MAX_DEPTH, &structural, &mut |s| match self
            .protect(detector, policy, s)
        {
            Cow::Owned(changed) => Some(changed),
            Cow::Borrowed(_) => None,
        })
    }

    /// Notes the placeholder-shaped strings (`[EMAIL_3]`) in `text`, so
    /// that no placeholder of this request is the same as text the caller
    /// wrote. Call it for every text of a request before protecting any;
    /// [`apply`](Self::apply) calls it for its own text.
    pub fn reserve(&mut self, text: &str) {
        let s = text.as_bytes();
        for open in memchr::memchr_iter(b'[', s) {
            let mut j = open + 1;
            while j < s.len()
                && (s[j].is_ascii_uppercase() || s[j].is_ascii_digit() || s[j] == b'_')
                && j - open < MAX_PLACEHOLDER
            {
                j += 1;
            }
            if j < s.len() && s[j] == b']' && j > open + 1 {
                self.reserved.insert(text[open..=j].to_owned());
            }
        }
    }

    /// Applies `policy` to `findings` (from `text`, sorted, disjoint).
    pub fn apply<'t>(
        &mut self,
        policy: &Policy,
        text: &'t str,
        findings: &[Finding],
    ) -> Cow<'t, str> {
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        self.reserve(text);
        let mut out = String::new();
        let mut copied = 0;
        for f in findings {
            let action = policy.action(f);
            *self
                .counts
                .entry((f.kind().to_owned(), action))
                .or_default() += 1;
            let value = &text[f.start..f.end];
            let replacement = match action {
                Action::Detect => continue,
                Action::Block => {
                    self.blocked.insert(f.kind().to_owned());
                    continue;
                }
                Action::Redact => self.placeholder(f.kind(), value),
                Action::Tokenize => {
                    let p = self.placeholder(f.kind(), value);
                    self.tokens
                        .0
                        .entry(p.clone())
                        .or_insert_with(|| value.to_owned());
                    p
                }
                Action::Mask => mask(value, f.entity),
            };
            out.push_str(&text[copied..f.start]);
            out.push_str(&replacement);
            copied = f.end;
        }
        if copied == 0 && out.is_empty() {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    fn placeholder(&mut self, kind: &str, value: &str) -> String {
        let key = (kind.to_owned(), value.to_owned());
        if let Some(p) = self.placeholders.get(&key) {
            return p.clone();
        }
        let n = self.numbers.entry(kind.to_owned()).or_default();
        let p = loop {
            *n += 1;
            let p = format!("[{kind}_{n}]");
            if !self.reserved.contains(&p) {
                break p;
            }
        };
        self.placeholders.insert(key, p.clone());
        p
    }

    /// The kinds whose action is `block`, when any was found.
    pub fn blocked(&self) -> Option<Vec<&str>> {
        (!self.blocked.is_empty()).then(|| self.blocked.iter().map(String::as_str).collect())
    }

    /// How many values of each kind got each action.
    pub fn counts(&self) -> &BTreeMap<(String, Action), u64> {
        &self.counts
    }

    /// Whether anything was tokenized (and so must be restored).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.0.is_empty()
    }

    /// The restorer for the response, holding the tokenized originals.
    pub fn restorer(&mut self) -> Restorer {
        Restorer {
            map: Arc::new(std::mem::take(&mut self.tokens)),
            pending: String::new(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for ((_, value), _) in self.placeholders.drain() {
            zero(value);
        }
    }
}

/// Placeholder → original. Zeroed when dropped.
#[derive(Default)]
struct TokenMap(HashMap<String, String>);

impl Drop for TokenMap {
    fn drop(&mut self) {
        for (_, original) in self.0.drain() {
            zero(original);
        }
    }
}

/// Overwrites a string's bytes before its memory is freed.
fn zero(s: String) {
    let mut bytes = s.into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

fn mask(value: &str, entity: Entity) -> String {
    if entity == Entity::Email
        && let Some((local, domain)) = value.split_once('@')
    {
        let first = local.chars().next().map(String::from).unwrap_or_default();
        return format!("{first}***@{domain}");
    }
    let keep = entity.mask_keeps();
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen > total.saturating_sub(keep) {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

/// Puts tokenized originals back into what the client receives. For a
/// stream, [`push`](Self::push) each piece of text as it arrives: it
/// returns what can be sent now and holds back only a tail that could
/// still become a placeholder.
#[derive(Clone)]
pub struct Restorer {
    map: Arc<TokenMap>,
    pending: String,
}

impl fmt::Debug for Restorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restorer")
            .field("placeholders", &self.map.0.len())
            .finish_non_exhaustive()
    }
}

impl Restorer {
    /// A restorer that restores nothing.
    pub fn empty() -> Self {
        Self {
            map: Arc::new(TokenMap::default()),
            pending: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.0.is_empty()
    }

    /// Restores a whole text.
    pub fn restore<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.is_empty() || !text.contains('[') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let rest = self.scan(text, &mut out, true);
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// The next piece of a stream; returns what can be sent now.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.is_empty() {
            return chunk.to_owned();
        }
        let mut input = std::mem::take(&mut self.pending);
        input.push_str(chunk);
        let mut out = String::with_capacity(input.len());
        let held = self.scan(&input, &mut out, false).to_owned();
        self.pending = held;
        zero(input);
        out
    }

    /// The end of the stream: whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Copies `text` to `out` with placeholders restored; returns the tail
    /// that could still complete a placeholder (empty when `complete`).
    fn scan<'t>(&self, text: &'t str, out: &mut String, complete: bool) -> &'t str {
        let s = text.as_bytes();
        let mut copied = 0;
        let mut i = 0;
        while let Some(off) = memchr::memchr(b'[', &s[i..]) {
            let open = i + off;
            let mut j = open + 1;
            while j < s.len()
                && (s[j].is_ascii_uppercase() || s[j].is_ascii_digit() || s[j] == b'_')
                && j - open < MAX_PLACEHOLDER
            {
                j += 1;
            }
            if j == s.len() {
                // Could this still become one of ours?
                let prefix = &text[open..];
                if !complete && self.map.0.keys().any(|k| k.starts_with(prefix)) {
                    out.push_str(&text[copied..open]);
                    return &text[open..];
                }
                break;
            }
            if s[j] == b']' {
                if let Some(original) = self.map.0.get(&text[open..=j]) {
                    out.push_str(&text[copied..open]);
                    out.push_str(original);
                    copied = j + 1;
                }
                i = j + 1;
            } else {
                i = open + 1;
            }
        }
        out.push_str(&text[copied..]);
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorConfig;

    fn detector() -> Detector {
        Detector::new(&DetectorConfig::default()).unwrap()
    }

    const TEXT: &str =
        "Email jane@acme.io or jane@acme.io, card 4111 1111 1111 1111, ssn 078-05-1120.";

    #[test]
    fn each_action() {
        let d = detector();
        let redact = Policy::new(Action::Redact);
        let mut s = Session::new();
        assert_eq!(
            s.protect(&d, &redact, TEXT),
            "Email [EMAIL_1] or [EMAIL_1], card [CREDIT_CARD_1], ssn [US_SSN_1]."
        );
        assert_eq!(s.counts().get(&("EMAIL".into(), Action::Redact)), Some(&2));
        assert!(!s.has_tokens());

        let mask = Policy::new(Action::Mask);
        assert_eq!(
            Session::new().protect(&d, &mask, TEXT),
            "Email j***@acme.io or j***@acme.io, card **** **** **** 1111, ssn ***-**-1120."
        );

        let block = Policy::new(Action::Detect)
            .with("US_SSN", Action::Block)
            .with("PII", Action::Detect);
        let mut s = Session::new();
        let out = s.protect(&d, &block, TEXT);
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(s.blocked(), Some(vec!["US_SSN"]));

        let tokenize = Policy::new(Action::Redact).with("EMAIL", Action::Tokenize);
        let mut s = Session::new();
        let sent = s.protect(&d, &tokenize, TEXT).into_owned();
        assert_eq!(
            sent,
            "Email [EMAIL_1] or [EMAIL_1], card [CREDIT_CARD_1], ssn [US_SSN_1]."
        );
        let r = s.restorer();
        assert_eq!(
            r.restore("Reply to [EMAIL_1] about [CREDIT_CARD_1]; [EMAIL_2] is unknown"),
            "Reply to jane@acme.io about [CREDIT_CARD_1]; [EMAIL_2] is unknown"
        );
    }

    #[test]
    fn numbering_is_per_kind_and_stable_across_texts_of_a_request() {
        let d = detector();
        let p = Policy::new(Action::Tokenize);
        let mut s = Session::new();
        assert_eq!(s.protect(&d, &p, "a@x.io b@x.io"), "[EMAIL_1] [EMAIL_2]");
        assert_eq!(
            s.protect(&d, &p, "again b@x.io, new c@x.io"),
            "again [EMAIL_2], new [EMAIL_3]"
        );
        let r = s.restorer();
        assert_eq!(r.restore("[EMAIL_3][EMAIL_1]"), "c@x.ioa@x.io");
    }

    /// A tiny deterministic generator (xorshift), so the test needs no
    /// dependency and fails the same way every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn tokenize_then_restore_is_the_identity_for_any_split_of_the_stream() {
        let d = detector();
        let p = Policy::new(Action::Tokenize);
        let pieces = [
            "jane@acme.io",
            "078-05-1120",
            "4111 1111 1111 1111",
            "+44 20 7946 0958",
            " and ",
            "[",
            "]",
            "[EMAIL",
            "_1]",
            "ünïcödé ",
            "[NOT_OURS_9]",
            "\n",
            "x",
            "[[",
            "192.168.0.1",
            "Ｘ",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..500 {
            let n = 1 + rng.below(12);
            let original: String = (0..n).map(|_| pieces[rng.below(pieces.len())]).collect();
            let mut s = Session::new();
            s.reserve(&original);
            let sent = s.protect(&d, &p, &original).into_owned();
            let mut r = s.restorer();
            // The model echoes what it was sent; the stream splits it
            // anywhere (on character boundaries).
            let bounds: Vec<usize> = sent
                .char_indices()
                .map(|(i, _)| i)
                .chain([sent.len()])
                .collect();
            let mut cuts: Vec<usize> = (0..rng.below(6))
                .map(|_| bounds[rng.below(bounds.len())])
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut received = String::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([sent.len()]) {
                received.push_str(&r.push(&sent[last..c]));
                last = c;
            }
            received.push_str(&r.finish());
            assert_eq!(received, original, "round {round}: sent {sent:?}");
            // And the whole-text restorer agrees.
            assert_eq!(r.restore(&sent), original, "round {round}");
        }
    }

    #[test]
    fn json_bodies_are_protected_in_place() {
        let d = detector();
        let body = r#"{"model":"gpt","messages":[{"role":"user","content":"I am jane@acme.io"},
            {"role":"assistant","tool_calls":[{"id":"c1","function":{"name":"mail","arguments":"{\"to\":\"jane@acme.io\"}"}}]},
            {"role":"user","content":[{"type":"text","text":"ssn 078-05-1120"}]}],"metadata":{"owner":"bob@acme.io"},"temperature":0.70}"#;
        let mut s = Session::new();
        let policy = Policy::new(Action::Tokenize).with("US_SSN", Action::Redact);
        let out = s
            .protect_json(&d, &policy, body.as_bytes())
            .unwrap()
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("jane@acme.io") && !out.contains("078-05") && !out.contains("bob@"),
            "{out}"
        );
        assert!(out.contains(r#""content":"I am [EMAIL_1]""#), "{out}");
        assert!(out.contains(r#"{\"to\":\"[EMAIL_1]\"}"#), "{out}");
        assert!(out.contains(r#""text":"ssn [US_SSN_1]""#), "{out}");
        assert!(
            out.ends_with(r#""owner":"[EMAIL_2]"},"temperature":0.70}"#),
            "{out}"
        );
        let r = s.restorer();
        assert_eq!(
            r.restore("[EMAIL_2] and [US_SSN_1]"),
            "bob@acme.io and [US_SSN_1]"
        );
        // Bad bodies are refused with the reason.
        let mut s = Session::new();
        assert!(s.protect_json(&d, &policy, br#"{"a":1,"a":2}"#).is_err());
        assert_eq!(s.protect_json(&d, &policy, br#"{"a":"clean"}"#), Ok(None));
    }

    #[test]
    fn escaped_placeholder_text_in_json_is_reserved_too() {
        let d = detector();
        let mut s = Session::new();
        let body = br#"{"messages":[{"content":"\u005bEMAIL_1] and jane@acme.io"}]}"#;
        let out = s
            .protect_json(&d, &Policy::new(Action::Tokenize), body)
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("[EMAIL_2]"));
    }

    #[test]
    fn placeholders_never_equal_text_the_caller_wrote() {
        let d = detector();
        let mut s = Session::new();
        s.reserve("see [EMAIL_1] in the template");
        let sent = s.protect(&d, &Policy::new(Action::Tokenize), "jane@acme.io");
        assert_eq!(sent, "[EMAIL_2]");
        let r = s.restorer();
        assert_eq!(r.restore("[EMAIL_1] [EMAIL_2]"), "[EMAIL_1] jane@acme.io");
    }

    #[test]
    fn the_stream_holds_back_only_what_could_become_a_placeholder() {
        let d = detector();
        let mut s = Session::new();
        s.protect(&d, &Policy::new(Action::Tokenize), "jane@acme.io");
        let mut r = s.restorer();
        assert_eq!(r.push("Hello [EM"), "Hello ");
        assert_eq!(r.push("AIL_1] and [X"), "jane@acme.io and [X");
        assert_eq!(r.push("] [EMAIL_"), "] ");
        assert_eq!(r.finish(), "[EMAIL_");
        // Nothing tokenized: a pass-through without delay.
        let mut none = Session::new().restorer();
        assert_eq!(none.push("[EMAIL_"), "[EMAIL_");
    }
}
