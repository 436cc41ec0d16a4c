//! Demographic precedence (`mappings/patient-precedence.toml`, docs/county.md)
//! through the real interfaces: a county case event over HTTP and a hospital
//! ADT over MLLP for the same child end as one Patient on which the county's
//! name, birth date and sex stand, the hospital's differing name is kept as
//! an additional name and the identifiers of both are merged.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, repo, COUNTY_TOKEN, OPS_TOKEN};

const SOURCE_URL: &str = "https://gateway.example.org/fhir/StructureDefinition/demographic-source";

fn case_opened(event_id: &str, cin: &str, client_id: &str) -> Value {
    let p = repo().join("tests/golden/case_event/case.opened/001-court-ordered-fr.json");
    let mut ev: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    ev["eventId"] = json!(event_id);
    ev["child"]["cin"] = json!(cin);
    ev["child"]["clientId"] = json!(client_id);
    ev
}

/// An ADT^{trigger} from St Mary for the child with `cin`: name
/// Rivers^Alexander, born 2011-01-01, sex F (all unlike the county's).
fn adt(trigger: &str, control_id: &str, cin: &str) -> String {
    format!(
        "MSH|^~\\&|EPIC|STMARY|CWSGW|CWSGW|20260115083000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1\r\
EVN|{trigger}|20260115083000\r\
PID|1||MRN-{control_id}^^^STMARY^MR~{cin}^^^CA-DHCS^MA||Rivers^Alexander^^^^^L||20110101|F|||123 Main St^^Fresno^CA^93721\r\
PV1|1|I|3EAST^301^A^STMARY||||1234567^Chen^Linda|||MED||||7|||||V{control_id}\r"
    )
}

fn source(v: &Value) -> Option<&str> {
    v["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == SOURCE_URL)?["valueCode"]
        .as_str()
}

async fn post_event(c: &reqwest::Client, base: &str, ev: &Value) {
    let r = c
        .post(format!("{base}/cws/events"))
        .bearer_auth(COUNTY_TOKEN)
        .header("content-type", "application/json")
        .body(ev.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_eq!(s, 202, "{}", r.text().await.unwrap());
}

async fn send_adt(gw: &cws_gateway::serve::Running, msg: &str) {
    let mut conn = common::Conn::connect(gw.mllp_addr).await;
    let ack = conn.roundtrip(msg.as_bytes()).await;
    assert_eq!(common::field(&ack, "MSA", 1), "AA", "{ack:?}");
    common::wait_translated(gw.store.as_ref()).await;
}

/// The Patient over FHIR, once it is at least at `version`.
async fn read_patient(c: &reqwest::Client, base: &str, id: &str, version: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .get(format!("{base}/fhir/Patient/{id}"))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        let v = b["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if s == 200 && v >= version {
            return b;
        }
        assert!(Instant::now() < deadline, "{s} {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn families(p: &Value) -> Vec<(String, String)> {
    p["name"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["family"].as_str().unwrap_or("").to_string(),
                n["use"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn identifier_values(p: &Value) -> Vec<&str> {
    p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["value"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_countys_demographics_stand_and_a_hospitals_name_is_kept() {
    let (_dir, gw, base) = common::start_fhir().await;
    let c = reqwest::Client::new();

    // County first, then the hospital's A08 with another name, birth date, sex.
    post_event(&c, &base, &case_opened("evt-p1", "91000001A", "C-1001")).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    let county = read_patient(&c, &base, &pid, 1).await;
    assert_eq!(source(&county["name"][0]), Some("county"), "{county}");
    send_adt(&gw, &adt("A08", "PREC1", "91000001A")).await;
    let p = read_patient(&c, &base, &pid, 2).await;
    assert_eq!(p["birthDate"], "2010-03-15", "{p}");
    assert_eq!(p["gender"], "male", "{p}");
    assert_eq!(source(&p["_birthDate"]), Some("county"), "{p}");
    assert_eq!(
        families(&p),
        [
            ("Rivera".to_string(), "official".to_string()),
            ("Rivers".to_string(), "old".to_string())
        ],
        "{p}"
    );
    assert_eq!(p["name"][0]["given"], json!(["Alex", "J"]));
    assert_eq!(p["name"][1]["given"], json!(["Alexander"]));
    assert_eq!(source(&p["name"][1]), Some("hospital"), "{p}");
    // Identifiers merged: the county's client id, the CIN, the hospital MRN.
    let ids = identifier_values(&p);
    for want in ["C-1001", "91000001A", "MRN-PREC1"] {
        assert!(ids.contains(&want), "{want} not in {ids:?}");
    }
    // Still valid FHIR R4 (the extensions, `_birthDate`, `use: old`).
    let v = cws_gateway::resources::validate::FhirValidator::compile(&["Patient"]).unwrap();
    assert_eq!(v.check("Patient", &p), vec![], "{p}");
    // The hospital's address, which the county does not send, is kept.
    assert_eq!(p["address"][0]["city"], "Fresno");
    // The same A08 again (a new control id) adds no second copy of the name.
    send_adt(&gw, &adt("A08", "PREC2", "91000001A")).await;
    let again = read_patient(&c, &base, &pid, 2).await;
    assert_eq!(families(&again).len(), 2, "{again}");
    // A later county event: still the county's values, the hospital's name kept.
    let mut placed = case_opened("evt-p1b", "91000001A", "C-1001");
    placed["child"]["name"]["family"] = json!("Rivera-Lopez");
    post_event(&c, &base, &placed).await;
    let p = read_patient(&c, &base, &pid, 4).await;
    let fams: Vec<String> = families(&p).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fams, ["Rivera-Lopez", "Rivers"], "{p}");

    // Two hospital messages sent back to back (likely translated in one
    // batch): each merges into the one before, both names are kept.
    let mut conn = common::Conn::connect(gw.mllp_addr).await;
    let one = adt("A08", "PREC4", "91000001A").replace("Rivers^Alexander", "Rivas^Alex");
    let two = adt("A08", "PREC5", "91000001A").replace("Rivers^Alexander", "Riviera^Alex");
    conn.send(one.as_bytes()).await;
    conn.send(two.as_bytes()).await;
    for _ in 0..2 {
        let ack = conn.recv().await;
        assert_eq!(common::field(&ack, "MSA", 1), "AA", "{ack:?}");
    }
    common::wait_translated(gw.store.as_ref()).await;
    let p = read_patient(&c, &base, &pid, 5).await;
    let fams: Vec<String> = families(&p).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fams, ["Rivera-Lopez", "Rivers", "Rivas", "Riviera"], "{p}");
    let ids = identifier_values(&p);
    for want in ["MRN-PREC4", "MRN-PREC5", "MRN-PREC1", "C-1001"] {
        assert!(ids.contains(&want), "{want} not in {ids:?}");
    }

    // Hospital first, then the county: the county takes over, the
    // hospital's name stays as an additional one.
    send_adt(&gw, &adt("A01", "PREC3", "93000003C")).await;
    let pid2 = mapping::uuid5("patient|cin|93000003C");
    let h = read_patient(&c, &base, &pid2, 1).await;
    assert_eq!(h["birthDate"], "2011-01-01");
    post_event(&c, &base, &case_opened("evt-p2", "93000003C", "C-3003")).await;
    let p = read_patient(&c, &base, &pid2, 2).await;
    assert_eq!(p["birthDate"], "2010-03-15", "{p}");
    assert_eq!(p["gender"], "male", "{p}");
    assert_eq!(
        families(&p),
        [
            ("Rivera".to_string(), "official".to_string()),
            ("Rivers".to_string(), "old".to_string())
        ],
        "{p}"
    );
    let ids = identifier_values(&p);
    for want in ["C-3003", "93000003C", "MRN-PREC3"] {
        assert!(ids.contains(&want), "{want} not in {ids:?}");
    }
    gw.stop().await;
}
