//! Evaluation of compiled templates against a [`Source`].
//!
//! **Invariant:** evaluation never produces an empty string, array or object:
//! every constructor returns `None` instead, and `None` object members and
//! array items are dropped. Nothing here panics on input data; malformed
//! values (dates, codes) evaluate to `None`.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use serde_json::{Map, Value};

use crate::datetime::{DtText, Sink};
use crate::expr::{CtxField, Node, ObjField, Part, StampField};
use crate::path::SourcePath;
use crate::source::Source;
use crate::terminology::{ConceptMap, Target};

/// Fixed namespace for every deterministic id (`uuid5(NAMESPACE, key)`).
pub const ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a8e_4b7d_5e90_a3c4_1d2e_8f70_9b15);

/// Deterministic resource id for a key string.
pub fn uuid5(key: &str) -> String {
    // Hex digits and hyphens: always ASCII, never the fallback.
    std::str::from_utf8(&uuid5_text(key))
        .unwrap_or_default()
        .to_string()
}

/// The text of `uuid5(key)` (as [`uuid5`]), hashed and formatted on the stack.
pub(crate) fn uuid5_text(key: &str) -> [u8; crate::sha1::UUID_LEN] {
    crate::sha1::uuid5_text(ID_NAMESPACE.as_bytes(), key.as_bytes())
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
    pub(crate) fn text(&self) -> Option<Cow<'_, str>> {
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
pub(crate) struct Instance<'v, C> {
    pub def: usize,
    pub cur: C,
    pub anchor: Option<usize>,
    pub rtype: &'v str,
    /// Where `{rtype}/{id}`, the reference to it (validated: nothing to
    /// escape), is in [`Eval::urls`].
    pub url: std::ops::Range<usize>,
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

    /// `meta.security` as compact JSON (keys sorted), `false` (nothing
    /// written) when unlabelled. The codings are constant, pre-rendered.
    fn write_security(&self, out: &mut Vec<u8>) -> bool {
        const ETH: &[u8] = b"{\"code\":\"ETH\",\"display\":\"substance abuse information sensitivity\",\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActCode\"},";
        const PSY: &[u8] = b"{\"code\":\"PSY\",\"display\":\"psychiatry information sensitivity\",\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActCode\"},";
        const R: &[u8] = b"{\"code\":\"R\",\"display\":\"restricted\",\"system\":\"http://terminology.hl7.org/CodeSystem/v3-Confidentiality\"}]";
        if !self.eth && !self.psy {
            return false;
        }
        out.push(b'[');
        if self.eth {
            out.extend_from_slice(ETH);
        }
        if self.psy {
            out.extend_from_slice(PSY);
        }
        out.extend_from_slice(R);
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

/// Whether any of the 8 bytes packed in `w` needs escaping (`< 0x20`,
/// `"` or `\\`): the classic SWAR zero-byte tests, exact as a yes/no.
#[inline]
fn any_escape8(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let ctl = w.wrapping_sub(LO * 0x20) & !w & HI;
    let q = w ^ (LO * u64::from(b'"'));
    let q = q.wrapping_sub(LO) & !q & HI;
    let bs = w ^ (LO * u64::from(b'\\'));
    let bs = bs.wrapping_sub(LO) & !bs & HI;
    (ctl | q | bs) != 0
}

/// Write `s` as a JSON string, escaped exactly as `serde_json` does.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// Nothing in `bytes` needs escaping: 8 bytes at a time (SWAR), the tail
/// as one more, overlapping, 8-byte word (short strings: bytewise). A
/// bytewise tail cost ≈ 1.7 k more per message.
#[inline]
fn is_clean(bytes: &[u8]) -> bool {
    let word = |i: usize| {
        bytes
            .get(i..i + 8)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().all(|&b| !NEEDS_ESCAPE[usize::from(b)]);
    }
    let mut i = 0;
    while i + 8 <= n {
        if any_escape8(word(i)) {
            return false;
        }
        i += 8;
    }
    i == n || !any_escape8(word(n - 8))
}

/// The escaped contents of a JSON string, without the quotes. The common
/// clean case is a check and one copy, inlined at the call site; escaping
/// is out of line (per message 13.5 k → 9.7 k instructions here).
#[inline]
pub(crate) fn write_str_body(out: &mut Vec<u8>, s: &str) {
    if is_clean(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        write_escaped(out, s.as_bytes());
    }
}

/// [`write_str_body`] for a string that needs escaping: clean runs are
/// skipped 8 bytes at a time and copied in one piece.
#[cold]
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(Ok(w)) = bytes.get(i..i + 8).map(<[u8; 8]>::try_from) {
            if !any_escape8(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes.get(i).copied().unwrap_or(0);
            if NEEDS_ESCAPE[usize::from(b)] {
                out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
                start = i + 1;
                write_escape(out, b);
            }
            i += 1;
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// The JSON escape of one byte that needs one (as `serde_json` writes it).
fn write_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    {
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
}

/// Where [`Eval::write_body`] appends text: JSON string contents (escaped)
/// or plain text.
pub(crate) trait TextOut {
    fn put(&mut self, s: &str);
    fn len(&self) -> usize;
    fn truncate(&mut self, n: usize);
    /// Lowercase what was appended since `start` when it is all ASCII
    /// (`false`, nothing changed, when it is not).
    fn lower_ascii_from(&mut self, start: usize) -> bool;
}

impl TextOut for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        write_str_body(self, s);
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn truncate(&mut self, n: usize) {
        Vec::truncate(self, n);
    }
    fn lower_ascii_from(&mut self, start: usize) -> bool {
        match self.get_mut(start..) {
            Some(t) if t.is_ascii() => {
                t.make_ascii_lowercase();
                true
            }
            _ => false,
        }
    }
}

impl TextOut for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    fn len(&self) -> usize {
        String::len(self)
    }
    fn truncate(&mut self, n: usize) {
        String::truncate(self, n);
    }
    fn lower_ascii_from(&mut self, start: usize) -> bool {
        match self.get_mut(start..) {
            Some(t) if t.is_ascii() => {
                t.make_ascii_lowercase();
                true
            }
            _ => false,
        }
    }
}

/// Write an evaluated value as JSON; `false` if it cannot be written.
fn write_val(out: &mut Vec<u8>, v: Val<'_>) -> bool {
    match v {
        Val::Str(s) => {
            write_str(out, &s);
            true
        }
        Val::Bool(b) => {
            out.extend_from_slice(if b { b"true" } else { b"false" });
            true
        }
        Val::Json(j) => serde_json::to_writer(&mut *out, &j).is_ok(),
    }
}

/// A member value whose JSON needs no evaluation step.
enum Raw<'a> {
    /// A reference `Type/id` (validated: nothing to escape), to quote.
    Url(&'a [u8]),
    /// Pre-rendered JSON.
    Json(&'a [u8]),
}

/// Nodes whose JSON is a plain scalar computed by [`Eval::eval`] (no
/// streaming structure): an object member of this kind is evaluated before
/// its key is written.
fn is_scalar(n: &Node) -> bool {
    match n {
        Node::Path(_)
        | Node::Ctx(_)
        | Node::Date(_)
        | Node::DateTime(_)
        | Node::Uuid5(_)
        | Node::Upper(_)
        | Node::UriSegment(_)
        | Node::UrnOid(_)
        | Node::Key(_)
        | Node::Id(_)
        | Node::Ref(_)
        | Node::Eq(..)
        | Node::In(..)
        | Node::Not(_)
        | Node::Exists(_) => true,
        Node::Map { part, .. } => *part != Part::Coding,
        _ => false,
    }
}

/// Nodes whose value, when present, always has a text (so writing their
/// text directly is the same as evaluating them first).
fn always_text(n: &Node) -> bool {
    match n {
        Node::Str(..)
        | Node::Path(_)
        | Node::Ctx(_)
        | Node::Date(_)
        | Node::DateTime(_)
        | Node::Concat(_)
        | Node::Join { .. }
        | Node::Uuid5(_)
        | Node::Upper(_)
        | Node::Lower(_)
        | Node::UriSegment(_)
        | Node::UrnOid(_)
        | Node::Key(_)
        | Node::Id(_)
        | Node::Ref(_) => true,
        Node::Map { part, .. } => *part != Part::Coding,
        Node::First(items) => items.iter().all(always_text),
        Node::Find { body, .. } => always_text(body),
        _ => false,
    }
}

/// Evaluator state for one input document.
pub(crate) struct Eval<'v, S: Source<'v>> {
    pub src: &'v S,
    pub tables: &'v [ConceptMap],
    pub ctx: RunCtx<'v>,
    pub default_tz: Option<String>,
    /// Every key's text, back to back (see [`Eval::key`]).
    pub key_text: String,
    /// Where each key is in `key_text` (`None`: the key has no value).
    pub keys: Vec<Option<std::ops::Range<usize>>>,
    pub instances: Vec<Instance<'v, S::Cur>>,
    /// `meta.source` of every resource, as a JSON string.
    pub meta_source: Vec<u8>,
    /// Every instance's `{rtype}/{id}`, back to back (see `Instance::url`).
    /// (Bytes: ASCII by construction, so no UTF-8 check is ever needed to
    /// append or copy them; [`Eval::url_str`] for the rare `&str`.)
    pub urls: Vec<u8>,
    /// Spare cursor vectors for `$for_each` / `$find` (no allocation per visit).
    pub pool: RefCell<Vec<Vec<S::Cur>>>,
    /// The instance whose body is being written (for [`Node::Stamp`]).
    pub current: Cell<usize>,
}

fn non_empty(s: String) -> Option<Val<'static>> {
    (!s.is_empty()).then_some(Val::Str(Cow::Owned(s)))
}

impl<'v, S: Source<'v>> Eval<'v, S> {
    /// The reference `{rtype}/{id}` of an instance.
    pub(crate) fn url_of(&self, i: &Instance<'v, S::Cur>) -> &[u8] {
        self.urls.get(i.url.clone()).unwrap_or_default()
    }

    /// [`Eval::url_of`] as a `str` (always valid: types and ids are ASCII).
    fn url_str(&self, i: &Instance<'v, S::Cur>) -> &str {
        std::str::from_utf8(self.url_of(i)).unwrap_or_default()
    }

    /// The resource id of an instance (its url after `{rtype}/`).
    pub(crate) fn id_of(&self, i: &Instance<'v, S::Cur>) -> &[u8] {
        self.url_of(i).get(i.rtype.len() + 1..).unwrap_or_default()
    }

    /// The cursors `$for_each: path` visits from `cur`, in a pooled vector
    /// (hand it back with [`Eval::recycle`]).
    fn cursors(&self, cur: S::Cur, path: &SourcePath) -> Vec<S::Cur> {
        // A borrow that cannot fail (no other borrow is ever held across a
        // call); were it to, a fresh vector does.
        let mut v = self
            .pool
            .try_borrow_mut()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(8));
        v.clear();
        self.src.each(cur, path, &mut v);
        v
    }

    fn recycle(&self, v: Vec<S::Cur>) {
        if let Ok(mut pool) = self.pool.try_borrow_mut() {
            if pool.len() < 16 {
                pool.push(v);
            }
        }
    }

    /// Evaluate a node at a cursor.
    pub(crate) fn eval<'s>(&'s self, n: &'v Node, cur: S::Cur) -> Option<Val<'s>> {
        match n {
            Node::Str(s, _) => Some(Val::Str(Cow::Borrowed(s.as_str()))),
            Node::Lit(Value::String(s)) => Some(Val::Str(Cow::Borrowed(s.as_str()))),
            Node::Lit(v) | Node::Const(v, _) => Some(Val::Json(v.clone())),
            Node::Path(p) => self.src.get(cur, p).map(Val::Str),
            Node::Ctx(_) => self.ctx_str(n).map(|s| Val::Str(Cow::Borrowed(s))),
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
                let t = self.target(*table, value, cur)?;
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
                let mut out = String::with_capacity(64);
                for it in items {
                    out.push_str(&self.eval(it, cur)?.text()?);
                }
                non_empty(out)
            }
            Node::Join { items, sep } => {
                let mut out = String::with_capacity(64);
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
            Node::UriSegment(x) => {
                non_empty(crate::uri::encode_segment(&self.eval(x, cur)?.text()?).into_owned())
            }
            Node::UrnOid(x) => crate::uri::urn_oid(&self.eval(x, cur)?.text()?).and_then(non_empty),
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if self.holds(cond, cur) {
                    self.eval(then, cur)
                } else {
                    otherwise.as_ref().and_then(|o| self.eval(o, cur))
                }
            }
            Node::Eq(a, b) => {
                if let (Node::Path(p), Node::Str(s, _)) = (&**a, &**b) {
                    // `{$eq: [{$v: path}, literal]}`, the usual condition:
                    // compared in place, no `Val`s (145.4 k → 144.4 k per message).
                    return Some(Val::Bool(self.src.get(cur, p).is_some_and(|v| *v == **s)));
                }
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
            Node::Not(x) => Some(Val::Bool(!self.holds(x, cur))),
            Node::Key(i) => self.key(*i).map(|k| Val::Str(Cow::Borrowed(k))),
            Node::Id(i) => self.key(*i).map(|k| Val::Str(Cow::Owned(uuid5(k)))),
            Node::Ref(def) => Some(Val::Str(Cow::Borrowed(
                std::str::from_utf8(self.ref_url(*def, cur)?).unwrap_or_default(),
            ))),
            Node::Refs(defs) => {
                let refs: Vec<Value> = self
                    .instances
                    .iter()
                    .filter(|i| defs.contains(&i.def))
                    .map(|i| {
                        let mut m = Map::new();
                        m.insert(
                            "reference".into(),
                            Value::String(self.url_str(i).to_string()),
                        );
                        Value::Object(m)
                    })
                    .collect();
                (!refs.is_empty()).then_some(Val::Json(Value::Array(refs)))
            }
            Node::ForEach { path, filter, body } => {
                let curs = self.cursors(cur, path);
                let mut out = Vec::with_capacity(curs.len());
                for &c in &curs {
                    if filter.as_ref().is_some_and(|f| !self.holds(f, c)) {
                        continue;
                    }
                    if let Some(v) = self.eval(body, c) {
                        out.push(v.into_json());
                    }
                }
                self.recycle(curs);
                (!out.is_empty()).then_some(Val::Json(Value::Array(out)))
            }
            Node::Find { path, filter, body } => {
                let curs = self.cursors(cur, path);
                let found = curs
                    .iter()
                    .filter(|c| filter.as_ref().is_none_or(|f| self.holds(f, **c)))
                    .find_map(|c| self.eval(body, *c));
                self.recycle(curs);
                found
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
    /// [`Eval::emit`] of an object template: members in (sorted) order,
    /// each scalar read before its key is written.
    fn emit_object(&self, fields: &'v [ObjField], cur: S::Cur, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        out.push(b'{');
        let mut any = false;
        for f in fields {
            if let Node::Path(p) = &f.node {
                // The most common member: read and write the value,
                // no `Val` (per message 146.7 k → 145.4 k instructions).
                if let Some(v) = self.src.get(cur, p) {
                    f.write_key(out, any);
                    write_str(out, &v);
                    any = true;
                } else if f.required {
                    out.truncate(start);
                    return false;
                }
                continue;
            }
            if let Node::Date(x) | Node::DateTime(x) = &f.node {
                // Formatted on the stack, written as is (digits,
                // `-:T.` and an offset: nothing to escape, checked
                // anyway); no `String` per timestamp.
                match self.format_dt(&f.node, x, cur) {
                    Some(d) if !d.overflow() && is_clean(d.as_bytes()) => {
                        f.write_key(out, any);
                        out.push(b'"');
                        out.extend_from_slice(d.as_bytes());
                        out.push(b'"');
                        any = true;
                        continue;
                    }
                    // Too long for the stack (a long default
                    // offset): the general path below.
                    Some(_) => {}
                    None => {
                        if f.required {
                            out.truncate(start);
                            return false;
                        }
                        continue;
                    }
                }
            }
            if let Node::Stamp(sf) = &f.node {
                let mark = out.len();
                f.write_key(out, any);
                if self.write_stamp(*sf, out) {
                    any = true;
                } else {
                    out.truncate(mark);
                    if f.required {
                        out.truncate(start);
                        return false;
                    }
                }
                continue;
            }
            // Members whose JSON exists before evaluation: a
            // reference (validated type and id: nothing to escape)
            // and a concept-map string (pre-rendered at load).
            let raw = match &f.node {
                // Literals: their pre-rendered JSON (no call to `emit`).
                Node::Str(_, json) | Node::Const(_, json) => Some(Some(Raw::Json(&json[..]))),
                Node::Lit(Value::Bool(b)) => Some(Some(Raw::Json(if *b {
                    &b"true"[..]
                } else {
                    &b"false"[..]
                }))),
                Node::Ref(def) => Some(self.ref_url(*def, cur).map(Raw::Url)),
                Node::Map { table, value, part } if *part != Part::Coding => Some(
                    self.target(*table, value, cur)
                        .map(|t| match part {
                            Part::Code => &t.code_json[..],
                            Part::System => &t.system_json[..],
                            _ => &t.display_json[..],
                        })
                        .filter(|j| !j.is_empty())
                        .map(Raw::Json),
                ),
                _ => None,
            };
            if let Some(raw) = raw {
                match raw {
                    Some(j) => {
                        f.write_key(out, any);
                        match j {
                            Raw::Url(u) => {
                                out.push(b'"');
                                out.extend_from_slice(u);
                                out.push(b'"');
                            }
                            Raw::Json(j) => out.extend_from_slice(j),
                        }
                        any = true;
                    }
                    None if f.required => {
                        out.truncate(start);
                        return false;
                    }
                    None => {}
                }
                continue;
            }
            if is_scalar(&f.node) {
                // Evaluate first: an absent value writes nothing.
                if let Some(v) = self.eval(&f.node, cur) {
                    let mark = out.len();
                    f.write_key(out, any);
                    if write_val(out, v) {
                        any = true;
                        continue;
                    }
                    out.truncate(mark);
                }
                if f.required {
                    out.truncate(start);
                    return false;
                }
                continue;
            }
            let mark = out.len();
            f.write_key(out, any);
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

    pub(crate) fn emit(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>) -> bool {
        match n {
            Node::Object(fields) => self.emit_object(fields, cur, out),
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
                if self.holds(cond, cur) {
                    self.emit(then, cur, out)
                } else {
                    otherwise.as_ref().is_some_and(|o| self.emit(o, cur, out))
                }
            }
            Node::First(items) => items.iter().any(|it| self.emit(it, cur, out)),
            Node::Find { path, filter, body } => {
                let curs = self.cursors(cur, path);
                let found = curs.iter().any(|&c| {
                    filter.as_ref().is_none_or(|f| self.holds(f, c)) && self.emit(body, c, out)
                });
                self.recycle(curs);
                found
            }
            Node::Map {
                table,
                value,
                part: Part::Coding,
            } => {
                let Some(t) = self.target(*table, value, cur) else {
                    return false;
                };
                // Pre-rendered at load (keys sorted, empty strings left out).
                out.extend_from_slice(&t.coding_json);
                true
            }
            Node::Stamp(f) => self.write_stamp(*f, out),
            Node::Str(_, json) | Node::Const(_, json) => {
                out.extend_from_slice(json);
                true
            }
            Node::Concat(_) | Node::Join { .. } | Node::Lower(_) => self.emit_text(n, cur, out),
            _ => self.eval(n, cur).is_some_and(|v| write_val(out, v)),
        }
    }

    /// The text of key `i` (`None` when it has no value).
    pub(crate) fn key(&self, i: usize) -> Option<&str> {
        let r = self.keys.get(i)?.clone()?;
        self.key_text.get(r)
    }

    /// The (non-empty) value of a `$ctx` node.
    fn ctx_str(&self, n: &Node) -> Option<&'v str> {
        let s = match n {
            Node::Ctx(CtxField::CanonicalBase) => self.ctx.canonical_base,
            Node::Ctx(CtxField::SourceOrgId) => self.ctx.source_org_id,
            Node::Ctx(CtxField::SourceOrgName) => self.ctx.source_org_name,
            Node::Ctx(CtxField::ReceivedAt) => self.ctx.received_at,
            _ => return None,
        };
        (!s.is_empty()).then_some(s)
    }

    /// Whether condition `n` holds at `cur`: `eval(n)` is present and
    /// truthy, decided without building a `Val` for the usual conditions.
    fn holds(&self, n: &'v Node, cur: S::Cur) -> bool {
        match n {
            Node::Path(p) => self.src.get(cur, p).is_some(),
            Node::Eq(a, b) => match (&**a, &**b) {
                (Node::Path(p), Node::Str(s, _)) => self.src.get(cur, p).is_some_and(|v| *v == **s),
                _ => self.eval(n, cur).is_some_and(|v| v.truthy()),
            },
            Node::Not(x) => !self.holds(x, cur),
            Node::Key(i) => self.key(*i).is_some(),
            Node::Date(x) | Node::DateTime(x) => self.format_dt(n, x, cur).is_some(),
            _ => self.eval(n, cur).is_some_and(|v| v.truthy()),
        }
    }

    /// One element of an enclosing array: spliced ([`Eval::emit_items`])
    /// when it contributes several, else written directly (one call less
    /// per element).
    #[inline]
    fn emit_item(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>, any: &mut bool) {
        match n {
            Node::Array(_)
            | Node::ForEach { .. }
            | Node::Const(Value::Array(_), _)
            | Node::Refs(_)
            | Node::If { .. } => self.emit_items(n, cur, out, any),
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

    /// Write a field the engine stamps on the resource being written;
    /// `false` (nothing written) outside a resource.
    #[inline]
    fn write_stamp(&self, f: StampField, out: &mut Vec<u8>) -> bool {
        let Some(inst) = self.instances.get(self.current.get()) else {
            return false;
        };
        match f {
            // Validated type and id ([A-Za-z0-9.-]): nothing to escape.
            StampField::ResourceType | StampField::Id => {
                out.push(b'"');
                out.extend_from_slice(match f {
                    StampField::Id => self.id_of(inst),
                    _ => inst.rtype.as_bytes(),
                });
                out.push(b'"');
            }
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
                out.extend_from_slice(&self.meta_source);
                out.push(b'}');
            }
        }
        true
    }

    /// The reference `$ref: def` reads at `cur` (as [`Node::Ref`] evaluates).
    fn ref_url(&self, def: usize, cur: S::Cur) -> Option<&[u8]> {
        let here = self.src.anchor(cur);
        let inst = self
            .instances
            .iter()
            .find(|i| i.def == def && (!i.per_item || i.anchor == here))?;
        Some(self.url_of(inst))
    }

    /// The concept-map target `$map` (table, value) finds at `cur`.
    fn target(&self, table: usize, value: &'v Node, cur: S::Cur) -> Option<&'v Target> {
        let t = self.tables.get(table)?;
        match value {
            Node::Path(p) => t.get(&self.src.get(cur, p)?),
            _ => t.get(&self.eval(value, cur)?.text()?),
        }
    }

    /// `$date`/`$datetime` node `n` (argument `x`) formatted on the stack:
    /// `None` exactly when `eval(n)` is `None`.
    fn format_dt(&self, n: &'v Node, x: &'v Node, cur: S::Cur) -> Option<DtText> {
        let v = match x {
            Node::Path(p) => self.src.get(cur, p)?,
            _ => self.eval(x, cur)?.text()?.into_owned().into(),
        };
        let mut d = DtText::new();
        let ok = match n {
            Node::Date(_) => crate::datetime::to_date_into(&v, &mut d),
            _ => crate::datetime::to_datetime_into(&v, self.default_tz.as_deref(), &mut d),
        };
        (ok && d.len() > 0).then_some(d)
    }

    /// Write the JSON string of a text node straight into `out`, with no
    /// intermediate `String` (≈ 2 allocations per `$concat`/`$join` saved);
    /// `false` (nothing written) when it is absent or empty.
    fn emit_text(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        out.push(b'"');
        if self.write_body(n, cur, out) && out.len() > start + 1 {
            out.push(b'"');
            true
        } else {
            out.truncate(start);
            false
        }
    }

    /// Append the text of `n` to `out` (JSON-escaped, no quotes, for a
    /// `Vec<u8>`; as is for a `String`); `false` exactly when `eval(n)` has
    /// no text (the caller truncates what was written). Escaping is per
    /// byte, so escaping the parts equals escaping the whole. Keys and ids
    /// are built with this too (into one reused `String`), so text has one
    /// implementation.
    pub(crate) fn write_body<T: TextOut>(&self, n: &'v Node, cur: S::Cur, out: &mut T) -> bool {
        match n {
            Node::Str(s, _) => {
                out.put(s);
                true
            }
            Node::Path(p) => match self.src.get(cur, p) {
                Some(v) => {
                    out.put(&v);
                    true
                }
                None => false,
            },
            Node::Ctx(_) | Node::Key(_) => {
                // As `eval`, without the `Val`.
                let s = match n {
                    Node::Key(i) => self.key(*i),
                    _ => self.ctx_str(n),
                };
                match s {
                    Some(s) => {
                        out.put(s);
                        true
                    }
                    None => false,
                }
            }
            Node::Find { path, filter, body } if always_text(body) => {
                // As `eval`: the first visited cursor (passing the filter)
                // whose body has a value — and a value of such a body always
                // has a text.
                let curs = self.cursors(cur, path);
                let found = curs.iter().any(|&c| {
                    filter.as_ref().is_none_or(|f| self.holds(f, c)) && {
                        let mark = out.len();
                        self.write_body(body, c, out) || {
                            out.truncate(mark);
                            false
                        }
                    }
                });
                self.recycle(curs);
                found
            }
            Node::Concat(items) => {
                let start = out.len();
                items.iter().all(|it| self.write_body(it, cur, out)) && out.len() > start
            }
            Node::Join { items, sep } => {
                let start = out.len();
                for it in items {
                    let mark = out.len();
                    if mark > start {
                        out.put(sep);
                    }
                    if !self.write_body(it, cur, out) {
                        out.truncate(mark);
                    }
                }
                out.len() > start
            }
            Node::First(items) if items.iter().all(always_text) => items.iter().any(|it| {
                let mark = out.len();
                self.write_body(it, cur, out) || {
                    out.truncate(mark);
                    false
                }
            }),
            Node::Lower(x) => {
                let start = out.len();
                if !self.write_body(x, cur, out) || out.len() == start {
                    return false;
                }
                // ASCII: lowercasing the (escaped) text in place is exact
                // (escapes are lowercase already).
                match out.lower_ascii_from(start) {
                    true => true,
                    false => {
                        out.truncate(start);
                        match self.eval(n, cur).as_ref().and_then(Val::text) {
                            Some(t) => {
                                out.put(&t);
                                true
                            }
                            None => false,
                        }
                    }
                }
            }
            _ => match self.eval(n, cur).as_ref().and_then(Val::text) {
                Some(t) => {
                    out.put(&t);
                    true
                }
                None => false,
            },
        }
    }

    /// Write the elements `n` contributes to an enclosing array: the items of
    /// a `$for_each`, `$refs` or nested list are spliced in.
    fn emit_items(&self, n: &'v Node, cur: S::Cur, out: &mut Vec<u8>, any: &mut bool) {
        match n {
            Node::Array(items) => items
                .iter()
                .for_each(|it| self.emit_item(it, cur, out, any)),
            Node::ForEach { path, filter, body } => {
                let curs = self.cursors(cur, path);
                for &c in &curs {
                    if filter.as_ref().is_some_and(|f| !self.holds(f, c)) {
                        continue;
                    }
                    self.emit_item(body, c, out, any);
                }
                self.recycle(curs);
            }
            Node::Const(Value::Array(_), json) => {
                // Splice the items: the JSON without its brackets.
                if let Some(inner) = json.get(1..json.len().saturating_sub(1)) {
                    if !inner.is_empty() {
                        if *any {
                            out.push(b',');
                        }
                        *any = true;
                        out.extend_from_slice(inner);
                    }
                }
            }
            Node::Refs(defs) => {
                for i in self.instances.iter().filter(|i| defs.contains(&i.def)) {
                    if *any {
                        out.push(b',');
                    }
                    *any = true;
                    out.extend_from_slice(b"{\"reference\":\"");
                    // Types and ids are validated ([A-Za-z0-9.-]); nothing to escape.
                    out.extend_from_slice(self.url_of(i));
                    out.extend_from_slice(b"\"}");
                }
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if self.holds(cond, cur) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The SWAR fast path and the byte loop escape exactly as `serde_json`,
    /// whatever the position of the escaped byte within an 8-byte chunk.
    #[test]
    fn write_str_matches_serde_json() {
        let specials = [
            '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1}', '\u{1f}', 'é', '\u{7f}',
        ];
        for len in 0..20 {
            for pos in 0..len.max(1) {
                for sp in specials {
                    let s: String = (0..len)
                        .map(|i| {
                            if i == pos {
                                sp
                            } else {
                                char::from(b'a' + (i % 26) as u8)
                            }
                        })
                        .collect();
                    let mut out = Vec::new();
                    write_str(&mut out, &s);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        serde_json::to_string(&s).unwrap(),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn swar_flags_exactly_the_escaped_bytes() {
        for b in 0u8..=255 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = b;
                assert_eq!(
                    any_escape8(u64::from_le_bytes(w)),
                    NEEDS_ESCAPE[usize::from(b)],
                    "byte {b:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn security_labels_are_the_documented_codings() {
        let mut out = Vec::new();
        assert!(!Flags::default().write_security(&mut out));
        assert!(out.is_empty());
        let both = Flags {
            eth: true,
            psy: true,
        };
        assert!(both.write_security(&mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        let codes: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["ETH", "PSY", "R"]);
    }
}
