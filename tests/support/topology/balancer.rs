//! A second HAProxy, in HTTP mode, in front of `idgate serve` replicas: the
//! load balancer an operator puts before several `serve`, each checked on
//! `/readyz`.
//!
//! The settings are what an operator would write for a stateless HTTP API:
//! round robin; a server goes down after [`FALL`] failed checks
//! [`CHECK_INTERVAL_MS`] apart and comes back after [`RISE`] good ones;
//! `retries 3` with `option redispatch 1`, so a connection a restarting
//! server refuses is tried again on another server. L7 retries
//! (`retry-on empty-response` and the like) stay off, as HAProxy ships them:
//! a POST is not assumed idempotent, so what a stopping server does to
//! requests sent to it shows. When no server is up, HAProxy's own 503 says
//! `Retry-After: 1`, as idgate's own 503s do.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::start_haproxy;
use super::{free_ports, http, stop, BoxError, Topology};

/// The balancer's health-check interval (`inter`), milliseconds.
pub const CHECK_INTERVAL_MS: u64 = 250;
/// Failed checks before a server is marked down.
pub const FALL: u64 = 2;
/// Good checks before a server is marked up again.
pub const RISE: u64 = 2;

/// What HAProxy itself answers when no server is up (the only 503 it makes).
pub const NO_SERVER_MESSAGE: &str = "No idgate replica is available; try again.";

/// A running HTTP balancer; dropping it stops HAProxy.
#[derive(Debug)]
pub struct Balancer {
    port: u16,
    stats_port: u16,
    servers: usize,
    log: PathBuf,
    child: Mutex<Option<std::process::Child>>,
}

impl Topology {
    /// Starts an HAProxy balancing HTTP over `backends` (ports on 127.0.0.1,
    /// servers `idgate0`, `idgate1`, ... in that order), each checked with
    /// `GET /readyz`; its configuration and log go in [`Topology::dir`].
    /// Returns once HAProxy answers (the servers may not be up yet:
    /// [`Balancer::wait_until`]).
    pub fn balance_http(&self, backends: &[u16]) -> Balancer {
        Balancer::start(self, backends).unwrap_or_else(|e| panic!("starting the HTTP balancer: {e}"))
    }
}

impl Balancer {
    fn start(topo: &Topology, backends: &[u16]) -> Result<Balancer, BoxError> {
        let ports = free_ports(2)?;
        let (port, stats_port) = (ports[0], ports[1]);
        let config = topo.dir().join(format!("balancer-{port}.cfg"));
        let log = topo.dir().join(format!("balancer-{port}.log"));
        let child = start_haproxy(&config, &config_text(port, stats_port, backends), &log)?;
        let balancer = Balancer {
            port,
            stats_port,
            servers: backends.len(),
            log,
            child: Mutex::new(Some(child)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while balancer.statuses().is_none() {
            if Instant::now() > deadline {
                return Err(format!("HAProxy's stats did not answer\n{}", balancer.log_text()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(balancer)
    }

    /// The balancer's base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The shortest drain a server needs before it stops accepting: twice
    /// the time the balancer takes to mark it down ([`FALL`] checks
    /// [`CHECK_INTERVAL_MS`] apart), a margin for a check in flight.
    pub fn drain_needed() -> Duration {
        Duration::from_millis(2 * FALL * CHECK_INTERVAL_MS)
    }

    /// Each server's status as HAProxy's statistics give it (`UP`,
    /// `DOWN`, `UP 1/2` while going down, `DOWN 1/2` while coming up...),
    /// or `None` if HAProxy does not answer.
    pub fn statuses(&self) -> Option<Vec<String>> {
        statuses(self.stats_port, self.servers)
    }

    /// Waits until HAProxy reports server `i` fully `UP` (`up`) or `DOWN`
    /// (not `up`); returns how long that took. Polls every 20 ms; panics
    /// with HAProxy's log after `timeout`.
    pub async fn wait_until(&self, i: usize, up: bool, timeout: Duration) -> Duration {
        let started = Instant::now();
        let want = if up { "UP" } else { "DOWN" };
        let (port, servers) = (self.stats_port, self.servers);
        loop {
            let now = tokio::task::spawn_blocking(move || statuses(port, servers))
                .await
                .expect("stats probe");
            if now.as_ref().is_some_and(|s| s[i] == want) {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!("idgate{i} not {want} after {timeout:?}: {now:?}\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// HAProxy's log (its warnings: servers going up and down, with why).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            stop(child, Duration::from_secs(5));
        }
    }
}

/// The `idgate` backend's server statuses from the stats page's CSV.
fn statuses(stats_port: u16, servers: usize) -> Option<Vec<String>> {
    let (code, body) = http(stats_port, "GET", "/stats;csv", None).ok()?;
    if code != 200 {
        return None;
    }
    let csv = dechunk(&body)?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, status) = (column("pxname")?, column("svname")?, column("status")?);
    let mut out = vec![String::new(); servers];
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(px) != Some(&"idgate") {
            continue;
        }
        let Some(i) = fields
            .get(sv)
            .and_then(|s| s.strip_prefix("idgate")?.parse::<usize>().ok())
        else {
            continue;
        };
        if i < out.len() {
            out[i] = fields.get(status)?.to_string();
        }
    }
    Some(out)
}

/// The body of a chunked response (HAProxy's stats page answers chunked even
/// to HTTP/1.0); `None` if it is not well formed.
fn dechunk(body: &str) -> Option<String> {
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn config_text(port: u16, stats_port: u16, backends: &[u16]) -> String {
    let mut c = format!(
        "global\n  maxconn 4000\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
         timeout check 1s\n  retries 3\n  option redispatch 1\n\
         frontend idgate_in\n  bind 127.0.0.1:{port}\n  default_backend idgate\n\
         backend idgate\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
         http-error status 503 content-type application/json hdr Retry-After 1 \
         string '{{\"message\":\"{NO_SERVER_MESSAGE}\"}}'\n  \
         default-server inter {CHECK_INTERVAL_MS}ms fall {FALL} rise {RISE}\n"
    );
    for (i, p) in backends.iter().enumerate() {
        let _ = writeln!(c, "  server idgate{i} 127.0.0.1:{p} check");
    }
    let _ = write!(
        c,
        "listen stats\n  bind 127.0.0.1:{stats_port}\n  stats enable\n  stats uri /stats\n"
    );
    c
}
