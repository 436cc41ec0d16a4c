//! Log output: `tracing` events to stderr, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line (`[log] format`, env
//! `CWSGW_LOG_FORMAT`). ANSI colour codes only when stderr is a terminal. The
//! format adds nothing to what call sites log (ids and counts, never PHI).
//!
//! Logging starts before the configuration is read (so that reading it can
//! log), and the file may then ask for the other format: both formatting
//! layers are installed, and a switch shared with their filters says which one
//! writes.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::subscriber::Interest;
use tracing::Subscriber;
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Filter, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, ENV_LOG_FORMAT};

/// Which format an installed subscriber writes; changes take effect at the
/// next event.
#[derive(Debug, Clone, Default)]
pub struct FormatSwitch {
    json: Arc<AtomicBool>,
}

impl FormatSwitch {
    pub fn new(format: LogFormat) -> FormatSwitch {
        let s = FormatSwitch::default();
        s.set(format);
        s
    }

    pub fn set(&self, format: LogFormat) {
        self.json
            .store(format == LogFormat::Json, Ordering::Relaxed);
    }

    pub fn get(&self) -> LogFormat {
        if self.json.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }

    /// A per-layer filter that lets events through while the switch is on
    /// `format`. Its interest is "sometimes": the decision is made per event,
    /// never cached per call site, so a switch after start takes effect.
    fn only<S: Subscriber>(&self, format: LogFormat) -> impl Filter<S> + Send + Sync + 'static {
        let switch = self.clone();
        DynFilterFn::new(move |_, _| switch.get() == format)
            .with_callsite_filter(|_| Interest::sometimes())
    }
}

/// The switch of the process-wide subscriber, once [`init_logging`] ran.
static INSTALLED: OnceLock<FormatSwitch> = OnceLock::new();

/// The subscriber [`init_logging`] installs, writing to `writer`: `filter`,
/// then a text layer (ANSI colours when `ansi`) and a JSON layer, of which
/// only the one `switch` names writes.
pub fn subscriber<W>(
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    switch: &FormatSwitch,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(switch.only(LogFormat::Text));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(false)
        .with_filter(switch.only(LogFormat::Json));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
}

/// Install the process-wide subscriber on stderr: `RUST_LOG` filter (default
/// `info`), the format of `CWSGW_LOG_FORMAT` (text without it), colours only
/// on a terminal. A second call changes nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let from_env = std::env::var(ENV_LOG_FORMAT).ok();
    let format = from_env
        .as_deref()
        .and_then(LogFormat::parse)
        .unwrap_or_default();
    let switch = FormatSwitch::new(format);
    let ansi = std::io::stderr().is_terminal();
    if subscriber(filter, std::io::stderr, ansi, &switch)
        .try_init()
        .is_ok()
    {
        let _ = INSTALLED.set(switch);
        if from_env.is_some_and(|v| LogFormat::parse(&v).is_none()) {
            tracing::warn!("{ENV_LOG_FORMAT} is neither text nor json; logging as text");
        }
    }
}

/// Switch the installed subscriber to `format` (the configuration's
/// `[log] format`, once read). Nothing happens before [`init_logging`].
pub fn set_log_format(format: LogFormat) {
    if let Some(s) = INSTALLED.get() {
        s.set(format);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    fn emit() {
        let span = tracing::info_span!("delivery", endpoint = "mcp-a");
        let _g = span.enter();
        tracing::info!(journal_id = 42, "translated");
        tracing::warn!(count = 3, "a message with \"quotes\"\nand a newline");
        tracing::debug!("filtered out");
    }

    #[test]
    fn json_is_one_object_per_line() {
        let buf = Buf::default();
        let switch = FormatSwitch::new(LogFormat::Json);
        let sub = subscriber(EnvFilter::new("info"), buf.clone(), true, &switch);
        tracing::subscriber::with_default(sub, emit);
        let out = buf.take();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let objs: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(objs[0]["level"], "INFO");
        assert_eq!(objs[0]["fields"]["message"], "translated");
        assert_eq!(objs[0]["fields"]["journal_id"], 42);
        assert_eq!(objs[0]["span"]["endpoint"], "mcp-a");
        assert!(objs[0]["timestamp"].is_string());
        assert_eq!(objs[1]["level"], "WARN");
        assert_eq!(
            objs[1]["fields"]["message"],
            "a message with \"quotes\"\nand a newline"
        );
        assert!(!out.contains('\x1b'), "no ANSI codes in JSON: {out:?}");
    }

    #[test]
    fn text_has_colours_only_when_asked_and_the_switch_applies_at_once() {
        for ansi in [false, true] {
            let buf = Buf::default();
            let switch = FormatSwitch::new(LogFormat::Text);
            let sub = subscriber(EnvFilter::new("info"), buf.clone(), ansi, &switch);
            tracing::subscriber::with_default(sub, || {
                emit();
                let text = buf.take();
                assert!(text.contains("translated"), "{text}");
                assert!(
                    serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap())
                        .is_err()
                );
                assert_eq!(text.contains('\x1b'), ansi, "{text:?}");
                // The configuration asks for JSON after start: the same call
                // sites now write JSON lines, and back.
                switch.set(LogFormat::Json);
                emit();
                let json = buf.take();
                assert_eq!(json.lines().count(), 2, "{json}");
                for l in json.lines() {
                    serde_json::from_str::<serde_json::Value>(l).unwrap();
                }
                switch.set(LogFormat::Text);
                emit();
                assert!(buf.take().lines().next().unwrap().contains("translated"));
            });
        }
    }
}
