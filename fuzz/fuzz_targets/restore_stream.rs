//! Tokenized text split into stream pieces anywhere the fuzzer likes comes
//! back whole and unchanged.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_dlp::{Action, Detector, DetectorConfig, Policy, Session};

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| Detector::new(&DetectorConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the cuts, the rest is the text.
    if data.len() < 4 {
        return;
    }
    let (cuts, rest) = data.split_at(4);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut s = Session::new();
    s.reserve(text);
    let sent = s
        .protect(detector(), &Policy::new(Action::Tokenize), text)
        .into_owned();
    let mut r = s.restorer();
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) * sent.len() / 256)
        .filter(|&p| sent.is_char_boundary(p))
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut out = String::new();
    let mut at = 0;
    for p in points.into_iter().chain([sent.len()]) {
        out.push_str(&r.push(&sent[at..p]));
        at = p;
    }
    out.push_str(&r.finish());
    assert_eq!(out, text);
});
