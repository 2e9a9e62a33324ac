//! Assembling the image with buildah: its root filesystem and its configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    buildah, copy_file, make_dir, output, run_status, set_owner_mode, storage_flags, write_file, Image, Options,
    BINARY, CACHE_DIR, CONFIG_DIR, PLUGIN_DIR, PORT, UID,
};
use crate::{cargo, plugins, root, target_dir, Result, RELEASE_HOST};

pub(super) fn make_image(options: &Options) -> Result<Image> {
    crate::packages::ensure_installed(&[("buildah", "buildah")], "building the image")?;
    if options.build {
        plugins(&[])?;
        cargo(&RELEASE_HOST)?;
    }
    let binary = target_dir().join("release/idgate");
    let plugin_dir = target_dir().join("plugins");
    if !binary.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask build` (or drop --no-build)",
            binary.display()
        ));
    }
    let version = output(Command::new(&binary).arg("--version"))?
        .split_whitespace()
        .last()
        .unwrap_or("0.0.0")
        .to_string();
    let plugins = wasm_files(&plugin_dir)?;
    if plugins.is_empty() {
        return Err(format!(
            "no plugins in {}: run `cargo xtask plugins`",
            plugin_dir.display()
        ));
    }
    let libraries = shared_objects(&binary)?;
    let name = format!("{}:{version}", options.tag);
    // The image this name pointed at before, removed once the new one has the name: each
    // build would otherwise leave a 37 MB untagged image behind.
    let previous = output(buildah(&storage_flags()?).args(["images", "--quiet", "--no-trunc", &name]))
        .map(|ids| ids.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default();

    let storage = storage_flags()?;
    let container = output(buildah(&storage).args(["from", "--name", "idgate-image-build", "scratch"]))
        .or_else(|_| {
            // A working container left by an interrupted run holds the name: remove it, retry once.
            let _ = buildah(&storage)
                .args(["rm", "idgate-image-build"])
                .stdout(Stdio::null())
                .status();
            output(buildah(&storage).args(["from", "--name", "idgate-image-build", "scratch"]))
        })?
        .trim()
        .to_string();
    let assembled = (|| -> Result {
        let mount = PathBuf::from(output(buildah(&storage).args(["mount", &container]))?.trim());
        fill_root(&mount, &binary, &plugin_dir, &plugins, &libraries)?;
        configure(&storage, &container, &version)?;
        run_status(buildah(&storage).args(["umount", &container]).stdout(Stdio::null()))?;
        run_status(
            buildah(&storage)
                .args(["commit", "--rm", "--quiet", &container, &name])
                .stdout(Stdio::null()),
        )?;
        run_status(buildah(&storage).args(["tag", &name, &format!("{}:latest", options.tag)]))
    })();
    if assembled.is_err() {
        let _ = buildah(&storage)
            .args(["rm", &container])
            .stdout(Stdio::null())
            .status();
    }
    assembled?;
    let current = output(buildah(&storage).args(["images", "--quiet", "--no-trunc", &name]))?;
    if !previous.is_empty() && previous != current.lines().next().unwrap_or("").trim() {
        let _ = buildah(&storage)
            .args(["rmi", &previous])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    let archive_dir = target_dir().join("image");
    std::fs::create_dir_all(&archive_dir).map_err(|e| format!("creating {}: {e}", archive_dir.display()))?;
    let archive = archive_dir.join(format!("idgate-{version}.oci.tar"));
    let _ = std::fs::remove_file(&archive);
    run_status(
        buildah(&storage)
            .args([
                "push",
                "--quiet",
                &name,
                &format!("oci-archive:{}:{name}", archive.display()),
            ])
            .stdout(Stdio::null()),
    )?;
    let size = output(buildah(&storage).args(["images", "--format", "{{.Size}}", &name]))?
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let archive_bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "image {name}: {} ({} plugins, {} shared objects); archive {} ({:.1} MiB)",
        size.trim(),
        plugins.len(),
        libraries.len(),
        archive.display(),
        archive_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(Image {
        name,
        version,
        libraries,
        plugins,
    })
}

/// The image's root: the binary, the loader and libraries it links, the plugins, the cache
/// directory and the few files of `/etc` a process expects. Written directly into the
/// mounted root (we are root here), so owners and modes are exactly what is set below and
/// nothing of this machine's umask or `/etc` leaks in.
fn fill_root(mount: &Path, binary: &Path, plugin_dir: &Path, plugins: &[String], libraries: &[String]) -> Result {
    // The root itself and every directory on the way to the binary, the plugins and the
    // cache: root-owned and 0755, as the trust walk from `/` requires.
    set_owner_mode(mount, 0, 0o755)?;
    for dir in [
        "etc",
        "usr",
        "usr/local",
        "usr/local/bin",
        "usr/local/lib",
        "usr/local/lib/idgate",
        "var",
        "var/cache",
        &PLUGIN_DIR[1..],
        &CONFIG_DIR[1..],
    ] {
        make_dir(&mount.join(dir), 0, 0o755)?;
    }
    // The service user's own, private: compiled plugins are native code, so only that
    // user may write them (a read-only root makes it a mount point; see `deploy/`).
    make_dir(&mount.join(&CACHE_DIR[1..]), UID, 0o700)?;

    copy_file(binary, &mount.join(&BINARY[1..]), 0o755)?;
    for name in plugins {
        copy_file(&plugin_dir.join(name), &mount.join(&PLUGIN_DIR[1..]).join(name), 0o644)?;
    }
    for library in libraries {
        let dest = mount.join(library.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            let mut dir = mount.to_path_buf();
            for part in parent.strip_prefix(mount).unwrap_or(Path::new("")).components() {
                dir.push(part);
                make_dir(&dir, 0, 0o755)?;
            }
        }
        // The file's contents (a link on this machine is followed): in the image each
        // library sits at the very path the binary's loader and run path look for it.
        copy_file(Path::new(library), &dest, 0o755)?;
    }

    // No shell, so `nologin` is a name only; home `/nonexistent` gives idgate no default
    // cache under a home (the image sets IDGATE_CACHE_DIR instead).
    write_file(
        &mount.join("etc/passwd"),
        &format!("root:x:0:0:root:/root:/sbin/nologin\nidgate:x:{UID}:{UID}:idgate:/nonexistent:/sbin/nologin\n"),
    )?;
    write_file(&mount.join("etc/group"), &format!("root:x:0:\nidgate:x:{UID}:\n"))?;
    write_file(
        &mount.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    Ok(())
}

/// The image's configuration: who runs what, with which environment.
fn configure(storage: &[String], container: &str, version: &str) -> Result {
    let revision = output(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(root()))
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let created = output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let labels = [
        "org.opencontainers.image.title=idgate".to_string(),
        "org.opencontainers.image.description=Authenticates cloud workspace agents by their machine's instance identity"
            .to_string(),
        format!("org.opencontainers.image.version={version}"),
        format!("org.opencontainers.image.revision={revision}"),
        format!("org.opencontainers.image.created={}", created.trim()),
        "org.opencontainers.image.licenses=see the repository's LICENSE".to_string(),
        format!("io.idgate.plugins={PLUGIN_DIR}"),
        format!("io.idgate.cache={CACHE_DIR}"),
    ];
    let mut cmd = buildah(storage);
    cmd.arg("config")
        // Numeric, so a runtime's runAsNonRoot check can verify it without reading /etc/passwd.
        .args(["--user", &format!("{UID}:{UID}")])
        .args(["--entrypoint", &format!("[\"{BINARY}\", \"serve\"]")])
        // Nothing by default after `serve`; `podman run IMAGE --flag` appends to it.
        .args(["--cmd", ""])
        .args(["--workingdir", "/"])
        .args(["--port", &format!("{PORT}/tcp")])
        // What `serve` drains on (README: SIGTERM fails /readyz first, then stops).
        .args(["--stop-signal", "SIGTERM"])
        .args(["--env", &format!("IDGATE_PLUGINS={PLUGIN_DIR}")])
        .args(["--env", &format!("IDGATE_CACHE_DIR={CACHE_DIR}")])
        // A container's loopback is its own: listen where the runtime's port mapping reaches.
        .args(["--env", &format!("IDGATE_LISTEN=0.0.0.0:{PORT}")])
        // Machine-read logs by default; `pretty` stays one env var away.
        .args(["--env", "IDGATE_LOG_FORMAT=json"])
        .args(["--env", "HOME=/nonexistent"]);
    for label in &labels {
        cmd.args(["--label", label]);
    }
    cmd.arg(container);
    run_status(&mut cmd)
}

/// The shared objects `ldd` says the binary loads, by absolute path, the loader included
/// (`linux-vdso.so.1` is the kernel's, with no file).
fn shared_objects(binary: &Path) -> Result<Vec<String>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    let mut found = Vec::new();
    for line in listing.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("ldd {}: {line}", binary.display()));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.push(path.to_string());
        }
    }
    if found.is_empty() {
        // A static binary: nothing to copy.
        eprintln!("{}: statically linked", binary.display());
    }
    Ok(found)
}

fn wasm_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    names.sort();
    Ok(names)
}
