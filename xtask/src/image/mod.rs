//! `cargo xtask image [build | test | check-deploy] [OPTIONS]`: idgate's container image,
//! assembled with `buildah` from an empty root (no base image: this machine reaches no
//! registry, and an authentication service needs no shell).
//!
//! - `build` (the default) builds the release host and the plugins (as `cargo xtask build`),
//!   then the image `localhost/idgate:<version>` (also tagged `latest`) and an OCI archive
//!   of it, `target/image/idgate-<version>.oci.tar`, to load where no registry is at hand
//!   (`podman load -i`, `ctr -n k8s.io images import`, `kind load image-archive`).
//! - `test` builds, then checks what the image holds (user, entrypoint, environment, every
//!   file's owner and mode along the trust rules' paths) and, when this kernel lets `podman`
//!   run a container (see [`find_runner`](run::find_runner)), runs it read-only against a PostgreSQL cluster
//!   it starts on loopback (or `--database-url URL`) and checks `/healthz`, `/readyz`, a
//!   SIGHUP reload, the compiled-plugin cache and a clean stop on SIGTERM. What the kernel refused is printed
//!   with the runtime's own message and the run fails: a test that cannot run is not a pass.
//! - `check-deploy` validates `deploy/` (Kubernetes schemas, HAProxy, systemd): it runs
//!   `deploy/check.sh`.
//!
//! Options: `--no-build` uses `target/release/idgate` and `target/plugins/` as they are;
//! `--tag NAME` names the image (default `localhost/idgate`); `--database-url URL` (test).
//!
//! Why a glibc-dynamic binary plus exactly the libraries `ldd` lists, not a static (musl)
//! one, though a musl build works here (with Debian's musl-tools; measured in
//! `deploy/README.md`): the image then ships the very binary `cargo xtask build` made and
//! BENCHMARKS.md measured, with no second release build of the whole tree for another
//! target (15 min here on two shared cores), and without musl's allocator under
//! wasmtime's and tokio's allocation patterns. The cost is four small shared objects and the loader
//! (see `deploy/README.md` for the measurement). glibc's `files` and `dns` name services
//! are built into libc.so.6 since glibc 2.34, so resolving a database host name needs no
//! `libnss_*.so` loaded at run time; the image carries `nsswitch.conf` saying so.

mod build;
mod check;
mod postgres;
mod run;

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::{root, Result};
use build::make_image;
use check::{check_config, check_files};
use run::{find_runner, run_container};

/// The unprivileged user the container runs as: the number distroless images use, so it
/// collides with no distribution's system user on a host sharing the kernel's uid space.
const UID: u32 = 65532;
/// Where things live in the image. The plugin directory and every directory above it are
/// root's and 0755, the cache directory the service user's and 0700: what
/// `file_trust.rs` requires of each.
const BINARY: &str = "/usr/local/bin/idgate";
const PLUGIN_DIR: &str = "/usr/local/lib/idgate/plugins";
const CACHE_DIR: &str = "/var/cache/idgate";
const CONFIG_DIR: &str = "/etc/idgate";
const PORT: u16 = 3000;
/// The test's drain: long enough to see /readyz fail while serving goes on, short enough
/// for two runs.
const TEST_DRAIN_MS: u64 = 2000;

struct Options {
    build: bool,
    tag: String,
    database_url: Option<String>,
}

pub fn build(args: &[String]) -> Result {
    let mut action = "build";
    let mut options = Options {
        build: true,
        tag: "localhost/idgate".into(),
        database_url: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "build" | "test" | "check-deploy" => action = arg,
            "--no-build" => options.build = false,
            "--tag" => options.tag = it.next().ok_or("--tag needs a name")?.clone(),
            "--database-url" => options.database_url = Some(it.next().ok_or("--database-url needs a URL")?.clone()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask image [build|test|check-deploy] \
                     [--no-build] [--tag NAME] [--database-url URL]"
                ))
            }
        }
    }
    if action == "check-deploy" {
        return check_deploy();
    }
    let image = make_image(&options)?;
    if action == "test" {
        test_image(&image, &options)?;
    }
    Ok(())
}

/// `deploy/check.sh`: schema, HAProxy and systemd checks of the files under `deploy/`.
fn check_deploy() -> Result {
    run_status(
        Command::new("bash")
            .arg(root().join("deploy/check.sh"))
            .current_dir(root()),
    )
}

/// A built image: its name and the facts the test checks it against.
struct Image {
    name: String,
    version: String,
    /// Paths (in the image) of the shared objects copied in, as `ldd` named them.
    libraries: Vec<String>,
    plugins: Vec<String>,
}

// ---- the test -------------------------------------------------------------------------

fn test_image(image: &Image, options: &Options) -> Result {
    let storage = storage_flags()?;
    check_config(&storage, image)?;
    check_files(&storage, image)?;
    crate::packages::ensure_installed(&[("podman", "podman"), ("runc", "runc")], "the image's run test")?;
    match find_runner(&storage, &image.name)? {
        Err(refusals) => Err(format!(
            "the image's contents and configuration check out, but this machine refuses to run a \
             container, so the run test did not run: {refusals}"
        )),
        Ok(runner) => run_container(&runner, image, options),
    }
}

// ---- tools ----------------------------------------------------------------------------

/// `--storage-driver` for buildah and podman alike (they share root's container storage,
/// which must be opened with the driver it was made with). `overlay` when this kernel mounts
/// it, else `vfs` (full copies per layer: slower, works anywhere);
/// `IDGATE_IMAGE_STORAGE_DRIVER` overrides.
fn storage_flags() -> Result<Vec<String>> {
    let driver = match std::env::var("IDGATE_IMAGE_STORAGE_DRIVER") {
        Ok(d) if !d.is_empty() => d,
        _ => {
            let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if filesystems
                .lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
            {
                "overlay".to_string()
            } else {
                "vfs".to_string()
            }
        }
    };
    Ok(vec!["--storage-driver".into(), driver])
}

fn buildah(storage: &[String]) -> Command {
    let mut c = Command::new("buildah");
    c.args(storage);
    c
}

fn podman(storage: &[String]) -> Command {
    let mut c = Command::new("podman");
    c.args(storage);
    c
}

fn make_dir(path: &Path, uid: u32, mode: u32) -> Result {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", path.display())),
    }
    set_owner_mode(path, uid, mode)
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> Result {
    std::fs::copy(from, to).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    set_owner_mode(to, 0, mode)
}

fn write_file(path: &Path, text: &str) -> Result {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    set_owner_mode(path, 0, 0o644)
}

fn set_owner_mode(path: &Path, uid: u32, mode: u32) -> Result {
    chown(path, Some(uid), Some(uid)).map_err(|e| format!("chown {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_status(cmd: &mut Command) -> Result {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
