//! Demographic precedence: which source's value of a Patient element stands
//! when several sources write the same child. The rules are data,
//! `mappings/patient-precedence.toml` (read with the mappings: built into
//! the binary, or from `[mappings] dir`); `docs/county.md` ("Demographic
//! precedence") explains them to integrators.
//!
//! [`Precedence::merge_patient`] is the one merge of a newly translated
//! Patient into the stored one, for every writer (county case events in
//! `sources::case_event::derive`, hospital ADT in the translation worker):
//!
//! 1. the generic merge ([`patients::merge`]): the new fields win, stored
//!    fields the new version lacks are kept, identifiers and links unioned;
//! 2. then for each element with a rule: the value of the higher-ranked
//!    source stands. A lower source's differing name is kept as one more
//!    `name` (`use: old`, "retained for records" in FHIR's name-use value
//!    set) when the rule says `additional-name`, else it is discarded.
//!
//! Every value of a ruled element carries the source that supplied it, as
//! the extension `{base}/StructureDefinition/demographic-source`
//! (`valueCode` = the source name): on each `HumanName`, and on the primitive
//! element (`_birthDate`, `_gender`, FHIR JSON's place for a primitive's
//! extensions). A value stored before this existed has no such extension;
//! its source is the stored resource's `meta.source` mapping.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::patients;

/// Where the rules live in the mappings tree.
pub const FILE: &str = "patient-precedence.toml";

/// What becomes of a lower source's differing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Others {
    /// Kept as one more `Patient.name` (`use: old`, with its source).
    AdditionalName,
    /// Not stored on the Patient.
    Discard,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElementFile {
    order: Vec<String>,
    others: Others,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sources: BTreeMap<String, String>,
    #[serde(default)]
    elements: BTreeMap<String, ElementFile>,
}

/// One element's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The Patient element (`name`, `birthDate`, `gender`).
    pub element: String,
    /// Source names, highest first.
    pub order: Vec<String>,
    pub others: Others,
}

/// The compiled rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precedence {
    /// Source name → the mapping id that translates it.
    sources: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

/// Patient elements a rule may name: the demographics a source supplies.
const ELEMENTS: &[&str] = &[
    "name",
    "birthDate",
    "gender",
    "address",
    "telecom",
    "maritalStatus",
    "communication",
];
/// The elements that are primitives (their source goes on `_{element}`).
const PRIMITIVES: &[&str] = &["birthDate", "gender"];

/// Why the rules file was refused (the file's name is added by the caller).
#[derive(Debug, thiserror::Error)]
pub enum PrecedenceError {
    #[error("not valid TOML for the precedence rules: {0}")]
    Toml(String),
    #[error("elements.{element}: {reason}")]
    Rule { element: String, reason: String },
    #[error("{path}: cannot read the file: {reason}")]
    Read { path: String, reason: String },
}

impl Precedence {
    /// Parse and check the rules file's text.
    pub fn parse(text: &str) -> Result<Precedence, PrecedenceError> {
        let f: File = toml::from_str(text).map_err(|e| {
            PrecedenceError::Toml(e.message().lines().next().unwrap_or("").to_string())
        })?;
        let mut rules = Vec::new();
        for (element, e) in f.elements {
            let bad = |reason: String| PrecedenceError::Rule {
                element: element.clone(),
                reason,
            };
            if !ELEMENTS.contains(&element.as_str()) {
                return Err(bad(format!(
                    "not a Patient element a rule may name (one of {})",
                    ELEMENTS.join(", ")
                )));
            }
            if e.order.is_empty() {
                return Err(bad("order lists no source".into()));
            }
            for (i, s) in e.order.iter().enumerate() {
                if !f.sources.contains_key(s) {
                    return Err(bad(format!("order[{i}]: `{s}` is not in [sources]")));
                }
                if e.order[..i].contains(s) {
                    return Err(bad(format!("order[{i}]: `{s}` is listed twice")));
                }
            }
            if e.others == Others::AdditionalName && element != "name" {
                return Err(bad(
                    "others = \"additional-name\" applies to name only".into()
                ));
            }
            rules.push(Rule {
                element,
                order: e.order,
                others: e.others,
            });
        }
        Ok(Precedence {
            sources: f.sources,
            rules,
        })
    }

    /// The rules from the mappings tree: `dir/patient-precedence.toml` when
    /// `dir` is given and holds it, else the built-in file.
    pub fn load(dir: Option<&Path>) -> Result<Precedence, PrecedenceError> {
        let text = crate::embedded::mapping_file(dir, FILE)
            .map_err(|e| PrecedenceError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .unwrap_or_default();
        Precedence::parse(&text)
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The source name of a resource: the one whose mapping made it
    /// (`meta.source` = `{base}/mapping/{id}|{version}`).
    pub fn source_of(&self, res: &Value) -> Option<&str> {
        let src = res.pointer("/meta/source")?.as_str()?;
        let id = src.rsplit_once("/mapping/")?.1.split('|').next()?;
        self.sources
            .iter()
            .find(|(_, m)| m.as_str() == id)
            .map(|(s, _)| s.as_str())
    }

    /// Merge a newly translated Patient (`incoming`, as its mapping made it)
    /// into the stored one (see the module doc). Pure.
    pub fn merge_patient(&self, stored: Option<&Value>, incoming: &Value, base: &str) -> Value {
        let url = source_url(base);
        let src = self.source_of(incoming).map(str::to_string);
        let stored_src = stored.and_then(|s| self.source_of(s)).map(str::to_string);
        let mut out = match stored {
            Some(s) => patients::merge(s, incoming),
            None => incoming.clone(),
        };
        let Some(o) = out.as_object_mut() else {
            return out;
        };
        for rule in &self.rules {
            let rank = |s: Option<&str>| -> usize {
                s.and_then(|s| rule.order.iter().position(|x| x == s))
                    .unwrap_or(rule.order.len())
            };
            let e = rule.element.as_str();
            let new_val = incoming.get(e).filter(|v| !v.is_null());
            let old_val = stored.and_then(|s| s.get(e)).filter(|v| !v.is_null());
            if PRIMITIVES.contains(&e) {
                let under = format!("_{e}");
                let old_src = stored
                    .and_then(|s| s.get(&under))
                    .and_then(|x| stamp(x, &url))
                    .or(stored_src.clone());
                match (old_val, new_val) {
                    (Some(old), Some(_)) if rank(old_src.as_deref()) < rank(src.as_deref()) => {
                        // A higher source's value stands.
                        o.insert(e.to_string(), old.clone());
                        set_stamp(o, &under, &url, old_src.as_deref());
                    }
                    (_, Some(_)) => set_stamp(o, &under, &url, src.as_deref()),
                    // Nothing new: the stored value and its source stay.
                    (Some(_), None) => set_stamp(o, &under, &url, old_src.as_deref()),
                    (None, None) => {}
                }
                continue;
            }
            let old_items: Vec<(Value, Option<String>)> = old_val
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| {
                    let s = stamp(v, &url).or(stored_src.clone());
                    (v.clone(), s)
                })
                .collect();
            let Some(new_items) = new_val.and_then(Value::as_array) else {
                // Nothing new: the stored values stay, each with its source.
                if !old_items.is_empty() {
                    let kept = old_items
                        .into_iter()
                        .map(|(mut v, s)| {
                            stamp_item(&mut v, &url, s.as_deref());
                            v
                        })
                        .collect();
                    o.insert(e.to_string(), Value::Array(kept));
                }
                continue;
            };
            let new_items: Vec<Value> = new_items
                .iter()
                .map(|v| {
                    let mut v = v.clone();
                    stamp_item(&mut v, &url, src.as_deref());
                    v
                })
                .collect();
            let new_rank = rank(src.as_deref());
            let top_old = old_items.iter().map(|(_, s)| rank(s.as_deref())).min();
            let mut list: Vec<Value>;
            let lower: Vec<Value>;
            if top_old.is_none_or(|r| new_rank <= r) {
                // The incoming source is the highest: its values stand; the
                // stored values of other, lower sources are the others.
                list = new_items;
                lower = old_items
                    .into_iter()
                    .filter(|(_, s)| *s != src && rank(s.as_deref()) > new_rank)
                    .map(|(mut v, s)| {
                        stamp_item(&mut v, &url, s.as_deref());
                        v
                    })
                    .collect();
            } else {
                // A higher source's values stand; the incoming ones are the
                // others.
                list = old_items
                    .into_iter()
                    .map(|(mut v, s)| {
                        stamp_item(&mut v, &url, s.as_deref());
                        v
                    })
                    .collect();
                lower = new_items;
            }
            if rule.others == Others::AdditionalName {
                for mut v in lower {
                    if !list.iter().any(|x| same_name(x, &v)) {
                        if let Some(m) = v.as_object_mut() {
                            m.insert("use".into(), json!("old"));
                        }
                        list.push(v);
                    }
                }
            }
            o.insert(e.to_string(), Value::Array(list));
        }
        out
    }
}

/// The extension URL that names a value's source.
pub fn source_url(base: &str) -> String {
    format!("{base}/StructureDefinition/demographic-source")
}

/// The source named by the demographic-source extension of an element.
fn stamp(v: &Value, url: &str) -> Option<String> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|x| x.get("url").and_then(Value::as_str) == Some(url))?
        .get("valueCode")?
        .as_str()
        .map(str::to_string)
}

/// Set (or, with `None`, remove) the source extension of one element object.
fn stamp_item(v: &mut Value, url: &str, src: Option<&str>) {
    let Some(m) = v.as_object_mut() else { return };
    let mut exts: Vec<Value> = m
        .get("extension")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    exts.retain(|x| x.get("url").and_then(Value::as_str) != Some(url));
    if let Some(s) = src {
        exts.push(json!({"url": url, "valueCode": s}));
    }
    if exts.is_empty() {
        m.remove("extension");
    } else {
        m.insert("extension".into(), Value::Array(exts));
    }
}

/// Set the source of a primitive element on its `_element` object.
fn set_stamp(o: &mut Map<String, Value>, under: &str, url: &str, src: Option<&str>) {
    let mut elem = o.remove(under).unwrap_or_else(|| json!({}));
    stamp_item(&mut elem, url, src);
    if elem.as_object().is_some_and(|m| !m.is_empty()) {
        o.insert(under.to_string(), elem);
    }
}

fn norm(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_lowercase()
}

/// The same name, ignoring use, source and letter case: family, given and
/// text equal.
fn same_name(a: &Value, b: &Value) -> bool {
    let given = |v: &Value| -> Vec<String> {
        v.get("given")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|g| norm(Some(g)))
            .collect()
    };
    norm(a.get("family")) == norm(b.get("family"))
        && given(a) == given(b)
        && norm(a.get("text")) == norm(b.get("text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://gw.example/fhir";

    fn rules() -> Precedence {
        Precedence::load(None).expect("the shipped rules load")
    }

    fn county() -> Value {
        json!({"resourceType": "Patient", "id": "p",
            "meta": {"source": format!("{BASE}/mapping/case-event-to-fhir|1.1.0")},
            "identifier": [{"system": "cin", "value": "9"}, {"system": "client", "value": "C1"}],
            "name": [{"use": "official", "family": "Rivera", "given": ["Alex", "J"]}],
            "birthDate": "2010-03-15", "gender": "male"})
    }

    fn hospital(family: &str, birth: &str) -> Value {
        json!({"resourceType": "Patient", "id": "p",
            "meta": {"source": format!("{BASE}/mapping/adt-to-fhir|1.4.0")},
            "identifier": [{"system": "cin", "value": "9"}, {"system": "mrn", "value": "M1"}],
            "name": [{"use": "official", "family": family, "given": ["Alex"]}],
            "birthDate": birth, "gender": "female",
            "address": [{"city": "Fresno"}]})
    }

    fn src(v: &Value) -> Option<String> {
        stamp(v, &source_url(BASE))
    }

    #[test]
    fn the_shipped_file_says_the_county_stands() {
        let p = rules();
        let elems: Vec<&str> = p.rules().iter().map(|r| r.element.as_str()).collect();
        assert_eq!(elems, ["birthDate", "gender", "name"]);
        assert!(p.rules().iter().all(|r| r.order[0] == "county"));
        assert_eq!(p.source_of(&county()), Some("county"));
        assert_eq!(p.source_of(&hospital("X", "2010-01-01")), Some("hospital"));
    }

    #[test]
    fn a_hospital_after_the_county_adds_a_name_and_changes_no_demographics() {
        let p = rules();
        let first = p.merge_patient(None, &county(), BASE);
        let m = p.merge_patient(Some(&first), &hospital("Rivers", "2011-01-01"), BASE);
        assert_eq!(m["birthDate"], "2010-03-15");
        assert_eq!(m["gender"], "male");
        assert_eq!(src(&m["_birthDate"]).as_deref(), Some("county"));
        let names = m["name"].as_array().unwrap();
        assert_eq!(names.len(), 2, "{m}");
        assert_eq!(names[0]["family"], "Rivera");
        assert_eq!(names[0]["use"], "official");
        assert_eq!(src(&names[0]).as_deref(), Some("county"));
        assert_eq!(names[1]["family"], "Rivers");
        assert_eq!(names[1]["use"], "old");
        assert_eq!(src(&names[1]).as_deref(), Some("hospital"));
        // Identifiers merged, the hospital's address kept.
        assert_eq!(m["identifier"].as_array().unwrap().len(), 3);
        assert_eq!(m["address"][0]["city"], "Fresno");
        // The same ADT again changes nothing; the same name is not added twice.
        let again = p.merge_patient(Some(&m), &hospital("Rivers", "2011-01-01"), BASE);
        assert_eq!(again, m);
        // A hospital name equal to the county's (case aside) adds nothing.
        let same = p.merge_patient(Some(&first), &hospital("RIVERA", "2010-03-15"), BASE);
        let same_names = same["name"].as_array().unwrap();
        assert_eq!(same_names.len(), 2, "given differs: Alex vs Alex J");
    }

    #[test]
    fn the_county_after_a_hospital_takes_over_and_keeps_the_hospital_name() {
        let p = rules();
        let h = p.merge_patient(None, &hospital("Rivers", "2011-01-01"), BASE);
        assert_eq!(src(&h["name"][0]).as_deref(), Some("hospital"));
        assert_eq!(h["name"][0]["use"], "official");
        let m = p.merge_patient(Some(&h), &county(), BASE);
        assert_eq!(m["birthDate"], "2010-03-15");
        assert_eq!(m["gender"], "male");
        assert_eq!(src(&m["_gender"]).as_deref(), Some("county"));
        let names = m["name"].as_array().unwrap();
        assert_eq!(names[0]["family"], "Rivera");
        assert_eq!(names[1]["family"], "Rivers");
        assert_eq!(names[1]["use"], "old");
        // A later county event with a new name replaces the county's name.
        let mut renamed = county();
        renamed["name"][0]["family"] = json!("Rivera-Lopez");
        let r = p.merge_patient(Some(&m), &renamed, BASE);
        let fam: Vec<&str> = r["name"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["family"].as_str().unwrap())
            .collect();
        assert_eq!(fam, ["Rivera-Lopez", "Rivers"]);
    }

    #[test]
    fn a_stored_value_without_a_source_is_its_writers() {
        // Stored before sources were recorded: meta.source says the county.
        let p = rules();
        let m = p.merge_patient(Some(&county()), &hospital("Rivers", "2011-01-01"), BASE);
        assert_eq!(m["birthDate"], "2010-03-15");
        assert_eq!(m["name"][0]["family"], "Rivera");
        assert_eq!(m["name"][1]["use"], "old");
        // Hospital after hospital: the latest stands, no extra name.
        let h = p.merge_patient(None, &hospital("Rivers", "2011-01-01"), BASE);
        let h2 = p.merge_patient(Some(&h), &hospital("Rives", "2011-01-02"), BASE);
        assert_eq!(h2["name"].as_array().unwrap().len(), 1);
        assert_eq!(h2["name"][0]["family"], "Rives");
        assert_eq!(h2["birthDate"], "2011-01-02");
    }

    #[test]
    fn a_mappings_dir_may_carry_its_own_rules() {
        let dir = tempfile::tempdir().unwrap();
        // Without the file there: the built-in rules.
        assert_eq!(Precedence::load(Some(dir.path())).unwrap(), rules());
        std::fs::write(
            dir.path().join(FILE),
            "[sources]\nhospital = \"adt-to-fhir\"\ncounty = \"case-event-to-fhir\"\n\
             [elements.name]\norder = [\"hospital\", \"county\"]\nothers = \"discard\"\n",
        )
        .unwrap();
        let p = Precedence::load(Some(dir.path())).unwrap();
        assert_eq!(p.rules().len(), 1);
        // Hospital first: its name replaces the county's, which is dropped.
        let m = p.merge_patient(Some(&county()), &hospital("Rivers", "2011-01-01"), BASE);
        assert_eq!(m["name"].as_array().unwrap().len(), 1);
        assert_eq!(m["name"][0]["family"], "Rivers");
        std::fs::write(
            dir.path().join(FILE),
            "[sources]\n[elements.nope]\norder = []\nothers = \"discard\"\n",
        )
        .unwrap();
        let e = Precedence::load(Some(dir.path())).unwrap_err();
        assert!(e.to_string().starts_with("elements.nope"), "{e}");
    }

    #[test]
    fn bad_files_are_refused_with_the_element() {
        let e = Precedence::parse("[sources]\ncounty = \"x\"\n[elements.name]\norder = [\"court\"]\nothers = \"discard\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("elements.name: order[0]"), "{e}");
        let e = Precedence::parse("[sources]\ncounty = \"x\"\n[elements.birthDate]\norder = [\"county\"]\nothers = \"additional-name\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("name only"), "{e}");
        let e = Precedence::parse("[sources]\ncounty = \"x\"\n[elements.ssn]\norder = [\"county\"]\nothers = \"discard\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("elements.ssn"), "{e}");
        let e = Precedence::parse("[sources]\ncounty = \"x\"\ncolour = 1\n").unwrap_err();
        assert!(matches!(e, PrecedenceError::Toml(_)), "{e}");
        let e = Precedence::parse(
            "[sources]\n[elements.name]\norder = []\nothers = \"discard\"\nextra = 1\n",
        )
        .unwrap_err();
        assert!(matches!(e, PrecedenceError::Toml(_)), "{e}");
    }
}
