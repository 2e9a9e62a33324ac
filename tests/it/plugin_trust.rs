//! What idgate trusts to run: pinned plugin digests, and plugin and cache
//! directories that only idgate's user (or root) can change. Every refusal is
//! checked through `Sandbox::load_pinned`, and the operator's view through the
//! real binary (`serve`/`verify` exit 2, `plugins` prints the full digests).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use idgate::pins::PluginPins;
use idgate::sandbox::Sandbox;
use idgate_tests::{component_cache_dir, test_limits, test_plugin_dir};

use crate::http::idgate_binary;

/// A private plugin directory holding a copy of the real AWS plugin (and its
/// SHA-256), plus a private cache directory, inside a fresh temporary directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    plugins: PathBuf,
    cache: PathBuf,
    aws_sha256: String,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&plugins).unwrap();
    chmod(tmp.path(), 0o755);
    chmod(&plugins, 0o755);
    let wasm = std::fs::read(test_plugin_dir().join("aws.wasm")).unwrap();
    std::fs::write(plugins.join("aws.wasm"), &wasm).unwrap();
    chmod(&plugins.join("aws.wasm"), 0o644);
    Dirs {
        _tmp: tmp,
        plugins,
        cache,
        aws_sha256: sha256_hex(&wasm),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn pins(entries: &[(&str, &str)]) -> PluginPins {
    PluginPins::new(
        &entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap()
}

/// Loads with the shared component cache, so no test pays for compiling.
fn load(plugins: &Path, pins: &PluginPins) -> Result<Sandbox, String> {
    Sandbox::load_pinned(plugins, Some(&component_cache_dir()), test_limits(), pins).map_err(|e| format!("{e:#}"))
}

fn load_err(plugins: &Path, pins: &PluginPins) -> String {
    match load(plugins, pins) {
        Ok(s) => panic!("expected a refusal, loaded {:?}", s.plugins()),
        Err(e) => e,
    }
}

#[test]
fn a_pinned_plugin_loads_and_serves() {
    let d = dirs();
    let sandbox = load(&d.plugins, &pins(&[("aws", &d.aws_sha256)])).unwrap();
    let info = sandbox.plugins();
    assert_eq!(info.len(), 1);
    assert_eq!(
        (info[0].provider.as_str(), info[0].sha256.as_str()),
        ("aws", d.aws_sha256.as_str())
    );
}

#[test]
fn a_plugin_that_differs_from_its_pin_is_refused_naming_both_digests() {
    let d = dirs();
    let wrong = "0".repeat(64);
    let e = load_err(&d.plugins, &pins(&[("aws", &wrong)]));
    assert!(e.contains("aws.wasm"), "{e}");
    assert!(e.contains(&format!("expected sha256 {wrong}")), "{e}");
    assert!(e.contains(&format!("actual {}", d.aws_sha256)), "{e}");
}

#[test]
fn with_pins_an_unpinned_plugin_is_refused() {
    let d = dirs();
    let e = load_err(&d.plugins, &pins(&[("gcp", &"1".repeat(64))]));
    assert!(
        e.contains("aws.wasm") && e.contains("not pinned") && e.contains(&d.aws_sha256),
        "{e}"
    );
}

#[test]
fn a_digest_pinned_for_another_provider_cannot_serve_this_one() {
    // The AWS plugin's digest pinned as `gcp`: the file is pinned for something,
    // but it says it serves `aws`, which has no pin.
    let d = dirs();
    let e = load_err(&d.plugins, &pins(&[("gcp", &d.aws_sha256)]));
    assert!(e.contains("serves provider \"aws\"") && e.contains("no pin"), "{e}");
}

#[test]
fn a_plugin_directory_others_can_write_is_refused() {
    let d = dirs();
    chmod(&d.plugins, 0o777);
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(
        e.contains("plugin directory") && e.contains("writable by group or others"),
        "{e}"
    );
    chmod(&d.plugins, 0o775);
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(e.contains("writable by group or others"), "{e}");
}

#[test]
fn a_plugin_file_others_can_write_is_refused() {
    let d = dirs();
    chmod(&d.plugins.join("aws.wasm"), 0o646);
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(
        e.contains("aws.wasm") && e.contains("writable by group or others"),
        "{e}"
    );
}

#[test]
fn a_plugin_under_a_directory_others_can_write_is_refused() {
    let d = dirs();
    let parent = d.plugins.parent().unwrap();
    chmod(parent, 0o777);
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(e.contains("group or others can write"), "{e}");
}

#[test]
fn files_owned_by_another_user_are_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("files_owned_by_another_user_are_refused needs root to chown; the unit tests cover the rule");
        return;
    }
    let d = dirs();
    let file = d.plugins.join("aws.wasm");
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(e.contains("aws.wasm") && e.contains("owned by uid 65534"), "{e}");
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    std::os::unix::fs::chown(&d.plugins, Some(65534), None).unwrap();
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(
        e.contains("plugin directory") && e.contains("owned by uid 65534"),
        "{e}"
    );
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    let d = dirs();
    std::fs::create_dir(&d.cache).unwrap();
    chmod(&d.cache, 0o777);
    let e = match Sandbox::load(&d.plugins, Some(&d.cache), test_limits()) {
        Ok(_) => panic!("a world-writable cache directory was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("cache directory") && e.contains("writable by group or others"),
        "{e}"
    );
}

#[test]
fn cache_entries_are_private_and_an_untrusted_one_is_never_used() {
    let d = dirs();
    // A new cache directory is created 0700 and its entries 0600.
    let first = Sandbox::load(&d.plugins, Some(&d.cache), test_limits()).unwrap();
    assert!(!first.plugins()[0].cached);
    drop(first);
    assert_eq!(mode(&d.cache), 0o700);
    let entries: Vec<PathBuf> = std::fs::read_dir(&d.cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert!(entry.file_name().unwrap().to_str().unwrap().starts_with(&d.aws_sha256));
    assert_eq!(mode(entry), 0o600);
    assert!(
        Sandbox::load(&d.plugins, Some(&d.cache), test_limits())
            .unwrap()
            .plugins()[0]
            .cached
    );

    // Someone else could have written it: not used, recompiled, replaced by a private one.
    chmod(entry, 0o666);
    let again = Sandbox::load(&d.plugins, Some(&d.cache), test_limits()).unwrap();
    assert!(!again.plugins()[0].cached, "an entry others can write was deserialized");
    assert_eq!(mode(entry), 0o600);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn idgate(d: &Dirs, args: &[&str]) -> Command {
    let mut cmd = Command::new(idgate_binary());
    cmd.arg("--plugins")
        .arg(&d.plugins)
        .arg("--cache-dir")
        .arg(component_cache_dir())
        // Nothing reaches the database: the plugins are refused first.
        .arg("--database-url")
        .arg("postgres://nobody@127.0.0.1:1/none")
        .args(args)
        .env_remove("IDGATE_CONFIG")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn the_binary_prints_full_digests_and_refuses_a_wrong_pin_with_exit_2() {
    let d = dirs();
    let out = idgate(&d, &["plugins"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(&d.aws_sha256) && stdout.contains("unpinned"),
        "{stdout}"
    );
    // Unpinned plugins are named in a warning at start.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("no [plugin_sha256] pins"),
        "`plugins` itself should not warn: {stderr}"
    );

    let wrong = "f".repeat(64);
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["verify", "aws"][..]] {
        let out = idgate(&d, args)
            .env("IDGATE_PLUGIN_SHA256_AWS", &wrong)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&wrong) && stderr.contains(&d.aws_sha256) && stderr.contains("aws.wasm"),
            "{stderr}"
        );
    }

    // The right pin: `plugins` says so, and `verify` gets past loading.
    let out = idgate(&d, &["plugins"])
        .env("IDGATE_PLUGIN_SHA256_AWS", &d.aws_sha256)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned"));
    let out = verify_example(idgate(&d, &[]).env("IDGATE_PLUGIN_SHA256_AWS", &d.aws_sha256));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("i-076e9b91f7c420782"));

    // Without pins, serve/verify warn naming the unpinned plugin.
    let out = verify_example(&mut idgate(&d, &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no [plugin_sha256] pins") && stderr.contains("aws.wasm"),
        "{stderr}"
    );
}

/// `cmd verify aws` on the genuine AWS example.
fn verify_example(cmd: &mut Command) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let body = std::fs::read(idgate_tests::root().join("examples/aws-request.json")).unwrap();
    let mut child = cmd
        .args(["verify", "aws"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    child.wait_with_output().unwrap()
}

/// A plugin's answer is bounded too: an instance ID longer than any cloud issues
/// is refused as malformed before it reaches the database.
#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_instance_id_is_refused() {
    use idgate::authenticate::{AuthError, Authenticator, MAX_INSTANCE_ID_BYTES};
    use idgate::sandbox::CallError;
    // The fixture's `echo` answers with its configuration block as the instance ID.
    let long = "x".repeat(MAX_INSTANCE_ID_BYTES);
    let file = idgate::config::FileConfig::parse(&format!("[misbehave]\nid = \"{long}\"\n")).unwrap();
    let auth = Authenticator::new(idgate_tests::sandbox().clone(), &file).unwrap();
    match auth.verify("misbehave", "\"echo\"".into(), 0).await {
        Err(AuthError::Call(CallError::Rejected(e))) => {
            assert_eq!(e.kind(), "malformed");
            assert!(e.reason().contains("at most 256"), "{e}");
        }
        other => panic!("expected a malformed refusal, got {other:?}"),
    }
    let file = idgate::config::FileConfig::parse("[misbehave]\nid = \"short\"\n").unwrap();
    let auth = Authenticator::new(idgate_tests::sandbox().clone(), &file).unwrap();
    assert!(auth.verify("misbehave", "\"echo\"".into(), 0).await.is_ok());
}
