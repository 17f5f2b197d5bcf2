//! The `tailpass` binary: parses the command line and hands over to the
//! library (`tailpass::cli`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tailpass::cli::main()
}
