//! Any bytes: the JSON rewriter never panics, and when it accepts the input
//! and rewrites every string to itself, the result is the same JSON value
//! (compared where serde_json can hold the value: it refuses numbers out of
//! f64 range, which JSON's grammar allows and the rewriter copies as they
//! are).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_dlp::json::{MAX_DEPTH, rewrite_strings, structural};

fuzz_target!(|data: &[u8]| {
    let rewritten = rewrite_strings(data, MAX_DEPTH, &structural, &mut |s| Some(s.to_owned()));
    if let Ok(out) = rewritten {
        let out = out.unwrap_or_else(|| data.to_vec());
        if let Ok(a) = serde_json::from_slice::<serde_json::Value>(data) {
            let b: serde_json::Value = serde_json::from_slice(&out).expect("output is JSON");
            assert_eq!(a, b);
        }
    }
});
