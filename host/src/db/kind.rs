//! Which kind of database a URL is: idgate's own (migrated and written by
//! idgate) or Coder's (only ever read), set by the operator (`database_kind`)
//! or recognised by what the database says about itself.
//!
//! Recognition looks for each side's own migration history, never for an
//! absence: Coder migrates with golang-migrate, which keeps one row in
//! `schema_migrations (version bigint, dirty boolean)`; idgate migrates with
//! sqlx, which keeps `_sqlx_migrations`. Another sqlx-based tool may leave a
//! `_sqlx_migrations` table in Coder's database; it does not make the
//! database idgate's.
//!
//! The rule (`database_kind = "auto"`, the default), in order:
//! 1. `schema_migrations` with a `version bigint` and a `dirty boolean` column,
//!    beside a `workspace_agents` table: **Coder** (whatever else is there).
//! 2. no `workspace_agents` table: **idgate** (a new database; migrated).
//! 3. `_sqlx_migrations` beside `workspace_agents`: **idgate** (migrated).
//! 4. otherwise — Coder's tables with neither history — idgate refuses to guess
//!    and asks for `database_kind`.
//!
//! A Coder database is never migrated or written: its connections are opened
//! with `default_transaction_read_only = on`, so PostgreSQL itself refuses a
//! write should one ever be attempted.

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The operator's `database_kind`: what a database URL points at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// Recognise the database by its migration history (see the module docs).
    #[default]
    Auto,
    /// idgate's own database: migrated at start, written by the `agents` and
    /// `workspaces` commands.
    Idgate,
    /// A Coder deployment's database: only read, never migrated.
    Coder,
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatabaseKind::Auto => "auto",
            DatabaseKind::Idgate => "idgate",
            DatabaseKind::Coder => "coder",
        })
    }
}

/// What the schema holds, as far as telling the kinds apart goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// `workspace_agents` exists (idgate's or Coder's tables are there).
    pub agents: bool,
    /// sqlx's `_sqlx_migrations` exists.
    pub sqlx_history: bool,
    /// golang-migrate's `schema_migrations (version bigint, dirty boolean)`
    /// exists; its row, if it has one.
    pub coder_history: Option<Option<(i64, bool)>>,
}

/// The database is Coder's (`true`) or idgate's (`false`), by `kind` or, for
/// [`DatabaseKind::Auto`], by `shape` (the rule in the module docs).
pub(crate) fn is_coder(kind: DatabaseKind, shape: &Shape) -> anyhow::Result<bool> {
    match kind {
        DatabaseKind::Idgate => Ok(false),
        DatabaseKind::Coder if !shape.agents => bail!(
            "database_kind = \"coder\", but the database has no workspace_agents table: \
             is the URL that of Coder's database?"
        ),
        DatabaseKind::Coder => Ok(true),
        DatabaseKind::Auto => match shape {
            Shape {
                agents: true,
                coder_history: Some(_),
                ..
            } => Ok(true),
            Shape { agents: false, .. } => Ok(false),
            Shape { sqlx_history: true, .. } => Ok(false),
            _ => bail!(
                "the database has Coder's tables (workspace_agents) but neither Coder's migration history \
                 (schema_migrations) nor idgate's (_sqlx_migrations), so idgate cannot tell whose it is; \
                 set database_kind = \"coder\" (read it, never write) or \"idgate\" (idgate's own, migrated)"
            ),
        },
    }
}

/// Reads the [`Shape`] of the database at `options` on a read-only connection.
pub(crate) async fn shape(options: &PgConnectOptions) -> anyhow::Result<Shape> {
    let mut conn = read_only(options.clone())
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let shape = read_shape(&mut conn).await;
    let _ = conn.close().await;
    shape
}

async fn read_shape(conn: &mut PgConnection) -> anyhow::Result<Shape> {
    // Names resolve through the search path, as the resolution statement's do.
    let (agents, sqlx_history, coder_history): (bool, bool, bool) = sqlx::query_as(
        "SELECT to_regclass('workspace_agents') IS NOT NULL, \
                to_regclass('_sqlx_migrations') IS NOT NULL, \
                (SELECT count(*) FROM pg_attribute \
                 WHERE attrelid = to_regclass('schema_migrations') AND attnum > 0 AND NOT attisdropped \
                   AND ((attname = 'version' AND atttypid = 'bigint'::regtype) \
                     OR (attname = 'dirty' AND atttypid = 'boolean'::regtype))) = 2",
    )
    .fetch_one(&mut *conn)
    .await
    .context("reading the database's tables")?;
    let coder_history = if coder_history {
        let row: Option<(i64, bool)> = sqlx::query_as("SELECT version, dirty FROM schema_migrations LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .context("reading Coder's schema_migrations")?;
        Some(row)
    } else {
        None
    };
    Ok(Shape {
        agents,
        sqlx_history,
        coder_history,
    })
}

/// `options` for a session in which every transaction is read-only, so the
/// server refuses any write.
pub(crate) fn read_only(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("default_transaction_read_only", "on")])
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn shape(agents: bool, sqlx_history: bool, coder: bool) -> Shape {
        Shape {
            agents,
            sqlx_history,
            coder_history: if coder { Some(Some((300, false))) } else { None },
        }
    }

    #[test]
    fn auto_detection_follows_the_documented_rule() {
        let auto = |s| is_coder(DatabaseKind::Auto, &s);
        // Coder's history beside Coder's tables, with or without a stray sqlx table.
        assert!(auto(shape(true, false, true)).unwrap());
        assert!(auto(shape(true, true, true)).unwrap());
        // A new database, even one where some tool left either history table.
        assert!(!auto(shape(false, false, false)).unwrap());
        assert!(!auto(shape(false, true, false)).unwrap());
        assert!(!auto(shape(false, false, true)).unwrap());
        // idgate's own.
        assert!(!auto(shape(true, true, false)).unwrap());
        // Tables without either history: no guess.
        let e = auto(shape(true, false, false)).unwrap_err().to_string();
        assert!(e.contains("cannot tell") && e.contains("database_kind"), "{e}");
    }

    #[test]
    fn an_explicit_kind_overrides_detection() {
        for s in [
            shape(true, false, false),
            shape(true, true, true),
            shape(true, true, false),
        ] {
            assert!(is_coder(DatabaseKind::Coder, &s).unwrap());
            assert!(!is_coder(DatabaseKind::Idgate, &s).unwrap());
        }
        assert!(!is_coder(DatabaseKind::Idgate, &shape(false, false, false)).unwrap());
        let e = is_coder(DatabaseKind::Coder, &shape(false, false, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no workspace_agents"), "{e}");
    }

    #[test]
    fn kinds_read_from_configuration() {
        #[derive(serde::Deserialize)]
        struct T {
            k: DatabaseKind,
        }
        let k = |s: &str| toml::from_str::<T>(&format!("k = \"{s}\"")).map(|t| t.k);
        assert_eq!(k("coder").unwrap(), DatabaseKind::Coder);
        assert_eq!(k("idgate").unwrap(), DatabaseKind::Idgate);
        assert_eq!(k("auto").unwrap(), DatabaseKind::Auto);
        assert!(k("Coder").is_err() && k("readonly").is_err());
    }
}
