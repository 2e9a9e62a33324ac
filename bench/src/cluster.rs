//! The benchmarks' own PostgreSQL: a throw-away cluster in a temporary
//! directory, made with idgate's embedded-cluster helpers, with
//! `pg_stat_statements` preloaded so PostgreSQL itself counts the statements
//! each authentication runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use idgate::db::embedded::{self, EmbeddedCluster};
use idgate::db::{Db, PoolSettings};
use sqlx::{Connection, PgConnection, PgPool};

/// The database the benchmarks register agents in.
pub const DATABASE: &str = "bench";
/// The database Coder main's pattern runs on: the same registrations, with
/// prior-build agents soft-deleted ([`crate::fixtures::soft_delete_prior_agents`]).
pub const CODER_MAIN_DATABASE: &str = "bench_coder_main";

/// Time PostgreSQL spent on statements, as `pg_stat_statements` counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTime {
    /// Planning.
    pub plan: Duration,
    /// Execution.
    pub exec: Duration,
}

impl ServerTime {
    /// The time of one of `n` executions.
    pub fn per(&self, n: u32) -> ServerTime {
        ServerTime {
            plan: self.plan / n.max(1),
            exec: self.exec / n.max(1),
        }
    }

    /// `plan + execute`.
    pub fn show(&self) -> String {
        format!("{} + {}", crate::stats::fmt(self.plan), crate::stats::fmt(self.exec))
    }
}

/// A running cluster; stopped and removed on drop.
pub struct BenchCluster {
    cluster: Option<EmbeddedCluster>,
    parent: PathBuf,
    /// Whether `pg_stat_statements` is loaded (statement counts are available).
    pub stat_statements: bool,
    /// `SELECT version()`.
    pub version: String,
}

fn has_pg_stat_statements(bin_dir: &Path) -> bool {
    std::process::Command::new(bin_dir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|share| share.join("extension/pg_stat_statements.control").is_file())
}

impl BenchCluster {
    /// Initialises and starts the cluster, creates [`DATABASE`] and the
    /// `pg_stat_statements` view. Blocking.
    pub fn start() -> anyhow::Result<BenchCluster> {
        let parent = std::env::temp_dir().join(format!("idgate-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent)?;
        // As root the server runs as `postgres`, which must reach the data directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))?;
        let data = parent.join("pg");
        let bin_dir = embedded::find_bin_dir()?;
        let user = embedded::server_user()?;
        embedded::prepare_dir(&data, user.as_ref())?;
        let stat_statements = has_pg_stat_statements(&bin_dir);
        let mut settings = vec![
            // Only reads are measured; durability settings do not enter them.
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "max_connections = 100".to_string(),
        ];
        if stat_statements {
            settings.push("shared_preload_libraries = 'pg_stat_statements'".into());
            settings.push("pg_stat_statements.max = 10000".into());
            settings.push("pg_stat_statements.track_planning = on".into());
        }
        // Initialised here with our settings; `start` then only runs `pg_ctl start`.
        embedded::initdb(&bin_dir, &data, user.as_ref(), &settings)?;
        let cluster = EmbeddedCluster::start(&data)?;
        let mut this = BenchCluster {
            cluster: Some(cluster),
            parent,
            stat_statements,
            version: String::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        this.version = rt.block_on(this.prepare())?;
        Ok(this)
    }

    async fn prepare(&self) -> anyhow::Result<String> {
        let mut admin = self.admin().await?;
        for db in [DATABASE, CODER_MAIN_DATABASE] {
            sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await?;
        }
        if self.stat_statements {
            sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&mut admin)
                .await?;
        }
        let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?;
        admin.close().await?;
        Ok(version)
    }

    fn cluster(&self) -> &EmbeddedCluster {
        self.cluster.as_ref().expect("running")
    }

    /// A connection to the `postgres` database (outside what is counted).
    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect_with(&self.cluster().connect_options("postgres"))
            .await
            .context("connecting to the bench cluster")
    }

    /// Opens [`DATABASE`] the way `idgate serve` does (migrations, the
    /// resolution statement prepared on every connection).
    pub async fn open(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        self.open_in(DATABASE, max_connections).await
    }

    /// [`BenchCluster::open`] for database `db`.
    pub async fn open_in(&self, db: &str, max_connections: u32) -> anyhow::Result<PgPool> {
        let settings = PoolSettings {
            max_connections,
            keep_warm: true,
            ..PoolSettings::default()
        };
        Ok(Db::open_with(self.cluster().connect_options(db), settings).await?.pool)
    }

    /// A pool of fresh connections built as `idgate serve` builds them
    /// (session plan setting, resolution statement prepared), without the
    /// migration check [`BenchCluster::open`] runs first.
    pub async fn fresh_pool(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        let settings = PoolSettings {
            max_connections,
            ..PoolSettings::default()
        };
        Ok(idgate::db::pool::connect(self.cluster().connect_options(DATABASE), settings).await?)
    }

    /// A URL for [`DATABASE`] (the socket directory as `host`), for a server
    /// in another process.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@localhost:{}/{DATABASE}?host={}",
            embedded::SUPERUSER,
            embedded::PORT,
            self.cluster().data_dir().display()
        )
    }

    /// The postmaster's process ID (its backends are its children).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.cluster().data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// A pool for the baseline: the same size and acquire timeout as
    /// idgate's, nothing prepared ahead, no ping before use.
    pub async fn baseline_pool(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        self.baseline_pool_in(DATABASE, max_connections).await
    }

    /// [`BenchCluster::baseline_pool`] for database `db`.
    pub async fn baseline_pool_in(&self, db: &str, max_connections: u32) -> anyhow::Result<PgPool> {
        let settings = PoolSettings::default();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(false)
            .connect_with(self.cluster().connect_options(db))
            .await?;
        // Open every connection now, as idgate's warm pool does, so neither
        // side opens connections during a measurement.
        idgate::db::pool::fill(&pool, max_connections).await?;
        Ok(pool)
    }

    /// Forgets every statement count.
    pub async fn reset_counts(&self) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(())
    }

    /// Statements database `db` executed since the last reset, by statement text.
    pub async fn counts_in(&self, db: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let mut admin = self.admin().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = $1 ORDER BY s.calls DESC, s.query",
        )
        .bind(db)
        .fetch_all(&mut admin)
        .await?;
        admin.close().await?;
        Ok(rows)
    }

    /// Planning and execution time [`DATABASE`] spent since the last reset.
    pub async fn server_time(&self) -> anyhow::Result<ServerTime> {
        self.server_time_in(DATABASE).await
    }

    /// [`BenchCluster::server_time`] of database `db`.
    pub async fn server_time_in(&self, db: &str) -> anyhow::Result<ServerTime> {
        let mut admin = self.admin().await?;
        let (plan, exec): (f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(s.total_plan_time), 0)::float8, coalesce(sum(s.total_exec_time), 0)::float8 \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind(db)
        .fetch_one(&mut admin)
        .await?;
        admin.close().await?;
        Ok(ServerTime {
            plan: Duration::from_secs_f64(plan / 1000.0),
            exec: Duration::from_secs_f64(exec / 1000.0),
        })
    }

    /// Total of [`BenchCluster::counts_in`] for [`DATABASE`].
    pub async fn total(&self) -> anyhow::Result<i64> {
        self.total_in(DATABASE).await
    }

    /// Total of [`BenchCluster::counts_in`].
    pub async fn total_in(&self, db: &str) -> anyhow::Result<i64> {
        Ok(self.counts_in(db).await?.iter().map(|(_, n)| n).sum())
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            if let Err(e) = cluster.stop() {
                eprintln!("stopping the bench PostgreSQL: {e:#}");
            }
        }
        // The server's files may take a moment to be released.
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(&self.parent);
    }
}
