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
    let stats = gw.store.journal_stats().await.unwrap();
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
    let stats = gw.store.journal_stats().await.unwrap();
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
    assert_eq!(gw.store.journal_stats().await.unwrap().total, 0);
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
    assert_eq!(gw.store.journal_stats().await.unwrap().total, 1);
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
    let stats = gw.store.journal_stats().await.unwrap();
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
    assert_eq!(gw.store.journal_stats().await.unwrap().total, 320);
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
