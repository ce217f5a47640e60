//! Detection speed: clean prose (no findings; the common case) and a
//! 4 KiB prompt with a few entities.
//!
//! `cargo bench -p palisade-dlp --bench detect`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_dlp::{Action, Detector, DetectorConfig, Policy, Session};

const PROSE: &str = "The committee met on Tuesday to review the quarterly roadmap. \
Several teams presented their progress, and the discussion focused on how to \
reduce latency in the checkout flow while keeping the design consistent across \
mobile and desktop. Everyone agreed that the next milestone should prioritise \
reliability over new features, and that the documentation needs another pass \
before the public beta. ";

fn prose(len: usize) -> String {
    PROSE.repeat(len / PROSE.len() + 1)[..len].to_owned()
}

fn prompt_4k() -> String {
    let mut p = prose(4096 - 220);
    p.push_str(
        " Contact Jane at jane.doe@example.com or (415) 555-0132; her card is \
         4111 1111 1111 1111 and SSN 078-05-1120. Server 10.20.30.40 uses key \
         AKIAIOSFODNN7EXAMPLE.",
    );
    p
}

fn bench(c: &mut Criterion) {
    let detector = Detector::new(&DetectorConfig::default()).unwrap();
    let clean = prose(1 << 20);
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("clean prose, 1 MiB", |b| b.iter(|| detector.detect(&clean)));
    let prompt = prompt_4k();
    assert_eq!(detector.detect(&prompt).len(), 6);
    g.throughput(Throughput::Bytes(prompt.len() as u64));
    g.bench_function("4 KiB prompt, 6 entities", |b| {
        b.iter(|| detector.detect(&prompt))
    });
    let policy = Policy::new(Action::Tokenize);
    g.bench_function("4 KiB prompt, tokenize", |b| {
        b.iter(|| Session::new().protect(&detector, &policy, &prompt).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
