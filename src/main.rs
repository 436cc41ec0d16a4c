//! The `cws-gateway` binary: parse the command line, run the command, turn any
//! error into one clear line on stderr and a non-zero exit. The command
//! line, its output formats and the tools (`bench`, `demo`) live here, in
//! the binary, not in the gateway library.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cli;

/// glibc's malloc gives each busy thread its own arena (up to 8 per core);
/// JSON bodies allocated on one thread and freed on another stay parked in
/// those arenas. Measured with `bench ingest --runs 1 --messages 10000` on
/// the 2-core machine: 325 MiB peak RSS with the default arenas, 67 MiB
/// with `MALLOC_ARENA_MAX=2`, at the same throughput (2,690 vs 2,528 msg/s
/// send-and-wait, within noise); mimalloc as global allocator gave 180–213
/// MiB. glibc reads the variable only when the process starts, so the
/// binary re-executes itself once with it set — unless the operator set it
/// (any value wins) or set `CWSGW_KEEP_MALLOC=1`. `exec` keeps the pid, so
/// supervisors and `kill` are unaffected. Non-glibc platforms ignore it.
#[cfg(target_os = "linux")]
fn cap_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("CWSGW_KEEP_MALLOC").is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only on failure; then carry on with the default arenas.
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", "2")
        .exec();
    eprintln!("note: running with glibc's default malloc arenas (re-exec failed: {err})");
}

#[cfg(not(target_os = "linux"))]
fn cap_malloc_arenas() {}

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    cli::main()
}
