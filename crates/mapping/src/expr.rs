//! The template language: YAML compiled into a [`Node`] tree at load time.
//!
//! A YAML mapping (object) whose keys start with `$` is a function call; any
//! other mapping is a JSON object template; sequences are arrays; scalars are
//! literals. The function set is closed (see [`FUNCTIONS`]); an unknown
//! function, an unknown or missing argument key, an unknown concept map, key
//! or resource name is a load error naming the file and the YAML path.
//! Paths are parsed here, once, never per message.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use serde_yaml::Value as Y;

use crate::error::MappingError;
use crate::path::{parse_hl7, parse_json, SourcePath};
use crate::pieces::{PieceScope, MAX_USE_DEPTH, PIECES_DIR};

/// Every function the template language knows, for docs and error messages.
pub const FUNCTIONS: &[&str] = &[
    "$v",
    "$ctx",
    "$date",
    "$datetime",
    "$map",
    "$concat",
    "$join",
    "$uuid5",
    "$first",
    "$default",
    "$exists",
    "$upper",
    "$lower",
    "$uri_segment",
    "$urn_oid",
    "$if",
    "$eq",
    "$in",
    "$not",
    "$key",
    "$id",
    "$ref",
    "$refs",
    "$for_each",
    "$find",
];

/// Deepest template nesting accepted.
const MAX_DEPTH: usize = 48;

/// Kind of input a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// HL7 v2 ER7 messages.
    Hl7v2,
    /// JSON documents (county case events).
    Json,
}

impl SourceKind {
    /// The name used in mapping files.
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Hl7v2 => "hl7v2",
            SourceKind::Json => "json",
        }
    }
}

/// Run-time context values a template may read with `$ctx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtxField {
    CanonicalBase,
    SourceOrgId,
    SourceOrgName,
    ReceivedAt,
}

/// One field of an object template.
#[derive(Debug)]
pub(crate) struct ObjField {
    pub name: String,
    /// `,"name":` pre-rendered for the JSON writer (see [`ObjField::key`]).
    key: Vec<u8>,
    /// The same, zero-padded, when it has at most 32 bytes: written as one
    /// fixed-size copy ([`ObjField::write_key`]; an inline array: a padded
    /// `Vec` behind one more pointer cost ≈ 0.8 k per message more).
    padded: Option<[u8; PAD + 1]>,
    pub node: Node,
    /// Written `name!`: when empty, the enclosing object is dropped.
    pub required: bool,
}

impl ObjField {
    /// `"name":`, preceded by a comma when members were written before
    /// (one copy per member).
    #[inline]
    pub(crate) fn key(&self, after_others: bool) -> &[u8] {
        self.key
            .get(usize::from(!after_others)..)
            .unwrap_or_default()
    }

    /// Append [`ObjField::key`] to `out` (short keys, nearly all, as one
    /// fixed-size copy: [`write_padded`]).
    #[inline]
    pub(crate) fn write_key(&self, out: &mut Vec<u8>, after_others: bool) {
        let skip = usize::from(!after_others);
        match self
            .padded
            .as_ref()
            .and_then(|p| p.get(skip..skip + PAD))
            .and_then(|p| <&[u8; PAD]>::try_from(p).ok())
        {
            Some(block) => {
                let at = out.len();
                out.extend_from_slice(block);
                out.truncate(at + self.key.len() - skip);
            }
            None => out.extend_from_slice(self.key(after_others)),
        }
    }

    pub(crate) fn new(name: &str, node: Node, required: bool) -> ObjField {
        let mut key = Vec::with_capacity(name.len() + 4);
        key.push(b',');
        crate::eval::write_str(&mut key, name);
        key.push(b':');
        let padded = (key.len() <= PAD).then(|| {
            let mut p = [0u8; PAD + 1];
            for (d, s) in p.iter_mut().zip(&key) {
                *d = *s;
            }
            p
        });
        ObjField {
            name: name.to_string(),
            key,
            padded,
            node,
            required,
        }
    }
}

/// Object keys of at most this many bytes are written as one fixed-size
/// copy ([`ObjField::write_key`]).
const PAD: usize = 32;

/// Resource fields the engine fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StampField {
    ResourceType,
    Id,
    Meta,
}

/// What `$map` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Coding,
    Code,
    System,
    Display,
}

/// A compiled template node.
#[derive(Debug)]
pub(crate) enum Node {
    Lit(Value),
    Path(SourcePath),
    Ctx(CtxField),
    Date(Box<Node>),
    DateTime(Box<Node>),
    Map {
        table: usize,
        value: Box<Node>,
        part: Part,
    },
    Concat(Vec<Node>),
    Join {
        items: Vec<Node>,
        sep: String,
    },
    Uuid5(Box<Node>),
    First(Vec<Node>),
    Exists(Box<Node>),
    Upper(Box<Node>),
    Lower(Box<Node>),
    /// Text made safe for a URI: percent-encoded ([`crate::uri::encode_segment`]).
    UriSegment(Box<Node>),
    /// `urn:oid:{text}` when the text is an OID, else empty ([`crate::uri::urn_oid`]).
    UrnOid(Box<Node>),
    If {
        cond: Box<Node>,
        then: Box<Node>,
        otherwise: Option<Box<Node>>,
    },
    Eq(Box<Node>, Box<Node>),
    In(Box<Node>, Vec<String>),
    Not(Box<Node>),
    Key(usize),
    Id(usize),
    Ref(usize),
    Refs(Vec<usize>),
    ForEach {
        path: SourcePath,
        filter: Option<Box<Node>>,
        body: Box<Node>,
    },
    Find {
        path: SourcePath,
        filter: Option<Box<Node>>,
        body: Box<Node>,
    },
    /// Object fields, sorted by name (so the streamed JSON has the same key
    /// order as a `serde_json::Value`); `true` marks a required field (`name!`).
    Object(Vec<ObjField>),
    /// A string literal and its pre-rendered JSON.
    Str(String, Vec<u8>),
    /// A constant object or array (every member a literal), folded at load:
    /// its value and its pre-rendered compact JSON (never empty).
    Const(Value, Vec<u8>),
    /// Set by the engine on every resource body: `resourceType`, `id`, `meta`.
    Stamp(StampField),
    Array(Vec<Node>),
}

impl Node {
    /// Call `f` with every source path this template can read (for the
    /// field index: `source::FieldSet`). Exhaustive on purpose: a new node
    /// kind must say which paths it reads.
    pub(crate) fn for_each_path<'a>(&'a self, f: &mut impl FnMut(&'a SourcePath)) {
        match self {
            Node::Lit(_)
            | Node::Ctx(_)
            | Node::Key(_)
            | Node::Id(_)
            | Node::Ref(_)
            | Node::Refs(_)
            | Node::Str(..)
            | Node::Const(..)
            | Node::Stamp(_) => {}
            Node::Path(p) => f(p),
            Node::Date(x)
            | Node::DateTime(x)
            | Node::Uuid5(x)
            | Node::Exists(x)
            | Node::Upper(x)
            | Node::Lower(x)
            | Node::UriSegment(x)
            | Node::UrnOid(x)
            | Node::Not(x)
            | Node::In(x, _) => x.for_each_path(f),
            Node::Map { value, .. } => value.for_each_path(f),
            Node::Concat(items) | Node::First(items) | Node::Array(items) => {
                items.iter().for_each(|it| it.for_each_path(f))
            }
            Node::Join { items, .. } => items.iter().for_each(|it| it.for_each_path(f)),
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                cond.for_each_path(f);
                then.for_each_path(f);
                if let Some(o) = otherwise {
                    o.for_each_path(f);
                }
            }
            Node::Eq(a, b) => {
                a.for_each_path(f);
                b.for_each_path(f);
            }
            Node::ForEach { path, filter, body } | Node::Find { path, filter, body } => {
                f(path);
                if let Some(w) = filter {
                    w.for_each_path(f);
                }
                body.for_each_path(f);
            }
            Node::Object(fields) => fields.iter().for_each(|fl| fl.node.for_each_path(f)),
        }
    }
}

/// The constant value of a literal node (not an array: arrays nested in
/// arrays are spliced, which folding keeps out of the way).
fn const_item(n: &Node) -> Option<Value> {
    match n {
        Node::Str(s, _) => Some(Value::String(s.clone())),
        Node::Lit(v) if !v.is_array() && !v.is_object() => Some(v.clone()),
        Node::Const(v @ Value::Object(_), _) => Some(v.clone()),
        _ => None,
    }
}

fn konst(v: Value) -> Node {
    let json = serde_json::to_vec(&v).unwrap_or_default();
    Node::Const(v, json)
}

/// An object template whose members are all constant becomes one
/// pre-rendered [`Node::Const`] (not at depth 0: resource bodies stay
/// objects, the engine stamps them).
fn fold_object(fields: Vec<ObjField>, depth: usize) -> Node {
    if depth == 0 || fields.is_empty() {
        return Node::Object(fields);
    }
    let mut m = serde_json::Map::new();
    for f in &fields {
        let v = match &f.node {
            Node::Const(v, _) => v.clone(),
            n => match const_item(n) {
                Some(v) => v,
                None => return Node::Object(fields),
            },
        };
        m.insert(f.name.clone(), v);
    }
    konst(Value::Object(m))
}

/// A non-empty list of constant scalars/objects becomes a [`Node::Const`].
fn fold_array(items: Vec<Node>, depth: usize) -> Node {
    if depth == 0 || items.is_empty() {
        return Node::Array(items);
    }
    let mut out = Vec::with_capacity(items.len());
    for it in &items {
        match const_item(it) {
            Some(v) => out.push(v),
            None => return Node::Array(items),
        }
    }
    konst(Value::Array(out))
}

/// Object members that hold a URI in every FHIR type the mappings build
/// (`Coding.system`, `Identifier.system`, `MessageHeader.source.endpoint`,
/// `Extension.url`). `ContactPoint.system` is a code, but no template gives
/// it raw message text either.
const URI_FIELDS: &[&str] = &["system", "endpoint", "url"];

/// Whether a template can put message text (a path or a key) into its
/// result as it is, not through `$uri_segment` / `$urn_oid` (or a concept
/// map, a reference, a literal, the configuration).
fn raw_text(n: &Node) -> bool {
    match n {
        Node::Path(_) | Node::Key(_) => true,
        Node::Lower(x) | Node::Upper(x) => raw_text(x),
        Node::Concat(items) | Node::First(items) => items.iter().any(raw_text),
        Node::Join { items, .. } => items.iter().any(raw_text),
        Node::If {
            then, otherwise, ..
        } => raw_text(then) || otherwise.as_deref().is_some_and(raw_text),
        Node::Find { body, .. } => raw_text(body),
        _ => false,
    }
}

/// Names a template may refer to, collected before compiling.
pub(crate) struct Scope<'s> {
    pub file: &'s Path,
    pub kind: SourceKind,
    pub tables: &'s HashMap<String, usize>,
    /// Keys visible to this template (declared earlier).
    pub keys: &'s [String],
    /// Resource (name, type) in declaration order.
    pub resources: &'s [(String, String)],
    /// Shared pieces (`$use`), see [`crate::pieces`].
    pub pieces: &'s PieceScope<'s>,
}

impl Scope<'_> {
    fn err(&self, at: &str, reason: impl Into<String>) -> MappingError {
        MappingError::new(self.file, at, reason)
    }

    pub(crate) fn path(&self, at: &str, v: &Y) -> Result<SourcePath, MappingError> {
        if v.is_number() {
            return Err(self.err(
                at,
                "a relative path must be quoted (YAML reads .5 as a number): write \".5\"",
            ));
        }
        let s = v
            .as_str()
            .ok_or_else(|| self.err(at, "expected a path string"))?;
        match self.kind {
            SourceKind::Hl7v2 => parse_hl7(s).map(SourcePath::Hl7),
            SourceKind::Json => parse_json(s).map(SourcePath::Json),
        }
        .map_err(|e| self.err(at, e))
    }

    fn iter_path(&self, at: &str, v: &Y) -> Result<SourcePath, MappingError> {
        let p = self.path(at, v)?;
        if let SourcePath::Hl7(h) = &p {
            if h.segment.is_none() {
                return Err(self.err(at, "$for_each needs an absolute path (SEG or SEG-n)"));
            }
        }
        Ok(p)
    }

    /// Compile one template node.
    pub(crate) fn compile(&self, at: &str, v: &Y, depth: usize) -> Result<Node, MappingError> {
        if depth > MAX_DEPTH {
            return Err(self.err(at, "template nested too deeply"));
        }
        match v {
            Y::Null => Err(self.err(at, "null is not allowed (omit the key instead)")),
            Y::Bool(b) => Ok(Node::Lit(Value::Bool(*b))),
            Y::Number(n) => {
                let j = if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    n.as_f64()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| self.err(at, "number not representable"))?
                };
                Ok(Node::Lit(j))
            }
            Y::String(s) if s.is_empty() => Err(self.err(at, "empty string literal")),
            Y::String(s) => {
                let mut json = Vec::with_capacity(s.len() + 2);
                crate::eval::write_str(&mut json, s);
                Ok(Node::Str(s.clone(), json))
            }
            Y::Sequence(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| self.compile(&format!("{at}[{i}]"), it, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(fold_array(items, depth))
            }
            Y::Tagged(_) => Err(self.err(at, "YAML tags are not allowed")),
            Y::Mapping(m) => {
                let is_fn = m
                    .keys()
                    .next()
                    .and_then(Y::as_str)
                    .is_some_and(|k| k.starts_with('$'));
                if m.contains_key("$use") {
                    return self.use_piece(at, m, depth);
                }
                if m.contains_key("$param") {
                    return Err(self.err(
                        &format!("{at}.$param"),
                        format!("$param is only for the template of a piece ({PIECES_DIR}/*.yaml)"),
                    ));
                }
                if is_fn {
                    return self.function(at, m, depth);
                }
                let mut fields = Vec::with_capacity(m.len());
                for (k, val) in m {
                    let k = k
                        .as_str()
                        .ok_or_else(|| self.err(at, "object keys must be strings"))?;
                    if k.starts_with('$') {
                        return Err(self.err(
                            &format!("{at}.{k}"),
                            "cannot mix $functions with object fields",
                        ));
                    }
                    let (name, required) = match k.strip_suffix('!') {
                        Some(n) => (n, true),
                        None => (k, false),
                    };
                    if name.is_empty() || fields.iter().any(|f: &ObjField| f.name == name) {
                        return Err(self.err(&format!("{at}.{k}"), "empty or duplicate field name"));
                    }
                    let node = self.compile(&format!("{at}.{k}"), val, depth + 1)?;
                    if self.kind == SourceKind::Hl7v2
                        && URI_FIELDS.contains(&name)
                        && raw_text(&node)
                    {
                        return Err(self.err(
                            &format!("{at}.{k}"),
                            "message text in a URI must go through $uri_segment or $urn_oid \
                             (see mappings/README.md: URIs built from message text)",
                        ));
                    }
                    fields.push(ObjField::new(name, node, required));
                }
                fields.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(fold_object(fields, depth))
            }
        }
    }

    /// `{$use: NAME, $with: {PARAM: TEMPLATE, ..}}`: the piece's template
    /// with its parameters bound, compiled here as if written here (same
    /// depth, so the plan is that of the hand-written template). Errors
    /// inside it name this file, the path through `$use(NAME)`, and the piece.
    fn use_piece(
        &self,
        at: &str,
        m: &serde_yaml::Mapping,
        depth: usize,
    ) -> Result<Node, MappingError> {
        let at_use = format!("{at}.$use");
        let name = m
            .get("$use")
            .and_then(Y::as_str)
            .ok_or_else(|| self.err(&at_use, "expected a piece name"))?;
        let lib = self.pieces.lib;
        let (i, piece) = lib
            .find(name)
            .ok_or_else(|| self.err(&at_use, lib.unknown(name)))?;
        if piece.source.is_some_and(|s| s != self.kind) {
            return Err(self.err(
                &at_use,
                format!(
                    "piece `{name}` reads {} input; this mapping reads {}",
                    piece.source.map(|s| s.as_str()).unwrap_or_default(),
                    self.kind.as_str()
                ),
            ));
        }
        {
            let stack = self.pieces.stack.borrow();
            if stack.contains(&i) {
                return Err(self.err(&at_use, format!("piece `{name}` uses itself")));
            }
            if stack.len() >= MAX_USE_DEPTH {
                return Err(self.err(
                    &at_use,
                    format!("pieces nested more than {MAX_USE_DEPTH} deep"),
                ));
            }
        }
        let binds = crate::pieces::bindings(self.file, at, m, piece)?;
        let expanded = crate::pieces::substitute(&piece.template, &binds);
        self.pieces.used.borrow_mut().push((i, at.to_string()));
        self.pieces.stack.borrow_mut().push(i);
        let node = self.compile(&format!("{at}.$use({name})"), &expanded, depth);
        self.pieces.stack.borrow_mut().pop();
        node.map_err(|mut e| {
            if !e.reason.contains(" (in piece `") {
                e.reason = format!(
                    "{} (in piece `{name}` of {})",
                    e.reason,
                    piece.file.display()
                );
            }
            e
        })
    }

    fn function(
        &self,
        at: &str,
        m: &serde_yaml::Mapping,
        depth: usize,
    ) -> Result<Node, MappingError> {
        let mut args: Vec<(&str, &Y)> = Vec::with_capacity(m.len());
        for (k, v) in m {
            let k = k
                .as_str()
                .ok_or_else(|| self.err(at, "function keys must be strings"))?;
            args.push((k, v));
        }
        let Some(&(name, main)) = args.first() else {
            return Err(self.err(at, "empty function call"));
        };
        let at_fn = format!("{at}.{name}");
        let allowed: &[&str] = match name {
            "$map" => &["$map", "$value", "$part"],
            "$join" => &["$join", "$sep"],
            "$if" => &["$if", "$then", "$else"],
            "$in" => &["$in", "$values"],
            "$for_each" | "$find" => &[name, "$where", "$do"],
            n if FUNCTIONS.contains(&n) => &[name],
            n => {
                return Err(self.err(
                    &at_fn,
                    format!("unknown function `{n}` (known: {})", FUNCTIONS.join(", ")),
                ))
            }
        };
        for (k, _) in &args[1..] {
            if !allowed.contains(k) {
                return Err(self.err(
                    &format!("{at}.{k}"),
                    format!("unknown argument `{k}` for {name}"),
                ));
            }
        }
        let arg = |key: &str| args.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let need =
            |key: &str| arg(key).ok_or_else(|| self.err(&at_fn, format!("{name} needs {key}")));
        let sub = |key: &str, v: &Y| {
            self.compile(&format!("{at}.{key}"), v, depth + 1)
                .map(Box::new)
        };
        let list = |v: &Y| -> Result<Vec<Node>, MappingError> {
            let items = v
                .as_sequence()
                .ok_or_else(|| self.err(&at_fn, "expected a list"))?;
            items
                .iter()
                .enumerate()
                .map(|(i, it)| self.compile(&format!("{at_fn}[{i}]"), it, depth + 1))
                .collect()
        };
        let name_arg = |v: &Y| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(&at_fn, "expected a name"))
        };
        Ok(match name {
            "$v" => Node::Path(self.path(&at_fn, main)?),
            "$ctx" => {
                Node::Ctx(match main.as_str() {
                    Some("canonical_base") => CtxField::CanonicalBase,
                    Some("source_org_id") => CtxField::SourceOrgId,
                    Some("source_org_name") => CtxField::SourceOrgName,
                    Some("received_at") => CtxField::ReceivedAt,
                    _ => return Err(self.err(
                        &at_fn,
                        "expected canonical_base, source_org_id, source_org_name or received_at",
                    )),
                })
            }
            "$date" => Node::Date(sub(name, main)?),
            "$datetime" => Node::DateTime(sub(name, main)?),
            "$map" => {
                let table = name_arg(main)?;
                let table = *self
                    .tables
                    .get(&table)
                    .ok_or_else(|| self.err(&at_fn, format!("unknown concept map `{table}`")))?;
                let part = match arg("$part").map(|p| p.as_str()) {
                    None | Some(Some("coding")) => Part::Coding,
                    Some(Some("code")) => Part::Code,
                    Some(Some("system")) => Part::System,
                    Some(Some("display")) => Part::Display,
                    _ => {
                        return Err(self.err(
                            &format!("{at}.$part"),
                            "expected coding, code, system or display",
                        ))
                    }
                };
                Node::Map {
                    table,
                    value: sub("$value", need("$value")?)?,
                    part,
                }
            }
            "$concat" => Node::Concat(list(main)?),
            "$join" => Node::Join {
                items: list(main)?,
                sep: match arg("$sep") {
                    None => " ".to_string(),
                    Some(s) => s
                        .as_str()
                        .ok_or_else(|| self.err(&format!("{at}.$sep"), "expected a string"))?
                        .to_string(),
                },
            },
            "$uuid5" => Node::Uuid5(sub(name, main)?),
            "$first" => Node::First(list(main)?),
            "$default" => {
                let items = list(main)?;
                if items.len() != 2 {
                    return Err(self.err(&at_fn, "$default takes [value, fallback]"));
                }
                Node::First(items)
            }
            "$exists" => Node::Exists(sub(name, main)?),
            "$upper" => Node::Upper(sub(name, main)?),
            "$lower" => Node::Lower(sub(name, main)?),
            "$uri_segment" => Node::UriSegment(sub(name, main)?),
            "$urn_oid" => Node::UrnOid(sub(name, main)?),
            "$not" => Node::Not(sub(name, main)?),
            "$if" => Node::If {
                cond: sub(name, main)?,
                then: sub("$then", need("$then")?)?,
                otherwise: arg("$else").map(|e| sub("$else", e)).transpose()?,
            },
            "$eq" => {
                let mut items = list(main)?;
                if items.len() != 2 {
                    return Err(self.err(&at_fn, "$eq takes two values"));
                }
                let b = items.pop().map(Box::new);
                let a = items.pop().map(Box::new);
                match (a, b) {
                    (Some(a), Some(b)) => Node::Eq(a, b),
                    _ => return Err(self.err(&at_fn, "$eq takes two values")),
                }
            }
            "$in" => {
                let values = need("$values")?
                    .as_sequence()
                    .ok_or_else(|| {
                        self.err(&format!("{at}.$values"), "expected a list of strings")
                    })?
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        self.err(&format!("{at}.$values"), "expected a list of strings")
                    })?;
                Node::In(sub(name, main)?, values)
            }
            "$key" | "$id" => {
                let k = name_arg(main)?;
                let i = self.keys.iter().position(|x| *x == k).ok_or_else(|| {
                    self.err(
                        &at_fn,
                        format!("unknown key `{k}` (keys must be declared before use)"),
                    )
                })?;
                if name == "$key" {
                    Node::Key(i)
                } else {
                    Node::Id(i)
                }
            }
            "$ref" => {
                let r = name_arg(main)?;
                let i = self
                    .resources
                    .iter()
                    .position(|(n, _)| *n == r)
                    .ok_or_else(|| self.err(&at_fn, format!("unknown resource name `{r}`")))?;
                Node::Ref(i)
            }
            "$refs" => {
                let types = main
                    .as_sequence()
                    .ok_or_else(|| self.err(&at_fn, "expected a list of resource types"))?;
                let mut idx = Vec::new();
                for t in types {
                    let t = t
                        .as_str()
                        .ok_or_else(|| self.err(&at_fn, "expected resource type names"))?;
                    let before = idx.len();
                    idx.extend(
                        self.resources
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, ty))| ty == t)
                            .map(|(i, _)| i),
                    );
                    if idx.len() == before {
                        return Err(
                            self.err(&at_fn, format!("no resource of type `{t}` in this mapping"))
                        );
                    }
                }
                idx.sort_unstable();
                Node::Refs(idx)
            }
            "$for_each" | "$find" => {
                let path = self.iter_path(&at_fn, main)?;
                let filter = arg("$where").map(|w| sub("$where", w)).transpose()?;
                let body = sub("$do", need("$do")?)?;
                if name == "$for_each" {
                    Node::ForEach { path, filter, body }
                } else {
                    Node::Find { path, filter, body }
                }
            }
            _ => return Err(self.err(&at_fn, format!("unknown function `{name}`"))),
        })
    }
}
