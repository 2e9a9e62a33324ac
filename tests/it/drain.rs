//! The drain on SIGTERM through the real binary: `/readyz` fails at once while
//! new and kept-alive connections are still served, each answer closing its
//! connection; the process exits 0 when the drain is over, or at once on a
//! second SIGTERM. Order and outcomes are asserted, never durations.

use std::time::Duration;

use idgate_tests::pg::fresh_database;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge::{agent, closed_by_server, exited, terminate, GUARD};
use crate::http::{idgate, post, serve_command, Served};

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: idgate\r\n\r\n";

fn sigterm(served: &Served) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(served.child.id() as i32, libc::SIGTERM) };
}

/// `/readyz` until it answers 503 (the signal is handled asynchronously); its body.
async fn wait_for_draining(base: &str) -> String {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if response.status().as_u16() == 503 {
            return response.text().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never failed after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `/healthz` answer read from a kept-alive connection, lowercased: the
/// connection stays open, so the body's length ends it, not the server.
async fn health_answer(stream: &mut TcpStream) -> String {
    stream.write_all(HEALTH).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(seen).unwrap().to_ascii_lowercase()
}

/// SIGTERM starts the drain: `/readyz` answers 503 `draining` and
/// `idgate_draining` is 1, while a new connection still authenticates (its
/// answer says `Connection: close`) and a connection kept alive from before
/// gets its next answer with `Connection: close` and is closed. When the drain
/// is over, the process stops accepting and exits 0, logging each step in order.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readyz_and_serves_with_connection_close_until_the_drain_ends() {
    let db = fresh_database().await;
    let agent = agent(&db);
    let mut cmd = idgate(&db, &[]);
    // Long enough for the checks below on a loaded machine; its end is awaited, not timed.
    cmd.env("IDGATE_LIMITS_DRAIN_MS", "10000");
    let mut served = serve_command(cmd);
    let ready = reqwest::get(format!("{}/readyz", served.base)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "ready before the signal");
    let mut kept = TcpStream::connect(served.base.strip_prefix("http://").unwrap())
        .await
        .unwrap();
    let before = health_answer(&mut kept).await;
    assert!(before.starts_with("http/1.1 200"), "{before}");
    assert!(
        !before.contains("connection: close"),
        "closed before the drain: {before}"
    );

    sigterm(&served);
    let body = wait_for_draining(&served.base).await;
    assert!(body.contains("draining"), "{body}");
    let metrics = crate::mounts::get_text(&reqwest::Client::new(), &format!("{}/metrics", served.base)).await;
    assert!(metrics.contains("\nidgate_draining 1\n"), "{metrics}");

    // `post` opens a connection of its own: accepted during the drain.
    let (status, body, headers) = post(&served.base, "aws-instance-identity", agent.request.clone()).await;
    assert_eq!((status, body), (200, json!({"session_token": agent.token})));
    assert_eq!(
        headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "{headers:?}"
    );

    kept.write_all(HEALTH).await.unwrap();
    let after = String::from_utf8(closed_by_server(kept).await)
        .unwrap()
        .to_ascii_lowercase();
    assert!(after.starts_with("http/1.1 200"), "{after}");
    assert!(after.contains("connection: close"), "{after}");

    let status = exited(&mut served, GUARD).await;
    assert!(status.success(), "{status}");
    let logs = served.stderr.join().unwrap();
    let at = |message: &str| {
        logs.find(message)
            .unwrap_or_else(|| panic!("no {message:?} in the logs:\n{logs}"))
    };
    assert!(at("draining: /readyz answers 503") < at("drain over"), "{logs}");
    assert!(at("drain over") < at("shutting down: no new connections"), "{logs}");
    assert!(at("shutting down: no new connections") < at("\"stopped\""), "{logs}");
}

/// A second SIGTERM during a drain of a minute ends it: the process stops
/// and exits 0 long before the minute (the bound is a liveness guard).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_cuts_the_drain_short() {
    let db = fresh_database().await;
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_LIMITS_DRAIN_MS", "60000");
    let mut served = serve_command(cmd);
    sigterm(&served);
    // Signals that arrive together are delivered as one: wait until the first
    // has been handled before sending the second.
    wait_for_draining(&served.base).await;
    let status = terminate(&mut served, libc::SIGTERM, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let logs = served.stderr.join().unwrap();
    assert!(logs.contains("drain cut short by a second signal"), "{logs}");
    assert!(!logs.contains("drain over"), "{logs}");
}
