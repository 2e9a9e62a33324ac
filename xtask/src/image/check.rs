//! What the committed image holds: its configuration and every file's owner and mode.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{buildah, output, Image, BINARY, CACHE_DIR, CONFIG_DIR, PLUGIN_DIR, PORT, UID};
use crate::Result;

/// User, entrypoint, environment and labels as the image records them.
pub(super) fn check_config(storage: &[String], image: &Image) -> Result {
    let field = |template: &str| -> Result<String> {
        Ok(
            output(buildah(storage).args(["inspect", "--type", "image", "--format", template, &image.name]))?
                .trim()
                .to_string(),
        )
    };
    let user = field("{{.OCIv1.Config.User}}")?;
    let entrypoint = field("{{.OCIv1.Config.Entrypoint}}")?;
    let env = field("{{range .OCIv1.Config.Env}}{{.}}\n{{end}}")?;
    let version = field("{{index .OCIv1.Config.Labels \"org.opencontainers.image.version\"}}")?;
    let stop = field("{{.OCIv1.Config.StopSignal}}")?;
    expect("user", &user, &format!("{UID}:{UID}"))?;
    expect("entrypoint", &entrypoint, &format!("[{BINARY} serve]"))?;
    expect("stop signal", &stop, "SIGTERM")?;
    expect("version label", &version, &image.version)?;
    for wanted in [
        format!("IDGATE_PLUGINS={PLUGIN_DIR}"),
        format!("IDGATE_CACHE_DIR={CACHE_DIR}"),
        format!("IDGATE_LISTEN=0.0.0.0:{PORT}"),
    ] {
        if !env.lines().any(|line| line == wanted) {
            return Err(format!("the image's environment {env} lacks {wanted}"));
        }
    }
    eprintln!(
        "image config: user {user}, entrypoint {entrypoint}, stop signal {stop}, env {}",
        env.lines().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// Every path the process and the trust walk touch, with its owner and mode, read from a
/// working container made from the committed image (so it checks what was committed).
pub(super) fn check_files(storage: &[String], image: &Image) -> Result {
    let container = output(buildah(storage).args(["from", "--pull-never", &image.name]))?
        .trim()
        .to_string();
    let checked = (|| -> Result {
        let mount = PathBuf::from(output(buildah(storage).args(["mount", &container]))?.trim());
        let mut wanted: Vec<(String, u32, u32)> = vec![
            ("/".into(), 0, 0o40755),
            ("/usr".into(), 0, 0o40755),
            ("/usr/local".into(), 0, 0o40755),
            ("/usr/local/bin".into(), 0, 0o40755),
            (BINARY.into(), 0, 0o100755),
            ("/usr/local/lib".into(), 0, 0o40755),
            ("/usr/local/lib/idgate".into(), 0, 0o40755),
            (PLUGIN_DIR.into(), 0, 0o40755),
            ("/var".into(), 0, 0o40755),
            ("/var/cache".into(), 0, 0o40755),
            (CACHE_DIR.into(), UID, 0o40700),
            ("/etc".into(), 0, 0o40755),
            ("/etc/passwd".into(), 0, 0o100644),
            (CONFIG_DIR.into(), 0, 0o40755),
        ];
        for p in &image.plugins {
            wanted.push((format!("{PLUGIN_DIR}/{p}"), 0, 0o100644));
        }
        for l in &image.libraries {
            wanted.push((l.clone(), 0, 0o100755));
        }
        let mut problems = Vec::new();
        for (path, uid, mode) in &wanted {
            let at = mount.join(path.trim_start_matches('/'));
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.uid() == *uid && m.gid() == *uid && m.mode() == *mode => {}
                // The layer records no entry for `/` itself: the storage driver gives the
                // root 0555, which the trust rules accept as well (root's, not writable).
                Ok(m) if path == "/" && m.uid() == 0 && m.mode() == 0o40555 => {}
                Ok(m) => problems.push(format!(
                    "{path}: owner {}:{} mode {:o}, wanted {uid}:{uid} {mode:o}",
                    m.uid(),
                    m.gid(),
                    m.mode()
                )),
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        // Nothing else: a file in the image that no check names is a file nobody meant.
        let mut extra = Vec::new();
        let mut pending = vec![mount.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
                let entry = entry.map_err(|e| e.to_string())?;
                let inside = format!("/{}", entry.path().strip_prefix(&mount).unwrap().display());
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    pending.push(entry.path());
                }
                let known = wanted.iter().any(|(p, _, _)| *p == inside)
                    || ["/etc/group", "/etc/nsswitch.conf"].contains(&inside.as_str())
                    || image.libraries.iter().any(|l| Path::new(l).starts_with(&inside));
                if !known {
                    extra.push(inside);
                }
            }
        }
        if !extra.is_empty() {
            problems.push(format!("unexpected files in the image: {}", extra.join(", ")));
        }
        let passwd = std::fs::read_to_string(mount.join("etc/passwd")).map_err(|e| e.to_string())?;
        if !passwd.lines().any(|l| l.starts_with(&format!("idgate:x:{UID}:{UID}:"))) {
            problems.push(format!("/etc/passwd has no idgate user {UID}: {passwd:?}"));
        }
        if problems.is_empty() {
            eprintln!(
                "image files: {} paths with the owners and modes the trust rules need, nothing else",
                wanted.len() + 2
            );
            Ok(())
        } else {
            Err(format!(
                "the image's files are not as built:\n  {}",
                problems.join("\n  ")
            ))
        }
    })();
    let _ = buildah(storage).args(["rm", &container]).stdout(Stdio::null()).status();
    checked
}

fn expect(what: &str, got: &str, wanted: &str) -> Result {
    if got == wanted {
        Ok(())
    } else {
        Err(format!("the image's {what} is {got:?}, wanted {wanted:?}"))
    }
}
