//! Mutation tests for the parsers of untrusted input: valid requests and
//! streams, damaged at random thousands of times, must give a clean answer
//! (a value or an error) and never panic or loop.

use crate::Endpoint;
use crate::envelope::Envelope;
use crate::sse::{Event, EventSplitter};
use crate::usage::{self, StreamUsage};

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"{}[]\":,\\ \n\r\t0123456789-+.eEtrufalsn\x00\xff\xc3\xa9u";

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.truncate(i);
            }
            2 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn damaged_request_bodies_never_panic() {
    let seeds: &[&[u8]] = &[
        br#"{"model":"gpt","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"h\u00e9"}]}"#,
        br#"{"model":"m","input":["a","b"],"temperature":0.5}"#,
        br#"{"model":"m","stream":null,"stream_options":null}"#,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let input = mutate(&mut rng, seeds[round % seeds.len()]);
        for endpoint in [
            Endpoint::ChatCompletions,
            Endpoint::Embeddings,
            Endpoint::Messages,
        ] {
            if let Ok(env) = Envelope::parse(&input, endpoint) {
                // Whatever parses must rewrite into valid JSON.
                let out = env.rewrite("upstream", true);
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}

#[test]
fn damaged_streams_never_panic_and_keep_every_byte() {
    let stream: &[u8] = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\r\n\r\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\ndata: [DONE]\n\n";
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..5_000 {
        let input = mutate(&mut rng, stream);
        let mut splitter = EventSplitter::new();
        let mut seen = Vec::new();
        let mut tracker = StreamUsage::new(Endpoint::ChatCompletions);
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len().min(17));
            splitter.push(&rest[..take]).unwrap();
            rest = &rest[take..];
            while let Some(event) = splitter.next_event() {
                tracker.observe(&Event::parse(&event));
                let _ = usage::strip_null_usage(&event);
                seen.extend(event);
            }
        }
        seen.extend(splitter.finish().unwrap_or_default());
        // Splitting never loses or invents bytes (a whitespace-only tail is
        // the only thing finish() drops).
        assert!(input.starts_with(&seen), "bytes changed");
        assert!(input[seen.len()..].iter().all(u8::is_ascii_whitespace));
    }
}
