//! Failover and replay control: killing the primary as a crash would,
//! timing the promotion and HAProxy's routing, bringing the killed node back
//! as a standby, and pausing standbys' WAL replay (lag) under Patroni's
//! maintenance mode.

use std::time::{Duration, Instant};

use sqlx::Connection;

use super::process::{connect, http, postmaster_pid, server_port_and_recovery};
use super::{BoxError, Endpoint, Failover, Killed, Topology};

impl Topology {
    /// Kills the primary the way a crash would: SIGKILL to its postmaster,
    /// then SIGKILL to its Patroni (which would otherwise restart
    /// PostgreSQL in place). Its leader key stays in etcd until the lease
    /// (`ttl`) expires; [`Topology::wait_for_new_primary`] times what follows.
    /// Panics if no node is primary.
    pub fn kill_primary(&self) -> Killed {
        let node = self.primary().expect("kill_primary: no node is primary");
        let postmaster = postmaster_pid(&self.nodes[node].dir.join("data"))
            .unwrap_or_else(|| panic!("kill_primary: node{node} has no postmaster.pid"));
        let mut state = self.state.lock().unwrap();
        let at = Instant::now();
        // SAFETY: plain kill(2) on a pid read from the server's own pid file.
        unsafe { libc::kill(postmaster, libc::SIGKILL) };
        if let Some(mut patroni) = state.patroni[node].take() {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        let killed = Killed { node, at };
        state.last_kill = Some(killed);
        killed
    }

    /// Waits until another node than the one [`Topology::kill_primary`]
    /// killed is promoted and a new connection through the `primary` frontend
    /// reaches it, and returns the timings. Polls every 50 ms. Panics (with
    /// the logs) after `timeout`, or if nothing was killed.
    pub async fn wait_for_new_primary(&self, timeout: Duration) -> Failover {
        let killed = self
            .state
            .lock()
            .unwrap()
            .last_kill
            .expect("wait_for_new_primary: kill_primary first");
        let deadline = killed.at + timeout;
        let mut promoted: Option<(usize, Duration)> = None;
        loop {
            if promoted.is_none() {
                let probes = (0..self.nodes.len())
                    .filter(|&i| i != killed.node)
                    .map(|i| (i, self.nodes[i].rest_port));
                for (i, port) in probes.collect::<Vec<_>>() {
                    let answer = tokio::task::spawn_blocking(move || http(port, "OPTIONS", "/primary", None))
                        .await
                        .expect("REST probe");
                    if matches!(answer, Ok((200, _))) {
                        promoted = Some((i, killed.at.elapsed()));
                        break;
                    }
                }
            }
            if let Some((node, promoted_after)) = promoted {
                if let Ok((port, false)) = server_port_and_recovery(&self.primary_url()).await {
                    if port == self.nodes[node].pg_port {
                        return Failover {
                            old: killed.node,
                            node,
                            promoted_after,
                            routed_after: killed.at.elapsed(),
                        };
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no new primary routed within {timeout:?} of killing node{} (promoted: {promoted:?})\n{}",
                    killed.node,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts node `node`'s Patroni again after [`Topology::kill_primary`]:
    /// it rewinds the old primary's data with `pg_rewind` and rejoins as a
    /// standby of the new one. Returns at once; [`Topology::wait_for_replica`]
    /// waits for it. Panics if that Patroni is running.
    pub fn restart_node(&self, node: usize) {
        assert!(
            self.state.lock().unwrap().patroni[node].is_none(),
            "restart_node: node{node}'s Patroni is running"
        );
        self.spawn_patroni(node)
            .unwrap_or_else(|e| panic!("restarting node{node}'s Patroni: {e}"));
    }

    /// Waits until node `node` runs as a standby streaming from the primary
    /// on the primary's timeline, has done so for two Patroni cycles, and is
    /// up behind the `replica` frontend (one HAProxy check later).
    ///
    /// A killed primary coming back may start as a standby, show up in the
    /// primary's `pg_stat_replication` and pass Patroni's `/replica` check,
    /// and only then be stopped by Patroni for `pg_rewind` once it sees the
    /// timelines diverged (a CI run caught the node refusing connections right
    /// after this returned). So the node must stream on the primary's
    /// timeline, seen from both ends, at every probe over two `loop_wait`s.
    /// Panics (with the logs) after `timeout`.
    pub async fn wait_for_replica(&self, node: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let settle = Duration::from_secs(2 * u64::from(self.options.loop_wait.max(1)));
        let mut since: Option<Instant> = None;
        let mut last = String::from("not probed");
        loop {
            match self.streams_on_primary_timeline(node).await {
                Ok(()) => {
                    let first = *since.get_or_insert_with(Instant::now);
                    if first.elapsed() >= settle {
                        tokio::time::sleep(Duration::from_millis(2 * u64::from(self.options.check_interval_ms))).await;
                        return;
                    }
                }
                Err(why) => {
                    since = None;
                    last = why;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node{node} is no streaming standby after {timeout:?} (last: {last})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether node `node` streams from the current primary on its timeline:
    /// Patroni's `/replica` answers 200, the primary lists the node as
    /// `streaming`, and the node's WAL receiver streams the primary's
    /// timeline. The error says which part failed.
    async fn streams_on_primary_timeline(&self, node: usize) -> Result<(), String> {
        let port = self.nodes[node].rest_port;
        let rest = tokio::task::spawn_blocking(move || http(port, "OPTIONS", "/replica", None))
            .await
            .expect("REST probe");
        if !matches!(rest, Ok((200, _))) {
            return Err(format!("/replica answered {rest:?}"));
        }
        let primary = self.primary().ok_or("no primary")?;
        let status = self.patroni_status(primary).ok_or("no status from the primary")?;
        let listed = status["replication"].as_array().is_some_and(|r| {
            r.iter()
                .any(|c| c["application_name"] == format!("node{node}") && c["state"] == "streaming")
        });
        if !listed {
            return Err(format!("node{primary} does not list node{node} as streaming"));
        }
        let timeline = "SELECT (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)::text";
        let primary_tli = sql_text(&self.url(Endpoint::Node(primary), "postgres"), timeline)
            .await
            .map_err(|e| format!("primary's timeline: {e}"))?;
        let receiver = "SELECT coalesce((SELECT received_tli::text FROM pg_stat_wal_receiver \
                        WHERE status = 'streaming'), 'none')";
        let node_tli = sql_text(&self.url(Endpoint::Node(node), "postgres"), receiver)
            .await
            .map_err(|e| format!("node{node}'s WAL receiver: {e}"))?;
        if node_tli != primary_tli {
            return Err(format!(
                "node{node} streams timeline {node_tli}, the primary is on {primary_tli}"
            ));
        }
        Ok(())
    }

    /// Pauses WAL replay on standby `node` (`pg_wal_replay_pause()`), so it
    /// keeps answering reads from the data it has while the primary moves on;
    /// it stays behind the `replica` frontend (whose check ignores lag).
    ///
    /// Patroni resumes a paused replay on its next cycle (on PostgreSQL 14+
    /// it treats a pause as the one recovery takes on a parameter change), so
    /// this first puts the cluster in maintenance mode (`PATCH /config
    /// {"pause": true}`, what `patronictl pause` does) and waits until every
    /// running Patroni sees it. **While any replay is paused Patroni fails
    /// nothing over**: do not combine with [`Topology::kill_primary`].
    pub async fn pause_replay(&self, node: usize) {
        let first = self.state.lock().unwrap().paused.is_empty();
        if first {
            self.set_maintenance(true).await;
        }
        let url = self.url(Endpoint::Node(node), "postgres");
        sql(&url, "SELECT pg_wal_replay_pause()")
            .await
            .unwrap_or_else(|e| panic!("pausing replay on node{node}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sql_text(&url, "SELECT pg_get_wal_replay_pause_state()")
            .await
            .ok()
            .as_deref()
            != Some("paused")
        {
            assert!(Instant::now() < deadline, "node{node}'s replay did not pause");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.lock().unwrap().paused.insert(node);
    }

    /// Resumes WAL replay on `node` (`pg_wal_replay_resume()`); when no
    /// paused node remains, takes the cluster out of maintenance mode, so
    /// Patroni fails over again.
    pub async fn resume_replay(&self, node: usize) {
        let url = self.url(Endpoint::Node(node), "postgres");
        sql(&url, "SELECT pg_wal_replay_resume()")
            .await
            .unwrap_or_else(|e| panic!("resuming replay on node{node}: {e}"));
        let last = {
            let mut state = self.state.lock().unwrap();
            state.paused.remove(&node);
            state.paused.is_empty()
        };
        if last {
            self.set_maintenance(false).await;
        }
    }

    /// Patroni's maintenance mode on or off, returning once every running
    /// Patroni reports it.
    async fn set_maintenance(&self, on: bool) {
        let body = if on { r#"{"pause": true}"# } else { r#"{"pause": null}"# };
        let live: Vec<usize> = {
            let state = self.state.lock().unwrap();
            (0..self.nodes.len()).filter(|&i| state.patroni[i].is_some()).collect()
        };
        let port = self.nodes[live[0]].rest_port;
        let answer = tokio::task::spawn_blocking(move || http(port, "PATCH", "/config", Some(body)))
            .await
            .expect("REST call");
        match answer {
            Ok((200, _)) => {}
            other => panic!("PATCH /config {body}: {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = live.iter().all(|&i| {
                self.patroni_status(i)
                    .is_some_and(|s| s["pause"].as_bool().unwrap_or(false) == on)
            });
            if seen {
                return;
            }
            assert!(Instant::now() < deadline, "Patroni did not see pause = {on}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn sql(url: &str, statement: &str) -> Result<(), BoxError> {
    let mut c = connect(url).await?;
    sqlx::raw_sql(statement).execute(&mut c).await?;
    let _ = c.close().await;
    Ok(())
}

async fn sql_text(url: &str, query: &str) -> Result<String, BoxError> {
    let mut c = connect(url).await?;
    let (text,): (String,) = sqlx::query_as(query).fetch_one(&mut c).await?;
    let _ = c.close().await;
    Ok(text)
}
