//! idgate's own restarts and a lagging standby: a rolling restart of both
//! `serve` behind the balancer, and reads on standbys whose replay is paused
//! across a rebuild.

use std::time::{Duration, Instant};

use idgate_tests::topology::balancer::{CHECK_INTERVAL_MS, FALL, RISE};
use idgate_tests::topology::Balancer;
use serde_json::json;

use super::fleet::{
    failure_summary, longest_gap, ms, ms_between, quantile_ms, record, Answer, Fleet, Reads, Traffic, WORKSPACE,
};
use super::{right, sent_between, start_topology, CLIENTS, PAUSE};
use crate::http::idgate;

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

    let standbys = topo.standbys();
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
