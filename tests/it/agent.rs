//! The agent side end to end: the real `idgate-agent` binary fetching the
//! genuine AWS document from an IMDSv2 stand-in (or a Kubernetes-shaped token
//! from a file) and exchanging it at a real idgate server with a real
//! PostgreSQL — the "done when", run as an operator would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use idgate::api::ApiLimits;
use idgate_tests::pg::fresh_database;
use idgate_tests::{read_data, sandbox};

use crate::http::{register, serve_binary, serve_router, workspace_binary};
use crate::reload::{cluster_mount, plugin, pod_token, Live, AWS_INSTANCE};

/// `idgate-agent token ARGS`, with no `CODER_AGENT_*` from the test's own environment.
fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_binary("idgate-agent"));
    cmd.arg("token")
        .args(args)
        .env_remove("CODER_AGENT_NAME")
        .env_remove("CODER_AGENT_URL")
        .env_remove("CODER_AGENT_AUTH")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .stdin(Stdio::null());
    cmd
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{out:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The IMDSv2 stand-in serving the genuine document and signature of `tests/data/aws/`.
fn imds_v2() -> String {
    idgate_tests::imds::serve(
        read_data("aws/coder_iid_document.json"),
        read_data("aws/coder_iid_signature.b64"),
    )
    .unwrap()
}

/// The "done when": dev's token by `--agent-name`, main's by
/// `CODER_AGENT_NAME`, and without a name the 409 naming both, exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_exchanges_the_genuine_aws_document_for_each_agents_token() {
    let db = fresh_database().await;
    let main = register(&db, "aws-ws", AWS_INSTANCE, "main").await;
    let dev = register(&db, "aws-ws", AWS_INSTANCE, "dev").await;
    let served = serve_binary(&db);
    let imds = imds_v2();
    let aws = [
        "--auth",
        "aws-instance-identity",
        "--agent-url",
        &served.base,
        "--metadata-url",
        &imds,
    ];

    let out = agent(&aws).args(["--agent-name", "dev"]).output().unwrap();
    assert_eq!(
        stdout(&out),
        format!("{dev}\n"),
        "stdout holds the token and nothing else"
    );
    let out = agent(&aws).env("CODER_AGENT_NAME", "  main ").output().unwrap();
    assert_eq!(stdout(&out), format!("{main}\n"));

    let out = agent(&aws).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Multiple agents found with instance ID \"{AWS_INSTANCE}\". Set CODER_AGENT_NAME to one of: dev, main"
        )),
        "{stderr}"
    );
    // A name the instance does not have: refused, not retried, exit 1.
    let out = agent(&aws).args(["--agent-name", "nobody"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&main));
    let mut server = served.child;
    let _ = server.kill();
    let _ = server.wait();
}

/// A 503 with `Retry-After` (the server's database pool exhausted) is waited
/// out: the agent retries and prints the token once the pool frees up.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_with_retry_after_is_retried_until_the_token_comes() {
    let db = fresh_database().await;
    let token = register(&db, "aws-ws", AWS_INSTANCE, "main").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect(&db.url)
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let base = serve_router(sandbox().clone(), "", pool.clone(), ApiLimits::default()).await;
    let imds = imds_v2();
    let mut child = agent(&[
        "--auth",
        "aws-instance-identity",
        "--agent-url",
        &base,
        "--metadata-url",
        &imds,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Free the pool only once the agent has reported a 503 and is waiting to retry.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("503") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the agent ended without a 503 retry"
        );
    }
    assert!(line.contains("trying again"), "{line}");
    drop(held);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stdout(&out), format!("{token}\n"));
}

/// A Kubernetes-shaped projected token in a file, exchanged at an `oidc`
/// mount (`--mount k8s`), resolving in that mount's namespace.
#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_token_file_is_exchanged_at_an_oidc_mount() {
    let db = fresh_database().await;
    let pod = "5e1d3c0a-7777-4c1e-9d1a-dddddddddddd";
    let token = register(&db, "pod-ws", &format!("k8s:{pod}"), "main").await;
    let live = Live::start(&db, &[(plugin("test-plugins/oidc.wasm"), "oidc.wasm")], "");
    live.write_config(&cluster_mount(&live, "k8s", false));
    assert!(live.hup().await, "{}", live.get("/readyz").await.1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, pod_token(false, pod)["token"].as_str().unwrap()).unwrap();

    let args = [
        "--auth",
        "kubernetes",
        "--mount",
        "k8s",
        "--token-file",
        file.to_str().unwrap(),
        "--agent-url",
        &live.served.base,
    ];
    let out = agent(&args).output().unwrap();
    assert_eq!(stdout(&out), format!("{token}\n"));
    // A pod of no registered agent: 404 from the server, exit 1, not retried.
    std::fs::write(&file, pod_token(false, "unregistered-pod")["token"].as_str().unwrap()).unwrap();
    let out = agent(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("k8s:unregistered-pod"));
    live.stop();
}
