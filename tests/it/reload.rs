//! Reload without restart: the real binary, its plugin directory and its
//! configuration file changed while clients authenticate, then SIGHUP. Each
//! reload's effect is checked right after it, and no request fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idgate_tests::component_cache_dir;
use idgate_tests::pg::{fresh_database, TestDb};
use serde_json::{json, Value};
use sha2::Digest;

use crate::http::{idgate_binary, register, serve_command, Served};
use crate::mounts::post;
use crate::oidc::{k8s_claims_at, keys, ISSUER_A, ISSUER_B};

/// The AWS instance of `examples/aws-request.json` (a real, signed document).
pub(crate) const AWS_INSTANCE: &str = "i-076e9b91f7c420782";

/// A plugin directory and a configuration file, as an operator edits them.
pub(crate) struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub(crate) fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        Files { dir }
    }

    pub(crate) fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("idgate.toml")
    }

    /// Drops `from` into the plugin directory as `name`, as an operator should:
    /// written beside it, then renamed into place.
    pub(crate) fn put_plugin(&self, from: &Path, name: &str) {
        let partial = self.dir.path().join(format!("{name}.partial"));
        std::fs::copy(from, &partial).unwrap();
        std::fs::rename(&partial, self.plugins().join(name)).unwrap();
    }

    fn remove_plugin(&self, name: &str) {
        std::fs::remove_file(self.plugins().join(name)).unwrap();
    }

    pub(crate) fn write_config(&self, text: &str) {
        let partial = self.dir.path().join("idgate.toml.partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, self.config()).unwrap();
    }

    /// The `idgate` command on these files and `database_url`, the
    /// subcommand still to add.
    pub(crate) fn idgate(&self, database_url: &str) -> Command {
        let mut cmd = Command::new(idgate_binary());
        cmd.env_remove("IDGATE_CONFIG")
            .arg("--config")
            .arg(self.config())
            .arg("--plugins")
            .arg(self.plugins())
            .arg("--cache-dir")
            .arg(component_cache_dir())
            .arg("--database-url")
            .arg(database_url)
            .env("RUST_LOG", "info");
        cmd
    }

    /// A file beside the configuration (a key set, say), its path as TOML text.
    pub(crate) fn put_file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        format!("{:?}", path.display().to_string())
    }
}

/// A server started from its own [`Files`].
pub(crate) struct Live {
    files: Files,
    pub(crate) served: Served,
    client: reqwest::Client,
}

impl std::ops::Deref for Live {
    type Target = Files;
    fn deref(&self) -> &Files {
        &self.files
    }
}

impl Live {
    /// `idgate serve` on `db` with `plugins` (source file, name in the
    /// directory) and the configuration `config`.
    pub(crate) fn start(db: &TestDb, plugins: &[(PathBuf, &str)], config: &str) -> Live {
        let files = Files::new();
        for (from, name) in plugins {
            files.put_plugin(from, name);
        }
        files.write_config(config);
        Live {
            served: serve_command(files.idgate(&db.url)),
            files,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.served.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub(crate) async fn post(&self, segment: &str, body: &Value) -> (u16, Value) {
        post(&self.client, &self.served.base, segment, body).await
    }

    /// Sends SIGHUP and waits until the reload it starts has finished;
    /// whether it succeeded.
    pub(crate) async fn hup(&self) -> bool {
        hup(&self.client, &self.served).await
    }

    /// Stops the server (SIGTERM) and returns its logs.
    pub(crate) fn stop(self) -> String {
        let Served { mut child, stderr, .. } = self.served;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let logs = stderr.join().unwrap();
        assert!(status.success(), "{status}\n{logs}");
        logs
    }
}

/// Reloads counted in `served`'s `/metrics`: (succeeded, failed).
async fn reload_counts(client: &reqwest::Client, served: &Served) -> (u64, u64) {
    let metrics = client
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |result: &str| {
        let prefix = format!("idgate_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    (count("ok"), count("failed"))
}

/// Sends `served` SIGHUP and waits until the reload it starts has finished;
/// whether it succeeded.
pub(crate) async fn hup(client: &reqwest::Client, served: &Served) -> bool {
    let (ok, failed) = reload_counts(client, served).await;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(served.child.id() as i32, libc::SIGHUP) };
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = reload_counts(client, served).await;
        if now != (ok, failed) {
            assert_eq!(now.0 + now.1, ok + failed + 1, "one SIGHUP, one reload");
            return now.0 > ok;
        }
    }
    panic!("no reload finished within 60 s of SIGHUP");
}

/// Clients authenticating in a loop until stopped; every answer that is not
/// one of the accepted tokens is kept as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answered: Arc<Mutex<(u64, Vec<String>)>>,
}

impl Load {
    fn start(base: &str, clients: usize, segment: &str, body: Value, accepted: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new((0, Vec::new())));
        let accepted = Arc::new(accepted);
        let tasks = (0..clients)
            .map(|_| {
                let (stop, answered, accepted) = (stop.clone(), answered.clone(), accepted.clone());
                let (base, segment, body) = (base.to_string(), segment.to_string(), body.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let (status, answer) = post(&client, &base, &segment, &body).await;
                        let token = answer["session_token"].as_str().unwrap_or_default();
                        let mut answered = answered.lock().unwrap();
                        answered.0 += 1;
                        if status != 200 || !accepted.iter().any(|a| a == token) {
                            answered.1.push(format!("{status} {answer}"));
                        }
                    }
                })
            })
            .collect();
        Load { stop, tasks, answered }
    }

    /// Stops the clients: (answers, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let answered = self.answered.lock().unwrap();
        (answered.0, answered.1.clone())
    }
}

pub(crate) fn aws_body() -> Value {
    serde_json::from_str(&std::fs::read_to_string(idgate_tests::root().join("examples/aws-request.json")).unwrap())
        .unwrap()
}

/// A Kubernetes projected service-account token of cluster A (or B), valid now.
pub(crate) fn pod_token(cluster_b: bool, pod_uid: &str) -> Value {
    let now = idgate::clock::unix_now();
    let (key, issuer) = if cluster_b {
        (&keys().b, ISSUER_B)
    } else {
        (&keys().a, ISSUER_A)
    };
    json!({ "token": key.sign(&k8s_claims_at(issuer, "agents", pod_uid, now)) })
}

/// A `[mounts.<name>]` of the `oidc` plugin for one cluster, its keys in a file.
pub(crate) fn cluster_mount(live: &Live, name: &str, cluster_b: bool) -> String {
    let (key, issuer) = if cluster_b {
        (&keys().b, ISSUER_B)
    } else {
        (&keys().a, ISSUER_A)
    };
    let jwks = live.put_file(&format!("{name}.jwks.json"), &key.jwks().to_string());
    format!(
        "[mounts.{name}]\nplugin = \"oidc\"\nissuer = {issuer:?}\naudience = \"idgate\"\n\
         instance_id_claim = \"kubernetes.io.pod.uid\"\njwks_file = {jwks}\n"
    )
}

pub(crate) fn plugin(rel: &str) -> PathBuf {
    idgate_tests::test_plugin_dir().parent().unwrap().join(rel)
}

fn sha256_hex(path: &Path) -> String {
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One SIGHUP, the `n`th, expected to succeed (or fail, `ok` false).
async fn reload(live: &Live, n: &mut usize, ok: bool) {
    *n += 1;
    let done = live.hup().await;
    assert_eq!(done, ok, "reload {n}: {}", live.get("/readyz").await.1);
}

/// The issue's "done when": a freshly built `oidc` plugin and a second mount
/// of it are dropped into a running server; after SIGHUP both clusters' pods
/// authenticate on the new routes while AWS traffic goes on without a failure.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_dropped_into_a_running_server_serves_after_sighup() {
    let db = fresh_database().await;
    let aws_token = register(&db, "aws-ws", AWS_INSTANCE, "main").await;
    let pod_a = "0a7c6f8e-1111-4c1e-9d1a-aaaaaaaaaaaa";
    let pod_b = "0b7c6f8e-2222-4c1e-9d1a-bbbbbbbbbbbb";
    // Each mount resolves in its own namespace (`<mount>:<id>`).
    let token_a = register(&db, "pod-a", &format!("k8s-a:{pod_a}"), "main").await;
    let token_b = register(&db, "pod-b", &format!("k8s-b:{pod_b}"), "main").await;
    let live = Live::start(&db, &[(plugin("test-plugins/aws.wasm"), "aws.wasm")], "");
    let aws = Load::start(
        &live.served.base,
        8,
        "aws-instance-identity",
        aws_body(),
        vec![aws_token.clone()],
    );

    let (status, _) = live.post("k8s-a-instance-identity", &pod_token(false, pod_a)).await;
    assert_eq!(status, 404, "nothing is mounted there yet");
    live.put_plugin(&plugin("test-plugins/oidc.wasm"), "oidc.wasm");
    let config = cluster_mount(&live, "k8s-a", false) + &cluster_mount(&live, "k8s-b", true);
    live.write_config(&config);
    assert!(live.hup().await, "the reload failed: {}", live.get("/readyz").await.1);

    let (status, body) = live.post("k8s-a-instance-identity", &pod_token(false, pod_a)).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(token_a.as_str())),
        "{body}"
    );
    let (status, body) = live.post("k8s-b-instance-identity", &pod_token(true, pod_b)).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(token_b.as_str())),
        "{body}"
    );
    // Each mount trusts its own cluster only.
    let (status, body) = live.post("k8s-b-instance-identity", &pod_token(false, pod_a)).await;
    assert_eq!(status, 401, "{body}");
    let (status, ready) = live.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");

    let (answered, failures) = aws.finish().await;
    assert!(answered > 0);
    assert!(
        failures.is_empty(),
        "{} of {answered} AWS requests failed: {failures:?}",
        failures.len()
    );
    live.stop();
}

/// Twenty reloads — plugins added, replaced and removed, blocks changed, a
/// wrong pin — while 64 clients authenticate: no request fails, and each
/// reload's effect (or, for the bad one, its absence) shows right after it.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_reloads_under_64_clients_fail_no_request() {
    let db = fresh_database().await;
    let aws_token = register(&db, "aws-ws", AWS_INSTANCE, "main").await;
    // The `misbehave` fixture's `echo` answers with its block as the instance
    // ID: the token says which block is serving.
    let mut echo_tokens = Vec::new();
    for v in 0..20 {
        echo_tokens.push(register(&db, &format!("echo-{v}"), &format!("misbehave:{{\"v\":{v}}}"), "main").await);
    }
    let pod = "0c7c6f8e-3333-4c1e-9d1a-cccccccccccc";
    let pod_token_a = register(&db, "pod", &format!("k8s:{pod}"), "main").await;
    let echo_block = |v: usize| format!("[misbehave]\nv = {v}\n");
    let live = Live::start(
        &db,
        &[
            (plugin("test-plugins/aws.wasm"), "aws.wasm"),
            (plugin("test-plugins/misbehave.wasm"), "misbehave.wasm"),
        ],
        &echo_block(0),
    );
    let aws = Load::start(
        &live.served.base,
        48,
        "aws-instance-identity",
        aws_body(),
        vec![aws_token.clone()],
    );
    let echo = Load::start(
        &live.served.base,
        16,
        "misbehave-instance-identity",
        json!({"do": "echo"}),
        echo_tokens.clone(),
    );
    let echo_now = |v: usize| {
        let (live, token) = (&live, echo_tokens[v].clone());
        async move {
            let (status, body) = live.post("misbehave-instance-identity", &json!({"do": "echo"})).await;
            assert_eq!(
                (status, body["session_token"].as_str()),
                (200, Some(token.as_str())),
                "block v = {v}: {body}"
            );
        }
    };
    let mut reloads = 0;
    let mut v = 0;
    // 1–6: the block changes; each change serves at once.
    for _ in 0..6 {
        v += 1;
        live.write_config(&echo_block(v));
        reload(&live, &mut reloads, true).await;
        echo_now(v).await;
    }
    // 7: add the oidc plugin with a mount.
    let with_k8s = |v: usize| echo_block(v) + &cluster_mount(&live, "k8s", false);
    live.put_plugin(&plugin("test-plugins/oidc.wasm"), "oidc.wasm");
    live.write_config(&with_k8s(v));
    reload(&live, &mut reloads, true).await;
    let (status, body) = live.post("k8s-instance-identity", &pod_token(false, pod)).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(pod_token_a.as_str())),
        "{body}"
    );
    // 8: replace the AWS plugin by its 0.2.0 build: AWS goes on, and
    // `/metrics` names the new digest and contract.
    let aws_0_2 = plugin("test-plugins-0.2.0/aws.wasm");
    live.put_plugin(&aws_0_2, "aws.wasm");
    reload(&live, &mut reloads, true).await;
    let (_, metrics) = live.get("/metrics").await;
    let line = format!(
        "idgate_plugin{{provider=\"aws\",contract=\"0.2.0\",sha256=\"{}\"}} 1",
        sha256_hex(&aws_0_2)
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    // 9: a wrong pin: the reload fails, nothing changes, `/readyz` and
    // `/metrics` say so.
    let pins = |aws: &str| {
        format!(
            "[plugin_sha256]\naws = {aws:?}\nmisbehave = {:?}\noidc = {:?}\n",
            sha256_hex(&plugin("test-plugins/misbehave.wasm")),
            sha256_hex(&plugin("test-plugins/oidc.wasm"))
        )
    };
    v += 1;
    live.write_config(&(pins(&"0".repeat(64)) + &with_k8s(v)));
    reload(&live, &mut reloads, false).await;
    echo_now(v - 1).await;
    let (status, ready) = live.get("/readyz").await;
    assert_eq!(status, 200, "the previous set still serves: {ready}");
    assert!(
        ready.contains("the last reload") && ready.contains("does not match its pin"),
        "{ready}"
    );
    assert!(live.get("/metrics").await.1.contains("idgate_reload_failing 1"));
    // 10: the right pins: the change lands and the warning goes.
    live.write_config(&(pins(&sha256_hex(&aws_0_2)) + &with_k8s(v)));
    reload(&live, &mut reloads, true).await;
    echo_now(v).await;
    let (_, ready) = live.get("/readyz").await;
    assert!(!ready.contains("the last reload"), "{ready}");
    assert!(live.get("/metrics").await.1.contains("idgate_reload_failing 0"));
    // 11: remove the oidc plugin and its mount.
    live.remove_plugin("oidc.wasm");
    live.write_config(&echo_block(v));
    reload(&live, &mut reloads, true).await;
    let (status, body) = live.post("k8s-instance-identity", &pod_token(false, pod)).await;
    assert_eq!(status, 404, "{body}");
    // 12: back to the 0.3.0 AWS build.
    live.put_plugin(&plugin("test-plugins/aws.wasm"), "aws.wasm");
    reload(&live, &mut reloads, true).await;
    assert!(live.get("/metrics").await.1.contains(&format!(
        "idgate_plugin{{provider=\"aws\",contract=\"0.3.0\",sha256=\"{}\"}} 1",
        sha256_hex(&plugin("test-plugins/aws.wasm"))
    )));
    // 13–20: more block changes.
    while reloads < 20 {
        v += 1;
        live.write_config(&echo_block(v));
        reload(&live, &mut reloads, true).await;
        echo_now(v).await;
    }

    let (aws_answered, aws_failures) = aws.finish().await;
    let (echo_answered, echo_failures) = echo.finish().await;
    assert!(aws_answered > 0 && echo_answered > 0);
    assert!(
        aws_failures.is_empty() && echo_failures.is_empty(),
        "failed: AWS {} of {aws_answered} {aws_failures:?}; echo {} of {echo_answered} {echo_failures:?}",
        aws_failures.len(),
        echo_failures.len()
    );
    let logs = live.stop();
    assert_eq!(
        logs.matches("reloaded: the new provider set is serving").count(),
        19,
        "{logs}"
    );
    assert_eq!(logs.matches("reload failed").count(), 1, "{logs}");
}

/// A reload that fails anywhere — the file, a block the plugin refuses, a
/// plugin file others may write, a file that is no component, two plugins for
/// one provider — changes nothing: the previous set serves on and `/readyz`
/// names the reason until a reload succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_fails_anywhere_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_database().await;
    let before = register(&db, "echo-1", "misbehave:{\"v\":1}", "main").await;
    let after = register(&db, "echo-2", "misbehave:{\"v\":2}", "main").await;
    let misbehave = plugin("test-plugins/misbehave.wasm");
    let live = Live::start(&db, &[(misbehave.clone(), "misbehave.wasm")], "[misbehave]\nv = 1\n");
    let serving = |token: String| {
        let live = &live;
        async move {
            let (status, body) = live.post("misbehave-instance-identity", &json!({"do": "echo"})).await;
            assert_eq!(
                (status, body["session_token"].as_str()),
                (200, Some(token.as_str())),
                "{body}"
            );
        }
    };
    let ready_says = |reason: &'static str| {
        let live = &live;
        async move {
            let (status, ready) = live.get("/readyz").await;
            assert_eq!(status, 200, "{ready}");
            assert!(
                ready.contains("the last reload") && ready.contains(reason),
                "{reason:?} not in {ready}"
            );
        }
    };

    live.write_config("[misbehave\nv = 2\n");
    assert!(!live.hup().await);
    serving(before.clone()).await;
    ready_says("reading the configuration").await;

    live.write_config("[misbehave]\nv = 2\nconfigure = \"refuse\"\n");
    assert!(!live.hup().await);
    serving(before.clone()).await;
    ready_says("refused its configuration").await;

    live.write_config("[misbehave]\nv = 2\n");
    live.put_plugin(&plugin("test-plugins/aws.wasm"), "other.wasm");
    let other = live.plugins().join("other.wasm");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(!live.hup().await);
    serving(before.clone()).await;
    ready_says("other.wasm").await;
    std::fs::remove_file(&other).unwrap();

    std::fs::write(live.plugins().join("junk.wasm"), b"\0asm junk").unwrap();
    assert!(!live.hup().await);
    serving(before.clone()).await;
    ready_says("junk.wasm").await;
    std::fs::remove_file(live.plugins().join("junk.wasm")).unwrap();

    live.put_plugin(&misbehave, "misbehave-copy.wasm");
    assert!(!live.hup().await);
    serving(before.clone()).await;
    ready_says("both serve provider").await;
    live.remove_plugin("misbehave-copy.wasm");

    assert!(live.hup().await);
    serving(after).await;
    let (_, ready) = live.get("/readyz").await;
    assert!(!ready.contains("the last reload"), "{ready}");
    live.stop();
}

/// Reloading the same files keeps every configured image (nothing is
/// configured again); changing one block configures that mount only, and a
/// mount that is gone is reported removed.
#[test]
fn a_reload_keeps_what_did_not_change() {
    use idgate::authenticate::Authenticator;
    use idgate::config::FileConfig;
    let sandbox = idgate_tests::sandbox().clone();
    let file = FileConfig::parse("[misbehave]\nv = 1\n[mounts.second]\nplugin = \"misbehave\"\nv = 1\n").unwrap();
    let first = Authenticator::new(sandbox.clone(), &file).unwrap();
    let (same, changes) = first.reload(sandbox.clone(), &file).unwrap();
    assert!(changes.configured.is_empty(), "{changes:?}");
    assert!(changes.kept.contains(&"misbehave".to_string()) && changes.kept.contains(&"second".to_string()));
    let changed = FileConfig::parse("[misbehave]\nv = 2\n").unwrap();
    let (_, changes) = same.reload(sandbox, &changed).unwrap();
    assert_eq!(changes.configured, ["misbehave"], "{changes:?}");
    assert_eq!(changes.removed, ["second"], "{changes:?}");
    assert!(!changes.kept.contains(&"misbehave".to_string()));
}
