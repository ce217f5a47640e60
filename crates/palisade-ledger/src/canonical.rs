//! Canonical JSON (RFC 8785, JCS) for ledger entries.
//!
//! Entries use a subset of JSON that JCS serializes without ambiguity:
//! object keys are ASCII (so UTF-16 code-unit order, which JCS sorts by, is
//! byte order) and numbers are integers (so no floating-point formatting is
//! involved). Anything outside that subset is refused rather than
//! serialized in a way another JCS implementation might not reproduce.
//! Strings are escaped as JCS requires (see `write_string`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("entry field `{0}` is a non-integer number; ledger entries use integers only")]
    Float(String),
    #[error("entry key `{0}` is not ASCII")]
    NonAsciiKey(String),
}

/// The schema every Palisade ledger entry declares.
pub const SCHEMA: &str = "palisade.audit/v1";

/// A ledger entry: `fields` (an object) plus `schema`, `kind`, `time` (now,
/// RFC 3339 UTC with microseconds) and `node` (the ledger's origin), in
/// canonical form.
pub fn entry(kind: &str, node: &str, fields: Value) -> Result<Vec<u8>, CanonicalError> {
    let mut object = match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    object.insert("schema".into(), Value::from(SCHEMA));
    object.insert("kind".into(), Value::from(kind));
    object.insert(
        "time".into(),
        Value::from(crate::time::timestamp(std::time::SystemTime::now())),
    );
    object.insert("node".into(), Value::from(node));
    to_canonical(&Value::Object(object))
}

/// The canonical bytes of `value`.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value, "")?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &Value, path: &str) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(path.to_owned()));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, path)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            if let Some(bad) = keys.iter().find(|k| !k.is_ascii()) {
                return Err(CanonicalError::NonAsciiKey((*bad).clone()));
            }
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_value(out, v, key)?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// JCS escaping is ECMAScript's `JSON.stringify`: `\"`, `\\`, the short
/// forms `\b \f \n \r \t`, other control characters as lowercase
/// `\u00xx`, everything else (including `/` and DEL) literally. serde_json
/// escapes exactly so, copying runs of plain bytes at once; the
/// `escapes_like_jcs` test pins it.
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"z": [true, null, "x"], "c": -5}, "A": "é"});
        assert_eq!(
            String::from_utf8(to_canonical(&v).unwrap()).unwrap(),
            r#"{"A":"é","a":{"c":-5,"z":[true,null,"x"]},"b":1}"#
        );
    }

    #[test]
    fn escapes_like_jcs() {
        let v = json!("q\"b\\\u{8}\u{c}\n\r\t\u{1}\u{1f}/€😀");
        assert_eq!(
            String::from_utf8(to_canonical(&v).unwrap()).unwrap(),
            "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u0001\\u001f/€😀\""
        );
    }

    #[test]
    fn del_and_line_separators_are_literal() {
        // JSON.stringify leaves U+007F, U+2028 and U+2029 as they are.
        let v = json!("a\u{7f}b\u{2028}c\u{2029}");
        assert_eq!(
            to_canonical(&v).unwrap(),
            "\"a\u{7f}b\u{2028}c\u{2029}\"".as_bytes()
        );
    }

    #[test]
    fn output_is_valid_json_that_round_trips() {
        let v = json!({"schema": "palisade.audit/v1", "n": 18446744073709551615u64, "list": [1, 2, {"k": "v"}]});
        let bytes = to_canonical(&v).unwrap();
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
        // Canonical twice is the same bytes.
        assert_eq!(to_canonical(&back).unwrap(), bytes);
    }

    #[test]
    fn refuses_what_jcs_could_render_differently() {
        assert_eq!(
            to_canonical(&json!({"x": 1.5})),
            Err(CanonicalError::Float("x".into()))
        );
        assert!(matches!(
            to_canonical(&json!({"é": 1})),
            Err(CanonicalError::NonAsciiKey(_))
        ));
    }
}
