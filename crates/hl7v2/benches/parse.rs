//! Parse throughput: this crate vs `hl7-parser` 0.3 vs a naive split.
//!
//! Each parser parses the same ~1.2 KB ADT^A01 (PID, NK1, PV1, PV2, DG1)
//! repeatedly for about 2 seconds; one JSON line per parser is printed:
//! `{"bench":"parse","parser":"...","msgs_per_sec":N}`.
//!
//! Run: `cargo bench -p hl7v2 --bench parse`.

use std::hint::black_box;
use std::time::{Duration, Instant};

const ADT: &str = include_str!("../tests/data/adt_a01.hl7");
const RUN: Duration = Duration::from_secs(2);

/// Runs `f` in batches until `RUN` has elapsed; returns messages per second.
fn measure(mut f: impl FnMut() -> usize) -> u64 {
    // Warm-up.
    for _ in 0..1000 {
        black_box(f());
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut sink = 0usize;
    while start.elapsed() < RUN {
        for _ in 0..1000 {
            sink = sink.wrapping_add(f());
        }
        n += 1000;
    }
    black_box(sink);
    (n as f64 / start.elapsed().as_secs_f64()) as u64
}

/// `HL7V2_BENCH_ONLY=<parser>` runs a single parser (for profiling).
fn wanted(parser: &str) -> bool {
    std::env::var("HL7V2_BENCH_ONLY").map_or(true, |only| only == parser)
}

fn report(parser: &str, msgs_per_sec: u64) {
    println!("{{\"bench\":\"parse\",\"parser\":\"{parser}\",\"msgs_per_sec\":{msgs_per_sec}}}");
}

fn main() {
    let bytes = ADT.as_bytes();
    let opts = hl7v2::ParseOptions::default();

    // Sanity: every parser understands the sample.
    let ours = hl7v2::parse(bytes, &opts);
    assert!(ours.diagnostics.is_empty());
    assert!(hl7_parser::parse_message(ADT).is_ok());

    if wanted("hl7v2") {
        report(
            "hl7v2",
            measure(|| {
                let p = hl7v2::parse(black_box(bytes), &opts);
                p.message.map(|m| m.segment_count()).unwrap_or(0)
            }),
        );
    }
    if wanted("hl7-parser-0.3") {
        report(
            "hl7-parser-0.3",
            measure(|| {
                hl7_parser::parse_message(black_box(ADT))
                    .map(|m| m.segments().count())
                    .unwrap_or(0)
            }),
        );
    }
    if wanted("naive-split") {
        report(
            "naive-split",
            measure(|| {
                let segs: Vec<Vec<&str>> = black_box(ADT)
                    .split('\r')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.split('|').collect())
                    .collect();
                segs.len()
            }),
        );
    }
}
