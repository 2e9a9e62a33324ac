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
//!
//! The topology on its own is [`smoke`]; idgate's scenarios are in
//! [`restart_and_lag`] and [`failover`], on the fleet of [`fleet`] and the
//! helpers below.

use std::time::{Duration, Instant};

use fleet::{failure_summary, longest_gap, ms, ms_between, quantile_ms, Answer};
use idgate_tests::topology::{Failover, Killed, Options, Topology};
use serde_json::{json, Value};

mod failover;
mod fleet;
mod restart_and_lag;
mod smoke;

// What idgate's scenarios share: two `serve` behind an HTTP balancer, under load.

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
