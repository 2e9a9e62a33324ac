//! The HTTP edge of `idgate serve`: the accept loop and what bounds every
//! connection before a request reaches the router.
//!
//! What it guarantees, against clients that connect and then dawdle:
//! - a connection is accepted only while fewer than [`EdgeLimits::max_connections`]
//!   are open; at the cap the loop stops accepting and later connections wait in
//!   the kernel's backlog, so the process never runs out of descriptors for its
//!   database pool, plugins and logs (the cap is derived from `RLIMIT_NOFILE`);
//! - a failing `accept` (`EMFILE`, `ENFILE`, `ENOBUFS`…) backs off, 5 ms doubling
//!   to 1 s as Go's `net/http` does, instead of spinning;
//! - every connection ends: a TLS handshake and a request head must each arrive
//!   within the header timeout, a head larger than the cap is answered 431, and a
//!   connection with no request in flight is closed after the idle timeout (see
//!   [`connection`]);
//! - shutdown starts with a drain: for [`EdgeLimits::drain`] the loop goes on
//!   accepting and serving while `/readyz` fails, and every HTTP/1.1 response
//!   carries `Connection: close` (HTTP/2 connections get a GOAWAY once a request
//!   of theirs is answered), so clients and balancers move to other replicas
//!   without a refused connection or a request lost on a reused one;
//! - then it stops accepting, asks every connection to finish, and after the
//!   grace period closes whatever is left.

mod connection;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::ServeLimits;

/// Descriptors kept back from connections whatever the pool: stdio, the
/// runtime's epoll and wakers, the listener, compiled-plugin and cache files,
/// outbound key fetches, log files, and the embedded cluster's pipes.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The default ceiling on open connections even when descriptors would allow
/// more: at the default head cap this bounds their buffers to a few hundred MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// The default drain: long enough for a balancer to see `/readyz` fail and
/// take the replica out. HAProxy's default checks (`inter 2s`, `fall 3`) need
/// up to 6 s; a Kubernetes readiness probe with `periodSeconds: 5` and the
/// endpoint update that follows, about as long. Ten seconds covers both with
/// room, and with the default grace (the request timeout, 10 s) the whole stop
/// stays within Kubernetes' default `terminationGracePeriodSeconds` of 30.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Bounds of the edge, defaults filled in and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Time for a request head to arrive (and, with TLS, for the handshake).
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in flight before it is closed.
    pub idle_timeout: Duration,
    /// Largest request head, bytes (HTTP/1.1 buffer; HTTP/2 header list).
    pub max_head_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a closing connection (at shutdown, or idle) may take to finish.
    pub shutdown_grace: Duration,
    /// How long serving goes on after the first SIGTERM/SIGINT; zero for none.
    pub drain: Duration,
}

/// The smallest head cap accepted: hyper's read buffer cannot be smaller than
/// 8 KiB, and a head below 1 KiB would refuse ordinary clients.
const MIN_HEAD_BYTES: usize = 1024;

impl EdgeLimits {
    /// The limits from `[limits]`: `request_timeout` is the grace period's
    /// default, `fd_limit` the soft `RLIMIT_NOFILE` and `db_connections` the
    /// connections the database pools may open.
    pub fn from_config(
        limits: &ServeLimits,
        request_timeout: Duration,
        fd_limit: u64,
        db_connections: u64,
    ) -> anyhow::Result<EdgeLimits> {
        let ms = |name: &str, value: Option<u64>, default: Duration| match value {
            Some(0) => anyhow::bail!("[limits] {name} must be at least 1 ms"),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(default),
        };
        let max_head_bytes = limits.max_head_bytes.unwrap_or(16 * 1024);
        if max_head_bytes < MIN_HEAD_BYTES {
            anyhow::bail!("[limits] max_head_bytes must be at least {MIN_HEAD_BYTES}");
        }
        let available = connection_cap(fd_limit, db_connections);
        let max_connections = match limits.max_connections {
            Some(0) => anyhow::bail!("[limits] max_connections must be at least 1"),
            Some(n) if n > available => anyhow::bail!(
                "[limits] max_connections = {n} exceeds what {fd_limit} descriptors allow \
                 ({available}, after {RESERVED_DESCRIPTORS} reserved and {db_connections} for the database); \
                 raise the process's descriptor limit (LimitNOFILE=) or lower the setting"
            ),
            Some(n) => n,
            None => available.min(DEFAULT_MAX_CONNECTIONS),
        };
        Ok(EdgeLimits {
            header_timeout: ms("header_timeout_ms", limits.header_timeout_ms, Duration::from_secs(10))?,
            idle_timeout: ms("idle_timeout_ms", limits.idle_timeout_ms, Duration::from_secs(30))?,
            max_head_bytes,
            max_connections,
            shutdown_grace: ms("shutdown_grace_ms", limits.shutdown_grace_ms, request_timeout)?,
            // Zero is allowed: behind no balancer there is nothing to wait for.
            drain: limits.drain_ms.map_or(DEFAULT_DRAIN, Duration::from_millis),
        })
    }
}

/// Connections `fd_limit` descriptors leave room for once the reserve and the
/// database pools are set aside; at least one.
pub fn connection_cap(fd_limit: u64, db_connections: u64) -> usize {
    let free = fd_limit.saturating_sub(RESERVED_DESCRIPTORS + db_connections).max(1);
    usize::try_from(free).unwrap_or(usize::MAX)
}

/// The soft descriptor limit in force (`RLIMIT_NOFILE`).
pub fn descriptor_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// How a [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections still open when the grace period ran out, closed unfinished.
    pub cut: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open
/// connections finish for at most `limits.shutdown_grace` and closes what is
/// left. Once `draining` turns true (the drain before `shutdown`), responses
/// close their connections. With `tls`, every connection is a TLS connection
/// (HTTP/2 or HTTP/1.1 by ALPN); without, HTTP/1.1.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    draining: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let edge = Arc::new(connection::Edge::new(router, limits, tls, draining, stopping));
    let mut open = JoinSet::new();
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    'accept: loop {
        // At the cap nothing is accepted: the kernel holds the next connections
        // in the backlog until a slot frees.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break 'accept,
            Some(_) = open.join_next(), if !open.is_empty() => continue 'accept,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break 'accept,
            },
        };
        let stream = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break 'accept,
                Some(_) = open.join_next(), if !open.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.reset();
                        break stream;
                    }
                    // The peer gave up between SYN and accept: nothing to wait for.
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        let wait = backoff.next();
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "accept failed; backing off");
                        tokio::select! {
                            () = &mut shutdown => break 'accept,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                },
            }
        };
        let edge = edge.clone();
        open.spawn(async move {
            edge.serve(stream).await;
            drop(slot);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while open.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let cut = if drained { 0 } else { open.len() };
    open.shutdown().await;
    Stopped { cut }
}

/// Errors `accept` reports about one connection that is already gone; the
/// listener itself is fine.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

/// The wait after a failed `accept`: 5 ms doubling to 1 s, reset by a success.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let wait = self.last.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.last = Some(wait);
        wait
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> anyhow::Result<EdgeLimits> {
        let config = crate::config::FileConfig::parse(text).unwrap();
        EdgeLimits::from_config(&config.host.limits, Duration::from_secs(10), 1024, 10)
    }

    #[test]
    fn defaults_leave_room_for_the_pool_and_the_reserve() {
        let l = limits("").unwrap();
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(30));
        assert_eq!(l.max_head_bytes, 16 * 1024);
        assert_eq!(l.max_connections, 1024 - 128 - 10);
        assert_eq!(l.shutdown_grace, Duration::from_secs(10), "the request timeout");
        assert_eq!(l.drain, DEFAULT_DRAIN);
        let plenty = EdgeLimits::from_config(&ServeLimits::default(), Duration::from_secs(1), 1 << 20, 20).unwrap();
        assert_eq!(plenty.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_cap(100, 10), 1, "never zero");
    }

    #[test]
    fn settings_are_checked() {
        let l = limits("[limits]\nheader_timeout_ms = 500\nmax_connections = 100\nshutdown_grace_ms = 7").unwrap();
        assert_eq!(l.header_timeout, Duration::from_millis(500));
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.shutdown_grace, Duration::from_millis(7));
        assert_eq!(
            limits("[limits]\ndrain_ms = 0").unwrap().drain,
            Duration::ZERO,
            "no drain"
        );
        for bad in [
            "header_timeout_ms = 0",
            "idle_timeout_ms = 0",
            "max_head_bytes = 100",
            "max_connections = 0",
            "max_connections = 5000",
        ] {
            let e = limits(&format!("[limits]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(5));
    }

    #[test]
    fn the_descriptor_limit_is_read() {
        assert!(descriptor_limit().unwrap() > 0);
    }
}
