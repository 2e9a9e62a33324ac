//! `idgate serve`: start-up (configuration, database, plugins, listener),
//! logging, signals (SIGHUP reloads, [`crate::reload`]), and a shutdown in
//! three steps: a drain (`/readyz` fails while serving goes on, so balancers
//! move away), then no new connections while open ones get the grace period,
//! then the embedded cluster stops. The connections themselves are the
//! edge's ([`crate::edge`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{router, ApiLimits, AppState};
use crate::authenticate::Authenticator;
use crate::db::{Db, PoolSettings};
use crate::edge::EdgeLimits;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::reload::{ReadSettings, Reloader};
use crate::settings::Settings;

/// Where `idgate serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// Runs the server until SIGINT or SIGTERM; on SIGHUP, reloads the provider
/// set (and the TLS certificate) from the settings `read` resolves
/// ([`crate::reload`]).
pub async fn serve(settings: &Settings, listen: Option<String>, read: ReadSettings) -> anyhow::Result<()> {
    let limits = settings.file.host.limits;
    let pool = PoolSettings {
        keep_warm: true,
        ..settings.pool_settings()
    };
    let api_limits = ApiLimits {
        max_body_bytes: limits.max_body_bytes.unwrap_or(ApiLimits::default().max_body_bytes),
        request_timeout: limits
            .request_timeout_ms
            .map_or(ApiLimits::default().request_timeout, Duration::from_millis),
    };
    // Checked before anything starts, so a bad setting costs no cluster start.
    let pools = if settings.database_read_url.is_some() { 2 } else { 1 };
    let edge_limits = EdgeLimits::from_config(
        &limits,
        api_limits.request_timeout,
        crate::edge::descriptor_limit().context("reading the descriptor limit")?,
        u64::from(pool.max_connections) * pools,
    )?;
    let (tls, certificates) = match settings.tls_files()? {
        Some((cert, key)) => {
            let (acceptor, certificates) = crate::tls::reloadable_acceptor(cert, key)?;
            (Some(acceptor), Some(certificates))
        }
        None => (None, None),
    };
    let sandbox = Arc::new(settings.sandbox()?);
    let auth = Authenticator::new(sandbox.clone(), &settings.file)?;
    // Only the pool that resolves is kept warm: with a read replica the
    // primary serves registration alone and needs no idle connections.
    let primary = PoolSettings {
        keep_warm: settings.database_read_url.is_none(),
        ..pool
    };
    let mut db = Db::open(settings.database_url.as_deref(), primary).await?;
    if let Some(url) = &settings.database_read_url {
        db = db.with_read_url(url, pool).await?;
    }
    let state = Arc::new(AppState {
        providers: Providers::new(auth),
        pool: db.resolution_pool().clone(),
        resolver: None,
        metrics: Metrics::default(),
        limits: api_limits,
    });
    let addr = listen
        .or_else(|| settings.file.host.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listener = bind(&addr).await.with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        plugins = ?sandbox.plugins().iter().map(|p| p.provider.as_str()).collect::<Vec<_>>(),
        embedded_database = settings.database_url.is_none(),
        read_replica = settings.database_read_url.is_some(),
        max_connections = edge_limits.max_connections,
        header_timeout_ms = edge_limits.header_timeout.as_millis() as u64,
        drain_ms = edge_limits.drain.as_millis() as u64,
        "idgate is serving"
    );
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "serving plain HTTP beyond loopback: session tokens cross the network in clear \
             unless TLS is terminated in front; configure [tls] to terminate it here"
        );
    }
    let (drain, draining) = tokio::sync::watch::channel(false);
    let shutdown = shutdown_signal(&edge_limits, state.clone(), drain)?;
    let reloads = reload_on_hangup(Reloader::new(read, settings, certificates), state.clone())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Scripts and tests read the bound address (port 0 picks a free one).
    println!("idgate listening on {scheme}://{local}");
    let stopped = crate::edge::serve(listener, router(state), edge_limits, tls, draining, shutdown).await;
    // The handler stays installed (a late SIGHUP is ignored, not fatal);
    // only reloading stops.
    reloads.abort();
    if stopped.cut > 0 {
        tracing::warn!(
            connections = stopped.cut,
            "closed connections still open when the shutdown grace period ran out"
        );
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Connections the kernel may hold completed for `accept` (its `listen` backlog).
///
/// Why not tokio's default of 128: after an idgate restart every agent reconnects
/// at once. With 1,000 connecting, a 128-deep queue overflowed while the
/// runtime's workers were busy with the requests already accepted; the kernel
/// then drops the SYNs and the agents retry after one second, then three. The
/// kernel caps the figure at `net.core.somaxconn` (4,096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` (`host:port`, resolved; the first address that
/// binds wins) with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as tokio's own `bind`
/// sets it, so a restart can listen again while old connections sit in `TIME_WAIT`.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")))
}

/// Listens for SIGINT and SIGTERM from the moment it is called: a signal that
/// arrives before the server is polled (say, right after the address is printed)
/// must still mean a graceful shutdown, not the default action of dying at once
/// with the embedded cluster left running.
///
/// The future completes when the listener should close: after the first
/// signal has started the drain (`/readyz` fails, `drain` tells the edge to
/// close connections after their responses) and `limits.drain` has passed, or
/// at a second signal, for an operator who wants it to stop now.
fn shutdown_signal(
    limits: &EdgeLimits,
    state: Arc<AppState>,
    drain: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let (drain_time, grace) = (limits.drain, limits.shutdown_grace);
    Ok(async move {
        let signal = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        state.metrics.start_draining();
        let _ = drain.send(true);
        if !drain_time.is_zero() {
            tracing::info!(
                signal,
                drain_ms = drain_time.as_millis() as u64,
                "draining: /readyz answers 503 and every response closes its connection, \
                 while serving goes on for drain_ms; a second SIGTERM or SIGINT ends the drain now"
            );
            tokio::select! {
                () = tokio::time::sleep(drain_time) => tracing::info!("drain over"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "drain cut short by a second signal"),
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "drain cut short by a second signal"),
            }
        }
        tracing::info!(
            signal,
            grace_ms = grace.as_millis() as u64,
            "shutting down: no new connections; open ones get the grace period to finish"
        );
    })
}

/// Reloads on every SIGHUP, one reload at a time (signals that arrive during
/// one are coalesced into the next). The handler is installed now, before the
/// address is printed: SIGHUP's default action would kill the process.
fn reload_on_hangup(reloader: Reloader, state: Arc<AppState>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration and the plugin directory");
            // The outcome is logged, counted and kept for `/readyz` by `reload`.
            let _ = reloader.reload(&state).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five hundred agents connect at once while the server accepts nothing (as
    /// when its workers are busy with the requests already in): every handshake
    /// still completes. Past tokio's default backlog of 128 the kernel would drop
    /// the SYNs and these connects would hang until the bound below.
    #[tokio::test]
    async fn a_reconnect_storm_queues_past_tokios_default_backlog() {
        const STORM: usize = 500;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            somaxconn > STORM,
            "net.core.somaxconn is {somaxconn}: the kernel caps every backlog below this test's storm"
        );
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..STORM {
            connects.spawn(async move {
                // Only a failure waits this long: a queued connect completes at once.
                tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr)).await
            });
        }
        let mut open = Vec::new();
        while let Some(done) = connects.join_next().await {
            match done.unwrap() {
                Ok(Ok(stream)) => open.push(stream),
                Ok(Err(e)) => panic!("connect failed: {e}"),
                Err(_) => panic!("a connect was not queued: the backlog overflowed"),
            }
        }
        assert_eq!(open.len(), STORM);
        // Every one of them is waiting in the queue, ready to be accepted.
        for _ in 0..STORM {
            let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
            assert!(
                matches!(accepted, Ok(Ok(_))),
                "a queued connection could not be accepted"
            );
        }
    }

    #[tokio::test]
    async fn bind_refuses_an_address_without_a_port() {
        assert!(bind("127.0.0.1:not-a-port").await.is_err());
        assert!(bind("127.0.0.1").await.is_err());
    }
}
