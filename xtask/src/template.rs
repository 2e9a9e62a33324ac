//! `examples/plugin-template` tested as a plugin author would: from a copy
//! that is its own cargo workspace, with plain `cargo test`.
//!
//! Where the copy goes matters: cargo reads `.cargo/config.toml` from every
//! ancestor of its working directory, and such a file can run programs
//! (`build.rustc-wrapper`, `target.*.runner`). A copy under `/tmp` would run
//! whatever any user of the machine put in `/tmp/.cargo/config.toml`, as
//! whoever runs the tests. So the copy is a fresh `0700` directory under the
//! workspace's target directory, every ancestor of which only this user or
//! root can write (checked, not assumed), created exclusively, and the
//! template's files are copied without following links.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, target_dir, Result};

/// `examples/plugin-template` built and tested as a plugin author would: from
/// a copy that is its own workspace (not idgate's: the template's manifest
/// says `[workspace]`), in a private directory (see the module comment), with
/// plain `cargo test` (which builds the
/// component with `cargo build --release --target wasm32-wasip2` and runs it
/// in the real sandbox through `idgate_sandbox::harness`). The copy's path
/// dependencies are rewritten to absolute paths into this checkout.
///
/// Why the workspace's Cargo.lock and target directory: with the same locked
/// versions, the same `[profile.*]` settings (the template repeats the root
/// Cargo.toml's) and the same features, cargo reuses the registry crates the
/// workspace build compiled, natively and for wasm32; only crates whose
/// features the template resolves differently, and the path crates (kit,
/// sandbox), whose build hashes include their path relative to the workspace
/// root, are compiled again. Measured on 2 cores after `cargo build
/// --workspace --all-targets`: the first run compiled 16 crates (46 while the
/// harness came with the whole server crate, `idgate`: sqlx, rustls, reqwest),
/// still about 4 minutes of CPU, because wasmtime and cranelift are among
/// them: the workspace's test dependencies add features beneath cranelift's
/// `sha2` (`cms`'s builder reaches `crypto-common`, `jsonwebtoken` `zeroize`)
/// that the template does not. Once those exist, 12 s, of which 8 s are the
/// component tests.
pub fn test_outside_the_workspace() -> Result {
    let source = root().join("examples/plugin-template");
    let copy = private_copy_dir()?;
    // Copied file by file, leaving out a `target/` an in-tree build may have left.
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let entries = fs::read_dir(source.join(&rel)).map_err(|e| format!("reading {}: {e}", rel.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", source.join(&rel).display()))?;
            let name = rel.join(entry.file_name());
            if name == Path::new("target") || name == Path::new("Cargo.lock") {
                continue;
            }
            // `file_type` is the entry's own (lstat): a link is never followed.
            let kind = entry
                .file_type()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            if kind.is_dir() {
                create_private_dir(&copy.join(&name))?;
                pending.push(name);
            } else if kind.is_file() {
                copy_file(&entry.path(), &copy.join(&name))?;
            } else {
                return Err(format!(
                    "{} is neither a file nor a directory: not copied",
                    entry.path().display()
                ));
            }
        }
    }
    // `path = "../../sandbox"` and the like, made absolute: the copy's own spelling
    // would point nowhere from the temporary directory.
    let manifest = copy.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    let (mut rewritten, mut rest, mut paths) = (String::new(), text.as_str(), 0);
    while let Some(at) = rest.find("path = \"") {
        let (before, after) = rest.split_at(at + "path = \"".len());
        let end = after
            .find('"')
            .ok_or("an unterminated path in the template's Cargo.toml")?;
        let target = source.join(&after[..end]);
        let absolute = target
            .canonicalize()
            .map_err(|e| format!("the template's path {} does not resolve: {e}", target.display()))?;
        rewritten.push_str(before);
        rewritten.push_str(&absolute.to_string_lossy());
        rest = &after[end..];
        paths += 1;
    }
    rewritten.push_str(rest);
    if paths == 0 {
        return Err("the template's Cargo.toml has no path dependency to rewrite".into());
    }
    fs::remove_file(&manifest).map_err(|e| format!("replacing {}: {e}", manifest.display()))?;
    write_new(&manifest, rewritten.as_bytes())?;
    copy_file(&root().join("Cargo.lock"), &copy.join("Cargo.lock"))?;

    eprintln!("+ (in {}) cargo test", copy.display());
    let started = std::time::Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("test")
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(&copy)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the plugin template's tests failed ({status}); the copy is kept in {}",
            copy.display()
        ));
    }
    eprintln!(
        "plugin template: built and tested outside the workspace in {:.0?}",
        started.elapsed()
    );
    fs::remove_dir_all(&copy).map_err(|e| format!("removing {}: {e}", copy.display()))
}

/// A fresh, empty `0700` directory for the copy: `<target>/plugin-template/<pid>`,
/// created exclusively (a leftover of an earlier run with the same pid is
/// removed first; `remove_dir_all` does not follow links), below ancestors
/// only this user or root can write.
fn private_copy_dir() -> Result<PathBuf> {
    let parent = target_dir().join("plugin-template");
    match fs::DirBuilder::new().mode(0o700).create(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", parent.display())),
    }
    let copy = parent.join(std::process::id().to_string());
    if fs::symlink_metadata(&copy).is_ok() {
        fs::remove_dir_all(&copy).map_err(|e| format!("removing {}: {e}", copy.display()))?;
    }
    create_private_dir(&copy)?;
    // Our own fresh directory tells us who we are (std has no geteuid).
    let me = fs::metadata(&copy)
        .map_err(|e| format!("{}: {e}", copy.display()))?
        .uid();
    only_writable_by(&copy, me)?;
    Ok(copy)
}

/// Refuses `dir` unless it and every ancestor are owned by `uid` or root and
/// writable by neither group nor others (a sticky `/tmp` included: anyone may
/// create `/tmp/.cargo` there).
pub fn only_writable_by(dir: &Path, uid: u32) -> Result {
    let real = dir
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    for at in real.ancestors() {
        let meta = fs::metadata(at).map_err(|e| format!("{}: {e}", at.display()))?;
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}: cargo would read a .cargo/config.toml another user may put there; \
                 set CARGO_TARGET_DIR to a directory only you or root can write",
                at.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by group or others (mode {:o}): cargo would read a .cargo/config.toml \
                 anyone may put there; set CARGO_TARGET_DIR to a directory only you or root can write",
                at.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Copies the regular file `from` (never through a link: the file opened must
/// be the one `lstat` saw) to a new file `to`.
fn copy_file(from: &Path, to: &Path) -> Result {
    let seen = fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut source = fs::File::open(from).map_err(|e| format!("opening {}: {e}", from.display()))?;
    let opened = source.metadata().map_err(|e| format!("{}: {e}", from.display()))?;
    if !seen.is_file() || (seen.dev(), seen.ino()) != (opened.dev(), opened.ino()) {
        return Err(format!("{} is not a plain file (a link?): not copied", from.display()));
    }
    let mut dest = new_file(to)?;
    std::io::copy(&mut source, &mut dest).map_err(|e| format!("copying {}: {e}", from.display()))?;
    Ok(())
}

fn write_new(to: &Path, bytes: &[u8]) -> Result {
    use std::io::Write;
    new_file(to)?
        .write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", to.display()))
}

/// A file created exclusively (`O_EXCL`: an existing file or link there is an error).
fn new_file(to: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| format!("creating {}: {e}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_may_write_is_refused_anywhere_above() {
        let base = target_dir().join("xtask-test-trust");
        let _ = fs::remove_dir_all(&base);
        let inner = base.join("a/b");
        fs::create_dir_all(&inner).unwrap();
        let me = fs::metadata(&inner).unwrap().uid();
        only_writable_by(&inner, me).unwrap();
        fs::set_permissions(base.join("a"), fs::Permissions::from_mode(0o777)).unwrap();
        let err = only_writable_by(&inner, me).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");
        // A sticky, world-writable directory (as /tmp) is refused too.
        fs::set_permissions(base.join("a"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(only_writable_by(&inner, me).is_err());
        // /tmp itself, where the copy used to go.
        assert!(only_writable_by(&std::env::temp_dir(), me).is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn links_are_not_copied_through() {
        let base = target_dir().join("xtask-test-links");
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join("real"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        assert!(copy_file(&base.join("link"), &base.join("out")).is_err());
        copy_file(&base.join("real"), &base.join("out")).unwrap();
        // The destination is never overwritten (nor written through a link).
        std::os::unix::fs::symlink(base.join("real"), base.join("planted")).unwrap();
        assert!(copy_file(&base.join("real"), &base.join("planted")).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
