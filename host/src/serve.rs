//! `idgate serve`: start-up (database, plugins, listener), logging, and
//! graceful shutdown that drains requests and stops the embedded cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{router, ApiLimits, AppState};
use crate::authenticate::Authenticator;
use crate::db::{Db, PoolSettings};
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Where `idgate serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(settings: &Settings, listen: Option<String>) -> anyhow::Result<()> {
    let limits = settings.file.host.limits;
    let pool = PoolSettings {
        keep_warm: true,
        ..settings.pool_settings()
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
        auth,
        pool: db.resolution_pool().clone(),
        resolver: None,
        metrics: Metrics::default(),
        limits: ApiLimits {
            max_body_bytes: limits.max_body_bytes.unwrap_or(ApiLimits::default().max_body_bytes),
            request_timeout: limits
                .request_timeout_ms
                .map_or(ApiLimits::default().request_timeout, Duration::from_millis),
        },
        configured: settings.file.providers.keys().cloned().collect(),
    });
    let addr = listen
        .or_else(|| settings.file.host.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        plugins = ?sandbox.plugins().iter().map(|p| p.provider.as_str()).collect::<Vec<_>>(),
        embedded_database = settings.database_url.is_none(),
        read_replica = settings.database_read_url.is_some(),
        "idgate is serving"
    );
    // Scripts and tests read the bound address (port 0 picks a free one).
    let shutdown = shutdown_signal()?;
    println!("idgate listening on http://{local}");
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down");
    db.close().await;
    served.context("serving HTTP")
}

/// Listens for SIGINT and SIGTERM from the moment it is called: a signal that
/// arrives before the server is polled (say, right after the address is printed)
/// must still mean a graceful shutdown, not the default action of dying at once
/// with the embedded cluster left running.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// Sets up `tracing`: `json` or `pretty` (default), filtered by `RUST_LOG`
/// (default `info`, sqlx's notices hidden). Logs go to stderr.
pub fn init_logging(format: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        Some("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
}
