//! The parsed message model: one owned `String` plus range indexes, and
//! borrowing accessors.
//!
//! Invariants (established by `parse`, relied upon here):
//! * every range in `segs` and `fields` lies within `text` and on `char`
//!   boundaries (they are cut at ASCII delimiters);
//! * each segment has at least one field range (index 0: the segment id);
//! * the delimiters are distinct ASCII punctuation characters.
//!
//! Accessors never panic: out-of-range numbers yield empty values.

use std::borrow::Cow;

use crate::escape::unescape;
use crate::{Charset, Delimiters};

/// Index entry of one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegIdx {
    pub(crate) start: u32,
    pub(crate) end: u32,
    /// Range into `Message::fields`.
    pub(crate) field_start: u32,
    pub(crate) field_end: u32,
    /// 1-based occurrence of this segment id.
    pub(crate) ordinal: u32,
}

/// A parsed HL7 v2 message. Owns its decoded text; accessors borrow from it.
///
/// `Debug` prints structure only (segment ids, counts, charset), never the
/// text: message content is PHI and `Debug` output ends up in logs.
#[derive(Clone)]
pub struct Message {
    pub(crate) text: String,
    pub(crate) delims: Delimiters,
    pub(crate) charset: Charset,
    pub(crate) segs: Vec<SegIdx>,
    pub(crate) fields: Vec<(u32, u32)>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.segments().map(|s| s.id()).take(64).collect();
        f.debug_struct("Message")
            .field("bytes", &self.text.len())
            .field("segments", &self.segs.len())
            .field("ids", &ids)
            .field("charset", &self.charset)
            .field("delimiters", &self.delims)
            .finish()
    }
}

impl Message {
    /// Decoded text, segments joined by `'\r'` (no trailing separator).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The message's delimiters (from MSH-1/MSH-2).
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    /// The charset the message was decoded with (MSH-18, else the default).
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// All segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        (0..self.segs.len()).map(move |index| Segment { msg: self, index })
    }

    /// The segments with id `id`, in order.
    pub fn segments_named<'a>(&'a self, id: &'a str) -> impl Iterator<Item = Segment<'a>> {
        self.segments().filter(move |s| s.id() == id)
    }

    /// The first segment with id `id`.
    pub fn first(&self, id: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.id() == id)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// Resolves escape sequences in `raw` with this message's delimiters and
    /// charset. Borrowed when `raw` contains no escape character.
    pub fn unescape<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        unescape(raw, &self.delims, self.charset)
    }

    /// Terser-like access: `"PID-3"`, `"PID-3[2].1"`, `"PID-5.1.1"`, `"MSH-9.2"`.
    /// Uses the first occurrence of the segment; repetition, component and
    /// subcomponent default to 1. Decoded; `None` if empty, absent, or the path
    /// is malformed.
    pub fn get(&self, path: &str) -> Option<Cow<'_, str>> {
        let p = parse_path(path)?;
        self.first(p.segment)?.value(p.field, p.rep, p.comp, p.sub)
    }

    /// The MSH fields the gateway needs (all empty when there is no MSH).
    pub fn header(&self) -> Header {
        let Some(msh) = self.first("MSH") else {
            return Header::default();
        };
        let std = Delimiters::default();
        let raw_std = |n: usize| -> String {
            let raw = msh.field(n).raw();
            if self.delims == std {
                raw.to_string()
            } else {
                reencode(raw, &self.delims, &std)
            }
        };
        let val = |f: usize, c: usize| -> String {
            msh.value(f, 1, c, 1)
                .map(Cow::into_owned)
                .unwrap_or_default()
        };
        Header {
            msh3: raw_std(3),
            msh4: raw_std(4),
            msh5: raw_std(5),
            msh6: raw_std(6),
            sending_application: val(3, 1),
            sending_facility: val(4, 1),
            timestamp: val(7, 1),
            message_code: val(9, 1),
            trigger_event: val(9, 2),
            message_structure: val(9, 3),
            control_id: msh
                .value(10, 1, 0, 0)
                .map(Cow::into_owned)
                .unwrap_or_default(),
            processing_id: val(11, 1),
            version: val(12, 1),
            accept_ack_type: val(15, 1),
            application_ack_type: val(16, 1),
            charset: msh.field(18).repetition(1).raw().to_string(),
        }
    }
}

/// Rewrites raw ER7 text from delimiters `from` to `to`: separators are mapped
/// role by role, escape sequences get the new escape character, and characters
/// that are delimiters in `to` but data in `from` are escaped.
fn reencode(raw: &str, from: &Delimiters, to: &Delimiters) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == from.field {
            out.push(to.field);
        } else if c == from.component {
            out.push(to.component);
        } else if c == from.repetition {
            out.push(to.repetition);
        } else if c == from.subcomponent {
            out.push(to.subcomponent);
        } else if Some(c) == from.escape {
            out.push(to.escape.unwrap_or(c));
        } else if Some(c) == from.truncation && to.truncation.is_some() {
            out.push(to.truncation.unwrap_or(c));
        } else {
            let mut buf = [0u8; 4];
            out.push_str(&crate::escape(c.encode_utf8(&mut buf), to));
        }
    }
    out
}

struct PathSpec<'p> {
    segment: &'p str,
    field: usize,
    rep: usize,
    comp: usize,
    sub: usize,
}

fn parse_path(path: &str) -> Option<PathSpec<'_>> {
    let (segment, rest) = path.split_once('-')?;
    if segment.is_empty() {
        return None;
    }
    let num = |s: &str| -> Option<usize> {
        if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().filter(|&n| n >= 1)
    };
    let mut dots = rest.split('.');
    let field_part = dots.next()?;
    let (field, rep) = match field_part.split_once('[') {
        Some((f, r)) => (num(f)?, num(r.strip_suffix(']')?)?),
        None => (num(field_part)?, 1),
    };
    let comp = match dots.next() {
        Some(c) => num(c)?,
        None => 1,
    };
    let sub = match dots.next() {
        Some(s) => num(s)?,
        None => 1,
    };
    if dots.next().is_some() {
        return None;
    }
    Some(PathSpec {
        segment,
        field,
        rep,
        comp,
        sub,
    })
}

/// One segment of a [`Message`].
#[derive(Clone, Copy)]
pub struct Segment<'m> {
    msg: &'m Message,
    index: usize,
}

impl std::fmt::Debug for Segment<'_> {
    /// Structure only (id, position, field count): segment content is PHI.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id())
            .field("index", &self.index)
            .field("fields", &self.field_count())
            .finish()
    }
}

impl<'m> Segment<'m> {
    fn idx(&self) -> Option<&'m SegIdx> {
        self.msg.segs.get(self.index)
    }

    fn field_range(&self, n: usize) -> Option<&'m str> {
        let s = self.idx()?;
        let fi = (s.field_start as usize).checked_add(n)?;
        if fi >= s.field_end as usize {
            return None;
        }
        let &(a, b) = self.msg.fields.get(fi)?;
        self.msg.text.get(a as usize..b as usize)
    }

    /// Segment id, e.g. `PID`.
    pub fn id(&self) -> &'m str {
        self.field_range(0).unwrap_or("")
    }

    /// 0-based position in the message.
    pub fn index(&self) -> usize {
        self.index
    }

    /// 1-based occurrence among segments with the same id.
    pub fn ordinal(&self) -> usize {
        self.idx().map(|s| s.ordinal as usize).unwrap_or(0)
    }

    /// The raw segment text (no separator).
    pub fn raw(&self) -> &'m str {
        self.idx()
            .and_then(|s| self.msg.text.get(s.start as usize..s.end as usize))
            .unwrap_or("")
    }

    /// Highest field number present (counting fields delimited by a separator,
    /// even if empty). For MSH this counts MSH-1 and MSH-2.
    pub fn field_count(&self) -> usize {
        self.idx()
            .map(|s| (s.field_end - s.field_start).saturating_sub(1) as usize)
            .unwrap_or(0)
    }

    /// Raw (escaped) text of fields `1..=field_count()`, in order: what
    /// `field(n).raw()` returns for each `n`, without a lookup per field.
    /// For MSH the first two are MSH-1 (the separator) and MSH-2.
    pub fn fields_raw(&self) -> impl Iterator<Item = &'m str> + 'm {
        let msg = self.msg;
        let range = self
            .idx()
            .map(|s| (s.field_start as usize).saturating_add(1)..s.field_end as usize)
            .unwrap_or(0..0);
        msg.fields
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(move |&(a, b)| msg.text.get(a as usize..b as usize).unwrap_or(""))
    }

    /// Byte ranges of fields `1..=field_count()` in [`Message::text`], in
    /// order (the ranges [`Segment::fields_raw`] slices; always on `char`
    /// boundaries, cut at ASCII delimiters): for callers that index the
    /// text themselves. For MSH the first two are MSH-1 and MSH-2.
    pub fn field_spans(&self) -> &'m [(u32, u32)] {
        let range = self
            .idx()
            .map(|s| (s.field_start as usize).saturating_add(1)..s.field_end as usize)
            .unwrap_or(0..0);
        self.msg.fields.get(range).unwrap_or_default()
    }

    /// Field `n` in HL7 numbering; absent → empty field. `field(0)` is the
    /// segment id. For MSH, `field(1)` is the field separator itself and
    /// `field(2)` the encoding characters; both are never split or unescaped.
    pub fn field(&self, n: usize) -> Field<'m> {
        let atomic = n == 0 || (n <= 2 && self.id() == "MSH");
        Field {
            msg: self.msg,
            raw: self.field_range(n).unwrap_or(""),
            atomic,
        }
    }

    /// Decoded value at field/rep/comp/sub (all 1-based). `comp == 0` → whole
    /// repetition; `sub == 0` → whole component. `None` when empty or absent.
    pub fn value(&self, field: usize, rep: usize, comp: usize, sub: usize) -> Option<Cow<'m, str>> {
        let f = self.field(field);
        let d = &self.msg.delims;
        let seps = (
            ascii_byte(d.repetition),
            ascii_byte(d.component),
            ascii_byte(d.subcomponent),
        );
        let (false, Some(rs), Some(cs), Some(ss)) = (f.atomic, seps.0, seps.1, seps.2) else {
            return f.repetition(rep).value(comp, sub);
        };
        // The same splits as `Field::repetition(..).value(..)`, on bytes
        // (`parse`'s header checks: ≈ 1.6 k → 0.4 k instructions per message).
        let r = nth_piece(f.raw, rs, rep.checked_sub(1)?)?;
        let piece = match comp.checked_sub(1) {
            None => r,
            Some(c) => {
                let c = nth_piece(r, cs, c)?;
                match sub.checked_sub(1) {
                    None => c,
                    Some(sb) => nth_piece(c, ss, sb)?,
                }
            }
        };
        if piece.is_empty() {
            return None;
        }
        non_empty(unescape(piece, d, self.msg.charset))
    }
}

fn ascii_byte(c: char) -> Option<u8> {
    u8::try_from(c).ok().filter(u8::is_ascii)
}

/// Piece `n` (0-based) of `s` split on the ASCII byte `sep`; `None` when
/// `s` has fewer pieces (the accessors' empty value). Cuts are at ASCII
/// bytes, so always on `char` boundaries. As `str::split(..).nth(n)`,
/// which cost ≈ 3× through the char searcher (the mapping engine uses it too).
#[inline]
pub fn nth_piece(s: &str, sep: u8, n: usize) -> Option<&str> {
    let b = s.as_bytes();
    let mut start = 0;
    for _ in 0..n {
        start += b.get(start..)?.iter().position(|&c| c == sep)? + 1;
    }
    let rest = b.get(start..)?;
    let end = start + rest.iter().position(|&c| c == sep).unwrap_or(rest.len());
    s.get(start..end)
}

fn non_empty(c: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if c.is_empty() {
        None
    } else {
        Some(c)
    }
}

/// One field of a segment (possibly with repetitions).
#[derive(Clone, Copy)]
pub struct Field<'m> {
    msg: &'m Message,
    raw: &'m str,
    atomic: bool,
}

impl<'m> Field<'m> {
    /// Raw (escaped) field text.
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    /// `true` when the field is empty or absent.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The repetitions; an empty field yields none.
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'m>> + 'm {
        let msg = self.msg;
        let atomic = self.atomic;
        let sep = if atomic {
            None
        } else {
            Some(msg.delims.repetition)
        };
        split_opt(self.raw, sep).map(move |raw| Repetition { msg, raw, atomic })
    }

    /// Repetition `n` (1-based); empty if absent.
    pub fn repetition(&self, n: usize) -> Repetition<'m> {
        let raw = match n.checked_sub(1) {
            Some(i) => self.repetitions().nth(i).map(|r| r.raw).unwrap_or(""),
            None => "",
        };
        Repetition {
            msg: self.msg,
            raw,
            atomic: self.atomic,
        }
    }

    /// Number of repetitions (0 for an empty field).
    pub fn repetition_count(&self) -> usize {
        self.repetitions().count()
    }
}

/// One repetition of a field.
#[derive(Clone, Copy)]
pub struct Repetition<'m> {
    msg: &'m Message,
    raw: &'m str,
    atomic: bool,
}

impl<'m> Repetition<'m> {
    /// Raw (escaped) text.
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The components; an empty repetition yields none.
    pub fn components(&self) -> impl Iterator<Item = Component<'m>> + 'm {
        let msg = self.msg;
        let atomic = self.atomic;
        let sep = if atomic {
            None
        } else {
            Some(msg.delims.component)
        };
        split_opt(self.raw, sep).map(move |raw| Component { msg, raw, atomic })
    }

    /// Component `n` (1-based); empty if absent.
    pub fn component(&self, n: usize) -> Component<'m> {
        let raw = match n.checked_sub(1) {
            Some(i) => self.components().nth(i).map(|c| c.raw).unwrap_or(""),
            None => "",
        };
        Component {
            msg: self.msg,
            raw,
            atomic: self.atomic,
        }
    }

    /// Number of components (0 when empty).
    pub fn component_count(&self) -> usize {
        self.components().count()
    }

    /// Decoded value; `comp == 0` → whole repetition, `sub == 0` → whole
    /// component. `None` when empty or absent.
    pub fn value(&self, comp: usize, sub: usize) -> Option<Cow<'m, str>> {
        if comp == 0 {
            if self.atomic {
                return non_empty(Cow::Borrowed(self.raw));
            }
            return non_empty(unescape(self.raw, &self.msg.delims, self.msg.charset));
        }
        self.component(comp).value(sub)
    }
}

/// One component of a repetition.
#[derive(Clone, Copy)]
pub struct Component<'m> {
    msg: &'m Message,
    raw: &'m str,
    atomic: bool,
}

impl<'m> Component<'m> {
    /// Raw (escaped) text.
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Subcomponent `n` (1-based), raw; `""` if absent.
    pub fn subcomponent(&self, n: usize) -> &'m str {
        match n.checked_sub(1) {
            Some(i) => self.subcomponents().nth(i).unwrap_or(""),
            None => "",
        }
    }

    /// Raw subcomponents; an empty component yields none.
    pub fn subcomponents(&self) -> impl Iterator<Item = &'m str> + 'm {
        let sep = if self.atomic {
            None
        } else {
            Some(self.msg.delims.subcomponent)
        };
        split_opt(self.raw, sep)
    }

    /// The whole component, decoded.
    pub fn text(&self) -> Cow<'m, str> {
        if self.atomic {
            return Cow::Borrowed(self.raw);
        }
        unescape(self.raw, &self.msg.delims, self.msg.charset)
    }

    /// Decoded subcomponent `sub` (1-based; 0 → whole component). `None`
    /// when empty or absent.
    pub fn value(&self, sub: usize) -> Option<Cow<'m, str>> {
        if sub == 0 {
            return non_empty(self.text());
        }
        let raw = self.subcomponent(sub);
        if self.atomic {
            return non_empty(Cow::Borrowed(raw));
        }
        non_empty(unescape(raw, &self.msg.delims, self.msg.charset))
    }
}

/// Splits `s` on `sep`; empty `s` yields nothing; `sep == None` yields `s` whole.
fn split_opt(s: &str, sep: Option<char>) -> impl Iterator<Item = &str> {
    let empty = s.is_empty();
    let (whole, parts) = match sep {
        Some(c) => (None, Some(s.split(c))),
        None => (Some(s), None),
    };
    whole
        .into_iter()
        .chain(parts.into_iter().flatten())
        .filter(move |_| !empty)
}

/// The MSH fields the gateway routes and acknowledges on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-3 raw (escaped, components kept), re-encoded to standard delimiters.
    pub msh3: String,
    /// MSH-4 raw, standard delimiters.
    pub msh4: String,
    /// MSH-5 raw, standard delimiters.
    pub msh5: String,
    /// MSH-6 raw, standard delimiters.
    pub msh6: String,
    /// MSH-3.1 decoded.
    pub sending_application: String,
    /// MSH-4.1 decoded (the namespace id the gateway matches on).
    pub sending_facility: String,
    /// MSH-7.1.
    pub timestamp: String,
    /// MSH-9.1, e.g. `ADT`.
    pub message_code: String,
    /// MSH-9.2, e.g. `A01`.
    pub trigger_event: String,
    /// MSH-9.3, e.g. `ADT_A01`.
    pub message_structure: String,
    /// MSH-10, decoded.
    pub control_id: String,
    /// MSH-11.1.
    pub processing_id: String,
    /// MSH-12.1.
    pub version: String,
    /// MSH-15 (`AL`, `NE`, `ER`, `SU` or empty).
    pub accept_ack_type: String,
    /// MSH-16.
    pub application_ack_type: String,
    /// MSH-18 first repetition, raw.
    pub charset: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parsing() {
        let p = parse_path("PID-3[2].1").unwrap();
        assert_eq!(
            (p.segment, p.field, p.rep, p.comp, p.sub),
            ("PID", 3, 2, 1, 1)
        );
        let p = parse_path("PID-5.1.2").unwrap();
        assert_eq!((p.field, p.rep, p.comp, p.sub), (5, 1, 1, 2));
        let p = parse_path("MSH-9").unwrap();
        assert_eq!((p.field, p.rep, p.comp, p.sub), (9, 1, 1, 1));
        for bad in [
            "PID",
            "-3",
            "PID-",
            "PID-0",
            "PID-x",
            "PID-3[",
            "PID-3[0]",
            "PID-3.1.1.1",
            "PID-3..1",
            "PID-99999999999999999999",
        ] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn split_opt_semantics() {
        assert_eq!(split_opt("", Some('~')).count(), 0);
        assert_eq!(split_opt("a~b", Some('~')).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(split_opt("a~b", None).collect::<Vec<_>>(), ["a~b"]);
        assert_eq!(split_opt("~", Some('~')).collect::<Vec<_>>(), ["", ""]);
    }

    #[test]
    fn reencode_maps_roles() {
        let from = Delimiters {
            field: '#',
            component: '$',
            repetition: '*',
            escape: Some('!'),
            subcomponent: '%',
            truncation: None,
        };
        let to = Delimiters::default();
        assert_eq!(reencode("A$B%C*D!F!|^", &from, &to), r"A^B&C~D\F\\F\\S\");
    }
}
