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
//!   run a container (see [`find_runner`]), runs it read-only against a PostgreSQL cluster
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

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{cargo, plugins, root, target_dir, Result, RELEASE_HOST};

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

fn make_image(options: &Options) -> Result<Image> {
    ensure_commands(&[("buildah", "buildah")])?;
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

// ---- the test -------------------------------------------------------------------------

fn test_image(image: &Image, options: &Options) -> Result {
    let storage = storage_flags()?;
    check_config(&storage, image)?;
    check_files(&storage, image)?;
    ensure_commands(&[("podman", "podman"), ("runc", "runc")])?;
    match find_runner(&storage, &image.name)? {
        Err(refusals) => Err(format!(
            "the image's contents and configuration check out, but this machine refuses to run a \
             container, so the run test did not run: {refusals}"
        )),
        Ok(runner) => run_container(&runner, image, options),
    }
}

/// User, entrypoint, environment and labels as the image records them.
fn check_config(storage: &[String], image: &Image) -> Result {
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
fn check_files(storage: &[String], image: &Image) -> Result {
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

/// How podman can start a container here: its global flags (storage, runtime) and `run`
/// flags (limits). Tried in order, from podman's defaults to what this sandbox allows; each
/// refusal is printed with the runtime's own words (deploy/README.md records them).
///
/// Why each step: podman asks for `nofile` 1048576 and a large `nproc` by default, and
/// raising a hard limit needs CAP_SYS_RESOURCE, which a sandboxed root may lack; so the
/// second try asks for this process's own hard `nofile` and 4096 tasks (idgate runs a
/// few dozen threads). crun refuses cgroup v1 hierarchies beside a cgroup2 mount that has
/// controllers ("hybrid"), which runc accepts: the third try uses runc.
struct Runner {
    global: Vec<String>,
    run: Vec<String>,
}

fn find_runner(storage: &[String], image: &str) -> Result<std::result::Result<Runner, String>> {
    let nofile = hard_nofile();
    let limits = vec![
        "--ulimit".to_string(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".to_string(),
        "nproc=4096:4096".to_string(),
    ];
    let mut runc = storage.to_vec();
    runc.extend(["--runtime".to_string(), "runc".to_string()]);
    let tries = [
        ("podman's defaults", storage.to_vec(), vec![]),
        ("limits within this process's own", storage.to_vec(), limits.clone()),
        ("runc, limits within this process's own", runc, limits),
    ];
    let mut refusals = Vec::new();
    for (what, global, run) in tries {
        let out = Command::new("podman")
            .args(&global)
            .args(["run", "--rm", "--network", "host"])
            .args(&run)
            .args(["--entrypoint", BINARY, image, "--version"])
            .output()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if out.status.success() {
            eprintln!(
                "podman run works here with {what}: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            return Ok(Ok(Runner { global, run }));
        }
        let refusal = format!(
            "{what}: exit {}: {}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        eprintln!("podman run refused ({refusal})");
        refusals.push(refusal);
    }
    Ok(Err(refusals.join("; ")))
}

/// The hard RLIMIT_NOFILE of this process (`/proc/self/limits`), 1024 if unreadable.
fn hard_nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(1024)
}

/// The container as operators run it, twice: first as `deploy/README.md` runs it with
/// podman (read-only root, the cache on a private tmpfs the service user owns), then as
/// `deploy/kubernetes/` runs it (read-only root and no volume at all for the cache, which
/// then stays the image's own read-only directory). Host networking on loopback, the
/// configuration mounted read-only, no capabilities, no privilege escalation.
fn run_container(runner: &Runner, image: &Image, options: &Options) -> Result {
    let work = target_dir().join("image/test");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    // The gcp block reads its keys from a file: nothing here may reach Google.
    write_file(
        &work.join("idgate.toml"),
        &format!(
            "# The image test's configuration (cargo xtask image test).\n\
             [limits]\ndrain_ms = {TEST_DRAIN_MS}\n\
             [gcp]\naudience = \"coder\"\njwks_file = \"/etc/idgate/google-jwks.json\"\n"
        ),
    )?;
    // A genuine Google key set from the tests' data (any key set will do: nothing signs here).
    let jwks = root().join("tests/data/gcp/google_jwk_a3b762f8.json");
    let jwks = std::fs::read_to_string(&jwks).map_err(|e| format!("reading {}: {e}", jwks.display()))?;
    write_file(&work.join("google-jwks.json"), &jwks)?;
    let mut postgres = None;
    let database_url = match &options.database_url {
        Some(url) => url.clone(),
        None => {
            let (server, url) = start_postgres(&work)?;
            postgres = Some(server);
            url
        }
    };
    let result = run_variant(runner, image, &work, &database_url, true)
        .and_then(|()| run_variant(runner, image, &work, &database_url, false));
    if let Some(mut server) = postgres {
        stop_postgres(&mut server);
    }
    result?;
    eprintln!("image test: passed ({})", image.name);
    Ok(())
}

/// One run of the image: `/healthz` and `/readyz` answer, the process is the service user
/// without capabilities, the cache behaves as the layout says, SIGHUP reloads, SIGTERM
/// stops it with exit code 0 within the grace a runtime gives.
fn run_variant(runner: &Runner, image: &Image, work: &Path, database_url: &str, cache_tmpfs: bool) -> Result {
    let storage = &runner.global[..];
    let what = if cache_tmpfs {
        "podman layout (cache on a private tmpfs)"
    } else {
        "Kubernetes layout (no cache volume)"
    };
    eprintln!("--- container, {what}");
    let port = free_port()?;
    let name = "idgate-image-test";
    let _ = podman(storage)
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let mut run = podman(storage);
    run.arg("run").args(&runner.run).args([
        "--detach",
        "--name",
        name,
        "--read-only",
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]);
    if cache_tmpfs {
        // 0700 and, with `U`, owned by the container's user, as the trust rules want of a
        // cache (a runtime's default tmpfs is root's 1777, which they refuse; podman 4.3
        // takes no uid= for a tmpfs). noexec costs nothing: entries are read as bytes and
        // deserialized, never mapped from the file.
        run.args([
            "--tmpfs",
            &format!("{CACHE_DIR}:rw,nosuid,nodev,noexec,size=64m,mode=0700,U"),
        ]);
    }
    run.args([
        "--volume",
        &format!("{}:{CONFIG_DIR}/idgate.toml:ro", work.join("idgate.toml").display()),
        "--volume",
        &format!(
            "{}:{CONFIG_DIR}/google-jwks.json:ro",
            work.join("google-jwks.json").display()
        ),
        "--env",
        &format!("IDGATE_CONFIG={CONFIG_DIR}/idgate.toml"),
        "--env",
        &format!("IDGATE_LISTEN=127.0.0.1:{port}"),
        "--env",
        &format!("IDGATE_DATABASE_URL={database_url}"),
        &image.name,
    ]);
    let started = Instant::now();
    run_status(run.stdout(Stdio::null()))?;
    let tested = (|| -> Result {
        let with_logs = |e: String| format!("{e}\n{}", logs(storage, name));
        // Until it listens; a container that exited (a refused configuration) fails at once.
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Err(e) = wait_for(port, "/healthz", Duration::from_secs(1), 200) {
            let running = output(podman(storage).args(["inspect", "--format", "{{.State.Running}}", name]))?;
            if running.trim() != "true" || Instant::now() > deadline {
                return Err(with_logs(format!("{e} (container running: {})", running.trim())));
            }
        }
        eprintln!("container: /healthz 200 {:.1?} after start", started.elapsed());
        let ready = wait_for(port, "/readyz", Duration::from_secs(30), 200).map_err(with_logs)?;
        eprintln!("container: /readyz 200: {}", ready.trim());
        let pid = output(podman(storage).args(["inspect", "--format", "{{.State.Pid}}", name]))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).map_err(|e| e.to_string())?;
        let line = |key: &str| status.lines().find(|l| l.starts_with(key)).unwrap_or("").to_string();
        let (uid_line, caps, rss) = (line("Uid:"), line("CapEff:"), line("VmRSS:"));
        eprintln!("container process: {uid_line}; {caps}; {rss}");
        if uid_line.split_whitespace().nth(1) != Some(UID.to_string().as_str()) {
            return Err(format!("the container's process runs as {uid_line}, not {UID}"));
        }
        if caps.split_whitespace().nth(1) != Some("0000000000000000") {
            return Err(format!("the container's process holds capabilities: {caps}"));
        }
        let logs_now = logs(storage, name);
        let unwritten = logs_now.matches("could not write compiled-plugin cache entry").count();
        if cache_tmpfs && unwritten > 0 {
            return Err(format!("the cache on its tmpfs was not writable:\n{logs_now}"));
        }
        if cache_tmpfs {
            // The entries are there, in a directory the trust rules accept: the service
            // user's, 0700 (seen from the host through the process's root).
            let cache = PathBuf::from(format!("/proc/{}/root{CACHE_DIR}", pid.trim()));
            let meta = std::fs::metadata(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
            let entries = std::fs::read_dir(&cache)
                .map_err(|e| format!("{}: {e}", cache.display()))?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
                .count();
            eprintln!(
                "container: cache {CACHE_DIR} owner {} mode {:o}, {entries} compiled entries",
                meta.uid(),
                meta.mode() & 0o7777
            );
            if meta.uid() != UID || meta.mode() & 0o7777 != 0o700 || entries == 0 {
                return Err(with_logs(format!(
                    "the cache tmpfs is not the service user's 0700 directory with entries ({} {:o}, {entries})",
                    meta.uid(),
                    meta.mode() & 0o7777
                )));
            }
        } else {
            // Expected: the read-only cache passes the trust check, so idgate starts and
            // compiles in memory, warning once per entry it could not keep.
            eprintln!("container: read-only cache directory: {unwritten} entries compiled in memory, not kept");
        }
        // SIGHUP, as a reload sidecar or `kubectl debug … kill -HUP 1` sends it: the
        // configuration and plugins are read again and the new set serves.
        run_status(
            podman(storage)
                .args(["kill", "--signal", "HUP", name])
                .stdout(Stdio::null()),
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = logs(storage, name);
            if now.contains("reload failed") {
                return Err(format!("the reload on SIGHUP failed:\n{now}"));
            }
            if now.contains("reloaded: the new provider set is serving") {
                break;
            }
            if Instant::now() > deadline {
                return Err(with_logs("no reload logged within 15 s of SIGHUP".into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_for(port, "/readyz", Duration::from_secs(10), 200).map_err(with_logs)?;
        eprintln!("container: SIGHUP reloaded, /readyz 200");
        // SIGTERM, as a runtime stops it: serve drains by itself (no preStop hook in
        // deploy/), so /readyz turns 503 at once while /healthz still answers, and after
        // drain_ms it stops with exit code 0, well within Kubernetes' default 30 s grace.
        let stopping = Instant::now();
        run_status(
            podman(storage)
                .args(["kill", "--signal", "TERM", name])
                .stdout(Stdio::null()),
        )?;
        let draining = wait_for(port, "/readyz", Duration::from_secs(2), 503).map_err(with_logs)?;
        wait_for(port, "/healthz", Duration::from_secs(1), 200).map_err(with_logs)?;
        let drain_seen = stopping.elapsed();
        loop {
            let running = output(podman(storage).args(["inspect", "--format", "{{.State.Running}}", name]))?;
            if running.trim() != "true" {
                break;
            }
            if stopping.elapsed() > Duration::from_secs(30) {
                return Err(with_logs("still running 30 s after SIGTERM".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopped = stopping.elapsed();
        let code = output(podman(storage).args(["inspect", "--format", "{{.State.ExitCode}}", name]))?;
        eprintln!(
            "container: SIGTERM: /readyz 503 ({}) and /healthz 200 after {drain_seen:.1?}; exited {} after {stopped:.1?} (drain_ms {TEST_DRAIN_MS})",
            draining.trim(),
            code.trim()
        );
        if code.trim() != "0" {
            return Err(with_logs(format!("idgate exited {} on SIGTERM", code.trim())));
        }
        if stopped < Duration::from_millis(TEST_DRAIN_MS) {
            return Err(with_logs(format!(
                "idgate stopped {stopped:.1?} after SIGTERM, before its {TEST_DRAIN_MS} ms drain"
            )));
        }
        Ok(())
    })();
    if tested.is_err() || std::env::var_os("IDGATE_IMAGE_TEST_LOGS").is_some() {
        eprintln!("container logs:\n{}", logs(storage, name));
    }
    let _ = podman(storage)
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .status();
    tested
}

fn logs(storage: &[String], name: &str) -> String {
    podman(storage)
        .args(["logs", name])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
}

/// GETs `path` on 127.0.0.1:`port` until it answers `status` or `within` passes; returns
/// the body. Plain HTTP/1.1 over std's TcpStream: the test needs no HTTP client crate.
fn wait_for(port: u16, path: &str, within: Duration, status: u16) -> Result<String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                if s.write_all(request.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() {
                    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
                    let body = answer
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_string())
                        .unwrap_or_default();
                    if code == Some(status) {
                        return Ok(body);
                    }
                    last = format!("{code:?}: {}", body.trim());
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "GET {path} did not answer {status} within {within:?} (last: {last})"
    ))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// A throwaway PostgreSQL cluster on loopback TCP for the container (host networking), from
/// the server binaries the tests use; run as the `postgres` user when we are root, since
/// PostgreSQL refuses to run as root.
fn start_postgres(work: &Path) -> Result<(std::process::Child, String)> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin"))
                .find(|b| b.join("initdb").is_file())
        })
        .ok_or("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")?;
    let data = work.join("pg");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let as_root = output(Command::new("id").arg("-u"))?.trim() == "0";
    // setpriv execs the server in its own place (runuser would stay as its parent and not
    // pass on the signal that stops it), so the child we hold is the postmaster itself.
    let as_user = |program: PathBuf| {
        if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if as_root {
        // The work directory sits under target/, root's: the server's user needs to reach it.
        let pg_uid = output(Command::new("id").args(["-u", "postgres"]))?;
        let pg_uid: u32 = pg_uid.trim().parse().map_err(|_| "no postgres user")?;
        chown(&data, Some(pg_uid), None).map_err(|e| e.to_string())?;
        for dir in data.ancestors().skip(1) {
            let mode = std::fs::metadata(dir).map_err(|e| e.to_string())?.mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
    }
    run_status(
        as_user(bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null()),
    )?;
    let port = free_port()?;
    let server = as_user(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ])
        .arg("-k")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the test's PostgreSQL did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("PostgreSQL for the image test on 127.0.0.1:{port}");
    Ok((server, format!("postgres://postgres@127.0.0.1:{port}/postgres")))
}

/// SIGINT is PostgreSQL's fast shutdown.
fn stop_postgres(server: &mut std::process::Child) {
    let _ = Command::new("kill").args(["-INT", &server.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
}

// ---- tools ----------------------------------------------------------------------------

/// Installs the Debian packages providing the commands that are missing (as root, with
/// apt-get), so a fresh machine needs nothing done by hand; elsewhere, says what to install.
fn ensure_commands(wanted: &[(&str, &str)]) -> Result {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").is_file() || output(Command::new("id").arg("-u"))?.trim() != "0" {
        return Err(format!(
            "missing: {} (install the packages and run again)",
            missing.join(", ")
        ));
    }
    eprintln!("xtask: installing {} with apt-get", missing.join(", "));
    // Another apt-get (a colleague's, CI's) may hold the lock: wait for it rather than fail.
    let lock = ["-o", "DPkg::Lock::Timeout=600"];
    run_status(Command::new("apt-get").args(lock).args(["update", "-qq"]))?;
    run_status(
        Command::new("apt-get")
            .args(lock)
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(command).is_file()))
        .unwrap_or(false)
}

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

fn expect(what: &str, got: &str, wanted: &str) -> Result {
    if got == wanted {
        Ok(())
    } else {
        Err(format!("the image's {what} is {got:?}, wanted {wanted:?}"))
    }
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
