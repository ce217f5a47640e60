//! Tokenized values put back into a streamed answer, event by event.
//!
//! Each stream of text pieces — a choice's `delta.content`, a tool call's
//! `arguments`, an Anthropic block's `delta.text` or `partial_json`, a
//! Responses API `delta` — has its own restorer, keyed by the piece's JSON
//! path, which holds back only a tail that could still become a
//! placeholder (a placeholder split across events is restored when its
//! last piece arrives). Whole strings elsewhere in an event (the complete
//! text of a `.done` event, a final response object) are restored as they
//! are. Before an event that ends a stream of pieces (a `finish_reason`,
//! `content_block_stop`, `message_stop`, a `.done` event, `[DONE]`) and at
//! the end, whatever is still held is sent in an event shaped like the
//! channel's last one.

use std::borrow::Cow;
use std::collections::BTreeMap;

use palisade_dialect::sse::Event;
use std::sync::Arc;

use palisade_dlp::{Action, Policy, Restorer, Session};

use crate::protection::TenantProtection;
use palisade_dlp::json::{MAX_DEPTH, rewrite_strings_at};

pub struct EventRestorer {
    base: Restorer,
    channels: BTreeMap<String, Channel>,
    /// Redacts the model's output first, when the tenant asks.
    redact: Option<Redacting>,
}

struct Redacting {
    detector: Arc<TenantProtection>,
    /// One numbering of placeholders for the whole answer.
    session: Session,
}

struct Channel {
    restorer: Restorer,
    /// Text not yet redacted: it could still be the start of a value.
    held: String,
    /// The end of what was sent, as context for what is held (`SSN` before
    /// nine digits).
    sent_tail: String,
    /// The last event of this channel: its name and its data.
    name: Option<String>,
    template: Vec<u8>,
}

/// How much text a redacting stream holds back: a value that ends within
/// it is redacted whole.
pub const REDACT_WINDOW: usize = 96;

/// How much already-sent text is kept as context for what is held.
const CONTEXT_MARGIN: usize = 64;

/// Whether a string at `path` is one piece of a longer text.
fn is_piece(path: &str) -> bool {
    path.ends_with(".delta.content")
        || path.ends_with(".delta.refusal")
        || (path.contains(".delta.tool_calls.") && path.ends_with(".function.arguments"))
        || matches!(
            path,
            "delta" | "delta.text" | "delta.partial_json" | "delta.thinking"
        )
        || (path.starts_with("choices.")
            && path.ends_with(".text")
            && path.matches('.').count() == 2)
}

/// Whether an event ends one or more streams of pieces.
fn is_terminal(event: &Event<'_>) -> bool {
    let data = &event.data;
    event.is_done()
        || matches!(
            event.name,
            Some("content_block_stop" | "message_delta" | "message_stop" | "error")
        )
        || event
            .name
            .is_some_and(|n| n.ends_with(".done") || n.starts_with("response.completed"))
        || memchr::memmem::find(data, br#""finish_reason":""#).is_some()
        || memchr::memmem::find(data, br#".done""#).is_some()
}

impl Redacting {
    /// Redacts what can no longer grow into a longer value: all of
    /// `held` + `piece` but the last [`REDACT_WINDOW`] bytes (and never
    /// cutting a value found across that line).
    fn push(&mut self, channel: &mut Channel, piece: &str, last: bool) -> String {
        let Channel {
            held, sent_tail, ..
        } = channel;
        held.push_str(piece);
        // Scan with the end of what was sent in front, for context; only
        // values that start in what is held count.
        let margin = sent_tail.len();
        let scanned = format!("{sent_tail}{held}");
        let findings: Vec<_> = self
            .detector
            .detector
            .detect(&scanned)
            .into_iter()
            .filter(|f| f.start >= margin)
            .map(|mut f| {
                f.start -= margin;
                f.end -= margin;
                f
            })
            .collect();
        let mut cut = if last {
            held.len()
        } else {
            let mut c = held.len().saturating_sub(REDACT_WINDOW);
            while !held.is_char_boundary(c) {
                c -= 1;
            }
            c
        };
        for f in &findings {
            if f.start < cut && f.end > cut {
                cut = f.start;
            }
        }
        let inside: Vec<_> = findings.into_iter().filter(|f| f.end <= cut).collect();
        let policy = Policy::new(Action::Redact);
        let out = self
            .session
            .apply(&policy, &held[..cut], &inside)
            .into_owned();
        sent_tail.push_str(&held[..cut]);
        let mut keep = sent_tail.len().saturating_sub(CONTEXT_MARGIN);
        while !sent_tail.is_char_boundary(keep) {
            keep += 1;
        }
        sent_tail.replace_range(..keep, "");
        held.replace_range(..cut, "");
        out
    }
}

impl EventRestorer {
    /// Restores tokenized values (`base`), and first redacts the model's
    /// output when `redact` is given.
    pub fn new(base: Restorer, redact: Option<Arc<TenantProtection>>) -> Self {
        Self {
            base,
            channels: BTreeMap::new(),
            redact: redact.map(|detector| Redacting {
                detector,
                session: Session::new(),
            }),
        }
    }

    /// Writes what the client gets for one raw event.
    pub fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let event = Event::parse(raw);
        if is_terminal(&event) {
            self.flush(out);
        }
        if event.data.is_empty() || event.is_done() {
            out.extend_from_slice(raw);
            return;
        }
        let name = event.name.map(str::to_owned);
        let data = event.data.clone();
        let channels = &mut self.channels;
        let base = &self.base;
        let redact = &mut self.redact;
        let rewritten = rewrite_strings_at(&data, MAX_DEPTH, &mut |path, s| {
            if is_piece(path) {
                let channel = channels.entry(path.to_owned()).or_insert_with(|| Channel {
                    restorer: base.clone(),
                    held: String::new(),
                    sent_tail: String::new(),
                    name: None,
                    template: Vec::new(),
                });
                channel.name.clone_from(&name);
                channel.template.clone_from(&data);
                let clean = match redact {
                    Some(r) => Cow::Owned(r.push(channel, s, false)),
                    None => Cow::Borrowed(s),
                };
                let sent = channel.restorer.push(&clean);
                (sent != s).then_some(sent)
            } else {
                let clean = match redact {
                    Some(r) => {
                        let policy = Policy::new(Action::Redact);
                        r.session
                            .protect(&r.detector.detector, &policy, s)
                            .into_owned()
                    }
                    None => s.to_owned(),
                };
                let restored = base.restore(&clean).into_owned();
                (restored != s).then_some(restored)
            }
        });
        match rewritten {
            Ok(Some(json)) => write_event(out, event.name, &json),
            // Unchanged, or not JSON: as it came.
            _ => out.extend_from_slice(raw),
        }
    }

    /// Sends whatever every channel still holds.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let paths: Vec<String> = self.channels.keys().cloned().collect();
        for path in paths {
            let Some(channel) = self.channels.get_mut(&path) else {
                continue;
            };
            let mut held = match &mut self.redact {
                Some(r) => {
                    let rest = r.push(channel, "", true);
                    channel.restorer.push(&rest)
                }
                None => String::new(),
            };
            held.push_str(&channel.restorer.finish());
            if held.is_empty() {
                continue;
            }
            let mut held = Some(held);
            let synthesized = rewrite_strings_at(&channel.template, MAX_DEPTH, &mut |p, _| {
                if p == path {
                    held.take()
                } else if is_piece(p) {
                    // Other pieces of the template were sent already.
                    Some(String::new())
                } else {
                    None
                }
            });
            if let Ok(Some(json)) = synthesized {
                write_event(out, channel.name.as_deref(), &json);
            }
        }
    }
}

/// Appends an event's pieces of answer text (see [`is_piece`]) to `text`.
pub fn append_pieces(data: &[u8], text: &mut String) {
    let _ = rewrite_strings_at(data, MAX_DEPTH, &mut |path, s| {
        if is_piece(path) {
            text.push_str(s);
        }
        None
    });
}

fn write_event(out: &mut Vec<u8>, name: Option<&str>, json: &[u8]) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_dlp::{Action, Detector, DetectorConfig, Policy, Session};

    fn restorer() -> Restorer {
        let d = Detector::new(&DetectorConfig::default()).unwrap();
        let mut s = Session::new();
        let sent = s.protect(&d, &Policy::new(Action::Tokenize), "jane@acme.io");
        assert_eq!(sent, "[EMAIL_1]");
        s.restorer()
    }

    fn chunk(content: &str) -> Vec<u8> {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
        .into_bytes()
    }

    fn contents(out: &[u8]) -> String {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_placeholder_split_across_events_is_restored_when_complete() {
        let mut r = EventRestorer::new(restorer(), None);
        let mut out = Vec::new();
        for piece in ["Hi [EM", "AIL", "_1], bye [EMA"] {
            r.event(&chunk(piece), &mut out);
        }
        assert_eq!(contents(&out), "Hi jane@acme.io, bye ");
        // The end of the choice: what is held goes out before it.
        let end = format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        );
        r.event(end.as_bytes(), &mut out);
        r.event(b"data: [DONE]\n\n", &mut out);
        assert_eq!(contents(&out), "Hi jane@acme.io, bye [EMA");
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(
            text.find("[EMA\"").unwrap() < text.find("\"stop\"").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn anthropic_blocks_and_whole_strings() {
        let mut r = EventRestorer::new(restorer(), None);
        let mut out = Vec::new();
        let delta = |t: &str| {
            format!(
                "event: content_block_delta\ndata: {}\n\n",
                serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
            )
        };
        r.event(delta("to [EMAIL").as_bytes(), &mut out);
        r.event(delta("_1]").as_bytes(), &mut out);
        r.event(
            b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            &mut out,
        );
        // A whole text (a .done event) is restored as it is.
        r.event(
            b"event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"mail [EMAIL_1]\"}\n\n",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""text":"to ""#), "{text}");
        assert!(text.contains(r#""text":"jane@acme.io""#), "{text}");
        assert!(text.contains(r#""text":"mail jane@acme.io""#), "{text}");
        assert!(
            text.contains("event: content_block_delta\ndata: "),
            "{text}"
        );
        assert!(!text.contains("[EMAIL_1]"), "{text}");
    }

    #[test]
    fn any_split_of_a_stream_into_events_gives_the_text_back() {
        let d = Detector::new(&DetectorConfig::default()).unwrap();
        let pieces = [
            "jane@acme.io",
            " and ",
            "[",
            "EMAIL_1]",
            "ssn 078-05-1120",
            "é",
            "\"q\"",
            "x",
            "[[",
            "4111 1111 1111 1111",
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let original: String = (0..1 + rand(8))
                .map(|_| pieces[rand(pieces.len())])
                .collect();
            let mut s = Session::new();
            s.reserve(&original);
            let sent = s
                .protect(&d, &Policy::new(Action::Tokenize), &original)
                .into_owned();
            let mut r = EventRestorer::new(s.restorer(), None);
            let bounds: Vec<usize> = sent
                .char_indices()
                .map(|(i, _)| i)
                .chain([sent.len()])
                .collect();
            let mut cuts: Vec<usize> = (0..rand(6)).map(|_| bounds[rand(bounds.len())]).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([sent.len()]) {
                r.event(&chunk(&sent[at..c]), &mut out);
                at = c;
            }
            let end = format!(
                "data: {}\n\n",
                serde_json::json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            );
            r.event(end.as_bytes(), &mut out);
            assert_eq!(contents(&out), original, "round {round}: {sent:?}");
        }
    }

    #[test]
    fn a_redacting_stream_redacts_as_the_whole_answer_would_whatever_the_split() {
        let tenant = Arc::new(TenantProtection {
            protection: palisade_dlp::protection(&palisade_dlp::PolicyInput::default(), &[])
                .unwrap(),
            responses: crate::protection::Responses::Redact,
        });
        let pieces = [
            "jane@acme.io",
            " and ",
            "SSN ",
            "078051120",
            "4111 1111 1111 1111",
            " ok ",
            "é",
            "+44 20 7946 0958",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..200 {
            let words: Vec<&str> = (0..1 + rand(10))
                .map(|_| pieces[rand(pieces.len())])
                .collect();
            let original = words.join(if rand(2) == 0 { " " } else { "\n" });
            // What redacting the whole answer at once gives.
            let whole = Session::new()
                .protect(&tenant.detector, &Policy::new(Action::Redact), &original)
                .into_owned();
            let mut r = EventRestorer::new(Restorer::empty(), Some(Arc::clone(&tenant)));
            let bounds: Vec<usize> = original
                .char_indices()
                .map(|(i, _)| i)
                .chain([original.len()])
                .collect();
            let mut cuts: Vec<usize> = (0..rand(8)).map(|_| bounds[rand(bounds.len())]).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([original.len()]) {
                r.event(&chunk(&original[at..c]), &mut out);
                at = c;
            }
            let end = format!(
                "data: {}\n\n",
                serde_json::json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            );
            r.event(end.as_bytes(), &mut out);
            assert_eq!(contents(&out), whole, "round {round}: {original:?}");
        }
    }
}
