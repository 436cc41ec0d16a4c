//! The shape of the tree, checked like behaviour (run with the other tests;
//! no network, no build tools, only the files):
//!
//! - the root crate's top-level modules import only downward: `src/lib.rs`
//!   declares them lowest layer first, and a module may import only modules
//!   declared before it — so there are no cycles among them;
//! - the pure crates depend on nothing that does IO (an allow-list);
//! - every crate denies `unwrap()`/`expect()` outside tests;
//! - every invariant in `ARCHITECTURE.md` names a test that exists;
//! - nothing in the repository points at documents outside it.
//!
//! To see the module graph these checks read, run
//! `cargo test --test tidy -- --nocapture print_module_graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every file under `dir` whose name ends with one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                files(&p, exts, out);
            }
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(p);
        }
    }
}

/// The top-level modules of `src/lib.rs`, in declaration order.
fn declared_modules() -> Vec<String> {
    read(&repo().join("src/lib.rs"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// Code without comments and without `#[cfg(test)] mod tests { … }` (tests
/// may reach anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `crate::x` paths in `code` (also inside `crate::{x, y::z}` groups).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// Module → the other top-level modules its non-test code imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = declared_modules();
    let known: BTreeSet<&str> = mods.iter().map(String::as_str).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &mods {
        let mut paths = Vec::new();
        let file = repo().join("src").join(format!("{m}.rs"));
        if file.exists() {
            paths.push(file);
        }
        files(&repo().join("src").join(m), &[".rs"], &mut paths);
        assert!(!paths.is_empty(), "module {m} has no source file");
        let deps = graph.entry(m.clone()).or_default();
        for p in paths {
            for r in crate_refs(&code_of(&read(&p))) {
                if r != *m && known.contains(r.as_str()) {
                    deps.insert(r);
                }
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_import_only_downward() {
    let order = declared_modules();
    assert!(order.len() > 10, "src/lib.rs declares too few modules");
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let graph = module_graph();
    let mut upward = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if rank[d.as_str()] > rank[m.as_str()] {
                upward.push(format!(
                    "{m} imports {d}, which src/lib.rs declares after it"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward imports (move the shared piece down, or the module up):\n{}",
        upward.join("\n")
    );
}

#[test]
fn print_module_graph() {
    // Printed for review (`-- --nocapture`); the check is the test above.
    let graph = module_graph();
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    println!("{} modules, {edges} import edges", graph.len());
    for (m, deps) in &graph {
        let lines = {
            let mut paths = Vec::new();
            let file = repo().join("src").join(format!("{m}.rs"));
            if file.exists() {
                paths.push(file);
            }
            files(&repo().join("src").join(m), &[".rs"], &mut paths);
            paths.iter().map(|p| read(p).lines().count()).sum::<usize>()
        };
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m:<12} {lines:>6} lines  -> {}", deps.join(" "));
    }
}

/// `[dependencies]` names of a manifest (not dev-dependencies).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = read(manifest);
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps && !l.is_empty() && !l.starts_with('#') {
            if let Some((name, _)) = l.split_once('=') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

#[test]
fn the_pure_crates_depend_on_nothing_that_does_io() {
    // Data formats, time, errors and hashing: nothing that opens a socket,
    // a database or a runtime.
    const ALLOWED: &[&str] = &[
        "serde",
        "serde_json",
        "serde_yaml",
        "serde_path_to_error",
        "thiserror",
        "chrono",
        "uuid",
        "csv",
        "memchr",
        "encoding_rs",
        "percent-encoding",
        "sha2",
        "hex",
        "hl7v2",
    ];
    for c in ["hl7v2", "mapping", "program", "consent"] {
        let manifest = repo().join("crates").join(c).join("Cargo.toml");
        for d in dependencies(&manifest) {
            assert!(
                ALLOWED.contains(&d.as_str()),
                "crates/{c} depends on {d}, which is not on the pure crates' allow-list"
            );
        }
    }
}

#[test]
fn every_crate_denies_unwrap_and_expect_outside_tests() {
    let mut roots = vec![repo().join("src/lib.rs")];
    for c in fs::read_dir(repo().join("crates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let lib = c.path().join("src/lib.rs");
        if lib.exists() {
            roots.push(lib);
        }
    }
    for lib in roots {
        let text = read(&lib);
        assert!(
            text.contains("deny(clippy::unwrap_used, clippy::expect_used)"),
            "{} does not deny clippy::unwrap_used and clippy::expect_used outside tests",
            lib.display()
        );
    }
}

/// Every `fn name` in the Rust sources of the tree.
fn function_names() -> BTreeSet<String> {
    let mut paths = Vec::new();
    for d in ["src", "crates", "tests"] {
        files(&repo().join(d), &[".rs"], &mut paths);
    }
    let mut out = BTreeSet::new();
    for p in paths {
        let text = read(&p);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("fn ") {
            rest = &rest[i + 3..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_invariant_names_a_test_that_exists() {
    let text = read(&repo().join("ARCHITECTURE.md"));
    let start = text
        .find("\n## Invariants")
        .expect("ARCHITECTURE.md has an Invariants section");
    let section = &text[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len());
    let section = &section[..end];
    let fns = function_names();
    let mut items = Vec::new();
    let mut current = String::new();
    for line in section.lines().skip(1) {
        if line.starts_with("- ") {
            if !current.is_empty() {
                items.push(std::mem::take(&mut current));
            }
            current.push_str(line);
        } else if !current.is_empty() {
            current.push(' ');
            current.push_str(line.trim());
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    assert!(
        items.len() >= 10,
        "too few invariants found: {}",
        items.len()
    );
    for item in items {
        let Some(i) = item.find("Test:") else {
            panic!("this invariant names no test (`Test: name`):\n{item}");
        };
        let named: Vec<String> = item[i..]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|s| s.rsplit("::").next().unwrap_or(s).to_string())
            .collect();
        assert!(!named.is_empty(), "no `test_name` after Test: in\n{item}");
        for n in named {
            assert!(
                fns.contains(&n),
                "ARCHITECTURE.md names test {n}, which does not exist"
            );
        }
    }
}

#[test]
fn nothing_points_at_documents_outside_the_repository() {
    let mut paths = Vec::new();
    for d in [
        "src",
        "crates",
        "tests",
        "docs",
        "mappings",
        "conformance",
        "config",
        "profiles",
        "scripts",
        "examples",
    ] {
        files(
            &repo().join(d),
            &[".rs", ".md", ".yaml", ".toml", ".csv", ".json", ".sh"],
            &mut paths,
        );
    }
    for f in ["README.md", "ARCHITECTURE.md", "Cargo.toml"] {
        paths.push(repo().join(f));
    }
    // Built from pieces so this file does not match itself.
    let outside = [
        format!("../{}", "shared"),
        format!("{}.md", "DESIGN"),
        format!("{}.md", "DOMAIN"),
        format!("{}.md", "STYLE"),
        format!("{}/", "seeds"),
    ];
    let mut found = Vec::new();
    for p in paths {
        let Ok(text) = fs::read_to_string(&p) else {
            continue;
        };
        for o in &outside {
            if text.contains(o.as_str()) {
                found.push(format!("{}: {o}", p.display()));
            }
        }
        // Relative Markdown links must resolve inside the repository.
        if p.extension().is_some_and(|e| e == "md") {
            let dir = p.parent().unwrap_or(Path::new("."));
            let mut rest = text.as_str();
            while let Some(i) = rest.find("](") {
                rest = &rest[i + 2..];
                let target: String = rest.chars().take_while(|c| *c != ')').collect();
                let target = target.split('#').next().unwrap_or("").trim();
                let path_like = target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "./_-".contains(c));
                if target.is_empty() || !path_like {
                    continue;
                }
                if !dir.join(target).exists() {
                    found.push(format!(
                        "{}: link to {target}, which does not exist",
                        p.display()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}
