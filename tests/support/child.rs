//! What the support code's child processes share: dying with the test
//! process, and the directories of test processes that are gone.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Sets the parent-death signal on `cmd`'s child (`signal` when the test
/// process dies), and refuses to start it if the parent is already gone.
/// Call it after any uid switch is configured: a switch clears the signal,
/// and `pre_exec` closures run after it.
pub fn die_with_parent(cmd: &mut Command, signal: i32) {
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("test process exited"));
            }
            Ok(())
        });
    }
}

/// Whether process `pid` exists (ours or another user's).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes for the process.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Removes the directories `<prefix><pid>` (or `<prefix><pid>-…`) in `tmp`
/// whose test process no longer runs: its servers went with it, its files
/// did not.
pub fn remove_stale_dirs(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
