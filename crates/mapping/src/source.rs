//! The source abstraction: what the evaluator needs from an input document.
//!
//! A source hands out *cursors* (cheap `Copy` positions: the whole document,
//! one segment, one field repetition, one JSON element), resolves a compiled
//! path to a string relative to a cursor, and enumerates the cursors a
//! `$for_each` visits. The evaluator knows nothing else about the input, so a
//! new input kind is one more implementation of [`Source`].
//!
//! **Invariant:** values are trimmed and never empty: an absent or blank
//! value is `None`, which is how "empty values are omitted" starts.

use std::borrow::Cow;

use crate::path::{Hl7Path, JsonPath, SourcePath};

/// Most cursors one `$for_each` may visit (repetitions or segments).
pub(crate) const MAX_ITEMS: usize = 1000;

/// An input document the mapping engine can read.
pub(crate) trait Source<'a> {
    /// A position in the document.
    type Cur: Copy;
    /// The whole document.
    fn root(&self) -> Self::Cur;
    /// The trimmed, non-empty string at `path` relative to `cur`.
    fn get(&self, cur: Self::Cur, path: &SourcePath) -> Option<Cow<'a, str>>;
    /// The positions `$for_each: path` visits from `cur`, appended to `out`.
    fn each(&self, cur: Self::Cur, path: &SourcePath, out: &mut Vec<Self::Cur>);
    /// A stable identity of the segment/element `cur` is in (used to pair a
    /// per-segment resource with the segment being visited).
    fn anchor(&self, cur: Self::Cur) -> Option<usize>;
}

fn trimmed(v: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let t = v.trim();
    if t.is_empty() {
        return None;
    }
    if t.len() == v.len() {
        return Some(v);
    }
    Some(match v {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
    })
}

/// HL7 v2 message source.
pub(crate) struct Hl7Source<'m> {
    msg: &'m hl7v2::Message,
    /// First segment of each id, found once per message.
    firsts: Vec<(&'m str, hl7v2::Segment<'m>)>,
}

/// A position in an HL7 v2 message.
#[derive(Clone, Copy)]
pub(crate) enum Hl7Cur<'m> {
    Root,
    Seg(hl7v2::Segment<'m>),
    Rep(hl7v2::Segment<'m>, usize, usize),
}

impl<'m> Hl7Source<'m> {
    pub(crate) fn new(msg: &'m hl7v2::Message) -> Self {
        let mut firsts: Vec<(&'m str, hl7v2::Segment<'m>)> = Vec::with_capacity(16);
        for s in msg.segments() {
            let id = s.id();
            if !firsts.iter().any(|(i, _)| *i == id) {
                firsts.push((id, s));
            }
        }
        Hl7Source { msg, firsts }
    }

    fn segment(&self, cur: Hl7Cur<'m>, id: &str) -> Option<hl7v2::Segment<'m>> {
        match cur {
            Hl7Cur::Seg(s) | Hl7Cur::Rep(s, _, _) if s.id() == id => Some(s),
            _ => self.firsts.iter().find(|(i, _)| *i == id).map(|(_, s)| *s),
        }
    }

    /// The decoded value at field/rep/comp/sub (1-based; 0 = whole), split
    /// straight from the raw field. Same result as `Segment::value`, which
    /// it defers to for the atomic MSH-1/MSH-2.
    fn value(
        &self,
        s: hl7v2::Segment<'m>,
        field: usize,
        rep: usize,
        comp: usize,
        sub: usize,
    ) -> Option<Cow<'m, str>> {
        if field <= 2 && s.id() == "MSH" {
            return s.value(field, rep, comp, sub).and_then(trimmed);
        }
        let d = self.msg.delimiters();
        let raw = s.field(field).raw();
        if raw.is_empty() || rep == 0 {
            return None;
        }
        let r = raw.split(d.repetition).nth(rep - 1)?;
        let piece = match (comp, sub) {
            (0, _) => r,
            (c, 0) => r.split(d.component).nth(c - 1)?,
            (c, sb) => r
                .split(d.component)
                .nth(c - 1)?
                .split(d.subcomponent)
                .nth(sb - 1)?,
        };
        if piece.is_empty() {
            return None;
        }
        let v = match d.escape {
            Some(e) if piece.contains(e) => self.msg.unescape(piece),
            _ => Cow::Borrowed(piece),
        };
        trimmed(v)
    }
}

impl<'m> Source<'m> for Hl7Source<'m> {
    type Cur = Hl7Cur<'m>;

    fn root(&self) -> Hl7Cur<'m> {
        Hl7Cur::Root
    }

    fn get(&self, cur: Hl7Cur<'m>, path: &SourcePath) -> Option<Cow<'m, str>> {
        let SourcePath::Hl7(p) = path else {
            return None;
        };
        match &p.segment {
            None => match cur {
                Hl7Cur::Rep(s, f, r) => self.value(s, f, r, p.comp, p.sub),
                _ => None,
            },
            Some(id) => {
                let s = self.segment(cur, id)?;
                if p.field == 0 {
                    return Some(Cow::Borrowed(s.raw()));
                }
                s.value(p.field, p.rep.unwrap_or(1), p.comp, p.sub)
                    .and_then(trimmed)
            }
        }
    }

    fn each(&self, cur: Hl7Cur<'m>, path: &SourcePath, out: &mut Vec<Hl7Cur<'m>>) {
        let SourcePath::Hl7(Hl7Path {
            segment: Some(id),
            field,
            rep,
            ..
        }) = path
        else {
            return;
        };
        if *field == 0 {
            out.extend(
                self.msg
                    .segments()
                    .filter(|s| s.id() == id.as_str())
                    .take(MAX_ITEMS)
                    .map(Hl7Cur::Seg),
            );
            return;
        }
        let Some(s) = self.segment(cur, id) else {
            return;
        };
        let reps = match rep {
            Some(r) => *r..=*r,
            None => 1..=s.field(*field).repetition_count().min(MAX_ITEMS),
        };
        for r in reps {
            if self.value(s, *field, r, 0, 0).is_some() {
                out.push(Hl7Cur::Rep(s, *field, r));
            }
        }
    }

    fn anchor(&self, cur: Hl7Cur<'m>) -> Option<usize> {
        match cur {
            Hl7Cur::Root => None,
            Hl7Cur::Seg(s) | Hl7Cur::Rep(s, _, _) => Some(s.index()),
        }
    }
}

/// JSON document source (county case events).
pub(crate) struct JsonSource<'a> {
    pub doc: &'a serde_json::Value,
}

fn walk<'a>(mut v: &'a serde_json::Value, p: &JsonPath) -> Option<&'a serde_json::Value> {
    for m in &p.members {
        v = v.get(m.as_str())?;
    }
    Some(v)
}

impl<'a> Source<'a> for JsonSource<'a> {
    type Cur = &'a serde_json::Value;

    fn root(&self) -> &'a serde_json::Value {
        self.doc
    }

    fn get(&self, cur: &'a serde_json::Value, path: &SourcePath) -> Option<Cow<'a, str>> {
        let SourcePath::Json(p) = path else {
            return None;
        };
        let mut v = walk(if p.relative { cur } else { self.doc }, p)?;
        if let serde_json::Value::Array(a) = v {
            v = a.first()?;
        }
        match v {
            serde_json::Value::String(s) => trimmed(Cow::Borrowed(s.as_str())),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            serde_json::Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }

    fn each(
        &self,
        cur: &'a serde_json::Value,
        path: &SourcePath,
        out: &mut Vec<&'a serde_json::Value>,
    ) {
        let SourcePath::Json(p) = path else { return };
        match walk(if p.relative { cur } else { self.doc }, p) {
            Some(serde_json::Value::Array(a)) => out.extend(a.iter().take(MAX_ITEMS)),
            Some(serde_json::Value::Null) | None => {}
            Some(v) => out.push(v),
        }
    }

    fn anchor(&self, cur: &'a serde_json::Value) -> Option<usize> {
        Some(cur as *const serde_json::Value as usize)
    }
}
