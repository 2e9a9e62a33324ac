//! Which files idgate may trust to run: plugin `.wasm` files and compiled
//! (native-code) cache entries, and the directories holding them.
//!
//! Whoever can write a plugin decides who gets a session token, and whoever can
//! write a cache entry runs native code inside the host. So, as sshd's
//! `StrictModes` does for `authorized_keys`, a path is trusted only if it and every
//! directory above it are owned by idgate's user or root and are not writable by
//! group or others. A world-writable ancestor is tolerated only with the sticky
//! bit and owned by root (`/tmp`): there, other users cannot rename or replace
//! entries they do not own.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Refuses `dir` unless it is a directory that only idgate's user (or root) can
/// change, along with every directory above it.
pub fn check_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    check_path(dir, what, true)
}

/// Refuses `file` unless it is a regular file that only idgate's user (or root)
/// can change, in directories only they can change. Follows symbolic links and
/// checks where they lead.
pub fn check_file(file: &Path, what: &str) -> anyhow::Result<()> {
    check_path(file, what, false)
}

fn check_path(path: &Path, what: &str, directory: bool) -> anyhow::Result<()> {
    let real = path
        .canonicalize()
        .with_context(|| format!("{what} {}", path.display()))?;
    let meta = std::fs::metadata(&real).with_context(|| format!("{what} {}", path.display()))?;
    if directory && !meta.is_dir() {
        bail!("{what} {} is not a directory", path.display());
    }
    if !directory && !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    check_owner_and_mode(&real, &meta, what)?;
    check_ancestors(&real, what)
}

/// Creates `dir` (and missing parents) as `0700` if it does not exist, so the
/// compiled-plugin cache starts private.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

/// Writes `bytes` to `path` as a `0600` file: first to a fresh temporary file in
/// the same directory (never following a link someone placed there), then renamed
/// over `path`, so a reader never sees half an entry. The temporary name is one no
/// other writer uses, in this process or another, so two loads caching the same
/// entry at once never interleave in one file.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

fn check_owner_and_mode(path: &Path, meta: &Metadata, what: &str) -> anyhow::Result<()> {
    let me = effective_uid();
    let owner = meta.uid();
    if owner != me && owner != 0 {
        bail!(
            "{what} {} is owned by uid {owner}, not by idgate's user (uid {me}) or root: refusing to trust it",
            path.display()
        );
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER_WRITE != 0 {
        bail!(
            "{what} {} is writable by group or others (mode {:o}): refusing to trust it (chmod go-w)",
            path.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

fn check_ancestors(real: &Path, what: &str) -> anyhow::Result<()> {
    let me = effective_uid();
    let mut dir: Option<PathBuf> = real.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let meta = std::fs::metadata(&d).with_context(|| format!("checking {}", d.display()))?;
        let mode = meta.permissions().mode();
        let owner = meta.uid();
        let sticky_root = owner == 0 && mode & STICKY != 0;
        if (owner != me && owner != 0) || (mode & GROUP_OTHER_WRITE != 0 && !sticky_root) {
            bail!(
                "{what} {} lies under {}, which {} (owner uid {owner}, mode {:o}): refusing to trust it",
                real.display(),
                d.display(),
                if owner != me && owner != 0 {
                    "is owned by another user"
                } else {
                    "group or others can write"
                },
                mode & 0o7777
            );
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_directory_and_file_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        create_private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join("a.cwasm");
        write_private(&file, b"x").unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        check_dir(&dir, "plugin directory").unwrap();
        check_file(&file, "cache entry").unwrap();
    }

    #[test]
    fn group_or_other_writable_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        create_private_dir(&dir).unwrap();
        let file = dir.join("aws.wasm");
        std::fs::write(&file, b"x").unwrap();
        chmod(&file, 0o664);
        let e = check_file(&file, "plugin").unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") && e.contains("aws.wasm"),
            "{e}"
        );
        chmod(&file, 0o644);
        chmod(&dir, 0o777);
        let e = check_dir(&dir, "plugin directory").unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        // The file inherits the distrust of its directory.
        let e = check_file(&file, "plugin").unwrap_err().to_string();
        assert!(e.contains("group or others can write"), "{e}");
    }

    #[test]
    fn sticky_root_directories_are_tolerated_as_ancestors() {
        // The temporary directory (normally /tmp, 1777 root) is an ancestor here.
        let tmp = tempfile::tempdir().unwrap();
        check_dir(tmp.path(), "plugin directory").unwrap();
    }
}
