//! A real PostgreSQL cluster for the test binary, and a fresh database per test.
//!
//! The cluster is initialised in a temporary directory the first time a test
//! asks for a database, and listens only on a unix socket in that directory.
//! `postgres` is spawned directly (not via `pg_ctl`) from a thread that lives as
//! long as the process, with `PR_SET_PDEATHSIG = SIGINT` (set after the switch
//! to the unprivileged user, which would clear it): when the test process
//! exits, the server gets a fast shutdown. (A child spawned from a test thread
//! would get the signal as soon as that thread ended.)
//!
//! `pg_stat_statements` is preloaded when the server has it, so tests can count
//! the statements a database executed; [`counting_pool`] counts the protocol
//! round trips a pool makes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use idgate::db::embedded::{self, ServerUser};
use idgate::db::{pool, Db, PoolSettings};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// The shared cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Data and socket directory.
    pub dir: PathBuf,
    /// Whether `pg_stat_statements` is loaded (and created in `postgres`).
    pub stat_statements: bool,
}

const DIR_PREFIX: &str = "idgate-test-pg-";

/// The cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start().unwrap_or_else(|e| panic!("starting the test PostgreSQL cluster: {e}")))
}

fn has_pg_stat_statements(bin_dir: &Path) -> bool {
    let share = std::process::Command::new(bin_dir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    share.is_some_and(|s| s.join("extension/pg_stat_statements.control").is_file())
}

fn start() -> Result<Cluster> {
    let bin_dir = embedded::find_bin_dir()?;
    let user = embedded::server_user()?;
    let tmp = std::env::temp_dir();
    crate::child::remove_stale_dirs(&tmp, DIR_PREFIX);
    let dir = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    embedded::prepare_dir(&dir, user.as_ref())?;
    let stat_statements = has_pg_stat_statements(&bin_dir);
    let mut settings = vec![
        // Durability is pointless for a throw-away cluster.
        "fsync = off".to_string(),
        "synchronous_commit = off".to_string(),
        "full_page_writes = off".to_string(),
        "max_connections = 300".to_string(),
    ];
    if stat_statements {
        settings.push("shared_preload_libraries = 'pg_stat_statements'".to_string());
        settings.push("pg_stat_statements.track = all".to_string());
    }
    embedded::initdb(&bin_dir, &dir, user.as_ref(), &settings)?;
    spawn_server(&bin_dir, &dir, user)?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while !(embedded::is_ready(&dir) && embedded::socket_path(&dir).exists()) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("the test cluster in {} did not become ready:\n{log}", dir.display()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if stat_statements {
        // On a thread of its own: the caller may be inside a tokio runtime.
        let d = dir.clone();
        std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut c = PgConnection::connect_with(&embedded::connect_options(&d, "postgres")).await?;
                sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    .execute(&mut c)
                    .await?;
                c.close().await?;
                Ok::<(), BoxError>(())
            })
        })
        .join()
        .map_err(|_| "creating pg_stat_statements panicked")??;
    }
    Ok(Cluster { dir, stat_statements })
}

/// Spawns `postgres` from a thread that never ends, so the parent-death signal
/// fires only when the whole process goes.
fn spawn_server(bin_dir: &Path, dir: &Path, user: Option<ServerUser>) -> Result<()> {
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    if let Some(u) = &user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(u.uid), Some(u.gid))?;
    }
    let mut cmd = embedded::server_command(bin_dir, "postgres", user.as_ref());
    cmd.arg("-D")
        .arg(dir)
        .arg("-k")
        .arg(dir)
        .arg("-c")
        .arg("listen_addresses=")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::child::die_with_parent(&mut cmd, libc::SIGINT);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres".into())
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let status = child.wait();
                eprintln!("test PostgreSQL exited: {status:?}");
                // Keep the thread (the child's parent) alive regardless.
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
    rx.recv()?.map_err(|e| format!("spawning postgres: {e}").into())
}

/// A URL for the cluster's `postgres` database (socket path as the `host`).
pub fn cluster_url() -> String {
    db_url("postgres")
}

/// A URL for database `name` of the cluster.
pub fn db_url(name: &str) -> String {
    format!(
        "postgres://{}@localhost:{}/{name}?host={}",
        embedded::SUPERUSER,
        embedded::PORT,
        cluster().dir.display()
    )
}

/// A fresh, migrated database.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// URL for `--database-url`.
    pub url: String,
    /// A pool built like the server's (resolution statement prepared).
    pub pool: PgPool,
}

async fn admin() -> PgConnection {
    PgConnection::connect_with(&embedded::connect_options(&cluster().dir, "postgres"))
        .await
        .expect("connecting to the test cluster")
}

/// Creates database `test_<n>`, migrates it and opens a pool on it.
pub async fn fresh_database() -> TestDb {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut admin = admin().await;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let _ = admin.close().await;
    let settings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
        ..PoolSettings::default()
    };
    let db = Db::open_with(embedded::connect_options(&cluster().dir, &name), settings)
        .await
        .unwrap_or_else(|e| panic!("opening {name}: {e:#}"));
    TestDb {
        url: db_url(&name),
        name,
        pool: db.pool.clone(),
    }
}

/// A pool on a fresh, migrated database.
pub async fn fresh_db() -> PgPool {
    fresh_database().await.pool
}

/// Statements database `name` has executed so far (sum of
/// `pg_stat_statements.calls`), or `None` if the server lacks the extension.
pub async fn statements_executed(name: &str) -> Option<i64> {
    Some(statement_stats(name).await?.iter().map(|(_, n)| n).sum())
}

/// Per-statement execution counts of database `name`, from `pg_stat_statements`.
pub async fn statement_stats(name: &str) -> Option<Vec<(String, i64)>> {
    if !cluster().stat_statements {
        return None;
    }
    let mut admin = admin().await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = $1 ORDER BY s.query",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .expect("reading pg_stat_statements");
    let _ = admin.close().await;
    Some(rows)
}

/// Counts what clients send through a [`counting_pool`]'s proxy.
#[derive(Debug, Default)]
pub struct WireCounter {
    /// Extended-protocol `Sync` messages: each one ends an exchange the
    /// client waits for (one round trip).
    pub syncs: AtomicU64,
    /// Simple-protocol `Query` messages (also one round trip each).
    pub simple_queries: AtomicU64,
}

impl WireCounter {
    /// Round trips so far: `Sync` plus `Query` messages.
    pub fn round_trips(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst) + self.simple_queries.load(Ordering::SeqCst)
    }
}

/// A pool on database `db` (built like the server's, with `max_connections`
/// connections) whose traffic goes through a unix-socket proxy counting the
/// client's round trips. The proxy runs on the caller's runtime and counts a
/// message before forwarding it, so a count read right after an `.await` that
/// got its answer includes that exchange.
pub async fn counting_pool(db: &TestDb, max_connections: u32) -> (PgPool, Arc<WireCounter>, tempfile::TempDir) {
    let proxy_dir = tempfile::Builder::new()
        .prefix("idgate-pgproxy-")
        .tempdir()
        .expect("tempdir");
    let listener = tokio::net::UnixListener::bind(embedded::socket_path(proxy_dir.path())).expect("bind proxy socket");
    let counter = Arc::new(WireCounter::default());
    let upstream = embedded::socket_path(&cluster().dir);
    let c = counter.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::UnixStream::connect(&upstream).await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                });
                let _ = forward_counting(&mut client_r, &mut server_w, &c).await;
            });
        }
    });
    let settings = PoolSettings {
        max_connections,
        acquire_timeout: Duration::from_secs(10),
        ..PoolSettings::default()
    };
    let pool = pool::connect(embedded::connect_options(proxy_dir.path(), &db.name), settings)
        .await
        .expect("pool through the counting proxy");
    (pool, counter, proxy_dir)
}

/// Copies frontend messages to the server, counting `Sync` and `Query`.
async fn forward_counting(
    from: &mut tokio::net::unix::OwnedReadHalf,
    to: &mut tokio::net::unix::OwnedWriteHalf,
    counter: &WireCounter,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80877103;
    const GSSENC_REQUEST: u32 = 80877104;
    let mut pending: Vec<u8> = Vec::new();
    let mut started = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        loop {
            if !started {
                // Startup-phase messages have no type byte.
                if pending.len() < 8 {
                    break;
                }
                let len = u32::from_be_bytes(pending[0..4].try_into().unwrap()) as usize;
                if pending.len() < len {
                    break;
                }
                let code = u32::from_be_bytes(pending[4..8].try_into().unwrap());
                started = code != SSL_REQUEST && code != GSSENC_REQUEST;
                pending.drain(..len);
            } else {
                if pending.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes(pending[1..5].try_into().unwrap()) as usize;
                if pending.len() < 1 + len {
                    break;
                }
                match pending[0] {
                    b'S' => counter.syncs.fetch_add(1, Ordering::SeqCst),
                    b'Q' => counter.simple_queries.fetch_add(1, Ordering::SeqCst),
                    _ => 0,
                };
                pending.drain(..1 + len);
            }
        }
        to.write_all(&chunk[..n]).await?;
    }
}
