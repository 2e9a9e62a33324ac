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
//!
//! Here: start-up, readiness, accessors and drop. The processes' command
//! lines and configuration files are in `config.rs`, killing, promotion,
//! rejoining and replay pauses in `failover.rs`, spawning, stopping, ports
//! and the REST and SQL one-offs in `process.rs`.

pub mod balancer;
mod config;
mod failover;
mod packages;
mod process;

pub use balancer::Balancer;
pub use packages::{ensure_packages, find_command, PACKAGES};
pub use process::{free_ports, server_port_and_recovery, spawn_logged, stop};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idgate::db::embedded::{self, ServerUser};
use process::{block_on, http, is_postgres, postmaster_pid, wait_or_kill};
use serde_json::Value;

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
        crate::child::remove_stale_dirs(&tmp, DIR_PREFIX);
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

    /// Every node but the current primary: after [`Topology::start`] (which
    /// waits until the primary streams to all of them) these are the
    /// standbys. Unlike [`Topology::replicas`] it does not depend on each
    /// standby's `/replica` check passing at this very moment (Patroni's REST
    /// answer can miss one while it catches up, which made a test pick one
    /// standby of two).
    pub fn standbys(&self) -> Vec<usize> {
        // The primary's own REST answer may miss a beat too: ask for 5 s.
        let primary = (0..50).find_map(|_| {
            self.primary().or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        });
        let primary = primary.expect("no node answered /primary for 5 s");
        (0..self.nodes.len()).filter(|&i| i != primary).collect()
    }

    /// The nodes running as streaming standbys now (`/replica` answers 200).
    pub fn replicas(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.answers(i, "/replica")).collect()
    }

    fn answers(&self, node: usize, path: &str) -> bool {
        matches!(http(self.nodes[node].rest_port, "OPTIONS", path, None), Ok((200, _)))
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

fn is_primary(status: &Value) -> bool {
    status["role"] == "master" || status["role"] == "primary"
}
