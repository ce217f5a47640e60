//! Any text: findings are in bounds, on character boundaries, sorted and
//! disjoint; tokenize then restore gives the text back.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_dlp::{Action, Detector, DetectorConfig, Policy, Session};

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| Detector::new(&DetectorConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = detector();
    let found = d.detect(text);
    let mut last = 0;
    for f in &found {
        assert!(f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        assert!(f.start >= last, "overlapping findings");
        last = f.end;
    }
    let mut s = Session::new();
    s.reserve(text);
    let sent = s
        .protect(d, &Policy::new(Action::Tokenize), text)
        .into_owned();
    let r = s.restorer();
    assert_eq!(r.restore(&sent), text);
});
