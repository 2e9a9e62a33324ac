//! A test harness for plugin authors: load a built `.wasm` into the real
//! [`Sandbox`] — the same loading, trust checks, configure-then-snapshot and
//! per-call limits `idgate serve` applies — configure it with a provider block
//! and verify credentials at a chosen time. A plugin crate lists
//! `idgate-sandbox` (not the server, `idgate`) as a dev-dependency and its
//! `cargo test` runs the component as idgate will
//! (`examples/plugin-template/tests/component.rs` is the worked example).
//!
//! ```no_run
//! use idgate_sandbox::harness::{build_component, Harness};
//!
//! let wasm = build_component(env!("CARGO_MANIFEST_DIR").as_ref()).unwrap();
//! let harness = Harness::load(&wasm).unwrap();
//! let acme = harness.configure(&serde_json::json!({"keys": {}})).unwrap();
//! let answer = harness.verify(&acme, r#"{"document": "…"}"#, 1_767_225_600);
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
pub use idgate_plugin_kit::{Identity, VerifyError};

use crate::file_trust::MAX_FILE_BYTES;
use crate::sandbox::{CallError, Configured, FaultKind, Limits, PluginInfo, Sandbox};

/// The target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// One plugin loaded into its own sandbox, from a private copy of its `.wasm`.
pub struct Harness {
    // Declared before `dir`: the sandbox (and its cache descriptor) goes first.
    sandbox: Sandbox,
    info: PluginInfo,
    dir: PrivateDir,
}

/// Why a call produced no identity.
#[derive(Debug)]
pub enum Failure {
    /// The plugin answered with a refusal; its case picks the HTTP status
    /// (`malformed` 400, `bad-signature`/`untrusted-signer`/`expired` 401,
    /// `refused` 403, `bad-config` 500).
    Rejected(VerifyError),
    /// The call trapped (a panic, a forbidden import), passed its CPU
    /// deadline or its memory cap: a 500 in serving, and a bug in the plugin.
    Fault {
        /// What happened.
        message: String,
        /// Which limit, if a limit was the cause.
        kind: FaultKind,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Rejected(e) => write!(f, "rejected: {e}"),
            Failure::Fault { message, kind } => write!(f, "fault ({kind:?}): {message}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Harness {
    /// Loads the component at `wasm` under the limits `idgate serve` uses by
    /// default ([`Limits::default`]).
    pub fn load(wasm: &Path) -> anyhow::Result<Harness> {
        Self::load_with(wasm, Limits::default())
    }

    /// Loads the component at `wasm` under `limits`. The file is copied into a
    /// fresh `0700` directory under the system's temporary directory (as a
    /// `0600` file, so [`crate::file_trust`] accepts it wherever the build left
    /// it), which also holds the compiled-plugin cache; both go with the
    /// harness. Fails as `serve` would: not a component, an unsupported
    /// contract, a bad provider name.
    pub fn load_with(wasm: &Path, limits: Limits) -> anyhow::Result<Harness> {
        let bytes = read_bounded(wasm)?;
        let dir = PrivateDir::create()?;
        let plugins = dir.path.join("plugins");
        let cache = dir.path.join("cache");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&plugins)
            .with_context(|| format!("creating {}", plugins.display()))?;
        let copy = plugins.join("plugin.wasm");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .and_then(|mut file| file.write_all(&bytes))
            .with_context(|| format!("writing {}", copy.display()))?;
        let sandbox = Sandbox::load(&plugins, Some(&cache), limits)
            .with_context(|| format!("loading {} (copied to {})", wasm.display(), copy.display()))?;
        let info = match sandbox.plugins().as_slice() {
            [info] => info.clone(),
            other => bail!("expected one plugin in {}, loaded {}", plugins.display(), other.len()),
        };
        Ok(Harness { sandbox, info, dir })
    }

    /// What the host read from the component: provider name, contract, SHA-256.
    pub fn plugin(&self) -> &PluginInfo {
        &self.info
    }

    /// The provider name the component declares (what idgate mounts it under).
    pub fn provider(&self) -> &str {
        &self.info.provider
    }

    /// Runs the plugin's `configure` with `block` — the provider block as the
    /// plugin receives it, JSON (`{}` for none) — and snapshots the result, as
    /// `serve` does at start. A block the plugin refuses is an error whose
    /// message carries the plugin's `bad-config` reason. What the host does to
    /// an operator's block first (reading `K_file` values, keeping its own
    /// keys such as `jwks_url` and `display_name`) is not done here: pass what
    /// the plugin would receive.
    pub fn configure(&self, block: &serde_json::Value) -> anyhow::Result<Configured> {
        self.sandbox.configure(&self.info.provider, block)
    }

    /// Verifies `credential` (the request body, `agent_name` removed) at `now`
    /// (Unix seconds) in a fresh instance of the configured snapshot, with no
    /// host-fetched keys.
    pub fn verify(&self, configured: &Configured, credential: &str, now: i64) -> Result<Identity, Failure> {
        self.verify_with_keys(configured, credential, None, now)
    }

    /// [`Harness::verify`] with `key_set` as the `host-keys` import's answer:
    /// what the host's key cache would lend (JSON text of a key set).
    pub fn verify_with_keys(
        &self,
        configured: &Configured,
        credential: &str,
        key_set: Option<&str>,
        now: i64,
    ) -> Result<Identity, Failure> {
        self.sandbox
            .verify(configured, credential, key_set, now)
            .map_err(|e| match e {
                CallError::Rejected(e) => Failure::Rejected(e),
                CallError::Fault { message, kind, .. } => Failure::Fault { message, kind },
                // `configured` came from this sandbox, which loaded its plugin.
                e @ CallError::NotLoaded(_) => Failure::Fault {
                    message: e.to_string(),
                    kind: FaultKind::Trap,
                },
            })
    }

    /// The private directory holding the copy and the cache (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }
}

/// The refusal in `result`, panicking (at the caller) on an identity or a
/// fault: for tests asserting that a credential is refused.
#[track_caller]
pub fn expect_rejected(result: Result<Identity, Failure>) -> VerifyError {
    match result {
        Err(Failure::Rejected(e)) => e,
        Ok(identity) => panic!("expected a refusal, got {identity:?}"),
        Err(fault) => panic!("expected a refusal, got {fault}"),
    }
}

/// Builds the plugin crate at `manifest_dir` as README's guide does —
/// `cargo build --release --target wasm32-wasip2` — and returns the `.wasm`
/// cargo made. The build goes to the crate's usual target directory (or
/// `CARGO_TARGET_DIR`), so a test calling this shares it with the author's
/// own builds; cargo holds no lock on it while tests run, and an up-to-date
/// build takes well under a second. Compiler messages go to stderr.
pub fn build_component(manifest_dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = manifest_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "cargo build --release --target {WASM_TARGET} --manifest-path {} failed ({})",
            manifest.display(),
            output.status
        );
    }
    built_component(&output.stdout, &manifest)
}

/// The `.wasm` that cargo's JSON messages (`--message-format=json`) name as
/// the `cdylib` artifact of the package whose manifest is `manifest`.
fn built_component(messages: &[u8], manifest: &Path) -> anyhow::Result<PathBuf> {
    // Compared resolved: cargo names the manifest by the path it was given, made absolute.
    let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let manifest = resolved(manifest);
    let mut found = None;
    for line in messages.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let ours = message["reason"] == "compiler-artifact"
            && message["manifest_path"].as_str().map(|p| resolved(Path::new(p))) == Some(manifest.clone())
            && message["target"]["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|t| t == "cdylib"));
        if !ours {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        found = wasm.map(PathBuf::from).or(found);
    }
    found.with_context(|| {
        format!(
            "cargo built no .wasm for {}: does its [lib] have crate-type = [\"cdylib\", …]?",
            manifest.display()
        )
    })
}

/// The file's bytes, refusing more than the sandbox would load.
fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        bail!(
            "{} is {len} bytes, over the {MAX_FILE_BYTES} a plugin may be",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A directory only this user can use, removed with everything in it on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A new `0700` directory under [`std::env::temp_dir`]; the name is made
    /// unique by the process ID and a counter, and `create` (not
    /// `create_dir_all`) fails rather than reuse one that exists.
    fn create() -> anyhow::Result<PrivateDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..100 {
            let path = base.join(format!(
                "idgate-harness-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        Err(last.expect("the loop ran")).with_context(|| format!("no free directory name in {}", base.display()))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The harness on components `cargo xtask plugins` built (run through
/// `cargo xtask test`, which builds them first).
#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;

    /// 2026-05-28: the genuine AWS document's certificate chain is valid then.
    const NOW: i64 = 1_780_000_000;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// `target/<dir>/<name>.wasm`, as `cargo xtask plugins` installs it.
    fn built(dir: &str, name: &str) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
        let path = target.join(dir).join(format!("{name}.wasm"));
        assert!(
            path.is_file(),
            "{} is missing: build it with `cargo xtask plugins` (or run `cargo xtask test`)",
            path.display()
        );
        path
    }

    fn misbehave() -> (Harness, Configured) {
        let harness = Harness::load(&built("test-plugins", "misbehave")).unwrap();
        let configured = harness.configure(&json!({})).unwrap();
        (harness, configured)
    }

    #[test]
    fn a_built_plugin_accepts_a_genuine_credential_and_refuses_a_tampered_one() {
        let harness = Harness::load(&built("plugins", "aws")).unwrap();
        assert_eq!(harness.provider(), "aws");
        assert_eq!(harness.plugin().contract, "0.3.0");
        let aws = harness.configure(&json!({})).unwrap();
        let genuine = std::fs::read_to_string(workspace().join("examples/aws-request.json")).unwrap();
        let identity = harness.verify(&aws, &genuine, NOW).unwrap();
        assert_eq!(identity.instance_id, "i-076e9b91f7c420782");
        assert_eq!(identity.attribute("region"), Some("us-east-1"));

        let tampered = genuine.replacen("i-076e9b91f7c420782", "i-076e9b91f7c420783", 1);
        assert_ne!(tampered, genuine);
        let refusal = expect_rejected(harness.verify(&aws, &tampered, NOW));
        assert_eq!(refusal.kind(), "bad-signature", "{refusal}");
        let refusal = expect_rejected(harness.verify(&aws, "{}", NOW));
        assert_eq!(refusal.kind(), "malformed", "{refusal}");
    }

    #[test]
    fn refusals_faults_and_host_keys_come_back_typed() {
        let (harness, configured) = misbehave();
        let keys = r#"{"keys":[]}"#;
        let echoed = harness
            .verify_with_keys(&configured, "\"keys\"", Some(keys), 0)
            .unwrap();
        assert_eq!(echoed.instance_id, keys);
        assert_eq!(harness.verify(&configured, "\"keys\"", 0).unwrap().instance_id, "none");
        assert_eq!(
            expect_rejected(harness.verify(&configured, "\"refuse\"", 0)),
            VerifyError::Refused("refused as asked".into())
        );
        match harness.verify(&configured, "\"panic\"", 0) {
            Err(Failure::Fault {
                kind: FaultKind::Trap, ..
            }) => {}
            other => panic!("expected a trap, got {other:?}"),
        }
        // Each call starts from the snapshot: the fault left nothing behind.
        assert_eq!(
            harness.verify(&configured, "\"state\"", 0).unwrap().instance_id,
            "call-1"
        );
        assert_eq!(
            harness.verify(&configured, "\"state\"", 0).unwrap().instance_id,
            "call-1"
        );
    }

    #[test]
    fn a_refused_configuration_is_an_error_carrying_the_plugins_reason() {
        let (harness, _) = misbehave();
        let error = harness.configure(&json!({"configure": "refuse"})).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("[misbehave] configure: refused as asked"), "{message}");
    }

    #[test]
    fn the_copy_is_private_wherever_the_build_left_it_and_goes_with_the_harness() {
        // A group- and world-writable original, which `serve` would refuse.
        let scratch = tempfile::tempdir().unwrap();
        let loose = scratch.path().join("misbehave.wasm");
        std::fs::copy(built("test-plugins", "misbehave"), &loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
        let harness = Harness::load(&loose).unwrap();
        let dir = harness.dir().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("plugins/plugin.wasm")), 0o600);
        drop(harness);
        assert!(!dir.exists(), "{} outlived its harness", dir.display());

        std::fs::write(&loose, b"not a component").unwrap();
        let error = Harness::load(&loose).err().expect("bytes that are not a component");
        assert!(format!("{error:#}").contains("misbehave.wasm"), "{error:#}");
    }

    #[test]
    fn the_built_wasm_is_found_in_cargos_messages() {
        let manifest = Path::new("/src/acme/Cargo.toml");
        let artifact = |manifest: &str, kinds: &[&str], files: &[&str]| {
            json!({"reason": "compiler-artifact", "manifest_path": manifest,
                   "target": {"crate_types": kinds}, "filenames": files})
            .to_string()
        };
        let messages = [
            artifact("/src/kit/Cargo.toml", &["lib"], &["/t/libkit.rlib"]),
            r#"{"reason": "build-script-executed"}"#.to_string(),
            "not json".to_string(),
            artifact(
                "/src/acme/Cargo.toml",
                &["cdylib", "rlib"],
                &["/t/acme.wasm", "/t/libacme.rlib"],
            ),
            r#"{"reason": "build-finished", "success": true}"#.to_string(),
        ]
        .join("\n");
        assert_eq!(
            built_component(messages.as_bytes(), manifest).unwrap(),
            Path::new("/t/acme.wasm")
        );
        let without = artifact("/src/acme/Cargo.toml", &["rlib"], &["/t/libacme.rlib"]);
        let error = built_component(without.as_bytes(), manifest).unwrap_err();
        assert!(error.to_string().contains("crate-type"), "{error}");
    }
}
