//! Fixed-work driver for instruction-count profiling (`valgrind --tool=callgrind`)
//! of the translation worker's per-message CPU work, without the store:
//! parse the raw ADT, translate it, and build what the worker
//! (`sources::adt::worker`) hands to routing and to `Store::complete_with`
//! (`Translator::prepare`: the resource writes with their search tokens, and
//! the routing input).
//!
//! `cargo run --release --example profile_processor -- [N] [processor|translate]`
//! (run from the repository root: the mappings are read from `mappings/`)
//! - `processor` (default): the worker's per-message preparation;
//! - `translate`: only `Translator::translate_adt` (parse + map to a `Value`);
//! - `into`: parse + `Engine::translate_adt_into` (the serialized fast path).
//!
//! The inputs are `cwsgw_scenario::sample::sample_adt(0..100)`, the
//! `bench ingest` messages.
//! Instructions per message = (Ir at N − Ir at N = 0) / N.

use std::hint::black_box;
use std::sync::Arc;

use cws_gateway::config::Config;
use cws_gateway::sources::adt::worker::Translator;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mode = args.next().unwrap_or_else(|| "processor".to_string());
    let cfg = Arc::new(Config::default());
    let engine = match cws_gateway::embedded::load_engine(&cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let translator = Translator::new(cfg, engine);
    let msgs: Vec<Vec<u8>> = (0..100)
        .map(|i| cwsgw_scenario::sample::sample_adt(i).into_bytes())
        .collect();
    let received = chrono::DateTime::from_timestamp(1_768_000_000, 0).unwrap_or_default();
    let received_text = received.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let sensitivity = translator.cfg.sensitivity();
    let ctx = mapping::AdtContext {
        canonical_base: &translator.cfg.server.canonical_base,
        source_org_id: "st-mary",
        source_org_name: "st-mary",
        received_at: &received_text,
        sensitivity: &sensitivity,
    };
    let opts = hl7v2::ParseOptions::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut total = 0usize;
    let start = std::time::Instant::now();
    for i in 0..n {
        let raw = black_box(&msgs[i % msgs.len()]);
        total += match mode.as_str() {
            "into" => {
                let parsed = hl7v2::parse(raw, &opts);
                buf.clear();
                match parsed.message {
                    Some(m) => translator
                        .engine
                        .translate_adt_into(&m, &ctx, &mut buf)
                        .map(|()| buf.len())
                        .unwrap_or(0),
                    None => 0,
                }
            }
            "translate" => translator
                .translate_adt(raw, "st-mary", &received)
                .map(|b| usize::from(b.is_object()))
                .unwrap_or(0),
            _ => match translator.prepare(raw, "st-mary", &received) {
                Ok(p) => black_box(p).into_writes().len(),
                Err(_) => 0,
            },
        };
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"n\":{n},\"checksum\":{total},\"msgs_per_sec\":{}}}",
        (n as f64 / secs).round() as u64
    );
}
