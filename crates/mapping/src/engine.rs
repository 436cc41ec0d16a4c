//! Loading (YAML → plan) and running mappings; FHIR Bundle assembly and
//! sensitivity labelling.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use serde_yaml::Value as Y;

use crate::error::{MappingError, TranslateError};
use crate::eval::{uuid5_text, write_str_body, Eval, Flags, Instance, RunCtx};
use crate::expr::{Node, ObjField, Scope, SourceKind, StampField};
use crate::icd10::Icd10Ranges;
use crate::path::SourcePath;
use crate::pieces::{PieceInfo, PieceScope, PieceUse, Pieces, PIECES_DIR};
use crate::source::{FieldSet, Hl7Source, JsonSource, Source};
use crate::terminology::ConceptMap;

/// Largest mapping file accepted.
const MAX_YAML_BYTES: u64 = 1024 * 1024;
/// Most mapping / terminology files under one root.
const MAX_FILES: usize = 512;
/// Most resources one input may produce.
const MAX_RESOURCES: usize = 500;
/// Folders under the mappings root that hold other data (concept maps,
/// eligibility and calendar tables owned by other modules, the shared
/// pieces of `common/`), never mapping YAML.
const NOT_MAPPINGS: &[&str] = &["terminology", "eligibility", "calendar", PIECES_DIR];
/// Directory depth searched for mapping files.
const MAX_DIR_DEPTH: usize = 8;

const TOP_KEYS: &[&str] = &[
    "id",
    "version",
    "source",
    "description",
    "message_types",
    "golden",
    "timezone_from",
    "keys",
    "sensitivity",
    "resources",
];
const RESOURCE_KEYS: &[&str] = &[
    "name", "type", "for_each", "when", "key", "id", "labels", "required", "body",
];

/// What [`Engine::mappings`] reports about one mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Mapping id (stable, used in `meta.source`).
    pub id: String,
    /// Semantic version.
    pub version: String,
    /// Source kind (`hl7v2`, `json`).
    pub source: &'static str,
    /// File it was loaded from.
    pub file: PathBuf,
    /// Analyst-facing description.
    pub description: String,
    /// Golden test directories/files that cover this mapping.
    pub golden: Vec<String>,
    /// Message types (MSH-9.1) an hl7v2 mapping handles.
    pub message_types: Vec<String>,
}

/// Configured sensitive locations and services (hospital-specific codes).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Sensitivity {
    /// PV1-3.1 point-of-care codes of psychiatric units.
    #[serde(default)]
    pub psychiatric_locations: Vec<String>,
    /// PV1-3.1 point-of-care codes of substance-use units.
    #[serde(default)]
    pub sud_locations: Vec<String>,
    /// PV1-10 hospital service codes that are psychiatric.
    #[serde(default)]
    pub psychiatric_services: Vec<String>,
    /// PV1-10 hospital service codes that are substance-use treatment.
    #[serde(default)]
    pub sud_services: Vec<String>,
}

/// Per-message context for [`Engine::translate_adt`].
#[derive(Debug, Clone, Copy)]
pub struct AdtContext<'a> {
    /// Base URL for fullUrls and minted systems, without trailing slash.
    pub canonical_base: &'a str,
    /// Configured Organization id of the ADT source (e.g. `st-mary`).
    pub source_org_id: &'a str,
    /// Its display name.
    pub source_org_name: &'a str,
    /// When the gateway received the message (RFC 3339).
    pub received_at: &'a str,
    /// Sensitive locations/services of this source.
    pub sensitivity: &'a Sensitivity,
}

/// Per-document context for [`Engine::translate_json`].
#[derive(Debug, Clone, Copy)]
pub struct JsonContext<'a> {
    /// Base URL for fullUrls and minted systems.
    pub canonical_base: &'a str,
    /// Organization id of the sender.
    pub source_org_id: &'a str,
    /// Its name.
    pub source_org_name: &'a str,
    /// When the gateway received the document (RFC 3339).
    pub received_at: &'a str,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Labels {
    diagnosis: bool,
    context: bool,
}

/// A resource id before it is appended to the url buffer.
enum IdText {
    Uuid([u8; crate::sha1::UUID_LEN]),
    /// The verbatim id, in the key/id text buffer.
    Raw,
}

#[derive(Debug)]
enum IdRule {
    Key(Node),
    Raw(Node),
}

#[derive(Debug)]
struct ResourceDef {
    rtype: String,
    for_each: Option<SourcePath>,
    when: Option<Node>,
    id: IdRule,
    labels: Labels,
    required: bool,
    body: Node,
}

#[derive(Debug)]
struct SensitivityPaths {
    diagnosis_each: SourcePath,
    diagnosis_code: SourcePath,
    location: Option<SourcePath>,
    service: Option<SourcePath>,
}

#[derive(Debug)]
struct Mapping {
    info: MappingInfo,
    kind: SourceKind,
    timezone_from: Option<SourcePath>,
    keys: Vec<Node>,
    sensitivity: Option<SensitivityPaths>,
    resources: Vec<ResourceDef>,
    /// The shared pieces it uses: (index in [`Pieces::list`], YAML path).
    piece_uses: Vec<(usize, String)>,
}

/// The compiled set of mappings and concept maps.
#[derive(Debug)]
pub struct Engine {
    mappings: Vec<Mapping>,
    tables: Vec<ConceptMap>,
    /// `terminology/icd10-sensitivity.csv`: the diagnosis labels.
    icd10: Icd10Ranges,
    /// Every HL7 v2 field any hl7v2 mapping (or the engine itself) reads:
    /// the only ones the field index splits.
    hl7_fields: FieldSet,
    /// The shared pieces (`common/*.yaml`), already expanded in the plans.
    pieces: Pieces,
}

/// The fields `mappings` can read from an HL7 v2 message: every path of
/// every hl7v2 mapping, and MSH-9 (the engine picks the mapping by it).
fn hl7_fields(mappings: &[Mapping]) -> FieldSet {
    let mut set = FieldSet::default();
    set.add(crate::source::seg_key("MSH"), 9);
    for m in mappings.iter().filter(|m| m.kind == SourceKind::Hl7v2) {
        let mut add = |p: &SourcePath| set.add_path(p);
        m.timezone_from.iter().for_each(&mut add);
        if let Some(sp) = &m.sensitivity {
            add(&sp.diagnosis_each);
            add(&sp.diagnosis_code);
            sp.location.iter().for_each(&mut add);
            sp.service.iter().for_each(&mut add);
        }
        for k in &m.keys {
            k.for_each_path(&mut add);
        }
        for r in &m.resources {
            r.for_each.iter().for_each(&mut add);
            if let Some(w) = &r.when {
                w.for_each_path(&mut add);
            }
            match &r.id {
                IdRule::Key(n) | IdRule::Raw(n) => n.for_each_path(&mut add),
            }
            r.body.for_each_path(&mut add);
        }
    }
    set
}

/// The tables under `terminology/`: concept maps by file stem, and the
/// ICD-10 sensitivity ranges (`icd10-sensitivity.csv`), which are not one.
#[derive(Default)]
struct Tables {
    maps: Vec<ConceptMap>,
    idx: HashMap<String, usize>,
    icd10: Option<Icd10Ranges>,
}

impl Tables {
    fn add(&mut self, file: &Path, text: Option<&str>) -> Result<(), MappingError> {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if name == crate::icd10::TABLE {
            self.icd10 = Some(match text {
                Some(t) => Icd10Ranges::parse(file, t)?,
                None => Icd10Ranges::load(file)?,
            });
            return Ok(());
        }
        self.maps.push(match text {
            Some(t) => ConceptMap::parse(file, t)?,
            None => ConceptMap::load(file)?,
        });
        self.idx.insert(name, self.maps.len() - 1);
        Ok(())
    }

    /// The engine over `mappings`. A mapping that derives sensitivity labels
    /// needs the ICD-10 ranges: without them its diagnoses would go
    /// unlabelled, so that is a load error.
    fn engine(self, mappings: Vec<Mapping>, pieces: Pieces) -> Result<Engine, MappingError> {
        if self.icd10.is_none() {
            if let Some(m) = mappings.iter().find(|m| m.sensitivity.is_some()) {
                return Err(MappingError::new(
                    &m.info.file,
                    "sensitivity",
                    format!(
                        "needs the ICD-10 ranges terminology/{}.csv, which is not loaded",
                        crate::icd10::TABLE
                    ),
                ));
            }
        }
        let hl7_fields = hl7_fields(&mappings);
        Ok(Engine {
            mappings,
            tables: self.maps,
            icd10: self.icd10.unwrap_or_default(),
            hl7_fields,
            pieces,
        })
    }
}

fn collect(
    dir: &Path,
    ext: &str,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), MappingError> {
    if depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| MappingError::new(dir, "", format!("cannot read directory: {e}")))?;
    for entry in rd {
        let p = entry
            .map_err(|e| MappingError::new(dir, "", format!("cannot read directory: {e}")))?
            .path();
        if p.is_dir() {
            let skip = depth == 0
                && ext == "yaml"
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| NOT_MAPPINGS.contains(&n));
            if !skip {
                collect(&p, ext, depth + 1, out)?;
            }
        } else if p.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(p);
        }
        if out.len() > MAX_FILES {
            return Err(MappingError::new(dir, "", "too many files"));
        }
    }
    Ok(())
}

fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_fhir_type(t: &str) -> bool {
    t.len() <= 64
        && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Engine {
    /// Load every `**/*.yaml` mapping and `terminology/*.csv` concept map
    /// (and the ICD-10 sensitivity ranges, `terminology/icd10-sensitivity.csv`)
    /// under `dir`, compiling them. Errors name the file and the offending key
    /// or line.
    pub fn load(dir: &Path) -> Result<Engine, MappingError> {
        let mut csvs = Vec::new();
        let term = dir.join("terminology");
        if term.is_dir() {
            collect(&term, "csv", MAX_DIR_DEPTH, &mut csvs)?;
        }
        csvs.sort();
        let mut tables = Tables::default();
        for f in &csvs {
            tables.add(f, None)?;
        }
        let mut pieces = Pieces::default();
        for f in piece_files(&dir.join(PIECES_DIR))? {
            pieces.add_file(&f, &read_yaml(&f)?)?;
        }
        pieces.check()?;
        let mut yamls = Vec::new();
        collect(dir, "yaml", 0, &mut yamls)?;
        yamls.sort();
        let mut mappings: Vec<Mapping> = Vec::new();
        for f in &yamls {
            let m = compile_text(f, &read_yaml(f)?, &tables.idx, &pieces)?;
            if let Some(prev) = mappings.iter().find(|x| x.info.id == m.info.id) {
                return Err(MappingError::new(
                    f,
                    "id",
                    format!(
                        "duplicate mapping id `{}` (also in {})",
                        m.info.id,
                        prev.info.file.display()
                    ),
                ));
            }
            mappings.push(m);
        }
        tables.engine(mappings, pieces)
    }

    /// Load what [`Engine::load`] loads from files already in memory (a
    /// mappings tree embedded in a binary): `(path relative to the mappings
    /// root, text)`. `terminology/*.csv` are concept maps; `common/*.yaml`
    /// are shared pieces; every `*.yaml` outside `terminology/`,
    /// `eligibility/`, `calendar/` and `common/` is a mapping; other files
    /// are ignored. Errors and [`MappingInfo::file`] name `origin.join(path)`.
    pub fn load_files<'a>(
        origin: &Path,
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Engine, MappingError> {
        let (mut csvs, mut yamls, mut libs) = (Vec::new(), Vec::new(), Vec::new());
        for (rel, text) in files {
            let mut parts = rel.components().map(|c| c.as_os_str().to_str());
            let (first, depth) = (parts.next().flatten(), rel.components().count());
            match rel.extension().and_then(|e| e.to_str()) {
                Some("csv") if depth == 2 && first == Some("terminology") => {
                    csvs.push((origin.join(rel), text))
                }
                Some("yaml") if depth == 2 && first == Some(PIECES_DIR) => {
                    libs.push((origin.join(rel), text))
                }
                Some("yaml")
                    if depth <= MAX_DIR_DEPTH + 1
                        && !(depth > 1 && first.is_some_and(|n| NOT_MAPPINGS.contains(&n))) =>
                {
                    yamls.push((origin.join(rel), text))
                }
                _ => {}
            }
            if csvs.len() + yamls.len() + libs.len() > MAX_FILES {
                return Err(MappingError::new(origin, "", "too many files"));
            }
        }
        csvs.sort();
        yamls.sort();
        libs.sort();
        let mut tables = Tables::default();
        for (f, text) in &csvs {
            tables.add(f, Some(text))?;
        }
        let mut pieces = Pieces::default();
        for (f, text) in &libs {
            if text.len() as u64 > MAX_YAML_BYTES {
                return Err(MappingError::new(f, "", "file larger than 1 MiB"));
            }
            pieces.add_file(f, text)?;
        }
        pieces.check()?;
        let mut mappings: Vec<Mapping> = Vec::new();
        for (f, text) in &yamls {
            if text.len() as u64 > MAX_YAML_BYTES {
                return Err(MappingError::new(f, "", "mapping file larger than 1 MiB"));
            }
            let m = compile_text(f, text, &tables.idx, &pieces)?;
            if let Some(prev) = mappings.iter().find(|x| x.info.id == m.info.id) {
                return Err(MappingError::new(
                    f,
                    "id",
                    format!(
                        "duplicate mapping id `{}` (also in {})",
                        m.info.id,
                        prev.info.file.display()
                    ),
                ));
            }
            mappings.push(m);
        }
        tables.engine(mappings, pieces)
    }

    /// Compile a single mapping from YAML text (for tests and tooling);
    /// concept maps are loaded from `terminology_dir`. No shared pieces are
    /// loaded: a `$use` is an unknown piece ([`Engine::load_files`] takes
    /// `common/*.yaml` with the mapping).
    pub fn from_yaml(
        file: &Path,
        yaml: &str,
        terminology_dir: Option<&Path>,
    ) -> Result<Engine, MappingError> {
        let mut tables = Tables::default();
        if let Some(dir) = terminology_dir {
            let mut csvs = Vec::new();
            collect(dir, "csv", MAX_DIR_DEPTH, &mut csvs)?;
            csvs.sort();
            for f in &csvs {
                tables.add(f, None)?;
            }
        }
        let pieces = Pieces::default();
        let mappings = vec![compile_text(file, yaml, &tables.idx, &pieces)?];
        tables.engine(mappings, pieces)
    }

    /// What is loaded, in file order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.mappings.iter().map(|m| m.info.clone()).collect()
    }

    /// The shared pieces (`common/*.yaml`), in file order, each with every
    /// place a loaded mapping uses it.
    pub fn pieces(&self) -> Vec<PieceInfo> {
        self.pieces
            .list
            .iter()
            .enumerate()
            .map(|(i, p)| PieceInfo {
                name: p.name.clone(),
                file: p.file.clone(),
                description: p.description.clone(),
                params: p.params.clone(),
                used_by: self
                    .mappings
                    .iter()
                    .flat_map(|m| {
                        m.piece_uses
                            .iter()
                            .filter(move |(j, _)| *j == i)
                            .map(move |(_, path)| PieceUse {
                                mapping: m.info.id.clone(),
                                file: m.info.file.clone(),
                                path: path.clone(),
                            })
                    })
                    .collect(),
            })
            .collect()
    }

    /// Translate one parsed HL7 v2 ADT message into a FHIR R4 `transaction` Bundle.
    pub fn translate_adt(
        &self,
        msg: &hl7v2::Message,
        ctx: &AdtContext,
    ) -> Result<Value, TranslateError> {
        let mut buf = Vec::with_capacity(8 * 1024);
        self.translate_adt_into(msg, ctx, &mut buf)?;
        to_value(&buf)
    }

    /// Like [`Engine::translate_adt`], but appends the Bundle as compact JSON
    /// to `out` (keys sorted: byte-identical to serializing the `Value`).
    /// This is the fast path: no intermediate tree is built. On error `out`
    /// is left as it was.
    pub fn translate_adt_into(
        &self,
        msg: &hl7v2::Message,
        ctx: &AdtContext,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        self.translate_adt_spans(msg, ctx, out, None)
    }

    /// [`Engine::translate_adt_into`] that also returns where each entry's
    /// `resource` is in `out` (byte ranges, in Bundle order): a caller that
    /// needs the resources one by one parses just those slices, without the
    /// Bundle around them.
    pub fn translate_adt_resources(
        &self,
        msg: &hl7v2::Message,
        ctx: &AdtContext,
        out: &mut Vec<u8>,
    ) -> Result<Vec<std::ops::Range<usize>>, TranslateError> {
        let mut spans = Vec::with_capacity(16);
        self.translate_adt_spans(msg, ctx, out, Some(&mut spans))?;
        Ok(spans)
    }

    fn translate_adt_spans(
        &self,
        msg: &hl7v2::Message,
        ctx: &AdtContext,
        out: &mut Vec<u8>,
        spans: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<(), TranslateError> {
        let src = Hl7Source::with_fields(msg, Some(&self.hl7_fields));
        let root = src.root();
        let msg_type = src.get(
            root,
            &SourcePath::Hl7(crate::path::Hl7Path {
                segment: None,
                seg_key: crate::source::seg_key("MSH"),
                field: 9,
                rep: None,
                comp: 1,
                sub: 0,
            }),
        );
        let mapping = self
            .mappings
            .iter()
            .filter(|m| m.kind == SourceKind::Hl7v2)
            .find(|m| {
                m.info.message_types.is_empty()
                    || msg_type
                        .as_deref()
                        .is_some_and(|t| m.info.message_types.iter().any(|x| x == t))
            })
            .ok_or_else(|| TranslateError {
                code: "no-mapping",
                location: Some("MSH^1^9".into()),
                text: "no hl7v2 mapping handles this message type".into(),
            })?;
        if msg.first("PID").is_none() {
            return Err(TranslateError {
                code: "missing-pid",
                location: Some("PID".into()),
                text: "message has no PID segment".into(),
            });
        }
        let run = RunCtx {
            canonical_base: ctx.canonical_base,
            source_org_id: ctx.source_org_id,
            source_org_name: ctx.source_org_name,
            received_at: ctx.received_at,
        };
        self.run(mapping, &src, run, Some(ctx.sensitivity), out, spans)
    }

    /// Translate a JSON document with the `json` mapping `mapping_id`.
    pub fn translate_json(
        &self,
        mapping_id: &str,
        doc: &Value,
        ctx: &JsonContext,
    ) -> Result<Value, TranslateError> {
        let mapping = self
            .mappings
            .iter()
            .find(|m| m.kind == SourceKind::Json && m.info.id == mapping_id)
            .ok_or_else(|| TranslateError {
                code: "no-mapping",
                location: None,
                text: "no such json mapping".into(),
            })?;
        let src = JsonSource { doc };
        let run = RunCtx {
            canonical_base: ctx.canonical_base,
            source_org_id: ctx.source_org_id,
            source_org_name: ctx.source_org_name,
            received_at: ctx.received_at,
        };
        let mut buf = Vec::with_capacity(4 * 1024);
        self.run(mapping, &src, run, None, &mut buf, None)?;
        to_value(&buf)
    }

    fn run<'v, S: Source<'v>>(
        &'v self,
        m: &'v Mapping,
        src: &'v S,
        ctx: RunCtx<'v>,
        sens: Option<&Sensitivity>,
        out: &mut Vec<u8>,
        mut spans: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<(), TranslateError> {
        let root = src.root();
        let default_tz = m
            .timezone_from
            .as_ref()
            .and_then(|p| src.get(root, p))
            .and_then(|t| crate::datetime::offset_of(&t));
        let mut ev = Eval {
            src,
            tables: &self.tables,
            ctx,
            default_tz,
            key_text: String::with_capacity(256),
            keys: Vec::with_capacity(m.keys.len()),
            instances: Vec::with_capacity(m.resources.len() + 8),
            meta_source: {
                let mut j = Vec::with_capacity(ctx.canonical_base.len() + 64);
                j.push(b'"');
                write_str_body(&mut j, ctx.canonical_base);
                j.extend_from_slice(b"/mapping/");
                write_str_body(&mut j, &m.info.id);
                j.push(b'|');
                write_str_body(&mut j, &m.info.version);
                j.push(b'"');
                j
            },
            urls: Vec::with_capacity(64 * (m.resources.len() + 2)),
            current: std::cell::Cell::new(0),
            pool: std::cell::RefCell::new(Vec::with_capacity(8)),
        };
        // Keys and ids are written as text into one reused buffer (no
        // `String` per key, concatenation or id).
        let mut text = String::with_capacity(128);
        for k in &m.keys {
            text.clear();
            let v = ev.write_body(k, root, &mut text).then(|| {
                let at = ev.key_text.len();
                ev.key_text.push_str(&text);
                at..ev.key_text.len()
            });
            ev.keys.push(v);
        }
        // Phase 1: which resources exist, and their ids.
        let mut curs = Vec::with_capacity(8);
        for (di, def) in m.resources.iter().enumerate() {
            curs.clear();
            match &def.for_each {
                Some(p) => src.each(root, p, &mut curs),
                None => curs.push(root),
            }
            for &c in &curs {
                if let Some(w) = &def.when {
                    if !ev
                        .eval(w, c)
                        .is_some_and(|v| !matches!(v, crate::eval::Val::Bool(false)))
                    {
                        continue;
                    }
                }
                // `{rtype}/{id}` appended to the shared url buffer, the id
                // hashed straight into it (one allocation per message, not
                // three per resource).
                let id_text = match &def.id {
                    IdRule::Key(k) => {
                        text.clear();
                        ev.write_body(k, c, &mut text)
                            .then(|| IdText::Uuid(uuid5_text(&text)))
                    }
                    IdRule::Raw(n) => {
                        text.clear();
                        ev.write_body(n, c, &mut text).then_some(IdText::Raw)
                    }
                };
                let at = ev.urls.len();
                ev.urls.extend_from_slice(def.rtype.as_bytes());
                ev.urls.push(b'/');
                let id_at = ev.urls.len();
                match &id_text {
                    Some(IdText::Uuid(u)) => ev.urls.extend_from_slice(u),
                    Some(IdText::Raw) => ev.urls.extend_from_slice(text.as_bytes()),
                    None => {}
                }
                let id = ev.urls.get(id_at..).unwrap_or_default();
                // A uuid's text (hex and hyphens) is always a valid id.
                let valid = match id_text {
                    Some(IdText::Uuid(_)) => true,
                    Some(IdText::Raw) => valid_id_bytes(id),
                    None => false,
                };
                if !valid {
                    ev.urls.truncate(at);
                    if def.required {
                        return Err(TranslateError {
                            code: "missing-id",
                            location: None,
                            text: format!("no identifier to build the {} id from", def.rtype),
                        });
                    }
                    continue;
                }
                if ev
                    .instances
                    .iter()
                    .any(|i| i.rtype == def.rtype && ev.id_of(i) == id)
                {
                    ev.urls.truncate(at);
                    continue; // same resource twice (e.g. repeated DG1 code): first wins
                }
                if ev.instances.len() >= MAX_RESOURCES {
                    return Err(TranslateError {
                        code: "too-large",
                        location: None,
                        text: "too many resources".into(),
                    });
                }
                let url = at..ev.urls.len();
                ev.instances.push(Instance {
                    def: di,
                    cur: c,
                    anchor: src.anchor(c),
                    rtype: &def.rtype,
                    url,
                    per_item: def.for_each.is_some(),
                    flags: Flags::default(),
                });
            }
        }
        // Sensitivity flags for the whole input.
        let (diag, context) = match (sens, &m.sensitivity) {
            (Some(cfg), Some(sp)) => flags(src, sp, cfg, &self.icd10),
            _ => (Flags::default(), Flags::default()),
        };
        for inst in &mut ev.instances {
            let labels = m
                .resources
                .get(inst.def)
                .map(|d| d.labels)
                .unwrap_or_default();
            if labels.diagnosis {
                inst.flags.or(diag);
            }
            if labels.context {
                inst.flags.or(context);
            }
        }
        // Phase 2: bodies, streamed as compact JSON with sorted keys.
        let start = out.len();
        out.extend_from_slice(b"{");
        if !ev.instances.is_empty() {
            out.extend_from_slice(b"\"entry\":[");
            for (i, inst) in ev.instances.iter().enumerate() {
                let Some(def) = m.resources.get(inst.def) else {
                    continue;
                };
                if i > 0 {
                    out.push(b',');
                }
                ev.current.set(i);
                // `url` is a validated type and id: nothing to escape.
                out.extend_from_slice(b"{\"fullUrl\":\"");
                write_str_body(out, ctx.canonical_base);
                out.push(b'/');
                out.extend_from_slice(ev.url_of(inst));
                out.extend_from_slice(b"\",\"request\":{\"method\":\"PUT\",\"url\":\"");
                out.extend_from_slice(ev.url_of(inst));
                out.extend_from_slice(b"\"},\"resource\":");
                let body_start = out.len();
                if !ev.emit(&def.body, inst.cur, out) {
                    out.truncate(start);
                    if let Some(s) = spans.as_deref_mut() {
                        s.clear();
                    }
                    return Err(TranslateError {
                        code: "internal",
                        location: None,
                        text: "empty resource body".into(),
                    });
                }
                if let Some(s) = spans.as_deref_mut() {
                    s.push(body_start..out.len());
                }
                out.push(b'}');
            }
            out.extend_from_slice(b"],");
        }
        out.extend_from_slice(b"\"resourceType\":\"Bundle\",\"type\":\"transaction\"}");
        Ok(())
    }
}

fn to_value(buf: &[u8]) -> Result<Value, TranslateError> {
    serde_json::from_slice(buf).map_err(|_| TranslateError {
        code: "internal",
        location: None,
        text: "translation produced invalid JSON".into(),
    })
}

fn valid_id(id: &str) -> bool {
    valid_id_bytes(id.as_bytes())
}

fn valid_id_bytes(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn flags<'v, S: Source<'v>>(
    src: &S,
    sp: &SensitivityPaths,
    cfg: &Sensitivity,
    icd10: &Icd10Ranges,
) -> (Flags, Flags) {
    let root = src.root();
    let mut diag = Flags::default();
    let mut curs = Vec::with_capacity(8);
    src.each(root, &sp.diagnosis_each, &mut curs);
    for c in curs {
        if let Some(code) = src.get(c, &sp.diagnosis_code) {
            diag.or(icd10.classify(&code));
        }
    }
    let mut ctx = Flags::default();
    if let Some(loc) = sp.location.as_ref().and_then(|p| src.get(root, p)) {
        ctx.psy |= cfg.psychiatric_locations.iter().any(|l| *l == loc);
        ctx.eth |= cfg.sud_locations.iter().any(|l| *l == loc);
    }
    if let Some(svc) = sp.service.as_ref().and_then(|p| src.get(root, p)) {
        ctx.psy |= cfg.psychiatric_services.iter().any(|l| *l == svc);
        ctx.eth |= cfg.sud_services.iter().any(|l| *l == svc);
    }
    // Diagnoses label the encounter context too.
    ctx.or(diag);
    (diag, ctx)
}

/// The text of a YAML file (a mapping or a piece library) of at most
/// [`MAX_YAML_BYTES`].
fn read_yaml(file: &Path) -> Result<String, MappingError> {
    let meta = std::fs::metadata(file)
        .map_err(|e| MappingError::new(file, "", format!("cannot read: {e}")))?;
    if meta.len() > MAX_YAML_BYTES {
        return Err(MappingError::new(file, "", "file larger than 1 MiB"));
    }
    std::fs::read_to_string(file)
        .map_err(|e| MappingError::new(file, "", format!("cannot read: {e}")))
}

/// The piece libraries: `*.yaml` directly in `dir` (none when it does not
/// exist), sorted.
fn piece_files(dir: &Path) -> Result<Vec<PathBuf>, MappingError> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| MappingError::new(dir, "", format!("cannot read directory: {e}")))?;
    for entry in rd {
        let p = entry
            .map_err(|e| MappingError::new(dir, "", format!("cannot read directory: {e}")))?
            .path();
        if p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("yaml") {
            out.push(p);
        }
        if out.len() > MAX_FILES {
            return Err(MappingError::new(dir, "", "too many files"));
        }
    }
    out.sort();
    Ok(out)
}

fn str_field<'y>(
    file: &Path,
    m: &'y serde_yaml::Mapping,
    key: &str,
) -> Result<&'y str, MappingError> {
    m.get(key)
        .ok_or_else(|| MappingError::new(file, key, "required"))?
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| MappingError::new(file, key, "expected a non-empty string"))
}

fn str_list(file: &Path, m: &serde_yaml::Mapping, key: &str) -> Result<Vec<String>, MappingError> {
    match m.get(key) {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_sequence()
            .and_then(|s| {
                s.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| MappingError::new(file, key, "expected a list of strings")),
    }
}

fn check_keys(
    file: &Path,
    at: &str,
    m: &serde_yaml::Mapping,
    allowed: &[&str],
) -> Result<(), MappingError> {
    for k in m.keys() {
        let k = k
            .as_str()
            .ok_or_else(|| MappingError::new(file, at, "keys must be strings"))?;
        if !allowed.contains(&k) {
            let p = if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            };
            return Err(MappingError::new(
                file,
                p,
                format!("unknown key `{k}` (allowed: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn compile_text(
    file: &Path,
    text: &str,
    tables: &HashMap<String, usize>,
    pieces: &Pieces,
) -> Result<Mapping, MappingError> {
    let pieces = PieceScope::new(pieces);
    let doc: Y = serde_yaml::from_str(text)
        .map_err(|e| MappingError::new(file, "", format!("invalid YAML: {e}")))?;
    let top = doc
        .as_mapping()
        .ok_or_else(|| MappingError::new(file, "", "top level must be a mapping"))?;
    check_keys(file, "", top, TOP_KEYS)?;
    let id = str_field(file, top, "id")?.to_string();
    if !valid_id(&id) {
        return Err(MappingError::new(
            file,
            "id",
            "id must be letters, digits, '-' or '.'",
        ));
    }
    let version = str_field(file, top, "version")?.to_string();
    if !is_semver(&version) {
        return Err(MappingError::new(
            file,
            "version",
            "version must be semver (MAJOR.MINOR.PATCH)",
        ));
    }
    let kind = match str_field(file, top, "source")? {
        "hl7v2" => SourceKind::Hl7v2,
        "json" => SourceKind::Json,
        other => {
            return Err(MappingError::new(
                file,
                "source",
                format!("unknown source kind `{other}` (hl7v2, json)"),
            ))
        }
    };
    let description = str_field(file, top, "description")?.trim().to_string();
    let golden = str_list(file, top, "golden")?;
    let message_types = str_list(file, top, "message_types")?;

    // Names first, so templates can refer to keys and resources.
    let res_yaml = top
        .get("resources")
        .and_then(Y::as_sequence)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MappingError::new(file, "resources", "expected a non-empty list"))?;
    let mut names: Vec<(String, String)> = Vec::new();
    for (i, r) in res_yaml.iter().enumerate() {
        let at = format!("resources[{i}]");
        let rm = r
            .as_mapping()
            .ok_or_else(|| MappingError::new(file, &at, "expected a mapping"))?;
        check_keys(file, &at, rm, RESOURCE_KEYS)?;
        let name = rm
            .get("name")
            .and_then(Y::as_str)
            .ok_or_else(|| MappingError::new(file, format!("{at}.name"), "required string"))?;
        let rtype = rm
            .get("type")
            .and_then(Y::as_str)
            .ok_or_else(|| MappingError::new(file, format!("{at}.type"), "required string"))?;
        if !is_fhir_type(rtype) {
            return Err(MappingError::new(
                file,
                format!("{at}.type"),
                "not a FHIR resource type name",
            ));
        }
        if names.iter().any(|(n, _)| n == name) {
            return Err(MappingError::new(
                file,
                format!("{at}.name"),
                format!("duplicate resource name `{name}`"),
            ));
        }
        names.push((name.to_string(), rtype.to_string()));
    }

    let mut key_names: Vec<String> = Vec::new();
    let mut keys = Vec::new();
    if let Some(k) = top.get("keys") {
        let km = k
            .as_mapping()
            .ok_or_else(|| MappingError::new(file, "keys", "expected a mapping"))?;
        for (name, node) in km {
            let name = name
                .as_str()
                .ok_or_else(|| MappingError::new(file, "keys", "key names must be strings"))?;
            let scope = Scope {
                file,
                kind,
                tables,
                keys: &key_names,
                resources: &names,
                pieces: &pieces,
            };
            keys.push(scope.compile(&format!("keys.{name}"), node, 0)?);
            key_names.push(name.to_string());
        }
    }
    let scope = Scope {
        file,
        kind,
        tables,
        keys: &key_names,
        resources: &names,
        pieces: &pieces,
    };

    let timezone_from = top
        .get("timezone_from")
        .map(|v| scope.path("timezone_from", v))
        .transpose()?;
    let sensitivity = match top.get("sensitivity") {
        None => None,
        Some(v) => {
            let sm = v
                .as_mapping()
                .ok_or_else(|| MappingError::new(file, "sensitivity", "expected a mapping"))?;
            check_keys(
                file,
                "sensitivity",
                sm,
                &["diagnosis_each", "diagnosis_code", "location", "service"],
            )?;
            let need = |k: &str| {
                sm.get(k)
                    .ok_or_else(|| MappingError::new(file, format!("sensitivity.{k}"), "required"))
            };
            Some(SensitivityPaths {
                diagnosis_each: scope
                    .path("sensitivity.diagnosis_each", need("diagnosis_each")?)?,
                diagnosis_code: scope
                    .path("sensitivity.diagnosis_code", need("diagnosis_code")?)?,
                location: sm
                    .get("location")
                    .map(|v| scope.path("sensitivity.location", v))
                    .transpose()?,
                service: sm
                    .get("service")
                    .map(|v| scope.path("sensitivity.service", v))
                    .transpose()?,
            })
        }
    };

    let mut resources = Vec::new();
    for (i, (r, (_, rtype))) in res_yaml.iter().zip(names.iter()).enumerate() {
        let at = format!("resources[{i}]");
        let rm = r
            .as_mapping()
            .ok_or_else(|| MappingError::new(file, &at, "expected a mapping"))?;
        let for_each = rm
            .get("for_each")
            .map(|v| scope.path(&format!("{at}.for_each"), v))
            .transpose()?;
        let when = rm
            .get("when")
            .map(|v| scope.compile(&format!("{at}.when"), v, 0))
            .transpose()?;
        let id = match (rm.get("key"), rm.get("id")) {
            (Some(k), None) => IdRule::Key(scope.compile(&format!("{at}.key"), k, 0)?),
            (None, Some(v)) => IdRule::Raw(scope.compile(&format!("{at}.id"), v, 0)?),
            _ => {
                return Err(MappingError::new(
                    file,
                    &at,
                    "exactly one of `key` (uuid5) or `id` (verbatim) is required",
                ))
            }
        };
        let mut labels = Labels::default();
        for l in str_list(file, rm, "labels")
            .map_err(|e| MappingError::new(file, format!("{at}.labels"), e.reason))?
        {
            match l.as_str() {
                "diagnosis" => labels.diagnosis = true,
                "context" => labels.context = true,
                other => {
                    return Err(MappingError::new(
                        file,
                        format!("{at}.labels"),
                        format!("unknown label set `{other}` (diagnosis, context)"),
                    ))
                }
            }
        }
        let required = match rm.get("required") {
            None => false,
            Some(Y::Bool(b)) => *b,
            Some(_) => {
                return Err(MappingError::new(
                    file,
                    format!("{at}.required"),
                    "expected true or false",
                ))
            }
        };
        let body_y = rm
            .get("body")
            .ok_or_else(|| MappingError::new(file, format!("{at}.body"), "required"))?;
        let bm = body_y
            .as_mapping()
            .ok_or_else(|| MappingError::new(file, format!("{at}.body"), "expected a mapping"))?;
        for reserved in ["resourceType", "id", "meta"] {
            if bm.contains_key(reserved) {
                return Err(MappingError::new(
                    file,
                    format!("{at}.body.{reserved}"),
                    "set by the engine; remove it",
                ));
            }
        }
        let body = match scope.compile(&format!("{at}.body"), body_y, 0)? {
            Node::Object(mut fields) => {
                if let Some(k) = fields.iter().find(|f| f.required).map(|f| &f.name) {
                    return Err(MappingError::new(
                        file,
                        format!("{at}.body.{k}!"),
                        "top-level body fields cannot be required",
                    ));
                }
                for (name, stamp) in [
                    ("resourceType", StampField::ResourceType),
                    ("id", StampField::Id),
                    ("meta", StampField::Meta),
                ] {
                    if fields.iter().any(|f| f.name == name) {
                        return Err(MappingError::new(
                            file,
                            format!("{at}.body.{name}"),
                            "set by the engine; remove it",
                        ));
                    }
                    fields.push(ObjField::new(name, Node::Stamp(stamp), false));
                }
                fields.sort_by(|a, b| a.name.cmp(&b.name));
                Node::Object(fields)
            }
            Node::Lit(_) | Node::Str(..) | Node::Array(_) => {
                return Err(MappingError::new(
                    file,
                    format!("{at}.body"),
                    "expected a mapping",
                ))
            }
            // A function at the top (e.g. `$if`) is not a resource body.
            _ => {
                return Err(MappingError::new(
                    file,
                    format!("{at}.body"),
                    "the body must be an object template",
                ))
            }
        };
        resources.push(ResourceDef {
            rtype: rtype.clone(),
            for_each,
            when,
            id,
            labels,
            required,
            body,
        });
    }
    Ok(Mapping {
        info: MappingInfo {
            id,
            version,
            source: kind.as_str(),
            file: file.to_path_buf(),
            description,
            golden,
            message_types,
        },
        kind,
        timezone_from,
        keys,
        sensitivity,
        resources,
        piece_uses: pieces.used.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping that derives sensitivity labels does not load without the
    /// ICD-10 ranges (its diagnoses would go unlabelled); with them it does.
    #[test]
    fn sensitivity_needs_the_icd10_ranges() {
        let yaml = "id: t\nversion: 1.0.0\nsource: hl7v2\ndescription: test\nsensitivity:\n  diagnosis_each: DG1\n  diagnosis_code: DG1-3.1\nresources:\n  - name: p\n    type: Patient\n    key: {$v: PID-3.1}\n    body: {gender: {$v: PID-8}}\n";
        let e = Engine::from_yaml(Path::new("t.yaml"), yaml, None).unwrap_err();
        assert_eq!(e.path, "sensitivity");
        assert!(e.reason.contains("icd10-sensitivity.csv"), "{e}");
        let term = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings/terminology");
        assert!(Engine::from_yaml(Path::new("t.yaml"), yaml, Some(&term)).is_ok());
    }

    /// Constant templates are folded at load (nested lists still splice,
    /// constant objects inside dynamic ones keep their place) and the
    /// streamed bytes still equal serializing the `Value`.
    #[test]
    fn constant_templates_fold_and_splice() {
        let yaml = "id: t\nversion: 1.0.0\nsource: hl7v2\ndescription: test\nresources:\n  - name: p\n    type: Patient\n    key: {$v: PID-3.1}\n    body:\n      tags: [[a, b], {$v: PID-3.1}, [c], {k: 1, z: [true, x]}]\n      fixed: {system: s, code: c}\n      mixed: {code: {$v: PID-3.1}, fixed: {a: 1}}\n";
        let e = Engine::from_yaml(Path::new("t.yaml"), yaml, None).unwrap();
        let Node::Object(fields) = &e.mappings[0].resources[0].body else {
            panic!("body stays an object");
        };
        let fixed = fields.iter().find(|f| f.name == "fixed").unwrap();
        assert!(matches!(fixed.node, Node::Const(..)));
        let parsed = hl7v2::parse(
            b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||ID1",
            &hl7v2::ParseOptions::default(),
        );
        let msg = parsed.message.unwrap();
        let sens = Sensitivity::default();
        let ctx = AdtContext {
            canonical_base: "https://x",
            source_org_id: "o",
            source_org_name: "O",
            received_at: "2026-01-01T00:00:00Z",
            sensitivity: &sens,
        };
        let mut bytes = Vec::new();
        e.translate_adt_into(&msg, &ctx, &mut bytes).unwrap();
        let v = e.translate_adt(&msg, &ctx).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&v).unwrap());
        let r = &v["entry"][0]["resource"];
        assert_eq!(
            r["tags"],
            serde_json::json!(["a", "b", "ID1", "c", {"k": 1, "z": [true, "x"]}])
        );
        assert_eq!(r["fixed"], serde_json::json!({"code": "c", "system": "s"}));
        assert_eq!(
            r["mixed"],
            serde_json::json!({"code": "ID1", "fixed": {"a": 1}})
        );
    }

    /// Indexing only the fields the mappings read translates every golden
    /// input exactly as indexing every field does.
    #[test]
    fn the_read_fields_index_translates_as_a_full_index() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let e = Engine::load(&root.join("mappings")).unwrap();
        let mut full = Engine::load(&root.join("mappings")).unwrap();
        let sens = Sensitivity {
            psychiatric_locations: vec!["PSYCH".into()],
            sud_locations: vec!["DETOX".into()],
            psychiatric_services: vec!["PSY".into()],
            sud_services: vec!["SUD".into()],
        };
        let ctx = AdtContext {
            canonical_base: "https://x",
            source_org_id: "o",
            source_org_name: "O",
            received_at: "2026-01-01T00:00:00Z",
            sensitivity: &sens,
        };
        let mut n = 0;
        for entry in std::fs::read_dir(root.join("tests/golden/adt/adt-to-fhir")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("hl7") {
                continue;
            }
            let parsed = hl7v2::parse(&std::fs::read(&p).unwrap(), &hl7v2::ParseOptions::default());
            let Some(msg) = parsed.message else { continue };
            let mut all = FieldSet::default();
            for s in msg.segments() {
                for f in 1..=s.field_count() + 1 {
                    all.add(crate::source::seg_key(s.id()), f);
                }
            }
            full.hl7_fields = all;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let ra = e.translate_adt_into(&msg, &ctx, &mut a);
            let rb = full.translate_adt_into(&msg, &ctx, &mut b);
            assert_eq!(ra.is_ok(), rb.is_ok(), "{}", p.display());
            assert_eq!(a, b, "{}", p.display());
            n += 1;
        }
        assert!(n >= 40, "only {n} inputs");
    }

    /// A `$use` is resolved at load: the compiled plan is the one of the
    /// piece's template written out in its place, parameters bound.
    #[test]
    fn a_use_compiles_to_the_plan_written_out() {
        let lib = "pieces:\n  cx:\n    description: a CX\n    source: hl7v2\n    params: {authority: the default authority}\n    template:\n      system: {$concat: [\"urn:x:\", {$uri_segment: {$first: [{$v: \".4.1\"}, {$param: authority}]}}]}\n      value!: {$v: \".1\"}\n";
        let head = "id: t\nversion: 1.0.0\nsource: hl7v2\ndescription: test\nkeys:\n  fac: {$v: MSH-4.1}\nresources:\n  - name: p\n    type: Patient\n    key: {$v: PID-3.1}\n    body:\n";
        let used = format!("{head}      identifier: {{$for_each: PID-3, $do: {{$use: cx, $with: {{authority: {{$key: fac}}}}}}}}\n");
        let written = format!("{head}      identifier: {{$for_each: PID-3, $do: {{system: {{$concat: [\"urn:x:\", {{$uri_segment: {{$first: [{{$v: \".4.1\"}}, {{$key: fac}}]}}}}]}}, value!: {{$v: \".1\"}}}}}}\n");
        let a = Engine::load_files(
            Path::new("e"),
            [
                (Path::new("common/l.yaml"), lib),
                (Path::new("adt/t.yaml"), used.as_str()),
            ],
        )
        .unwrap();
        let b = Engine::load_files(
            Path::new("e"),
            [(Path::new("adt/t.yaml"), written.as_str())],
        )
        .unwrap();
        let plan = |e: &Engine| format!("{:?}", (&e.mappings[0].keys, &e.mappings[0].resources));
        assert_eq!(plan(&a), plan(&b));
        assert!(plan(&a).contains("Concat"));
        assert_eq!(
            a.mappings[0].piece_uses,
            [(0, "resources[0].body.identifier.$do".to_string())]
        );
    }

    #[test]
    fn semver_and_ids() {
        assert!(is_semver("1.2.3"));
        assert!(is_semver("1.2.3-rc.1"));
        assert!(!is_semver("1.2"));
        assert!(!valid_id("a b"));
        assert!(valid_id("st-mary"));
    }
}
