//! `idgate-agent token` end to end, against the stand-ins: what it prints,
//! where, and with which exit code.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// Runs the binary with only `env` (and PATH) in its environment, so the
/// machine's proxies or CODER_* variables cannot change the outcome.
fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idgate-agent"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn aws_args<'a>(imds: &'a str, server: &'a str) -> Vec<&'a str> {
    vec![
        "token",
        "--auth",
        "aws-instance-identity",
        "--agent-url",
        server,
        "--metadata-url",
        imds,
    ]
}

#[test]
fn aws_agent_name_selects_the_token() {
    let (imds, server) = (imds(), idgate());
    let (m, s) = (imds.url(), server.url());
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev"]);
    let o = agent(&args, &[]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str(), stderr(&o).as_str()),
        (Some(0), "tok-dev\n", "")
    );

    // The same from the environment, as cloud-init sets it, endpoint from the AWS SDKs' variable.
    let env = [
        ("CODER_AGENT_AUTH", "aws-instance-identity"),
        ("CODER_AGENT_URL", s.as_str()),
        ("CODER_AGENT_NAME", "main"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", m.as_str()),
    ];
    let o = agent(&["token"], &env);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "tok-main\n"),
        "{}",
        stderr(&o)
    );
    // The flag wins over the variable.
    let o = agent(&["token", "--agent-name", "dev"], &env);
    assert_eq!(stdout(&o), "tok-dev\n");

    let bodies: Vec<_> = server.requests().iter().map(|r| r.json()).collect();
    assert!(bodies
        .iter()
        .all(|b| b["document"] == AWS_DOCUMENT && b["signature"] == AWS_SIGNATURE));
}

#[test]
fn ambiguous_instance_lists_the_agents() {
    let (imds, server) = (imds(), idgate());
    let (m, s) = (imds.url(), server.url());
    let o = agent(&aws_args(&m, &s), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains(r#"Multiple agents found with instance ID "i-076e9b91f7c420782""#),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o)
            .trim_end()
            .ends_with("Set CODER_AGENT_NAME to one of: dev, main"),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.requests().len(), 1, "409 is not retried");
}

#[test]
fn agent_name_is_trimmed_and_blank_is_omitted() {
    let (imds, server) = (imds(), idgate());
    let (m, s) = (imds.url(), server.url());
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "  dev\t"]);
    assert_eq!(stdout(&agent(&args, &[])), "tok-dev\n");
    let o = agent(&aws_args(&m, &s), &[("CODER_AGENT_NAME", "   ")]);
    assert_eq!(o.status.code(), Some(1));
    let bodies: Vec<_> = server.requests().iter().map(|r| r.json()).collect();
    assert_eq!(bodies[0]["agent_name"], "dev");
    assert!(bodies[1].get("agent_name").is_none(), "{}", bodies[1]);
}

#[test]
fn unavailable_with_retry_after_then_token() {
    let imds = imds();
    let server = StandIn::start(|r, i| {
        if i == 0 {
            Response::json(503, serde_json::json!({"message": "Database unavailable."})).header("Retry-After", "1")
        } else {
            idgate_answer(r)
        }
    });
    let (m, s) = (imds.url(), server.url());
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev", "--timeout", "30s"]);
    let started = Instant::now();
    let o = agent(&args, &[]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "tok-dev\n"),
        "{}",
        stderr(&o)
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    assert_eq!(server.requests().len(), 2);
    assert!(
        stderr(&o).contains("503") && stderr(&o).contains("trying again"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("tok-dev"));
}

#[test]
fn not_found_is_retried_only_with_retry_all() {
    let imds = imds();
    let server = StandIn::start(|r, i| {
        if i < 2 {
            Response::json(404, serde_json::json!({"message": "Workspace agent not found."}))
        } else {
            idgate_answer(r)
        }
    });
    let (m, s) = (imds.url(), server.url());
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "main"]);
    let o = agent(&args, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("HTTP 404") && stderr(&o).contains("Workspace agent not found."),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.requests().len(), 1);

    args.extend(["--retry-all", "--timeout", "30s", "--quiet"]);
    let o = agent(&args, &[]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str(), stderr(&o).as_str()),
        (Some(0), "tok-main\n", "")
    );
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn output_file_is_0600_and_stdout_stays_empty() {
    let (imds, server) = (imds(), idgate());
    let (m, s) = (imds.url(), server.url());
    let dir = scratch("cli-output");
    let path = dir.join("agent-token");
    std::fs::write(&path, "stale").unwrap();
    let p = path.to_str().unwrap();
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev", "--output-file", p]);
    let o = agent(&args, &[]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), ""), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok-dev");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn command_runs_with_the_token() {
    let (imds, server) = (imds(), idgate());
    let (m, s) = (imds.url(), server.url());
    let dir = scratch("cli-exec");
    let seen = dir.join("seen");
    let script = format!("printf %s \"$CODER_AGENT_TOKEN\" > '{}'; exit 7", seen.display());
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "main", "--", "sh", "-c", &script]);
    let o = agent(&args, &[]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "the command's own exit status: {}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "tok-main");

    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "main", "--", "/nonexistent/agent"]);
    assert_eq!(agent(&args, &[]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plain_http_to_another_host_is_refused() {
    let imds = imds();
    let m = imds.url();
    for url in ["http://10.0.0.1:8080", "http://coder.example.com"] {
        let o = agent(&aws_args(&m, url), &[]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("--allow-insecure-http"), "{}", stderr(&o));
    }
    assert!(imds.requests().is_empty(), "refused before any request");
    // Loopback by name is fine.
    let server = idgate();
    let local = server.url().replace("127.0.0.1", "localhost");
    let mut args = aws_args(&m, &local);
    args.extend(["--agent-name", "dev"]);
    assert_eq!(stdout(&agent(&args, &[])), "tok-dev\n");
}

#[test]
fn unreachable_server_gives_up_with_3() {
    let imds = imds();
    let m = imds.url();
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut args = aws_args(&m, &url);
    args.extend(["--timeout", "1s"]);
    let started = Instant::now();
    let o = agent(&args, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("gave up"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The same for a metadata service that is not there.
    let server = idgate();
    let s = server.url();
    let mut args = aws_args(&url, &s);
    args.extend(["--timeout", "1s", "--quiet"]);
    let o = agent(&args, &[]);
    assert_eq!(o.status.code(), Some(3));
    assert!(server.requests().is_empty());
}

#[test]
fn kubernetes_token_on_an_oidc_mount() {
    let server = idgate();
    let dir = scratch("cli-k8s");
    let file = dir.join("token");
    std::fs::write(&file, format!("{}\n", jwt("system_serviceaccount_ws_dev"))).unwrap();
    let (s, f) = (server.url(), file.to_str().unwrap().to_string());
    let o = agent(
        &[
            "token",
            "--auth",
            "kubernetes",
            "--mount",
            "k8s",
            "--token-file",
            &f,
            "--agent-url",
            &s,
        ],
        &[],
    );
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "tok-system_serviceaccount_ws_dev\n"),
        "{}",
        stderr(&o)
    );
    let r = &server.requests()[0];
    assert_eq!(r.target, "/api/v2/workspaceagents/k8s-instance-identity");
    assert_eq!(
        r.json(),
        serde_json::json!({"token": jwt("system_serviceaccount_ws_dev")})
    );

    // Token sources need a mount.
    let o = agent(
        &["token", "--auth", "kubernetes", "--token-file", &f, "--agent-url", &s],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--mount"));
    let o = agent(
        &[
            "token",
            "--auth",
            "jwt-file",
            "--mount",
            "oidc",
            "--token-file",
            &f,
            "--agent-url",
            &s,
        ],
        &[],
    );
    assert_eq!(stdout(&o), "tok-system_serviceaccount_ws_dev\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn azure_google_and_github_through_the_binary() {
    let server = idgate();
    let s = server.url();
    let azure = azure_imds();
    let o = agent(
        &[
            "token",
            "--auth",
            "azure-instance-identity",
            "--agent-url",
            &s,
            "--metadata-url",
            &azure.url(),
        ],
        &[],
    );
    assert_eq!(stdout(&o), "tok-azure\n", "{}", stderr(&o));

    let gce = gce_metadata();
    let host = gce.url().trim_start_matches("http://").to_string();
    let env = [("GCE_METADATA_HOST", host.as_str())];
    let o = agent(
        &["token", "--auth", "google-instance-identity", "--agent-url", &s],
        &env,
    );
    assert_eq!(stdout(&o), "tok-gce-default-coder\n", "{}", stderr(&o));

    let actions = actions_token_service();
    let request_url = format!("{}/idtoken?api-version=2.0", actions.url());
    let env = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", ACTIONS_REQUEST_TOKEN),
    ];
    let args = [
        "token",
        "--auth",
        "github-actions",
        "--mount",
        "gha",
        "--audience",
        "idgate",
        "--agent-url",
        &s,
    ];
    let o = agent(&args, &env);
    assert_eq!(stdout(&o), "tok-gha-idgate\n", "{}", stderr(&o));
    let o = agent(&args, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("id-token: write"));
}

#[test]
fn usage_errors_exit_2() {
    for (args, env, expect) in [
        (&["token"][..], &[][..], "CODER_AGENT_AUTH"),
        (
            &["token", "--auth", "token", "--agent-url", "https://x"],
            &[],
            "expected one of",
        ),
        (&["token", "--auth", "aws-instance-identity"], &[], "CODER_AGENT_URL"),
        (
            &[
                "token",
                "--auth",
                "kubernetes",
                "--mount",
                "Bad_Name",
                "--agent-url",
                "https://x",
            ],
            &[],
            "mount",
        ),
        (&["token", "stray"], &[("CODER_AGENT_AUTH", "kubernetes")], "after `--`"),
        (&["frobnicate"], &[], "unknown"),
    ] {
        let o = agent(args, env);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
    let o = agent(&["--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Exit codes"));
}

#[test]
fn garbage_answers_do_not_crash_the_agent() {
    let imds = imds();
    let m = imds.url();
    let answers: [(u16, &[u8]); 5] = [
        (200, b"<html>captive portal</html>"),
        (200, br#"{"session_token":"has space"}"#),
        (400, b"\x00\xff\xfe garbage"),
        (302, b""),
        (200, &[b'{'; 200_000]),
    ];
    for (status, body) in answers {
        let body = body.to_vec();
        let server = StandIn::start(move |_, _| Response::new(status, body.clone()));
        let o = agent(&aws_args(&m, &server.url()), &[]);
        assert_eq!(o.status.code(), Some(1), "{status}: {}", stderr(&o));
        assert_eq!(stdout(&o), "");
        assert!(!stderr(&o).contains("panicked"));
    }
}

#[test]
fn https_is_verified_against_the_ca_file() {
    let imds = imds();
    let server = StandIn::start_tls(|r, _| idgate_answer(r));
    let (m, s) = (imds.url(), server.url());
    assert!(s.starts_with("https://127.0.0.1:"));
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev", "--ca-file", TEST_CA]);
    let o = agent(&args, &[]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "tok-dev\n"),
        "{}",
        stderr(&o)
    );
    let local = s.replace("127.0.0.1", "localhost");
    let mut args = aws_args(&m, &local);
    args.extend(["--agent-name", "main", "--ca-file", TEST_CA]);
    assert_eq!(stdout(&agent(&args, &[])), "tok-main\n");
    assert_eq!(server.requests().len(), 2);

    // Not trusted by the system's roots: the handshake fails, nothing is sent.
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev", "--timeout", "1s"]);
    let o = agent(&args, &[]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(3), ""), "{}", stderr(&o));
    assert!(
        stderr(&o).to_lowercase().contains("certificate") || stderr(&o).contains("Issuer"),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.requests().len(), 2);
    // A CA file that holds no certificate is a configuration error.
    let mut args = aws_args(&m, &s);
    args.extend(["--agent-name", "dev", "--ca-file", "/dev/null"]);
    assert_eq!(agent(&args, &[]).status.code(), Some(2));
}
