//! The HTTP API end to end: the real binary for the quickstart flow, the real
//! router (on a loopback socket) for every status, real plugins, a real
//! PostgreSQL.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use idgate::api::{router, ApiLimits, AppState};
use idgate::authenticate::Authenticator;
use idgate::config::FileConfig;
use idgate::db::registry::{add_agent, NewAgent};
use idgate::metrics::Metrics;
use idgate::providers::Providers;
use idgate::sandbox::Sandbox;
use idgate_tests::pg::{fresh_database, TestDb};
use idgate_tests::{component_cache_dir, root, sandbox, test_limits, test_plugin_dir, test_plugin_dir_needs_config};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::gcp::test_keys;

// ---------------------------------------------------------------------------
// The real binary: the README's quickstart.

/// The `idgate` binary `cargo xtask test` builds beside the test binary.
pub(crate) fn idgate_binary() -> PathBuf {
    workspace_binary("idgate")
}

/// A binary of the workspace (`idgate`, `idgate-agent`), which `cargo xtask
/// test` builds beside the test binary.
pub(crate) fn workspace_binary(name: &str) -> PathBuf {
    // target/debug/deps/it-<hash> → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it (cargo xtask test does)",
        bin.display()
    );
    bin
}

pub(crate) fn idgate(db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(idgate_binary());
    cmd.arg("--database-url")
        .arg(&db.url)
        .arg("--plugins")
        .arg(test_plugin_dir())
        .arg("--cache-dir")
        .arg(component_cache_dir())
        .args(args)
        .env_remove("IDGATE_CONFIG")
        // Tests stop servers with SIGTERM and wait: no drain unless a test sets one.
        .env("IDGATE_LIMITS_DRAIN_MS", "0")
        .env("RUST_LOG", "info");
    cmd
}

/// The `idgate` binary serving on a loopback port, its stderr collected.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stderr: std::thread::JoinHandle<String>,
}

/// `idgate serve` on `db`.
pub(crate) fn serve_binary(db: &TestDb) -> Served {
    serve_command(idgate(db, &[]))
}

/// Runs `cmd serve --listen 127.0.0.1:0` with JSON logs (the tests read them)
/// and waits for the address it prints.
pub(crate) fn serve_command(cmd: Command) -> Served {
    serve_command_logging(cmd, "json")
}

/// [`serve_command`] with `log_format` set to `format`.
pub(crate) fn serve_command_logging(cmd: Command, format: &str) -> Served {
    serve_command_at(cmd, "127.0.0.1:0", format)
}

/// [`serve_command_logging`] listening on `listen`.
pub(crate) fn serve_command_at(mut cmd: Command, listen: &str, format: &str) -> Served {
    let mut child = cmd
        .args(["serve", "--listen", listen])
        .env("IDGATE_LOG_FORMAT", format)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("idgate listening on ") {
        Some(base) => Served {
            base: base.to_string(),
            child,
            stderr,
        },
        None => {
            let _ = child.kill();
            panic!("idgate did not start: {line:?}\n{}", stderr.join().unwrap());
        }
    }
}

pub(crate) fn add_agent_cli(db: &TestDb, workspace: &str, instance: &str, name: &str) -> String {
    let out = idgate(
        db,
        &[
            "agents",
            "add",
            "--workspace",
            workspace,
            "--instance-id",
            instance,
            "--name",
            name,
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) async fn post(
    base: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v2/workspaceagents/{path}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_through_the_binary() {
    let db = fresh_database().await;
    let request = std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap();
    let request_dev = std::fs::read_to_string(root().join("examples/aws-request-dev.json")).unwrap();
    let main_token = add_agent_cli(&db, "demo", "i-076e9b91f7c420782", "main");
    let served = serve_binary(&db);

    let (status, body, _) = post(&served.base, "aws-instance-identity", request.clone()).await;
    assert_eq!((status, &body), (200, &json!({"session_token": main_token})));

    let dev_token = add_agent_cli(&db, "demo", "i-076e9b91f7c420782", "dev");
    let (status, body, _) = post(&served.base, "aws-instance-identity", request.clone()).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["message"],
        "Multiple agents found with instance ID \"i-076e9b91f7c420782\". Set CODER_AGENT_NAME to one of: dev, main"
    );
    let (status, body, _) = post(&served.base, "aws-instance-identity", request_dev).await;
    assert_eq!((status, &body), (200, &json!({"session_token": dev_token})));

    let ready = reqwest::get(format!("{}/readyz", served.base)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let spec: Value = reqwest::get(format!("{}/openapi.json", served.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/api/v2/workspaceagents/aws-instance-identity"]["post"].is_object());
    let metrics = reqwest::get(format!("{}/metrics", served.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idgate_requests_total{provider=\"aws\",outcome=\"conflict\"} 1"),
        "{metrics}"
    );

    // SIGTERM: graceful shutdown, exit 0.
    let Served { mut child, stderr, .. } = served;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let logs = stderr.join().unwrap();

    // One audit line per attempt, without the token or the credential.
    let audits: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "idgate::audit")
        .collect();
    assert_eq!(audits.len(), 3, "{logs}");
    assert_eq!(audits[0]["fields"]["instance_id"], "i-076e9b91f7c420782");
    assert_eq!(audits[0]["fields"]["agent"], "main");
    assert_eq!(audits[1]["fields"]["outcome"], "conflict");
    let signature = std::fs::read_to_string(root().join("tests/data/aws/coder_iid_signature.b64")).unwrap();
    for secret in [main_token.as_str(), dev_token.as_str(), &signature.trim()[..40]] {
        assert!(!logs.contains(secret), "logs contain {secret}");
    }
}

// ---------------------------------------------------------------------------
// The router on a loopback socket.

pub(crate) async fn serve_router(sandbox: Arc<Sandbox>, config: &str, pool: sqlx::PgPool, limits: ApiLimits) -> String {
    let file = FileConfig::parse(config).unwrap();
    let state = Arc::new(AppState {
        providers: Providers::new(Authenticator::new(sandbox, &file).unwrap()),
        pool,
        resolver: None,
        metrics: Metrics::default(),
        limits,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    format!("http://{addr}")
}

/// `[gcp]` trusting the test key, via a JWKS file as an operator would offline.
pub(crate) fn gcp_config(dir: &Path) -> String {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, test_keys().a.jwks().to_string()).unwrap();
    format!("[gcp]\njwks_file = {:?}\n", jwks.display().to_string())
}

pub(crate) fn gcp_token(instance_id: &str) -> String {
    let now = idgate::clock::unix_now();
    let claims = json!({
        "iss": "https://accounts.google.com", "aud": "coder", "sub": "1", "iat": now - 10, "exp": now + 3000,
        "google": {"compute_engine": {"instance_id": instance_id, "project_id": "p", "zone": "z", "instance_name": "vm"}},
    });
    test_keys().a.sign(Algorithm::RS256, &claims)
}

pub(crate) async fn register(db: &TestDb, workspace: &str, instance: &str, name: &str) -> String {
    let new = NewAgent {
        workspace,
        instance_id: instance,
        name,
        parent: None,
    };
    add_agent(&db.pool, &new).await.unwrap().auth_token.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_status_of_the_api() {
    let db = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[aws]\nallowed_accounts = [\"111111111111\"]\n",
        gcp_config(tmp.path())
    );
    let base = serve_router(sandbox().clone(), &config, db.pool.clone(), ApiLimits::default()).await;
    let token = register(&db, "w1", "gce-1", "main").await;

    // 200
    let body = json!({"json_web_token": gcp_token("gce-1")}).to_string();
    assert_eq!(
        post(&base, "google-instance-identity", body).await.1,
        json!({"session_token": token})
    );
    // 400: not JSON, then a missing field with Coder's validations array.
    let (status, body, _) = post(&base, "google-instance-identity", "{").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("Request body must be valid JSON."))
    );
    let (status, body, _) = post(&base, "google-instance-identity", "{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"message": "Validation failed.", "validations": [
            {"field": "json_web_token", "detail": "Validation failed for tag \"required\" with value: \"\""}]})
    );
    // 401: a tampered signature (one base64url character changed).
    let mut forged = gcp_token("gce-1").into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, body, _) = post(
        &base,
        "google-instance-identity",
        json!({"json_web_token": forged}).to_string(),
    )
    .await;
    assert_eq!((status, body["message"].as_str()), (401, Some("Invalid GCP identity.")));
    assert!(body["detail"].is_string());
    // 403: the genuine AWS document, from an account the policy does not allow.
    let (status, body, _) = post(
        &base,
        "aws-instance-identity",
        std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // 404: verified, but no agent; then no agent with that name.
    let (status, body, _) = post(
        &base,
        "google-instance-identity",
        json!({"json_web_token": gcp_token("gce-2")}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("Instance with id \"gce-2\" not found."))
    );
    let body = json!({"json_web_token": gcp_token("gce-1"), "agent_name": "nope"}).to_string();
    let (status, body, _) = post(&base, "google-instance-identity", body).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            404,
            Some("No agent found with instance ID \"gce-1\" and name \"nope\".")
        )
    );
    // 409 and its cure.
    let second = register(&db, "w1", "gce-1", "alpha").await;
    let (status, body, _) = post(
        &base,
        "google-instance-identity",
        json!({"json_web_token": gcp_token("gce-1")}).to_string(),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        body["message"].as_str().unwrap().ends_with("one of: alpha, main"),
        "{body}"
    );
    let body = json!({"json_web_token": gcp_token("gce-1"), "agent_name": " alpha "}).to_string();
    assert_eq!(
        post(&base, "google-instance-identity", body).await.1,
        json!({"session_token": second})
    );
    // 413: past the body limit, before any parsing.
    let huge = format!("{{\"json_web_token\":\"{}\"}}", "a".repeat(100 * 1024));
    let (status, body, _) = post(&base, "google-instance-identity", huge).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (413, Some("Request body is too large."))
    );
    // 404 for a provider with no plugin loaded.
    let empty = tempfile::tempdir().unwrap();
    let none = Arc::new(Sandbox::load(empty.path(), None, test_limits()).unwrap());
    let base_none = serve_router(none, "", db.pool.clone(), ApiLimits::default()).await;
    let (status, body, _) = post(
        &base_none,
        "azure-instance-identity",
        json!({"signature": "x", "encoding": "pkcs7"}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("\"azure\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_plugin_fails_its_request_and_others_keep_working() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let target = test_plugin_dir().parent().unwrap().to_path_buf();
    std::fs::copy(target.join("test-plugins-faulty/aws.wasm"), dir.path().join("aws.wasm")).unwrap();
    std::fs::copy(test_plugin_dir().join("gcp.wasm"), dir.path().join("gcp.wasm")).unwrap();
    let faulty = Arc::new(Sandbox::load(dir.path(), Some(&component_cache_dir()), test_limits()).unwrap());
    let base = serve_router(faulty, &gcp_config(dir.path()), db.pool.clone(), ApiLimits::default()).await;
    let token = register(&db, "w", "gce-9", "main").await;

    for what in ["panic", "loop", "memory"] {
        let body = json!({"signature": what, "document": "d"}).to_string();
        let (status, body, _) = post(&base, "aws-instance-identity", body).await;
        assert_eq!(status, 500, "{what}: {body}");
        assert_eq!(body["message"], "Internal error verifying AWS identity.");
        assert!(body["detail"].as_str().unwrap().contains("aws plugin failed"), "{body}");
        let body = json!({"json_web_token": gcp_token("gce-9")}).to_string();
        assert_eq!(
            post(&base, "google-instance-identity", body).await.1,
            json!({"session_token": token})
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_pool_is_503_with_retry_after_not_a_hang() {
    let db = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    register(&db, "w", "gce-5", "main").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&db.url)
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let base = serve_router(
        sandbox().clone(),
        &gcp_config(tmp.path()),
        pool.clone(),
        ApiLimits::default(),
    )
    .await;
    let body = json!({"json_web_token": gcp_token("gce-5")}).to_string();
    let (status, body, headers) = post(&base, "google-instance-identity", body.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    drop(held);
    let body = json!({"json_web_token": gcp_token("gce-5")}).to_string();
    assert_eq!(post(&base, "google-instance-identity", body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_why_a_dropped_in_plugin_is_not_serving() {
    // A plugin with no block in the file that refuses the empty configuration
    // does not stop the server: its provider answers bad-config, and /readyz
    // names the plugin and the key. Writing the block puts it in service.
    let db = fresh_database().await;
    let sandbox = Arc::new(
        Sandbox::load(
            &test_plugin_dir_needs_config(),
            Some(&component_cache_dir()),
            test_limits(),
        )
        .unwrap(),
    );
    let file = FileConfig::parse("").unwrap();
    let auth = Authenticator::new(sandbox.clone(), &file).unwrap();
    let reason = auth.unconfigured().get("misbehave").expect("not serving").clone();
    assert!(
        reason.contains("`k` is required") && reason.contains("[misbehave]"),
        "{reason}"
    );
    match auth.verify("misbehave", "\"echo\"".into(), 0).await {
        Err(idgate::authenticate::AuthError::Call(idgate::sandbox::CallError::Rejected(
            idgate_plugin_kit::VerifyError::BadConfig(why),
        ))) => assert_eq!(why, reason),
        other => panic!("expected bad-config, got {other:?}"),
    }

    let base = serve_router(sandbox.clone(), "", db.pool.clone(), ApiLimits::default()).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("\"misbehave\"") && text.contains("`k` is required"),
        "{text}"
    );

    let base = serve_router(sandbox, "[misbehave]\nk = 1\n", db.pool.clone(), ApiLimits::default()).await;
    assert_eq!(
        reqwest::get(format!("{base}/readyz")).await.unwrap().status().as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_database_without_a_restart() {
    use idgate::db::embedded::EmbeddedCluster;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pg");
    let start = {
        let data = data.clone();
        move || EmbeddedCluster::start(&data).unwrap()
    };
    if idgate::db::embedded::is_root() {
        // The server runs as an unprivileged user that must reach the temp dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cluster = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let db = idgate::db::Db::open_with(cluster.connect_options("postgres"), idgate::db::PoolSettings::default())
        .await
        .unwrap();
    let base = serve_router(sandbox().clone(), "", db.pool.clone(), ApiLimits::default()).await;
    let ready = || async { reqwest::get(format!("{base}/readyz")).await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);
    tokio::task::spawn_blocking(move || cluster.stop().unwrap())
        .await
        .unwrap();
    assert_eq!(ready().await, 503);
    let _again = tokio::task::spawn_blocking(start).await.unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = ready().await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    db.pool.close().await;
    tokio::task::spawn_blocking(move || _again.stop())
        .await
        .unwrap()
        .unwrap();
}

/// An agent name with a forged audit line in it (names come from the database,
/// which Coder or an operator filled) reaches the log through the 409 message:
/// the pretty format keeps it inside its one event, escaped, and writes no ANSI
/// codes to a stderr that is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_line_in_a_refusal_stays_inside_its_audit_event() {
    let db = fresh_database().await;
    // At most 64 characters, as Coder's names.
    let forged = "x\n INFO idgate::audit: outcome=\"ok\" status=200\u{1b}[2K";
    register(&db, "w", "i-076e9b91f7c420782", "main").await;
    register(&db, "w", "i-076e9b91f7c420782", forged).await;
    let Served {
        mut child,
        base,
        stderr,
    } = serve_command_logging(idgate(&db, &[]), "pretty");
    let request = std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap();
    let (status, body, _) = post(&base, "aws-instance-identity", request).await;
    assert_eq!(status, 409, "{body}");
    // The response carries the name as it is; only the log escapes it.
    assert!(body["message"].as_str().unwrap().contains(forged), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = stderr.join().unwrap();
    let audits: Vec<&str> = logs.lines().filter(|l| l.contains("idgate::audit")).collect();
    assert_eq!(audits.len(), 1, "one request, one audit line:\n{logs}");
    assert!(audits[0].contains("outcome=\"conflict\""), "{}", audits[0]);
    assert!(audits[0].contains(r"x\n INFO idgate::audit"), "{}", audits[0]);
    assert!(!logs.contains('\u{1b}'), "ANSI codes in a non-terminal log:\n{logs}");
}
