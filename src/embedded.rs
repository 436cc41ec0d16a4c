//! What is built into the binary so that it runs from any directory with
//! only a configuration file: the shipped `mappings/` tree (mapping YAML,
//! concept maps, terminology, aid codes, holidays, patient precedence), and
//! the mapping engine loaded from it or from `[mappings] dir`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::config::Config;

/// The shipped `mappings/` tree (mapping YAML, concept maps, aid codes,
/// holidays) as built into the binary: the default when `[mappings] dir` is
/// not set. The directory in the checkout stays the source of truth.
pub static MAPPINGS: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/mappings");

/// How `check-config` and errors name the built-in mappings.
pub const EMBEDDED_MAPPINGS: &str = "mappings (built in)";

fn embedded_files<'a>(dir: &'a include_dir::Dir<'a>, out: &mut Vec<(&'a Path, &'a str)>) {
    for e in dir.entries() {
        match e {
            include_dir::DirEntry::Dir(d) => embedded_files(d, out),
            include_dir::DirEntry::File(f) => {
                if let Some(text) = f.contents_utf8() {
                    out.push((f.path(), text));
                }
            }
        }
    }
}

/// One line for a mapping load error: the file (and where in it) and why.
fn mapping_error(e: &mapping::MappingError) -> String {
    if e.path.is_empty() {
        format!("{}: {}", e.file.display(), e.reason)
    } else {
        format!("{}: {}: {}", e.file.display(), e.path, e.reason)
    }
}

/// The mapping engine: from `mappings.dir` when configured, else the
/// built-in tree. A failure is one line naming `mappings.dir` and the path.
pub fn load_engine(cfg: &Config) -> anyhow::Result<Arc<mapping::Engine>> {
    let engine = match &cfg.mappings.dir {
        Some(dir) => {
            if let Err(e) = std::fs::read_dir(dir) {
                bail!(
                    "mappings.dir {}: cannot read the directory: {e}",
                    dir.display()
                );
            }
            mapping::Engine::load(dir)
                .map_err(|e| anyhow!("mappings.dir {}: {}", dir.display(), mapping_error(&e)))?
        }
        None => {
            let mut files = Vec::new();
            embedded_files(&MAPPINGS, &mut files);
            mapping::Engine::load_files(Path::new(EMBEDDED_MAPPINGS), files)
                .map_err(|e| anyhow!("built-in mappings: {}", mapping_error(&e)))?
        }
    };
    Ok(Arc::new(engine))
}
