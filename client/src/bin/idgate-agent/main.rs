//! `idgate-agent`: the command-line face of [`idgate_client`].
//!
//! stdout carries the session token and nothing else; everything meant for a
//! person goes to stderr, and never holds the credential or the token.

mod args;
mod exec;
mod output;
mod setup;

use std::io::Write;
use std::process::ExitCode;

use args::{Command, TokenArgs};
use idgate_client::Error;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match args::parse(std::env::args_os().skip(1), &env) {
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("idgate-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Token(a)) => match token(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Err(message) => {
            eprintln!("idgate-agent: {message}\nTry 'idgate-agent --help'.");
            ExitCode::from(2)
        }
    }
}

/// `idgate-agent token`: exchange, then hand the token on.
fn token(a: Box<TokenArgs>) -> Result<(), Error> {
    let exchanger = setup::exchanger(&a)?;
    let token = exchanger.exchange()?;
    if let Some(path) = &a.output_file {
        output::write_token_file(path, token.expose())
            .map_err(|e| Error::Config(format!("cannot write the token to {}: {e}", path.display())))?;
    }
    if !a.command.is_empty() {
        // Only returns if the command could not be started.
        return Err(exec::exec_with_token(&a.command, &token));
    }
    // The token goes to stdout unless it went elsewhere: cloud-init and CI
    // keep a job's stdout in logs, and a file or a child is the safer route.
    if a.output_file.is_none() {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", token.expose())
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::Config(format!("cannot write the token to stdout: {e}")))?;
    }
    Ok(())
}

fn fail(e: &Error) -> ExitCode {
    match e {
        Error::Unreachable(_) => eprintln!("idgate-agent: gave up: {e}"),
        _ => eprintln!("idgate-agent: {e}"),
    }
    ExitCode::from(e.exit_code() as u8)
}
