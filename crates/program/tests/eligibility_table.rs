//! Table-driven tests of the ECM Population-of-Focus engine: each case is small facts JSON, an
//! evaluation date, and the expected POFs, eligibility, met reason codes (exactly) and other reason
//! codes that must be present.

use chrono::NaiveDate;
use cwsgw_program::aid_codes::{AidCodeTable, AidGroup};
use cwsgw_program::eligibility::{age_on, twelve_month_window_start, CHOICE, EXCLUDED, MET};
use cwsgw_program::facts::{FactsError, MAX_ADT_VISITS};
use cwsgw_program::{evaluate, Facts};
use serde_json::{json, Value};

const AS_OF: &str = "2026-11-23";

struct Case {
    name: &'static str,
    as_of: &'static str,
    facts: Value,
    eligible: bool,
    pofs: &'static [&'static str],
    met: &'static [&'static str],
    also: &'static [&'static str],
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// Facts for a child born on `birth`, merged with the `extra` top-level parts.
fn facts(birth: &str, extra: Value) -> Value {
    let mut v = json!({
        "child": {
            "clientId": "C-1", "cin": "91234567A",
            "name": {"given": ["Test"], "family": "Child"},
            "birthDate": birth, "sex": "F"
        }
    });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// Managed care enrollment with an aid code.
fn mc(aid: &str) -> Value {
    json!({"cin": "91234567A", "aidCode": aid, "planCode": "A", "feeForService": false,
           "shareOfCost": false, "effectiveOn": "2025-01-01"})
}

fn fc_placement() -> Value {
    json!({"kind": "resource_family", "county": "Fresno", "startDate": "2026-01-05",
           "outOfCounty": false, "inFosterCare": true})
}

fn history(on18: bool, last_end: Option<&str>) -> Value {
    let mut h = json!({"inFosterCareOn18thBirthday": on18, "adoptionAssistance": false,
                       "adoptionAssistanceDisability": false});
    if let Some(e) = last_end {
        h["lastFosterCareEnd"] = json!(e);
    }
    h
}

fn case_of(component: &str, closed: Option<&str>) -> Value {
    let mut c = json!({"caseId": "K-1", "component": component, "courtOrdered": true,
                       "openedOn": "2024-03-01"});
    if let Some(x) = closed {
        c["closedOn"] = json!(x);
    }
    c
}

fn ed(start: &str, id: Option<&str>) -> Value {
    let mut v = json!({"kind": "ed", "unplanned": true, "start": start});
    if let Some(i) = id {
        v["visitId"] = json!(i);
    }
    v
}

fn stay(start: &str, id: Option<&str>, from_ed: bool) -> Value {
    let mut v = json!({"kind": "inpatient", "unplanned": true, "start": start, "fromEd": from_ed});
    if let Some(i) = id {
        v["visitId"] = json!(i);
    }
    v
}

fn aa_history(disability: bool) -> Value {
    json!({"inFosterCareOn18thBirthday": false, "adoptionAssistance": true,
           "adoptionAssistanceDisability": disability})
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    vec![
        // ---- POF 8 criterion 1: current foster care.
        Case {
            name: "placement in foster care, 16",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("45"), "placement": fc_placement()}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "current foster care aid code only (2P)",
            as_of: AS_OF,
            facts: facts("2012-01-10", json!({"enrollment": mc("2P")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "21st birthday on the evaluation date: no longer under 21",
            as_of: AS_OF,
            facts: facts(
                "2005-11-23",
                json!({"enrollment": mc("45"), "placement": fc_placement()}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age", "no-population-of-focus"],
        },
        Case {
            name: "day before the 21st birthday: still 20",
            as_of: AS_OF,
            facts: facts(
                "2005-11-24",
                json!({"enrollment": mc("45"), "placement": fc_placement()}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "open extended foster care case, 19",
            as_of: AS_OF,
            facts: facts(
                "2007-06-01",
                json!({"enrollment": mc("34"), "case": case_of("extended_foster_care", None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "home of parent, not foster care",
            as_of: AS_OF,
            facts: facts(
                "2015-06-01",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "home_of_parent", "county": "Fresno", "startDate": "2026-01-05",
                              "outOfCounty": false, "inFosterCare": false}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["no-population-of-focus"],
        },
        Case {
            name: "placement starting after the evaluation date is not current",
            as_of: AS_OF,
            facts: facts(
                "2015-06-01",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "ffa", "county": "Fresno", "startDate": "2026-12-01",
                              "outOfCounty": true, "inFosterCare": true}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["no-population-of-focus"],
        },
        Case {
            name: "in care past 18 and still in care: current only, not aged out",
            as_of: AS_OF,
            facts: facts(
                "2007-06-01",
                json!({"enrollment": mc("49"), "placement": fc_placement(),
                "history": history(true, None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        // ---- Criterion 2: foster care within the last 12 months.
        Case {
            name: "foster care ended exactly 12 months ago (first day inside)",
            as_of: AS_OF,
            facts: facts(
                "2007-06-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2025-11-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "foster care ended 12 months and a day ago (outside)",
            as_of: AS_OF,
            facts: facts(
                "2010-06-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2025-11-22"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof8.foster-care-last-12-months", "no-population-of-focus"],
        },
        Case {
            name: "foster care in another state within 12 months",
            as_of: AS_OF,
            facts: facts(
                "2008-06-01",
                json!({"enrollment": mc("34"),
                "history": {"inFosterCareOn18thBirthday": false, "lastFosterCareEnd": "2026-06-01",
                            "adoptionAssistance": false, "adoptionAssistanceDisability": false,
                            "otherStateFosterCare": true}}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "recent foster care but 21",
            as_of: AS_OF,
            facts: facts(
                "2005-01-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2026-06-01"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "leap-day as-of: window starts 28 Feb of the prior year (inside)",
            as_of: "2028-02-29",
            facts: facts(
                "2010-06-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2027-02-28"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "leap-day as-of: 27 Feb of the prior year is outside",
            as_of: "2028-02-29",
            facts: facts(
                "2010-06-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2027-02-27"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof8.foster-care-last-12-months"],
        },
        // ---- A closed case ends current foster care (seed 003 §IV.8 (1)–(2): "currently
        // receiving foster care" becomes "received foster care ... within the last 12 months";
        // seed 000 "Case Closure"). The closure date is the last day of foster care, so the
        // 12-month window starts there.
        Case {
            name:
                "placement in foster care, case closed 3 months ago: within 12 months, not current",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"), "placement": fc_placement(),
                "case": case_of("family_reunification", Some("2026-08-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "case closed exactly 12 months ago: the closure date is the first day inside",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "ffa", "county": "Fresno", "startDate": "2025-01-05",
                              "outOfCounty": false, "inFosterCare": true},
                "case": case_of("family_reunification", Some("2025-11-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "case closed 12 months and a day ago: outside the window",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "ffa", "county": "Fresno", "startDate": "2025-01-05",
                              "outOfCounty": false, "inFosterCare": true},
                "case": case_of("family_reunification", Some("2025-11-22"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof8.foster-care-last-12-months", "no-population-of-focus"],
        },
        Case {
            name: "case closing after the evaluation date: still current",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"), "placement": fc_placement(),
                "case": case_of("family_reunification", Some("2026-12-15"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "case closes on the evaluation date: no longer current",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"), "placement": fc_placement(),
                "case": case_of("family_reunification", Some(AS_OF))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "extended foster care case closed 2 months ago, 20",
            as_of: AS_OF,
            facts: facts(
                "2006-06-01",
                json!({"enrollment": mc("34"),
                "case": case_of("extended_foster_care", Some("2026-09-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "foster care aid code, case closed 2 months ago: the code is stale",
            as_of: AS_OF,
            facts: facts(
                "2012-01-10",
                json!({"enrollment": mc("45"),
                "case": case_of("permanent_placement", Some("2026-09-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "foster care aid code effective after the closure: current",
            as_of: AS_OF,
            facts: facts(
                "2012-01-10",
                json!({"enrollment": {"aidCode": "45", "feeForService": false,
                                      "shareOfCost": false, "effectiveOn": "2026-10-01"},
                "case": case_of("permanent_placement", Some("2026-09-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "placement that began after the closure: a new episode, current",
            as_of: AS_OF,
            facts: facts(
                "2012-01-10",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "strtp", "county": "Fresno", "startDate": "2026-10-01",
                              "outOfCounty": false, "inFosterCare": true},
                "case": case_of("family_reunification", Some("2026-09-23"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "placement ended at a closure the gateway recorded (endedOn), no case on record",
            as_of: AS_OF,
            facts: facts(
                "2012-01-10",
                json!({"enrollment": mc("34"),
                "placement": {"kind": "relative", "county": "Fresno", "startDate": "2025-02-01",
                              "outOfCounty": false, "inFosterCare": true,
                              "endedOn": "2026-04-30"}}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "closure later than the history's last day: the closure starts the window",
            as_of: AS_OF,
            facts: facts(
                "2010-05-01",
                json!({"enrollment": mc("34"), "history": history(false, Some("2025-06-01")),
                "placement": {"kind": "ffa", "county": "Fresno", "startDate": "2025-08-01",
                              "outOfCounty": false, "inFosterCare": true},
                "case": case_of("family_reunification", Some("2026-05-01"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.foster-care-last-12-months"],
            also: &[],
        },
        Case {
            name: "case closed 2 months ago but 21: too old for recent foster care",
            as_of: AS_OF,
            facts: facts(
                "2005-01-01",
                json!({"enrollment": mc("34"), "placement": fc_placement(),
                "case": case_of("family_reunification", Some("2026-09-23"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age", "no-population-of-focus"],
        },
        // ---- Criterion 3: aged out, under 26.
        Case {
            name: "aged out, 25",
            as_of: AS_OF,
            facts: facts(
                "2001-03-03",
                json!({"enrollment": mc("34"), "history": history(true, Some("2022-03-03"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &["pof8.foster-care-last-12-months"],
        },
        Case {
            name: "26th birthday on the evaluation date",
            as_of: AS_OF,
            facts: facts(
                "2000-11-23",
                json!({"enrollment": mc("34"), "history": history(true, None)}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "day before the 26th birthday",
            as_of: AS_OF,
            facts: facts(
                "2000-11-24",
                json!({"enrollment": mc("34"), "history": history(true, None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "4M former foster youth, 22",
            as_of: AS_OF,
            facts: facts("2004-02-10", json!({"enrollment": mc("4M")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "4M at 19 is former, not current, foster care",
            as_of: AS_OF,
            facts: facts("2007-02-10", json!({"enrollment": mc("4m")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        // 4E (seed 003 Appendix D): "Foster Care Hospital Presumptive Eligibility (PE) (Age 18 to
        // 26 Years)", set apart with 4M from the foster care codes whose youth join the former
        // foster youth group on leaving care: a former foster youth's code, not current foster care.
        Case {
            name: "4E at 19 is former, not current, foster care",
            as_of: AS_OF,
            facts: facts("2007-02-10", json!({"enrollment": mc("4E")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "4E at 23: past 21, still a former foster youth",
            as_of: AS_OF,
            facts: facts("2003-05-01", json!({"enrollment": mc("4e")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "4E on the 26th birthday: past the age limit",
            as_of: AS_OF,
            facts: facts("2000-11-23", json!({"enrollment": mc("4E")})),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age", "no-population-of-focus"],
        },
        Case {
            name: "4E with a foster care placement at 19: current foster care, not aged out",
            as_of: AS_OF,
            facts: facts(
                "2007-02-10",
                json!({"enrollment": mc("4E"), "placement": fc_placement()}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        Case {
            name: "4E leaving a correctional facility at 23: POF 4 for a former foster youth",
            as_of: AS_OF,
            facts: facts(
                "2003-05-01",
                json!({"enrollment": mc("4E"), "other": {"correctionalReleaseOn": "2026-09-01"}}),
            ),
            eligible: true,
            pofs: &["4", "8"],
            met: &["pof4.correctional-release", "pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "left care before 18: no aged-out criterion",
            as_of: AS_OF,
            facts: facts(
                "2003-02-10",
                json!({"enrollment": mc("34"), "history": history(false, Some("2020-01-01"))}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof8.foster-care-last-12-months"],
        },
        // ---- Criterion 4: Adoption Assistance.
        Case {
            name: "adoption assistance aid code 03, 17",
            as_of: AS_OF,
            facts: facts("2009-01-01", json!({"enrollment": mc("03")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.adoption-assistance"],
            also: &[],
        },
        Case {
            name: "adoption assistance aid code 4A, 5",
            as_of: AS_OF,
            facts: facts("2021-01-01", json!({"enrollment": mc("4A")})),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.adoption-assistance"],
            also: &[],
        },
        Case {
            name: "adoption assistance code 04, 18th birthday today, no disability",
            as_of: AS_OF,
            facts: facts("2008-11-23", json!({"enrollment": mc("04")})),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "adoption assistance with disability, 20",
            as_of: AS_OF,
            facts: facts(
                "2006-01-01",
                json!({"enrollment": mc("07"), "history": aa_history(true)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.adoption-assistance"],
            also: &[],
        },
        Case {
            name: "adoption assistance with disability, 21st birthday today",
            as_of: AS_OF,
            facts: facts(
                "2005-11-23",
                json!({"enrollment": mc("06"), "history": aa_history(true)}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "eligible for adoption assistance (history, no code), 12",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "history": aa_history(false)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.adoption-assistance"],
            also: &[],
        },
        Case {
            name: "open adoption assistance case, 10",
            as_of: AS_OF,
            facts: facts(
                "2016-01-01",
                json!({"enrollment": mc("34"), "case": case_of("adoption_assistance", None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.adoption-assistance"],
            also: &[],
        },
        // ---- Criterion 5: Family Maintenance.
        Case {
            name: "open family maintenance case, day before 18",
            as_of: AS_OF,
            facts: facts(
                "2008-11-24",
                json!({"enrollment": mc("34"), "case": case_of("family_maintenance", None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.family-maintenance"],
            also: &[],
        },
        Case {
            name: "open family maintenance case, 18th birthday today",
            as_of: AS_OF,
            facts: facts(
                "2008-11-23",
                json!({"enrollment": mc("34"), "case": case_of("family_maintenance", None)}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "family maintenance case closed 10 months ago",
            as_of: AS_OF,
            facts: facts(
                "2015-01-01",
                json!({"enrollment": mc("34"), "case": case_of("family_maintenance", Some("2026-01-10"))}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.family-maintenance"],
            also: &[],
        },
        Case {
            name: "family maintenance last service exactly 12 months ago",
            as_of: AS_OF,
            facts: facts(
                "2015-01-01",
                json!({"enrollment": mc("34"),
                "history": {"inFosterCareOn18thBirthday": false, "adoptionAssistance": false,
                            "adoptionAssistanceDisability": false, "familyMaintenanceLastServiceOn": "2025-11-23"}}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.family-maintenance"],
            also: &[],
        },
        Case {
            name: "family maintenance last service 12 months and a day ago",
            as_of: AS_OF,
            facts: facts(
                "2015-01-01",
                json!({"enrollment": mc("34"),
                "history": {"inFosterCareOn18thBirthday": false, "adoptionAssistance": false,
                            "adoptionAssistanceDisability": false, "familyMaintenanceLastServiceOn": "2025-11-22"}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof8.family-maintenance"],
        },
        Case {
            name: "29 Feb birthday: still 17 on 28 Feb of a common year",
            as_of: "2026-02-28",
            facts: facts(
                "2008-02-29",
                json!({"enrollment": mc("34"), "case": case_of("family_maintenance", None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.family-maintenance"],
            also: &[],
        },
        Case {
            name: "29 Feb birthday: 18 on 1 March of a common year",
            as_of: "2026-03-01",
            facts: facts(
                "2008-02-29",
                json!({"enrollment": mc("34"), "case": case_of("family_maintenance", None)}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "29 Feb birthday: still 25 on 28 Feb 2030, aged out",
            as_of: "2030-02-28",
            facts: facts(
                "2004-02-29",
                json!({"enrollment": mc("34"), "history": history(true, None)}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "29 Feb birthday: 26 on 1 March 2030",
            as_of: "2030-03-01",
            facts: facts(
                "2004-02-29",
                json!({"enrollment": mc("34"), "history": history(true, None)}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "29 Feb birthday: 20 until 1 March 2029 for foster care",
            as_of: "2029-02-28",
            facts: facts(
                "2008-02-29",
                json!({"enrollment": mc("42"), "placement": fc_placement()}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &[],
        },
        // ---- Managed care and exclusions.
        Case {
            name: "fee-for-service: POF reported, not eligible",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": {"cin": "91234567A", "aidCode": "45",
                "feeForService": true, "shareOfCost": false, "effectiveOn": "2025-01-01"}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["not-in-managed-care"],
        },
        Case {
            name: "share of cost: POF reported, not eligible",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"placement": fc_placement(), "enrollment": {"cin": "91234567A",
                "aidCode": "34", "planCode": "A", "feeForService": false, "shareOfCost": true,
                "effectiveOn": "2025-01-01"}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["share-of-cost"],
        },
        Case {
            name: "no enrollment: enroll in a plan first",
            as_of: AS_OF,
            facts: facts("2012-01-01", json!({"placement": fc_placement()})),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["not-in-managed-care"],
        },
        Case {
            name: "enrollment effective next month",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"placement": fc_placement(), "enrollment": {"cin": "91234567A",
                "aidCode": "45", "planCode": "A", "feeForService": false, "shareOfCost": false,
                "effectiveOn": "2026-12-01"}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["not-in-managed-care"],
        },
        Case {
            name: "hospice excludes",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("45"), "other": {"hospice": true}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["excluded:hospice"],
        },
        Case {
            name: "Family Mosaic excludes",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("45"), "other": {"familyMosaic": true}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["excluded:family-mosaic"],
        },
        // 1915(c) (seed 003 §VI.1 and Figure 2): members receiving 1915(c) services "have a choice
        // of continuing 1915(c) services or receiving ECM services" — enrolled in either, not both.
        // A choice, not an exclusion: still eligible, with the `choice:1915c` reason.
        Case {
            name: "1915(c) waiver: a choice between the waiver and ECM, still eligible",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("45"), "other": {"waiver1915c": true}}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["choice:1915c"],
        },
        Case {
            name: "1915(c) waiver without a POF: the choice is reported, not eligible",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("34"), "other": {"waiver1915c": true}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["choice:1915c", "no-population-of-focus"],
        },
        Case {
            name: "1915(c) waiver and hospice: hospice still excludes",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("45"), "other": {"waiver1915c": true, "hospice": true}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["choice:1915c", "excluded:hospice"],
        },
        Case {
            name: "1915(c) waiver, fee-for-service: not in managed care",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"other": {"waiver1915c": true}, "placement": fc_placement(),
                "enrollment": {"aidCode": "45", "feeForService": true, "shareOfCost": false}}),
            ),
            eligible: false,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["choice:1915c", "not-in-managed-care"],
        },
        Case {
            name: "complex care management is a note, not an exclusion",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("45"), "other": {"complexCareManagement": true}}),
            ),
            eligible: true,
            pofs: &["8"],
            met: &["pof8.current-foster-care"],
            also: &["note:complex-care-management"],
        },
        // ---- POF 2.
        Case {
            name: "three ED visits in 12 months",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                ed("2026-01-02", None), ed("2026-04-02T10:00:00-07:00", Some("V2")), ed("2025-11-23", None)]}}),
            ),
            eligible: true,
            pofs: &["2"],
            met: &["pof2.ed-visits"],
            also: &[],
        },
        Case {
            name: "one of three ED visits 12 months and a day ago",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                ed("2026-01-02", None), ed("2026-04-02", None), ed("2025-11-22", None)]}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof2.ed-visits"],
        },
        Case {
            name: "ED visit that became an admission counts once, as the admission",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                ed("2026-01-02", None), ed("2026-04-02", None), ed("2026-05-01", Some("V9")),
                stay("2026-05-01", Some("V9"), false)]}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof2.ed-visits", "pof2.unplanned-admissions"],
        },
        Case {
            name: "two unplanned stays, one through the ED (fromEd)",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                ed("2026-05-01", None), stay("2026-05-01", None, true), stay("2026-08-10", None, false)]}}),
            ),
            eligible: true,
            pofs: &["2"],
            met: &["pof2.unplanned-admissions"],
            also: &[],
        },
        Case {
            name: "repeated messages for one ED visit are one visit",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                ed("2026-05-01", Some("V1")), ed("2026-05-01", Some("V1")), ed("2026-06-01", Some("V2"))]}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof2.ed-visits"],
        },
        Case {
            name: "planned stays do not count",
            as_of: AS_OF,
            facts: facts(
                "2014-01-01",
                json!({"enrollment": mc("34"), "other": {"adtVisits": [
                {"kind": "inpatient", "unplanned": false, "start": "2026-02-01"},
                {"kind": "inpatient", "unplanned": true, "start": "2026-03-01"}]}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof2.unplanned-admissions"],
        },
        // ---- POF 3, 4, 7, 1b, 9.
        Case {
            name: "SMHS eligible",
            as_of: AS_OF,
            facts: facts(
                "2012-01-01",
                json!({"enrollment": mc("34"), "other": {"smhsEligible": true}}),
            ),
            eligible: true,
            pofs: &["3"],
            met: &["pof3.smhs"],
            also: &[],
        },
        Case {
            name: "DMC eligible",
            as_of: AS_OF,
            facts: facts(
                "2009-01-01",
                json!({"enrollment": mc("34"), "other": {"dmcEligible": true}}),
            ),
            eligible: true,
            pofs: &["3"],
            met: &["pof3.dmc"],
            also: &[],
        },
        Case {
            name: "correctional release 11 months ago, 19",
            as_of: AS_OF,
            facts: facts(
                "2007-01-01",
                json!({"enrollment": mc("34"), "other": {"correctionalReleaseOn": "2025-12-20"}}),
            ),
            eligible: true,
            pofs: &["4"],
            met: &["pof4.correctional-release"],
            also: &[],
        },
        Case {
            name: "correctional release, former foster youth 23",
            as_of: AS_OF,
            facts: facts(
                "2003-01-01",
                json!({"enrollment": mc("34"), "history": history(true, None),
                "other": {"correctionalReleaseOn": "2026-10-01"}}),
            ),
            eligible: true,
            pofs: &["4", "8"],
            met: &["pof4.correctional-release", "pof8.aged-out"],
            also: &[],
        },
        Case {
            name: "correctional release, 23, not former foster youth",
            as_of: AS_OF,
            facts: facts(
                "2003-01-01",
                json!({"enrollment": mc("34"), "other": {"correctionalReleaseOn": "2026-10-01"}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
        Case {
            name: "correctional release 12 months and a day ago",
            as_of: AS_OF,
            facts: facts(
                "2008-01-01",
                json!({"enrollment": mc("34"), "other": {"correctionalReleaseOn": "2025-11-22"}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof4.correctional-release"],
        },
        Case {
            name: "CCS with a complex social factor",
            as_of: AS_OF,
            facts: facts(
                "2016-01-01",
                json!({"enrollment": mc("34"), "other": {"ccsEnrolled": true,
                "complexSocialFactors": ["food_insecurity"]}}),
            ),
            eligible: true,
            pofs: &["7"],
            met: &["pof7.ccs-complex-social-factor"],
            also: &[],
        },
        Case {
            name: "CCS without a complex social factor",
            as_of: AS_OF,
            facts: facts(
                "2016-01-01",
                json!({"enrollment": mc("34"), "other": {"ccsEnrolled": true}}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["pof7.ccs-complex-social-factor"],
        },
        Case {
            name: "several POFs, sorted",
            as_of: AS_OF,
            facts: facts(
                "2011-01-01",
                json!({"enrollment": mc("45"), "placement": fc_placement(),
                "other": {"homeless": true, "smhsEligible": true, "pregnantOrPostpartum": true}}),
            ),
            eligible: true,
            pofs: &["1b", "3", "8"],
            met: &["pof1b.homeless", "pof3.smhs", "pof8.current-foster-care"],
            also: &["note:pof9-birth-equity"],
        },
        Case {
            name: "birth date after the evaluation date",
            as_of: AS_OF,
            facts: facts(
                "2027-01-01",
                json!({"enrollment": mc("45"), "placement": fc_placement()}),
            ),
            eligible: false,
            pofs: &[],
            met: &[],
            also: &["age"],
        },
    ]
}

#[test]
fn eligibility_table() {
    let all = cases();
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let f: Facts = serde_json::from_value(c.facts.clone())
            .unwrap_or_else(|e| panic!("{}: facts do not parse: {e}", c.name));
        let ev = evaluate(&f, d(c.as_of));
        let met: Vec<&str> = ev
            .reasons
            .iter()
            .filter(|r| r.outcome == MET)
            .map(|r| r.code.as_str())
            .collect();
        let mut want_met: Vec<&str> = c.met.to_vec();
        want_met.sort_unstable();
        let mut got_met = met.clone();
        got_met.sort_unstable();
        let missing: Vec<_> = c.also.iter().filter(|code| !ev.has_reason(code)).collect();
        if ev.eligible != c.eligible
            || ev.pofs != c.pofs
            || got_met != want_met
            || !missing.is_empty()
        {
            failures.push(format!(
                "{}: eligible {} pofs {:?} met {:?} missing {:?}; reasons {:?}",
                c.name,
                ev.eligible,
                ev.pofs,
                got_met,
                missing,
                ev.reasons
                    .iter()
                    .map(|r| (&r.code, r.outcome))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_aid_code_group_drives_its_criterion() {
    let table = AidCodeTable::default_table();
    for code in table.codes(AidGroup::CurrentFosterCare) {
        let f: Facts =
            serde_json::from_value(facts("2012-01-01", json!({"enrollment": mc(code)}))).unwrap();
        let ev = evaluate(&f, d(AS_OF));
        let expected = if table.is_in(code, AidGroup::FormerFosterYouth) {
            "pof8.aged-out"
        } else {
            "pof8.current-foster-care"
        };
        assert!(
            ev.eligible && ev.has_reason(expected),
            "{code}: {:?}",
            ev.reasons
        );
    }
    for code in table.codes(AidGroup::AdoptionAssistance) {
        let f: Facts =
            serde_json::from_value(facts("2012-01-01", json!({"enrollment": mc(code)}))).unwrap();
        let ev = evaluate(&f, d(AS_OF));
        assert!(
            ev.eligible && ev.has_reason("pof8.adoption-assistance"),
            "{code}"
        );
    }
    let f: Facts =
        serde_json::from_value(facts("2002-01-01", json!({"enrollment": mc("4M")}))).unwrap();
    assert!(evaluate(&f, d(AS_OF)).has_reason("pof8.aged-out"));
}

/// A 1915(c) waiver is a choice (seed 003 §VI.1), never an exclusion: the reason's outcome is
/// `choice`, and the retired `excluded:1915c` code is not produced.
#[test]
fn a_1915c_waiver_is_a_choice_not_an_exclusion() {
    let f: Facts = serde_json::from_value(facts(
        "2012-01-01",
        json!({"enrollment": mc("45"), "other": {"waiver1915c": true}}),
    ))
    .unwrap();
    let ev = evaluate(&f, d(AS_OF));
    assert!(ev.eligible, "{:?}", ev.reasons);
    let r: Vec<_> = ev
        .reasons
        .iter()
        .filter(|r| r.code.contains("1915c"))
        .collect();
    assert_eq!(r.len(), 1, "{:?}", ev.reasons);
    assert_eq!(r[0].code, "choice:1915c");
    assert_eq!(r[0].outcome, CHOICE);
    assert!(r[0].text.contains("1915(c)") && r[0].text.contains("ECM"));
    assert!(ev.reasons.iter().all(|r| r.outcome != EXCLUDED));
    assert!(!ev.has_reason("excluded:1915c"));
    let v = serde_json::to_value(&ev).unwrap();
    assert!(v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["code"] == "choice:1915c" && r["outcome"] == "choice"));
}

#[test]
fn age_and_window_boundaries() {
    assert_eq!(age_on(d("2005-11-23"), d("2026-11-23")), Some(21));
    assert_eq!(age_on(d("2005-11-24"), d("2026-11-23")), Some(20));
    assert_eq!(age_on(d("2008-02-29"), d("2026-02-28")), Some(17));
    assert_eq!(age_on(d("2008-02-29"), d("2026-03-01")), Some(18));
    assert_eq!(age_on(d("2008-02-29"), d("2028-02-29")), Some(20));
    assert_eq!(age_on(d("2026-11-24"), d("2026-11-23")), None);
    assert_eq!(twelve_month_window_start(d("2026-11-23")), d("2025-11-23"));
    assert_eq!(twelve_month_window_start(d("2028-02-29")), d("2027-02-28"));
    assert_eq!(twelve_month_window_start(NaiveDate::MIN), NaiveDate::MIN);
}

#[test]
fn output_shape_and_no_phi() {
    let f: Facts = serde_json::from_value(facts(
        "2012-01-01",
        json!({"enrollment": mc("45"), "placement": fc_placement(), "history": {
            "inFosterCareOn18thBirthday": false, "lastFosterCareEnd": "2026-06-01",
            "adoptionAssistance": false, "adoptionAssistanceDisability": false,
            "otherStateFosterCare": true}}),
    ))
    .unwrap();
    let ev = evaluate(&f, d(AS_OF));
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["eligible"], json!(true));
    assert_eq!(v["pofs"], json!(["8"]));
    let first = &v["reasons"][0];
    assert_eq!(first["code"], "pof8.current-foster-care");
    assert_eq!(first["pof"], "8");
    assert_eq!(first["outcome"], "met");
    assert!(first["text"].as_str().unwrap().contains("foster care"));
    let text = v.to_string();
    assert!(text.contains("another state"), "{text}");
    for phi in [
        "Child",
        "Test",
        "91234567A",
        "2012-01-01",
        "2026-06-01",
        "Fresno",
    ] {
        assert!(!text.contains(phi), "{phi} leaked: {text}");
    }
}

#[test]
fn facts_json_is_strict_and_bounded() {
    let ok = facts("2012-01-01", json!({"enrollment": mc("45")}));
    assert!(Facts::from_json(ok.to_string().as_bytes()).is_ok());

    let mut unknown = ok.clone();
    unknown["enrollment"]["aidcode"] = json!("45");
    assert!(matches!(
        Facts::from_json(unknown.to_string().as_bytes()),
        Err(FactsError::Invalid {
            category: "data",
            ..
        })
    ));
    let mut top = ok.clone();
    top["extra"] = json!(1);
    assert!(Facts::from_json(top.to_string().as_bytes()).is_err());
    assert!(matches!(
        Facts::from_json(b"{"),
        Err(FactsError::Invalid {
            category: "eof",
            ..
        })
    ));

    let visits: Vec<Value> = (0..=MAX_ADT_VISITS)
        .map(|_| ed("2026-01-01", None))
        .collect();
    let many = facts("2012-01-01", json!({"other": {"adtVisits": visits}}));
    assert!(matches!(
        Facts::from_json(many.to_string().as_bytes()),
        Err(FactsError::TooMany {
            field: "other.adtVisits",
            ..
        })
    ));
    let huge = vec![b' '; cwsgw_program::facts::MAX_FACTS_BYTES + 1];
    assert!(matches!(
        Facts::from_json(&huge),
        Err(FactsError::TooLarge { .. })
    ));

    let bad_date = facts(
        "2012-01-01",
        json!({"other": {"adtVisits": [ed("yesterday", None)]}}),
    );
    let err = Facts::from_json(bad_date.to_string().as_bytes()).unwrap_err();
    assert!(!err.to_string().contains("yesterday"));
    // A name is required (the case-event contract), the optional parts are optional.
    let minimal = json!({"child": {"clientId": "C", "name": {"family": "X"}, "birthDate": "2012-01-01", "sex": "M"}});
    let f = Facts::from_json(minimal.to_string().as_bytes()).unwrap();
    let ev = evaluate(&f, d(AS_OF));
    assert!(
        !ev.eligible
            && ev.has_reason("not-in-managed-care")
            && ev.has_reason("no-population-of-focus")
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn date_from(days: i64) -> String {
        (d("1990-01-01") + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    }

    proptest! {
        #[test]
        fn evaluation_is_consistent(
            birth in 0i64..15_000,
            as_of in 0i64..16_000,
            end in proptest::option::of(0i64..16_000),
            aid in prop::sample::select(vec!["45", "4M", "03", "34", "2P", "zz"]),
            ffs: bool, soc: bool, in_fc: bool, on18: bool, aa: bool, dis: bool,
            hospice: bool, ccm: bool, homeless: bool,
            eds in 0usize..6,
        ) {
            let mut h = json!({"inFosterCareOn18thBirthday": on18, "adoptionAssistance": aa,
                               "adoptionAssistanceDisability": dis});
            if let Some(e) = end { h["lastFosterCareEnd"] = json!(date_from(e)); }
            let visits: Vec<Value> = (0..eds).map(|i| ed(&date_from(as_of - 30 * i as i64), None)).collect();
            let v = facts(&date_from(birth), json!({
                "enrollment": {"cin": "X", "aidCode": aid, "feeForService": ffs, "shareOfCost": soc,
                               "effectiveOn": "1990-01-01"},
                "placement": {"kind": "relative", "county": "Fresno", "startDate": "1990-01-01",
                              "outOfCounty": false, "inFosterCare": in_fc},
                "history": h,
                "other": {"hospice": hospice, "complexCareManagement": ccm, "homeless": homeless,
                          "adtVisits": visits}
            }));
            let f = Facts::from_json(v.to_string().as_bytes()).unwrap();
            let ev = evaluate(&f, d(&date_from(as_of)));
            let mut sorted = ev.pofs.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &ev.pofs);
            if ev.eligible {
                prop_assert!(!ev.pofs.is_empty() && !ffs && !soc && !hospice);
            }
            for r in &ev.reasons {
                if r.outcome == MET {
                    prop_assert!(ev.pofs.contains(r.pof.as_ref().unwrap()));
                }
            }
            for p in &ev.pofs {
                prop_assert!(ev.reasons.iter().any(|r| r.outcome == MET && r.pof.as_ref() == Some(p)));
            }
            // Age gates: nobody 26 or over is POF 8 eligible.
            if age_on(f.child.birth_date, d(&date_from(as_of))).is_none_or(|a| a >= 26) {
                prop_assert!(!ev.pofs.contains(&"8".to_string()));
            }
        }
    }

    proptest! {
        /// A case closed on or before the evaluation date leaves no current foster care that
        /// began on or before the closure, and criterion 2 holds exactly while the closure is
        /// inside the 12-month window (seed 003 §IV.8 (1)–(2)).
        #[test]
        fn a_closure_ends_current_foster_care(
            birth in 5_000i64..9_000,
            start in 0i64..12_000,
            closed_after_start in 0i64..2_000,
            as_of_after_closure in 0i64..1_000,
            aid in prop::sample::select(vec!["45", "2P", "34"]),
            efc: bool,
        ) {
            let closed = start + closed_after_start;
            let as_of = closed + as_of_after_closure;
            let component = if efc { "extended_foster_care" } else { "family_reunification" };
            let v = facts(&date_from(birth), json!({
                "enrollment": {"aidCode": aid, "feeForService": false, "shareOfCost": false,
                               "effectiveOn": date_from(start)},
                "placement": {"kind": "relative", "county": "Fresno", "startDate": date_from(start),
                              "outOfCounty": false, "inFosterCare": true},
                "case": {"caseId": "K", "component": component, "courtOrdered": true,
                         "openedOn": date_from(start), "closedOn": date_from(closed)}
            }));
            let f = Facts::from_json(v.to_string().as_bytes()).unwrap();
            let on = d(&date_from(as_of));
            let ev = evaluate(&f, on);
            prop_assert!(!ev.has_reason("pof8.current-foster-care"), "{:?}", ev.reasons);
            let inside = d(&date_from(closed)) >= twelve_month_window_start(on);
            let under21 = age_on(f.child.birth_date, on).is_some_and(|a| a < 21);
            let met = ev.reasons.iter().any(|r| {
                r.code == "pof8.foster-care-last-12-months" && r.outcome == MET
            });
            prop_assert_eq!(met, inside && under21, "{:?}", ev.reasons);
        }
    }

    #[test]
    fn extreme_dates_do_not_panic() {
        let f: Facts = serde_json::from_value(facts(
            "2012-01-01",
            json!({"enrollment": mc("45"), "history": history(true, Some("2012-01-01")),
                   "other": {"adtVisits": [ed("2012-01-01", None)], "correctionalReleaseOn": "2012-01-01"}}),
        ))
        .unwrap();
        for as_of in [NaiveDate::MIN, NaiveDate::MAX] {
            let _ = evaluate(&f, as_of);
        }
    }
}
