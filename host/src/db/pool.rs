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
//!   [`RESOLVE_SQL`] once in `after_connect`, as part of connection set-up;
//!   from then on a resolution is a single Bind/Execute/Close/Sync exchange.
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

use crate::db::plan::SESSION_SETTING;
use crate::db::resolve::RESOLVE_SQL;

/// Pool sizing and the wait for a free connection.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a caller waits for a connection before giving up (the API
    /// turns that into a 503).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// Opens a lazily-filled pool whose connections plan the resolution once
/// (generic plan cached per session) and have its statement prepared. The schema must exist (run migrations first): preparing checks
/// the tables and columns, so a wrong database fails loudly here.
pub async fn connect(options: PgConnectOptions, settings: PoolSettings) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .idle_timeout(Some(Duration::from_secs(300)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(SESSION_SETTING).await?;
                conn.prepare(RESOLVE_SQL).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}
