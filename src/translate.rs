//! `cws-gateway translate`: offline translation, the same code path the
//! gateway's worker runs, without a store or a network.

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::Config;
use crate::edge::operation_outcome;
use crate::sources::adt::worker::{JobOutcome, Translator};

/// Read a file, or stdin for `-`, bounded.
pub fn read_input(path: &str, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path == "-" {
        std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
        f.take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {path}"))?;
    }
    if buf.len() > limit {
        bail!("{path}: input larger than {limit} bytes");
    }
    Ok(buf)
}

/// The organization id and name an offline translation attributes a message
/// to: the configured `adt_source` listing its MSH-4, else `adt-source`.
fn source_of<'c>(cfg: &'c Config, msg: &hl7v2::Message) -> (&'c str, &'c str) {
    match cfg.adt_source_for_facility(&msg.header().sending_facility) {
        Some(o) => (o.id.as_str(), o.name.as_str()),
        None => ("adt-source", "adt-source"),
    }
}

pub struct Offline {
    translator: Translator,
    received_at: DateTime<Utc>,
    /// `received_at` as the mappings stamp it (RFC 3339, seconds).
    received: String,
    sensitivity: mapping::Sensitivity,
    opts: hl7v2::ParseOptions,
}

impl Offline {
    pub fn new(cfg: Config, received_at: DateTime<Utc>) -> anyhow::Result<Offline> {
        let cfg = Arc::new(cfg);
        let engine = crate::embedded::load_engine(&cfg)?;
        let opts = hl7v2::ParseOptions {
            default_charset: cfg.default_charset(),
            ..hl7v2::ParseOptions::default()
        };
        Ok(Offline {
            sensitivity: cfg.sensitivity(),
            translator: Translator::new(cfg, engine),
            received: received_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            received_at,
            opts,
        })
    }

    /// One message → its Bundle as a `serde_json::Value` (the worker's
    /// `Translator::translate_adt`).
    pub fn translate(&self, raw: &[u8]) -> Result<serde_json::Value, String> {
        let parsed = hl7v2::parse(raw, &self.opts);
        let org = match &parsed.message {
            Some(m) => source_of(&self.translator.cfg, m).0,
            None => "adt-source",
        };
        match self.translator.translate_adt(raw, org, &self.received_at) {
            Ok(b) => Ok(b),
            Err(JobOutcome::Failed { code, location }) => Err(match location {
                Some(l) => format!("{code} at {l}"),
                None => code,
            }),
            Err(_) => Err("translation did not finish".into()),
        }
    }

    /// One message → its Bundle's JSON appended to `out`: the engine's
    /// serialized fast path, one parse, no `Value`. The bytes equal
    /// `serde_json::to_vec` of [`Offline::translate`]'s Bundle.
    pub fn translate_into(&self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let parsed = hl7v2::parse(raw, &self.opts);
        let Some(msg) = parsed.message else {
            return Err("unparseable".into());
        };
        let (org_id, org_name) = source_of(&self.translator.cfg, &msg);
        let ctx = mapping::AdtContext {
            canonical_base: &self.translator.cfg.server.canonical_base,
            source_org_id: org_id,
            source_org_name: org_name,
            received_at: &self.received,
            sensitivity: &self.sensitivity,
        };
        self.translator
            .engine
            .translate_adt_into(&msg, &ctx, out)
            .map_err(|e| match e.location {
                Some(l) => format!("{} at {l}", e.code),
                None => e.code.to_string(),
            })
    }
}

/// Largest message of a batch; a larger one is reported failed and skipped.
pub const MAX_BATCH_MESSAGE: usize = 16 * 1024 * 1024;

/// Reads the messages of a batch one at a time from a buffered reader, so
/// memory stays flat in the input size: MLLP frames when the input starts
/// (after whitespace) with the start block `0x0B`, else groups of non-empty
/// lines (CR, LF or CRLF) separated by blank lines, joined with CR.
pub struct BatchReader<R> {
    input: R,
    max: usize,
    mode: Option<Mode>,
    /// Bytes consumed from `input` (for progress).
    consumed: u64,
    /// Blank-line mode: a CR ended the last line, so a LF right after it
    /// belongs to it.
    skip_lf: bool,
    eof: bool,
}

enum Mode {
    Mllp(Box<hl7v2::mllp::FrameDecoder>),
    Lines,
}

impl<R: BufRead> BatchReader<R> {
    pub fn new(input: R, max_message: usize) -> Self {
        BatchReader {
            input,
            max: max_message,
            mode: None,
            consumed: 0,
            skip_lf: false,
            eof: false,
        }
    }

    /// Bytes read from the input so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next message into `msg` (cleared first): `Ok(Some(Ok(())))`, a
    /// message that cannot be used (`Ok(Some(Err(why)))`), or the end.
    pub fn next_into(&mut self, msg: &mut Vec<u8>) -> std::io::Result<Option<Result<(), String>>> {
        msg.clear();
        if self.mode.is_none() {
            let buf = self.input.fill_buf()?;
            let first = buf.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if first.is_none() && !buf.is_empty() {
                // Only whitespace so far: skip it and look again.
                let n = buf.len();
                self.input.consume(n);
                self.consumed += n as u64;
                return self.next_into(msg);
            }
            self.mode = Some(if first == Some(hl7v2::mllp::START) {
                Mode::Mllp(Box::new(hl7v2::mllp::FrameDecoder::new(self.max)))
            } else {
                Mode::Lines
            });
        }
        match self.mode {
            Some(Mode::Mllp(_)) => self.next_frame(msg),
            _ => self.next_lines(msg),
        }
    }

    fn next_frame(&mut self, msg: &mut Vec<u8>) -> std::io::Result<Option<Result<(), String>>> {
        use hl7v2::mllp::{FrameEvent, CR, END};
        let Some(Mode::Mllp(dec)) = &mut self.mode else {
            return Ok(None);
        };
        loop {
            match dec.next_event() {
                Some(FrameEvent::Frame(f)) => {
                    *msg = f;
                    return Ok(Some(Ok(())));
                }
                Some(FrameEvent::Oversize { len, .. }) => {
                    return Ok(Some(Err(format!(
                        "frame of {len} bytes exceeds {}",
                        self.max
                    ))))
                }
                Some(FrameEvent::Garbage { .. }) => continue,
                None => {}
            }
            if self.eof {
                // A frame left open at the end of the input is still a message.
                if dec.in_frame() {
                    dec.push(&[END, CR]);
                    continue;
                }
                return Ok(None);
            }
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                self.eof = true;
                continue;
            }
            dec.push(buf);
            let n = buf.len();
            self.input.consume(n);
            self.consumed += n as u64;
        }
    }

    fn next_lines(&mut self, msg: &mut Vec<u8>) -> std::io::Result<Option<Result<(), String>>> {
        let mut oversize = 0usize;
        loop {
            // One line, appended to `msg` after a CR joining it to the last.
            let start = msg.len();
            if !msg.is_empty() {
                msg.push(b'\r');
            }
            let (ended, over) = self.read_line(msg)?;
            oversize += over;
            let blank = over == 0
                && msg
                    .get(start..)
                    .unwrap_or(&[])
                    .iter()
                    .all(|b| b.is_ascii_whitespace());
            if !blank {
                // A last line without a line end: the next read finds the end.
                continue;
            }
            msg.truncate(start);
            if oversize > 0 {
                let len = msg.len() + oversize;
                msg.clear();
                return Ok(Some(Err(format!(
                    "message of {len} bytes exceeds {}",
                    self.max
                ))));
            }
            if !msg.is_empty() {
                return Ok(Some(Ok(())));
            }
            if !ended {
                return Ok(None);
            }
        }
    }

    /// Append one line (without its end) to `msg`, keeping `msg` within the
    /// limit: whether a line end was read (else the input ended) and how
    /// many bytes did not fit.
    fn read_line(&mut self, msg: &mut Vec<u8>) -> std::io::Result<(bool, usize)> {
        let mut over = 0usize;
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Ok((false, over));
            }
            if std::mem::take(&mut self.skip_lf) && buf.first() == Some(&b'\n') {
                self.input.consume(1);
                self.consumed += 1;
                continue;
            }
            let (take, used, ended) = match memchr::memchr2(b'\r', b'\n', buf) {
                Some(i) => {
                    self.skip_lf = buf.get(i) == Some(&b'\r');
                    (i, i + 1, true)
                }
                None => (buf.len(), buf.len(), false),
            };
            let part = buf.get(..take).unwrap_or(&[]);
            if over == 0 && msg.len() + part.len() <= self.max {
                msg.extend_from_slice(part);
            } else {
                over += part.len();
            }
            self.input.consume(used);
            self.consumed += used as u64;
            if ended {
                return Ok((true, over));
            }
        }
    }
}

/// Split a batch held in memory: the messages [`BatchReader`] reads from it
/// (the splitter's tests; the CLI streams).
#[cfg(test)]
fn split_batch(data: &[u8], max_frame: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut r = BatchReader::new(data, max_frame);
    let mut out = Vec::new();
    let mut msg = Vec::new();
    while let Ok(Some(m)) = r.next_into(&mut msg) {
        out.push(m.map(|()| std::mem::take(&mut msg)));
    }
    out
}

pub fn run_single(off: &Offline, input: &str) -> anyhow::Result<()> {
    let raw = read_input(input, 16 * 1024 * 1024)?;
    let bundle = off.translate(&raw).map_err(|e| anyhow!("{input}: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &bundle)?;
    writeln!(stdout)?;
    Ok(())
}

/// Messages translated and failed by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub ok: usize,
    pub failed: usize,
}

/// Messages translated per thread and round; a round also stops at
/// [`ROUND_BYTES`] of input, so memory stays bounded by both.
const ROUND_MESSAGES: usize = 512;
const ROUND_BYTES: usize = 8 * 1024 * 1024;

/// Translate a batch from `input` to NDJSON on `output`, streaming: a round
/// of at most `threads` × 512 messages (and 8 MiB) is read, translated on
/// `threads` threads (each its own slice, into its own buffer) and written
/// in input order, so the output is the same for any thread count. A failed
/// message becomes an `OperationOutcome` line naming its position (no input
/// values). `progress(bytes read, messages done)` runs after each round.
///
/// Writing overlaps translating: a writer thread writes round k while round
/// k + 1 is translated (two sets of round buffers, so memory stays bounded).
/// The output is ~10× the input (a 700-byte message is a ~7 KB Bundle), and
/// written between rounds it kept every translating thread idle for the
/// write.
pub fn translate_batch<R: BufRead, W: Write + Send>(
    off: &Offline,
    input: R,
    output: W,
    threads: usize,
    mut progress: impl FnMut(u64, usize),
) -> anyhow::Result<BatchCounts> {
    let threads = threads.max(1);
    let mut reader = BatchReader::new(input, MAX_BATCH_MESSAGE);
    let mut counts = BatchCounts { ok: 0, failed: 0 };
    let mut msgs: Vec<(Vec<u8>, Result<(), String>)> = Vec::new();
    // Rounds translated and waiting to be written, and buffers written and
    // free again: two sets in all.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(1);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<Vec<u8>>>();
    for _ in 0..2 {
        // The receiver is alive: cannot fail.
        let _ = free_tx.send(vec![Vec::new(); threads]);
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<()> {
            let mut out = BufWriter::with_capacity(256 * 1024, output);
            for mut bufs in full_rx {
                for buf in bufs.iter_mut() {
                    out.write_all(buf)?;
                    buf.clear();
                    if buf.capacity() > 4 * ROUND_BYTES {
                        *buf = Vec::new();
                    }
                }
                let _ = free_tx.send(bufs);
            }
            out.flush()
        });
        let read = (|| -> anyhow::Result<()> {
            loop {
                let (mut n, mut bytes) = (0usize, 0usize);
                while n < threads * ROUND_MESSAGES && bytes < ROUND_BYTES {
                    if n == msgs.len() {
                        msgs.push((Vec::new(), Ok(())));
                    }
                    let Some(slot) = msgs.get_mut(n) else { break };
                    match reader.next_into(&mut slot.0).context("reading the batch")? {
                        Some(r) => {
                            slot.1 = r;
                            bytes += slot.0.len();
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                // The writer stopped (a write failed): its error is reported below.
                let Ok(mut outs) = free_rx.recv() else {
                    return Ok(());
                };
                let first = counts.ok + counts.failed;
                let round = msgs.get(..n).unwrap_or(&[]);
                let per = if n < 64 { n } else { n.div_ceil(threads) };
                let done: Vec<(usize, usize)> = std::thread::scope(|s| {
                    let mut parts = round.chunks(per).zip(outs.iter_mut()).enumerate();
                    let head = parts.next();
                    let handles: Vec<_> = parts
                        .map(|(k, (part, buf))| {
                            s.spawn(move || translate_part(off, part, first + k * per, buf))
                        })
                        .collect();
                    let mut done = Vec::with_capacity(threads);
                    if let Some((_, (part, buf))) = head {
                        done.push(translate_part(off, part, first, buf));
                    }
                    for h in handles {
                        // A panicking translation is a bug; count its part as failed.
                        done.push(h.join().unwrap_or((0, 0)));
                    }
                    done
                });
                for (ok, failed) in done {
                    counts.ok += ok;
                    counts.failed += failed;
                }
                if full_tx.send(outs).is_err() {
                    return Ok(());
                }
                for m in msgs.iter_mut() {
                    if m.0.capacity() > 1024 * 1024 {
                        m.0 = Vec::new();
                    }
                }
                progress(reader.consumed(), counts.ok + counts.failed);
            }
        })();
        drop(full_tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the batch writer thread panicked"))?;
        // A write error first: a closed pipe is what stopped the reading.
        written?;
        read
    })?;
    Ok(counts)
}

/// Translate `part` (messages `first + 1 …` of the batch) into `buf`, one
/// NDJSON line each: (translated, failed).
fn translate_part(
    off: &Offline,
    part: &[(Vec<u8>, Result<(), String>)],
    first: usize,
    buf: &mut Vec<u8>,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for (i, (msg, status)) in part.iter().enumerate() {
        let mark = buf.len();
        match status.clone().and_then(|()| off.translate_into(msg, buf)) {
            Ok(()) => {
                ok += 1;
                buf.push(b'\n');
            }
            Err(e) => {
                failed += 1;
                buf.truncate(mark);
                let text = format!("message {}: {e}", first + i + 1);
                let oo = operation_outcome("error", "invalid", &text, None);
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *buf, &oo);
                buf.push(b'\n');
            }
        }
    }
    (ok, failed)
}

/// `translate --kind adt --batch FILE|-`: NDJSON on stdout, a progress bar
/// on stderr when it is a terminal, the counts on stderr at the end.
/// `threads` = 0: one per available core (at most 8).
pub fn run_batch(off: &Offline, input: &Path, threads: usize) -> anyhow::Result<BatchCounts> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        n => n,
    };
    let stdin = input == Path::new("-");
    let (reader, len): (Box<dyn Read>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let bar = match len {
        Some(len) => indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {binary_bytes}/{binary_total_bytes} {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stdout = std::io::stdout();
    let counts = translate_batch(
        off,
        BufReader::with_capacity(256 * 1024, reader),
        stdout,
        threads,
        |bytes, n| {
            bar.set_position(bytes);
            bar.set_message(format!("{n} messages"));
        },
    )?;
    bar.finish_and_clear();
    eprintln!("translated {}, failed {}", counts.ok, counts.failed);
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_blank_line_batches_with_any_separator() {
        let data = b"MSH|a\rPID|1\r\rMSH|b\nPID|2\n\nMSH|c\r\nPID|3\r\n";
        let got: Vec<_> = split_batch(data, 1024)
            .into_iter()
            .map(|m| m.unwrap())
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], b"MSH|a\rPID|1");
        assert_eq!(got[2], b"MSH|c\rPID|3");
    }

    /// Every buffer size (down to one byte) splits alike: line ends, CRLF
    /// and frames cut across reads.
    #[test]
    fn streaming_splits_alike_for_any_buffer_size() {
        let lines = b"\n\nMSH|a\r\nPID|1\r\n\r\n  \nMSH|b\rPID|2\r\rMSH|c\nPID|3".to_vec();
        let mut framed = hl7v2::mllp::frame(b"MSH|a\rPID|1");
        framed.extend(b"junk");
        framed.extend(hl7v2::mllp::frame(b"MSH|b\rPID|2"));
        framed.extend(b"\x0bMSH|c\rPID|3");
        for data in [lines, framed] {
            for cap in [1, 2, 3, 7, 64, 8192] {
                let mut r =
                    BatchReader::new(std::io::BufReader::with_capacity(cap, &data[..]), 1024);
                let mut got = Vec::new();
                let mut msg = Vec::new();
                while let Some(m) = r.next_into(&mut msg).unwrap() {
                    m.unwrap();
                    got.push(String::from_utf8(msg.clone()).unwrap());
                }
                assert_eq!(
                    got,
                    ["MSH|a\rPID|1", "MSH|b\rPID|2", "MSH|c\rPID|3"],
                    "cap {cap}"
                );
                assert_eq!(r.consumed(), data.len() as u64);
            }
        }
    }

    #[test]
    fn oversize_messages_fail_and_the_rest_go_on() {
        let mut data = b"MSH|a\n".to_vec();
        data.extend(vec![b'x'; 100]);
        data.extend(b"\n\nMSH|b\n");
        let got = split_batch(&data, 64);
        assert_eq!(got.len(), 2);
        assert!(got[0].as_ref().unwrap_err().contains("exceeds 64"));
        assert_eq!(got[1].as_ref().unwrap(), b"MSH|b");
        let mut framed = hl7v2::mllp::frame(&[b'x'; 100]);
        framed.extend(hl7v2::mllp::frame(b"MSH|b"));
        let got = split_batch(&framed, 64);
        assert!(got[0].as_ref().unwrap_err().contains("exceeds 64"));
        assert_eq!(got[1].as_ref().unwrap(), b"MSH|b");
        assert!(split_batch(b" \r\n\t\n", 64).is_empty());
    }

    /// Any thread count writes the same lines in input order, and a failed
    /// message is numbered by its position in the whole batch.
    #[test]
    fn batch_output_is_the_same_for_any_thread_count() {
        let at = DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let off = Offline::new(Config::default(), at).unwrap();
        let mut input = Vec::new();
        for i in 0..1500u64 {
            if i == 1234 {
                input.extend_from_slice(b"not HL7\r\n\r\n");
            }
            input.extend_from_slice(cwsgw_scenario::sample::sample_adt(i).as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        let run = |threads| {
            let mut out = Vec::new();
            let counts = translate_batch(&off, &input[..], &mut out, threads, |_, _| {}).unwrap();
            (counts, out)
        };
        let (one, out1) = run(1);
        assert_eq!(
            one,
            BatchCounts {
                ok: 1500,
                failed: 1
            }
        );
        let (three, out3) = run(3);
        assert_eq!(three, one);
        assert!(out1 == out3, "outputs differ");
        let lines: Vec<&[u8]> = out1.split(|b| *b == b'\n').collect();
        let failed: serde_json::Value = serde_json::from_slice(lines[1234]).unwrap();
        assert_eq!(
            failed["issue"][0]["diagnostics"],
            "message 1235: unparseable"
        );
        let single = off
            .translate(cwsgw_scenario::sample::sample_adt(0).as_bytes())
            .unwrap();
        assert_eq!(lines[0], serde_json::to_vec(&single).unwrap());
    }

    #[test]
    fn splits_mllp_batches() {
        let mut data = hl7v2::mllp::frame(b"MSH|a\rPID|1");
        data.extend(hl7v2::mllp::frame(b"MSH|b\rPID|2"));
        let got = split_batch(&data, 1024);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap(), b"MSH|b\rPID|2");
    }
}
