//! Faults under load, bounded in time and request count, loopback only:
//! PostgreSQL frozen then killed and restarted while clients authenticate; a
//! plugin that loops, traps or eats memory while the other providers serve;
//! SIGTERM with requests in flight; and no secret in the logs at `trace`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idgate::api::ApiLimits;
use idgate::db::embedded::EmbeddedCluster;
use idgate::db::registry::{add_agent, NewAgent};
use idgate::db::{Db, PoolSettings};
use idgate_tests::pg::fresh_database;
use idgate_tests::{component_cache_dir, root, sandbox, test_plugin_dir};
use serde_json::{json, Value};

use crate::http::{gcp_config, gcp_token, idgate_binary, register, serve_command, serve_router, Served};

/// What one client saw.
#[derive(Debug)]
enum Seen {
    Token(String),
    /// 503; the body says why, for the failure message.
    Unavailable {
        retry_after: bool,
        body: String,
    },
    Other {
        status: u16,
        body: String,
    },
    /// No HTTP answer at all.
    NoAnswer(String),
}

async fn attempt(client: &reqwest::Client, url: &str, body: &str) -> Seen {
    let response = match client.post(url).body(body.to_string()).send().await {
        Ok(r) => r,
        Err(e) => return Seen::NoAnswer(e.to_string()),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return Seen::NoAnswer(format!("body: {e}")),
    };
    match status {
        200 => Seen::Token(
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["session_token"].as_str().map(String::from))
                .unwrap_or_default(),
        ),
        503 => Seen::Unavailable {
            retry_after,
            body: text,
        },
        _ => Seen::Other { status, body: text },
    }
}

/// The postmaster of the cluster in `data_dir` and its children.
fn cluster_pids(data_dir: &Path) -> Vec<i32> {
    let pidfile = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits for killed processes to go. A process nobody has reaped yet (a zombie:
/// its parent is not waiting for it) still answers `kill(pid, 0)`, so PostgreSQL
/// would take its stale lock files (`postmaster.pid`, the socket's `.lock`) for a
/// live server's and refuse to start; as an init that reaps would, the lock files
/// of a dead postmaster are removed.
fn wait_until_dead(pids: &[i32], data_dir: &Path) {
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(String::from))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| state(p).is_some_and(|s| s != "Z")) {
        assert!(Instant::now() < deadline, "PostgreSQL survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    if state(pids[0]).is_some() {
        let _ = std::fs::remove_file(data_dir.join("postmaster.pid"));
        let _ = std::fs::remove_file(data_dir.join(".s.PGSQL.5432.lock"));
    }
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill(2) on the test's own PostgreSQL processes.
        unsafe { libc::kill(pid, signal) };
    }
}

/// A directory the unprivileged PostgreSQL user can reach when tests run as root.
fn cluster_parent() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if idgate::db::embedded::is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// 64 clients authenticate while PostgreSQL is frozen (SIGSTOP), then killed
/// (SIGKILL) and restarted. While it is away every answer is 503 with
/// `Retry-After`; never a wrong token, never a 500. Once it is back, idgate
/// answers 200 again without a restart, within [`RECOVERY_BOUND`].
#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_then_killed_under_load_is_503_then_recovers() {
    /// How soon after PostgreSQL accepts connections again idgate must answer 200.
    const RECOVERY_BOUND: Duration = Duration::from_secs(10);
    let parent = cluster_parent();
    let data = parent.path().join("pg");
    let start = {
        let data = data.clone();
        move || EmbeddedCluster::start(&data).unwrap()
    };
    let cluster = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let settings = PoolSettings {
        max_connections: 8,
        acquire_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let db = Db::open_with(cluster.connect_options("postgres"), settings)
        .await
        .unwrap();
    let new = NewAgent {
        workspace: "w",
        instance_id: "gce-fault",
        name: "main",
        parent: None,
    };
    let token = add_agent(&db.pool, &new).await.unwrap().auth_token.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let limits = ApiLimits {
        request_timeout: Duration::from_secs(1),
        ..ApiLimits::default()
    };
    let base = serve_router(sandbox().clone(), &gcp_config(tmp.path()), db.pool.clone(), limits).await;
    let url = format!("{base}/api/v2/workspaceagents/google-instance-identity");
    let body = json!({"json_web_token": gcp_token("gce-fault")}).to_string();

    let phase = Arc::new(Mutex::new("up"));
    let seen: Arc<Mutex<Vec<(&'static str, Seen)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..64 {
        let (url, body, phase, seen, stop) = (url.clone(), body.clone(), phase.clone(), seen.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let before = *phase.lock().unwrap();
                let s = attempt(&client, &url, &body).await;
                let after = *phase.lock().unwrap();
                // Only answers wholly inside one phase say something about that phase.
                if before == after {
                    seen.lock().unwrap().push((before, s));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    let pids = cluster_pids(cluster.data_dir());
    signal_all(&pids, libc::SIGSTOP);
    *phase.lock().unwrap() = "frozen";
    tokio::time::sleep(Duration::from_secs(3)).await;
    *phase.lock().unwrap() = "killing";
    signal_all(&pids, libc::SIGKILL);
    signal_all(&pids, libc::SIGCONT);
    wait_until_dead(&pids, cluster.data_dir());
    *phase.lock().unwrap() = "down";
    tokio::time::sleep(Duration::from_secs(1)).await;
    *phase.lock().unwrap() = "restarting";
    let again = tokio::task::spawn_blocking(start).await.unwrap();
    let back = Instant::now();
    *phase.lock().unwrap() = "recovering";
    let recovered = loop {
        let n_ok = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, s)| *p == "recovering" && matches!(s, Seen::Token(_)))
            .count();
        if n_ok > 0 {
            break back.elapsed();
        }
        if back.elapsed() > RECOVERY_BOUND {
            let seen = seen.lock().unwrap();
            let last: Vec<_> = seen.iter().rev().take(5).collect();
            panic!("no 200 within {RECOVERY_BOUND:?} of PostgreSQL's restart; the last answers: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    *phase.lock().unwrap() = "recovered";
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    db.pool.close().await;
    tokio::task::spawn_blocking(move || again.stop())
        .await
        .unwrap()
        .unwrap();

    let seen = seen.lock().unwrap();
    let count = |phase: &str, f: &dyn Fn(&Seen) -> bool| seen.iter().filter(|(p, s)| *p == phase && f(s)).count();
    for (phase, s) in seen.iter() {
        match s {
            Seen::Token(t) => assert_eq!(t, &token, "a wrong token in phase {phase}"),
            Seen::Unavailable { retry_after, body } => {
                assert!(*retry_after, "a 503 without Retry-After in phase {phase}: {body}");
                assert!(
                    *phase != "up" && *phase != "recovered",
                    "a 503 while PostgreSQL was up ({phase}): {body}"
                );
            }
            other => panic!("phase {phase}: {other:?} (want 200 or 503 with Retry-After)"),
        }
    }
    assert!(count("up", &|s| matches!(s, Seen::Token(_))) > 0);
    for phase in ["frozen", "down"] {
        assert!(
            count(phase, &|_| true) > 0,
            "no answer at all while PostgreSQL was {phase}"
        );
        assert_eq!(
            count(phase, &|s| matches!(s, Seen::Token(_))),
            0,
            "a token while PostgreSQL was {phase}"
        );
    }
    assert!(count("recovered", &|s| matches!(s, Seen::Token(_))) > 0);
    eprintln!(
        "recovered {recovered:?} after PostgreSQL's restart; answers by phase: {:?}",
        ["up", "frozen", "down", "recovering", "recovered"].map(|p| (p, count(p, &|_| true)))
    );
}

fn terminate(served: Served) -> (std::process::ExitStatus, String) {
    let Served { mut child, stderr, .. } = served;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    (status, stderr.join().unwrap())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The misbehaving fixture answers as `aws` and loops, traps or eats memory on
/// every request, under load, while GCP authentications keep getting 200 from the
/// same process, whose resident memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_plugin_under_load_leaves_the_others_serving() {
    /// Generous: the host and its compiled plugins, plus each call's 64 MiB cap
    /// for the calls that can run at once.
    const RSS_BOUND_KIB: u64 = 768 << 10;
    let db = fresh_database().await;
    let token = register(&db, "w", "gce-load", "main").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let target = test_plugin_dir().parent().unwrap().to_path_buf();
    std::fs::copy(target.join("test-plugins-faulty/aws.wasm"), plugins.join("aws.wasm")).unwrap();
    std::fs::copy(test_plugin_dir().join("gcp.wasm"), plugins.join("gcp.wasm")).unwrap();
    let config = dir.path().join("idgate.toml");
    std::fs::write(
        &config,
        format!("[sandbox]\ndeadline_ms = 100\n{}", gcp_config(dir.path())),
    )
    .unwrap();

    let mut cmd = Command::new(idgate_binary());
    cmd.env_remove("IDGATE_CONFIG")
        .arg("--config")
        .arg(&config)
        .arg("--plugins")
        .arg(&plugins)
        .arg("--cache-dir")
        .arg(component_cache_dir())
        .arg("--database-url")
        .arg(&db.url)
        .env("RUST_LOG", "warn");
    let served = serve_command(cmd);
    let pid = served.child.id();
    let rss_before = rss_kib(pid, "VmRSS:");

    let aws = format!("{}/api/v2/workspaceagents/aws-instance-identity", served.base);
    let gcp = format!("{}/api/v2/workspaceagents/google-instance-identity", served.base);
    let gcp_body = json!({"json_web_token": gcp_token("gce-load")}).to_string();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (aws, gcp, gcp_body) = (aws.clone(), gcp.clone(), gcp_body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut seen = Vec::new();
            for round in 0..12 {
                if i % 2 == 0 {
                    let what = ["loop", "trap", "memory", "panic"][(i / 2 + round) % 4];
                    let body = json!({"document": "d", "signature": what}).to_string();
                    seen.push(("aws", what, attempt(&client, &aws, &body).await));
                } else {
                    seen.push(("gcp", "", attempt(&client, &gcp, &gcp_body).await));
                }
            }
            seen
        }));
    }
    let mut peak_sampled = 0;
    let mut seen = Vec::new();
    for t in tasks {
        peak_sampled = peak_sampled.max(rss_kib(pid, "VmRSS:"));
        seen.extend(t.await.unwrap());
    }
    let hwm = rss_kib(pid, "VmHWM:");
    let (status, logs) = terminate(served);
    assert!(status.success(), "{status}\n{logs}");

    for (provider, what, s) in &seen {
        match (*provider, s) {
            ("gcp", Seen::Token(t)) => assert_eq!(t, &token),
            ("aws", Seen::Other { status: 500, body }) => {
                assert!(body.contains("aws plugin failed"), "{what}: {body}");
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), 24 * 12);
    eprintln!("idgate RSS: {rss_before} KiB at start, {peak_sampled} KiB sampled under load, peak {hwm} KiB");
    assert!(
        hwm < RSS_BOUND_KIB,
        "idgate's peak RSS {hwm} KiB passed {RSS_BOUND_KIB} KiB"
    );
}

/// `idgate serve` on its embedded cluster, SIGTERM while 48 clients authenticate:
/// every request idgate took up (one audit line each) got its 200, the process
/// exits 0, and the cluster is stopped cleanly (no `postmaster.pid` left).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_every_accepted_request_and_stops_the_embedded_cluster() {
    let parent = cluster_parent();
    let data = parent.path().join("idgate");
    let idgate = || {
        let mut cmd = Command::new(idgate_binary());
        cmd.arg("--plugins")
            .arg(test_plugin_dir())
            .arg("--cache-dir")
            .arg(component_cache_dir())
            .env_remove("IDGATE_DATABASE_URL")
            .env("IDGATE_DATA_DIR", &data)
            .env("IDGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        cmd
    };
    let out = idgate()
        .args([
            "agents",
            "add",
            "--workspace",
            "w",
            "--instance-id",
            "i-076e9b91f7c420782",
            "--name",
            "main",
        ])
        .env_remove("IDGATE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let served = serve_command(idgate());
    let url = format!("{}/api/v2/workspaceagents/aws-instance-identity", served.base);
    let body = std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap();

    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..48 {
        let (url, body, answered) = (url.clone(), body.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut seen = Vec::new();
            loop {
                let s = attempt(&client, &url, &body).await;
                let done = matches!(s, Seen::NoAnswer(_));
                if !done {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                seen.push(s);
                if done {
                    return seen;
                }
            }
        }));
    }
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, logs) = tokio::task::spawn_blocking(move || terminate(served)).await.unwrap();
    let mut tokens = 0;
    let mut unanswered = std::collections::BTreeSet::new();
    for c in clients {
        for s in c.await.unwrap() {
            match s {
                Seen::Token(t) => {
                    assert_eq!(t, token);
                    tokens += 1;
                }
                Seen::NoAnswer(why) => {
                    unanswered.insert(why);
                }
                other => panic!("during shutdown: {other:?}"),
            }
        }
    }
    assert!(status.success(), "{status}\n{logs}");
    let audits = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "idgate::audit")
        .count();
    eprintln!("{tokens} answered before SIGTERM; then the clients saw: {unanswered:?}");
    assert_eq!(
        audits, tokens,
        "requests idgate took up vs answers the clients received"
    );
    assert!(logs.contains("embedded PostgreSQL stopped"), "{logs}");
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "postmaster.pid left behind: the cluster did not stop cleanly"
    );
}

/// At `RUST_LOG=trace`, authenticating with every provider writes no session
/// token, signature, document or JWT to the logs.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs_even_at_trace() {
    let db = fresh_database().await;
    let aws_token = register(&db, "w", "i-076e9b91f7c420782", "main").await;
    let gcp_token_value = register(&db, "w2", "gce-logs", "main").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idgate.toml");
    std::fs::write(&config, gcp_config(dir.path())).unwrap();
    let idgate = |log: &str| {
        let mut cmd = Command::new(idgate_binary());
        cmd.env_remove("IDGATE_CONFIG")
            .arg("--config")
            .arg(&config)
            .arg("--plugins")
            .arg(test_plugin_dir())
            .arg("--cache-dir")
            .arg(component_cache_dir())
            .arg("--database-url")
            .arg(&db.url)
            .env("RUST_LOG", log);
        cmd
    };
    // A first start compiles this configuration's snapshots into the cache:
    // Cranelift's own trace output would otherwise take minutes and say nothing
    // about requests.
    let (status, logs) = terminate(serve_command(idgate("warn")));
    assert!(status.success(), "{logs}");
    let served = serve_command(idgate("trace"));

    let aws_body = std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap();
    let azure_body = std::fs::read_to_string(root().join("examples/azure-request.json")).unwrap();
    let jwt = gcp_token("gce-logs");
    let client = reqwest::Client::new();
    let post = |path: &str, body: String| {
        client
            .post(format!("{}/api/v2/workspaceagents/{path}", served.base))
            .body(body)
            .send()
    };
    let r = post("aws-instance-identity", aws_body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = post("google-instance-identity", json!({"json_web_token": jwt}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The genuine Azure document has long expired: refused, but it went through the plugin.
    let r = post("azure-instance-identity", azure_body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, logs) = terminate(served);
    assert!(status.success());
    assert!(logs.contains("TRACE"), "the log level did not reach trace");

    let aws: Value = serde_json::from_str(&aws_body).unwrap();
    let azure: Value = serde_json::from_str(&azure_body).unwrap();
    let signature = aws["signature"].as_str().unwrap();
    let document = aws["document"].as_str().unwrap();
    let azure_signature = azure["signature"].as_str().unwrap();
    let jwt_signature = jwt.rsplit('.').next().unwrap();
    let secrets = [
        ("aws session token", aws_token.as_str()),
        ("gcp session token", gcp_token_value.as_str()),
        ("aws signature", &signature[..40]),
        ("aws signature tail", &signature[signature.len() - 40..]),
        ("aws document", &document[..60]),
        (
            "aws document (escaped)",
            &serde_json::to_string(document).unwrap()[..60],
        ),
        ("azure signature", &azure_signature[..40]),
        ("azure signature tail", &azure_signature[azure_signature.len() - 40..]),
        ("jwt", &jwt[..60]),
        ("jwt signature", jwt_signature),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the logs at trace contain the {what}");
    }
}
