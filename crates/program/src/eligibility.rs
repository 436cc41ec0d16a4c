//! The ECM Population-of-Focus (POF) eligibility engine (seed 003 §IV, §VI, Appendix D; docs/program-rules.md).
//!
//! [`evaluate`] is a pure function of one child's [`Facts`] and an evaluation date. It reports every
//! POF whose criteria the facts meet, whether the member can be enrolled in ECM now, and a list of
//! [`Reason`]s with stable codes. Reasons never carry PHI: no names, CINs, dates of birth, addresses
//! or event dates — only aid codes, counts, ages and day spans.
//!
//! # Definitions
//! - **Age** is whole years at the evaluation date; a birthday falling on the evaluation date counts
//!   (someone born 2005-11-23 is 21 on 2026-11-23). A 29 February birthday is reached on 1 March in
//!   common years (the month/day of the evaluation date must be on or after 02-29).
//! - **Within the last 12 months**: on or after the evaluation date minus 12 calendar months
//!   (chrono month arithmetic; 29 February minus 12 months is 28 February). For as-of 2026-11-23 the
//!   window starts 2025-11-23 (inside) and 2025-11-22 is outside. Dates after the evaluation date count
//!   as inside (the thing is still going on).
//! - **"Up to age 26"** (aged out, POF 4 for former foster youth) means **under 26**.
//!
//! # POF 8, children and youth involved in child welfare (003 §IV.8), exactly these criteria
//! 1. `pof8.current-foster-care`: under 21 and currently in foster care in California — a current
//!    placement with `inFosterCare`, an open extended foster care case, or an aid code in the
//!    `current_foster_care` group that is not also `former_foster_youth`. **A closed case ends
//!    current foster care on its closure date** (`case.closedOn` on or before the evaluation date):
//!    the placement, if it started on or before the closure (or its `endedOn`, which the gateway
//!    sets at closure), the extended foster care case, and a foster care aid code whose enrollment
//!    took effect on or before the closure (or has no effective date). A placement or enrollment
//!    newer than the closure is a new episode and stays current.
//! 2. `pof8.foster-care-last-12-months`: under 21 and in foster care (any state) within the last 12
//!    months: the later of `history.lastFosterCareEnd` and the day criterion 1's foster care ended
//!    (the closure date, or the placement's `endedOn`). So the 12-month window starts at the case
//!    closure.
//! 3. `pof8.aged-out`: in foster care on or after the 18th birthday (`history`, or an aid code in
//!    `former_foster_youth`: 4M, the Former Foster Youth group, or 4E, hospital presumptive eligibility
//!    for former foster youth aged 18 to 26) and under 26. Not reported when criterion 1 already holds.
//! 4. `pof8.adoption-assistance`: eligible for or in Adoption Assistance (`history`, an aid code in
//!    `adoption_assistance`, or an open adoption assistance case) and under 18, or under 21 with
//!    `adoptionAssistanceDisability` (WIC 16120(d)).
//! 5. `pof8.family-maintenance`: under 18 and receiving Family Maintenance (open `family_maintenance`
//!    case) or received it within the last 12 months (case closed, or
//!    `history.familyMaintenanceLastServiceOn`, inside the window).
//!
//! **4M and 4E**: Appendix D lists 4M inside the foster care list "(see below)" and as the Former
//! Foster Youth group. It lists 4E inside the foster care list too, but as "Hospital Presumptive
//! Eligibility (Age 18 to 26 Years)", and sets 4E and 4M apart from the foster care codes whose youth
//! join the former foster youth group on leaving care: a 4E youth is a former foster youth already.
//! The table keeps both rows of each, and the engine reads a code in `former_foster_youth` as
//! aged-out evidence only, never as current foster care. The lower age bound (18) of either code is
//! not checked: the code is trusted as issued.
//!
//! # Other children's POFs the gateway can flag (children's definitions: under 21)
//! - `pof1b.homeless` (§IV.1b): `other.homeless`.
//! - `pof2.ed-visits` / `pof2.unplanned-admissions` (§IV.2b): 3+ ED visits or 2+ unplanned inpatient
//!   stays starting within the last 12 months. Visits sharing a kind and `visitId` are one visit. An ED
//!   visit that became an admission is counted once, as the admission: it is absorbed by an inpatient
//!   stay with the same `visitId`, or by an inpatient stay marked `fromEd` starting on the ED visit's
//!   start or end date (each stay absorbs at most one ED visit). A stay that absorbed an ED visit is
//!   unplanned.
//! - `pof3.smhs` / `pof3.dmc` (§IV.3b): meets SMHS or DMC/DMC-ODS access criteria.
//! - `pof4.correctional-release` (§IV.4b): released (or releasing) from a correctional facility within
//!   the last 12 months, and under 21, or a former foster youth under 26.
//! - `pof7.ccs-complex-social-factor` (§IV.7): enrolled in CCS/CCS WCM with at least one complex
//!   social factor.
//! - POF 9 (birth equity) needs facts the gateway does not hold: `pregnantOrPostpartum` only yields a
//!   `note:pof9-birth-equity` reason, never the POF.
//!
//! Adult POF definitions (21 and over, other than POF 8 and the POF 4 former-foster-youth rule) are
//! not evaluated: facts that would matter give an `age` reason saying so.
//!
//! # Enrollment and exclusions (003 §IV footnote 6, §IV.8 footnote 43, §VI)
//! POFs are reported whatever the enrollment; `eligible` also needs managed care and no exclusion:
//! - no enrollment, enrollment not yet effective, or fee-for-service: `not-in-managed-care`;
//! - share of cost: `share-of-cost` (excluded from managed care);
//! - hospice, Family Mosaic Project: `excluded:hospice`, `excluded:family-mosaic`;
//! - a 1915(c) waiver: `choice:1915c`, outcome [`CHOICE`], not an exclusion: the member chooses
//!   between continuing the waiver and receiving ECM, not both at once (§VI.1, Figure 2 "enrolled in
//!   either ECM or the other program"). `eligible` is unaffected. The code `excluded:1915c` is
//!   retired: earlier versions reported the waiver as an exclusion and it is no longer produced;
//! - MCP Complex Care Management: `note:complex-care-management` only (not both at once; CCM ends
//!   when ECM starts — not an exclusion from eligibility).
//!
//! With no POF met, a `no-population-of-focus` reason is added.

use std::collections::BTreeSet;

use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use crate::aid_codes::{AidCodeTable, AidGroup};
use crate::facts::{CaseComponent, Facts, OtherFacts, VisitKind};

/// Outcome of a reason: the criterion is met.
pub const MET: &str = "met";
/// Outcome of a reason: the criterion is not met (or blocks eligibility).
pub const NOT_MET: &str = "not-met";
/// Outcome of a reason: an exclusion applies.
pub const EXCLUDED: &str = "excluded";
/// Outcome of a reason: information only.
pub const NOTE: &str = "note";
/// Outcome of a reason: the member has a choice between ECM and another program (not both at once);
/// eligibility is not affected.
pub const CHOICE: &str = "choice";

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// At least one POF is met, the member is in managed care and no exclusion applies.
    pub eligible: bool,
    /// Met POF codes (`1b 2 3 4 7 8`), sorted and deduplicated.
    pub pofs: Vec<String>,
    /// Why, in rule order.
    pub reasons: Vec<Reason>,
}

/// One reason. `code` values are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable code, e.g. `pof8.aged-out`, `not-in-managed-care`, `excluded:hospice`.
    pub code: String,
    /// The POF the reason is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pof: Option<String>,
    /// [`MET`], [`NOT_MET`], [`EXCLUDED`], [`NOTE`] or [`CHOICE`].
    pub outcome: &'static str,
    /// A human sentence without PHI.
    pub text: String,
    /// Supporting evidence without PHI, e.g. `aid code 4M`, `3 ED visits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Evaluation {
    /// Whether a reason with this code is present (any outcome).
    pub fn has_reason(&self, code: &str) -> bool {
        self.reasons.iter().any(|r| r.code == code)
    }
}

/// Whole years between `birth` and `on`; `None` when `on` is before `birth`.
pub fn age_on(birth: NaiveDate, on: NaiveDate) -> Option<u32> {
    if on < birth {
        return None;
    }
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// First date inside the "last 12 months" window ending on `as_of`.
pub fn twelve_month_window_start(as_of: NaiveDate) -> NaiveDate {
    as_of
        .checked_sub_months(Months::new(12))
        .unwrap_or(NaiveDate::MIN)
}

/// Evaluates with the embedded aid code table.
pub fn evaluate(facts: &Facts, as_of: NaiveDate) -> Evaluation {
    evaluate_with(facts, as_of, AidCodeTable::default_table())
}

struct Builder {
    reasons: Vec<Reason>,
    pofs: BTreeSet<String>,
}

impl Builder {
    fn push(
        &mut self,
        code: &str,
        pof: Option<&str>,
        outcome: &'static str,
        text: impl Into<String>,
        evidence: Option<String>,
    ) {
        if outcome == MET {
            if let Some(p) = pof {
                self.pofs.insert(p.to_string());
            }
        }
        self.reasons.push(Reason {
            code: code.to_string(),
            pof: pof.map(str::to_string),
            outcome,
            text: text.into(),
            evidence,
        });
    }

    fn met(&mut self, code: &str, pof: &str, text: &str, evidence: Option<String>) {
        self.push(code, Some(pof), MET, text, evidence);
    }

    fn too_old(&mut self, pof: &str, criterion: &str, limit: u32, age: Option<u32>) {
        self.push(
            "age",
            Some(pof),
            NOT_MET,
            format!("{criterion}, but the criterion applies only under age {limit}"),
            age.map(|a| format!("age {a}")),
        );
    }
}

fn days_between(earlier: NaiveDate, later: NaiveDate) -> i64 {
    (later - earlier).num_days()
}

/// Evaluates with a given aid code table (for deployments that override the CSV).
pub fn evaluate_with(facts: &Facts, as_of: NaiveDate, table: &AidCodeTable) -> Evaluation {
    let mut b = Builder {
        reasons: Vec::new(),
        pofs: BTreeSet::new(),
    };
    let age = age_on(facts.child.birth_date, as_of);
    if age.is_none() {
        b.push(
            "age",
            None,
            NOT_MET,
            "the birth date is after the evaluation date, so no age-based criterion can be met",
            None,
        );
    }
    let under = |limit: u32| age.is_some_and(|a| a < limit);
    let window_start = twelve_month_window_start(as_of);
    let within = |d: NaiveDate| d >= window_start;

    let aid_code = facts.enrollment.as_ref().map(|e| e.aid_code.trim());
    let aid_in = |g: AidGroup| aid_code.is_some_and(|c| table.is_in(c, g));
    let aid_evidence = || aid_code.map(|c| format!("aid code {}", c.to_ascii_uppercase()));
    let history = facts.history.as_ref();
    let case_open = |component: CaseComponent| {
        facts.case.as_ref().is_some_and(|c| {
            c.component == component
                && c.opened_on <= as_of
                && c.closed_on.is_none_or(|closed| closed > as_of)
        })
    };

    // ---- POF 8 criterion 1: under 21 and currently in foster care in California.
    // A closed case ends current foster care on its closure date (seed 003 §IV.8 (1)–(2); seed 000 "Case Closure"): the
    // placement it began with, an extended foster care case, and a foster care aid code of an
    // enrollment not newer than the closure. The end starts criterion 2's 12-month window.
    let case_closed_on = facts
        .case
        .as_ref()
        .and_then(|c| c.closed_on.filter(|d| c.opened_on <= as_of && *d <= as_of));
    let mut current_fc: Option<String> = None;
    // The last day foster care shown by the facts ended, when a closure or a placement end ended it.
    let mut fc_ended_on: Option<NaiveDate> = None;
    let mut ended = |d: NaiveDate| fc_ended_on = fc_ended_on.max(Some(d));
    if let Some(p) = facts
        .placement
        .as_ref()
        .filter(|p| p.in_foster_care && p.start_date <= as_of)
    {
        let end = p
            .ended_on
            .or(case_closed_on.filter(|closed| p.start_date <= *closed));
        match end.filter(|e| *e <= as_of) {
            Some(e) => ended(e),
            None => {
                current_fc = Some(format!(
                    "current {} placement in foster care",
                    placement_kind_text(p.kind)
                ));
            }
        }
    }
    if let Some(c) = facts
        .case
        .as_ref()
        .filter(|c| c.component == CaseComponent::ExtendedFosterCare)
    {
        if case_open(CaseComponent::ExtendedFosterCare) {
            current_fc.get_or_insert_with(|| "open extended foster care case".to_string());
        } else if let Some(closed) = case_closed_on.filter(|d| c.opened_on <= *d) {
            ended(closed);
        }
    }
    if aid_in(AidGroup::CurrentFosterCare) && !aid_in(AidGroup::FormerFosterYouth) {
        let effective_on = facts.enrollment.as_ref().and_then(|e| e.effective_on);
        match case_closed_on.filter(|closed| effective_on.is_none_or(|e| e <= *closed)) {
            Some(closed) => ended(closed),
            None => {
                if current_fc.is_none() {
                    current_fc = aid_evidence();
                }
            }
        }
    }
    let currently_in_fc = current_fc.is_some();
    if currently_in_fc {
        if under(21) {
            b.met(
                "pof8.current-foster-care",
                "8",
                "under 21 and currently in foster care in California",
                current_fc,
            );
        } else {
            b.too_old("8", "currently in foster care", 21, age);
        }
    }

    // ---- Criterion 2: under 21 and in foster care (CA or another state) within the last 12 months:
    // the later of the history's last day in care and the end of the foster care the facts show
    // (a placement's end or the case closure).
    let history_end = history.and_then(|h| h.last_foster_care_end);
    let last_end = match (history_end, fc_ended_on) {
        (Some(h), Some(c)) if c > h => Some((c, true)),
        (Some(h), _) => Some((h, false)),
        (None, Some(c)) => Some((c, true)),
        (None, None) => None,
    };
    if let Some((end, from_closure)) = last_end {
        let other_state = history.is_some_and(|h| h.other_state_foster_care == Some(true));
        let where_ = if other_state && !from_closure {
            "in another state"
        } else {
            "in California"
        };
        let span = if end > as_of {
            "ends after the evaluation date".to_string()
        } else if from_closure {
            format!(
                "ended {} days before evaluation (case closed)",
                days_between(end, as_of)
            )
        } else {
            format!("ended {} days before evaluation", days_between(end, as_of))
        };
        if !within(end) {
            b.push(
                "pof8.foster-care-last-12-months",
                Some("8"),
                NOT_MET,
                "the last foster care ended more than 12 months before the evaluation date",
                Some(format!("foster care {where_} {span}")),
            );
        } else if under(21) {
            b.met(
                "pof8.foster-care-last-12-months",
                "8",
                "under 21 and in foster care within the last 12 months",
                Some(format!("foster care {where_} {span}")),
            );
        } else {
            b.too_old("8", "in foster care within the last 12 months", 21, age);
        }
    }

    // ---- Criterion 3: aged out (in foster care on or after the 18th birthday), under 26.
    let ffy_code = aid_in(AidGroup::FormerFosterYouth);
    let aged_out_flag = history.is_some_and(|h| h.in_foster_care_on_18th_birthday);
    let former_foster_youth = aged_out_flag || ffy_code;
    if former_foster_youth && !(currently_in_fc && under(21)) {
        if under(26) {
            let evidence = if ffy_code {
                aid_evidence().map(|e| format!("{e} (Former Foster Youth)"))
            } else {
                Some("in foster care on or after the 18th birthday".to_string())
            };
            b.met(
                "pof8.aged-out",
                "8",
                "aged out of foster care (in care on or after the 18th birthday) and under 26",
                evidence,
            );
        } else {
            b.too_old("8", "aged out of foster care", 26, age);
        }
    }

    // ---- Criterion 4: Adoption Assistance, under 18 (under 21 with a disability).
    let aa_code = aid_in(AidGroup::AdoptionAssistance);
    let aa_history = history.is_some_and(|h| h.adoption_assistance);
    let aa_case = case_open(CaseComponent::AdoptionAssistance);
    if aa_code || aa_history || aa_case {
        let disability = history.is_some_and(|h| h.adoption_assistance_disability);
        let limit = if disability { 21 } else { 18 };
        if under(limit) {
            let mut evidence = if aa_code {
                aid_evidence().unwrap_or_default()
            } else if aa_case {
                "open adoption assistance case".to_string()
            } else {
                "eligible for or in the Adoption Assistance Program".to_string()
            };
            if disability {
                evidence.push_str("; continued for a disability");
            }
            b.met(
                "pof8.adoption-assistance",
                "8",
                "eligible for or in California's Adoption Assistance Program within its age limit",
                Some(evidence),
            );
        } else {
            b.too_old("8", "in the Adoption Assistance Program", limit, age);
        }
    }

    // ---- Criterion 5: Family Maintenance now or within 12 months, under 18.
    let fm_case = facts
        .case
        .as_ref()
        .filter(|c| c.component == CaseComponent::FamilyMaintenance && c.opened_on <= as_of);
    let fm_case_open = fm_case.is_some_and(|c| c.closed_on.is_none_or(|d| d > as_of));
    let fm_case_recent = fm_case.is_some_and(|c| c.closed_on.is_some_and(&within));
    let fm_history = history.and_then(|h| h.family_maintenance_last_service_on);
    let fm_history_recent = fm_history.is_some_and(&within);
    if fm_case_open || fm_case_recent || fm_history_recent {
        if under(18) {
            let evidence = if fm_case_open {
                "open Family Maintenance case".to_string()
            } else {
                "Family Maintenance services within the last 12 months".to_string()
            };
            b.met(
                "pof8.family-maintenance",
                "8",
                "under 18 and receiving, or within 12 months received, Family Maintenance services",
                Some(evidence),
            );
        } else {
            b.too_old("8", "received Family Maintenance services", 18, age);
        }
    } else if fm_case.is_some() || fm_history.is_some() {
        b.push(
            "pof8.family-maintenance",
            Some("8"),
            NOT_MET,
            "Family Maintenance services ended more than 12 months before the evaluation date",
            None,
        );
    }

    other_pofs(&mut b, facts, as_of, age, former_foster_youth);

    let pof_met = !b.pofs.is_empty();
    if !pof_met {
        b.push(
            "no-population-of-focus",
            None,
            NOT_MET,
            "no Population of Focus criterion is met by the facts on record",
            None,
        );
    }

    // ---- Managed care (003 §IV footnotes 6 and 43).
    let mut managed = true;
    match &facts.enrollment {
        None => {
            managed = false;
            b.push(
                "not-in-managed-care",
                None,
                NOT_MET,
                "no Medi-Cal enrollment on record: ECM is a managed care benefit; enroll in a Medi-Cal plan first",
                None,
            );
        }
        Some(e) => {
            if let Some(effective_on) = e.effective_on.filter(|on| *on > as_of) {
                managed = false;
                b.push(
                    "not-in-managed-care",
                    None,
                    NOT_MET,
                    "the Medi-Cal enrollment takes effect after the evaluation date",
                    Some(format!(
                        "effective in {} days",
                        days_between(as_of, effective_on)
                    )),
                );
            }
            if e.fee_for_service {
                managed = false;
                b.push(
                    "not-in-managed-care",
                    None,
                    NOT_MET,
                    "fee-for-service Medi-Cal: ECM is a managed care benefit; enroll in a Medi-Cal plan first",
                    aid_evidence(),
                );
            }
            if e.share_of_cost {
                managed = false;
                b.push(
                    "share-of-cost",
                    None,
                    NOT_MET,
                    "Medi-Cal with a share of cost is excluded from managed care and so from ECM",
                    None,
                );
            }
        }
    }

    // ---- Exclusions (003 §VI).
    let default_other = OtherFacts::default();
    let other = facts.other.as_ref().unwrap_or(&default_other);
    let mut excluded = false;
    if other.hospice == Some(true) {
        excluded = true;
        b.push(
            "excluded:hospice",
            None,
            EXCLUDED,
            "members receiving hospice are excluded from ECM",
            None,
        );
    }
    if other.family_mosaic == Some(true) {
        excluded = true;
        b.push(
            "excluded:family-mosaic",
            None,
            EXCLUDED,
            "members enrolled in the Family Mosaic Project are excluded from ECM",
            None,
        );
    }
    if other.waiver_1915c == Some(true) {
        b.push(
            "choice:1915c",
            None,
            CHOICE,
            "enrolled in a 1915(c) waiver: the member chooses between continuing the waiver and \
             receiving ECM (not both at once); the plan explains both options",
            None,
        );
    }
    if other.complex_care_management == Some(true) {
        b.push(
            "note:complex-care-management",
            None,
            NOTE,
            "enrolled in MCP Complex Care Management: CCM and ECM are not provided at the same time",
            None,
        );
    }

    Evaluation {
        eligible: pof_met && managed && !excluded,
        pofs: b.pofs.into_iter().collect(),
        reasons: b.reasons,
    }
}

fn placement_kind_text(kind: crate::facts::PlacementKind) -> &'static str {
    use crate::facts::PlacementKind as K;
    match kind {
        K::ResourceFamily => "resource family",
        K::Relative => "relative",
        K::Ffa => "foster family agency",
        K::Strtp => "STRTP",
        K::Thp => "transitional housing",
        K::HomeOfParent => "home of parent",
        K::Other => "other",
    }
}

/// Counts for POF 2 after merging duplicates and ED visits that became admissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VisitCounts {
    /// ED visits not absorbed by an admission.
    pub ed_visits: usize,
    /// Unplanned inpatient stays (including those that came through the ED).
    pub unplanned_stays: usize,
}

/// Counts ED visits and unplanned stays starting in `[window_start, as_of]` (see module docs).
pub fn count_visits(
    visits: &[crate::facts::AdtVisit],
    window_start: NaiveDate,
    as_of: NaiveDate,
) -> VisitCounts {
    let in_window: Vec<_> = visits
        .iter()
        .filter(|v| v.start >= window_start && v.start <= as_of)
        .collect();
    // Deduplicate by (kind, visitId); visits without an id are kept as they are.
    let mut seen = BTreeSet::new();
    let mut eds = Vec::new();
    let mut stays = Vec::new();
    for v in in_window {
        if let Some(id) = &v.visit_id {
            if !seen.insert((v.kind == VisitKind::Ed, id.as_str())) {
                continue;
            }
        }
        match v.kind {
            VisitKind::Ed => eds.push(v),
            VisitKind::Inpatient => stays.push(v),
        }
    }
    let mut absorbed = vec![false; eds.len()];
    let mut counts = VisitCounts::default();
    for stay in &stays {
        let by_id = stay.visit_id.as_ref().and_then(|id| {
            eds.iter()
                .zip(&absorbed)
                .position(|(e, taken)| !*taken && e.visit_id.as_ref() == Some(id))
        });
        let by_from_ed = || {
            if stay.from_ed != Some(true) {
                return None;
            }
            eds.iter().zip(&absorbed).position(|(e, taken)| {
                !*taken && (e.start == stay.start || e.end == Some(stay.start))
            })
        };
        let hit = by_id.or_else(by_from_ed);
        if let Some(slot) = hit.and_then(|i| absorbed.get_mut(i)) {
            *slot = true;
        }
        if stay.unplanned || hit.is_some() || stay.from_ed == Some(true) {
            counts.unplanned_stays += 1;
        }
    }
    counts.ed_visits = absorbed.iter().filter(|a| !**a).count();
    counts
}

fn other_pofs(
    b: &mut Builder,
    facts: &Facts,
    as_of: NaiveDate,
    age: Option<u32>,
    former_foster_youth: bool,
) {
    let Some(other) = facts.other.as_ref() else {
        return;
    };
    let under21 = age.is_some_and(|a| a < 21);
    let window_start = twelve_month_window_start(as_of);

    // POF 1b (§IV.1b).
    if other.homeless == Some(true) {
        if under21 {
            b.met(
                "pof1b.homeless",
                "1b",
                "a child or youth under 21 experiencing homelessness",
                None,
            );
        } else {
            b.too_old(
                "1b",
                "experiencing homelessness (the adult POF 1a criteria are not evaluated here)",
                21,
                age,
            );
        }
    }

    // POF 2 (§IV.2b).
    if let Some(visits) = other.adt_visits.as_deref().filter(|v| !v.is_empty()) {
        let c = count_visits(visits, window_start, as_of);
        let ed_ok = c.ed_visits >= 3;
        let stays_ok = c.unplanned_stays >= 2;
        let ed_ev = Some(format!("{} ED visits in 12 months", c.ed_visits));
        let stay_ev = Some(format!(
            "{} unplanned inpatient stays in 12 months",
            c.unplanned_stays
        ));
        if (ed_ok || stays_ok) && !under21 {
            b.too_old(
                "2",
                "frequent ED or hospital use (the adult POF 2 thresholds are not evaluated here)",
                21,
                age,
            );
        } else {
            if ed_ok {
                b.met(
                    "pof2.ed-visits",
                    "2",
                    "three or more ED visits in 12 months",
                    ed_ev,
                );
            } else if c.ed_visits > 0 {
                b.push(
                    "pof2.ed-visits",
                    Some("2"),
                    NOT_MET,
                    "fewer than three ED visits in 12 months",
                    ed_ev,
                );
            }
            if stays_ok {
                b.met(
                    "pof2.unplanned-admissions",
                    "2",
                    "two or more unplanned inpatient stays in 12 months",
                    stay_ev,
                );
            } else if c.unplanned_stays > 0 {
                b.push(
                    "pof2.unplanned-admissions",
                    Some("2"),
                    NOT_MET,
                    "fewer than two unplanned inpatient stays in 12 months",
                    stay_ev,
                );
            }
        }
    }

    // POF 3 (§IV.3b).
    for (flag, code, text) in [
        (
            other.smhs_eligible,
            "pof3.smhs",
            "meets the access criteria for specialty mental health services",
        ),
        (
            other.dmc_eligible,
            "pof3.dmc",
            "meets the access criteria for DMC-ODS or DMC",
        ),
    ] {
        if flag == Some(true) {
            if under21 {
                b.met(code, "3", text, None);
            } else {
                b.too_old(
                    "3",
                    "behavioral health access criteria met (adult POF 3 not evaluated here)",
                    21,
                    age,
                );
            }
        }
    }

    // POF 4 (§IV.4b): under 21, or former foster youth between 18 and 26.
    if let Some(release) = other.correctional_release_on {
        if release < window_start {
            b.push(
                "pof4.correctional-release",
                Some("4"),
                NOT_MET,
                "released from a correctional facility more than 12 months before the evaluation date",
                None,
            );
        } else if under21 || (former_foster_youth && age.is_some_and(|a| a < 26)) {
            let evidence = if release > as_of {
                "release expected".to_string()
            } else {
                format!(
                    "released {} days before evaluation",
                    days_between(release, as_of)
                )
            };
            b.met(
                "pof4.correctional-release",
                "4",
                "transitioning from a correctional facility within the last 12 months",
                Some(evidence),
            );
        } else {
            b.too_old(
                "4",
                "released from a correctional facility (children's criteria: under 21, or a former foster youth under 26)",
                if former_foster_youth { 26 } else { 21 },
                age,
            );
        }
    }

    // POF 7 (§IV.7).
    if other.ccs_enrolled == Some(true) {
        let factors = other.complex_social_factors.as_ref().map_or(0, Vec::len);
        if !under21 {
            b.too_old("7", "enrolled in CCS", 21, age);
        } else if factors == 0 {
            b.push(
                "pof7.ccs-complex-social-factor",
                Some("7"),
                NOT_MET,
                "enrolled in CCS but no complex social factor is recorded",
                None,
            );
        } else {
            b.met(
                "pof7.ccs-complex-social-factor",
                "7",
                "enrolled in CCS or CCS WCM with at least one complex social factor",
                Some(format!("{factors} complex social factor(s)")),
            );
        }
    }

    // POF 9: review only.
    if other.pregnant_or_postpartum == Some(true) {
        b.push(
            "note:pof9-birth-equity",
            Some("9"),
            NOTE,
            "pregnant or postpartum: the Birth Equity POF needs facts the gateway does not hold; review",
            None,
        );
    }
}
