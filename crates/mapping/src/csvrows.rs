//! The rows of the terminology CSVs (concept maps, ICD-10 ranges), read with
//! the `csv` crate: RFC 4180 quotes, CRLF or LF, `#` comment lines and blank
//! lines skipped. A row's line number counts every line of the file (the
//! `csv` crate's own count skips blank lines, so it is taken from the byte
//! offset). A field may not span lines: in these one-line-per-row files that
//! is an unterminated quote.

/// One non-comment, non-blank row and the 1-based line it starts on.
pub(crate) struct Row {
    pub line: usize,
    pub fields: csv::StringRecord,
}

/// The rows of `text`, in order; `Err((line, why))` ends the iteration.
pub(crate) fn rows(text: &str) -> impl Iterator<Item = Result<Row, (usize, &'static str)>> + '_ {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    // Newlines counted up to `seen` (bytes), incrementally: linear overall.
    let (mut seen, mut line) = (0usize, 1usize);
    let mut line_at = move |to: usize| {
        let to = to.min(text.len());
        if to > seen {
            line += text
                .as_bytes()
                .get(seen..to)
                .unwrap_or_default()
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            seen = to;
        }
        line
    };
    let byte = |p: Option<&csv::Position>| {
        p.map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX))
    };
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        let mut rec = csv::StringRecord::new();
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                done = true;
                return Some(Err((line_at(byte(e.position())), "not a CSV row")));
            }
        }
        // The record's position is where the reader started, before the
        // blank and comment lines it skipped: skip them here too.
        let mut start = byte(rec.position());
        while let Some(rest) = text.get(start..).filter(|r| !r.is_empty()) {
            start += if rest.starts_with('#') {
                rest.find('\n').map_or(rest.len(), |i| i + 1)
            } else if rest.starts_with("\r\n") {
                2
            } else if rest.starts_with(['\n', '\r']) {
                1
            } else {
                break;
            };
        }
        let line = line_at(start);
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if rec.iter().any(|f| f.contains(['\n', '\r'])) {
            done = true;
            return Some(Err((line, "unterminated quote")));
        }
        return Some(Ok(Row { line, fields: rec }));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_every_line() {
        let text = "h,x\r\n# a \"quoted\" comment\r\n\r\n  \n\"a,b\",c\n\nd,\"e\n";
        let mut it = rows(text);
        assert_eq!(it.next().unwrap().ok().unwrap().line, 1);
        let r = it.next().unwrap().ok().unwrap();
        assert_eq!((r.line, &r.fields[0], &r.fields[1]), (5, "a,b", "c"));
        assert_eq!(it.next().unwrap().err(), Some((7, "unterminated quote")));
        assert!(it.next().is_none());
    }
}
