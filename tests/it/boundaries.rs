//! Mount boundaries, through the real binary as an operator runs it: every
//! mount resolves instance IDs in its own namespace, so a token mount cannot
//! claim a cloud's (or another mount's) instances; a mount's key file is a
//! trusted file, read at start-up and on reload only; an instance ID with a
//! control character never reaches the database.

use std::process::{Command, Stdio};
use std::time::Duration;

use idgate_tests::pg::fresh_database;
use serde_json::json;

use crate::http::{add_agent_cli, idgate_binary, register};
use crate::oidc::{k8s_claims_at, keys, ISSUER_A};
use crate::reload::{aws_body, cluster_mount, plugin, pod_token, Files, Live, AWS_INSTANCE};

fn aws_and_oidc() -> [(std::path::PathBuf, &'static str); 2] {
    [
        (plugin("test-plugins/aws.wasm"), "aws.wasm"),
        (plugin("test-plugins/oidc.wasm"), "oidc.wasm"),
    ]
}

/// The review's first reproduction: an agent registered for an AWS instance;
/// an `oidc` mount `k8s` receives a token whose instance-ID claim is that
/// instance's ID. Before namespaces this answered 200 with the AWS agent's
/// token; now the token resolves `k8s:i-…` and finds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_mount_cannot_claim_a_cloud_instance() {
    let db = fresh_database().await;
    let aws_token = register(&db, "aws-ws", AWS_INSTANCE, "main").await;
    let live = Live::start(&db, &aws_and_oidc(), "");
    live.write_config(&format!("[aws]\n{}", cluster_mount(&live, "k8s", false)));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);

    let forged = pod_token(false, AWS_INSTANCE);
    let (status, body) = live.post("k8s-instance-identity", &forged).await;
    assert_eq!(status, 404, "a k8s token reached the AWS agent: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("k8s:{AWS_INSTANCE}")),
        "{body}"
    );
    // The AWS credential still finds its agent: Coder's three resolve raw IDs.
    let (status, body) = live.post("aws-instance-identity", &aws_body()).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(aws_token.as_str()))
    );

    // An agent registered in the mount's namespace, as `agents add` writes it.
    let pod_agent = add_agent_cli(&db, "pod-ws", &format!("k8s:{AWS_INSTANCE}"), "main");
    let (status, body) = live.post("k8s-instance-identity", &forged).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(pod_agent.as_str()))
    );
    let (status, body) = live.post("aws-instance-identity", &aws_body()).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(aws_token.as_str()))
    );

    // A second mount claiming `k8s`'s namespace when only it says so: the
    // reload is refused, naming both, and the served set stays as it was.
    let sharing = |both: bool| {
        let prefix = "instance_id_prefix = \"k8s\"\n";
        format!(
            "[aws]\n{}{}{}{prefix}",
            cluster_mount(&live, "k8s", false),
            if both { prefix } else { "" },
            cluster_mount(&live, "k8s-next", false),
        )
    };
    live.write_config(&sharing(false));
    assert!(!live.hup().await, "a mount took another's namespace");
    let (_, ready) = live.get("/readyz").await;
    assert!(ready.contains("mounts \"k8s\" and \"k8s-next\""), "{ready}");
    let (status, _) = live.post("k8s-next-instance-identity", &forged).await;
    assert_eq!(status, 404, "the refused mount is not served");
    // Said for both (a key rotation onto a new mount name): both serve the agent.
    live.write_config(&sharing(true));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    for mount in ["k8s", "k8s-next"] {
        let (status, body) = live.post(&format!("{mount}-instance-identity"), &forged).await;
        assert_eq!(
            (status, body["session_token"].as_str()),
            (200, Some(pod_agent.as_str())),
            "{mount}"
        );
    }
    // The audit line names the namespaced ID.
    let logs = live.stop();
    assert!(
        logs.contains(&format!("\"instance_id\":\"k8s:{AWS_INSTANCE}\"")),
        "{logs}"
    );
}

/// `idgate` with `files`' configuration and plugin directory, run to its end
/// (at most a minute): exit code and stderr.
fn run_to_end(db_url: &str, files: &Files, args: &[&str], stdin: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new(idgate_binary())
        .env_remove("IDGATE_CONFIG")
        .arg("--config")
        .arg(files.config())
        .arg("--plugins")
        .arg(files.plugins())
        .arg("--cache-dir")
        .arg(idgate_tests::component_cache_dir())
        .arg("--database-url")
        .arg(db_url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("idgate {args:?} still running after a minute");
}

/// The review's second reproduction, made impossible: a key file others may
/// write stops `serve` and `verify` (exit 2, naming it) and fails a reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_others_may_write_is_refused_everywhere() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_database().await;
    let files = Files::new();
    for (from, name) in aws_and_oidc() {
        files.put_plugin(&from, name);
    }
    let jwks = files.put_file("k8s.jwks.json", &keys().a.jwks().to_string());
    let key_file = files.config().with_file_name("k8s.jwks.json");
    files.write_config(&format!(
        "[mounts.k8s]\nplugin = \"oidc\"\nissuer = {ISSUER_A:?}\naudience = \"idgate\"\n\
         instance_id_claim = \"kubernetes.io.pod.uid\"\njwks_file = {jwks}\n"
    ));
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let body = pod_token(false, "pod-1").to_string();
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["verify", "k8s"]] {
        let (code, stderr) = run_to_end(&db.url, &files, args, &body);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("jwks_file") && stderr.contains("k8s.jwks.json") && stderr.contains("writable"),
            "{args:?}: {stderr}"
        );
    }

    // Trusted at start; made writable by others while serving: the next
    // reload fails and the set it would have replaced keeps serving.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = register(&db, "pod-ws", "k8s:pod-1", "main").await;
    let live = Live::start(&db, &aws_and_oidc(), "");
    live.write_config(&cluster_mount(&live, "k8s", false));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    let key_file = live.config().with_file_name("k8s.jwks.json");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(!live.hup().await, "a reload trusted a key file others may write");
    let (_, ready) = live.get("/readyz").await;
    assert!(ready.contains("writable"), "{ready}");
    let (status, body) = live.post("k8s-instance-identity", &pod_token(false, "pod-1")).await;
    assert_eq!((status, body["session_token"].as_str()), (200, Some(token.as_str())));
    live.stop();
}

/// A key file is read at start-up and on SIGHUP only. Before, an unknown
/// `kid` re-read it at once (and a timer every few minutes): whoever could
/// write the file could add a key without the operator's reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_is_read_at_start_and_on_reload_only() {
    let db = fresh_database().await;
    let token = register(&db, "pod-ws", "k8s:pod-2", "main").await;
    let live = Live::start(&db, &aws_and_oidc(), "");
    live.write_config(&cluster_mount(&live, "k8s", false));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    // Signed by another key, claiming cluster A's issuer.
    let now = idgate::clock::unix_now();
    let other = json!({"token": keys().b.sign(&k8s_claims_at(ISSUER_A, "agents", "pod-2", now))});
    let (status, _) = live.post("k8s-instance-identity", &other).await;
    assert_eq!(status, 401);

    // The other key written into the file: an unknown `kid` does not read it.
    live.put_file("k8s.jwks.json", &keys().b.jwks().to_string());
    let (status, body) = live.post("k8s-instance-identity", &other).await;
    assert_eq!(status, 401, "the key file was re-read without a reload: {body}");
    // The operator's reload reads it.
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    let (status, body) = live.post("k8s-instance-identity", &other).await;
    assert_eq!((status, body["session_token"].as_str()), (200, Some(token.as_str())));
    // And the old key is gone with it.
    let (status, _) = live.post("k8s-instance-identity", &pod_token(false, "pod-2")).await;
    assert_eq!(status, 401);
    live.stop();
}

/// An instance ID holding a control character (a NUL in a token's claim) is
/// malformed before resolution: 400, never a database error.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_id_with_a_control_character_is_malformed() {
    let db = fresh_database().await;
    let live = Live::start(&db, &aws_and_oidc(), "");
    live.write_config(&cluster_mount(&live, "k8s", false));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    for id in ["pod\u{0}", "pod\nx", "pod\u{1b}[31m"] {
        let (status, body) = live.post("k8s-instance-identity", &pod_token(false, id)).await;
        assert_eq!(status, 400, "{id:?}: {body}");
    }
    live.stop();
}
