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
use std::cell::Cell;

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

/// A value without the characters no stored text may carry
/// ([`crate::text::is_forbidden`]: controls other than TAB/LF/CR, DEL, C1,
/// bidi overrides and isolates), trimmed again; `None` when nothing is left.
/// Every value a mapping reads passes here, so no FHIR string made from an
/// input carries one.
#[inline]
fn clean(v: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if crate::text::is_clean(&v) {
        return Some(v);
    }
    trimmed(Cow::Owned(crate::text::strip_forbidden(v).into_owned()))
}

/// A segment id packed into a `u32` for one-instruction comparison
/// (`0` for ids that are not 1–3 ASCII bytes, which no path can name).
pub(crate) fn seg_key(id: &str) -> u32 {
    let b = id.as_bytes();
    if b.is_empty() || b.len() > 3 {
        return 0;
    }
    b.iter()
        .fold(b.len() as u32, |k, &c| (k << 8) | u32::from(c))
}

/// The fields a set of mappings can read, per segment id: only those are
/// split into repetitions and components (every other field is indexed as
/// empty, every other segment has no fields indexed), which no lookup then
/// misses — the set is collected from every path of every template at load.
#[derive(Debug, Default, Clone)]
pub(crate) struct FieldSet {
    /// (segment key, mask): bit `n` set = field `n` (1..=63) is read; bit 0
    /// = some field ≥ 64 is read (then all of those are indexed).
    segs: Vec<(u32, u64)>,
}

impl FieldSet {
    /// Field `field` of the segment with key `seg_key` can be read. Field 0
    /// (the whole segment) and relative paths need no field of their own (a
    /// relative path reads the repetition its `$for_each` visits, whose
    /// path is added itself).
    pub(crate) fn add(&mut self, seg_key: u32, field: usize) {
        if seg_key == 0 || field == 0 {
            return;
        }
        let bit = if field < 64 { 1u64 << field } else { 1 };
        match self.segs.iter_mut().find(|(k, _)| *k == seg_key) {
            Some((_, m)) => *m |= bit,
            None => self.segs.push((seg_key, bit)),
        }
    }

    pub(crate) fn add_path(&mut self, p: &SourcePath) {
        if let SourcePath::Hl7(h) = p {
            self.add(h.seg_key, h.field);
        }
    }

    fn mask(&self, seg_key: u32) -> u64 {
        self.segs
            .iter()
            .find(|(k, _)| *k == seg_key)
            .map_or(0, |&(_, m)| m)
    }
}

/// Whether field `n` (1-based) is in `mask` (see [`FieldSet`]).
#[inline]
fn wanted(mask: u64, n: usize) -> bool {
    if n < 64 {
        (mask >> n) & 1 == 1
    } else {
        mask & 1 == 1
    }
}

/// Index entry of one segment: its id and its fields in [`Hl7Source::fields`].
#[derive(Clone, Copy)]
struct SegEntry<'m> {
    key: u32,
    seg: hl7v2::Segment<'m>,
    /// Fields `1..` of the segment: `fields[field_start + n - 1]` is field `n`.
    field_start: u32,
    field_count: u32,
}

/// One field: its repetitions, `reps[start..end]`.
#[derive(Clone, Copy)]
struct FieldEntry {
    start: u32,
    end: u32,
}

/// One repetition: its raw text and its components, `comps[start..end]`.
#[derive(Clone, Copy)]
struct RepEntry {
    /// Byte range in the message text.
    raw: (u32, u32),
    start: u32,
    end: u32,
    /// The repetition contains the escape character (values need decoding).
    esc: bool,
}

/// `s` trimmed (Unicode whitespace, as `str::trim`), `None` when blank.
/// Values rarely carry padding: when both ends are visible ASCII the scan
/// is skipped.
#[inline]
fn trim_fast(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let visible = |c: Option<&u8>| c.is_some_and(|&c| c > b' ' && c < 0x7f);
    if visible(b.first()) && visible(b.last()) {
        return Some(s);
    }
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

/// HL7's explicit null `""` ("no value; delete the old one"): it reads as
/// absent, never as the text `""`.
#[inline]
fn is_hl7_null(piece: &str) -> bool {
    piece
        .as_bytes()
        .first()
        .is_some_and(|&b| b == b'"' || b == b' ')
        && piece.trim() == "\"\""
}

/// `seg_key("MSH")`.
const MSH: u32 = (3 << 24) | (b'M' as u32) << 16 | (b'S' as u32) << 8 | b'H' as u32;

/// Byte classes of the index scan (`0` = ordinary byte).
const COMP: u8 = 1;
const REP: u8 = 2;
const ESC: u8 = 4;

/// The delimiter bytes the index splits on, as a byte → class table.
struct Seps {
    class: [u8; 256],
}

/// HL7 v2 message source.
///
/// The index is linear in the message size (every segment, field,
/// repetition and component once), which `hl7v2::ParseOptions` bounds.
///
/// At construction every field of every segment is split once into
/// repetitions and components (one pass over the message text, ASCII
/// delimiters); a path lookup is then a few bounds-checked index operations,
/// plus a subcomponent split when the path names one. Values are decoded
/// (`\E\`-style escapes resolved by `hl7v2`) only when they contain the
/// escape character, so the common case borrows from the message.
pub(crate) struct Hl7Source<'m> {
    msg: &'m hl7v2::Message,
    segs: Vec<SegEntry<'m>>,
    fields: Vec<FieldEntry>,
    reps: Vec<RepEntry>,
    /// Byte ranges in the message text.
    comps: Vec<(u32, u32)>,
    sub_sep: u8,
    /// The escape byte; `None` when the message has no escape character.
    esc: Option<u8>,
    /// `false` when a delimiter is not ASCII: every lookup then defers to
    /// `hl7v2`'s own accessors (same results, slower).
    indexed: bool,
}

/// The index vectors of the last message indexed on this thread, kept
/// (emptied) for the next one: each is over 1 KiB for a typical ADT, past
/// the allocator's fast path, and getting and freeing the three cost
/// ≈ 1.8 k instructions per message.
#[derive(Default)]
struct Spare {
    fields: Vec<FieldEntry>,
    reps: Vec<RepEntry>,
    comps: Vec<(u32, u32)>,
}

/// Entries beyond which a vector is not kept for the next message.
const SPARE_MAX: usize = 64 * 1024;

thread_local! {
    static SPARE: Cell<Option<Spare>> = const { Cell::new(None) };
}

impl Drop for Hl7Source<'_> {
    fn drop(&mut self) {
        fn keep<T>(v: &mut Vec<T>) -> Vec<T> {
            let mut v = std::mem::take(v);
            v.clear();
            if v.capacity() > SPARE_MAX {
                v = Vec::new();
            }
            v
        }
        let spare = Spare {
            fields: keep(&mut self.fields),
            reps: keep(&mut self.reps),
            comps: keep(&mut self.comps),
        };
        // `try_with`: nothing to keep while the thread is exiting.
        let _ = SPARE.try_with(|s| s.set(Some(spare)));
    }
}

/// A position in an HL7 v2 message: segment / field / repetition numbers
/// (segment = 0-based index in the message; field, repetition 1-based) and,
/// for a repetition, its entry in [`Hl7Source::reps`] (`u32::MAX` when the
/// source is not indexed), so a relative path is one component read.
#[derive(Clone, Copy)]
pub(crate) enum Hl7Cur {
    Root,
    Seg(u32),
    Rep(u32, u32, u32, u32),
}

fn ascii(c: char) -> Option<u8> {
    u8::try_from(c).ok().filter(u8::is_ascii)
}

/// Index of `v` as `u32` (sizes are bounded by the message length, itself
/// bounded by `hl7v2`'s `max_bytes` well below `u32::MAX`).
fn idx32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl<'m> Hl7Source<'m> {
    /// The source with every field indexed.
    #[cfg(test)]
    pub(crate) fn new(msg: &'m hl7v2::Message) -> Self {
        Self::with_fields(msg, None)
    }

    /// The source with the fields of `read` indexed (`None`: all). Fields
    /// left out read as absent.
    pub(crate) fn with_fields(msg: &'m hl7v2::Message, read: Option<&FieldSet>) -> Self {
        let d = msg.delimiters();
        let seps = (
            ascii(d.repetition),
            ascii(d.component),
            ascii(d.subcomponent),
        );
        let esc_ok = d.escape.is_none_or(|e| ascii(e).is_some());
        let Spare {
            mut fields,
            mut reps,
            mut comps,
        } = SPARE.with(Cell::take).unwrap_or_default();
        let n = msg.text().len();
        fields.reserve(n / 4);
        reps.reserve(n / 8);
        comps.reserve(n / 4);
        let mut src = Hl7Source {
            msg,
            segs: Vec::with_capacity(msg.segment_count()),
            fields,
            reps,
            comps,
            sub_sep: b'&',
            esc: d.escape.and_then(ascii),
            indexed: false,
        };
        let (Some(rep), Some(comp), Some(sub)) = seps else {
            return src.with_segments_only();
        };
        if !esc_ok {
            return src.with_segments_only();
        }
        let Some(fs) = ascii(d.field) else {
            return src.with_segments_only();
        };
        if u32::try_from(msg.text().len()).is_err() {
            // Offsets are `u32`; `hl7v2` never builds such a message.
            return src.with_segments_only();
        }
        src.sub_sep = sub;
        src.indexed = true;
        let mut class = [0u8; 256];
        class[usize::from(comp)] = COMP;
        class[usize::from(rep)] = REP;
        if let Some(e) = src.esc {
            class[usize::from(e)] = ESC;
        }
        let distinct = [comp, rep, fs, sub]
            .into_iter()
            .chain(src.esc)
            .enumerate()
            .all(|(i, x)| {
                [comp, rep, fs, sub]
                    .into_iter()
                    .chain(src.esc)
                    .skip(i + 1)
                    .all(|y| y != x)
            });
        if !distinct {
            src.indexed = false;
            return src.with_segments_only();
        }
        let seps = Seps { class };
        for s in msg.segments() {
            src.index_segment(s, &seps, read);
        }
        src
    }

    /// Index one segment. Field boundaries are `hl7v2`'s own (no rescan for
    /// the field separator, nothing to do for an empty field); each field's
    /// bytes are split into repetitions and components in one pass (per
    /// message, with its allocations: 20.6 k → 15.9 k instructions). Field
    /// numbering follows `hl7v2` (MSH-1 is the field separator, MSH-2 the
    /// encoding characters; both are left to `hl7v2`).
    fn index_segment(&mut self, s: hl7v2::Segment<'m>, d: &Seps, fields: Option<&FieldSet>) {
        let key = seg_key(s.id());
        let field_start = idx32(self.fields.len());
        let mask = fields.map(|f| f.mask(key));
        if mask == Some(0) {
            // No field of this segment is ever read: none indexed.
            self.segs.push(SegEntry {
                key,
                seg: s,
                field_start,
                field_count: 0,
            });
            return;
        }
        let msh = key == MSH;
        let text = self.msg.text().as_bytes();
        let spans = s.field_spans();
        for (i, &(a, b)) in spans.iter().enumerate() {
            // Offsets and counts are `u32` (lossless: `new` checked that the
            // text length fits, and `hl7v2` caps messages far below 4 GiB).
            let rep_start = self.reps.len() as u32;
            let read = mask.is_none_or(|m| wanted(m, i + 1));
            let raw = match text.get(a as usize..b as usize) {
                Some(r) if read && !(r.is_empty() || (msh && i < 2)) => r,
                _ => {
                    self.fields.push(FieldEntry {
                        start: rep_start,
                        end: rep_start,
                    });
                    continue;
                }
            };
            let (mut r0, mut c0, mut rc, mut esc) = (a, a, self.comps.len() as u32, false);
            for (k, &c) in raw.iter().enumerate() {
                let class = d.class[usize::from(c)];
                if class != 0 {
                    let j = a + k as u32;
                    if class == ESC {
                        esc = true;
                    } else {
                        self.comps.push((c0, j));
                        c0 = j + 1;
                        if class == REP {
                            self.reps.push(RepEntry {
                                raw: (r0, j),
                                start: rc,
                                end: self.comps.len() as u32,
                                esc,
                            });
                            r0 = j + 1;
                            rc = self.comps.len() as u32;
                            esc = false;
                        }
                    }
                }
            }
            self.comps.push((c0, b));
            self.reps.push(RepEntry {
                raw: (r0, b),
                start: rc,
                end: self.comps.len() as u32,
                esc,
            });
            self.fields.push(FieldEntry {
                start: rep_start,
                end: self.reps.len() as u32,
            });
        }
        self.segs.push(SegEntry {
            key,
            seg: s,
            field_start,
            field_count: idx32(spans.len()),
        });
    }

    /// Non-indexed mode: only the segment table (lookups use `hl7v2`).
    fn with_segments_only(mut self) -> Self {
        for s in self.msg.segments() {
            self.segs.push(SegEntry {
                key: seg_key(s.id()),
                seg: s,
                field_start: 0,
                field_count: 0,
            });
        }
        self
    }

    /// The segment a path with segment key `key` reads at `cur`: the visited
    /// segment when it has that id, else the first segment with that id.
    fn segment(&self, cur: Hl7Cur, key: u32) -> Option<u32> {
        match cur {
            Hl7Cur::Seg(s) | Hl7Cur::Rep(s, ..)
                if self.segs.get(s as usize).is_some_and(|e| e.key == key) =>
            {
                Some(s)
            }
            _ => self.segs.iter().position(|e| e.key == key).map(idx32),
        }
    }

    /// Number of repetitions of field `field` of segment `seg`.
    fn rep_count(&self, seg: u32, field: usize) -> usize {
        let Some(e) = self.segs.get(seg as usize) else {
            return 0;
        };
        if !self.indexed || field == 0 || (field <= 2 && e.key == MSH) {
            return e.seg.field(field).repetition_count();
        }
        self.field(e, field)
            .map(|f| (f.end - f.start) as usize)
            .unwrap_or(0)
    }

    fn field(&self, e: &SegEntry<'m>, field: usize) -> Option<FieldEntry> {
        if field == 0 || field > e.field_count as usize {
            return None;
        }
        self.fields.get(e.field_start as usize + field - 1).copied()
    }

    /// The index of repetition `rep` (1-based) of field `field` of segment
    /// `seg` in `reps`: `None` when absent or when the field is not indexed
    /// (field 0, MSH-1, MSH-2, or no index at all).
    #[inline]
    fn rep_index(&self, seg: u32, field: usize, rep: usize) -> Option<usize> {
        let e = self.segs.get(seg as usize)?;
        let f = self.field(e, field)?;
        let ri = (f.start as usize).checked_add(rep.checked_sub(1)?)?;
        (ri < f.end as usize).then_some(ri)
    }

    /// Whether lookups in `field` of segment `seg` go through `hl7v2`.
    #[inline]
    fn unindexed(&self, seg: u32, field: usize) -> bool {
        !self.indexed
            || field == 0
            || (field <= 2 && self.segs.get(seg as usize).is_some_and(|e| e.key == MSH))
    }

    /// The decoded, trimmed value at field/rep/comp/sub (1-based; 0 =
    /// whole) of segment `seg`. Same result as `Segment::value` + trim.
    fn value(
        &self,
        seg: u32,
        field: usize,
        rep: usize,
        comp: usize,
        sub: usize,
    ) -> Option<Cow<'m, str>> {
        if self.unindexed(seg, field) {
            let e = self.segs.get(seg as usize)?;
            return e
                .seg
                .value(field, rep, comp, sub)
                .and_then(trimmed)
                .filter(|v| !is_hl7_null(v));
        }
        let r = self.reps.get(self.rep_index(seg, field, rep)?)?;
        self.rep_value(r, comp, sub)
    }

    /// The decoded, trimmed value at comp/sub (1-based; 0 = whole) of one
    /// indexed repetition.
    #[inline]
    fn rep_value(&self, r: &RepEntry, comp: usize, sub: usize) -> Option<Cow<'m, str>> {
        let text = self.msg.text();
        let piece = if comp == 0 {
            text.get(r.raw.0 as usize..r.raw.1 as usize)?
        } else {
            let ci = (r.start as usize).checked_add(comp - 1)?;
            if ci >= r.end as usize {
                return None;
            }
            let (a, b) = *self.comps.get(ci)?;
            let c = text.get(a as usize..b as usize)?;
            if sub == 0 {
                c
            } else {
                hl7v2::nth_piece(c, self.sub_sep, sub - 1)?
            }
        };
        if piece.is_empty() || is_hl7_null(piece) {
            return None;
        }
        if r.esc {
            return trimmed(self.msg.unescape(piece)).filter(|v| !is_hl7_null(v));
        }
        trim_fast(piece).map(Cow::Borrowed)
    }
}

impl<'m> Hl7Source<'m> {
    /// [`Source::get`] before [`clean`].
    fn get_raw(&self, cur: Hl7Cur, path: &SourcePath) -> Option<Cow<'m, str>> {
        let SourcePath::Hl7(p) = path else {
            return None;
        };
        if p.seg_key == 0 {
            return match cur {
                Hl7Cur::Rep(s, f, r, ri) => match self.reps.get(ri as usize) {
                    Some(rep) => self.rep_value(rep, p.comp, p.sub),
                    None => self.value(s, f as usize, r as usize, p.comp, p.sub),
                },
                _ => None,
            };
        }
        let s = self.segment(cur, p.seg_key)?;
        if p.field == 0 {
            return self
                .segs
                .get(s as usize)
                .map(|e| Cow::Borrowed(e.seg.raw()));
        }
        self.value(s, p.field, p.rep.unwrap_or(1), p.comp, p.sub)
    }
}

impl<'m> Source<'m> for Hl7Source<'m> {
    type Cur = Hl7Cur;

    fn root(&self) -> Hl7Cur {
        Hl7Cur::Root
    }

    fn get(&self, cur: Hl7Cur, path: &SourcePath) -> Option<Cow<'m, str>> {
        self.get_raw(cur, path).and_then(clean)
    }

    fn each(&self, cur: Hl7Cur, path: &SourcePath, out: &mut Vec<Hl7Cur>) {
        let SourcePath::Hl7(Hl7Path {
            seg_key,
            field,
            rep,
            ..
        }) = path
        else {
            return;
        };
        if *seg_key == 0 {
            return;
        }
        if *field == 0 {
            out.extend(
                self.segs
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.key == *seg_key)
                    .take(MAX_ITEMS)
                    .map(|(i, _)| Hl7Cur::Seg(idx32(i))),
            );
            return;
        }
        let Some(s) = self.segment(cur, *seg_key) else {
            return;
        };
        let reps = match rep {
            Some(r) => *r..=*r,
            None => 1..=self.rep_count(s, *field).min(MAX_ITEMS),
        };
        let indexed = !self.unindexed(s, *field);
        for r in reps {
            if indexed {
                // Indexed: the repetition's entry, and its cursor knows it.
                if let Some(ri) = self.rep_index(s, *field, r) {
                    if self
                        .reps
                        .get(ri)
                        .is_some_and(|e| self.rep_value(e, 0, 0).is_some())
                    {
                        out.push(Hl7Cur::Rep(s, idx32(*field), idx32(r), idx32(ri)));
                    }
                }
            } else if self.value(s, *field, r, 0, 0).is_some() {
                out.push(Hl7Cur::Rep(s, idx32(*field), idx32(r), u32::MAX));
            }
        }
    }

    fn anchor(&self, cur: Hl7Cur) -> Option<usize> {
        match cur {
            Hl7Cur::Root => None,
            Hl7Cur::Seg(s) | Hl7Cur::Rep(s, ..) => Some(s as usize),
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
            serde_json::Value::String(s) => trimmed(Cow::Borrowed(s.as_str())).and_then(clean),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every (field, rep, comp, sub) the index answers equals `hl7v2`'s own
    /// accessor, trimmed (the pre-index implementation).
    fn assert_same_as_hl7v2(text: &str) {
        let parsed = hl7v2::parse(text.as_bytes(), &hl7v2::ParseOptions::default());
        let msg = parsed.message.expect("parses");
        let src = Hl7Source::new(&msg);
        assert!(src.indexed);
        for (si, s) in msg.segments().enumerate() {
            let si = u32::try_from(si).unwrap();
            for f in 0..=s.field_count() + 1 {
                assert_eq!(
                    src.rep_count(si, f),
                    s.field(f).repetition_count(),
                    "{} field {f}",
                    s.id()
                );
                for r in 0..=4 {
                    for c in 0..=9 {
                        for sb in 0..=3 {
                            let want = s
                                .value(f, r, c, sb)
                                .and_then(trimmed)
                                .filter(|v| !is_hl7_null(v));
                            let got = src.value(si, f, r, c, sb);
                            assert_eq!(got, want, "{}-{f}[{r}].{c}.{sb}", s.id());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn index_matches_hl7v2_on_every_golden_input() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/adt/adt-to-fhir");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) == Some("hl7") {
                let bytes = std::fs::read(&p).unwrap();
                assert_same_as_hl7v2(&String::from_utf8_lossy(&bytes));
                n += 1;
            }
        }
        assert!(n >= 40, "only {n} golden inputs");
    }

    #[test]
    fn msh_key_is_the_packed_id() {
        assert_eq!(MSH, seg_key("MSH"));
    }

    #[test]
    fn index_matches_hl7v2_on_odd_messages() {
        for m in [
            "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||~^^~a^b&c&&d^\\T\\x~ y ||",
            "MSH|^~\\&|A\rPID|||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||x",
            "MSH|^~\\&\rPID\rPV1|\rDG1||^^|~~|\\E\\^\\S\\&\\R\\|",
            "MSH|#*!%|A#B*C%D!F!|E\rPID|1|x#y*z%w!T!v||",
            "MSH|^~|A^B~C&D\rPID|1|a\\b^c&d",
        ] {
            assert_same_as_hl7v2(m);
        }
    }
}
