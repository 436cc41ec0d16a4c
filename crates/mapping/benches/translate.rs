//! Throughput of the whole ADT path on one core: parse + translate +
//! serialize a ~1 KB ADT^A01 (golden 001). Prints one JSON line:
//! `{"bench":"translate","msgs_per_sec":N,"bytes_per_msg":N}`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cwsgw_mapping::{AdtContext, Engine, Sensitivity};

fn main() {
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
                eprintln!("cannot read the benchmark input: {e}");
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
    let one = |bytes: &[u8]| -> usize {
        let parsed = hl7v2::parse(bytes, &opts);
        let Some(msg) = parsed.message else { return 0 };
        match engine.translate_adt(&msg, &ctx) {
            Ok(bundle) => serde_json::to_vec(&bundle).map(|v| v.len()).unwrap_or(0),
            Err(_) => 0,
        }
    };
    // Warm up.
    for _ in 0..2_000 {
        black_box(one(black_box(&input)));
    }
    if std::env::var_os("BENCH_SPLIT").is_some() {
        let t = Instant::now();
        for _ in 0..20_000 {
            black_box(hl7v2::parse(black_box(&input), &opts));
        }
        eprintln!(
            "parse only: {:.1} us/msg",
            t.elapsed().as_secs_f64() * 1e6 / 20_000.0
        );
        let parsed = hl7v2::parse(&input, &opts);
        if let Some(msg) = parsed.message {
            let t = Instant::now();
            for _ in 0..20_000 {
                black_box(engine.translate_adt(black_box(&msg), &ctx).ok());
            }
            eprintln!(
                "translate only: {:.1} us/msg",
                t.elapsed().as_secs_f64() * 1e6 / 20_000.0
            );
            if let Ok(bundle) = engine.translate_adt(&msg, &ctx) {
                let t = Instant::now();
                for _ in 0..20_000 {
                    black_box(black_box(&bundle).clone());
                }
                eprintln!(
                    "clone of the output Value: {:.1} us/msg",
                    t.elapsed().as_secs_f64() * 1e6 / 20_000.0
                );
                let t = Instant::now();
                for _ in 0..20_000 {
                    black_box(
                        serde_json::to_vec(black_box(&bundle))
                            .map(|v| v.len())
                            .unwrap_or(0),
                    );
                }
                eprintln!(
                    "serialize only: {:.1} us/msg",
                    t.elapsed().as_secs_f64() * 1e6 / 20_000.0
                );
            }
        }
    }
    let mut n: u64 = 0;
    let mut out_bytes = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..1_000 {
            out_bytes = black_box(one(black_box(&input)));
        }
        n += 1_000;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = (n as f64 / secs).round() as u64;
    println!(
        "{{\"bench\":\"translate\",\"msgs_per_sec\":{rate},\"bytes_per_msg\":{},\"output_bytes_per_msg\":{out_bytes}}}",
        input.len()
    );
}
