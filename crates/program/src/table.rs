//! The rows of the program's CSV tables (the holiday calendar, the aid
//! codes), read with the `csv` crate: RFC 4180 quotes, CRLF or LF, `#`
//! comment lines and blank lines skipped. Rows may have more fields than the
//! header (`flexible`): the tables' last column is free text that may hold
//! an unquoted comma, and the caller joins the rest back.

/// One non-comment, non-blank row with its 1-based line number in the text.
pub(crate) struct Row {
    pub line: usize,
    pub fields: csv::StringRecord,
}

/// The rows of `text`, in order; `Err(line)` for a row the reader rejects.
/// Line numbers count every line of the text (the `csv` crate's own count
/// skips blank lines, so they are taken from the byte offset instead): a
/// row's number is that of its first line.
pub(crate) fn rows(text: &str) -> impl Iterator<Item = Result<Row, usize>> + '_ {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    // Newlines counted up to `seen` (bytes), incrementally: linear overall.
    let (mut seen, mut line) = (0usize, 1usize);
    let mut line_at = move |byte: u64| {
        let to = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
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
                return Some(Err(e.position().map_or(0, |p| line_at(p.byte()))));
            }
        }
        // The record's position is where the reader started, before the
        // blank and comment lines it skipped: skip them here too.
        let mut start = rec
            .position()
            .map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX));
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
        let line = line_at(start as u64);
        if rec.get(0).unwrap_or_default().trim().starts_with('#')
            || rec.iter().all(|f| f.trim().is_empty())
        {
            continue;
        }
        return Some(Ok(Row { line, fields: rec }));
    })
}

/// Fields `from..` joined with `,` (the free-text last column).
pub(crate) fn rest(rec: &csv::StringRecord, from: usize) -> String {
    rec.iter().skip(from).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_every_line() {
        let text = "# a \"quoted\" comment\r\n\r\nh,x\n\n  \n\"a\nb\",c\nd,e,f, g\n";
        let got: Vec<(usize, Vec<String>)> = rows(text)
            .map(|r| {
                let r = r.unwrap();
                (r.line, r.fields.iter().map(str::to_string).collect())
            })
            .collect();
        assert_eq!(got[0], (3, vec!["h".to_string(), "x".to_string()]));
        assert_eq!(got[1].0, 6);
        assert_eq!(got[1].1, ["a\nb", "c"]);
        assert_eq!(got[2].0, 8);
        let rec = rows(text).nth(2).unwrap().unwrap().fields;
        assert_eq!(rest(&rec, 1), "e,f, g");
    }
}
