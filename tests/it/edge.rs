//! The HTTP edge through the real binary: clients that connect and dawdle
//! are timed out, capped and bounded in memory while genuine agents keep
//! authenticating; shutdown has a deadline; SIGHUP does not stop the service.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use idgate_tests::pg::{fresh_database, TestDb};
use idgate_tests::root;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{add_agent_cli, idgate, serve_command, Served};

/// Every wait in these tests is a failure guard, never a measurement.
pub(crate) const GUARD: Duration = Duration::from_secs(60);

/// The start of a request head that never ends.
const HALF_HEAD: &[u8] = b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: idgate\r\nContent-Ty";

/// A registered agent and the genuine AWS request that authenticates it.
pub(crate) struct Agent {
    pub(crate) token: String,
    pub(crate) request: String,
}

pub(crate) fn agent(db: &TestDb) -> Agent {
    Agent {
        token: add_agent_cli(db, "edge", "i-076e9b91f7c420782", "main"),
        request: std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap(),
    }
}

/// Authenticates `agent` through `client` at `base`; panics unless it gets its token.
pub(crate) async fn authenticate(client: &reqwest::Client, base: &str, agent: &Agent) -> reqwest::Version {
    let response = tokio::time::timeout(
        GUARD,
        client
            .post(format!("{base}/api/v2/workspaceagents/aws-instance-identity"))
            .body(agent.request.clone())
            .send(),
    )
    .await
    .expect("authentication hung")
    .expect("authentication failed");
    let version = response.version();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!((status, body), (200, json!({"session_token": agent.token})));
    version
}

/// Starts the child with `n` descriptors, soft and hard, so it cannot raise them.
fn limit_descriptors(cmd: &mut Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this test process's soft descriptor limit so it can hold `n` sockets.
fn allow_own_descriptors(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= n,
        "this test needs {n} descriptors; the hard limit is {}",
        lim.rlim_max
    );
    if lim.rlim_cur < n {
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

fn address(served: &Served) -> String {
    served.base.strip_prefix("http://").unwrap().to_string()
}

/// Waits until the server has closed `stream` (EOF or reset); panics past the guard.
pub(crate) async fn closed_by_server(mut stream: TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept a connection open past the guard"),
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// SIGTERM, then the exit status; panics if the process outlives `guard`.
pub(crate) async fn terminate(served: &mut Served, signal: i32, guard: Duration) -> ExitStatus {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(served.child.id() as i32, signal) };
    exited(served, guard).await
}

/// The exit status once the process exits; panics if it outlives `guard`.
pub(crate) async fn exited(served: &mut Served, guard: Duration) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + guard;
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = served.child.kill();
            panic!("idgate had not exited {guard:?} later");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The review's attack: under a 1,024-descriptor limit, 1,100 connections that
/// send half a request head and stop. The cap keeps `accept` from failing (no
/// `EMFILE`), the header timeout closes every one of them, and a genuine agent
/// that arrives while they are held is answered (it waits in the backlog for a
/// slot), as is one after.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_heads_under_1024_descriptors_time_out_and_agents_still_authenticate() {
    const HELD: usize = 1_100;
    allow_own_descriptors(HELD as u64 + 256);
    let db = fresh_database().await;
    let agent = agent(&db);
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_LIMITS_HEADER_TIMEOUT_MS", "2000");
    limit_descriptors(&mut cmd, 1024);
    let mut served = serve_command(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", served.child.id())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("1024")),
        "{limits}"
    );
    let addr = address(&served);

    let mut held = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        // Past the cap the kernel completes the handshake and queues the connection.
        let mut stream = tokio::time::timeout(GUARD, TcpStream::connect(&addr))
            .await
            .unwrap()
            .unwrap();
        stream.write_all(HALF_HEAD).await.unwrap();
        held.push(stream);
    }
    let client = reqwest::Client::new();
    authenticate(&client, &served.base, &agent).await;

    let closes: Vec<_> = held.into_iter().map(|s| tokio::spawn(closed_by_server(s))).collect();
    for close in closes {
        let answered = close.await.unwrap();
        assert!(
            answered.is_empty(),
            "a half head got an answer: {:?}",
            String::from_utf8_lossy(&answered)
        );
    }
    authenticate(&reqwest::Client::new(), &served.base, &agent).await;

    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
    let logs = served.stderr.join().unwrap();
    assert!(
        !logs.contains("accept failed"),
        "the cap let accept run out of descriptors:\n{logs}"
    );
}

/// 1,000 connections each trying to send a 400 KB head: the server reads no
/// more than the head cap of each (16 KiB), answers 431, and its peak RSS grows
/// by a bounded amount (before the edge it grew by 457 MiB). Then 1,000 held
/// open just under the cap: bounded too.
#[tokio::test(flavor = "multi_thread")]
async fn large_unfinished_heads_keep_memory_bounded() {
    const CLIENTS: usize = 1_000;
    const HEAD: usize = 400 * 1024;
    const BOUND_KIB: u64 = 96 * 1024;
    allow_own_descriptors(CLIENTS as u64 + 256);
    let db = fresh_database().await;
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_LIMITS_HEADER_TIMEOUT_MS", "30000");
    let mut served = serve_command(cmd);
    let pid = served.child.id();
    let addr = address(&served);
    // Warm up (one request through every layer), then measure from here:
    // writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    let health = reqwest::get(format!("{}/healthz", served.base)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = status_kib(pid, "VmRSS:");

    let mut head = b"GET /healthz HTTP/1.1\r\nHost: idgate\r\nX-Padding: ".to_vec();
    head.resize(HEAD, b'a');
    let head = std::sync::Arc::new(head);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut stream = tokio::time::timeout(GUARD, TcpStream::connect(&addr))
            .await
            .unwrap()
            .unwrap();
        let head = head.clone();
        clients.push(tokio::spawn(async move {
            // The server stops reading at its cap, so this ends in an error.
            let _ = tokio::time::timeout(GUARD, stream.write_all(&head))
                .await
                .expect("write hung");
            closed_by_server(stream).await
        }));
    }
    let mut refused = 0;
    for client in clients {
        let answer = client.await.unwrap();
        if answer.starts_with(b"HTTP/1.1 431") {
            refused += 1;
        }
    }
    let peak = status_kib(pid, "VmHWM:");
    eprintln!(
        "RSS before {before} KiB, peak during {CLIENTS} large heads {peak} KiB (+{} KiB); {refused} answers of 431 read",
        peak.saturating_sub(before)
    );
    assert!(
        peak < before + BOUND_KIB,
        "peak RSS grew from {before} KiB to {peak} KiB for {CLIENTS} unfinished heads"
    );
    assert!(refused > 0, "no client read the 431 that answers an oversized head");

    // The same number held open, each just under the cap: what the server
    // keeps per connection while it waits for the rest of the head.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = status_kib(pid, "VmRSS:");
    let mut under = b"GET /healthz HTTP/1.1\r\nHost: idgate\r\nX-Padding: ".to_vec();
    under.resize(12 * 1024, b'a');
    let mut held = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut stream = tokio::time::timeout(GUARD, TcpStream::connect(&addr))
            .await
            .unwrap()
            .unwrap();
        stream.write_all(&under).await.unwrap();
        held.push(stream);
    }
    // Accepted in order: once this is answered, every held one has been accepted.
    let health = reqwest::get(format!("{}/healthz", served.base)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let peak = status_kib(pid, "VmHWM:");
    eprintln!(
        "RSS before {before} KiB, peak with {CLIENTS} 12 KiB heads held {peak} KiB (+{} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak < before + BOUND_KIB,
        "peak RSS grew from {before} KiB to {peak} KiB holding {CLIENTS} unfinished heads"
    );
    drop(held);
    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
}

/// A head over the cap is answered 431 Request Header Fields Too Large.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_cap_is_431() {
    let db = fresh_database().await;
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_LIMITS_MAX_HEAD_BYTES", "4096");
    let mut served = serve_command(cmd);
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{}/healthz", served.base))
        .header("x-padding", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200, "under the cap");
    // Sent whole before the server reads it, so the answer is not lost to a reset.
    let mut stream = TcpStream::connect(address(&served)).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: idgate\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(6000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_by_server(stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
}

/// SIGTERM with an unfinished head and a request stuck on its body: the
/// server stops within the grace period although neither client would ever
/// finish and their own timeouts are ten minutes away.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_what_is_left_after_the_grace_period() {
    let db = fresh_database().await;
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_LIMITS_HEADER_TIMEOUT_MS", "600000")
        .env("IDGATE_LIMITS_IDLE_TIMEOUT_MS", "600000")
        .env("IDGATE_LIMITS_REQUEST_TIMEOUT_MS", "600000")
        .env("IDGATE_LIMITS_SHUTDOWN_GRACE_MS", "1000");
    let mut served = serve_command(cmd);
    let addr = address(&served);
    let mut unfinished_head = TcpStream::connect(&addr).await.unwrap();
    unfinished_head.write_all(HALF_HEAD).await.unwrap();
    let mut stuck_body = TcpStream::connect(&addr).await.unwrap();
    stuck_body
        .write_all(
            b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: idgate\r\n\
              Content-Length: 1000\r\n\r\n{\"document\": ",
        )
        .await
        .unwrap();
    // Connections are accepted in the order they connected: once this one is
    // answered, both above are being served.
    let health = reqwest::get(format!("{}/healthz", served.base)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Ten minutes are what would keep it; thirty seconds bound a one-second grace.
    let status = terminate(&mut served, libc::SIGTERM, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    for stream in [unfinished_head, stuck_body] {
        closed_by_server(stream).await;
    }
    let logs = served.stderr.join().unwrap();
    assert!(logs.contains("grace period ran out"), "{logs}");
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
}

/// SIGHUP reloads instead of killing the process (its default action): the
/// service keeps authenticating and logs the reload.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_does_not_stop_the_service() {
    let db = fresh_database().await;
    let agent = agent(&db);
    let mut served = serve_command(idgate(&db, &[]));
    let client = reqwest::Client::new();
    // SIGHUP, and wait until the reload it starts has finished: an
    // authentication alone can be answered before that, and SIGTERM then
    // ends the process before the reload logs.
    assert!(crate::reload::hup(&client, &served).await, "the reload succeeded");
    authenticate(&client, &served.base, &agent).await;
    assert!(served.child.try_wait().unwrap().is_none(), "SIGHUP stopped idgate");
    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
    let logs = served.stderr.join().unwrap();
    assert!(logs.contains("reloaded: the new provider set is serving"), "{logs}");
}
