//! Running the image with podman as operators do, and what it must do when run.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::{start_postgres, stop_postgres};
use super::{
    free_port, output, podman, run_status, write_file, Image, Options, BINARY, CACHE_DIR, CONFIG_DIR, TEST_DRAIN_MS,
    UID,
};
use crate::{root, target_dir, Result};

/// How podman can start a container here: its global flags (storage, runtime) and `run`
/// flags (limits). Tried in order, from podman's defaults to what this sandbox allows; each
/// refusal is printed with the runtime's own words (deploy/README.md records them).
///
/// Why each step: podman asks for `nofile` 1048576 and a large `nproc` by default, and
/// raising a hard limit needs CAP_SYS_RESOURCE, which a sandboxed root may lack; so the
/// second try asks for this process's own hard `nofile` and 4096 tasks (idgate runs a
/// few dozen threads). crun refuses cgroup v1 hierarchies beside a cgroup2 mount that has
/// controllers ("hybrid"), which runc accepts: the third try uses runc.
pub(super) struct Runner {
    global: Vec<String>,
    run: Vec<String>,
}

pub(super) fn find_runner(storage: &[String], image: &str) -> Result<std::result::Result<Runner, String>> {
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
pub(super) fn run_container(runner: &Runner, image: &Image, options: &Options) -> Result {
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
