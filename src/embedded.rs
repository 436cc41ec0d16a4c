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

/// A data file of the mappings tree could not be read from `[mappings] dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: String,
    pub reason: String,
}

/// The text of the mappings tree's data file `file` (a path under the
/// tree, e.g. `referral/clr.toml`): `dir/{file}` when `dir` is given and
/// holds it, else the built-in copy; `Ok(None)` when neither has it. Every
/// table an analyst edits beside the mappings (case-event effects, patient
/// precedence, the referral vocabulary, the streamlined-authorization
/// table, care-team codes, compliance rules, RTF layouts) is read here.
pub fn mapping_file(
    dir: Option<&Path>,
    file: &str,
) -> Result<Option<std::borrow::Cow<'static, str>>, FileError> {
    if let Some(path) = dir.map(|d| d.join(file)).filter(|p| p.exists()) {
        return std::fs::read_to_string(&path)
            .map(|t| Some(t.into()))
            .map_err(|e| FileError {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
    }
    Ok(MAPPINGS
        .get_file(file)
        .and_then(|f| f.contents_utf8())
        .map(Into::into))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_file_comes_from_the_mappings_dir_else_the_built_in_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("referral")).unwrap();
        std::fs::write(dir.path().join("referral/clr.toml"), "edited").unwrap();
        let text = |d: Option<&Path>, f: &str| mapping_file(d, f).unwrap().map(|t| t.into_owned());
        assert_eq!(
            text(Some(dir.path()), "referral/clr.toml").as_deref(),
            Some("edited")
        );
        // Not in the directory: the built-in copy.
        let built_in = text(None, "case_event/effects.toml").unwrap();
        assert_eq!(
            text(Some(dir.path()), "case_event/effects.toml"),
            Some(built_in)
        );
        assert_eq!(text(Some(dir.path()), "referral/none.toml"), None);
        // A path there that cannot be read is named, not skipped.
        std::fs::create_dir_all(dir.path().join("rtf/default.toml")).unwrap();
        let e = mapping_file(Some(dir.path()), "rtf/default.toml").unwrap_err();
        assert!(e.path.ends_with("rtf/default.toml"), "{e:?}");
    }
}
