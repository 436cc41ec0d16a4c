use super::*;
use serde_json::json;

const CFG: &str = r#"
[[organizations]]
id = "county-fresno"
kind = "county"
name = "Fresno"
county = "Fresno"
endpoint = "http://127.0.0.1:9001/fhir"

[[organizations]]
id = "county-kern"
kind = "county"
name = "Kern"
county = "Kern"

[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
endpoint = "http://127.0.0.1:9101/fhir"
plan_codes = ["A"]
counties = ["Fresno"]

[[organizations]]
id = "mcp-b"
kind = "mcp"
name = "Plan B"
endpoint = "http://127.0.0.1:9102/fhir"
plan_codes = ["B"]
counties = ["Fresno"]

[[organizations]]
id = "ecm-compass"
kind = "ecm_provider"
name = "Compass"
endpoint = "http://127.0.0.1:9201/fhir"
mcps = ["mcp-a"]

[[organizations]]
id = "ecm-bridges"
kind = "ecm_provider"
name = "Bridges"
endpoint = "http://127.0.0.1:9202/fhir"
mcps = ["mcp-b"]

[[organizations]]
id = "st-mary"
kind = "adt_source"
name = "St Mary"
sending_facilities = ["STMARY"]
"#;

fn cfg() -> Config {
    Config::from_toml(CFG, "t").unwrap()
}

fn rules() -> RoutingRules {
    RoutingRules::default_rules().unwrap()
}

fn sr(performer: &str) -> Value {
    json!({"resourceType": "ServiceRequest", "id": "sr1", "status": "active",
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "Organization/county-fresno"},
        "performer": [{"reference": format!("Organization/{performer}")}]})
}

fn task(status: &str, owner: Option<&str>) -> Value {
    let mut t = json!({"resourceType": "Task", "id": "t1", "status": status, "intent": "order",
        "for": {"reference": "Patient/p1"}, "focus": {"reference": "ServiceRequest/sr1"},
        "requester": {"reference": "Organization/county-fresno"}});
    if let Some(o) = owner {
        t["owner"] = json!({"reference": format!("Organization/{o}")});
    }
    t
}

fn coverage(plan: &str) -> Value {
    json!({"resourceType": "Coverage", "id": "cov1", "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "class": [{"type": {"coding": [{"code": "plan"}]}, "value": plan}]})
}

fn episode() -> Value {
    json!({"resourceType": "EpisodeOfCare", "id": "eoc1", "status": "active",
        "patient": {"reference": "Patient/p1"},
        "managingOrganization": {"reference": "Organization/county-fresno"}})
}

fn view(resources: &[Value]) -> MemberView {
    MemberView::from_resources(&cfg(), "p1", &[], resources)
}

fn input(source: &str, event: Option<&str>, written: Vec<Value>) -> RouteInput {
    RouteInput {
        event: event.map(str::to_string),
        source_org: source.into(),
        written,
        out_of_county: false,
        event_time: None,
    }
}

fn recipients(p: &RoutePlan) -> Vec<(&str, &str)> {
    p.deliveries
        .iter()
        .map(|d| (d.rule.as_str(), d.recipient.as_str()))
        .collect()
}

#[test]
fn shipped_rules_load_and_print() {
    let r = rules();
    assert!(r.rules.len() >= 8);
    let text = r.to_string();
    assert!(text.contains("adt-notification"), "{text}");
    assert!(text.contains("assigned_ecm + member_mcp"), "{text}");
}

#[test]
fn bad_rules_are_refused() {
    let unknown = "version: 1\nrules:\n  - id: x\n    trigger: {resource: Task}\n    recipients: [member_mcp]\n    purpose: referral\n    kind: transaction\n    package: written\n    colour: red\n";
    assert!(matches!(
        RoutingRules::from_yaml(unknown),
        Err(RulesError::Parse(_))
    ));
    let bad_rel = "version: 1\nrules:\n  - id: x\n    trigger: {resource: Task}\n    recipients: [everyone]\n    purpose: referral\n    kind: transaction\n    package: written\n";
    assert!(RoutingRules::from_yaml(bad_rel).is_err());
    let no_trigger = "version: 1\nrules:\n  - id: x\n    trigger: {}\n    recipients: [member_mcp]\n    purpose: referral\n    kind: transaction\n    package: written\n";
    assert!(matches!(
        RoutingRules::from_yaml(no_trigger),
        Err(RulesError::Invalid(_))
    ));
    let mismatch = "version: 1\nrules:\n  - id: x\n    trigger: {events: [adt.A01]}\n    recipients: [member_mcp]\n    purpose: notification\n    kind: transaction\n    package: adt_notification\n";
    assert!(matches!(
        RoutingRules::from_yaml(mismatch),
        Err(RulesError::Invalid(_))
    ));
    let dup = "version: 1\nrules:\n  - id: x\n    trigger: {resource: CarePlan}\n    recipients: [case_county]\n    purpose: care_coordination\n    kind: transaction\n    package: written\n  - id: x\n    trigger: {resource: CarePlan}\n    recipients: [case_county]\n    purpose: care_coordination\n    kind: transaction\n    package: written\n";
    assert!(RoutingRules::from_yaml(dup)
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    assert!(RoutingRules::from_yaml(&"#".repeat(MAX_RULES_BYTES_PLUS)).is_err());
}

const MAX_RULES_BYTES_PLUS: usize = rules::MAX_RULES_BYTES + 1;

#[test]
fn referral_goes_to_the_mcp_serving_plan_and_county() {
    let written = vec![
        sr("mcp-a"),
        task("requested", None),
        json!({"resourceType": "Patient", "id": "p1"}),
    ];
    let mut all = written.clone();
    all.extend([coverage("A"), episode()]);
    let v = view(&all);
    assert_eq!(v.member_mcp.as_deref(), Some("mcp-a"));
    assert_eq!(v.county.as_deref(), Some("Fresno"));
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &v);
    assert_eq!(recipients(&p), vec![("referral-to-performer", "mcp-a")]);
    let d = &p.deliveries[0];
    assert_eq!(d.purpose, RoutePurpose::Referral);
    assert_eq!(d.kind, DeliveryKind::Transaction);
    assert_eq!(
        d.resources,
        vec!["ServiceRequest/sr1", "Task/t1", "Patient/p1"]
    );
    let nd = d.new_delivery(Utc::now(), None);
    assert_eq!(nd.endpoint, "mcp-a");
    assert_eq!(nd.ordering_key, "p1");
    assert_eq!(nd.payload["purpose"], "referral");
}

#[test]
fn referral_to_an_mcp_of_another_plan_is_refused_with_a_reason() {
    let written = vec![sr("mcp-b")];
    let mut all = written.clone();
    all.extend([coverage("A"), episode()]);
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &view(&all));
    // The member's plan, which authorizes, still receives it.
    assert_eq!(recipients(&p), vec![("referral-to-performer", "mcp-a")]);
    assert_eq!(p.refusals[0].reason, "mcp-does-not-serve-plan-code");
}

#[test]
fn referral_without_an_mcp_for_plan_and_county_is_refused() {
    // Plan code Z is served by nobody; no performer named.
    let mut s = sr("mcp-a");
    s.as_object_mut().unwrap().remove("performer");
    let written = vec![s];
    let mut all = written.clone();
    all.extend([coverage("Z"), episode()]);
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &view(&all));
    assert!(p.deliveries.is_empty());
    assert_eq!(p.refusals[0].reason, "no-authorizing-mcp");
    assert_eq!(
        p.refusals[0].relation,
        Relation::ServiceRequestAuthorizingMcp
    );
    assert_eq!(p.refusals[1].reason, "no-mcp-for-plan-county");
    assert_eq!(p.refusals[1].relation, Relation::ServiceRequestPerformer);
}

#[test]
fn referral_names_a_contracted_ecm_provider_directly() {
    let written = vec![sr("ecm-compass")];
    let mut all = written.clone();
    all.extend([coverage("A"), episode()]);
    let p = rules().plan(
        &cfg(),
        &input("county-fresno", None, written.clone()),
        &view(&all),
    );
    // The plan, which authorizes, and the provider the referral names.
    assert_eq!(
        recipients(&p),
        vec![
            ("referral-to-performer", "mcp-a"),
            ("referral-to-performer", "ecm-compass")
        ]
    );
    // Bridges is contracted with mcp-b only: the plan alone receives it.
    let written = vec![sr("ecm-bridges")];
    let mut all = written.clone();
    all.extend([coverage("A"), episode()]);
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &view(&all));
    assert_eq!(recipients(&p), vec![("referral-to-performer", "mcp-a")]);
    assert_eq!(p.refusals[0].reason, "ecm-not-contracted-with-member-mcp");
}

#[test]
fn a_referral_goes_to_the_mcp_its_extension_names_once() {
    // No Coverage: the plan is the ServiceRequest's authorizing MCP.
    let mut s = sr("ecm-compass");
    s["extension"] = serde_json::json!([{"url": "https://gw.example.org/StructureDefinition/authorizing-mcp",
        "valueReference": {"reference": "Organization/mcp-a"}}]);
    let written = vec![s];
    let all = written.clone();
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &view(&all));
    assert_eq!(
        recipients(&p),
        vec![
            ("referral-to-performer", "mcp-a"),
            ("referral-to-performer", "ecm-compass")
        ]
    );
    // The plan as performer too: one delivery, not two.
    let mut s = sr("mcp-a");
    s["extension"] = serde_json::json!([{"url": "https://gw.example.org/StructureDefinition/authorizing-mcp",
        "valueReference": {"reference": "Organization/mcp-a"}}]);
    let written = vec![s];
    let mut all = written.clone();
    all.extend([coverage("A"), episode()]);
    let p = rules().plan(&cfg(), &input("county-fresno", None, written), &view(&all));
    assert_eq!(recipients(&p), vec![("referral-to-performer", "mcp-a")]);
}

#[test]
fn accepted_task_assigns_the_ecm_provider_and_reports_status_to_the_referrer() {
    let stored_sr = sr("mcp-a");
    let written = vec![task("accepted", Some("ecm-compass"))];
    let mut all = vec![stored_sr, coverage("A"), episode()];
    all.extend(written.clone());
    let v = view(&all);
    assert_eq!(v.assigned_ecm.as_deref(), Some("ecm-compass"));
    let p = rules().plan(&cfg(), &input("mcp-a", None, written), &v);
    assert_eq!(
        recipients(&p),
        vec![
            ("task-assignment-to-ecm", "ecm-compass"),
            ("task-status-to-referrer", "county-fresno")
        ]
    );
    assert_eq!(p.deliveries[1].package, Package::TaskStatus);
    assert_eq!(p.deliveries[1].resources, vec!["Task/t1"]);
    assert_eq!(p.deliveries[0].resources[0], "ServiceRequest/sr1");
}

#[test]
fn task_status_goes_to_that_tasks_requester_not_the_latest_referrer() {
    // mcp-b referred the member after the county did: the county's Task
    // status still goes to the county, never to mcp-b.
    let mut later = sr("mcp-a");
    later["id"] = json!("sr2");
    later["requester"] = json!({"reference": "Organization/mcp-b"});
    let written = vec![task("accepted", None)];
    let mut all = vec![sr("mcp-a"), coverage("A"), episode(), later];
    all.extend(written.clone());
    let v = view(&all);
    assert_eq!(v.referring_org.as_deref(), Some("mcp-b"));
    let p = rules().plan(&cfg(), &input("mcp-a", None, written), &v);
    assert_eq!(
        recipients(&p),
        vec![("task-status-to-referrer", "county-fresno")]
    );
    // A Task naming no requester is refused with a reason, not guessed.
    let mut bare = task("accepted", None);
    bare.as_object_mut().unwrap().remove("requester");
    // (The case county is still told, by its own rule.)
    let p = rules().plan(&cfg(), &input("mcp-a", None, vec![bare]), &v);
    assert_eq!(
        recipients(&p),
        vec![("task-status-to-case-county", "county-fresno")]
    );
    assert_eq!(p.refusals[0].reason, "no-referring-org");
}

/// A Task of the county's referral, with the authorizing MCP recorded.
fn clr_task(status: &str, owner: &str, requester: &str) -> Value {
    let mut t = task(status, Some(owner));
    t["requester"] = json!({"reference": format!("Organization/{requester}")});
    t["extension"] = json!([{"url": "https://gw.example/StructureDefinition/authorizing-mcp",
        "valueReference": {"reference": "Organization/mcp-a"}}]);
    t
}

#[test]
fn a_status_change_reaches_each_party_once() {
    let all = |t: &Value| {
        let mut v = vec![sr("mcp-a"), coverage("A"), episode()];
        v.push(t.clone());
        v
    };
    // The MCP assigns: the provider gets the referral package (its status
    // projection would carry nothing more: left out), the county is told
    // once though it is both the referrer and the case county.
    let t = clr_task("accepted", "ecm-compass", "county-fresno");
    let p = rules().plan(
        &cfg(),
        &input("mcp-a", None, vec![t.clone()]),
        &view(&all(&t)),
    );
    assert_eq!(
        recipients(&p),
        vec![
            ("task-assignment-to-ecm", "ecm-compass"),
            ("task-status-to-referrer", "county-fresno"),
            ("care-plan-handoff", "ecm-compass"),
        ]
        .into_iter()
        .filter(|(r, _)| *r != "care-plan-handoff")
        .collect::<Vec<_>>()
    );
    // The provider moves it on: the MCP that authorized it and the county
    // are told, never the provider itself.
    let t = clr_task("in-progress", "ecm-compass", "county-fresno");
    let p = rules().plan(
        &cfg(),
        &input("ecm-compass", None, vec![t.clone()]),
        &view(&all(&t)),
    );
    assert_eq!(
        recipients(&p),
        vec![
            ("task-status-to-referrer", "county-fresno"),
            ("task-status-to-authorizing-mcp", "mcp-a"),
        ]
    );
    // Another organization referred: the case county is told too, by its
    // own rule; the referrer by its.
    let t = clr_task("completed", "ecm-compass", "mcp-b");
    let p = rules().plan(
        &cfg(),
        &input("mcp-a", None, vec![t.clone()]),
        &view(&all(&t)),
    );
    assert_eq!(
        recipients(&p),
        vec![
            ("task-status-to-referrer", "mcp-b"),
            ("task-status-to-case-county", "county-fresno"),
            ("task-status-to-ecm-provider", "ecm-compass"),
        ]
    );
    assert!(p
        .deliveries
        .iter()
        .all(|d| d.package == Package::TaskStatus));
}

#[test]
fn a_provider_change_tells_the_former_provider() {
    let mut c = cfg();
    c.organizations.iter_mut().for_each(|o| {
        if o.id == "ecm-bridges" {
            o.mcps = vec!["mcp-a".into()];
        }
    });
    let mut t = clr_task("in-progress", "ecm-bridges", "county-fresno");
    t["extension"].as_array_mut().unwrap().push(json!({
        "url": "https://gw.example/StructureDefinition/previous-owner",
        "valueReference": {"reference": "Organization/ecm-compass"}}));
    let all = vec![sr("mcp-a"), coverage("A"), episode(), t.clone()];
    let v = MemberView::from_resources(&c, "p1", &[], &all);
    let p = rules().plan(&c, &input("mcp-a", None, vec![t.clone()]), &v);
    let got = recipients(&p);
    assert!(
        got.contains(&("task-status-to-former-provider", "ecm-compass")),
        "{got:?}"
    );
    assert!(
        got.contains(&("task-reassignment-to-ecm", "ecm-bridges")),
        "{got:?}"
    );
    // The new provider's status projection is inside its referral package.
    assert!(
        !got.contains(&("task-status-to-ecm-provider", "ecm-bridges")),
        "{got:?}"
    );
    // Without the marker (any later update) the former provider hears nothing.
    let plain = clr_task("in-progress", "ecm-bridges", "county-fresno");
    let p = rules().plan(&c, &input("mcp-a", None, vec![plain]), &v);
    let got = recipients(&p);
    assert!(!got.iter().any(|(_, o)| *o == "ecm-compass"), "{got:?}");
    assert!(p.refusals.iter().all(|r| r.reason != "no-previous-owner"));
}

#[test]
fn deliveries_covered_by_another_to_the_same_recipient_are_left_out() {
    let d = |rule: &str, to: &str, res: &[&str]| Planned {
        rule: rule.into(),
        recipient: to.into(),
        relation: Relation::CaseCounty,
        purpose: RoutePurpose::CareCoordination,
        kind: DeliveryKind::Transaction,
        package: Package::TaskStatus,
        patient_id: "p1".into(),
        resources: res.iter().map(|r| r.to_string()).collect(),
        event: None,
        focus: None,
        event_time: None,
    };
    let mut v = vec![
        d("a", "x", &["Task/t1"]),
        d("b", "x", &["ServiceRequest/s", "Task/t1"]),
        d("c", "x", &["Task/t1"]),
        d("d", "y", &["Task/t1"]),
        d("e", "x", &["CarePlan/c1"]),
    ];
    dedup_across_rules(&mut v);
    let left: Vec<&str> = v.iter().map(|p| p.rule.as_str()).collect();
    assert_eq!(left, ["b", "d", "e"]);
    let mut v = vec![d("a", "x", &["Task/t1"]), d("c", "x", &["Task/t1"])];
    dedup_across_rules(&mut v);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].rule, "a");
}

#[test]
fn a_task_names_its_patient_in_for() {
    let inp = input("mcp-a", None, vec![task("accepted", Some("ecm-compass"))]);
    assert_eq!(inp.patient_id().as_deref(), Some("p1"));
}

#[test]
fn a_change_is_not_echoed_to_its_sender() {
    // The ECM provider accepts its own assignment: only the referrer hears.
    let written = vec![task("accepted", Some("ecm-compass"))];
    let mut all = vec![sr("mcp-a"), coverage("A"), episode()];
    all.extend(written.clone());
    let p = rules().plan(&cfg(), &input("ecm-compass", None, written), &view(&all));
    assert_eq!(
        recipients(&p),
        vec![("task-status-to-referrer", "county-fresno")]
    );
}

#[test]
fn careplan_from_an_ecm_provider_goes_to_the_case_county() {
    let cp =
        json!({"resourceType": "CarePlan", "id": "cp1", "subject": {"reference": "Patient/p1"}});
    let all = vec![cp.clone(), episode()];
    let p = rules().plan(
        &cfg(),
        &input("ecm-compass", None, vec![cp.clone()]),
        &view(&all),
    );
    assert_eq!(
        recipients(&p),
        vec![("careplan-to-county", "county-fresno")]
    );
    // From the county itself: not routed.
    let p = rules().plan(&cfg(), &input("county-fresno", None, vec![cp]), &view(&all));
    assert!(p.deliveries.is_empty());
}

fn adt_bundle(trigger: &str) -> Value {
    json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "MessageHeader", "id": "mh", "eventCoding": {"code": trigger}}},
        {"resource": {"resourceType": "Patient", "id": "p1"}},
        {"resource": {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
            "period": {"start": "2026-01-15T08:25:00Z"}}},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}}
    ]})
}

#[test]
fn adt_for_an_assigned_member_notifies_ecm_and_mcp() {
    let stored = vec![
        sr("mcp-a"),
        task("in-progress", Some("ecm-compass")),
        coverage("A"),
        episode(),
    ];
    let v = view(&stored);
    for (trigger, event) in [
        ("A01", "notification-admit"),
        ("A04", "notification-admit"),
        ("A02", "notification-transfer"),
        ("A03", "notification-discharge"),
    ] {
        let inp = RouteInput::from_adt_bundle(&adt_bundle(trigger), "st-mary");
        assert_eq!(inp.patient_id().as_deref(), Some("p1"));
        assert_eq!(
            inp.event_time.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-15T08:25:00+00:00")
        );
        let p = rules().plan(&cfg(), &inp, &v);
        assert_eq!(
            recipients(&p),
            vec![
                ("adt-notification", "ecm-compass"),
                ("adt-notification", "mcp-a")
            ],
            "{trigger}"
        );
        let d = &p.deliveries[0];
        assert_eq!(d.kind, DeliveryKind::Notification);
        assert_eq!(d.event.as_deref(), Some(event));
        assert_eq!(d.focus.as_deref(), Some("Encounter/e1"));
        assert_eq!(
            d.resources,
            vec!["Encounter/e1", "Patient/p1", "Condition/c1"]
        );
    }
    // A date-only period (no time zone in the source) counts from its start.
    let mut dated = adt_bundle("A01");
    dated["entry"][2]["resource"]["period"]["start"] = json!("2026-01-15");
    let inp = RouteInput::from_adt_bundle(&dated, "st-mary");
    assert_eq!(
        inp.event_time.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-01-15T00:00:00+00:00")
    );
    // A08 (update) notifies nobody.
    let inp = RouteInput::from_adt_bundle(&adt_bundle("A08"), "st-mary");
    assert!(rules().plan(&cfg(), &inp, &v).deliveries.is_empty());
}

#[test]
fn adt_without_an_open_assignment_notifies_nobody() {
    for stored in [
        vec![sr("mcp-a"), coverage("A")],
        vec![
            sr("mcp-a"),
            task("completed", Some("ecm-compass")),
            coverage("A"),
        ],
        vec![
            sr("mcp-a"),
            task("requested", Some("ecm-compass")),
            coverage("A"),
        ],
    ] {
        let v = view(&stored);
        assert_eq!(v.assigned_ecm, None);
        let inp = RouteInput::from_adt_bundle(&adt_bundle("A01"), "st-mary");
        let p = rules().plan(&cfg(), &inp, &v);
        assert!(p.deliveries.is_empty() && p.refusals.is_empty(), "{p:?}");
    }
}

#[test]
fn case_closed_and_out_of_county_placement_go_to_ecm_and_mcp() {
    let stored = vec![
        sr("mcp-a"),
        task("accepted", Some("ecm-compass")),
        coverage("A"),
        episode(),
    ];
    let v = view(&stored);
    let mut eoc = episode();
    eoc["status"] = json!("finished");
    let p = rules().plan(
        &cfg(),
        &input("county-fresno", Some("case.closed"), vec![eoc.clone()]),
        &v,
    );
    assert_eq!(
        recipients(&p),
        vec![
            ("case-closed-to-ecm", "ecm-compass"),
            ("case-closed-to-ecm", "mcp-a")
        ]
    );
    assert_eq!(p.deliveries[0].resources, vec!["EpisodeOfCare/eoc1"]);
    // In-county placement: nothing; out of county: both.
    let loc = json!({"resourceType": "EpisodeOfCare", "id": "eoc1", "patient": {"reference": "Patient/p1"}});
    let mut inp = input("county-fresno", Some("placement.changed"), vec![loc]);
    assert!(rules().plan(&cfg(), &inp, &v).deliveries.is_empty());
    inp.out_of_county = true;
    assert_eq!(rules().plan(&cfg(), &inp, &v).deliveries.len(), 2);
}

#[test]
fn member_view_prefers_coverage_then_plan_county_then_referral() {
    let payor = json!({"resourceType": "Coverage", "id": "cov2", "status": "active",
        "beneficiary": {"reference": "Patient/p1"}, "payor": [{"reference": "Organization/mcp-b"}]});
    assert_eq!(
        view(&[sr("mcp-a"), payor]).member_mcp.as_deref(),
        Some("mcp-b")
    );
    assert_eq!(
        view(&[sr("mcp-b"), coverage("A"), episode()])
            .member_mcp
            .as_deref(),
        Some("mcp-a")
    );
    assert_eq!(view(&[sr("mcp-b")]).member_mcp.as_deref(), Some("mcp-b"));
    assert_eq!(
        view(&[sr("mcp-b")]).case_county.as_deref(),
        Some("county-fresno")
    );
}

#[test]
fn recipients_without_an_endpoint_are_refused() {
    let mut c = cfg();
    for o in &mut c.organizations {
        if o.id == "county-fresno" {
            o.endpoint = None;
        }
    }
    let cp =
        json!({"resourceType": "CarePlan", "id": "cp1", "subject": {"reference": "Patient/p1"}});
    let v = MemberView::from_resources(&c, "p1", &[], &[cp.clone(), episode()]);
    let p = rules().plan(&c, &input("ecm-compass", None, vec![cp]), &v);
    assert!(p.deliveries.is_empty());
    assert_eq!(p.refusals[0].reason, "recipient-has-no-endpoint");
}

#[test]
fn a_cft_meeting_goes_to_every_invited_organization_but_the_county() {
    let appt = json!({"resourceType": "Appointment", "id": "ap1", "status": "booked",
        "participant": [
            {"actor": {"reference": "Patient/p1"}},
            {"actor": {"reference": "Organization/ecm-compass"}},
            {"actor": {"reference": "Organization/mcp-a"}},
            {"actor": {"reference": "Organization/county-fresno"}},
            {"actor": {"reference": "Organization/not-configured"}}]});
    let v = view(&[episode(), appt.clone()]);
    let p = rules().plan(
        &cfg(),
        &input("county-fresno", Some("cft.scheduled"), vec![appt.clone()]),
        &v,
    );
    assert_eq!(
        recipients(&p),
        vec![
            ("cft-invitation", "ecm-compass"),
            ("cft-invitation", "mcp-a")
        ]
    );
    assert_eq!(p.deliveries[0].resources, vec!["Appointment/ap1"]);
    // Not a CFT event: nothing.
    assert!(rules()
        .plan(&cfg(), &input("county-fresno", None, vec![appt]), &v)
        .deliveries
        .is_empty());
}

#[test]
fn a_new_provider_gets_the_care_plans_of_others_not_its_own() {
    let cp = |id: &str, author: &str| {
        json!({"resourceType": "CarePlan", "id": id, "status": "active", "subject": {"reference": "Patient/p1"},
            "author": {"reference": format!("Organization/{author}")}})
    };
    let accepted = task("accepted", Some("ecm-compass"));
    let v = view(&[
        episode(),
        coverage("A"),
        cp("cp-old", "ecm-bridges"),
        cp("cp-own", "ecm-compass"),
        accepted.clone(),
    ]);
    let p = rules().plan(&cfg(), &input("mcp-a", None, vec![accepted.clone()]), &v);
    let handoff: Vec<&Planned> = p
        .deliveries
        .iter()
        .filter(|d| d.rule == "care-plan-handoff")
        .collect();
    assert_eq!(handoff.len(), 1);
    assert_eq!(handoff[0].recipient, "ecm-compass");
    assert_eq!(handoff[0].resources, vec!["CarePlan/cp-old"]);
    // Only its own care plan: nothing to hand off, and no refusal either.
    let v = view(&[
        episode(),
        coverage("A"),
        cp("cp-own", "ecm-compass"),
        accepted.clone(),
    ]);
    let p = rules().plan(&cfg(), &input("mcp-a", None, vec![accepted]), &v);
    assert!(!p.deliveries.iter().any(|d| d.rule == "care-plan-handoff"));
    assert!(!p.refusals.iter().any(|r| r.rule == "care-plan-handoff"));
}

#[test]
fn a_release_naming_the_assigned_provider_sends_it_the_care_plans() {
    let cp = json!({"resourceType": "CarePlan", "id": "cp-old", "status": "active",
        "subject": {"reference": "Patient/p1"}, "author": {"reference": "Organization/ecm-bridges"}});
    let consent = |to: &str| {
        crate::disclosure::consent_to_fhir(&crate::disclosure::ConsentSpec {
            canonical_base: "https://gateway.example.org/fhir",
            id: "c1",
            identifier: None,
            patient_id: "p1",
            kind: "release_of_information",
            grantor_role: "youth",
            grantor_name: None,
            recorded_by_org: "county-fresno",
            recorded_at: "2026-11-01T09:00:00Z",
            recipients: &[to.to_string()],
            categories: &["health".to_string()],
            start: "2026-11-01",
            end: None,
        })
    };
    let assigned = task("in-progress", Some("ecm-compass"));
    let v = view(&[
        episode(),
        coverage("A"),
        cp.clone(),
        assigned.clone(),
        consent("ecm-compass"),
    ]);
    let p = rules().plan(
        &cfg(),
        &input(
            "county-fresno",
            Some("consent.recorded"),
            vec![consent("ecm-compass")],
        ),
        &v,
    );
    assert_eq!(
        recipients(&p),
        vec![("care-plan-handoff-on-release", "ecm-compass")]
    );
    // A release naming someone else does not.
    let v = view(&[
        episode(),
        coverage("A"),
        cp,
        assigned,
        consent("county-fresno"),
    ]);
    let p = rules().plan(
        &cfg(),
        &input(
            "county-fresno",
            Some("consent.recorded"),
            vec![consent("county-fresno")],
        ),
        &v,
    );
    assert!(p.deliveries.is_empty());
}

#[test]
fn a_continuity_task_goes_to_the_new_mcp_on_an_enrollment_change() {
    let mut t = task("requested", Some("mcp-b"));
    t["id"] = json!("t-cont");
    let v = view(&[
        episode(),
        coverage("B"),
        sr("mcp-a"),
        task("in-progress", Some("ecm-bridges")),
        t.clone(),
    ]);
    let p = rules().plan(
        &cfg(),
        &input("county-fresno", Some("enrollment.updated"), vec![t.clone()]),
        &v,
    );
    assert_eq!(recipients(&p), vec![("ecm-continuity-to-new-mcp", "mcp-b")]);
    assert!(p.deliveries[0]
        .resources
        .contains(&"Task/t-cont".to_string()));
    assert!(p.deliveries[0]
        .resources
        .contains(&"ServiceRequest/sr1".to_string()));
    // The same Task written by anything else is not a continuity hand-over.
    assert!(rules()
        .plan(&cfg(), &input("county-fresno", None, vec![t]), &v)
        .deliveries
        .is_empty());
}

#[test]
fn rules_that_need_a_trigger_type_say_so() {
    let bad = r#"
version: 1
rules:
  - id: x
    trigger: { resource: Task }
    recipients: [appointment.participants]
    purpose: care_coordination
    kind: transaction
    package: written
"#;
    assert!(RoutingRules::from_yaml(bad)
        .unwrap_err()
        .to_string()
        .contains("Appointment trigger"));
    let bad = bad
        .replace("[appointment.participants]", "[assigned_ecm]")
        .replace(
            "{ resource: Task }",
            "{ resource: Task, require: [names_recipient] }",
        );
    assert!(RoutingRules::from_yaml(&bad)
        .unwrap_err()
        .to_string()
        .contains("Consent trigger"));
}
