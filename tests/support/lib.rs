//! Support for idgate's integration tests: the repository's test data, and one
//! sandbox per test binary loaded with the real plugin components (and the
//! misbehaving fixture) built by `cargo xtask plugins`.

pub mod child;
pub mod imds;
pub mod pg;
pub mod topology;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use idgate::sandbox::{CallError, Limits, Sandbox};
use idgate_plugin_kit::Identity;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A file under `tests/data/`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join(rel)
}

/// The text of a file under `tests/data/`.
pub fn read_data(rel: &str) -> String {
    let path = data(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Where `cargo xtask plugins` puts real plugins and fixtures.
pub fn test_plugin_dir() -> PathBuf {
    target_dir().join("test-plugins")
}

/// Where `cargo xtask plugins` puts the AWS plugin built against contract 0.1.0.
pub fn test_plugin_dir_0_1_0() -> PathBuf {
    target_dir().join("test-plugins-0.1.0")
}

/// Where `cargo xtask plugins` puts the AWS plugin built against contract 0.2.0.
pub fn test_plugin_dir_0_2_0() -> PathBuf {
    target_dir().join("test-plugins-0.2.0")
}

/// Where `cargo xtask plugins` puts the misbehaving fixture with its WASI
/// imports made local traps, as the providers are built.
pub fn test_plugin_dir_stubbed() -> PathBuf {
    target_dir().join("test-plugins-stubbed")
}

/// Where `cargo xtask plugins` puts the misbehaving fixture that refuses the
/// empty configuration (a plugin needing a block the operator did not write).
pub fn test_plugin_dir_needs_config() -> PathBuf {
    target_dir().join("test-plugins-needs-config")
}

/// Where compiled components are cached between test runs.
pub fn component_cache_dir() -> PathBuf {
    target_dir().join("component-cache")
}

/// The limits the shared sandbox runs under: the defaults, except a shorter
/// deadline so the runaway-loop test ends quickly.
pub fn test_limits() -> Limits {
    Limits {
        deadline: std::time::Duration::from_millis(300),
        ..Limits::default()
    }
}

/// One sandbox for the whole test binary, with every plugin in
/// [`test_plugin_dir`].
pub fn sandbox() -> &'static Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let dir = test_plugin_dir();
        let sandbox = Sandbox::load(&dir, Some(&component_cache_dir()), test_limits()).unwrap_or_else(|e| {
            panic!(
                "loading plugins from {}: {e:#}\n(build them first: `cargo xtask plugins`, or run `cargo xtask test`)",
                dir.display()
            )
        });
        Arc::new(sandbox)
    })
}

/// Asserts a refusal of the given kind (`bad-signature`, ...; not a trap, not
/// success) and returns its reason.
#[track_caller]
pub fn refused(result: Result<Identity, CallError>, kind: &str) -> String {
    match result {
        Err(CallError::Rejected(e)) if e.kind() == kind => e.reason().to_string(),
        other => panic!("expected {kind}, got {other:?}"),
    }
}
