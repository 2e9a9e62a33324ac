//! Plan once: every pooled connection runs the resolution on one cached plan.
//!
//! PostgreSQL plans a prepared statement afresh for its first five executions
//! (custom plans, built for the actual instance ID) and afterwards switches to
//! a generic plan only if that one does not look costlier than the custom ones
//! did. For the resolution, planning costs more than executing, and whether the
//! switch happens depends on the data: with skewed statistics (one instance ID
//! carrying thousands of not-soft-deleted rows) the estimates can keep it
//! re-planning forever. So the pool's connections set
//! `plan_cache_mode = force_generic_plan` for their session: the statement is
//! planned once, at its first execution on the connection, and that plan is
//! reused until PostgreSQL invalidates it (after `ANALYZE` or DDL on a table
//! it reads, when it is rebuilt once). [`crate::db::resolve::RESOLVE_SQL`] is
//! written so that this one plan is cheap for every data shape, and so is the
//! shared statement [`crate::db::resolve::BATCH_SQL`], planned once too.
//!
//! A session setting is not a write: it works unchanged against a Coder
//! database, with a read-only role, and on a standby. It is sent with `SET`
//! when the connection is made rather than as a startup option, because
//! connection poolers such as PgBouncer refuse unknown startup options.
//!
//! The functions below read what the server did with the statement, for tests
//! and the benchmarks.

use sqlx::{PgConnection, Row};

use crate::db::resolve::{BATCH_SQL, RESOLVE_SQL};

/// The session setting every pooled connection runs before its first statement.
pub const SESSION_SETTING: &str = "SET plan_cache_mode = force_generic_plan";

/// How the server has planned the resolution statement on one connection
/// (`pg_prepared_statements`, PostgreSQL 14 or newer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCounts {
    /// Executions that used the cached generic plan.
    pub generic: i64,
    /// Executions planned afresh for their parameter.
    pub custom: i64,
}

/// The server-side name of the resolution statement on `conn`, if it is
/// prepared there.
pub async fn statement_name(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    statement_name_of(conn, RESOLVE_SQL).await
}

/// The server-side name of statement `sql` on `conn`, if it is prepared there.
pub async fn statement_name_of(conn: &mut PgConnection, sql: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM pg_prepared_statements WHERE statement = $1")
        .bind(sql)
        .fetch_optional(conn)
        .await
}

/// How often the resolution statement on `conn` ran on its generic plan and
/// on custom plans; `None` if it is not prepared there.
pub async fn plan_counts(conn: &mut PgConnection) -> Result<Option<PlanCounts>, sqlx::Error> {
    plan_counts_of(conn, RESOLVE_SQL).await
}

/// [`plan_counts`] of statement `sql` (for example [`BATCH_SQL`]).
pub async fn plan_counts_of(conn: &mut PgConnection, sql: &str) -> Result<Option<PlanCounts>, sqlx::Error> {
    let row = sqlx::query("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1")
        .bind(sql)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(PlanCounts {
            generic: r.try_get(0)?,
            custom: r.try_get(1)?,
        })
    })
    .transpose()
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the resolution of `instance_id` on the
/// plan `conn` has cached: it executes the statement once (read-only), as
/// `EXPLAIN EXECUTE` of the connection's own prepared statement. Fails if the
/// statement is not prepared on `conn`.
pub async fn explain_cached(conn: &mut PgConnection, instance_id: &str) -> Result<Vec<String>, sqlx::Error> {
    explain_execute(conn, RESOLVE_SQL, &sql_literal(instance_id)).await
}

/// [`explain_cached`] for the shared statement ([`BATCH_SQL`]) of the
/// instance IDs `instance_ids`.
pub async fn explain_cached_batch(conn: &mut PgConnection, instance_ids: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let items: Vec<String> = instance_ids.iter().map(|id| sql_literal(id)).collect();
    explain_execute(conn, BATCH_SQL, &format!("ARRAY[{}]::text[]", items.join(", "))).await
}

/// A string as an SQL literal (EXECUTE takes its arguments as expressions).
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn explain_execute(conn: &mut PgConnection, sql: &str, argument: &str) -> Result<Vec<String>, sqlx::Error> {
    let name = statement_name_of(conn, sql)
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("the resolution statement is not prepared on this connection".into()))?;
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS) EXECUTE \"{}\"({argument})",
        name.replace('"', "\"\"")
    );
    let rows = sqlx::raw_sql(&sql).fetch_all(conn).await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}
