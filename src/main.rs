//! The `divert` binary: parse arguments, run, map errors to exit codes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    divert::cli::main()
}
