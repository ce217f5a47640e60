//! The top level of a JSON request body.
//!
//! Only the top-level object is decoded; every member value is kept as the
//! exact bytes the client sent ([`RawValue`]), so fields the gateway does not
//! know pass through untouched and nested content is never re-encoded.
//! Duplicate top-level keys are refused: parsers disagree on which copy wins,
//! and a gateway that reads one `model` while the provider reads another
//! could be steered around its own policy.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::Endpoint;

/// Why a request body was refused. Messages never quote the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not parseable JSON; position of the first problem.
    Syntax {
        line: usize,
        column: usize,
    },
    /// Ended before the JSON value was complete.
    Truncated,
    /// Valid JSON but not an object.
    NotObject,
    DuplicateKey(String),
    MissingField(&'static str),
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `stream: true` on an endpoint that cannot stream.
    StreamUnsupported,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { line, column } => write!(
                f,
                "request body is not valid JSON (error at line {line}, column {column})"
            ),
            Self::Truncated => f.write_str("request body is not valid JSON (it ends early)"),
            Self::NotObject => f.write_str("request body must be a JSON object"),
            Self::DuplicateKey(k) => write!(f, "request body has the key `{k}` more than once"),
            Self::MissingField(field) => write!(f, "request body is missing `{field}`"),
            Self::WrongType { field, expected } => write!(f, "`{field}` must be {expected}"),
            Self::StreamUnsupported => f.write_str("this endpoint does not support `stream`"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// A decoded top level: the members in order, plus the fields the gateway
/// acts on.
#[derive(Debug)]
pub struct Envelope<'a> {
    members: Vec<(String, &'a RawValue)>,
    model: String,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
    /// Members the gateway adds, appended by `rewrite`.
    added: Vec<(&'static str, String)>,
}

/// The request fields that bound the completion's length, by endpoint.
pub const MAX_TOKENS_FIELDS: &[&str] =
    &["max_tokens", "max_completion_tokens", "max_output_tokens"];

impl<'a> Envelope<'a> {
    pub fn parse(body: &'a [u8], endpoint: Endpoint) -> Result<Self, EnvelopeError> {
        let members = parse_members(body)?;
        let mut model = None;
        let mut stream = false;
        let mut include_usage = false;
        let mut max_tokens: Option<u64> = None;
        for (key, raw) in &members {
            match key.as_str() {
                "model" => {
                    model = Some(serde_json::from_str::<String>(raw.get()).map_err(|_| {
                        EnvelopeError::WrongType {
                            field: "model",
                            expected: "a string",
                        }
                    })?);
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(raw.get())
                        .map_err(|_| EnvelopeError::WrongType {
                            field: "stream",
                            expected: "a boolean",
                        })?
                        .unwrap_or(false);
                }
                "stream_options" => {
                    include_usage = read_include_usage(raw)?;
                }
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                    let field = MAX_TOKENS_FIELDS
                        .iter()
                        .copied()
                        .find(|f| f == key)
                        .unwrap_or("max_tokens");
                    let n = serde_json::from_str::<Option<u64>>(raw.get()).map_err(|_| {
                        EnvelopeError::WrongType {
                            field,
                            expected: "a whole number",
                        }
                    })?;
                    if let Some(n) = n {
                        max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
                    }
                }
                _ => {}
            }
        }
        let model = model.ok_or(EnvelopeError::MissingField("model"))?;
        if model.is_empty() {
            return Err(EnvelopeError::WrongType {
                field: "model",
                expected: "a non-empty string",
            });
        }
        if stream && !endpoint.can_stream() {
            return Err(EnvelopeError::StreamUnsupported);
        }
        Ok(Self {
            members,
            model,
            stream,
            include_usage,
            max_tokens,
            added: Vec::new(),
        })
    }

    /// The largest of `max_tokens`, `max_completion_tokens` and
    /// `max_output_tokens`, when the request sets one.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }

    /// Adds a top-level member the client did not send (`value` is JSON).
    /// Ignored when the client sent `key`.
    pub fn add_member(&mut self, key: &'static str, value: String) {
        if !self.members.iter().any(|(k, _)| k == key) && !self.added.iter().any(|(k, _)| *k == key)
        {
            self.added.push((key, value));
        }
    }

    /// The model the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// Whether the client itself asked for `stream_options.include_usage`.
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }

    /// The body to send upstream: `model` replaced by `upstream_model`, and
    /// when `force_include_usage` is set, `stream_options.include_usage`
    /// turned on (other `stream_options` members kept). Every other member
    /// is copied byte for byte.
    pub fn rewrite(&self, upstream_model: &str, force_include_usage: bool) -> Vec<u8> {
        let capacity = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + upstream_model.len()
            + self
                .added
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 48;
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        let mut wrote_stream_options = false;
        for (i, (key, raw)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, key);
            out.push(b':');
            match key.as_str() {
                "model" => write_json_string(&mut out, upstream_model),
                "stream_options" if force_include_usage => {
                    out.extend_from_slice(&with_include_usage(raw));
                    wrote_stream_options = true;
                }
                _ => out.extend_from_slice(raw.get().as_bytes()),
            }
        }
        let mut any = !self.members.is_empty();
        if force_include_usage && !wrote_stream_options {
            if any {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            any = true;
        }
        for (key, value) in &self.added {
            if any {
                out.push(b',');
            }
            write_json_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
            any = true;
        }
        out.push(b'}');
        out
    }
}

fn read_include_usage(raw: &RawValue) -> Result<bool, EnvelopeError> {
    #[derive(Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    let wrong = EnvelopeError::WrongType {
        field: "stream_options",
        expected: "an object with a boolean `include_usage`",
    };
    let opts: Option<StreamOptions> = serde_json::from_str(raw.get()).map_err(|_| wrong)?;
    Ok(opts.and_then(|o| o.include_usage).unwrap_or(false))
}

/// `stream_options` with `include_usage: true`, other members kept.
fn with_include_usage(raw: &RawValue) -> Vec<u8> {
    // `parse` has checked that this is an object or null.
    let mut members: Vec<(String, &RawValue)> =
        parse_members(raw.get().as_bytes()).unwrap_or_default();
    members.retain(|(k, _)| k != "include_usage");
    let mut out = Vec::with_capacity(raw.get().len() + 24);
    out.push(b'{');
    for (key, value) in &members {
        write_json_string(&mut out, key);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(br#""include_usage":true}"#);
    out
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn parse_members(body: &[u8]) -> Result<Vec<(String, &RawValue)>, EnvelopeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = (&mut de)
        .deserialize_any(MembersVisitor)
        .map_err(|e| classify(&e))?;
    de.end().map_err(|e| classify(&e))?;
    Ok(members)
}

fn classify(e: &serde_json::Error) -> EnvelopeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => EnvelopeError::Truncated,
        Category::Syntax | Category::Io => EnvelopeError::Syntax {
            line: e.line(),
            column: e.column(),
        },
        Category::Data => {
            let msg = e.to_string();
            if let Some(key) = msg.strip_prefix(DUPLICATE_PREFIX) {
                let key = key.split(DUPLICATE_END).next().unwrap_or_default();
                EnvelopeError::DuplicateKey(key.to_owned())
            } else {
                EnvelopeError::NotObject
            }
        }
    }
}

const DUPLICATE_PREFIX: &str = "palisade-duplicate-key:";
const DUPLICATE_END: char = '\u{0}';

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        // `null` where an object is allowed (e.g. `stream_options: null`).
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(String, &'de RawValue)> =
            Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<String>()? {
            if members.iter().any(|(k, _)| *k == key) {
                let shown: String = key.chars().take(64).filter(|c| !c.is_control()).collect();
                return Err(de::Error::custom(format!(
                    "{DUPLICATE_PREFIX}{shown}{DUPLICATE_END}"
                )));
            }
            let value: &'de RawValue = map.next_value()?;
            members.push((key, value));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Envelope<'_>, EnvelopeError> {
        Envelope::parse(body.as_bytes(), Endpoint::ChatCompletions)
    }

    #[test]
    fn reads_model_and_stream() {
        let e = parse(r#"{"model":"gpt","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(e.model(), "gpt");
        assert!(e.stream());
        assert!(!e.include_usage());
        let e = parse(r#"{"model":"gpt","stream":null,"stream_options":{"include_usage":true}}"#)
            .unwrap();
        assert!(!e.stream());
        assert!(e.include_usage());
    }

    #[test]
    fn reads_the_largest_token_bound_and_adds_members() {
        assert_eq!(parse(r#"{"model":"m"}"#).unwrap().max_tokens(), None);
        assert_eq!(
            parse(r#"{"model":"m","max_tokens":null}"#)
                .unwrap()
                .max_tokens(),
            None
        );
        let e = parse(r#"{"model":"m","max_tokens":10,"max_completion_tokens":300}"#).unwrap();
        assert_eq!(e.max_tokens(), Some(300));
        assert_eq!(
            parse(r#"{"model":"m","max_output_tokens":"9"}"#).unwrap_err(),
            EnvelopeError::WrongType {
                field: "max_output_tokens",
                expected: "a whole number"
            }
        );
        assert!(parse(r#"{"model":"m","max_tokens":-1}"#).is_err());

        let mut e = parse(r#"{"model":"m","n":1}"#).unwrap();
        e.add_member("max_completion_tokens", "256".into());
        e.add_member("max_completion_tokens", "999".into());
        e.add_member("n", "5".into());
        let out = String::from_utf8(e.rewrite("u", true)).unwrap();
        assert_eq!(
            out,
            r#"{"model":"u","n":1,"stream_options":{"include_usage":true},"max_completion_tokens":256}"#
        );
    }

    #[test]
    fn rewrite_keeps_unknown_fields_byte_for_byte() {
        let body = r#"{"model":"smol","messages":[{"role":"user","content":"héllo \u00e9"}],"x_new_field":{"a":[1,2.50,true]},"temperature":0.70}"#;
        let e = parse(body).unwrap();
        let out = String::from_utf8(e.rewrite("upstream-1", false)).unwrap();
        assert_eq!(out, body.replace(r#""smol""#, r#""upstream-1""#));
    }

    #[test]
    fn rewrite_injects_include_usage() {
        let e = parse(r#"{"model":"m","stream":true}"#).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&e.rewrite("u", true)).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["model"], "u");

        let e = parse(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"other":1}}"#,
        )
        .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&e.rewrite("u", true)).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"other":1,"include_usage":true})
        );

        let e = parse(r#"{"model":"m","stream_options":null}"#).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&e.rewrite("u", true)).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_usage":true})
        );
    }

    #[test]
    fn refuses_bad_bodies_without_quoting_them() {
        assert_eq!(parse("").unwrap_err(), EnvelopeError::Truncated);
        assert_eq!(
            parse(r#"{"model":"m""#).unwrap_err(),
            EnvelopeError::Truncated
        );
        assert!(matches!(
            parse(r#"{"model":"secret-prompt"]"#).unwrap_err(),
            EnvelopeError::Syntax { line: 1, .. }
        ));
        assert_eq!(parse("[1,2]").unwrap_err(), EnvelopeError::NotObject);
        assert_eq!(parse("\"text\"").unwrap_err(), EnvelopeError::NotObject);
        assert_eq!(
            parse("{}").unwrap_err(),
            EnvelopeError::MissingField("model")
        );
        assert_eq!(
            parse(r#"{"model":"a","model":"b"}"#).unwrap_err(),
            EnvelopeError::DuplicateKey("model".into())
        );
        assert!(matches!(
            parse(r#"{"model":7}"#).unwrap_err(),
            EnvelopeError::WrongType { field: "model", .. }
        ));
        assert!(matches!(
            parse(r#"{"model":""}"#).unwrap_err(),
            EnvelopeError::WrongType { field: "model", .. }
        ));
        assert!(matches!(
            parse(r#"{"model":"m","stream":"yes please"}"#).unwrap_err(),
            EnvelopeError::WrongType {
                field: "stream",
                ..
            }
        ));
        assert!(parse(r#"{"model":"m"} trailing"#).is_err());
        let err = parse(r#"{"model":"m","stream":"my SSN is 123"}"#).unwrap_err();
        assert!(!err.to_string().contains("SSN"));
    }

    #[test]
    fn embeddings_cannot_stream() {
        let err =
            Envelope::parse(br#"{"model":"m","stream":true}"#, Endpoint::Embeddings).unwrap_err();
        assert_eq!(err, EnvelopeError::StreamUnsupported);
    }
}
