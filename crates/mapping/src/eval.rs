//! Evaluation of compiled templates against a [`Source`].
//!
//! **Invariant:** evaluation never produces an empty string, array or object:
//! every constructor returns `None` instead, and `None` object members and
//! array items are dropped. Nothing here panics on input data; malformed
//! values (dates, codes) evaluate to `None`.

use std::borrow::Cow;
use std::cell::Cell;

use serde_json::{Map, Value};

use crate::expr::{CtxField, Node, Part, StampField};
use crate::source::Source;
use crate::terminology::ConceptMap;

/// Fixed namespace for every deterministic id (`uuid5(NAMESPACE, key)`).
pub const ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a8e_4b7d_5e90_a3c4_1d2e_8f70_9b15);

/// Deterministic resource id for a key string.
pub fn uuid5(key: &str) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v5(&ID_NAMESPACE, key.as_bytes())
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

/// Run-time values for `$ctx`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunCtx<'v> {
    pub canonical_base: &'v str,
    pub source_org_id: &'v str,
    pub source_org_name: &'v str,
    pub received_at: &'v str,
}

/// A value during evaluation.
#[derive(Debug)]
pub(crate) enum Val<'v> {
    Str(Cow<'v, str>),
    Bool(bool),
    Json(Value),
}

impl<'v> Val<'v> {
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Val::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            Val::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Val::Json(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Val::Json(Value::Number(n)) => Some(Cow::Owned(n.to_string())),
            Val::Json(_) => None,
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Json(Value::Bool(b)) => *b,
            _ => true,
        }
    }

    pub(crate) fn into_json(self) -> Value {
        match self {
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Bool(b) => Value::Bool(b),
            Val::Json(j) => j,
        }
    }
}

/// One resource to be emitted: which definition, where, with which id.
#[derive(Debug)]
pub(crate) struct Instance<C> {
    pub def: usize,
    pub cur: C,
    pub anchor: Option<usize>,
    pub rtype: String,
    pub id: String,
    /// Made once per visited segment/element (`for_each`): `$ref` then
    /// only pairs it with the cursor visiting that same segment.
    pub per_item: bool,
    /// Sensitivity labels of this resource.
    pub flags: Flags,
}

/// Sensitivity labels (v3-ActCode) a resource carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    pub eth: bool,
    pub psy: bool,
}

impl Flags {
    pub(crate) fn or(&mut self, o: Flags) {
        self.eth |= o.eth;
        self.psy |= o.psy;
    }

    /// `meta.security` as compact JSON (keys sorted), `None` when unlabelled.
    fn write_security(&self, out: &mut Vec<u8>) -> bool {
        const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        const CONF: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
        let mut codes: Vec<(&str, &str, &str)> = Vec::with_capacity(3);
        if self.eth {
            codes.push(("ETH", "substance abuse information sensitivity", ACT));
        }
        if self.psy {
            codes.push(("PSY", "psychiatry information sensitivity", ACT));
        }
        if codes.is_empty() {
            return false;
        }
        codes.push(("R", "restricted", CONF));
        out.push(b'[');
        for (i, (code, display, system)) in codes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"code\":");
            write_str(out, code);
            out.extend_from_slice(b",\"display\":");
            write_str(out, display);
            out.extend_from_slice(b",\"system\":");
            write_str(out, system);
            out.push(b'}');
        }
        out.push(b']');
        true
    }
}

/// Bytes that need escaping in a JSON string.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Write `s` as a JSON string, escaped exactly as `serde_json` does.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Evaluator state for one input document.
pub(crate) struct Eval<'v, S: Source<'v>> {
    pub src: &'v S,
    pub tables: &'v [ConceptMap],
    pub ctx: RunCtx<'v>,
    pub default_tz: Option<String>,
    pub keys: Vec<Option<String>>,
    pub instances: Vec<Instance<S::Cur>>,
    /// `meta.source` of every resource.
    pub meta_source: String,
    /// The instance whose body is being written (for [`Node::Stamp`]).
    pub current: Cell<usize>,
}

fn non_empty(s: String) -> Option<Val<'static>> {
    (!s.is_empty()).then_some(Val::Str(Cow::Owned(s)))
}

impl<'v, S: Source<'v>> Eval<'v, S> {
    /// A node as text (`None` when empty or structured).
    pub(crate) fn text(&self, n: &'v Node, cur: S::Cur) -> Option<String> {
        self.eval(n, cur)
            .and_then(|v| v.text().map(Cow::into_owned))
    }

    /// Evaluate a node at a cursor.
    pub(crate) fn eval(&self, n: &'v Node, cur: S::Cur) -> Option<Val<'v>> {
        match n {
            Node::Str(s, _) => Some(Val::Str(Cow::Borrowed(s.as_str()))),
            Node::Lit(Value::String(s)) => Some(Val::Str(Cow::Borrowed(s.as_str()))),
            Node::Lit(v) => Some(Val::Json(v.clone())),
            Node::Path(p) => self.src.get(cur, p).map(Val::Str),
            Node::Ctx(f) => {
                let s = match f {
                    CtxField::CanonicalBase => self.ctx.canonical_base,
                    CtxField::SourceOrgId => self.ctx.source_org_id,
                    CtxField::SourceOrgName => self.ctx.source_org_name,
                    CtxField::ReceivedAt => self.ctx.received_at,
                };
                (!s.is_empty()).then_some(Val::Str(Cow::Borrowed(s)))
            }
            Node::Date(x) => {
                let v = self.eval(x, cur)?;
                crate::datetime::to_date(&v.text()?).map(|s| Val::Str(Cow::Owned(s)))
            }
            Node::DateTime(x) => {
                let v = self.eval(x, cur)?;
                crate::datetime::to_datetime(&v.text()?, self.default_tz.as_deref())
                    .map(|s| Val::Str(Cow::Owned(s)))
            }
            Node::Map { table, value, part } => {
                let v = self.eval(value, cur)?;
                let t = self.tables.get(*table)?.get(&v.text()?)?;
                let s = |x: &'v str| (!x.is_empty()).then_some(Val::Str(Cow::Borrowed(x)));
                match part {
                    Part::Code => s(&t.code),
                    Part::System => s(&t.system),
                    Part::Display => s(&t.display),
                    Part::Coding => {
                        let mut m = Map::new();
                        for (k, x) in [
                            ("system", &t.system),
                            ("code", &t.code),
                            ("display", &t.display),
                        ] {
                            if !x.is_empty() {
                                m.insert(k.to_string(), Value::String(x.clone()));
                            }
                        }
                        Some(Val::Json(Value::Object(m)))
                    }
                }
            }
            Node::Concat(items) => {
                let mut out = String::new();
                for it in items {
                    out.push_str(&self.eval(it, cur)?.text()?);
                }
                non_empty(out)
            }
            Node::Join { items, sep } => {
                let mut out = String::new();
                for it in items {
                    if let Some(t) = self.eval(it, cur).as_ref().and_then(Val::text) {
                        if !out.is_empty() {
                            out.push_str(sep);
                        }
                        out.push_str(&t);
                    }
                }
                non_empty(out)
            }
            Node::Uuid5(x) => {
                let v = self.eval(x, cur)?;
                Some(Val::Str(Cow::Owned(uuid5(&v.text()?))))
            }
            Node::First(items) => items.iter().find_map(|it| self.eval(it, cur)),
            Node::Exists(x) => Some(Val::Bool(self.eval(x, cur).is_some())),
            Node::Upper(x) => non_empty(self.eval(x, cur)?.text()?.to_uppercase()),
            Node::Lower(x) => non_empty(self.eval(x, cur)?.text()?.to_lowercase()),
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if self.eval(cond, cur).is_some_and(|c| c.truthy()) {
                    self.eval(then, cur)
                } else {
                    otherwise.as_ref().and_then(|o| self.eval(o, cur))
                }
            }
            Node::Eq(a, b) => {
                let (a, b) = (self.eval(a, cur), self.eval(b, cur));
                let eq = match (
                    a.as_ref().and_then(Val::text),
                    b.as_ref().and_then(Val::text),
                ) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                Some(Val::Bool(eq))
            }
            Node::In(x, values) => {
                let v = self.eval(x, cur);
                let t = v.as_ref().and_then(Val::text);
                Some(Val::Bool(t.is_some_and(|t| values.iter().any(|x| *x == t))))
            }
            Node::Not(x) => Some(Val::Bool(!self.eval(x, cur).is_some_and(|c| c.truthy()))),
            Node::Key(i) => self.keys.get(*i)?.clone().map(|k| Val::Str(Cow::Owned(k))),
            Node::Id(i) => self
                .keys
                .get(*i)?
                .as_deref()
                .map(|k| Val::Str(Cow::Owned(uuid5(k)))),
            Node::Ref(def) => {
                let here = self.src.anchor(cur);
                let inst = self
                    .instances
                    .iter()
                    .find(|i| i.def == *def && (!i.per_item || i.anchor == here))?;
                Some(Val::Str(Cow::Owned(format!("{}/{}", inst.rtype, inst.id))))
            }
            Node::Refs(defs) => {
                let refs: Vec<Value> = self
                    .instances
                    .iter()
                    .filter(|i| defs.contains(&i.def))
                    .map(|i| {
                        let mut m = Map::new();
                        m.insert(
                            "reference".into(),
                            Value::String(format!("{}/{}", i.rtype, i.id)),
                        );
                        Value::Object(m)
                    })
                    .collect();
                (!refs.is_empty()).then_some(Val::Json(Value::Array(refs)))
            }
            Node::ForEach { path, filter, body } => {
                let mut curs = Vec::new();
                self.src.each(cur, path, &mut curs);
                let mut out = Vec::with_capacity(curs.len());
                for c in curs {
                    if filter
                        .as_ref()
                        .is_some_and(|f| !self.eval(f, c).is_some_and(|v| v.truthy()))
                    {
                        continue;
                    }
                    if let Some(v) = self.eval(body, c) {
                        out.push(v.into_json());
                    }
                }
                (!out.is_empty()).then_some(Val::Json(Value::Array(out)))
            }
            Node::Find { path, filter, body } => {
                let mut curs = Vec::new();
                self.src.each(cur, path, &mut curs);
                curs.into_iter()
                    .filter(|c| {
                        filter
                            .as_ref()
                            .is_none_or(|f| self.eval(f, *c).is_some_and(|v| v.truthy()))
                    })
                    .find_map(|c| self.eval(body, c))
            }
            Node::Stamp(_) => None,
            Node::Object(fields) => {
                let mut m = Map::new();
                for f in fields {
                    match self.eval(&f.node, cur) {
                        Some(v) => {
                            m.insert(f.name.clone(), v.into_json());
                        }
                        None if f.required => return None,
                        None => {}
                    }
                }
                (!m.is_empty()).then_some(Val::Json(Value::Object(m)))
            }
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    match self.eval(it, cur).map(Val::into_json) {
                        Some(Value::Array(inner)) => out.extend(inner),
                        Some(v) => out.push(v),
                        None => {}
                    }
                }
                (!out.is_empty()).then_some(Val::Json(Value::Array(out)))
            }
        }
    }

    /// Write the JSON of `n` at `cur` to `out`; `false` (and nothing
    /// written) when it is empty. Structured nodes are streamed; scalars go
    /// through [`Eval::eval`]. Key order equals `serde_json::Value`'s.
    pub(crate) fn emit(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>) -> bool {
        match n {
            Node::Object(fields) => {
                let start = out.len();
                out.push(b'{');
                let mut any = false;
                for f in fields {
                    let mark = out.len();
                    if any {
                        out.push(b',');
                    }
                    out.extend_from_slice(&f.key);
                    if self.emit(&f.node, cur, out) {
                        any = true;
                    } else {
                        out.truncate(mark);
                        if f.required {
                            out.truncate(start);
                            return false;
                        }
                    }
                }
                if !any {
                    out.truncate(start);
                    return false;
                }
                out.push(b'}');
                true
            }
            Node::Array(_) | Node::ForEach { .. } | Node::Refs(_) => {
                let start = out.len();
                out.push(b'[');
                let mut any = false;
                self.emit_items(n, cur, out, &mut any);
                if !any {
                    out.truncate(start);
                    return false;
                }
                out.push(b']');
                true
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if self.eval(cond, cur).is_some_and(|c| c.truthy()) {
                    self.emit(then, cur, out)
                } else {
                    otherwise.as_ref().is_some_and(|o| self.emit(o, cur, out))
                }
            }
            Node::First(items) => items.iter().any(|it| self.emit(it, cur, out)),
            Node::Find { path, filter, body } => {
                let mut curs = Vec::new();
                self.src.each(cur, path, &mut curs);
                curs.into_iter().any(|c| {
                    filter
                        .as_ref()
                        .is_none_or(|f| self.eval(f, c).is_some_and(|v| v.truthy()))
                        && self.emit(body, c, out)
                })
            }
            Node::Map {
                table,
                value,
                part: Part::Coding,
            } => {
                let Some(v) = self.eval(value, cur) else {
                    return false;
                };
                let Some(t) = v
                    .text()
                    .and_then(|code| self.tables.get(*table)?.get(&code))
                else {
                    return false;
                };
                out.push(b'{');
                let mut first = true;
                for (k, x) in [
                    ("code", &t.code),
                    ("display", &t.display),
                    ("system", &t.system),
                ] {
                    if !x.is_empty() {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        write_str(out, k);
                        out.push(b':');
                        write_str(out, x);
                    }
                }
                out.push(b'}');
                true
            }
            Node::Stamp(f) => {
                let Some(inst) = self.instances.get(self.current.get()) else {
                    return false;
                };
                match f {
                    StampField::ResourceType => write_str(out, &inst.rtype),
                    StampField::Id => write_str(out, &inst.id),
                    StampField::Meta => {
                        out.push(b'{');
                        let mark = out.len();
                        out.extend_from_slice(b"\"security\":");
                        if inst.flags.write_security(out) {
                            out.push(b',');
                        } else {
                            out.truncate(mark);
                        }
                        out.extend_from_slice(b"\"source\":");
                        write_str(out, &self.meta_source);
                        out.push(b'}');
                    }
                }
                true
            }
            Node::Str(_, json) => {
                out.extend_from_slice(json);
                true
            }
            _ => match self.eval(n, cur) {
                None => false,
                Some(Val::Str(s)) => {
                    write_str(out, &s);
                    true
                }
                Some(Val::Bool(b)) => {
                    out.extend_from_slice(if b { b"true" } else { b"false" });
                    true
                }
                Some(Val::Json(j)) => serde_json::to_writer(&mut *out, &j).is_ok(),
            },
        }
    }

    /// Write the elements `n` contributes to an enclosing array: the items of
    /// a `$for_each`, `$refs` or nested list are spliced in.
    fn emit_items(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>, any: &mut bool) {
        match n {
            Node::Array(items) => items
                .iter()
                .for_each(|it| self.emit_items(it, cur, out, any)),
            Node::ForEach { path, filter, body } => {
                let mut curs = Vec::new();
                self.src.each(cur, path, &mut curs);
                for c in curs {
                    if filter
                        .as_ref()
                        .is_some_and(|f| !self.eval(f, c).is_some_and(|v| v.truthy()))
                    {
                        continue;
                    }
                    self.emit_items(body, c, out, any);
                }
            }
            Node::Refs(defs) => {
                for i in self.instances.iter().filter(|i| defs.contains(&i.def)) {
                    if *any {
                        out.push(b',');
                    }
                    *any = true;
                    out.extend_from_slice(b"{\"reference\":\"");
                    let mark = out.len();
                    out.extend_from_slice(i.rtype.as_bytes());
                    out.push(b'/');
                    out.extend_from_slice(i.id.as_bytes());
                    // Types and ids are validated ([A-Za-z0-9.-]); nothing to escape.
                    debug_assert!(out[mark..].iter().all(|b| *b != b'"' && *b != b'\\'));
                    out.extend_from_slice(b"\"}");
                }
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if self.eval(cond, cur).is_some_and(|c| c.truthy()) {
                    self.emit_items(then, cur, out, any);
                } else if let Some(o) = otherwise {
                    self.emit_items(o, cur, out, any);
                }
            }
            _ => {
                let mark = out.len();
                if *any {
                    out.push(b',');
                }
                if self.emit(n, cur, out) {
                    *any = true;
                } else {
                    out.truncate(mark);
                }
            }
        }
    }
}
