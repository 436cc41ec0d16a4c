//! Shared pieces: named, parameterised templates that mappings reuse.
//!
//! A piece library is a YAML file under `common/` of the mappings tree
//! (`common/datatypes.yaml`):
//!
//! ```yaml
//! pieces:
//!   xtn_telecom:
//!     description: One HL7 XTN repetition as a FHIR ContactPoint.
//!     source: hl7v2            # optional: only mappings of this source may use it
//!     params:                  # optional: name -> what the caller binds
//!       use: ContactPoint.use
//!     template:                # any template; `{$param: use}` is the bound value
//!       system: ...
//!       use: {$param: use}
//! ```
//!
//! A mapping uses one with `{$use: xtn_telecom, $with: {use: home}}`
//! wherever a template may stand. Pieces are resolved when the mapping is
//! compiled: the piece's template, with every `{$param: NAME}` replaced by
//! the YAML bound to NAME, is compiled in place of the `$use`, so the
//! compiled plan is exactly that of the same template written out by hand.
//!
//! The mechanism is closed like the rest of the language: unknown keys,
//! pieces and parameters, a parameter left unbound or never used, a piece
//! naming a mapping's keys or resources (`$key`, `$id`, `$ref`, `$refs`:
//! pass them as parameters), a `$param` outside a piece, a piece of another
//! source kind and a cycle of pieces are load errors naming the file and
//! the YAML path.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Y;

use crate::error::MappingError;
use crate::expr::SourceKind;

/// The folder of the mappings tree that holds piece libraries (`*.yaml`
/// directly in it; never mappings).
pub(crate) const PIECES_DIR: &str = "common";
/// Most pieces over all libraries.
const MAX_PIECES: usize = 256;
/// Deepest chain of pieces using pieces (bounds the work of expanding).
pub(crate) const MAX_USE_DEPTH: usize = 8;
const FILE_KEYS: &[&str] = &["pieces"];
const PIECE_KEYS: &[&str] = &["description", "source", "params", "template"];
const USE_KEYS: &[&str] = &["$use", "$with"];
/// Functions that name what one mapping declares: not in a piece.
const MAPPING_NAMES: &[&str] = &["$key", "$id", "$ref", "$refs"];

/// What [`crate::Engine::pieces`] reports about one shared piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceInfo {
    /// The name mappings use it by (`$use: NAME`).
    pub name: String,
    /// The library file that defines it.
    pub file: PathBuf,
    /// Analyst-facing description.
    pub description: String,
    /// Its parameters, in declaration order.
    pub params: Vec<String>,
    /// Every place a loaded mapping uses it (directly or through another
    /// piece), in file order.
    pub used_by: Vec<PieceUse>,
}

/// One use of a piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceUse {
    /// The id of the mapping that uses it.
    pub mapping: String,
    /// That mapping's file.
    pub file: PathBuf,
    /// Where in it (YAML path of the `$use`; a use inside another piece
    /// is under that piece's `$use(NAME)` segment).
    pub path: String,
}

#[derive(Debug)]
pub(crate) struct Piece {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub source: Option<SourceKind>,
    pub params: Vec<String>,
    pub template: Y,
    /// Pieces its template uses: (name, YAML path in `file`).
    uses: Vec<(String, String)>,
}

/// Every piece of every library, checked as a whole ([`Pieces::check`]).
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    pub list: Vec<Piece>,
}

fn valid_name(n: &str) -> bool {
    n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn key_str<'y>(file: &Path, at: &str, k: &'y Y) -> Result<&'y str, MappingError> {
    k.as_str()
        .ok_or_else(|| MappingError::new(file, at, "keys must be strings"))
}

fn join(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

impl Pieces {
    /// Add the pieces of one library file.
    pub fn add_file(&mut self, file: &Path, text: &str) -> Result<(), MappingError> {
        let doc: Y = serde_yaml::from_str(text)
            .map_err(|e| MappingError::new(file, "", format!("invalid YAML: {e}")))?;
        let top = doc
            .as_mapping()
            .ok_or_else(|| MappingError::new(file, "", "top level must be a mapping"))?;
        for k in top.keys() {
            let k = key_str(file, "", k)?;
            if !FILE_KEYS.contains(&k) {
                return Err(MappingError::new(
                    file,
                    k,
                    format!("unknown key `{k}` (allowed: {})", FILE_KEYS.join(", ")),
                ));
            }
        }
        let pieces = top
            .get("pieces")
            .and_then(Y::as_mapping)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| MappingError::new(file, "pieces", "expected a non-empty mapping"))?;
        for (name, def) in pieces {
            let name = key_str(file, "pieces", name)?;
            let at = format!("pieces.{name}");
            if !valid_name(name) {
                return Err(MappingError::new(
                    file,
                    &at,
                    "a piece name is lower-case letters, digits and '_', starting with a letter",
                ));
            }
            if let Some(prev) = self.list.iter().find(|p| p.name == name) {
                return Err(MappingError::new(
                    file,
                    &at,
                    format!("duplicate piece `{name}` (also in {})", prev.file.display()),
                ));
            }
            if self.list.len() >= MAX_PIECES {
                return Err(MappingError::new(file, &at, "too many pieces"));
            }
            self.list.push(piece(file, &at, name, def)?);
        }
        Ok(())
    }

    pub fn find(&self, name: &str) -> Option<(usize, &Piece)> {
        self.list.iter().enumerate().find(|(_, p)| p.name == name)
    }

    fn names(&self) -> String {
        let mut n: Vec<&str> = self.list.iter().map(|p| p.name.as_str()).collect();
        n.sort_unstable();
        if n.is_empty() {
            "none is loaded".to_string()
        } else {
            n.join(", ")
        }
    }

    pub fn unknown(&self, name: &str) -> String {
        format!(
            "unknown piece `{name}` (pieces are defined in {PIECES_DIR}/*.yaml; known: {})",
            self.names()
        )
    }

    /// Every piece a template uses exists, and no piece uses itself,
    /// directly or through others.
    pub fn check(&self) -> Result<(), MappingError> {
        for p in &self.list {
            for (name, at) in &p.uses {
                if self.find(name).is_none() {
                    return Err(MappingError::new(&p.file, at, self.unknown(name)));
                }
            }
        }
        // Depth-first search; `state`: 0 new, 1 on the path, 2 done.
        let mut state = vec![0u8; self.list.len()];
        let mut path: Vec<usize> = Vec::new();
        for i in 0..self.list.len() {
            self.visit(i, &mut state, &mut path)?;
        }
        Ok(())
    }

    fn visit(&self, i: usize, state: &mut [u8], path: &mut Vec<usize>) -> Result<(), MappingError> {
        match state.get(i) {
            Some(0) => {}
            _ => return Ok(()),
        }
        let Some(p) = self.list.get(i) else {
            return Ok(());
        };
        if let Some(s) = state.get_mut(i) {
            *s = 1;
        }
        path.push(i);
        for (name, at) in &p.uses {
            let Some((j, _)) = self.find(name) else {
                continue;
            };
            if state.get(j) == Some(&1) {
                let from = path.iter().position(|&x| x == j).unwrap_or(0);
                let mut chain: Vec<&str> = path
                    .get(from..)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|&x| self.list.get(x).map(|q| q.name.as_str()))
                    .collect();
                chain.push(name);
                return Err(MappingError::new(
                    &p.file,
                    at,
                    format!("cycle of pieces: {}", chain.join(" -> ")),
                ));
            }
            self.visit(j, state, path)?;
        }
        path.pop();
        if let Some(s) = state.get_mut(i) {
            *s = 2;
        }
        Ok(())
    }
}

fn piece(file: &Path, at: &str, name: &str, def: &Y) -> Result<Piece, MappingError> {
    let m = def
        .as_mapping()
        .ok_or_else(|| MappingError::new(file, at, "expected a mapping"))?;
    for k in m.keys() {
        let k = key_str(file, at, k)?;
        if !PIECE_KEYS.contains(&k) {
            return Err(MappingError::new(
                file,
                join(at, k),
                format!("unknown key `{k}` (allowed: {})", PIECE_KEYS.join(", ")),
            ));
        }
    }
    let description = m
        .get("description")
        .and_then(Y::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            MappingError::new(
                file,
                join(at, "description"),
                "required: a non-empty string",
            )
        })?
        .to_string();
    let source = match m.get("source") {
        None => None,
        Some(v) => Some(match v.as_str() {
            Some("hl7v2") => SourceKind::Hl7v2,
            Some("json") => SourceKind::Json,
            _ => {
                return Err(MappingError::new(
                    file,
                    join(at, "source"),
                    "expected hl7v2 or json",
                ))
            }
        }),
    };
    let mut params = Vec::new();
    if let Some(v) = m.get("params") {
        let at_p = join(at, "params");
        let pm = v.as_mapping().ok_or_else(|| {
            MappingError::new(file, &at_p, "expected a mapping: name -> what it is")
        })?;
        for (k, doc) in pm {
            let k = key_str(file, &at_p, k)?;
            if !valid_name(k) {
                return Err(MappingError::new(
                    file,
                    join(&at_p, k),
                    "a parameter name is lower-case letters, digits and '_', starting with a letter",
                ));
            }
            if doc.as_str().is_none_or(|s| s.trim().is_empty()) {
                return Err(MappingError::new(
                    file,
                    join(&at_p, k),
                    "say what the parameter is (a non-empty string)",
                ));
            }
            params.push(k.to_string());
        }
    }
    let template = m
        .get("template")
        .ok_or_else(|| MappingError::new(file, join(at, "template"), "required"))?
        .clone();
    let mut walk = Walk {
        file,
        params: &params,
        used: vec![false; params.len()],
        uses: Vec::new(),
    };
    walk.node(&join(at, "template"), &template)?;
    let (used, uses) = (walk.used, walk.uses);
    if let Some(unused) = params
        .iter()
        .zip(&used)
        .find_map(|(p, used)| (!used).then_some(p))
    {
        return Err(MappingError::new(
            file,
            format!("{at}.params.{unused}"),
            "declared but never used in the template",
        ));
    }
    Ok(Piece {
        name: name.to_string(),
        file: file.to_path_buf(),
        description,
        source,
        params,
        uses,
        template,
    })
}

/// The checks of a piece's template that need no mapping: its `$param`s
/// are declared, its `$use`s are well formed, it names nothing of a mapping.
struct Walk<'a> {
    file: &'a Path,
    params: &'a [String],
    used: Vec<bool>,
    uses: Vec<(String, String)>,
}

impl Walk<'_> {
    fn node(&mut self, at: &str, v: &Y) -> Result<(), MappingError> {
        match v {
            Y::Sequence(items) => {
                for (i, it) in items.iter().enumerate() {
                    self.node(&format!("{at}[{i}]"), it)?;
                }
                Ok(())
            }
            Y::Tagged(_) => Err(MappingError::new(
                self.file,
                at,
                "YAML tags are not allowed",
            )),
            Y::Mapping(m) => {
                if let Some(p) = m.get("$param") {
                    let at_p = join(at, "$param");
                    if m.len() != 1 {
                        return Err(MappingError::new(
                            self.file,
                            at_p,
                            "`$param` stands alone: {$param: NAME}",
                        ));
                    }
                    let i = p
                        .as_str()
                        .and_then(|n| self.params.iter().position(|x| x == n))
                        .ok_or_else(|| {
                            MappingError::new(
                                self.file,
                                &at_p,
                                format!(
                                    "not a parameter of this piece (declared: {})",
                                    if self.params.is_empty() {
                                        "none".to_string()
                                    } else {
                                        self.params.join(", ")
                                    }
                                ),
                            )
                        })?;
                    if let Some(u) = self.used.get_mut(i) {
                        *u = true;
                    }
                    return Ok(());
                }
                if let Some(u) = m.get("$use") {
                    let name = u.as_str().ok_or_else(|| {
                        MappingError::new(self.file, join(at, "$use"), "expected a piece name")
                    })?;
                    self.uses.push((name.to_string(), join(at, "$use")));
                }
                for (k, val) in m {
                    let k = key_str(self.file, at, k)?;
                    if MAPPING_NAMES.contains(&k) {
                        return Err(MappingError::new(
                            self.file,
                            join(at, k),
                            format!(
                                "a piece cannot use {k}: keys and resources belong to one \
                                 mapping; pass the value as a parameter"
                            ),
                        ));
                    }
                    self.node(&join(at, k), val)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `template` with every `{$param: NAME}` replaced by the YAML bound to
/// NAME (bound values are inserted as they are, not searched again).
pub(crate) fn substitute(template: &Y, binds: &[(&str, &Y)]) -> Y {
    match template {
        Y::Sequence(items) => Y::Sequence(items.iter().map(|it| substitute(it, binds)).collect()),
        Y::Mapping(m) => {
            if let Some(name) = m.get("$param").and_then(Y::as_str) {
                if m.len() == 1 {
                    if let Some((_, v)) = binds.iter().find(|(n, _)| *n == name) {
                        return (*v).clone();
                    }
                }
            }
            Y::Mapping(
                m.iter()
                    .map(|(k, v)| (k.clone(), substitute(v, binds)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// The pieces a mapping compiles against, and what it used of them.
pub(crate) struct PieceScope<'p> {
    pub lib: &'p Pieces,
    /// The pieces being expanded (innermost last): cycles and depth.
    pub stack: RefCell<Vec<usize>>,
    /// (piece, YAML path of the `$use`) for every use.
    pub used: RefCell<Vec<(usize, String)>>,
}

impl<'p> PieceScope<'p> {
    pub fn new(lib: &'p Pieces) -> Self {
        PieceScope {
            lib,
            stack: RefCell::new(Vec::new()),
            used: RefCell::new(Vec::new()),
        }
    }
}

/// The bindings of a `$use` call, checked against the piece: every key of
/// the call is `$use` or `$with`, every parameter bound, nothing else.
pub(crate) fn bindings<'y>(
    file: &Path,
    at: &str,
    call: &'y serde_yaml::Mapping,
    piece: &Piece,
) -> Result<Vec<(&'y str, &'y Y)>, MappingError> {
    for k in call.keys() {
        let k = key_str(file, at, k)?;
        if !USE_KEYS.contains(&k) {
            return Err(MappingError::new(
                file,
                join(at, k),
                format!("unknown argument `{k}` for $use (allowed: $use, $with)"),
            ));
        }
    }
    let at_with = join(at, "$with");
    let mut binds: Vec<(&str, &Y)> = Vec::new();
    if let Some(w) = call.get("$with") {
        let wm = w.as_mapping().ok_or_else(|| {
            MappingError::new(file, &at_with, "expected a mapping: parameter -> value")
        })?;
        for (k, v) in wm {
            let k = key_str(file, &at_with, k)?;
            if !piece.params.iter().any(|p| p == k) {
                return Err(MappingError::new(
                    file,
                    join(&at_with, k),
                    format!(
                        "piece `{}` has no parameter `{k}` (parameters: {})",
                        piece.name,
                        if piece.params.is_empty() {
                            "none".to_string()
                        } else {
                            piece.params.join(", ")
                        }
                    ),
                ));
            }
            binds.push((k, v));
        }
    }
    if let Some(missing) = piece
        .params
        .iter()
        .find(|p| !binds.iter().any(|(n, _)| n == p))
    {
        return Err(MappingError::new(
            file,
            if call.contains_key("$with") {
                at_with
            } else {
                join(at, "$use")
            },
            format!(
                "piece `{}` needs parameter `{missing}` (bind it in $with)",
                piece.name
            ),
        ));
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(text: &str) -> Result<Pieces, MappingError> {
        let mut p = Pieces::default();
        p.add_file(Path::new("common/t.yaml"), text)?;
        p.check()?;
        Ok(p)
    }

    #[test]
    fn a_library_declares_described_pieces() {
        let p = lib("pieces:\n  a:\n    description: x\n    params: {v: the value}\n    template: {value: {$param: v}}\n").unwrap();
        let (i, a) = p.find("a").unwrap();
        assert_eq!(i, 0);
        assert_eq!(a.params, ["v"]);
        for (text, path) in [
            ("colour: red\npieces: {}\n", "colour"),
            ("pieces: {}\n", "pieces"),
            (
                "pieces:\n  a: {description: x, template: y, owner: z}\n",
                "pieces.a.owner",
            ),
            ("pieces:\n  a: {template: y}\n", "pieces.a.description"),
            ("pieces:\n  a: {description: x}\n", "pieces.a.template"),
            (
                "pieces:\n  A-b: {description: x, template: y}\n",
                "pieces.A-b",
            ),
            (
                "pieces:\n  a: {description: x, source: csv, template: y}\n",
                "pieces.a.source",
            ),
            (
                "pieces:\n  a: {description: x, params: {v: ''}, template: {$param: v}}\n",
                "pieces.a.params.v",
            ),
        ] {
            let e = lib(text).unwrap_err();
            assert_eq!(e.path, path, "{text}: {e}");
            assert_eq!(e.file, Path::new("common/t.yaml"));
        }
    }

    #[test]
    fn parameters_are_declared_and_used() {
        let e = lib("pieces:\n  a:\n    description: x\n    template: {value: {$param: v}}\n")
            .unwrap_err();
        assert_eq!(e.path, "pieces.a.template.value.$param");
        assert!(e.reason.contains("not a parameter"), "{e}");
        let e = lib("pieces:\n  a:\n    description: x\n    params: {v: a value, w: another}\n    template: {value: {$param: v}}\n").unwrap_err();
        assert_eq!(e.path, "pieces.a.params.w");
        assert!(e.reason.contains("never used"), "{e}");
        let e = lib("pieces:\n  a:\n    description: x\n    params: {v: a value}\n    template: {value: {$param: v, $else: 1}}\n").unwrap_err();
        assert_eq!(e.path, "pieces.a.template.value.$param");
    }

    #[test]
    fn a_piece_names_nothing_of_a_mapping() {
        for f in MAPPING_NAMES {
            let e = lib(&format!(
                "pieces:\n  a:\n    description: x\n    template: {{value: {{{f}: patient}}}}\n"
            ))
            .unwrap_err();
            assert_eq!(e.path, format!("pieces.a.template.value.{f}"));
            assert!(e.reason.contains("parameter"), "{e}");
        }
    }

    #[test]
    fn unknown_pieces_and_cycles_are_load_errors() {
        let e = lib("pieces:\n  a:\n    description: x\n    template: {telecom: {$use: nope}}\n")
            .unwrap_err();
        assert_eq!(e.path, "pieces.a.template.telecom.$use");
        assert!(e.reason.contains("unknown piece `nope`"), "{e}");
        let e = lib("pieces:\n  a:\n    description: x\n    template: {x: {$use: b}}\n  b:\n    description: y\n    template: [{$use: c}]\n  c:\n    description: z\n    template: {$use: a}\n").unwrap_err();
        assert_eq!(e.file, Path::new("common/t.yaml"));
        assert_eq!(e.path, "pieces.c.template.$use");
        assert_eq!(e.reason, "cycle of pieces: a -> b -> c -> a");
        let e =
            lib("pieces:\n  a:\n    description: x\n    template: {x: {$use: a}}\n").unwrap_err();
        assert_eq!(e.reason, "cycle of pieces: a -> a");
        // A diamond is no cycle.
        lib("pieces:\n  a: {description: x, template: [{$use: b}, {$use: c}]}\n  b: {description: x, template: [{$use: c}]}\n  c: {description: x, template: z}\n").unwrap();
    }

    #[test]
    fn duplicate_pieces_across_files_are_rejected() {
        let mut p = Pieces::default();
        p.add_file(
            Path::new("common/a.yaml"),
            "pieces:\n  x: {description: d, template: t}\n",
        )
        .unwrap();
        let e = p
            .add_file(
                Path::new("common/b.yaml"),
                "pieces:\n  x: {description: d, template: t}\n",
            )
            .unwrap_err();
        assert_eq!(e.file, Path::new("common/b.yaml"));
        assert!(e.reason.contains("common/a.yaml"), "{e}");
    }

    #[test]
    fn substitution_replaces_params_only() {
        let t: Y =
            serde_yaml::from_str("{a: {$param: v}, b: [{$param: v}, {$param: w}], c: {$v: .1}}")
                .unwrap();
        let v: Y = serde_yaml::from_str("{$v: PID-3}").unwrap();
        // A bound value is not searched again: a `$param` in it stays.
        let w: Y = serde_yaml::from_str("{$param: v}").unwrap();
        let out = substitute(&t, &[("v", &v), ("w", &w)]);
        let want: Y =
            serde_yaml::from_str("{a: {$v: PID-3}, b: [{$v: PID-3}, {$param: v}], c: {$v: .1}}")
                .unwrap();
        assert_eq!(out, want);
    }
}
