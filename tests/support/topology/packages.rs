//! Debian packages installed when missing: the ones the HA topology runs on,
//! and (through `xtask`) the container tools `cargo xtask image` needs.
//!
//! Standard library only, so that `xtask` can compile this file into itself
//! (`#[path = "../../tests/support/topology/packages.rs"] mod packages;`)
//! without depending on the test support crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The Debian packages, each with the command that shows it is installed.
pub const PACKAGES: [(&str, &str); 3] = [("patroni", "patroni"), ("etcd-server", "etcd"), ("haproxy", "haproxy")];

/// Where a command is: `PATH`, then the system directories (`haproxy` is in
/// `/usr/sbin`, which a normal user's `PATH` may lack).
pub fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The packages of `wanted` (`(package, command)` pairs) whose command is not installed.
fn missing<'a>(wanted: &[(&'a str, &str)]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|(_, command)| find_command(command).is_none())
        .map(|(package, _)| *package)
        .collect()
}

/// Installs whichever of [`PACKAGES`] are missing ([`ensure_installed`]).
///
/// The packages start no service here (nothing listens on their default
/// ports where `policy-rc.d` forbids it, as in containers); the topology uses
/// ports of its own anyway.
pub fn ensure_packages() -> Result<(), String> {
    ensure_installed(&PACKAGES, "the HA topology")
}

/// Installs the packages of `wanted` (`(package, command)` pairs) whose
/// command is missing, with `apt-get install -y -qq` (non-interactive),
/// running `apt-get update` first when the first attempt fails (a fresh
/// machine has no package lists). Does nothing when all are present. Needs
/// root to install; as another user, a missing package is an error that says
/// what `needed_by` needs.
pub fn ensure_installed(wanted: &[(&str, &str)], needed_by: &str) -> Result<(), String> {
    // Two callers in one process would race on dpkg's lock.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing = missing(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions (declared here to stay std-only).
    if unsafe { geteuid() } != 0 {
        return Err(format!(
            "{needed_by} needs {} (`apt-get install {}` as root)",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    eprintln!("installing {} for {needed_by}", missing.join(" "));
    if apt_install(&missing).is_err() {
        apt(&["update", "-qq"])?;
        apt_install(&missing)?;
    }
    let still = self::missing(wanted);
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("apt-get installed {} but not their commands", still.join(", ")))
    }
}

extern "C" {
    fn geteuid() -> u32;
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)
}

fn apt(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        // Another apt-get (a colleague's, CI's) may hold the lock: wait for it rather than fail.
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
    }
}
