//! What idgate trusts to run: pinned plugin digests, and plugin and cache
//! directories that only idgate's user (or root) can change, reached through
//! links only they own, and read by the descriptor that was checked. Every
//! refusal is checked through `Sandbox::load_pinned`, and the operator's view
//! through the real binary (`serve`/`verify` exit 2, `plugins` prints the full
//! digests).

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
    idgate_with(&d.plugins, args)
}

fn idgate_with(plugins: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(idgate_binary());
    cmd.arg("--plugins")
        .arg(plugins)
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid of `nobody`, the "another user" of these tests.
const NOBODY: u32 = 65534;

fn lchown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_path_through_a_link_another_user_owns_is_refused_with_exit_2() {
    if !is_root() {
        eprintln!("a_path_through_a_link_another_user_owns_is_refused_with_exit_2 needs root to lchown; skipped");
        return;
    }
    let d = dirs();
    let link = d._tmp.path().join("plugins-link");
    std::os::unix::fs::symlink(&d.plugins, &link).unwrap();
    // A link root owns is followed, and the plugin behind it loads.
    assert_eq!(
        load(&link, &PluginPins::default()).unwrap().plugins()[0].provider,
        "aws"
    );
    lchown(&link, NOBODY);
    let e = load_err(&link, &PluginPins::default());
    assert!(
        e.contains("plugins-link is a symbolic link owned by uid 65534") && e.contains("refusing to follow"),
        "{e}"
    );
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["verify", "aws"][..]] {
        let out = idgate_with(&link, args)
            .env("IDGATE_PLUGIN_SHA256_AWS", &d.aws_sha256)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    }

    // The same for the cache directory, and for a plugin file's own name.
    std::fs::create_dir(&d.cache).unwrap();
    chmod(&d.cache, 0o700);
    let cache_link = d._tmp.path().join("cache-link");
    std::os::unix::fs::symlink(&d.cache, &cache_link).unwrap();
    lchown(&cache_link, NOBODY);
    let e = match Sandbox::load(&d.plugins, Some(&cache_link), test_limits()) {
        Ok(_) => panic!("a cache reached through another user's link was used"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("cache directory") && e.contains("owned by uid 65534"), "{e}");
    let store = d._tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    chmod(&store, 0o755);
    std::fs::rename(d.plugins.join("aws.wasm"), store.join("aws.wasm")).unwrap();
    let file_link = d.plugins.join("aws.wasm");
    std::os::unix::fs::symlink(store.join("aws.wasm"), &file_link).unwrap();
    load(&d.plugins, &PluginPins::default()).unwrap();
    lchown(&file_link, NOBODY);
    let e = load_err(&d.plugins, &PluginPins::default());
    assert!(e.contains("aws.wasm") && e.contains("owned by uid 65534"), "{e}");
}

/// Re-points `link` (atomically: a new link owned by `owner`, renamed over
/// it) until `stop`, to `targets[1]` every fourth time and back to
/// `targets[0]` otherwise, so some loads find both paths good; counts the
/// flips in `flips`.
fn flipper(
    link: PathBuf,
    targets: [PathBuf; 2],
    owner: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    flips: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let tmp = link.with_extension("flip");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&targets[usize::from(n % 4 == 3)], &tmp).unwrap();
            lchown(&tmp, owner);
            std::fs::rename(&tmp, &link).unwrap();
            n += 1;
            flips.store(n, Ordering::Relaxed);
            // Leave the CPU to the loader now and then, as an attacker's loop
            // racing the process would.
            std::thread::yield_now();
        }
    })
}

/// The review's race, as an attacker would run it: while idgate loads, links
/// on the plugin and the cache path are re-pointed in a loop between the good
/// plugin and cache and another user's, whose cache holds *foreign* compiled
/// code under the genuine entries' names (the AWS plugin built against
/// contract 0.1.0: it too says it serves `aws`, so pins alone would not tell).
/// Checking a path and then opening it again by name loaded that code; the
/// walk opens what it checked, so every load either refuses another user's
/// directory or runs the genuine plugin. Bounded: a fixed number of in-process
/// loads (each a real `Sandbox::load_pinned` + `configure` + `verify`, the
/// start-up `verify aws` runs).
#[test]
fn re_pointing_links_while_loading_never_loads_foreign_code() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    if !is_root() {
        eprintln!("re_pointing_links_while_loading_never_loads_foreign_code needs root to chown; skipped");
        return;
    }
    const ROUNDS: usize = 150;
    let limits = idgate::sandbox::Limits {
        pooling: false,
        ..test_limits()
    };
    let d = dirs();
    let root = d._tmp.path();
    let genuine = d.plugins.clone();
    let good_cache = root.join("good-cache");
    let pins = pins(&[("aws", &d.aws_sha256)]);
    let (document, signature) = (
        idgate_tests::read_data("aws/coder_iid_document.json"),
        idgate_tests::read_data("aws/coder_iid_signature.b64"),
    );
    let credential = serde_json::json!({"document": document, "signature": signature}).to_string();
    let check_genuine = |s: &Sandbox| {
        let info = &s.plugins()[0];
        assert_eq!(
            (info.provider.as_str(), info.contract.as_str(), info.sha256.as_str()),
            ("aws", idgate_plugin_kit::CONTRACT_VERSION, d.aws_sha256.as_str()),
            "foreign compiled code was loaded"
        );
        let configured = s
            .configure("aws", &serde_json::json!({}))
            .expect("the genuine snapshot");
        let id = s.verify(&configured, &credential, None, 1_780_000_000).unwrap();
        assert_eq!(id.instance_id, "i-076e9b91f7c420782");
    };
    // The genuine entries: compiled component and configured snapshot.
    let first = Sandbox::load_pinned(&genuine, Some(&good_cache), limits, &pins).unwrap();
    check_genuine(&first);
    drop(first);

    // Another user's plugin directory and cache, the foreign code compiled by
    // the same engine and stored under every genuine entry's name.
    let foreign_src = root.join("foreign-src");
    std::fs::create_dir(&foreign_src).unwrap();
    chmod(&foreign_src, 0o755);
    std::fs::copy(
        idgate_tests::test_plugin_dir_0_1_0().join("aws.wasm"),
        foreign_src.join("aws.wasm"),
    )
    .unwrap();
    let foreign_cache = root.join("foreign-compiled");
    let foreign = Sandbox::load(&foreign_src, Some(&foreign_cache), limits).unwrap();
    assert_eq!(foreign.plugins()[0].contract, "0.1.0");
    drop(foreign);
    let foreign_entry = std::fs::read_dir(&foreign_cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let foreign_code = std::fs::read(foreign_entry).unwrap();
    let evil_plugins = root.join("evil-plugins");
    let evil_cache = root.join("evil-cache");
    for dir in [&evil_plugins, &evil_cache] {
        std::fs::create_dir(dir).unwrap();
        chmod(dir, 0o755);
    }
    std::fs::copy(foreign_src.join("aws.wasm"), evil_plugins.join("aws.wasm")).unwrap();
    let mut planted = 0;
    for entry in std::fs::read_dir(&good_cache).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::write(evil_cache.join(&name), &foreign_code).unwrap();
        chmod(&evil_cache.join(&name), 0o644);
        planted += 1;
    }
    assert_eq!(
        planted, 3,
        "the component, its instrumented form and its configured snapshot"
    );
    for path in std::fs::read_dir(&evil_cache)
        .unwrap()
        .chain(std::fs::read_dir(&evil_plugins).unwrap())
    {
        lchown(&path.unwrap().path(), NOBODY);
    }
    lchown(&evil_plugins, NOBODY);
    lchown(&evil_cache, NOBODY);

    // Links root owns (followed: their targets decide), then links another
    // user owns (never followed).
    for (owner, rounds) in [(0, ROUNDS), (NOBODY, ROUNDS / 3)] {
        let plugins_link = root.join(format!("plugins-{owner}"));
        let cache_link = root.join(format!("cache-{owner}"));
        std::os::unix::fs::symlink(&genuine, &plugins_link).unwrap();
        std::os::unix::fs::symlink(&good_cache, &cache_link).unwrap();
        lchown(&plugins_link, owner);
        lchown(&cache_link, owner);
        let stop = Arc::new(AtomicBool::new(false));
        let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let flippers = [
            flipper(
                plugins_link.clone(),
                [genuine.clone(), evil_plugins.clone()],
                owner,
                stop.clone(),
                counts[0].clone(),
            ),
            flipper(
                cache_link.clone(),
                [good_cache.clone(), evil_cache.clone()],
                owner,
                stop.clone(),
                counts[1].clone(),
            ),
        ];
        // The links are moving before the first load (a failure guard, not a measurement).
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while counts.iter().any(|c| c.load(Ordering::Relaxed) < 4) {
            assert!(std::time::Instant::now() < guard, "the link flippers never ran");
            std::thread::yield_now();
        }
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..rounds {
            match Sandbox::load_pinned(&plugins_link, Some(&cache_link), limits, &pins) {
                Ok(s) => {
                    check_genuine(&s);
                    loaded += 1;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains("owned by uid 65534"), "refused for another reason: {e}");
                    assert!(!e.contains("serves provider"), "foreign code ran: {e}");
                    if refused < 3 {
                        eprintln!("refused: {e}");
                    }
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for f in flippers {
            f.join().unwrap();
        }
        let flips: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        eprintln!("links owned by uid {owner}: {loaded} genuine loads, {refused} refusals, {flips:?} flips");
        if owner == NOBODY {
            assert_eq!(loaded, 0, "a link another user owns was followed");
        }
    }
}
