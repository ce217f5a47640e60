//! Error bodies in each dialect, for whole responses and inside streams.
//!
//! OpenAI: `{"error":{"message","type","param","code"}}`.
//! Anthropic: `{"type":"error","error":{"type","message"}}`.

use serde_json::json;

use crate::Dialect;

/// An error as the caller will see it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorBody<'a> {
    /// OpenAI `error.type`, e.g. `invalid_request_error`.
    pub openai_type: &'a str,
    /// Anthropic `error.type`, e.g. `not_found_error`.
    pub anthropic_type: &'a str,
    /// OpenAI `error.code`, e.g. `model_not_found`.
    pub code: Option<&'a str>,
    /// OpenAI `error.param`, e.g. `model`.
    pub param: Option<&'a str>,
    pub message: &'a str,
}

impl ErrorBody<'_> {
    /// The JSON body of an error response.
    pub fn to_json(&self, dialect: Dialect) -> Vec<u8> {
        let value = match dialect {
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.openai_type,
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type, "message": self.message },
            }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// A complete SSE event that reports the error to a streaming client:
    /// a `data:` event with an `error` object for OpenAI clients, an
    /// `event: error` for Anthropic clients.
    pub fn to_sse(&self, dialect: Dialect) -> Vec<u8> {
        let body = self.to_json(dialect);
        let mut out = Vec::with_capacity(body.len() + 24);
        if dialect == Dialect::Anthropic {
            out.extend_from_slice(b"event: error\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: ErrorBody<'static> = ErrorBody {
        openai_type: "invalid_request_error",
        anthropic_type: "not_found_error",
        code: Some("model_not_found"),
        param: Some("model"),
        message: "The model `x` does not exist",
    };

    #[test]
    fn openai_shape() {
        let v: serde_json::Value = serde_json::from_slice(&E.to_json(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["message"], E.message);
    }

    #[test]
    fn anthropic_shape() {
        let v: serde_json::Value = serde_json::from_slice(&E.to_json(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["message"], E.message);
    }

    #[test]
    fn stream_events_are_complete() {
        let sse = E.to_sse(Dialect::Anthropic);
        assert!(sse.starts_with(b"event: error\ndata: {"));
        assert!(sse.ends_with(b"}\n\n"));
        assert!(E.to_sse(Dialect::OpenAi).starts_with(b"data: {\"error\""));
    }
}
