//! The connection pool that serves resolutions.
//!
//! Every connection sets `plan_cache_mode = force_generic_plan` for its
//! session (see [`crate::db::plan`]), so the resolution is planned once per
//! connection, not once per request.
//!
//! Two sqlx defaults would add round trips to every resolution, so they are
//! changed here:
//! - sqlx prepares a statement (Parse/Describe/Sync, one round trip) the first
//!   time a connection runs it. Every new connection therefore prepares
//!   [`RESOLVE_SQL`] and [`BATCH_SQL`] (the shared statement of
//!   [`crate::db::batch`]) once in `after_connect`, as part of connection
//!   set-up; from then on a resolution, alone or in a batch, is a single
//!   Bind/Execute/Close/Sync exchange.
//! - `test_before_acquire` pings (a bare Sync, one round trip) each idle
//!   connection before handing it out. It is turned off; a connection found
//!   dead by a resolution's own query is retried once on a fresh connection
//!   instead (see [`crate::db::resolve`]), and idle connections are recycled.
//!
//! What remains: when a connection goes back to the pool sqlx sends a bare Sync
//! (no SQL) to check it, in a background task after the result has been handed
//! over; the request never waits on it.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::db::kind::DatabaseKind;
use crate::db::plan::SESSION_SETTING;
use crate::db::resolve::{BATCH_SQL, RESOLVE_SQL};

/// Pool sizing and the wait for a free connection, and which kind of database
/// the pool opens.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a caller waits for a connection before giving up (the API
    /// turns that into a 503).
    pub acquire_timeout: Duration,
    /// Open every connection when the pool is created, and keep them open
    /// while idle. `idgate serve` sets it; see [`connect`].
    pub keep_warm: bool,
    /// The operator's `database_kind`: whether [`crate::db::Db::open`] may
    /// migrate and write (carried here so every command that opens the
    /// database honours it).
    pub kind: DatabaseKind,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            keep_warm: false,
            kind: DatabaseKind::Auto,
        }
    }
}

/// Opens a pool whose connections prepare and plan the resolution statements
/// when they open (generic plans, cached per session). The schema must exist
/// (run migrations first): preparing checks the tables and columns, so a wrong
/// database fails loudly here.
///
/// With [`PoolSettings::keep_warm`] every connection is opened (and its
/// statement prepared) before this returns, and idle ones stay open (each is
/// still replaced at its maximum lifetime). A lazily-filled pool opens its
/// connections when load arrives: in a reconnect storm that meant forking
/// backends and preparing statements on the CPU the first thousand requests
/// were queued for (traced per request in the benchmark's storm). Without it
/// (tools, tests) the pool fills on demand.
pub async fn connect(options: PgConnectOptions, settings: PoolSettings) -> Result<PgPool, sqlx::Error> {
    let max = settings.max_connections.max(1);
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .min_connections(if settings.keep_warm { max } else { 0 })
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .idle_timeout(Some(Duration::from_secs(300)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(SESSION_SETTING).await?;
                // Prepared (sqlx keeps the statements) and planned here, not
                // by the first request on this connection: with
                // force_generic_plan the first execution builds the cached
                // plan (1.8 ms of PostgreSQL's time per statement in the
                // benchmark's first-use row, against 30 µs after), which in a
                // storm right after start landed on the two drainers the whole
                // queue waits for. An ID that matches nothing; read-only.
                sqlx::query(RESOLVE_SQL).bind("").fetch_all(&mut *conn).await?;
                sqlx::query(BATCH_SQL)
                    .bind(Vec::<String>::new())
                    .fetch_all(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    if settings.keep_warm {
        fill(&pool, max).await?;
    }
    Ok(pool)
}

/// Opens `n` connections at once (each runs the pool's `after_connect`) and
/// returns them to the pool idle, so start-up fails here if the database
/// cannot take them.
pub async fn fill(pool: &PgPool, n: u32) -> Result<(), sqlx::Error> {
    let mut acquiring = tokio::task::JoinSet::new();
    for _ in 0..n {
        acquiring.spawn(pool.acquire());
    }
    // Hold each until all are open, or the pool would hand one out twice.
    let mut opened = Vec::with_capacity(n as usize);
    while let Some(conn) = acquiring.join_next().await {
        opened.push(conn.map_err(|_| sqlx::Error::WorkerCrashed)??);
    }
    Ok(())
}
