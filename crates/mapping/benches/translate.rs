//! Throughput of the whole ADT path on one core: parse + translate +
//! serialize (`translate_adt_into` streams JSON bytes) a ~0.7 KB ADT^A01
//! with NK1, PV2 and DG1 (golden 001), whose Bundle is ~6.5 KB. Prints one JSON line:
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
    // The gateway's hot path: parse, translate straight to JSON bytes.
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut one = |bytes: &[u8]| -> usize {
        buf.clear();
        let parsed = hl7v2::parse(bytes, &opts);
        let Some(msg) = parsed.message else { return 0 };
        match engine.translate_adt_into(&msg, &ctx, &mut buf) {
            Ok(()) => buf.len(),
            Err(_) => 0,
        }
    };
    // Warm up.
    for _ in 0..2_000 {
        black_box(one(black_box(&input)));
    }
    let cpu0 = cpu_seconds();
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
    // On a shared machine wall-clock throughput understates the cost; the
    // process CPU time (from /proc, Linux only) gives the per-core rate.
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => format!(
            ",\"cpu_msgs_per_sec\":{}",
            (n as f64 / (b - a)).round() as u64
        ),
        _ => String::new(),
    };
    println!(
        "{{\"bench\":\"translate\",\"msgs_per_sec\":{rate},\"bytes_per_msg\":{},\"output_bytes_per_msg\":{out_bytes}{cpu}}}",
        input.len()
    );
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`,
/// assuming the usual 100 clock ticks per second).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
