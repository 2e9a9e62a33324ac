//! `cargo xtask <task>`: the project's one entry point for building and testing.
//!
//! - `plugins [NAME..]` builds provider plugins (default: all, plus the test
//!   fixtures) for wasm32-wasip2 and installs them into `target/plugins/` (real
//!   providers) and `target/test-plugins/` (real providers and fixtures). Real
//!   providers get local traps for the WASI imports they never need
//!   (`wasi_stubs.rs`); fixtures are left as cargo builds them.
//! - `build` builds the plugins and the release host.
//! - `run [ARGS..]` builds, then runs `idgate serve` on the built plugins
//!   (extra arguments go to `serve`).
//! - `test [ARGS..]` builds the plugins and runs every test (extra arguments go
//!   to `cargo test`); without arguments, also builds and tests
//!   `examples/plugin-template` from a private copy that is its own workspace
//!   (`template.rs`).
//! - `test --topology [ARGS..]` installs the HA topology's Debian packages if
//!   missing (etcd, Patroni, HAProxy) and runs only the topology scenarios
//!   (`tests/it/topology.rs`, ignored by a plain `test`).
//! - `bench --topology [ARGS..]` runs them from an empty figures file and
//!   writes BENCHMARKS.md's *Topology* section from their figures.
//! - `template` does only that last step.
//! - `ci` checks formatting and lints, then runs `test`.
//! - `bench` builds the plugins and runs the benchmarks (release), which write
//!   `BENCHMARKS.md`.
//! - `fuzz <TARGET..|--all> [--time S] [--runs N] [-- ARGS..]` runs libFuzzer targets of
//!   `fuzz/` on the stable toolchain; `fuzz --replay` runs every committed corpus once
//!   (see fuzz/README.md).
//! - `image [build | test | check-deploy]` builds the container image with buildah, tests
//!   it (podman), or validates `deploy/` (see `image.rs`).

mod image;
mod template;
// Debian packages installed when missing; standard library only, shared with the tests' support crate.
#[path = "../../tests/support/topology/packages.rs"]
mod packages;
mod wasi_stubs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Plugin crates: (short name, package, is a test fixture).
const PLUGINS: &[(&str, &str, bool)] = &[
    ("aws", "idgate-plugin-aws", false),
    ("azure", "idgate-plugin-azure", false),
    ("gcp", "idgate-plugin-gcp", false),
    ("oidc", "idgate-plugin-oidc", false),
    ("misbehave", "idgate-fixture-misbehave", true),
];

const WASM_TARGET: &str = "wasm32-wasip2";

/// The release host, the benchmarks and the agent (`idgate-agent`, which the
/// bench's agent section runs), in one invocation that `build`,
/// `run` and `bench` all run, so none of them compiles what another just built.
///
/// Why one identical invocation: measured on 2026-12-02, `cargo run --release
/// -p idgate-bench` right after `build` recompiled ring, rustls, sqlx, reqwest,
/// the kit and the host (3m45s–3m51s), whether `build` had selected
/// `-p idgate -p idgate-bench --bin idgate` or both binaries: cargo's unit
/// hashes differ between invocations that select different packages or
/// targets. Building both binaries costs `build` the bench crate and its few
/// own dependencies.
const RELEASE_HOST: [&str; 8] = [
    "build",
    "--release",
    "-p",
    "idgate",
    "-p",
    "idgate-bench",
    "-p",
    "idgate-client",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match task {
        "plugins" => plugins(rest),
        "build" => plugins(&[]).and_then(|()| cargo(&RELEASE_HOST)),
        "run" => run(rest),
        "test" => test(rest),
        "template" => template::test_outside_the_workspace(),
        "ci" => ci(),
        "bench" => bench(rest),
        "fuzz" => fuzz(rest),
        "image" => image::build(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins [NAME..] | build | run [ARGS..] | test [ARGS..] | template | ci | bench | fuzz ARGS..>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo(args: &[&str]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

fn plugins(names: &[String]) -> Result {
    let chosen: Vec<_> = if names.is_empty() {
        PLUGINS.to_vec()
    } else {
        names
            .iter()
            .map(|n| {
                PLUGINS
                    .iter()
                    .find(|(short, _, _)| short == n)
                    .copied()
                    .ok_or_else(|| format!("unknown plugin {n:?}"))
            })
            .collect::<Result<_>>()?
    };
    ensure_wasm_target()?;
    // Fixtures as cargo builds them; real providers one by one in `stubbed_component`.
    let fixtures: Vec<&str> = chosen.iter().filter(|p| p.2).map(|p| p.1).collect();
    if !fixtures.is_empty() {
        let mut args = vec!["build", "--release", "--target", WASM_TARGET];
        for package in fixtures {
            args.extend(["-p", package]);
        }
        cargo(&args)?;
    }
    let built = target_dir().join(WASM_TARGET).join("release");
    let real = target_dir().join("plugins");
    let test = target_dir().join("test-plugins");
    for dir in [&real, &test] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    for &(short, package, fixture) in &chosen {
        let file = built.join(format!("{}.wasm", package.replace('-', "_")));
        let component = if fixture {
            std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?
        } else {
            stubbed_component(package, &file)?
        };
        let mut dests = vec![test.join(format!("{short}.wasm"))];
        if !fixture {
            dests.push(real.join(format!("{short}.wasm")));
        }
        for dest in dests {
            std::fs::write(&dest, &component).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        }
        eprintln!("installed {short}.wasm");
    }
    if chosen.iter().any(|(short, _, _)| *short == "misbehave") {
        impersonating_fixture(&built)?;
        variant(
            &built,
            "idgate-fixture-misbehave",
            "needs-config",
            &target_dir().join("test-plugins-needs-config").join("misbehave.wasm"),
        )?;
        // The fixture with local WASI traps too, so the benchmarks can measure
        // what the imports cost and the tests that local traps still trap.
        let file = built.join("idgate_fixture_misbehave.wasm");
        let dest = target_dir().join("test-plugins-stubbed").join("misbehave.wasm");
        std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let component = stubbed_component("idgate-fixture-misbehave", &file)?;
        std::fs::write(&dest, component).map_err(|e| format!("writing {}: {e}", dest.display()))?;
    }
    if chosen.iter().any(|(short, _, _)| *short == "aws") {
        contract_0_1_plugin(&built)?;
        contract_0_2_plugin(&built)?;
    }
    Ok(())
}

/// `package` as a component whose unused WASI imports are local traps: links
/// its core module (`--skip-wit-component`), rewrites it and makes the
/// component here. `file` is where cargo leaves the linked module.
fn stubbed_component(package: &str, file: &Path) -> Result<Vec<u8>> {
    cargo(&[
        "rustc",
        "--quiet",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        package,
        "--",
        "-C",
        "link-arg=--skip-wit-component",
    ])?;
    let core = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let (component, stubs) = wasi_stubs::componentize(&core).map_err(|e| format!("{package}: {e}"))?;
    eprintln!("{package}: {stubs} unused WASI imports made local traps");
    Ok(component)
}

/// Adds the plugins' target when the toolchain lacks it, so the README's commands are the
/// whole set-up on a fresh machine (rustup does not install `rust-toolchain.toml`'s targets
/// when `RUSTUP_AUTO_INSTALL=0`). Without rustup, says what is missing instead.
fn ensure_wasm_target() -> Result {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).join("lib").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: the {WASM_TARGET} target is not installed; adding it with `rustup target add {WASM_TARGET}`");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(root())
        .status()
        .map_err(|e| {
            format!("the {WASM_TARGET} target is missing and rustup cannot be run ({e}); install the target for this toolchain")
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {WASM_TARGET}` failed ({status})"))
    }
}

/// The tests start their own PostgreSQL clusters from the installed server binaries; say
/// where they were found, or how to get them, before spending minutes on a build.
fn ensure_postgres() -> Result {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("initdb").is_file() && d.join("postgres").is_file()))
        .unwrap_or(false);
    match (on_path, packaged_postgres_bin()) {
        (true, _) => Ok(()),
        (false, Some(dir)) => {
            eprintln!("xtask: PostgreSQL server binaries in {}", dir.display());
            Ok(())
        }
        (false, None) => Err("no PostgreSQL server binaries (initdb, postgres) on PATH or under \
             /usr/lib/postgresql/*/bin: install them (Debian: `apt-get install postgresql`; \
             `bash .ci/run` does it) and run again"
            .into()),
    }
}

/// A Debian-packaged PostgreSQL's server binaries: the first
/// `/usr/lib/postgresql/*/bin` holding `initdb`.
fn packaged_postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|d| d.path().join("bin"))
        .find(|bin| bin.join("initdb").is_file())
}

/// `target/test-plugins-faulty/aws.wasm`: the misbehaving fixture answering as
/// provider `aws`, so the HTTP tests can make a routed endpoint trap.
fn impersonating_fixture(built: &Path) -> Result {
    variant(
        built,
        "idgate-fixture-misbehave",
        "impersonate-aws",
        &target_dir().join("test-plugins-faulty").join("aws.wasm"),
    )
}

/// `target/test-plugins-0.1.0/aws.wasm`: the AWS plugin built against contract
/// 0.1.0, so the tests prove the host still loads and runs 0.1.0 plugins.
fn contract_0_1_plugin(built: &Path) -> Result {
    variant(
        built,
        "idgate-plugin-aws",
        "idgate-plugin-kit/contract-0-1",
        &target_dir().join("test-plugins-0.1.0").join("aws.wasm"),
    )
}

/// `target/test-plugins-0.2.0/aws.wasm`: the AWS plugin built against contract
/// 0.2.0 (no `issuers` import), so the tests prove 0.2.0 plugins still load.
fn contract_0_2_plugin(built: &Path) -> Result {
    variant(
        built,
        "idgate-plugin-aws",
        "idgate-plugin-kit/contract-0-2",
        &target_dir().join("test-plugins-0.2.0").join("aws.wasm"),
    )
}

/// Builds `package` again with `features` and installs the result at `dest`;
/// the normal build's file is restored, so the normal one stays installed.
fn variant(built: &Path, package: &str, features: &str, dest: &Path) -> Result {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let file = built.join(format!("{}.wasm", package.replace('-', "_")));
    cargo(&[
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        package,
        "--features",
        features,
    ])?;
    // Copied, never written back: cargo hard-links this file to its own
    // artifact, so writing to it would change what cargo thinks it built.
    std::fs::copy(&file, dest).map_err(|e| format!("copying {} to {}: {e}", file.display(), dest.display()))?;
    Ok(())
}

/// The benchmarks: built by the very invocation `build` runs (same packages,
/// same features, so nothing is compiled twice), then run; extra arguments
/// name sections.
fn bench(extra: &[String]) -> Result {
    if extra.first().is_some_and(|a| a == "--topology") {
        return bench_topology(&extra[1..]);
    }
    plugins(&[])?;
    cargo(&RELEASE_HOST)?;
    let binary = target_dir().join("release").join("idgate-bench");
    eprintln!("+ {} {}", binary.display(), extra.join(" "));
    let status = Command::new(&binary)
        .args(extra)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the benchmarks failed ({status})"))
    }
}

/// `bench --topology`: BENCHMARKS.md's *Topology* section from one run of
/// the topology scenarios. The figures file is emptied first, so the section
/// reports this run only; a failing scenario still leaves its figures, which
/// are reported before the failure is.
fn bench_topology(extra: &[String]) -> Result {
    let figures = target_dir().join("topology").join("figures.jsonl");
    if figures.exists() {
        std::fs::write(&figures, "").map_err(|e| format!("cannot truncate {}: {e}", figures.display()))?;
    }
    let tests = test_topology(extra);
    cargo(&RELEASE_HOST)?;
    let binary = target_dir().join("release").join("idgate-bench");
    eprintln!("+ {} topology-report {}", binary.display(), figures.display());
    let status = Command::new(&binary)
        .arg("topology-report")
        .arg(&figures)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    tests?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the topology report failed ({status})"))
    }
}

fn run(extra: &[String]) -> Result {
    plugins(&[])?;
    let plugin_dir = target_dir().join("plugins");
    cargo(&RELEASE_HOST)?;
    let binary = target_dir().join("release").join("idgate");
    eprintln!("+ {} --plugins {} serve", binary.display(), plugin_dir.display());
    let status = Command::new(&binary)
        .arg("--plugins")
        .arg(&plugin_dir)
        .arg("serve")
        .args(extra)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("idgate serve exited with {status}"))
    }
}

fn test(extra: &[String]) -> Result {
    if extra.first().is_some_and(|a| a == "--topology") {
        return test_topology(&extra[1..]);
    }
    ensure_postgres()?;
    plugins(&[])?;
    // The HTTP tests run the real `idgate` binary, which `cargo test` alone does
    // not build. Why every target of the workspace and not `-p idgate`: cargo
    // unifies features over what one invocation builds, and the tests'
    // dev-dependencies add features to shared crates, so `build -p idgate`
    // then `test --workspace` compiled most of the tree twice (8 m 39 s, then
    // 11 m 07 s on a fresh machine). This builds the binary and every test
    // target in one resolution, and the `cargo test` below compiles nothing.
    cargo(&["build", "--workspace", "--all-targets"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    // The whole suite (no arguments narrowing it) includes the template.
    if extra.is_empty() {
        template::test_outside_the_workspace()?;
    }
    Ok(())
}

/// `test --topology`: the scenarios that run idgate in a real HA topology
/// (etcd, PostgreSQL under Patroni, HAProxy; issue 31), each a few tens of
/// seconds of processes and failovers, so kept out of the plain `test`. One
/// at a time: each starts its own topology and times failovers and
/// latencies, which a second one on the same cores would skew.
fn test_topology(extra: &[String]) -> Result {
    packages::ensure_packages()?;
    ensure_postgres()?;
    plugins(&[])?;
    // As `test`: the `idgate` binary and the test targets in one resolution.
    cargo(&["build", "--workspace", "--all-targets"])?;
    let mut args = vec![
        "test",
        "--workspace",
        "--test",
        "it",
        "--",
        "--ignored",
        "topology::",
        "--test-threads",
        "1",
    ];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

fn ci() -> Result {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&[
        "clippy",
        "--target",
        WASM_TARGET,
        "-p",
        "idgate-plugin-aws",
        "-p",
        "idgate-plugin-azure",
        "-p",
        "idgate-plugin-gcp",
        "-p",
        "idgate-plugin-oidc",
        "--",
        "-D",
        "warnings",
    ])?;
    test(&[])
}

/// `fuzz`: builds `fuzz/`'s libFuzzer binaries with coverage instrumentation that stable
/// rustc offers (LLVM's sancov pass, as cargo-fuzz uses, minus its nightly-only sanitizers)
/// into their own target directory, then either replays each committed corpus file once
/// (`--replay`) or fuzzes each named target in turn, for `--time` seconds or `--runs`
/// executions (default: until stopped). A fuzzing run first executes the committed corpus
/// (`fuzz/corpus/<target>`, read only), so a kept crash input fails it again; new inputs go
/// to `target/fuzz/corpus/<target>`, crashes to `target/fuzz/artifacts/<target>/`.
fn fuzz(args: &[String]) -> Result {
    const TARGETS: &[&str] = &[
        "ber",
        "pem",
        "signed_data",
        "aws",
        "aws_pkcs7",
        "azure",
        "azure_pkcs7",
        "gcp",
        "oidc",
        "agent_answer",
    ];
    let (mut targets, mut replay, mut limits, mut extra) = (Vec::new(), false, Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--all" => targets.extend(TARGETS.iter().copied()),
            "--replay" => replay = true,
            "--time" | "--runs" => {
                let n: u64 = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or(format!("{arg} needs a whole number"))?;
                let flag = if arg == "--time" { "max_total_time" } else { "runs" };
                limits.push(format!("-{flag}={n}"));
            }
            "--" => extra.extend(it.by_ref().cloned()),
            t => match TARGETS.iter().find(|known| **known == t) {
                Some(known) => targets.push(*known),
                None => return Err(format!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", "))),
            },
        }
    }
    if targets.is_empty() {
        if !replay {
            return Err(format!(
                "usage: cargo xtask fuzz <{}|--all> [--time S] [--runs N] [-- LIBFUZZER ARGS..] | fuzz --replay",
                TARGETS.join("|")
            ));
        }
        targets = TARGETS.to_vec();
    }
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV names no host")?;
    let dir = target_dir().join("fuzz");
    // An explicit --target keeps these flags off build scripts and proc macros.
    let flags = [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ];
    eprintln!(
        "+ cargo build (instrumented) -p idgate-fuzz --target {host} into {}",
        dir.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            &host,
            "-p",
            "idgate-fuzz",
            "--features",
            "libfuzzer",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", &dir)
        .env("RUSTFLAGS", flags.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the fuzz targets failed ({status})"));
    }
    for target in targets {
        let committed = root().join("fuzz/corpus").join(target);
        let work = dir.join("corpus").join(target);
        let artifacts = dir.join("artifacts").join(target);
        for d in [&work, &artifacts] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let mut run = Command::new(dir.join(&host).join("release").join(target));
        if replay {
            // Files (not directories) as arguments: libFuzzer runs each once and exits.
            let entries = std::fs::read_dir(&committed).map_err(|e| format!("{}: {e}", committed.display()))?;
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            run.args(files);
        } else {
            run.arg(format!("-artifact_prefix={}/", artifacts.display()))
                .args(["-timeout=10", "-print_final_stats=1"])
                .args(&limits)
                .args(&extra)
                .arg(&work)
                .arg(&committed);
        }
        eprintln!("+ fuzz {target}{}", if replay { " --replay" } else { "" });
        let status = run
            .status()
            .map_err(|e| format!("cannot run the {target} fuzzer: {e}"))?;
        if !status.success() {
            return Err(format!(
                "fuzz target {target} failed ({status}); the input is named above (under {})",
                artifacts.display()
            ));
        }
    }
    Ok(())
}
