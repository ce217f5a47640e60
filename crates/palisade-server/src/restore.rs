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
use palisade_dlp::Restorer;
use palisade_dlp::json::{MAX_DEPTH, rewrite_strings_at};

pub struct EventRestorer {
    base: Restorer,
    channels: BTreeMap<String, Channel>,
}

struct Channel {
    restorer: Restorer,
    /// The last event of this channel: its name and its data.
    name: Option<String>,
    template: Vec<u8>,
}

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

impl EventRestorer {
    pub fn new(base: Restorer) -> Self {
        Self {
            base,
            channels: BTreeMap::new(),
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
        let rewritten = rewrite_strings_at(&data, MAX_DEPTH, &mut |path, s| {
            if is_piece(path) {
                let channel = channels.entry(path.to_owned()).or_insert_with(|| Channel {
                    restorer: base.clone(),
                    name: None,
                    template: Vec::new(),
                });
                channel.name.clone_from(&name);
                channel.template.clone_from(&data);
                let sent = channel.restorer.push(s);
                (sent != s).then_some(sent)
            } else {
                match base.restore(s) {
                    Cow::Owned(restored) => Some(restored),
                    Cow::Borrowed(_) => None,
                }
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
            let held = channel.restorer.finish();
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
        let mut r = EventRestorer::new(restorer());
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
        let mut r = EventRestorer::new(restorer());
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
            let mut r = EventRestorer::new(s.restorer());
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
}
