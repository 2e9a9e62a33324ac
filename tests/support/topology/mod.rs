//! A real high-availability PostgreSQL topology on loopback, as operators run
//! it: one etcd, N PostgreSQL 15 nodes each managed by Patroni (streaming
//! replication, `pg_rewind`, synchronous mode by default), and HAProxy with a
//! `primary` and a `replica` frontend checked through Patroni's REST API.
//!
//! Everything comes from Debian's packages (`patroni`, `etcd-server`,
//! `haproxy`; [`ensure_packages`] installs them when missing) and listens on
//! free ports of 127.0.0.1 chosen at start. Configuration files are generated
//! here; data lives in a private temporary directory removed on drop.
//! PostgreSQL refuses root, so when the test runs as root Patroni (and the
//! PostgreSQL it starts) runs as `postgres`; etcd and HAProxy run as the test's
//! own user.
//!
//! ```no_run
//! # async fn demo() {
//! use idgate_tests::topology::Topology;
//! let topo = Topology::start(3);
//! let write_url = topo.primary_url(); // HAProxy → current primary
//! let read_url = topo.replica_url(); // HAProxy → streaming standbys
//! let killed = topo.kill_primary(); // SIGKILL postmaster, then its Patroni
//! let failover = topo.wait_for_new_primary(std::time::Duration::from_secs(60)).await;
//! println!("{} → {} in {:?}", killed.node, failover.node, failover.routed_after);
//! # }
//! ```
//!
//! Timings with the defaults (3 nodes, `ttl` 10 s, HAProxy checks every
//! 500 ms), measured on 2 shared cores: ready 7–18 s after start; after
//! [`Topology::kill_primary`] the standby is promoted after ≈ `ttl` (9.7–10.6 s:
//! a Patroni killed cannot release its leader key, so the others wait for its
//! etcd lease to expire) and HAProxy routes the `primary` frontend to it
//! 0.1–0.5 s later. The `primary` frontend refuses connections from the kill
//! on, and sessions open on the old primary fail within ~30 ms (its backends
//! exit on postmaster death); with 3 nodes the `replica` frontend keeps
//! answering throughout. [`Topology::restart_node`] brings the killed node
//! back as a standby (`pg_rewind`) in ~7 s; dropping takes 2–10 s.
//!
//! Processes are spawned from one thread that lives as long as the test
//! process, with `PR_SET_PDEATHSIG = SIGTERM`: if the test process dies
//! without dropping the [`Topology`], etcd and HAProxy exit and each Patroni
//! stops its PostgreSQL. Directories left by dead test processes are removed
//! by the next [`Topology::start`].
//!
//! [`Topology::balance_http`] adds a second HAProxy, in HTTP mode, in front of
//! `idgate serve` replicas ([`balancer`]).

pub mod balancer;
mod packages;

pub use balancer::Balancer;
pub use packages::{ensure_packages, find_command, missing_packages, PACKAGES};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use idgate::db::embedded::{self, ServerUser};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// Password of the PostgreSQL superuser `postgres` (TCP connections use
/// SCRAM; the nodes' unix sockets trust local users).
pub const SUPERUSER_PASSWORD: &str = "topology-superuser";
const REPLICATION_PASSWORD: &str = "topology-replication";
const REWIND_PASSWORD: &str = "topology-rewind";
/// Patroni's cluster name (`scope`), also the etcd key prefix.
pub const SCOPE: &str = "idgate";
const DIR_PREFIX: &str = "idgate-topology-";

/// How to build a [`Topology`]. [`Options::default`] is 3 nodes, failover
/// tuned fast, synchronous replication.
#[derive(Debug, Clone)]
pub struct Options {
    /// PostgreSQL nodes (1 to 9). With 3, a standby remains behind the
    /// `replica` frontend after a failover; with 2, it has none until the
    /// killed node is restarted.
    pub nodes: usize,
    /// Patroni `ttl` (seconds): the leader key's lease, hence the time a
    /// failover after a crash takes. Patroni needs
    /// `loop_wait + 2 * retry_timeout <= ttl`.
    pub ttl: u32,
    /// Patroni `loop_wait` (seconds): one HA cycle.
    pub loop_wait: u32,
    /// Patroni `retry_timeout` (seconds) for etcd and PostgreSQL operations.
    pub retry_timeout: u32,
    /// HAProxy health-check interval (`inter`, milliseconds); a server goes
    /// down after 2 failed checks and up after 1 good one.
    pub check_interval_ms: u32,
    /// Patroni `synchronous_mode`: commits wait for one standby, and only that
    /// standby may be promoted, so a failover loses no acknowledged commit.
    /// Off: asynchronous replication, which can lose the last commits.
    pub synchronous_mode: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 4,
            check_interval_ms: 500,
            synchronous_mode: true,
        }
    }
}

/// Where a connection URL points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// HAProxy's `primary` frontend: the node whose Patroni answers
    /// `/primary` with 200 (sessions are cut when it goes down).
    Primary,
    /// HAProxy's `replica` frontend: round robin over the nodes whose Patroni
    /// answers `/replica` with 200 (running standbys, lag ignored).
    Replica,
    /// One node's PostgreSQL directly, bypassing HAProxy.
    Node(usize),
}

/// What [`Topology::kill_primary`] did.
#[derive(Debug, Clone, Copy)]
pub struct Killed {
    /// The node that was primary.
    pub node: usize,
    /// When its postmaster got SIGKILL.
    pub at: Instant,
}

/// A completed failover, timed from the kill.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The node killed.
    pub old: usize,
    /// The node promoted.
    pub node: usize,
    /// Until its Patroni answered `/primary` with 200.
    pub promoted_after: Duration,
    /// Until a new connection through the `primary` frontend reached it,
    /// out of recovery.
    pub routed_after: Duration,
}

struct Node {
    dir: PathBuf,
    pg_port: u16,
    rest_port: u16,
}

#[derive(Default)]
struct State {
    /// Each node's Patroni, `None` once killed.
    patroni: Vec<Option<Child>>,
    etcd: Option<Child>,
    haproxy: Option<Child>,
    last_kill: Option<Killed>,
    /// Nodes whose replay [`Topology::pause_replay`] paused.
    paused: BTreeSet<usize>,
}

/// A running topology; dropping it stops every process and removes its
/// directory. All methods take `&self`, so it can be shared (`Arc`).
pub struct Topology {
    dir: PathBuf,
    options: Options,
    user: Option<ServerUser>,
    bin_dir: PathBuf,
    etcd_port: u16,
    primary_port: u16,
    replica_port: u16,
    nodes: Vec<Node>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("primary_port", &self.primary_port)
            .field("replica_port", &self.replica_port)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Topology {
    /// Starts a topology of `nodes` PostgreSQL nodes with the other
    /// [`Options`] at their defaults; see [`Topology::start_with`].
    pub fn start(nodes: usize) -> Topology {
        Topology::start_with(Options {
            nodes,
            ..Options::default()
        })
    }

    /// Installs the packages if missing ([`ensure_packages`]), starts etcd,
    /// the Patroni nodes and HAProxy, and returns once one node is primary,
    /// every other streams from it (the synchronous one chosen, in
    /// synchronous mode) and both frontends route to them. Blocks for 10–20 s:
    /// call it before any load starts (or from `spawn_blocking`). Panics with
    /// the processes' logs if the topology is not ready within 2 minutes.
    pub fn start_with(options: Options) -> Topology {
        assert!((1..=9).contains(&options.nodes), "1 to 9 nodes, not {}", options.nodes);
        assert!(
            options.loop_wait + 2 * options.retry_timeout <= options.ttl,
            "Patroni needs loop_wait + 2 * retry_timeout <= ttl: {options:?}"
        );
        ensure_packages().unwrap_or_else(|e| panic!("topology: {e}"));
        let topo = Topology::spawn(options).unwrap_or_else(|e| panic!("starting the topology: {e}"));
        if let Err(e) = topo.wait_ready(Duration::from_secs(120)) {
            panic!("the topology did not become ready: {e}\n{}", topo.logs());
        }
        topo
    }

    fn spawn(options: Options) -> Result<Topology, BoxError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tmp.join(format!("{DIR_PREFIX}{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Patroni (as `postgres`) must reach its node directory inside.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

        let user = embedded::server_user()?;
        let bin_dir = embedded::find_bin_dir()?;
        let ports = free_ports(4 + 2 * options.nodes)?;
        let nodes = (0..options.nodes)
            .map(|i| Node {
                dir: dir.join(format!("node{i}")),
                pg_port: ports[4 + 2 * i],
                rest_port: ports[5 + 2 * i],
            })
            .collect();
        let topo = Topology {
            dir,
            options,
            user,
            bin_dir,
            etcd_port: ports[0],
            primary_port: ports[2],
            replica_port: ports[3],
            nodes,
            state: Mutex::new(State::default()),
        };
        topo.spawn_etcd(ports[1])?;
        for i in 0..topo.nodes.len() {
            embedded::prepare_dir(&topo.nodes[i].dir, topo.user.as_ref())?;
            std::fs::write(topo.nodes[i].dir.join("patroni.yml"), topo.patroni_config(i))?;
            topo.spawn_patroni(i)?;
        }
        topo.spawn_haproxy()?;
        Ok(topo)
    }

    /// The private directory: `etcd/`, `node<i>/` (Patroni config, log,
    /// pgpass, unix socket, `data/`), `haproxy.cfg` and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it runs with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Number of PostgreSQL nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// A URL for database `postgres` through the `primary` frontend.
    pub fn primary_url(&self) -> String {
        self.url(Endpoint::Primary, "postgres")
    }

    /// A URL for database `postgres` through the `replica` frontend.
    pub fn replica_url(&self) -> String {
        self.url(Endpoint::Replica, "postgres")
    }

    /// A URL for `database` at `endpoint`, as superuser `postgres` over TCP
    /// (password [`SUPERUSER_PASSWORD`]).
    pub fn url(&self, endpoint: Endpoint, database: &str) -> String {
        let port = match endpoint {
            Endpoint::Primary => self.primary_port,
            Endpoint::Replica => self.replica_port,
            Endpoint::Node(i) => self.nodes[i].pg_port,
        };
        format!("postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/{database}")
    }

    /// The TCP port of a frontend or node.
    pub fn port(&self, endpoint: Endpoint) -> u16 {
        match endpoint {
            Endpoint::Primary => self.primary_port,
            Endpoint::Replica => self.replica_port,
            Endpoint::Node(i) => self.nodes[i].pg_port,
        }
    }

    /// The port of node `node`'s Patroni REST API.
    pub fn rest_port(&self, node: usize) -> u16 {
        self.nodes[node].rest_port
    }

    /// The etcd client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Node `node`'s Patroni status (`GET /patroni`: `role` is `master` for
    /// the primary in this Patroni, `replica` otherwise; `state`, `xlog`,
    /// `replication`, `pause`...), or `None` if its REST API does not answer.
    pub fn patroni_status(&self, node: usize) -> Option<Value> {
        let (_, body) = http(self.nodes[node].rest_port, "GET", "/patroni", None).ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The node Patroni runs as primary now (its REST API answers `/primary`
    /// with 200), if any.
    pub fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.answers(i, "/primary"))
    }

    /// The nodes running as streaming standbys now (`/replica` answers 200).
    pub fn replicas(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.answers(i, "/replica")).collect()
    }

    fn answers(&self, node: usize, path: &str) -> bool {
        matches!(http(self.nodes[node].rest_port, "OPTIONS", path, None), Ok((200, _)))
    }

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
    /// and is up behind the `replica` frontend (one HAProxy check later).
    pub async fn wait_for_replica(&self, node: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let port = self.nodes[node].rest_port;
            let ok = tokio::task::spawn_blocking(move || http(port, "OPTIONS", "/replica", None))
                .await
                .expect("REST probe");
            let streaming = self.primary().and_then(|p| self.patroni_status(p)).is_some_and(|s| {
                s["replication"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|c| c["application_name"] == format!("node{node}")))
            });
            if matches!(ok, Ok((200, _))) && streaming {
                tokio::time::sleep(Duration::from_millis(2 * u64::from(self.options.check_interval_ms))).await;
                return;
            }
            if Instant::now() > deadline {
                panic!("node{node} is no streaming standby after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// The tails of every log (etcd, each Patroni with its PostgreSQL,
    /// HAProxy), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files = vec![self.dir.join("etcd.log")];
        files.extend(self.nodes.iter().map(|n| n.dir.join("patroni.log")));
        files.push(self.dir.join("haproxy.log"));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "==> {} <==", f.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing checked yet");
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            match self.readiness() {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    /// `Ok` once one primary streams to every standby and both frontends
    /// route; else what is missing.
    fn readiness(&self) -> Result<(), String> {
        let statuses: Vec<Option<Value>> = (0..self.nodes.len()).map(|i| self.patroni_status(i)).collect();
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                statuses[i]
                    .as_ref()
                    .is_some_and(|s| is_primary(s) && s["state"] == "running")
            })
            .collect();
        let [primary] = primaries[..] else {
            return Err(format!("primaries: {primaries:?}"));
        };
        let status = statuses[primary].as_ref().expect("primary answered");
        let empty = Vec::new();
        let streams = status["replication"].as_array().unwrap_or(&empty);
        let streaming = streams.iter().filter(|c| c["state"] == "streaming").count();
        if streaming + 1 < self.nodes.len() {
            return Err(format!("node{primary} streams to {streaming} standbys"));
        }
        if self.options.synchronous_mode && self.nodes.len() > 1 && !streams.iter().any(|c| c["sync_state"] == "sync") {
            return Err("no synchronous standby yet".into());
        }
        let (primary_url, replica_url) = (self.primary_url(), self.replica_url());
        let need_replica = self.nodes.len() > 1;
        block_on(async move {
            match server_port_and_recovery(&primary_url).await {
                Ok((_, false)) => {}
                other => return Err(format!("primary frontend: {other:?}")),
            }
            if need_replica {
                match server_port_and_recovery(&replica_url).await {
                    Ok((_, true)) => {}
                    other => return Err(format!("replica frontend: {other:?}")),
                }
            }
            Ok(())
        })
    }

    fn spawn_etcd(&self, peer_port: u16) -> Result<(), BoxError> {
        let etcd = find_command("etcd").ok_or("no etcd command")?;
        let client = self.etcd_url();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd);
        cmd.arg("--name")
            .arg("etcd0")
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("etcd0={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("{}", self.dir.display()))
            .env_remove("ETCDCTL_API");
        let child = spawn_logged(cmd, &self.dir.join("etcd.log"), None)?;
        self.state.lock().unwrap().etcd = Some(child);
        Ok(())
    }

    fn spawn_patroni(&self, i: usize) -> Result<(), BoxError> {
        let patroni = find_command("patroni").ok_or("no patroni command")?;
        let node = &self.nodes[i];
        // As embedded::server_command does for PostgreSQL's own binaries:
        // the unprivileged user, and none of the PG* variables that would
        // redirect what Patroni runs.
        let mut cmd = Command::new(patroni);
        cmd.arg(node.dir.join("patroni.yml"))
            .current_dir(&node.dir)
            .env("HOME", &node.dir);
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
            "PGPASSWORD",
        ] {
            cmd.env_remove(var);
        }
        if let Some(u) = &self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = spawn_logged(cmd, &node.dir.join("patroni.log"), self.user.as_ref())?;
        let mut state = self.state.lock().unwrap();
        if state.patroni.len() < self.nodes.len() {
            state.patroni.resize_with(self.nodes.len(), || None);
        }
        state.patroni[i] = Some(child);
        Ok(())
    }

    fn spawn_haproxy(&self) -> Result<(), BoxError> {
        let haproxy = find_command("haproxy").ok_or("no haproxy command")?;
        let config = self.dir.join("haproxy.cfg");
        std::fs::write(&config, self.haproxy_config())?;
        let check = Command::new(&haproxy)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&config)
            .output()?;
        if !check.status.success() {
            return Err(format!("haproxy -c: {}", String::from_utf8_lossy(&check.stderr)).into());
        }
        let mut cmd = Command::new(haproxy);
        cmd.arg("-db").arg("-f").arg(&config);
        let child = spawn_logged(cmd, &self.dir.join("haproxy.log"), None)?;
        self.state.lock().unwrap().haproxy = Some(child);
        Ok(())
    }

    /// Node `i`'s Patroni configuration. `fsync` is off (a SIGKILL loses no
    /// page cache; nothing here survives the machine), but `full_page_writes`
    /// stays on: `pg_rewind` refuses a source without it.
    fn patroni_config(&self, i: usize) -> String {
        let o = &self.options;
        let node = &self.nodes[i];
        let dir = node.dir.display();
        let bin_dir = self.bin_dir.display();
        format!(
            r#"scope: {SCOPE}
name: node{i}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {sync}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        max_connections: 200
  initdb:
    - encoding: UTF8
    - locale: C
    - auth-local: trust
    - auth-host: scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    replication:
      username: replicator
      password: {REPLICATION_PASSWORD}
    rewind:
      username: rewinder
      password: {REWIND_PASSWORD}
  parameters:
    unix_socket_directories: {dir}
    shared_buffers: 16MB
    fsync: "off"
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
"#,
            rest = node.rest_port,
            etcd = self.etcd_port,
            ttl = o.ttl,
            loop_wait = o.loop_wait,
            retry = o.retry_timeout,
            sync = o.synchronous_mode,
            pg = node.pg_port,
        )
    }

    fn haproxy_config(&self) -> String {
        let mut c = String::from(
            "global\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30m\n  timeout server 30m\n  timeout check 1s\n",
        );
        for (name, port, check) in [
            ("primary", self.primary_port, "/primary"),
            ("replica", self.replica_port, "/replica"),
        ] {
            // OPTIONS, not GET: Patroni then writes only the status line, and
            // logs no traceback when HAProxy closes after reading it.
            let _ = write!(
                c,
                "listen {name}\n  bind 127.0.0.1:{port}\n  balance roundrobin\n  option httpchk OPTIONS {check}\n  \
                 http-check expect status 200\n  \
                 default-server inter {inter}ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
                inter = self.options.check_interval_ms
            );
            for (i, n) in self.nodes.iter().enumerate() {
                let _ = writeln!(c, "  server node{i} 127.0.0.1:{} check port {}", n.pg_port, n.rest_port);
            }
        }
        c
    }
}

impl Drop for Topology {
    /// HAProxy first, then every Patroni with SIGTERM (each stops its
    /// PostgreSQL with a fast shutdown), SIGKILL for any still running after
    /// 20 s (and for their postmasters), then etcd; then the directory,
    /// unless `IDGATE_KEEP_TOPOLOGY` is set (to read the logs).
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = state.haproxy.take() {
            stop(h, Duration::from_secs(5));
        }
        let patronis: Vec<Child> = state.patroni.iter_mut().filter_map(Option::take).collect();
        // All at once: each waits for its PostgreSQL, not for the others.
        for p in &patronis {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
        }
        for p in patronis {
            wait_or_kill(p, Duration::from_secs(20));
        }
        for n in &self.nodes {
            if let Some(pid) = postmaster_pid(&n.dir.join("data")) {
                if is_postgres(pid) {
                    // SAFETY: plain kill(2); the pid was checked to be a postgres.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Some(e) = state.etcd.take() {
            stop(e, Duration::from_secs(5));
        }
        drop(state);
        if std::env::var_os("IDGATE_KEEP_TOPOLOGY").is_some() {
            eprintln!("topology: IDGATE_KEEP_TOPOLOGY set, keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(child: Child, grace: Duration) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_or_kill(child, grace);
}

/// Waits up to `grace` for `child` to exit, then SIGKILL.
fn wait_or_kill(mut child: Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn is_primary(status: &Value) -> bool {
    status["role"] == "master" || status["role"] == "primary"
}

/// The postmaster's pid from `data_dir/postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&p| p > 0)
}

fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"postgres"))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes for the process.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Removes directories of test processes that no longer run (their
/// processes went with them by the parent-death signal).
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `n` distinct TCP ports free on 127.0.0.1 now (bound together, then
/// released; another process could take one in between, which the
/// topology's start would then report).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Spawns `cmd` with output to `log` (owned by `user` if given) from a thread
/// that lives as long as the process, with the parent-death signal set.
pub fn spawn_logged(mut cmd: Command, log: &Path, user: Option<&ServerUser>) -> Result<Child, BoxError> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    if let Some(u) = user {
        std::os::unix::fs::chown(log, Some(u.uid), Some(u.gid))?;
    }
    cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    // The closure runs after the uid switch, which would clear the signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("test process exited"));
            }
            Ok(())
        });
    }
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("topology-spawner".into())
            .spawn(move || {
                // The parent-death signal follows the thread that forked: this
                // one, which outlives every test (it waits on the channel).
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the topology's spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx))?;
    Ok(rx.recv()??)
}

/// One HTTP/1.0 exchange with a local REST API: (status, body).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `fut` on a runtime of its own, on a thread of its own (the caller
/// may be inside a runtime).
fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on thread")
}

async fn connect(url: &str) -> Result<PgConnection, BoxError> {
    Ok(tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url))
        .await
        .map_err(|_| "connect timed out")??)
}

/// The port of the server a new connection to `url` reaches, and whether it
/// is in recovery (a standby).
pub async fn server_port_and_recovery(url: &str) -> Result<(u16, bool), BoxError> {
    let mut c = connect(url).await?;
    let (port, recovery): (i32, bool) = sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
        .fetch_one(&mut c)
        .await?;
    let _ = c.close().await;
    Ok((u16::try_from(port)?, recovery))
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
