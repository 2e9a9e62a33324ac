//! `-- COMMAND...`: replace this process with the command, the token in
//! `CODER_AGENT_TOKEN` (what Coder's agent reads). `exec` rather than a child:
//! signals, the exit status and the PID (for a supervisor) are the command's own.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use idgate_client::{Error, Secret};

/// Execs `command` with the token in its environment; returns only on failure to start it.
pub fn exec_with_token(command: &[OsString], token: &Secret) -> Error {
    let Some((program, args)) = command.split_first() else {
        return Error::Config("no command to run after `--`".into());
    };
    let e = Command::new(program)
        .args(args)
        .env("CODER_AGENT_TOKEN", token.expose())
        .exec();
    Error::Config(format!("cannot run {:?}: {e}", program.to_string_lossy()))
}
