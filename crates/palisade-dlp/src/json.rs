//! Every string a provider would see in a JSON body, rewritten in place.
//!
//! A single pass over the bytes: strings are decoded, handed to a
//! function, and re-encoded only when it changes them; every other byte —
//! member order, numbers as written, whitespace — is copied as it was.
//! Nesting deeper than a limit, duplicate keys at any level and malformed
//! JSON are refused with an error that names the problem (never the
//! content). Values under keys the caller names — identifiers and enums
//! such as `model`, `role`, `tool_call_id` — are left alone; everything
//! else, tool definitions, metadata and free-form fields included, is
//! content.

use std::borrow::Cow;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("request body is not valid JSON (at byte {0})")]
    Syntax(usize),
    #[error("request body is nested more than {0} levels deep")]
    TooDeep(usize),
    #[error("request body has the key `{0}` more than once in one object")]
    DuplicateKey(String),
}

/// How deep a body may nest, by default.
pub const MAX_DEPTH: usize = 64;

/// Keys whose values are identifiers or enums, not content: never
/// rewritten (a placeholder there would break the request, and no
/// detector matches them anyway).
pub const STRUCTURAL_KEYS: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "tool_use_id",
    "tool_choice",
    "previous_response_id",
    "encoding_format",
    "media_type",
    "reasoning_effort",
    "service_tier",
];

/// Rewrites every string value not under a key for which `skip_key` holds.
/// `f` gets each decoded string and returns its replacement, if any.
/// Returns `None` when nothing changed.
pub fn rewrite_strings(
    body: &[u8],
    max_depth: usize,
    skip_key: &dyn Fn(&str) -> bool,
    f: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Option<Vec<u8>>, JsonError> {
    run(body, max_depth, skip_key, None, &mut |_, s| f(s))
}

/// Like [`rewrite_strings`], and `f` also gets each string's path:
/// member names and array indices joined with `.`
/// (`choices.0.delta.content`).
pub fn rewrite_strings_at(
    body: &[u8],
    max_depth: usize,
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<Option<Vec<u8>>, JsonError> {
    run(body, max_depth, &|_| false, Some(String::new()), f)
}

fn run(
    body: &[u8],
    max_depth: usize,
    skip_key: &dyn Fn(&str) -> bool,
    path: Option<String>,
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<Option<Vec<u8>>, JsonError> {
    let mut p = Parser {
        s: body,
        i: 0,
        out: Vec::new(),
        copied: 0,
        max_depth,
        skip_key,
        path,
        f,
    };
    p.value(0, false)?;
    p.ws();
    if p.i != body.len() {
        return Err(JsonError::Syntax(p.i));
    }
    if p.copied == 0 {
        return Ok(None);
    }
    p.out.extend_from_slice(&body[p.copied..]);
    Ok(Some(p.out))
}

struct Parser<'a, 'f> {
    s: &'a [u8],
    i: usize,
    out: Vec<u8>,
    copied: usize,
    max_depth: usize,
    skip_key: &'f dyn Fn(&str) -> bool,
    /// The current path, when the caller asked for paths.
    path: Option<String>,
    f: &'f mut dyn FnMut(&str, &str) -> Option<String>,
}

impl Parser<'_, '_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// Enters a member or element (when paths are tracked); returns the
    /// length to go back to.
    fn enter(&mut self, segment: &dyn std::fmt::Display) -> usize {
        match &mut self.path {
            Some(p) => {
                let len = p.len();
                if !p.is_empty() {
                    p.push('.');
                }
                use std::fmt::Write;
                let _ = write!(p, "{segment}");
                len
            }
            None => 0,
        }
    }

    fn leave(&mut self, len: usize) {
        if let Some(p) = &mut self.path {
            p.truncate(len);
        }
    }

    fn err<T>(&self) -> Result<T, JsonError> {
        Err(JsonError::Syntax(self.i))
    }

    fn value(&mut self, depth: usize, skip: bool) -> Result<(), JsonError> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth + 1, skip),
            Some(b'[') => self.array(depth + 1, skip),
            Some(b'"') => self.string(skip),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.err(),
        }
    }

    /// `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        let s = self.s;
        let digits = |i: &mut usize| {
            let from = *i;
            while *i < s.len() && s[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > from
        };
        let mut i = self.i;
        if s.get(i) == Some(&b'-') {
            i += 1;
        }
        match s.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return Err(JsonError::Syntax(i)),
        }
        if s.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return Err(JsonError::Syntax(i));
            }
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(s.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return Err(JsonError::Syntax(i));
            }
        }
        self.i = i;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err()
        }
    }

    fn object(&mut self, depth: usize, skip: bool) -> Result<(), JsonError> {
        if depth > self.max_depth {
            return Err(JsonError::TooDeep(self.max_depth));
        }
        self.i += 1;
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut keys = Keys::default();
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.err();
            }
            let (start, end) = self.string_token()?;
            let key = decode(self.s, start, end)?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return self.err();
            }
            self.i += 1;
            let skip_value = skip || (self.skip_key)(&key);
            let back = self.enter(&key);
            if !keys.insert(key) {
                let key = serde_json::from_slice::<String>(&self.s[start..end]).unwrap_or_default();
                return Err(JsonError::DuplicateKey(
                    key.chars().filter(|c| !c.is_control()).take(64).collect(),
                ));
            }
            self.value(depth, skip_value)?;
            self.leave(back);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }

    fn array(&mut self, depth: usize, skip: bool) -> Result<(), JsonError> {
        if depth > self.max_depth {
            return Err(JsonError::TooDeep(self.max_depth));
        }
        self.i += 1;
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let back = self.enter(&index);
            self.value(depth, skip)?;
            self.leave(back);
            index += 1;
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }

    /// The byte range of the string token at `i` (quotes included).
    fn string_token(&mut self) -> Result<(usize, usize), JsonError> {
        let start = self.i;
        self.i += 1;
        loop {
            match memchr::memchr2(b'"', b'\\', &self.s[self.i..]) {
                None => {
                    self.i = self.s.len();
                    return self.err();
                }
                Some(off) => {
                    self.i += off;
                    if self.s[self.i] == b'\\' {
                        self.i += 2;
                        if self.i > self.s.len() {
                            return self.err();
                        }
                    } else {
                        self.i += 1;
                        return Ok((start, self.i));
                    }
                }
            }
        }
    }

    fn string(&mut self, skip: bool) -> Result<(), JsonError> {
        let (start, end) = self.string_token()?;
        // Decoded even when skipped: invalid escapes or UTF-8 are refused
        // wherever they are.
        let decoded = decode(self.s, start, end)?;
        if skip {
            return Ok(());
        }
        let path = self.path.as_deref().unwrap_or("");
        if let Some(new) = (self.f)(path, &decoded) {
            self.out.extend_from_slice(&self.s[self.copied..start]);
            let encoded = serde_json::to_vec(&new).map_err(|_| JsonError::Syntax(start))?;
            self.out.extend_from_slice(&encoded);
            self.copied = end;
        }
        Ok(())
    }
}

/// The string token `s[start..end]` (quotes included), decoded. A string
/// without escapes is its own bytes, borrowed once they are checked
/// (UTF-8, no control characters); others are decoded by `serde_json`.
fn decode(s: &[u8], start: usize, end: usize) -> Result<Cow<'_, str>, JsonError> {
    let raw = &s[start + 1..end - 1];
    if memchr::memchr(b'\\', raw).is_none()
        && !has_control(raw)
        && let Ok(plain) = std::str::from_utf8(raw)
    {
        return Ok(Cow::Borrowed(plain));
    }
    serde_json::from_slice::<String>(&s[start..end])
        .map(Cow::Owned)
        .map_err(|_| JsonError::Syntax(start))
}

/// An object's keys so far, to refuse duplicates: a short list searched
/// in turn (most objects have a handful of keys), a hash set past that.
#[derive(Default)]
struct Keys<'a> {
    few: Vec<Cow<'a, str>>,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Keys<'a> {
    const FEW: usize = 16;

    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: Cow<'a, str>) -> bool {
        if self.few.len() < Self::FEW {
            if self.few.contains(&key) {
                return false;
            }
            self.few.push(key);
            return true;
        }
        if self.many.is_empty() {
            self.many.extend(self.few.iter().cloned());
        }
        self.many.insert(key)
    }
}

/// Whether `b` holds a control character (below U+0020), which JSON
/// strings may carry only escaped. In blocks of 32 bytes without an early
/// exit, which the compiler turns into vector compares.
fn has_control(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &c| any | (c < 0x20)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&c| c < 0x20)
}

/// Whether a key is one of [`STRUCTURAL_KEYS`].
pub fn structural(key: &str) -> bool {
    STRUCTURAL_KEYS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(body: &str) -> Result<Option<String>, JsonError> {
        rewrite_strings(body.as_bytes(), 8, &structural, &mut |s| {
            s.contains('x').then(|| s.to_uppercase())
        })
        .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
    }

    #[test]
    fn rewrites_only_what_changes_and_keeps_every_other_byte() {
        let body = r#"{ "model" : "x-model", "messages":[{"role":"user","content":"fix \u00e9 this"},
            {"content":[{"type":"text","text":"no change"},{"type":"text","text":"xx"}]}],
            "temperature": 0.70, "n":1e2, "meta":{"k":["x",true,null]} }"#;
        let out = upper(body).unwrap().unwrap();
        let expected = body
            .replace(r#""fix \u00e9 this""#, r#""FIX É THIS""#)
            .replace(r#""xx""#, r#""XX""#)
            .replace(r#"["x",true"#, r#"["X",true"#);
        assert_eq!(out, expected);
        assert_eq!(upper(r#"{"a":"nothing here"}"#).unwrap(), None);
    }

    #[test]
    fn refuses_malformed_deep_and_duplicated_input() {
        assert_eq!(
            upper(r#"{"a":"b","a":"c"}"#),
            Err(JsonError::DuplicateKey("a".into()))
        );
        assert_eq!(
            upper(r#"{"m":[{"k":1,"k":2}]}"#),
            Err(JsonError::DuplicateKey("k".into()))
        );
        let deep = format!("{}{}", "[".repeat(9), "]".repeat(9));
        assert_eq!(upper(&deep), Err(JsonError::TooDeep(8)));
        let very_deep = "[".repeat(100_000);
        assert_eq!(upper(&very_deep), Err(JsonError::TooDeep(8)));
        for bad in [
            r#"{"a":}"#,
            r#"{"a":"b""#,
            r#"["\x"]"#,
            "[1,]",
            r#"{"a" "b"}"#,
            "nul",
            r#""\ud800""#,
            "{} {}",
            "[01]",
            "[-]",
            "[1.]",
            "[1e]",
            "[.5]",
            "[1.2.3]",
            "[+1]",
            "[1e+]",
        ] {
            assert!(matches!(upper(bad), Err(JsonError::Syntax(_))), "{bad}");
        }
        assert!(matches!(
            rewrite_strings(b"[\"\xff\"]", 8, &structural, &mut |_| None),
            Err(JsonError::Syntax(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_refused_in_small_and_large_objects() {
        let object = |keys: &[String]| {
            let members: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
            format!("{{{}}}", members.join(","))
        };
        for n in [1, 2, 15, 16, 17, 40] {
            let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            assert_eq!(upper(&object(&keys)), Ok(None), "{n} distinct keys");
            for (dup, of) in [(n, 0), (n, n - 1), (n + 20, n / 2)] {
                let mut with = keys.clone();
                with.extend((n..dup).map(|i| format!("p{i}")));
                with.push(keys[of].clone());
                assert_eq!(
                    upper(&object(&with)),
                    Err(JsonError::DuplicateKey(keys[of].clone())),
                    "{n} keys, the key {of} again after {dup}"
                );
            }
        }
        // The same key written with and without escapes is the same key.
        assert_eq!(
            upper(r#"{"ab":1,"a\u0062":2}"#),
            Err(JsonError::DuplicateKey("ab".into()))
        );
    }

    #[test]
    fn control_characters_are_found_wherever_they_are() {
        for len in [0, 1, 31, 32, 33, 64, 100] {
            let clean = vec![b'a'; len];
            assert!(!has_control(&clean), "{len}");
            for at in 0..len {
                for c in [0x00, 0x09, 0x1f] {
                    let mut b = clean.clone();
                    b[at] = c;
                    assert!(has_control(&b), "{len} {at} {c}");
                }
                let mut b = clean.clone();
                b[at] = 0x20;
                assert!(!has_control(&b));
            }
        }
    }

    /// Strings without escapes are handed over as their own bytes; they
    /// must be exactly what a full decode gives, and be refused where a
    /// full decode refuses them.
    #[test]
    fn plain_strings_are_checked_like_decoded_ones() {
        let seen = |body: &[u8]| {
            let mut out = Vec::new();
            rewrite_strings(body, 8, &structural, &mut |s| {
                out.push(s.to_owned());
                None
            })
            .map(|_| out)
        };
        let body = "[\"plain ascii\",\"caf\u{e9} \u{1F600}\",\"\",\"tab\\there\",\"\u{7f}\"]";
        let want: Vec<String> = serde_json::from_str(body).unwrap();
        assert_eq!(seen(body.as_bytes()).unwrap(), want);
        for bad in [
            &b"[\"raw\ttab\"]"[..],
            b"[\"raw\nline\"]",
            b"[\"nul\x00\"]",
            b"[\"\xc3\"]",
            b"[\"\xed\xa0\x80\"]",
            b"[\"ok\",\"\xff\xfe\"]",
        ] {
            assert!(
                serde_json::from_slice::<Vec<String>>(bad).is_err(),
                "{bad:?} is refused by serde_json"
            );
            assert!(
                matches!(seen(bad), Err(JsonError::Syntax(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn paths_name_each_string() {
        let mut seen = Vec::new();
        let body = br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"delta":{"tool_calls":[{"function":{"arguments":"b"}}]}}],"x":"c"}"#;
        let out = rewrite_strings_at(body, 8, &mut |path, s| {
            seen.push(format!("{path}={s}"));
            (s == "b").then(|| "B".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            seen,
            [
                "choices.0.delta.content=a",
                "choices.1.delta.tool_calls.0.function.arguments=b",
                "x=c"
            ]
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains(r#""arguments":"B""#)
        );
    }

    #[test]
    fn structural_subtrees_are_left_alone() {
        let body = r#"{"model":"x","role":"x","tools":[{"name":"x","type":"x"}],"messages":["x"]}"#;
        assert_eq!(
            upper(body).unwrap().unwrap(),
            r#"{"model":"x","role":"x","tools":[{"name":"X","type":"x"}],"messages":["X"]}"#
        );
    }
}
