//! The HA topology (etcd, Patroni-managed PostgreSQL, HAProxy), first on its
//! own: a write through the `primary` frontend is read through the `replica`
//! one, a standby with replay paused lags until resumed, after the primary is
//! killed writes go through the `primary` frontend again, and the killed node
//! rejoins as a standby. Then with idgate in it (issue 31): two `idgate
//! serve` behind an HTTP balancer under authentication load, every answer
//! checked against its agent's token, through a rolling restart, the primary
//! killed (reads on the standbys, then on the primary), a standby lagging
//! behind a rebuild, and registration during the failover.
//!
//! Ignored by default: they install Debian packages if missing and take
//! about 40 s each; `cargo xtask test --topology` runs them. Each scenario
//! prints its figures and appends them to `target/topology/figures.jsonl`;
//! only the targets are asserted (0 failures, clean failures, no
//! wrong token, nothing committed lost), never a timing.

use std::time::{Duration, Instant};

use fleet::{
    failure_summary, longest_gap, ms, ms_between, quantile_ms, record, Answer, Fleet, Outcome, Reads, Traffic,
    WORKSPACE,
};
use idgate_tests::topology::balancer::{CHECK_INTERVAL_MS, FALL, NO_SERVER_MESSAGE, RISE};
use idgate_tests::topology::{server_port_and_recovery, Balancer, Endpoint, Failover, Killed, Options, Topology};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::http::idgate;

mod fleet;

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Row `id`'s value through a new connection to `url`, if there.
async fn value(url: &str, id: i32) -> Option<String> {
    let mut c = connect(url).await;
    let row: Option<(String,)> = sqlx::query_as("SELECT v FROM smoke WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    row.map(|(v,)| v)
}

/// Row `id`'s value at `url`, waiting for it to be replayed there.
async fn wait_for_value(url: &str, id: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = value(url, id).await {
            return v;
        }
        assert!(Instant::now() < deadline, "row {id} never reached {url}");
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
    let replicas = topo.replicas();
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
    assert_eq!(value(&topo.url(Endpoint::Node(lagging), "postgres"), 3).await, None);
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

// ---------------------------------------------------------------------------
// idgate in the topology: two `serve` behind an HTTP balancer, under load.

/// Clients of the traffic, each pausing [`PAUSE`] between requests: a few
/// hundred authentications a second, which leaves the two cores to the
/// servers and Patroni (a saturated machine would time the failover, not
/// idgate).
const CLIENTS: usize = 8;
const PAUSE: Duration = Duration::from_millis(5);

/// A failover in ≈ 6 s instead of 10 (Patroni's `ttl`; `loop_wait` 1 +
/// 2 × `retry_timeout` 2 ≤ `ttl` as Patroni requires), to keep the five
/// scenarios within a few minutes.
async fn start_topology() -> Topology {
    let options = Options {
        ttl: 6,
        retry_timeout: 2,
        ..Options::default()
    };
    tokio::task::spawn_blocking(move || Topology::start_with(options))
        .await
        .unwrap()
}

/// Whether `a` is a 200 with its agent's token among `tokens`.
fn right(tokens: &[String], a: &Answer) -> bool {
    a.token() == Some(tokens[a.agent].as_str())
}

fn sent_between(answers: &[Answer], from: Instant, to: Instant) -> Vec<&Answer> {
    answers.iter().filter(|a| a.sent >= from && a.sent <= to).collect()
}

/// Rolling restart of both replicas, one at a time, under load through the
/// balancer: SIGTERM, exit, start again on the same port, wait until the
/// balancer has it up. The drain (`/readyz` fails while serving goes on,
/// responses close their connections) must outlast the balancer's marking
/// the server down, so no request is sent to a server that has stopped
/// accepting: 0 failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "topology: cargo xtask test --topology"]
async fn idgate_rolling_restart_fails_no_request() {
    let topo = start_topology().await;
    // What the replicas drain for (Fleet::start): the balancer has marked a
    // replica down before it stops accepting.
    let drain = Balancer::drain_needed();
    let mut fleet = Fleet::start(&topo, Reads::Replica).await;
    let traffic = Traffic::start(&fleet.balancer.url(), CLIENTS, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let began = Instant::now();
    let mut restarts = Vec::new();
    for i in 0..fleet.replicas.len() {
        let t = Instant::now();
        fleet.replicas[i].stop().await;
        let exited = t.elapsed();
        let status_at_exit = fleet.balancer.statuses().unwrap_or_default()[i].clone();
        fleet.replicas[i].start().await;
        let listening = t.elapsed();
        fleet.balancer.wait_until(i, true, Duration::from_secs(30)).await;
        restarts.push(json!({
            "replica": i,
            "exited_after_ms": ms(exited),
            "balancer_status_at_exit": status_at_exit,
            "listening_again_after_ms": ms(listening),
            "up_in_balancer_after_ms": ms(t.elapsed()),
        }));
    }
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = traffic.finish().await;

    let failed: Vec<&Answer> = answers.iter().filter(|a| !right(&fleet.tokens, a)).collect();
    let during = sent_between(&answers, began, ended);
    record(
        "rolling_restart",
        json!({
            "replicas": fleet.replicas.len(),
            "clients": CLIENTS,
            "drain_ms": ms(drain),
            "balancer": {"inter_ms": CHECK_INTERVAL_MS, "fall": FALL, "rise": RISE},
            "requests": answers.len(),
            "failed": failed.len(),
            "failures": failure_summary(&failed),
            "restarts": restarts,
            "restart_total_ms": ms(ended - began),
            "requests_during_restarts": during.len(),
            "p50_during_restarts_ms": quantile_ms(&during, 0.5),
            "p99_during_restarts_ms": quantile_ms(&during, 0.99),
            "max_during_restarts_ms": quantile_ms(&during, 1.0),
            "longest_gap_ms": ms(longest_gap(&answers, |a| right(&fleet.tokens, a)).0),
        }),
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {}\n{}",
        failed.len(),
        answers.len(),
        failure_summary(&failed),
        fleet.balancer.log_text()
    );
    fleet.stop().await;
}

/// The figures common to the failover scenarios: the timings of the
/// failover, the longest gap between right answers, and the latencies
/// before and during the event (from the kill to HAProxy routing the
/// `primary` frontend to the new primary).
fn failover_figures(answers: &[Answer], tokens: &[String], killed: Killed, failover: Failover) -> Value {
    let routed_at = killed.at + failover.routed_after;
    let before: Vec<&Answer> = answers.iter().filter(|a| a.sent < killed.at).collect();
    let event = sent_between(answers, killed.at, routed_at);
    let (gap, gap_from) = longest_gap(answers, |a| right(tokens, a));
    let failed: Vec<&Answer> = answers.iter().filter(|a| !right(tokens, a)).collect();
    json!({
        "clients": CLIENTS,
        "requests": answers.len(),
        "failed": failed.len(),
        "failures": failure_summary(&failed),
        "failures_after_kill_ms": failed.iter().take(10).map(|a| ms_between(killed.at, a.done)).collect::<Vec<_>>(),
        "promoted_after_ms": ms(failover.promoted_after),
        "routed_after_ms": ms(failover.routed_after),
        "longest_gap_ms": ms(gap),
        "longest_gap_began_after_kill_ms": gap_from.map(|g| ms_between(killed.at, g)),
        "p99_before_ms": quantile_ms(&before, 0.99),
        "requests_during_event": event.len(),
        "p50_during_event_ms": quantile_ms(&event, 0.5),
        "p99_during_event_ms": quantile_ms(&event, 0.99),
        "max_during_event_ms": quantile_ms(&event, 1.0),
    })
}

/// The primary killed (SIGKILL of its postmaster, then of its Patroni) with
/// resolutions on the standbys (`database_read_url` on the `replica`
/// frontend): authentication goes on untouched, 0 failures, while Patroni
/// promotes a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "topology: cargo xtask test --topology"]
async fn primary_killed_with_reads_on_standbys_fails_no_authentication() {
    let topo = start_topology().await;
    let fleet = Fleet::start(&topo, Reads::Replica).await;
    let traffic = Traffic::start(&fleet.balancer.url(), CLIENTS, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = topo.kill_primary();
    let failover = topo.wait_for_new_primary(Duration::from_secs(60)).await;
    // The promoted standby leaves the `replica` frontend (its sessions cut)
    // after it is routed as primary: keep the load on past that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = traffic.finish().await;

    let failed: Vec<&Answer> = answers.iter().filter(|a| !right(&fleet.tokens, a)).collect();
    record(
        "primary_killed_reads_on_replica",
        failover_figures(&answers, &fleet.tokens, killed, failover),
    );
    // The target. Failing in 3 of 4 runs so far (1–2 of ~6,000,
    // 0.5–0.7 s after the routing): HAProxy's `replica` backend then marks
    // the promoted node down and cuts its sessions (`shutdown-sessions`),
    // and a resolution's retries on a lost connection can each draw another
    // cut connection from the pool.
    assert!(
        failed.is_empty(),
        "{} of {} authentications failed, at {:?} ms after the kill (routed after {:?}): {}",
        failed.len(),
        answers.len(),
        failed.iter().map(|a| ms_between(killed.at, a.done)).collect::<Vec<_>>(),
        failover.routed_after,
        failure_summary(&failed)
    );
    fleet.stop().await;
}

/// The primary killed with resolutions on it (no `database_read_url`):
/// requests fail while there is no primary, but only as 503 with
/// `Retry-After` (idgate's, or the balancer's once it has marked both
/// replicas down on `/readyz`), never 500, never a wrong token. How soon
/// after HAProxy routes to the new primary the first 200 comes is recorded,
/// not asserted (the target is ≤ 1 s): it adds the pool's reconnect
/// and, if the balancer took the replicas out, its `rise` checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "topology: cargo xtask test --topology"]
async fn primary_killed_with_reads_on_primary_fails_only_with_retry_after() {
    let topo = start_topology().await;
    let fleet = Fleet::start(&topo, Reads::Primary).await;
    let traffic = Traffic::start(&fleet.balancer.url(), CLIENTS, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = topo.kill_primary();
    let failover = topo.wait_for_new_primary(Duration::from_secs(60)).await;
    let routed_at = killed.at + failover.routed_after;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answers = traffic.finish().await;

    let tokens = &fleet.tokens;
    let unclean: Vec<&Answer> = answers
        .iter()
        .filter(|a| {
            !right(tokens, a)
                && !matches!(
                    a.outcome,
                    Outcome::Refused {
                        status: 503,
                        retry_after: true,
                        ..
                    }
                )
        })
        .collect();
    let refused_by = |balancer: bool| {
        answers
            .iter()
            .filter(|a| matches!(&a.outcome, Outcome::Refused { status: 503, body, .. } if body.contains(NO_SERVER_MESSAGE) == balancer))
            .count()
    };
    let first_200 = answers
        .iter()
        .filter(|a| right(tokens, a) && a.done >= routed_at)
        .map(|a| a.done)
        .min();
    let first_failure = answers
        .iter()
        .filter(|a| !right(tokens, a) && a.sent >= killed.at)
        .map(|a| a.done)
        .min();
    let mut figures = failover_figures(&answers, tokens, killed, failover);
    figures["unclean_failures"] = json!(unclean.len());
    figures["refused_503_by_idgate"] = json!(refused_by(false));
    figures["refused_503_by_balancer"] = json!(refused_by(true));
    figures["first_failure_after_kill_ms"] = json!(first_failure.map(|f| ms_between(killed.at, f)));
    figures["first_200_after_routed_ms"] = json!(first_200.map(|f| ms_between(routed_at, f)));
    figures["first_200_within_1s_of_routing"] =
        json!(first_200.is_some_and(|f| f - routed_at <= Duration::from_secs(1)));
    record("primary_killed_reads_on_primary", figures);
    assert!(
        unclean.is_empty(),
        "{} of {} requests failed otherwise than 503 with Retry-After: {}",
        unclean.len(),
        answers.len(),
        failure_summary(&unclean)
    );
    assert!(first_200.is_some(), "no authentication succeeded after the failover");
    fleet.stop().await;
}

/// A rebuild while the standbys' replay is paused: reads through the
/// `replica` frontend answer the previous build's tokens (what README
/// states), and the new build's once replay resumes. Measured: how long the
/// stale answers went on, and how soon after resuming the new tokens came.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "topology: cargo xtask test --topology"]
async fn lagging_standby_answers_the_previous_build_until_replay_resumes() {
    let topo = start_topology().await;
    let fleet = Fleet::start(&topo, Reads::Replica).await;
    let old = fleet.tokens.clone();
    let traffic = Traffic::start(&fleet.balancer.url(), CLIENTS, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let standbys = topo.replicas();
    for &s in &standbys {
        topo.pause_replay(s).await;
    }
    let rebuild = idgate(&fleet.db, &["workspaces", "rebuild", WORKSPACE, "--json"])
        .output()
        .unwrap();
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let rebuilt_at = Instant::now();
    let new = fleet.current_tokens().await;
    assert!(new.iter().zip(&old).all(|(n, o)| n != o), "the rebuild gave new tokens");
    // Long enough for a few thousand answers from the stale standbys.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resume_at = Instant::now();
    for &s in &standbys {
        topo.resume_replay(s).await;
    }
    let resumed = resume_at.elapsed();
    // Until a second's worth of answers are all the new build's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answers = traffic.answers();
        let recent: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.sent > Instant::now() - Duration::from_secs(1))
            .collect();
        if !recent.is_empty() && recent.iter().all(|a| a.token() == Some(new[a.agent].as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "the new build's tokens never answered alone");
    }
    let answers = traffic.finish().await;

    let is = |tokens: &[String], a: &Answer| a.token() == Some(tokens[a.agent].as_str());
    let neither: Vec<&Answer> = answers.iter().filter(|a| !is(&old, a) && !is(&new, a)).collect();
    let early_new: Vec<&Answer> = answers.iter().filter(|a| is(&new, a) && a.done < resume_at).collect();
    let stale: Vec<&Answer> = answers
        .iter()
        .filter(|a| is(&old, a) && a.sent >= rebuilt_at && a.done < resume_at)
        .collect();
    let first_new = answers.iter().filter(|a| is(&new, a)).map(|a| a.done).min();
    let last_old = answers.iter().filter(|a| is(&old, a)).map(|a| a.done).max();
    record(
        "lagging_standby",
        json!({
            "standbys_paused": standbys.len(),
            "clients": CLIENTS,
            "requests": answers.len(),
            "failed": neither.len(),
            "failures": failure_summary(&neither),
            "previous_build_answers_after_rebuild": stale.len(),
            "previous_build_answered_for_ms": ms(resume_at - rebuilt_at),
            "new_build_answers_before_resume": early_new.len(),
            "resume_took_ms": ms(resumed),
            "first_new_after_resume_ms": first_new.map(|f| ms_between(resume_at, f)),
            "last_previous_after_resume_ms": last_old.map(|l| ms_between(resume_at, l)),
        }),
    );
    assert!(
        neither.is_empty(),
        "answers of neither build: {}",
        failure_summary(&neither)
    );
    assert!(
        early_new.is_empty(),
        "{} answers gave the new build's token while replay was paused",
        early_new.len()
    );
    assert!(
        !stale.is_empty(),
        "no answer came from the paused standbys after the rebuild"
    );
    fleet.stop().await;
}

/// One registration command run during the failover.
#[derive(Debug)]
struct Write {
    /// `add` (agent `w<n>` on instance `i-ops-<n>`) or `rebuild`.
    kind: &'static str,
    n: usize,
    started: Instant,
    done: Instant,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `agents add` and `workspaces rebuild` through the `primary` frontend,
/// one after another from before the kill until after the new primary is
/// routed: each either succeeds or fails cleanly (a non-zero exit with one
/// `idgate: ...` message, no panic), and everything reported committed is
/// there afterwards (synchronous replication: Patroni promotes only the
/// standby that had every acknowledged commit). Authentication meanwhile
/// reads on the standbys and gives no wrong token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "topology: cargo xtask test --topology"]
async fn registration_during_failover_succeeds_or_fails_cleanly() {
    const OPS: &str = "ops";
    let topo = start_topology().await;
    let fleet = Fleet::start(&topo, Reads::Replica).await;
    let run = |kind: &'static str, n: usize| {
        let args: Vec<String> = match kind {
            "add" => ["agents", "add", "--workspace", OPS, "--instance-id"]
                .map(String::from)
                .into_iter()
                .chain([format!("i-ops-{n}"), "--name".into(), format!("w{n}")])
                .collect(),
            _ => ["workspaces", "rebuild", OPS, "--json"].map(String::from).to_vec(),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = idgate(&fleet.db, &args);
        async move {
            let started = Instant::now();
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            Write {
                kind,
                n,
                started,
                done: Instant::now(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
    };
    let first = run("add", 0).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let traffic = Traffic::start(&fleet.balancer.url(), CLIENTS, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let killed = topo.kill_primary();
    let writing = async {
        let mut writes = Vec::new();
        let mut n = 1;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            writes.push(run(if n % 2 == 1 { "add" } else { "rebuild" }, n).await);
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writes
    };
    let failing_over = async {
        let failover = topo.wait_for_new_primary(Duration::from_secs(60)).await;
        // Writes go on past the routing, until a few have succeeded there.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        failover
    };
    let (writes, failover) = tokio::join!(writing, failing_over);
    let routed_at = killed.at + failover.routed_after;
    let answers = traffic.finish().await;

    // Each command: success with its output, or a clean failure.
    let unclean: Vec<&Write> = writes
        .iter()
        .filter(|w| match w.code {
            Some(0) => match w.kind {
                "add" => uuid::Uuid::parse_str(w.stdout.trim()).is_err(),
                _ => serde_json::from_str::<Value>(&w.stdout).map_or(true, |v| !v["build"].is_i64()),
            },
            Some(_) => {
                let message = w.stderr.trim();
                !message.starts_with("idgate: ") || message.contains("panicked") || message.lines().count() > 1
            }
            None => true,
        })
        .collect();

    // Everything reported committed is there, through the new primary.
    let mut conn = sqlx::PgConnection::connect(&fleet.db.url).await.unwrap();
    let listed = idgate(&fleet.db, &["agents", "list", "--json"]).output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let in_latest = |n: usize| {
        listed
            .iter()
            .any(|a| a["workspace"] == OPS && a["name"] == format!("w{n}"))
    };
    let mut lost = Vec::new();
    let mut failed_but_committed = 0;
    for w in &writes {
        let ok = w.code == Some(0);
        match w.kind {
            "add" if ok => {
                let token = uuid::Uuid::parse_str(w.stdout.trim()).unwrap_or_default();
                let (rows,): (i64,) =
                    sqlx::query_as("SELECT count(*) FROM workspace_agents WHERE auth_token = $1 AND name = $2")
                        .bind(token)
                        .bind(format!("w{}", w.n))
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                if rows != 1 || !in_latest(w.n) {
                    lost.push(format!("agent w{} ({token})", w.n));
                }
            }
            "add" => failed_but_committed += usize::from(in_latest(w.n)),
            _ if ok => {
                let build = serde_json::from_str::<Value>(&w.stdout).unwrap()["build"]
                    .as_i64()
                    .unwrap();
                let (rows,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM workspace_builds b JOIN workspaces w ON w.id = b.workspace_id \
                     WHERE w.name = $1 AND b.build_number = $2",
                )
                .bind(OPS)
                .bind(build as i32)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                if rows != 1 {
                    lost.push(format!("build {build}"));
                }
            }
            _ => {}
        }
    }
    let _ = conn.close().await;

    let succeeded = |kind: &str| writes.iter().filter(|w| w.kind == kind && w.code == Some(0)).count();
    let failed = |kind: &str| writes.iter().filter(|w| w.kind == kind && w.code != Some(0)).count();
    let first_write_back = writes
        .iter()
        .filter(|w| w.code == Some(0) && w.started > killed.at)
        .map(|w| w.done)
        .min();
    let messages: std::collections::BTreeSet<String> = writes
        .iter()
        .filter(|w| w.code != Some(0))
        .map(|w| w.stderr.trim().to_string())
        .collect();
    let wrong: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.token().is_some() && !right(&fleet.tokens, a))
        .collect();
    let mut figures = failover_figures(&answers, &fleet.tokens, killed, failover);
    figures["writes"] = json!({
        "adds_succeeded": succeeded("add"),
        "adds_failed": failed("add"),
        "rebuilds_succeeded": succeeded("rebuild"),
        "rebuilds_failed": failed("rebuild"),
        "failed_but_committed": failed_but_committed,
        "unclean": unclean.len(),
        "lost": lost,
        "first_write_back_after_routed_ms": first_write_back.map(|f| ms_between(routed_at, f)),
        "failure_messages": messages,
        "failure_exit_codes": writes.iter().filter(|w| w.code != Some(0)).map(|w| w.code).collect::<std::collections::BTreeSet<_>>(),
        "longest_command_ms": writes.iter().map(|w| ms(w.done - w.started)).fold(0.0, f64::max),
    });
    record("registration_during_failover", figures);
    assert!(unclean.is_empty(), "commands that did not fail cleanly: {unclean:#?}");
    assert!(lost.is_empty(), "reported committed, then lost: {lost:?}");
    assert!(succeeded("add") > 0 && succeeded("rebuild") > 0, "{writes:#?}");
    assert!(wrong.is_empty(), "wrong tokens: {}", failure_summary(&wrong));
    fleet.stop().await;
}
