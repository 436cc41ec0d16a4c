//! Any bytes → parse → translate with the shipped mappings: never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn engine() -> &'static cwsgw_mapping::Engine {
    static ENGINE: OnceLock<cwsgw_mapping::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings");
        cwsgw_mapping::Engine::load(&dir).expect("shipped mappings load")
    })
}

fuzz_target!(|data: &[u8]| {
    let parsed = hl7v2::parse(data, &hl7v2::ParseOptions::default());
    if let Some(msg) = parsed.message {
        let sensitivity = cwsgw_mapping::Sensitivity {
            psychiatric_locations: vec!["PSYCH".into()],
            sud_locations: vec!["DETOX".into()],
            psychiatric_services: vec!["PSY".into()],
            sud_services: vec!["SUD".into()],
        };
        let ctx = cwsgw_mapping::AdtContext {
            canonical_base: "https://gateway.example.org/fhir",
            source_org_id: "st-mary",
            source_org_name: "St Mary Hospital",
            received_at: "2026-01-15T10:00:00Z",
            sensitivity: &sensitivity,
        };
        let _ = engine().translate_adt(&msg, &ctx);
        let mut out = Vec::new();
        let _ = engine().translate_adt_into(&msg, &ctx, &mut out);
        let _ = msg.header();
    }
});
