//! The access log: one line per request, written when the request ends.
//!
//! Lines are formatted here, directly into a reused per-thread buffer, and
//! handed to an [`AccessSink`]; the general-purpose `tracing` formatter cost
//! about a fifth of the gateway's instructions per request, so the one line
//! every request writes does not go through it. Fields are metadata only:
//! never prompt or completion text, never key material.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use palisade_config::LogFormat;

/// Where finished lines go (each ends in `\n`).
pub trait AccessSink: Send + Sync + 'static {
    fn write_line(&self, line: &[u8]);
}

/// A sink that keeps lines in memory, for tests.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    lines: Arc<Mutex<Vec<String>>>,
}

impl MemorySink {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl AccessSink for MemorySink {
    fn write_line(&self, line: &[u8]) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(String::from_utf8_lossy(line).trim_end().to_owned());
        }
    }
}

/// Everything one line says about a request.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The error kind label, or empty.
    pub error: &'a str,
    pub key_id: &'a str,
    pub peer: Option<SocketAddr>,
    /// Proxied requests only: the exchange.
    pub exchange: Option<ExchangeFields<'a>>,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ExchangeFields<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub stream: bool,
    /// `completed`, `client_disconnected` or `upstream_failed`.
    pub outcome: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub bytes_out: u64,
}

pub struct AccessLog {
    sink: Arc<dyn AccessSink>,
    format: LogFormat,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    pub fn new(sink: Arc<dyn AccessSink>, format: LogFormat) -> Self {
        Self { sink, format }
    }

    pub fn record(&self, r: &AccessRecord<'_>) {
        LINE.with(|line| {
            let Ok(mut buf) = line.try_borrow_mut() else {
                return;
            };
            buf.clear();
            match self.format {
                LogFormat::Json => write_json(&mut buf, r, SystemTime::now()),
                LogFormat::Text => write_text(&mut buf, r, SystemTime::now()),
            }
            self.sink.write_line(&buf);
        });
    }
}

fn write_json(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(out, now);
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"palisade::access\",\"message\":\"request\"",
    );
    field_str(out, "request_id", r.request_id);
    field_str(out, "method", r.method);
    field_str(out, "path", r.path);
    field_u64(out, "status", u64::from(r.status));
    field_str(out, "error", r.error);
    field_str(out, "key_id", r.key_id);
    out.extend_from_slice(b",\"peer\":\"");
    if let Some(peer) = r.peer {
        use std::io::Write;
        let _ = write!(out, "{peer}");
    }
    out.push(b'"');
    if let Some(x) = &r.exchange {
        field_str(out, "model", x.model);
        field_str(out, "provider", x.provider);
        out.extend_from_slice(if x.stream {
            b",\"stream\":true"
        } else {
            b",\"stream\":false"
        });
        field_str(out, "outcome", x.outcome);
        field_u64(out, "prompt_tokens", x.prompt_tokens);
        field_u64(out, "completion_tokens", x.completion_tokens);
        field_u64(out, "bytes_out", x.bytes_out);
    }
    field_u64(out, "duration_us", r.duration.as_micros() as u64);
    out.extend_from_slice(b"}\n");
}

fn write_text(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    use std::io::Write;
    write_timestamp(out, now);
    let _ = write!(
        out,
        "  request {} {} {} {:.1}ms id={} key={}",
        r.method,
        printable(r.path),
        r.status,
        r.duration.as_secs_f64() * 1000.0,
        r.request_id,
        r.key_id
    );
    if !r.error.is_empty() {
        let _ = write!(out, " error={}", r.error);
    }
    if let Some(x) = &r.exchange {
        let _ = write!(
            out,
            " model={} provider={} stream={} outcome={} tokens={}+{}",
            printable(x.model),
            x.provider,
            x.stream,
            x.outcome,
            x.prompt_tokens,
            x.completion_tokens
        );
    }
    out.push(b'\n');
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

fn field_str(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn field_u64(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

pub use palisade_ledger::time::{rfc3339, write_timestamp};

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            request_id: "r-1",
            method: "POST",
            path: "/v1/chat/\"completions\"",
            status: 200,
            error: "",
            key_id: "abc",
            peer: Some(SocketAddr::from(([127, 0, 0, 1], 5000))),
            exchange: Some(ExchangeFields {
                model: "m",
                provider: "p",
                stream: true,
                outcome: "completed",
                prompt_tokens: 3,
                completion_tokens: 4,
                bytes_out: 99,
            }),
            duration: Duration::from_micros(1234),
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = Vec::new();
        write_json(
            &mut out,
            &record(),
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000042Z");
        assert_eq!(v["path"], "/v1/chat/\"completions\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["peer"], "127.0.0.1:5000");
        assert_eq!(v["stream"], true);
        assert_eq!(v["completion_tokens"], 4);
        assert_eq!(v["duration_us"], 1234);
        assert_eq!(v["target"], "palisade::access");

        let mut out = Vec::new();
        let bare = AccessRecord {
            exchange: None,
            peer: None,
            ..record()
        };
        write_json(&mut out, &bare, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["peer"], "");
        assert!(v.get("model").is_none());
    }

    #[test]
    fn text_lines_are_one_line() {
        let mut out = Vec::new();
        let r = AccessRecord {
            path: "/evil\npath",
            ..record()
        };
        write_text(&mut out, &r, SystemTime::UNIX_EPOCH);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.contains("POST /evilpath 200"), "{s}");
    }
}
