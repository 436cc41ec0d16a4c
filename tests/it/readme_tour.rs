//! The README's tour, run as a reader would paste it: every ```sh block
//! between `<!-- tour -->` and `<!-- /tour -->` runs, in order, with bash
//! (`set -euo pipefail`) against a started demo gateway, from a directory
//! holding the checkout's `tests/` and `config/`. Each must exit 0, and the
//! ```text block that follows one lists lines its output must contain. The
//! demo listens on free loopback ports, handed to the blocks through the
//! variables the README itself uses (`GW_HTTP`, `GW_MLLP_PORT`);
//! `cargo run --release -- ARGS` runs the binary under test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One tour step: the shell text and the lines its output must contain.
#[derive(Debug)]
struct Step {
    script: String,
    expect: Vec<String>,
}

/// The ```sh blocks of the README's tour, each with the ```text block
/// right after it (if any).
fn tour(readme: &str) -> Vec<Step> {
    let start = readme
        .find("<!-- tour -->")
        .expect("README has <!-- tour -->");
    let end = readme
        .find("<!-- /tour -->")
        .expect("README has <!-- /tour -->");
    assert!(start < end, "the tour markers are in order");
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = readme[start..end].lines();
    while let Some(line) = lines.next() {
        let fence = line.trim();
        let kind = match fence {
            "```sh" => "sh",
            "```text" => "text",
            f if f.starts_with("```") => panic!("tour: unexpected fence {f}"),
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        match kind {
            "sh" => steps.push(Step {
                script: body.join("\n"),
                expect: Vec::new(),
            }),
            _ => {
                let step = steps
                    .last_mut()
                    .expect("a ```text block follows a ```sh block");
                assert!(step.expect.is_empty(), "one ```text block per ```sh block");
                step.expect = body
                    .iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
            }
        }
    }
    steps
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct Demo {
    child: Child,
    http: String,
    mllp_port: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `demo --config` with `config/demo.toml` moved to free loopback ports
/// (its mock endpoints too), its database under `dir`; ready once it has
/// replayed its sample traffic.
fn start_demo(dir: &Path) -> Demo {
    let mut conf = std::fs::read_to_string(repo().join("config/demo.toml")).expect("demo.toml");
    for (from, to) in [
        ("127.0.0.1:8080", "127.0.0.1:0".to_string()),
        ("127.0.0.1:2575", "127.0.0.1:0".to_string()),
        ("127.0.0.1:9101", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:9102", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:9201", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:9202", format!("127.0.0.1:{}", free_port())),
    ] {
        assert!(conf.contains(from), "demo.toml has {from}");
        conf = conf.replace(from, &to);
    }
    let path = dir.join("demo.toml");
    std::fs::write(&path, conf).expect("write demo.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .arg("demo")
        .arg("--config")
        .arg(&path)
        .current_dir(dir)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .env_remove("CWSGW_HTTP_ADDR")
        .env_remove("CWSGW_MLLP_ADDR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut demo = Demo {
        child,
        http: String::new(),
        mllp_port: String::new(),
    };
    // Generous: the demo replays its scenario on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the demo did not finish starting:\n{}",
            seen.join("\n")
        );
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("the demo exited ({status}):\n{}", seen.join("\n"));
            }
            continue;
        };
        if let Some(rest) = line.strip_prefix("listening http=") {
            let mut parts = rest.split_whitespace();
            demo.http = parts.next().unwrap_or_default().to_string();
            demo.mllp_port = parts
                .next()
                .and_then(|m| m.strip_prefix("mllp="))
                .and_then(|m| m.rsplit(':').next())
                .unwrap_or_default()
                .to_string();
        }
        let ready = line.starts_with("Serving until Ctrl-C");
        seen.push(line);
        if ready {
            break;
        }
    }
    assert!(
        !demo.http.is_empty() && !demo.mllp_port.is_empty(),
        "addresses: {}",
        seen.join("\n")
    );
    // Keep draining the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    demo
}

/// Run one step with bash, bounded in time: (exit code, stdout + stderr).
fn run_step(dir: &Path, demo: &Demo, script: &str) -> (Option<i32>, String) {
    // `cargo run --release -- ARGS` as the README writes it: the binary
    // under test (already built), so the tour does not rebuild anything.
    let prelude = r#"set -euo pipefail
cargo() {
  if [ "${1:-}" = run ] && [ "${2:-}" = --release ] && [ "${3:-}" = -- ]; then
    shift 3; "$CWSGW_TOUR_BIN" "$@"
  else
    echo "the tour may only use cargo run --release -- ARGS" >&2; return 2
  fi
}
"#;
    let out_path = dir.join(".step-output");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("clone");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}{script}\n"))
        .current_dir(dir)
        .env("GW_HTTP", &demo.http)
        .env("GW_MLLP_PORT", &demo.mllp_port)
        .env("CWSGW_TOUR_BIN", env!("CARGO_BIN_EXE_cws-gateway"))
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    let _ = std::fs::File::open(&out_path).and_then(|mut f| f.read_to_string(&mut text));
    (code, text)
}

#[test]
fn the_readme_tour_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    // The two set-up commands stay as they are.
    for setup in ["cargo run --release -- demo", "./scripts/test"] {
        assert!(readme.contains(setup), "README lost `{setup}`");
    }
    let steps = tour(&readme);
    assert!(steps.len() >= 4, "the tour has its steps: {steps:?}");
    assert!(
        steps.iter().filter(|s| !s.expect.is_empty()).count() >= 4,
        "most steps say what they print"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // The checkout's files the tour names, as seen from its root.
    for d in ["tests", "config"] {
        std::os::unix::fs::symlink(repo().join(d), dir.path().join(d)).expect("symlink");
    }
    let demo = start_demo(dir.path());
    for (i, step) in steps.iter().enumerate() {
        let (code, out) = run_step(dir.path(), &demo, &step.script);
        assert_eq!(
            code,
            Some(0),
            "tour step {} failed (None: timed out):\n{}\n--- output:\n{out}",
            i + 1,
            step.script
        );
        for want in &step.expect {
            assert!(
                out.contains(want.as_str()),
                "tour step {} does not print `{want}`:\n{}\n--- output:\n{out}",
                i + 1,
                step.script
            );
        }
    }
}

#[test]
fn tour_blocks_are_parsed_with_their_expectations() {
    let text = "intro\n```sh\nnot in the tour\n```\n<!-- tour -->\n```sh\necho a\n```\n\nprints:\n\n```text\na\n\n```\n```sh\ntrue\n```\n<!-- /tour -->\n";
    let steps = tour(text);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].script, "echo a");
    assert_eq!(steps[0].expect, vec!["a".to_string()]);
    assert_eq!(steps[1].script, "true");
    assert!(steps[1].expect.is_empty());
}
