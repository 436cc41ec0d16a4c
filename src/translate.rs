//! `cws-gateway translate`: offline translation, the same code path the
//! gateway's worker runs, without a store or a network.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Utc};

use crate::api::operation_outcome;
use crate::config::Config;
use crate::processor::{JobOutcome, Translator};

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

/// The organization id an offline translation attributes a message to: the
/// configured `adt_source` listing its MSH-4, else `adt-source`.
fn source_for(cfg: &Config, raw: &[u8], opts: &hl7v2::ParseOptions) -> (String, Option<String>) {
    let parsed = hl7v2::parse(raw, opts);
    let facility = parsed
        .message
        .as_ref()
        .map(|m| m.header().sending_facility)
        .unwrap_or_default();
    match cfg.adt_source_for_facility(&facility) {
        Some(o) => (o.id.clone(), None),
        None => ("adt-source".to_string(), Some(facility)),
    }
}

pub struct Offline {
    translator: Translator,
    received_at: DateTime<Utc>,
    opts: hl7v2::ParseOptions,
}

impl Offline {
    pub fn new(cfg: Config, received_at: DateTime<Utc>) -> anyhow::Result<Offline> {
        let cfg = Arc::new(cfg);
        let engine = crate::serve::load_engine(&cfg)?;
        let opts = hl7v2::ParseOptions {
            default_charset: cfg.default_charset(),
            ..hl7v2::ParseOptions::default()
        };
        Ok(Offline {
            translator: Translator::new(cfg, engine),
            received_at,
            opts,
        })
    }

    pub fn translate(&self, raw: &[u8]) -> Result<serde_json::Value, String> {
        let (org, _) = source_for(&self.translator.cfg, raw, &self.opts);
        match self.translator.translate_adt(raw, &org, &self.received_at) {
            Ok(b) => Ok(b),
            Err(JobOutcome::Failed { code, location }) => Err(match location {
                Some(l) => format!("{code} at {l}"),
                None => code,
            }),
            Err(_) => Err("translation did not finish".into()),
        }
    }
}

/// Split a batch file into messages: MLLP frames when it holds a start block,
/// else groups of non-empty lines separated by blank lines.
pub fn split_batch(data: &[u8], max_frame: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut out = Vec::new();
    if data.contains(&hl7v2::mllp::START) {
        let mut dec = hl7v2::mllp::FrameDecoder::new(max_frame);
        dec.push(data);
        // A frame left open at the end of the file is still a message.
        let mut tail_fix = false;
        loop {
            match dec.next_event() {
                Some(hl7v2::mllp::FrameEvent::Frame(f)) => out.push(Ok(f)),
                Some(hl7v2::mllp::FrameEvent::Oversize { len, .. }) => {
                    out.push(Err(format!("frame of {len} bytes exceeds {max_frame}")))
                }
                Some(hl7v2::mllp::FrameEvent::Garbage { .. }) => {}
                None => {
                    if dec.in_frame() && !tail_fix {
                        dec.push(&[hl7v2::mllp::END, hl7v2::mllp::CR]);
                        tail_fix = true;
                        continue;
                    }
                    break;
                }
            }
        }
        return out;
    }
    let mut current: Vec<u8> = Vec::new();
    for line in lines(data) {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if !current.is_empty() {
                out.push(Ok(std::mem::take(&mut current)));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(b'\r');
        }
        current.extend_from_slice(line);
    }
    if !current.is_empty() {
        out.push(Ok(current));
    }
    out
}

/// Lines separated by CR, LF or CRLF (CRLF counts once).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|b| *b == b'\r' || *b == b'\n')
            .unwrap_or(rest.len());
        let (line, tail) = rest.split_at(end);
        let skip = if tail.starts_with(b"\r\n") {
            2
        } else {
            usize::from(!tail.is_empty())
        };
        rest = tail.get(skip..).unwrap_or(&[]);
        Some(line)
    })
}

pub fn run_single(off: &Offline, input: &str) -> anyhow::Result<()> {
    let raw = read_input(input, 16 * 1024 * 1024)?;
    let bundle = off.translate(&raw).map_err(|e| anyhow!("{input}: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &bundle)?;
    writeln!(stdout)?;
    Ok(())
}

pub fn run_batch(off: &Offline, input: &Path) -> anyhow::Result<(usize, usize)> {
    let data = read_input(&input.display().to_string(), 1024 * 1024 * 1024)?;
    let messages = split_batch(&data, 16 * 1024 * 1024);
    let total = messages.len();
    let progress = std::io::stderr().is_terminal();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut ok, mut failed) = (0usize, 0usize);
    for (i, m) in messages.into_iter().enumerate() {
        let line = match m.and_then(|raw| off.translate(&raw)) {
            Ok(bundle) => {
                ok += 1;
                bundle
            }
            Err(e) => {
                failed += 1;
                operation_outcome("error", "invalid", &format!("message {}: {e}", i + 1), None)
            }
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        if progress && (i + 1) % 500 == 0 {
            eprint!("\r{}/{} messages", i + 1, total);
        }
    }
    out.flush()?;
    if progress {
        eprintln!("\r{total}/{total} messages");
    }
    eprintln!("translated {ok}, failed {failed}");
    Ok((ok, failed))
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

    #[test]
    fn splits_mllp_batches() {
        let mut data = hl7v2::mllp::frame(b"MSH|a\rPID|1");
        data.extend(hl7v2::mllp::frame(b"MSH|b\rPID|2"));
        let got = split_batch(&data, 1024);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap(), b"MSH|b\rPID|2");
    }
}
