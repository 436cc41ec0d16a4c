//! Fixed-work driver for instruction-count profiling (`valgrind --tool=callgrind`):
//! parses and translates golden 001 (the `bench translate` input) N times.
//!
//! `cargo run --release -p cwsgw-mapping --example profile_translate -- [N] [into|value|parse]`
//! - `into` (default): parse + `translate_adt_into` (the bench's hot path);
//! - `value`: parse + `translate_adt` (the gateway worker's `Value` API);
//! - `parse`: parse only (to subtract the HL7 parser's share).

use std::hint::black_box;
use std::path::Path;

use cwsgw_mapping::{AdtContext, Engine, Sensitivity};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mode = args.next().unwrap_or_else(|| "into".to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let engine = match Engine::load(&root.join("mappings")) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mappings do not load: {e}");
            std::process::exit(1);
        }
    };
    let input =
        match std::fs::read(root.join("tests/golden/adt/adt-to-fhir/001-a01-admit-v251.hl7")) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cannot read the input: {e}");
                std::process::exit(1);
            }
        };
    let sens = Sensitivity {
        psychiatric_locations: vec!["PSYCH".into(), "4WEST".into()],
        sud_locations: vec!["DETOX".into()],
        psychiatric_services: vec!["PSY".into()],
        sud_services: vec!["SUD".into()],
    };
    let ctx = AdtContext {
        canonical_base: "https://gateway.example.org/fhir",
        source_org_id: "st-mary",
        source_org_name: "St Mary Hospital",
        received_at: "2026-01-15T10:00:00Z",
        sensitivity: &sens,
    };
    let opts = hl7v2::ParseOptions::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut total = 0usize;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let parsed = hl7v2::parse(black_box(&input), &opts);
        let Some(msg) = parsed.message else {
            eprintln!("input does not parse");
            std::process::exit(1);
        };
        total += match mode.as_str() {
            "value" => engine
                .translate_adt(&msg, &ctx)
                .map(|v| usize::from(v.is_object()))
                .unwrap_or(0),
            "parse" => msg.segment_count(),
            _ => {
                buf.clear();
                engine
                    .translate_adt_into(&msg, &ctx, &mut buf)
                    .map(|()| buf.len())
                    .unwrap_or(0)
            }
        };
        black_box(&buf);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"n\":{n},\"checksum\":{total},\"msgs_per_sec\":{}}}",
        (n as f64 / secs).round() as u64
    );
}
