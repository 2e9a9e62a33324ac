//! The Coder front (`deploy/haproxy/coder-front.cfg`, issue 31 item 4) as it
//! ships: Debian's HAProxy runs the committed file itself, its addresses given
//! through the environment variables the file reads, in front of a real
//! `idgate serve` and a stand-in `coderd` that answers anything with where the
//! request went. What it shows: Coder's three instance-identity routes reach
//! idgate (and a genuine AWS identity comes back as the agent's token), and
//! nothing else does, not even a near miss.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use axum::http::{Method, Uri};
use axum::{Json, Router};
use idgate_tests::pg::fresh_database;
use idgate_tests::root;
use idgate_tests::topology::{ensure_packages, find_command, free_ports, spawn_logged, stop};
use serde_json::{json, Value};

use crate::http::{register, serve_binary, Served};
use crate::reload::aws_body;

/// The instance ID in `examples/aws-request.json`.
const INSTANCE: &str = "i-076e9b91f7c420782";

/// The name puts the test under `topology::`, the filter of
/// `cargo xtask test --topology`, which installs HAProxy; a plain `test`
/// skips it as it skips the other topology scenarios.
mod topology {
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "topology: cargo xtask test --topology"]
    async fn coder_front_routes_coders_three_paths_to_idgate_and_the_rest_to_coderd() {
        super::routes().await;
    }
}

async fn routes() {
    ensure_packages().unwrap_or_else(|e| panic!("{e}"));
    let db = fresh_database().await;
    let token = register(&db, "demo", INSTANCE, "main").await;
    let idgate = Stopped(serve_binary(&db));
    let coderd = stand_in_coderd().await;
    let front = Front::start(idgate.0.base.trim_start_matches("http://"), coderd);
    let client = reqwest::Client::new();
    let aws = "/api/v2/workspaceagents/aws-instance-identity";

    // HAProxy's first health checks may not have run yet: until idgate's
    // answer comes through, a 503 from HAProxy means "not up yet".
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let answer = send(&client, &front.url(), Method::POST, aws, Some(aws_body())).await;
        if answer.0 != 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("POST {aws} → {status} {body}");
    assert_eq!(
        (status, &body),
        (200, &json!({"session_token": token})),
        "{}",
        front.log()
    );
    // The ACL matches the path without its query string.
    let with_query = format!("{aws}?trace=1");
    let (status, body) = send(&client, &front.url(), Method::POST, &with_query, Some(aws_body())).await;
    eprintln!("POST {with_query} → {status} {body}");
    assert_eq!((status, &body), (200, &json!({"session_token": token})));

    // Azure's and Google's routes reach idgate too: its Coder-shaped refusal of
    // a body that is not an object names Coder's Go type, and is exactly what
    // idgate answers directly.
    for (provider, go_type) in [
        ("azure", "agentsdk.AzureInstanceIdentityToken"),
        ("google", "agentsdk.GoogleInstanceIdentityToken"),
    ] {
        let path = format!("/api/v2/workspaceagents/{provider}-instance-identity");
        let through = send(&client, &front.url(), Method::POST, &path, Some(json!("x"))).await;
        let direct = send(&client, &idgate.0.base, Method::POST, &path, Some(json!("x"))).await;
        eprintln!("POST {path} → {} {}", through.0, through.1);
        assert_eq!(through, direct, "{path}: through the front vs idgate itself");
        assert_eq!(through.0, 400, "{path}: {}", through.1);
        assert!(through.1.to_string().contains(go_type), "{path}: {}", through.1);
    }

    // Everything else goes to coderd, path unchanged: Coder's other agent and
    // user routes, the dashboard, an instance-identity route that is not one
    // of Coder's three (an idgate mount), and Coder's own route with a
    // trailing slash, each with the genuine AWS body where a body makes sense.
    let elsewhere = [
        (Method::GET, "/", None),
        (Method::GET, "/api/v2/users/me", None),
        (
            Method::POST,
            "/api/v2/workspaceagents/me/metadata",
            Some(json!({"key": "v"})),
        ),
        (
            Method::POST,
            "/api/v2/workspaceagents/k8s-instance-identity",
            Some(aws_body()),
        ),
        (
            Method::POST,
            "/api/v2/workspaceagents/aws-instance-identity/",
            Some(aws_body()),
        ),
        (
            Method::POST,
            "/api/v2/workspaceagents/AWS-instance-identity",
            Some(aws_body()),
        ),
    ];
    for (method, path, body) in elsewhere {
        let answer = send(&client, &front.url(), method.clone(), path, body).await;
        eprintln!("{method} {path} → {} {}", answer.0, answer.1);
        assert_eq!(
            answer,
            (
                200,
                json!({"upstream": "coderd", "method": method.as_str(), "path": path})
            ),
            "{method} {path}"
        );
    }
}

/// One request; the answer's status and JSON body (a string if not JSON).
async fn send(client: &reqwest::Client, base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Stands in for `coderd`: 200 to anything (its `/healthz` check included),
/// saying which method and path arrived.
async fn stand_in_coderd() -> u16 {
    let app = Router::new().fallback(|method: Method, uri: Uri| async move {
        Json(json!({"upstream": "coderd", "method": method.as_str(), "path": uri.path()}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// `idgate serve`, stopped even when an assertion fails.
struct Stopped(Served);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// HAProxy running `deploy/haproxy/coder-front.cfg`; dropping it stops HAProxy.
struct Front {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Front {
    /// Both idgate servers of the file point at the one `idgate` (`host:port`):
    /// routing is under test here, balancing is the topology scenarios'.
    fn start(idgate: &str, coderd: u16) -> Front {
        let haproxy = find_command("haproxy").expect("haproxy, installed by ensure_packages");
        let port = free_ports(1).unwrap()[0];
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("coder-front.log");
        let mut cmd = Command::new(haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(root().join("deploy/haproxy/coder-front.cfg"))
            .env("CODER_FRONT_BIND", format!("127.0.0.1:{port}"))
            .env("IDGATE_1", idgate)
            .env("IDGATE_2", idgate)
            .env("CODERD", format!("127.0.0.1:{coderd}"));
        let child = spawn_logged(cmd, &log, None).unwrap_or_else(|e| panic!("starting HAProxy: {e}"));
        let mut front = Front {
            port,
            log,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = front.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("HAProxy is not listening on {port} ({exited:?})\n{}", front.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        front
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(5));
        }
    }
}
