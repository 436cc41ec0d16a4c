//! The `cws-gateway` binary: parse the command line, run the command, turn any
//! error into one clear line on stderr and a non-zero exit.

fn main() -> std::process::ExitCode {
    cws_gateway::cli::main()
}
