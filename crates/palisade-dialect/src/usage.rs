//! Token usage, read from whole responses and from stream events.
//!
//! Each provider reports usage in its own shape; [`Usage`] is the one shape
//! the gateway keeps: prompt (input, cached input included), completion
//! (output) and total.

use serde::Deserialize;

use crate::Endpoint;
use crate::sse::Event;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl RawUsage {
    fn prompt(&self) -> Option<u64> {
        let base = self.prompt_tokens.or(self.input_tokens)?;
        Some(
            base + self.cache_creation_input_tokens.unwrap_or(0)
                + self.cache_read_input_tokens.unwrap_or(0),
        )
    }

    fn completion(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }
}

impl Usage {
    fn from_raw(raw: &RawUsage) -> Self {
        let prompt = raw.prompt().unwrap_or(0);
        let completion = raw.completion().unwrap_or(0);
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: raw.total_tokens.unwrap_or(prompt + completion),
        }
    }
}

/// Usage from a whole (non-streamed) JSON response body.
pub fn from_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Body {
        usage: Option<RawUsage>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    body.usage.as_ref().map(Usage::from_raw)
}

/// Reads usage out of a stream, event by event.
#[derive(Debug)]
pub struct StreamUsage {
    endpoint: Endpoint,
    usage: Option<Usage>,
}

/// What one event of an OpenAI chat or completions stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRole {
    /// Content or any other event the client must see.
    Content,
    /// The usage-only chunk (`choices: []` with `usage`) sent because of
    /// `stream_options.include_usage`.
    UsageOnly,
    /// `data: [DONE]`.
    Done,
}

impl StreamUsage {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            usage: None,
        }
    }

    /// Usage seen so far, if any event carried it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Reads one event and says what it was.
    pub fn observe(&mut self, event: &Event<'_>) -> EventRole {
        if event.is_done() {
            return EventRole::Done;
        }
        if !mentions_usage_object(&event.data) {
            return EventRole::Content;
        }
        match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                #[derive(Deserialize)]
                struct Chunk {
                    usage: Option<RawUsage>,
                    choices: Option<Vec<serde::de::IgnoredAny>>,
                }
                if let Ok(chunk) = serde_json::from_slice::<Chunk>(&event.data)
                    && let Some(raw) = &chunk.usage
                {
                    self.usage = Some(Usage::from_raw(raw));
                    if chunk.choices.is_none_or(|c| c.is_empty()) {
                        return EventRole::UsageOnly;
                    }
                }
            }
            Endpoint::Responses => {
                #[derive(Deserialize)]
                struct Response {
                    usage: Option<RawUsage>,
                }
                #[derive(Deserialize)]
                struct Ev {
                    response: Option<Response>,
                }
                if let Ok(Ev {
                    response: Some(Response { usage: Some(raw) }),
                }) = serde_json::from_slice::<Ev>(&event.data)
                {
                    self.usage = Some(Usage::from_raw(&raw));
                }
            }
            Endpoint::Messages => {
                // `message_start` carries input tokens under `message.usage`;
                // `message_delta` carries the running output count under `usage`.
                #[derive(Deserialize)]
                struct Message {
                    usage: Option<RawUsage>,
                }
                #[derive(Deserialize)]
                struct Ev {
                    message: Option<Message>,
                    usage: Option<RawUsage>,
                }
                if let Ok(ev) = serde_json::from_slice::<Ev>(&event.data) {
                    let mut usage = self.usage.unwrap_or_default();
                    if let Some(raw) = ev.message.and_then(|m| m.usage) {
                        usage.prompt_tokens = raw.prompt().unwrap_or(usage.prompt_tokens);
                        usage.completion_tokens =
                            raw.completion().unwrap_or(usage.completion_tokens);
                    }
                    if let Some(raw) = ev.usage {
                        if let Some(p) = raw.prompt() {
                            usage.prompt_tokens = p;
                        }
                        usage.completion_tokens =
                            raw.completion().unwrap_or(usage.completion_tokens);
                    }
                    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                    self.usage = Some(usage);
                }
            }
        }
        EventRole::Content
    }
}

/// Whether `data` has a `"usage"` key whose value is an object. A cheap
/// scan that lets the common content event skip JSON decoding entirely.
fn mentions_usage_object(data: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(b"\"usage\"");
    let mut rest = data;
    while let Some(i) = finder.find(rest) {
        let after = &rest[i + 7..];
        let mut it = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        rest = after;
    }
    false
}

/// Removes a trailing `"usage":null` member that an upstream adds to every
/// chunk once `include_usage` is on, so that a client that did not ask for
/// usage sees the chunks it would have seen. Returns `None` when the event
/// does not end that way (it is then forwarded unchanged).
pub fn strip_null_usage(raw_event: &[u8]) -> Option<Vec<u8>> {
    const NEEDLE: &[u8] = b",\"usage\":null}";
    let end = raw_event.len()
        - raw_event
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let body = &raw_event[..end];
    if !body.ends_with(NEEDLE) {
        return None;
    }
    let mut out = Vec::with_capacity(raw_event.len());
    out.extend_from_slice(&body[..body.len() - NEEDLE.len()]);
    out.push(b'}');
    out.extend_from_slice(&raw_event[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_body_shape() {
        let openai =
            br#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            from_body(openai),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                total_tokens: 12
            })
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        assert_eq!(
            from_body(embeddings),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 0,
                total_tokens: 3
            })
        );
        let responses = br#"{"usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}"#;
        assert_eq!(
            from_body(responses),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 6,
                total_tokens: 10
            })
        );
        let anthropic =
            br#"{"usage":{"input_tokens":4,"cache_read_input_tokens":10,"output_tokens":6}}"#;
        assert_eq!(
            from_body(anthropic),
            Some(Usage {
                prompt_tokens: 14,
                completion_tokens: 6,
                total_tokens: 20
            })
        );
        assert_eq!(from_body(b"{}"), None);
        assert_eq!(from_body(b"not json"), None);
    }

    #[test]
    fn openai_stream_usage_chunk_is_recognised() {
        let mut s = StreamUsage::new(Endpoint::ChatCompletions);
        let content = Event::parse(
            br#"data: {"choices":[{"delta":{"content":"hi \"usage\": {"}}],"usage":null}"#,
        );
        assert_eq!(s.observe(&content), EventRole::Content);
        assert_eq!(s.usage(), None);
        let usage = Event::parse(br#"data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#);
        assert_eq!(s.observe(&usage), EventRole::UsageOnly);
        assert_eq!(s.usage().unwrap().total_tokens, 5);
        assert_eq!(s.observe(&Event::parse(b"data: [DONE]")), EventRole::Done);
    }

    #[test]
    fn responses_stream_usage() {
        let mut s = StreamUsage::new(Endpoint::Responses);
        let ev = Event::parse(br#"event: response.completed
data: {"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}}"#);
        assert_eq!(s.observe(&ev), EventRole::Content);
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7
            })
        );
    }

    #[test]
    fn anthropic_stream_usage_accumulates() {
        let mut s = StreamUsage::new(Endpoint::Messages);
        s.observe(&Event::parse(br#"data: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#));
        s.observe(&Event::parse(
            br#"data: {"type":"content_block_delta","delta":{"text":"x"}}"#,
        ));
        s.observe(&Event::parse(
            br#"data: {"type":"message_delta","usage":{"output_tokens":15}}"#,
        ));
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 15,
                total_tokens: 24
            })
        );
    }

    #[test]
    fn strips_trailing_null_usage_only() {
        assert_eq!(
            strip_null_usage(b"data: {\"a\":1,\"usage\":null}\n\n").unwrap(),
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(
            strip_null_usage(b"data: {\"usage\":null,\"a\":1}\n\n"),
            None
        );
        assert_eq!(strip_null_usage(b"data: [DONE]\n\n"), None);
    }
}
