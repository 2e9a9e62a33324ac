//! PostgreSQL: the schema (Coder's table subset), the connection pool, the
//! one-statement agent resolution, the registration commands' SQL, and the
//! embedded cluster used when no database URL is configured.

pub mod batch;
pub mod embedded;
pub mod kind;
pub mod plan;
pub mod pool;
pub mod registry;
pub mod resolve;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};

use embedded::EmbeddedCluster;
pub use kind::DatabaseKind;
pub use pool::PoolSettings;

/// idgate's schema migrations (`host/migrations`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// An open database: the pool, a read replica's pool if one is configured, and
/// the embedded cluster if idgate runs one.
#[derive(Debug)]
pub struct Db {
    /// Connections to the primary: registration, migrations, and resolutions
    /// unless a read replica is configured.
    pub pool: PgPool,
    /// Connections to the read replica that serves resolutions, if any.
    read_pool: Option<PgPool>,
    /// False for a database whose schema idgate does not own (a Coder database).
    managed: bool,
    embedded: Option<EmbeddedCluster>,
}

impl Db {
    /// Opens the database at `url`, or with `None` idgate's embedded cluster
    /// (started if needed; stopped by [`Db::close`] if started here). Runs the
    /// migrations, except on a Coder database ([`PoolSettings::kind`], or
    /// recognised by its migration history: see [`kind`]), which is only read.
    pub async fn open(url: Option<&str>, settings: PoolSettings) -> anyhow::Result<Db> {
        let Some(url) = url else {
            anyhow::ensure!(
                settings.kind != DatabaseKind::Coder,
                "database_kind = \"coder\" needs the Coder database's URL (database_url); \
                 the embedded cluster is always idgate's own"
            );
            let dir = embedded::default_cluster_dir();
            let cluster = tokio::task::spawn_blocking(move || EmbeddedCluster::start(&dir)).await??;
            let opened = async {
                ensure_database(&cluster).await?;
                Self::open_with(cluster.connect_options(embedded::DATABASE), settings).await
            }
            .await;
            return match opened {
                Ok(mut db) => {
                    db.embedded = Some(cluster);
                    Ok(db)
                }
                Err(e) => {
                    let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
                    Err(e)
                }
            };
        };
        let options: PgConnectOptions = url
            .parse()
            .context("the database URL is not a PostgreSQL URL (postgres://user@host/db)")?;
        Self::open_with(options, settings).await
    }

    /// Opens the database at `options` (no embedded cluster).
    pub async fn open_with(options: PgConnectOptions, settings: PoolSettings) -> anyhow::Result<Db> {
        let managed = prepare_schema(&options, settings.kind).await?;
        // A Coder database's sessions refuse writes, whatever is run on them.
        let options = if managed { options } else { kind::read_only(options) };
        let pool = pool::connect(options, settings)
            .await
            .context("connecting to PostgreSQL (and preparing the resolution statement)")?;
        Ok(Db {
            pool,
            read_pool: None,
            managed,
            embedded: None,
        })
    }

    /// The same database, with resolutions served by the read-only database at
    /// `url` (a streaming standby of this one, so it has the same schema). Only
    /// the resolution statement runs there; nothing is migrated or written.
    /// Preparing the statement on the first connection checks that the
    /// replica has the tables.
    pub async fn with_read_url(mut self, url: &str, settings: PoolSettings) -> anyhow::Result<Db> {
        let options: PgConnectOptions = url
            .parse()
            .context("the read-only database URL is not a PostgreSQL URL (postgres://user@host/db)")?;
        // Only the resolution runs there: every session is read-only.
        let options = kind::read_only(options);
        // The pool retries a failing connection set-up until its acquire
        // timeout and then reports only that; one plain connection first
        // gives the real reason (unreachable, no such database, no tables).
        let mut probe = options
            .connect()
            .await
            .context("connecting to the read-only database")?;
        probe.prepare(resolve::RESOLVE_SQL).await.context(
            "preparing the resolution statement on the read-only database (does it have idgate's or Coder's tables?)",
        )?;
        probe.close().await?;
        let read = pool::connect(options, settings)
            .await
            .context("connecting to the read-only database")?;
        if let Some(old) = self.read_pool.replace(read) {
            old.close().await;
        }
        Ok(self)
    }

    /// The pool resolutions use: the read replica's if configured, else the primary's.
    pub fn resolution_pool(&self) -> &PgPool {
        self.read_pool.as_ref().unwrap_or(&self.pool)
    }

    /// Whether idgate owns the schema (false for a Coder database).
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    /// Fails unless idgate owns the schema, naming `what` was refused.
    pub fn require_managed(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.managed,
            "{what}: this is a Coder database (database_kind, or Coder's migration history), which \
             idgate only reads; manage agents with Coder itself"
        );
        Ok(())
    }

    /// The embedded cluster, if idgate runs one.
    pub fn embedded(&self) -> Option<&EmbeddedCluster> {
        self.embedded.as_ref()
    }

    /// Closes the pool, then stops the embedded cluster if this process started
    /// it and no other process (an `idgate serve` that came up meanwhile and
    /// found it running) is connected; otherwise it is left running.
    pub async fn close(self) {
        if let Some(read) = &self.read_pool {
            read.close().await;
        }
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            if cluster.started_here() && !alone(&cluster).await {
                tracing::warn!(
                    dir = %cluster.data_dir().display(),
                    "other processes use the embedded PostgreSQL (or it cannot be checked); leaving it running"
                );
                return;
            }
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "stopping the embedded PostgreSQL"),
                Err(e) => tracing::warn!(error = %e, "stopping the embedded PostgreSQL"),
            }
        }
    }
}

/// Applies idgate's migrations over `pool`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Migrates the database unless it is a Coder database (by `kind`, or
/// recognised: see [`kind`]); returns whether idgate owns the schema.
async fn prepare_schema(options: &PgConnectOptions, kind: DatabaseKind) -> anyhow::Result<bool> {
    let shape = kind::shape(options).await?;
    if kind::is_coder(kind, &shape)? {
        let (version, dirty) = shape.coder_history.flatten().unzip();
        if dirty == Some(true) {
            tracing::warn!(
                version,
                "Coder's schema_migrations is marked dirty (a Coder migration failed or is running); \
                 reading it anyway"
            );
        }
        tracing::info!(
            %kind,
            coder_schema_version = version,
            stray_sqlx_migrations = shape.sqlx_history,
            "a Coder database: using it read-only, never migrated"
        );
        return Ok(false);
    }
    let mut conn = options.connect().await.context("connecting to PostgreSQL")?;
    MIGRATOR.run(&mut conn).await.context("migrating the database")?;
    conn.close().await?;
    Ok(true)
}

/// Whether no other process is connected to the cluster. Connections of this
/// process (named by [`embedded::application_name`]) do not count: a pooled
/// connection still on its way back to the just-closed pool can outlive
/// `close()`, and counting it left the cluster running after `agents add`.
/// Backends of other processes' closed pools take a moment to exit, so this
/// asks for up to a second.
async fn alone(cluster: &EmbeddedCluster) -> bool {
    for _ in 0..20 {
        if other_clients(cluster).await == Some(0) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Client connections to the cluster other than the one asking, or `None` if
/// the cluster cannot be asked.
async fn other_clients(cluster: &EmbeddedCluster) -> Option<i64> {
    let mut conn = PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .ok()?;
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM $1",
    )
    .bind(embedded::application_name())
    .fetch_one(&mut conn)
    .await
    .ok();
    let _ = conn.close().await;
    n
}

/// Creates the `idgate` database in the embedded cluster if it is missing.
async fn ensure_database(cluster: &EmbeddedCluster) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .with_context(|| {
            format!(
                "connecting to the embedded PostgreSQL in {}",
                cluster.data_dir().display()
            )
        })?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(embedded::DATABASE)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let created = sqlx::raw_sql(&format!("CREATE DATABASE {}", embedded::DATABASE))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            // Created meanwhile by another idgate process.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the idgate database"),
        }
    }
    conn.close().await?;
    Ok(())
}
