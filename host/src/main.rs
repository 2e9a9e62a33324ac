//! The `idgate` binary.

fn main() -> std::process::ExitCode {
    idgate::cli::main()
}
