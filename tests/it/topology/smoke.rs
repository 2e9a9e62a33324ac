//! The topology on its own, before idgate is put in it: a write through the
//! `primary` frontend is read through the `replica` one, a standby with
//! replay paused lags until resumed, after the primary is killed writes go
//! through the `primary` frontend again, and the killed node rejoins as a
//! standby.

use std::time::{Duration, Instant};

use idgate_tests::topology::{server_port_and_recovery, Endpoint, Topology};
use sqlx::{Connection, PgConnection};

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Row `id`'s value through a new connection to `url`, if there.
async fn value(url: &str, id: i32) -> Result<Option<String>, sqlx::Error> {
    let mut c = PgConnection::connect(url).await?;
    let row: Option<(String,)> = sqlx::query_as("SELECT v FROM smoke WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut c)
        .await?;
    let _ = c.close().await;
    Ok(row.map(|(v,)| v))
}

/// Row `id`'s value at `url`, waiting for it to be replayed there. A node
/// that refuses connections for a moment (Patroni restarting it) is waited
/// for too; the last error is in the panic.
async fn wait_for_value(url: &str, id: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = match value(url, id).await {
            Ok(Some(v)) => return v,
            Ok(None) => "not there yet".to_string(),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "row {id} never reached {url}: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "topology: cargo xtask test --topology"]
async fn writes_survive_a_primary_failover() {
    let started = Instant::now();
    let topo = tokio::task::spawn_blocking(|| Topology::start(3)).await.unwrap();
    println!("topology ready in {:.1?}", started.elapsed());

    // The frontends route to what Patroni says.
    let (port, recovery) = server_port_and_recovery(&topo.primary_url()).await.unwrap();
    assert!(!recovery, "the primary frontend reached a standby on {port}");
    let (port, recovery) = server_port_and_recovery(&topo.replica_url()).await.unwrap();
    assert!(recovery, "the replica frontend reached the primary on {port}");

    let mut primary = connect(&topo.primary_url()).await;
    sqlx::raw_sql("CREATE TABLE smoke (id int PRIMARY KEY, v text NOT NULL)")
        .execute(&mut primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO smoke VALUES (1, 'before')")
        .execute(&mut primary)
        .await
        .unwrap();
    assert_eq!(wait_for_value(&topo.replica_url(), 1).await, "before");

    // A standby whose replay is paused keeps answering with what it had.
    let replicas = topo.standbys();
    let (lagging, other) = (replicas[0], replicas[1]);
    topo.pause_replay(lagging).await;
    sqlx::query("INSERT INTO smoke VALUES (3, 'while paused')")
        .execute(&mut primary)
        .await
        .unwrap();
    assert_eq!(
        wait_for_value(&topo.url(Endpoint::Node(other), "postgres"), 3).await,
        "while paused"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // two Patroni cycles: it must not resume
    assert_eq!(
        value(&topo.url(Endpoint::Node(lagging), "postgres"), 3).await.unwrap(),
        None
    );
    topo.resume_replay(lagging).await;
    assert_eq!(
        wait_for_value(&topo.url(Endpoint::Node(lagging), "postgres"), 3).await,
        "while paused"
    );

    let killed = topo.kill_primary();
    // The session's backend outlives its postmaster until it notices (or
    // HAProxy marks the server down and cuts the session): it may still
    // answer for a moment, then fails for good.
    let mut last_answer = None;
    while sqlx::query("SELECT 1").execute(&mut primary).await.is_ok() {
        last_answer = Some(killed.at.elapsed());
        assert!(
            killed.at.elapsed() < Duration::from_secs(10),
            "the old session still answers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "old primary's session: failed after {:.2?} (last answer: {last_answer:.2?})",
        killed.at.elapsed()
    );
    let failover = topo.wait_for_new_primary(Duration::from_secs(90)).await;
    println!(
        "failover: node{} killed; node{} promoted after {:.2?}, primary frontend routed to it after {:.2?}",
        killed.node, failover.node, failover.promoted_after, failover.routed_after
    );
    assert_ne!(failover.node, killed.node);

    // Synchronous mode: what was committed before the kill is still there.
    let mut primary = connect(&topo.primary_url()).await;
    let (before,): (String,) = sqlx::query_as("SELECT v FROM smoke WHERE id = 1")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(before, "before");
    sqlx::query("INSERT INTO smoke VALUES (2, 'after')")
        .execute(&mut primary)
        .await
        .unwrap();
    let _ = primary.close().await;
    // The third node follows the new primary behind the replica frontend.
    assert_eq!(wait_for_value(&topo.replica_url(), 2).await, "after");

    // The old primary comes back as a standby (pg_rewind) with the new row.
    let rejoining = Instant::now();
    topo.restart_node(killed.node);
    topo.wait_for_replica(killed.node, Duration::from_secs(90)).await;
    println!(
        "node{} rejoined as a standby in {:.1?}",
        killed.node,
        rejoining.elapsed()
    );
    assert_eq!(
        wait_for_value(&topo.url(Endpoint::Node(killed.node), "postgres"), 2).await,
        "after"
    );

    let stopping = Instant::now();
    drop(topo);
    println!("topology stopped in {:.1?}", stopping.elapsed());
}
