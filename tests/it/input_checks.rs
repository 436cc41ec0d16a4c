//! Impossible values through the real interfaces (`cws_gateway::input_check`):
//! dates that are not real or plausible and control / bidi characters are
//! refused in JSON inputs — county case events, ECM referrals, FHIR writes —
//! with one 422 issue per field, beside the schema's; in HL7 v2 they are
//! stripped, and no stored FHIR string carries one.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, repo, COUNTY_TOKEN, ECM_TOKEN, OPS_TOKEN};

fn golden(t: &str, name: &str) -> Value {
    let p = repo().join(format!("tests/golden/case_event/{t}/{name}.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let r = c
        .request(method, url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every `expression` of an OperationOutcome.
fn expressions(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["expression"][0].as_str().map(str::to_string))
        .collect()
}

/// Every string of a JSON document, with where it is.
fn strings<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((at, s)),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                strings(x, format!("{at}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                strings(x, format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_dates_and_control_characters_are_refused_in_every_json_input() {
    let (_dir, gw, base) = common::start_fhir().await;
    let c = reqwest::Client::new();
    let events = format!("{base}/cws/events");

    // A birth date that is no date, one in 2099, NUL and a bidi override in
    // names, and a schema violation: one 422 listing them all, by field.
    let mut ev = golden("case.opened", "001-court-ordered-fr");
    ev["child"]["birthDate"] = json!("9999-99-99");
    ev["child"]["name"]["family"] = json!("Ri\u{0}vera");
    ev["child"]["name"]["given"][0] = json!("Al\u{202E}ex");
    ev["case"]["openedOn"] = json!("2026-02-30");
    ev["case"]["component"] = json!("not-a-component");
    let (s, b) = send(&c, reqwest::Method::POST, &events, COUNTY_TOKEN, &ev).await;
    assert_eq!(s, 422, "{b}");
    let exprs = expressions(&b);
    for want in [
        "child.birthDate",
        "child.name.family",
        "child.name.given[0]",
        "case.openedOn",
        "case.component",
    ] {
        assert!(exprs.iter().any(|e| e == want), "{want} not in {b}");
    }
    assert!(
        !b.to_string().contains("Rivera") && !b.to_string().contains("9999-99"),
        "{b}"
    );

    // A real birth date in the future.
    let mut ev = golden("case.opened", "001-court-ordered-fr");
    ev["child"]["birthDate"] = json!("2099-03-15");
    let (s, b) = send(&c, reqwest::Method::POST, &events, COUNTY_TOKEN, &ev).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(expressions(&b), ["child.birthDate"], "{b}");
    assert!(b.to_string().contains("future"), "{b}");
    assert_eq!(
        common::settled_stats(gw.store.as_ref()).await.total,
        0,
        "nothing refused is journaled"
    );

    // The real event is accepted, and its birth date stands.
    let ev = golden("case.opened", "001-court-ordered-fr");
    let (s, b) = send(&c, reqwest::Method::POST, &events, COUNTY_TOKEN, &ev).await;
    assert_eq!(s, 202, "{b}");

    // An ECM referral form: the same checks.
    let referral = json!({
        "referralId": "R-1",
        "member": {"cin": "91000001A", "name": {"given": ["Alex"], "family": "Rivera\u{7F}"}, "birthDate": "2010-02-29"},
        "referrer": {"organizationId": "ecm-compass", "name": "Dana Ortiz", "role": "care manager", "relationship": "provider"},
        "selfReferral": false,
        "populationsOfFocus": ["8"],
        "criteria": "in foster care",
        "expedited": false
    });
    let (s, b) = send(
        &c,
        reqwest::Method::POST,
        &format!("{base}/ecm/referrals"),
        ECM_TOKEN,
        &referral,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let exprs = expressions(&b);
    for want in ["member.birthDate", "member.name.family"] {
        assert!(exprs.iter().any(|e| e == want), "{want} not in {b}");
    }

    // A FHIR write is refused the same way, and $validate (which stores
    // nothing) finds the same issues.
    let pid = mapping::uuid5("patient|cin|91000001A");
    let cp = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": format!("Patient/{pid}")},
        "title": "Plan\u{2066} A",
        "period": {"start": "2026-04-31", "end": "2026-01-10T25:00:00Z"}});
    for url in [
        format!("{base}/fhir/CarePlan"),
        format!("{base}/fhir/CarePlan/$validate"),
    ] {
        let (s, b) = send(&c, reqwest::Method::POST, &url, ECM_TOKEN, &cp).await;
        // A create is refused; $validate answers its OperationOutcome (200).
        let want = if url.ends_with("$validate") { 200 } else { 422 };
        assert_eq!(s, want, "{url}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome", "{url}: {b}");
        let exprs = expressions(&b);
        for want in [
            "CarePlan.title",
            "CarePlan.period.start",
            "CarePlan.period.end",
        ] {
            assert!(exprs.iter().any(|e| e == want), "{url}: {want} not in {b}");
        }
    }
    let (_, found) = send(
        &c,
        reqwest::Method::GET,
        &format!("{base}/fhir/CarePlan?patient={pid}"),
        OPS_TOKEN,
        &Value::Null,
    )
    .await;
    assert_eq!(found["total"].as_u64().unwrap_or(0), 0, "{found}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_hl7_are_stripped_before_anything_is_stored() {
    let (_dir, gw, base) = common::start_fhir().await;
    // Raw NUL, ESC, DEL and C1 bytes, U+202E and U+2067 in UTF-8, and a
    // control made by an HL7 escape (\X07\) in names, ids and the address.
    let msg = "MSH|^~\\&|EPIC|STMARY|CWSGW|CWSGW|20260115083000||ADT^A01^ADT_A01|CTL1|P|2.5.1|||||||UNICODE UTF-8\r\
EVN|A01|20260115083000\r\
PID|1||MRN\u{1B}1001^^^STMARY^MR~91000001A^^^CA-DHCS^MA||Ri\u{0}ve\u{202E}ra^Al\u{2067}ex\u{7F}^\\X07\\J||20100315|M|||12\u{85}3 Main St^^Fresno^CA^93721\r\
PV1|1|I|3EAST^301^A^STMARY||||1234567^Chen^Linda|||MED||||7|||||VCTL1\r";
    let mut conn = common::Conn::connect(gw.mllp_addr).await;
    let ack = conn.roundtrip(msg.as_bytes()).await;
    assert_eq!(common::field(&ack, "MSA", 1), "AA", "{ack:?}");
    common::wait_translated(gw.store.as_ref()).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let patient = loop {
        let (s, b) = send(
            &c,
            reqwest::Method::GET,
            &format!("{base}/fhir/Patient/{pid}"),
            OPS_TOKEN,
            &Value::Null,
        )
        .await;
        if s == 200 {
            break b;
        }
        assert!(Instant::now() < deadline, "{s} {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(patient["name"][0]["family"], "Rivera", "{patient}");
    assert_eq!(
        patient["name"][0]["given"],
        json!(["Alex", "J"]),
        "{patient}"
    );
    // Nothing the message wrote carries one: every stored resource.
    let mut all = Vec::new();
    strings(&patient, "Patient".into(), &mut all);
    let mut stored = gw.store.resources_by_patient(&pid, None).await.unwrap();
    for t in ["MessageHeader", "Provenance", "Organization"] {
        let q = store::ResourceQuery {
            resource_type: t.into(),
            limit: 100,
            ..store::ResourceQuery::default()
        };
        stored.extend(gw.store.resource_search(&q).await.unwrap());
    }
    for r in &stored {
        strings(&r.body, format!("{}/{}", r.resource_type, r.id), &mut all);
    }
    assert!(all.len() > 20, "{}", all.len());
    for (at, s) in &all {
        assert!(mapping::text::is_clean(s), "{at}: {s:?}");
    }
    gw.stop().await;
}
