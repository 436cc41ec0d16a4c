//! MLLP over real TCP.

use std::time::Duration;

use proptest::prelude::*;

use crate::common::*;

async fn start() -> (tempfile::TempDir, cws_gateway::serve::Running) {
    let dir = tempfile::tempdir().unwrap();
    let running = cws_gateway::serve::start(config(dir.path())).await.unwrap();
    (dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admit_is_acked_aa_after_journaling_and_translated() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let ack = s
        .roundtrip(adt("A01", "MSG0001", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "MSG0001");
    // MSH of the ACK swaps sender and receiver.
    assert_eq!(field(&ack, "MSH", 3), "CWSGW");
    assert_eq!(field(&ack, "MSH", 4), "CWSGW");
    assert_eq!(field(&ack, "MSH", 5), "EPIC");
    assert_eq!(field(&ack, "MSH", 6), "STMARY");
    assert!(field(&ack, "MSH", 9).starts_with("ACK^A01"), "{ack}");
    // Durable before the ACK: the journal already holds it.
    let stats = settled_stats(gw.store.as_ref()).await;
    assert_eq!(stats.total, 1);
    wait_translated(gw.store.as_ref()).await;
    assert!(gw.store.resource_count(Some("Patient")).await.unwrap() >= 1);
    assert_eq!(gw.store.resource_count(Some("Encounter")).await.unwrap(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_control_id_is_acked_again_not_processed_twice() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let msg = adt("A01", "DUP0001", "STMARY");
    for _ in 0..3 {
        let ack = s.roundtrip(msg.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), "DUP0001");
    }
    // The same control id from another facility is a different message.
    let ack = s
        .roundtrip(adt("A01", "DUP0001", "VALLEYHIE").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    let stats = settled_stats(gw.store.as_ref()).await;
    assert_eq!(stats.total, 2, "{stats:?}");
    assert_eq!(gw.store.metrics().duplicate_inputs, 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_facility_is_rejected_ar() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let ack = s.roundtrip(adt("A01", "X1", "NOWHERE").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "X1");
    let err = ack
        .split('\r')
        .find(|s| s.starts_with("ERR"))
        .expect("ERR segment");
    assert!(err.contains("103^"), "{err}");
    assert!(err.contains("HL70357"), "{err}");
    assert!(err.contains("MSH^1^4"), "{err}");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_adt_is_rejected_and_garbage_gets_ae() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let oru = adt("A01", "ORU1", "STMARY").replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01");
    let ack = s.roundtrip(oru.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert!(ack.contains("200^"), "{ack}");
    // Framed garbage: not HL7 at all → AE with an ERR segment, connection stays usable.
    let ack = s.roundtrip(b"this is not an HL7 message").await;
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack}");
    assert!(ack.contains("\rERR|"), "{ack}");
    // Missing MSH-10 → AE naming MSH-10.
    let no_id = adt("A01", "", "STMARY");
    let ack = s.roundtrip(no_id.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack}");
    assert!(ack.contains("MSH^1^10"), "{ack}");
    // Bytes outside any frame are ignored; the next frame still gets its ACK.
    s.send_raw(b"\r\nnoise before a frame").await;
    let ack = s
        .roundtrip(adt("A01", "AFTERNOISE", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "AFTERNOISE");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_answered_ar_with_its_control_id() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let mut big = adt("A01", "BIG1", "STMARY");
    big.push_str("NTE|1||");
    big.push_str(&"x".repeat(40_000)); // the test config allows 16 KiB
    big.push('\r');
    let ack = s.roundtrip(big.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "BIG1");
    assert!(ack.contains("exceeds"), "{ack}");
    // The connection survives and keeps working.
    let ack = s.roundtrip(adt("A01", "SMALL1", "STMARY").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_sends_commit_then_application_ack() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let msg = adt("A01", "ENH1", "STMARY").replacen("|P|2.5.1\r", "|P|2.5.1|||AL|AL\r", 1);
    let commit = s.roundtrip(msg.as_bytes()).await;
    assert_eq!(field(&commit, "MSA", 1), "CA", "{commit}");
    assert_eq!(field(&commit, "MSA", 2), "ENH1");
    let app = s.recv().await;
    assert_eq!(field(&app, "MSA", 1), "AA", "{app}");
    assert_eq!(field(&app, "MSA", 2), "ENH1");
    // NE for the commit ACK, AL for the application ACK: only the AA comes.
    let msg = adt("A01", "ENH2", "STMARY").replacen("|P|2.5.1\r", "|P|2.5.1|||NE|AL\r", 1);
    let only = s.roundtrip(msg.as_bytes()).await;
    assert_eq!(field(&only, "MSA", 1), "AA", "{only}");
    assert_eq!(field(&only, "MSA", 2), "ENH2");
    // Enhanced mode and an unknown facility: CR.
    let msg = adt("A01", "ENH3", "NOWHERE").replacen("|P|2.5.1\r", "|P|2.5.1|||AL|AL\r", 1);
    let rej = s.roundtrip(msg.as_bytes()).await;
    assert_eq!(field(&rej, "MSA", 1), "CR", "{rej}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_bom_and_separators_are_accepted() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    // LF separators.
    let lf = adt("A01", "LF1", "STMARY").replace('\r', "\n");
    assert_eq!(field(&s.roundtrip(lf.as_bytes()).await, "MSA", 1), "AA");
    // CRLF separators.
    let crlf = adt("A01", "CRLF1", "STMARY").replace('\r', "\r\n");
    assert_eq!(field(&s.roundtrip(crlf.as_bytes()).await, "MSA", 1), "AA");
    // UTF-8 BOM.
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(adt("A01", "BOM1", "STMARY").as_bytes());
    assert_eq!(field(&s.roundtrip(&bom).await, "MSA", 1), "AA");
    // ISO-8859-1 declared in MSH-18, with a raw 0xF1 (ñ) byte in the name.
    let latin = adt("A01", "LATIN1", "STMARY")
        .replacen("|P|2.5.1\r", "|P|2.5.1||||||8859/1\r", 1)
        .replace("Rivera^Alex", "Mu\u{0}oz^Alex");
    let bytes: Vec<u8> = latin
        .bytes()
        .map(|b| if b == 0 { 0xF1 } else { b })
        .collect();
    let ack = s.roundtrip(&bytes).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    wait_translated(gw.store.as_ref()).await;
    let stats = settled_stats(gw.store.as_ref()).await;
    assert_eq!((stats.total, stats.failed), (4, 0), "{stats:?}");
    // The Latin-1 name arrived as "Muñoz" in FHIR (the CIN-keyed Patient is
    // shared by all four messages; the Latin-1 one was the last write).
    let id = patient_id(&adt("A01", "ANY", "STMARY"));
    let patient = gw
        .store
        .resource_get("Patient", &id)
        .await
        .unwrap()
        .expect("Patient stored");
    assert_eq!(
        patient.body["name"][0]["family"], "Muñoz",
        "{}",
        patient.body
    );
    gw.stop().await;
}

/// The Patient id the mappings give a message (offline translation).
fn patient_id(msg: &str) -> String {
    let bundle = cws_gateway::translate::Offline::new(
        config(tempfile::tempdir().unwrap().path()),
        chrono::Utc::now(),
    )
    .unwrap()
    .translate(msg.as_bytes())
    .unwrap();
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .and_then(|e| e["resource"]["id"].as_str())
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_keep_per_connection_order() {
    let (_dir, gw) = start().await;
    let addr = gw.mllp_addr;
    let mut tasks = Vec::new();
    for c in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut s = Conn::connect(addr).await;
            // Pipeline: write 20 frames at once, then read 20 replies in order.
            let mut all = Vec::new();
            for i in 0..20 {
                all.extend(hl7v2::mllp::frame(
                    adt("A01", &format!("C{c}M{i}"), "STMARY").as_bytes(),
                ));
            }
            s.send_raw(&all).await;
            for i in 0..20 {
                let ack = s.recv().await;
                assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                assert_eq!(field(&ack, "MSA", 2), format!("C{c}M{i}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = gw.store.metrics();
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 320);
    assert!(
        m.commits < 320,
        "group commit: {} commits for 320 inputs",
        m.commits
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), "").replace("idle_timeout_secs = 5", "idle_timeout_secs = 1");
    let cfg = cws_gateway::config::Config::from_toml(&text, "t").unwrap();
    let gw = cws_gateway::serve::start(cfg).await.unwrap();
    let mut s = Conn::connect(gw.mllp_addr).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s.s, &mut buf),
    )
    .await
    .expect("closed within the idle timeout")
    .unwrap();
    assert_eq!(n, 0);
    gw.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// Frames split at arbitrary byte boundaries over real TCP still get one ACK each, in order.
    #[test]
    fn frames_split_anywhere_get_their_acks(cuts in proptest::collection::vec(0usize..2000, 1..12)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let (_dir, gw) = start().await;
            let mut stream = Vec::new();
            for i in 0..3 {
                stream.extend(hl7v2::mllp::frame(adt("A03", &format!("SPLIT{i}"), "STMARY").as_bytes()));
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % stream.len()).collect();
            points.sort();
            points.dedup();
            let mut s = Conn::connect(gw.mllp_addr).await;
            let mut last = 0;
            for p in points.into_iter().chain(std::iter::once(stream.len())) {
                s.send_raw(&stream[last..p]).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                last = p;
            }
            for i in 0..3 {
                let ack = s.recv().await;
                assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                assert_eq!(field(&ack, "MSA", 2), format!("SPLIT{i}"));
            }
            gw.stop().await;
        });
    }
}

/// The Encounter the test messages of visit `V{control_id}` become, read
/// from the store (one visit per control id in `adt`).
async fn only_encounter(store: &dyn store::Store) -> serde_json::Value {
    let q = store::ResourceQuery {
        resource_type: "Encounter".into(),
        limit: 10,
        ..Default::default()
    };
    let found = store.resource_search(&q).await.unwrap();
    assert_eq!(found.len(), 1, "one Encounter");
    found[0].body.clone()
}

/// Poll (bounded) until the reuse counter of `source` reaches `n`.
async fn wait_reuse(metrics: &cws_gateway::telemetry::Metrics, source: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metrics.control_id_reuse.get(source) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "cwsgw_control_id_reuse_total{{source={source}}} = {}, want {n}",
            metrics.control_id_reuse.get(source)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_control_id_is_a_new_message_and_resends_still_dedup_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let gw = cws_gateway::serve::start(config(dir.path())).await.unwrap();
    let mut s = Conn::connect(gw.mllp_addr).await;
    // A sender whose counter restarted: one control id for an A01 and an A03.
    let a01 = adt("A01", "MSG00001", "STMARY");
    let a03 = adt("A03", "MSG00001", "STMARY");
    for msg in [&a01, &a03] {
        let ack = s.roundtrip(msg.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), "MSG00001");
    }
    wait_translated(gw.store.as_ref()).await;
    let stats = settled_stats(gw.store.as_ref()).await;
    assert_eq!((stats.total, stats.processed), (2, 2), "{stats:?}");
    let enc = only_encounter(gw.store.as_ref()).await;
    assert_eq!(enc["status"], "finished", "{enc}");
    wait_reuse(&gw.metrics, "st-mary", 1).await;
    let text = gw.metrics.render(&gw.store.metrics(), None);
    assert!(
        text.contains("cwsgw_control_id_reuse_total{source=\"st-mary\"} 1"),
        "{text}"
    );

    // A byte-identical resend of the A03, and the A01 restamped (MSH-7) with
    // CRLF endings: answered as before, nothing journaled or processed again.
    let dups = gw.store.metrics().duplicate_inputs;
    let ack = s.roundtrip(a03.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "MSG00001");
    let restamped = a01
        .replacen("|20260115083000||ADT", "|20260116120000||ADT", 1)
        .replace('\r', "\r\n");
    let ack = s.roundtrip(restamped.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 2);
    assert_eq!(gw.store.metrics().duplicate_inputs, dups + 2);
    assert_eq!(
        only_encounter(gw.store.as_ref()).await["status"],
        "finished"
    );
    assert_eq!(gw.metrics.control_id_reuse.get("st-mary"), 1);
    gw.stop().await;

    // After a restart on the same data directory the resend still dedups.
    let gw = cws_gateway::serve::start(config(dir.path())).await.unwrap();
    let mut s = Conn::connect(gw.mllp_addr).await;
    let ack = s.roundtrip(a03.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "MSG00001");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 2);
    assert_eq!(gw.store.metrics().duplicate_inputs, 1);
    // …and a third message under the id is new, and counted, again.
    let a08 = adt("A08", "MSG00001", "STMARY");
    assert_eq!(field(&s.roundtrip(a08.as_bytes()).await, "MSA", 1), "AA");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 3);
    wait_reuse(&gw.metrics, "st-mary", 1).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_al_ne_gets_one_commit_ack_without_waiting_for_translation() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    // A translation backlog: the commit ACK of a message behind it must not
    // wait for it (translation goes in journal order).
    let n = 600;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend(hl7v2::mllp::frame(
            adt("A01", &format!("BACKLOG{i}"), "STMARY").as_bytes(),
        ));
    }
    let msg = adt("A01", "ALNE1", "STMARY").replacen("|P|2.5.1\r", "|P|2.5.1|||AL|NE\r", 1);
    all.extend(hl7v2::mllp::frame(msg.as_bytes()));
    s.send_raw(&all).await;
    for _ in 0..n {
        assert_eq!(field(&s.recv().await, "MSA", 1), "AA");
    }
    let commit = s.recv().await;
    let pending = settled_stats(gw.store.as_ref()).await.pending;
    assert_eq!(field(&commit, "MSA", 1), "CA", "{commit}");
    assert_eq!(field(&commit, "MSA", 2), "ALNE1");
    assert!(
        pending > 0,
        "the commit ACK came after translation had caught up"
    );
    // MSH-16 NE: no application ACK, ever. The next frame on the connection
    // is the reply to the next message.
    wait_translated(gw.store.as_ref()).await;
    let next = s.roundtrip(adt("A01", "AFTER1", "STMARY").as_bytes()).await;
    assert_eq!(field(&next, "MSA", 1), "AA", "{next}");
    assert_eq!(field(&next, "MSA", 2), "AFTER1");
    assert_eq!(gw.metrics.hl7_acks.get(&["CA", "ADT^A01"]), 1);
    assert_eq!(gw.metrics.hl7_acks.get(&["AA", "ADT^A01"]), n as u64 + 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_enhanced_messages_get_commit_acks_in_order_then_application_acks() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let mut all = Vec::new();
    for i in 0..5 {
        let msg = adt("A01", &format!("PIPE{i}"), "STMARY").replacen(
            "|P|2.5.1\r",
            "|P|2.5.1|||AL|AL\r",
            1,
        );
        all.extend(hl7v2::mllp::frame(msg.as_bytes()));
    }
    s.send_raw(&all).await;
    let mut commits = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..10 {
        let ack = s.recv().await;
        let id = field(&ack, "MSA", 2);
        match field(&ack, "MSA", 1).as_str() {
            "CA" => {
                assert!(!apps.contains(&id), "application ACK before its commit ACK");
                commits.push(id);
            }
            "AA" => apps.push(id),
            other => panic!("unexpected {other}: {ack}"),
        }
    }
    let want: Vec<String> = (0..5).map(|i| format!("PIPE{i}")).collect();
    assert_eq!(commits, want, "commit ACKs in frame order");
    assert_eq!(apps, want, "application ACKs in frame order");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mode_always_sends_the_commit_ack_for_ne_ne() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "").replacen(
        "sending_facilities = [\"VALLEYHIE\"]",
        "sending_facilities = [\"VALLEYHIE\"]\nack_mode = \"always\"",
        1,
    );
    let cfg = cws_gateway::config::Config::from_toml(&text, "t").unwrap();
    let gw = cws_gateway::serve::start(cfg).await.unwrap();
    let mut s = Conn::connect(gw.mllp_addr).await;
    // ack_mode = "always": NE/NE still gets its commit ACK.
    let ne =
        |id: &str, fac: &str| adt("A01", id, fac).replacen("|P|2.5.1\r", "|P|2.5.1|||NE|NE\r", 1);
    let ack = s.roundtrip(ne("NENE1", "VALLEYHIE").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "CA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "NENE1");
    // The default (as_requested): none; the next reply is the next message's.
    s.send(ne("NENE2", "STMARY").as_bytes()).await;
    let ack = s.roundtrip(adt("A01", "ORIG1", "STMARY").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "ORIG1");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 3);
    gw.stop().await;

    // Validated: a closed set, and only on an adt_source.
    let bad = config_text(dir.path(), "").replacen(
        "sending_facilities = [\"VALLEYHIE\"]",
        "sending_facilities = [\"VALLEYHIE\"]\nack_mode = \"sometimes\"",
        1,
    );
    assert!(cws_gateway::config::Config::from_toml(&bad, "t").is_err());
    let bad = config_text(dir.path(), "").replacen(
        "county = \"Fresno\"",
        "county = \"Fresno\"\nack_mode = \"always\"",
        1,
    );
    let Err(err) = cws_gateway::config::Config::from_toml(&bad, "t") else {
        panic!("ack_mode on a county is refused");
    };
    let err = err.to_string();
    assert!(err.contains("ack_mode"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_control_id_is_rejected_permanently_before_the_store() {
    let (_dir, gw) = start().await;
    let mut s = Conn::connect(gw.mllp_addr).await;
    let long_id = "L".repeat(600);
    let ack = s.roundtrip(adt("A01", &long_id, "STMARY").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack}");
    let err = ack
        .split('\r')
        .find(|s| s.starts_with("ERR"))
        .expect("ERR segment");
    assert!(err.contains("102^"), "{err}");
    assert!(err.contains("MSH^1^10"), "{err}");
    assert!(!ack.contains("resend later"), "{ack}");
    assert!(!err.contains("207^"), "{err}");
    // Enhanced mode: CE with the same ERR.
    let msg = adt("A01", &long_id, "STMARY").replacen("|P|2.5.1\r", "|P|2.5.1|||AL|NE\r", 1);
    let ack = s.roundtrip(msg.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "CE", "{ack}");
    assert!(ack.contains("102^"), "{ack}");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 0);
    // The longest accepted id is stored.
    let ok_id = "K".repeat(cws_gateway::sources::adt::intake::MAX_CONTROL_ID_LEN);
    let ack = s.roundtrip(adt("A01", &ok_id, "STMARY").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    gw.stop().await;
}

/// A burst (eight senders, each with 150 messages in flight at once): every
/// message is acknowledged `AA`, and every one is translated once the burst
/// is over. While messages arrive faster than the burst rate, translation
/// waits (at most a second at a time) so the journal gets the machine; when
/// this burst was fast enough that it must have been seen as one, the
/// deferral is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acknowledged_first_and_translated_after() {
    let (_dir, gw) = start().await;
    let (conns, per) = (8usize, 150usize);
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..conns)
        .map(|c| {
            let addr = gw.mllp_addr;
            tokio::spawn(async move {
                let mut s = Conn::connect(addr).await;
                let mut all = Vec::new();
                for i in 0..per {
                    let id = format!("BURST{c}X{i}");
                    all.extend(hl7v2::mllp::frame(adt("A01", &id, "STMARY").as_bytes()));
                }
                s.send_raw(&all).await;
                for i in 0..per {
                    let ack = s.recv().await;
                    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                    assert_eq!(field(&ack, "MSA", 2), format!("BURST{c}X{i}"));
                }
            })
        })
        .collect();
    for t in senders {
        t.await.unwrap();
    }
    let rate = (conns * per) as f64 / started.elapsed().as_secs_f64();
    let total = (conns * per) as u64;
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, total);
    // Translated after the burst (bounded; a debug build translates slowly).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = settled_stats(gw.store.as_ref()).await;
        if s.pending == 0 {
            assert_eq!(s.processed, total, "{s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still pending: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metrics.translations.get(&["ok"]), total);
    let deferrals = gw.metrics.translation_deferrals.get(&["intake_burst"]);
    // Twice the burst rate on average puts some measuring window above it.
    if rate >= 2.0 * cws_gateway::sources::adt::worker::BURST_RATE as f64 {
        assert!(
            deferrals >= 1,
            "a burst at {rate:.0} msg/s deferred nothing"
        );
    }
    gw.stop().await;
}
