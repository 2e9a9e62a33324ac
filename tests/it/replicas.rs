//! Scaling out: several `idgate serve` processes (the real binary) on one
//! database, and resolutions served by a read-only database
//! (`--database-read-url`) while registration and migrations stay on the
//! primary.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use idgate::db::embedded;
use idgate::db::registry::{self, NewAgent};
use idgate_tests::pg::{fresh_database, TestDb};
use idgate_tests::root;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::http::{add_agent_cli, idgate, post, serve_binary, serve_command, Served};

/// The instance ID of `examples/aws-request.json`.
const INSTANCE: &str = "i-076e9b91f7c420782";

fn aws_request() -> String {
    std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap()
}

/// SIGTERM, then a clean exit.
fn stop(served: Served) -> String {
    let Served { mut child, stderr, .. } = served;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let logs = stderr.join().unwrap();
    assert!(status.success(), "{status}\n{logs}");
    logs
}

async fn token_of(db: &TestDb, workspace: &str, name: &str) -> String {
    registry::list_agents(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.workspace == workspace && a.name == name)
        .unwrap_or_else(|| panic!("no agent {name} on {workspace}"))
        .auth_token
        .to_string()
}

/// Two replicas share one database: both answer, and a rebuild made through
/// the command line is seen by both at once (no state outside PostgreSQL).
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_one_database() {
    let db = fresh_database().await;
    let first = add_agent_cli(&db, "demo", INSTANCE, "main");
    let (a, b) = (serve_binary(&db), serve_binary(&db));
    assert_ne!(a.base, b.base);
    for served in [&a, &b] {
        let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
        assert_eq!((status, &body), (200, &json!({"session_token": first})));
    }

    let out = idgate(&db, &["workspaces", "rebuild", "demo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rebuilt = token_of(&db, "demo", "main").await;
    assert_ne!(rebuilt, first);
    // Through either replica, right away: the new build's token, never the old one.
    for served in [&b, &a] {
        let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
        assert_eq!((status, &body), (200, &json!({"session_token": rebuilt})));
    }

    // A second agent on the instance makes both answer 409 alike.
    add_agent_cli(&db, "demo", INSTANCE, "dev");
    for served in [&a, &b] {
        let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
        assert_eq!(status, 409, "{body}");
    }
    for served in [a, b] {
        let logs = stop(served);
        let audits = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "idgate::audit")
            .count();
        assert_eq!(audits, 3, "{logs}");
    }
}

/// With `--database-read-url`, resolutions read the other database and
/// everything else (migrations, registration) stays on `--database-url`.
/// Here the "replica" is a second database with different rows, so the
/// answer shows which one was read.
#[tokio::test(flavor = "multi_thread")]
async fn resolutions_read_the_read_url() {
    let primary = fresh_database().await;
    let replica = fresh_database().await;
    let on_primary = add_agent_cli(&primary, "demo", INSTANCE, "main");
    let on_replica = registry::add_agent(
        &replica.pool,
        &NewAgent {
            workspace: "demo",
            instance_id: INSTANCE,
            name: "main",
            parent: None,
        },
    )
    .await
    .unwrap()
    .auth_token
    .to_string();
    assert_ne!(on_primary, on_replica);

    let mut cmd = idgate(&primary, &[]);
    cmd.env("IDGATE_DATABASE_READ_URL", &replica.url);
    let served = serve_command(cmd);
    let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
    assert_eq!((status, &body), (200, &json!({"session_token": on_replica})));
    // The readiness probe checks the database resolutions use.
    let ready = reqwest::get(format!("{}/readyz", served.base)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // Registration with the same settings still writes to the primary only.
    let mut add = idgate(
        &primary,
        &[
            "agents",
            "add",
            "--workspace",
            "demo",
            "--instance-id",
            INSTANCE,
            "--name",
            "dev",
        ],
    );
    add.env("IDGATE_DATABASE_READ_URL", &replica.url);
    let out = add.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            let mut names: Vec<String> = registry::list_agents(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names(&primary).await, ["dev", "main"]);
    assert_eq!(names(&replica).await, ["main"]);
    // So the replica still sees one agent and answers 200, not the primary's 409.
    let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
    assert_eq!((status, &body), (200, &json!({"session_token": on_replica})));
    let logs = stop(served);
    assert!(logs.contains("\"read_replica\":true"), "{logs}");
}

/// A read URL that cannot serve resolutions (a database without the tables)
/// stops `idgate serve` at start-up with a clear error, before it listens.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_read_url_is_refused_at_start() {
    let primary = fresh_database().await;
    let empty = format!("idgate_empty_{}", std::process::id());
    let mut admin = PgConnection::connect(&idgate_tests::pg::cluster_url()).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {empty}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let out = idgate(&primary, &["serve", "--listen", "127.0.0.1:0"])
        .arg("--database-read-url")
        .arg(idgate_tests::pg::db_url(&empty))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("read-only database"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not have listened");
    // Nothing was created there: migrations run on the primary only.
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'")
        .fetch_one(&mut PgConnection::connect(&idgate_tests::pg::db_url(&empty)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(tables, 0);
}

/// A throw-away cluster run with `pg_ctl` (stopped on drop): a primary made
/// with `initdb`, or a streaming standby of one made with `pg_basebackup`.
struct Cluster {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Cluster {
    fn parent() -> tempfile::TempDir {
        let parent = tempfile::Builder::new().prefix("idgate-replica-").tempdir().unwrap();
        // As root the server runs as `postgres`, which must enter the directory.
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        parent
    }

    fn primary() -> Cluster {
        let parent = Self::parent();
        let dir = parent.path().join("primary");
        let (bin, user) = (embedded::find_bin_dir().unwrap(), embedded::server_user().unwrap());
        embedded::prepare_dir(&dir, user.as_ref()).unwrap();
        embedded::initdb(&bin, &dir, user.as_ref(), &["fsync = off".to_string()]).unwrap();
        let cluster = Cluster { dir, _parent: parent };
        cluster.start();
        cluster
    }

    /// A hot standby streaming from `primary` (`pg_basebackup -R`), listening
    /// on a socket in its own directory.
    fn standby_of(primary: &Cluster) -> Cluster {
        let parent = Self::parent();
        let dir = parent.path().join("standby");
        let (bin, user) = (embedded::find_bin_dir().unwrap(), embedded::server_user().unwrap());
        embedded::prepare_dir(&dir, user.as_ref()).unwrap();
        let out = embedded::server_command(&bin, "pg_basebackup", user.as_ref())
            .arg("--pgdata")
            .arg(&dir)
            .arg("--host")
            .arg(&primary.dir)
            .args(["--port", &embedded::PORT.to_string(), "--username", embedded::SUPERUSER])
            .args(["--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The primary keeps its socket in its data directory: its lock file came along.
        let _ = std::fs::remove_file(dir.join(format!(".s.PGSQL.{}.lock", embedded::PORT)));
        let cluster = Cluster { dir, _parent: parent };
        cluster.start();
        cluster
    }

    fn start(&self) {
        let (bin, user) = (embedded::find_bin_dir().unwrap(), embedded::server_user().unwrap());
        let out = embedded::server_command(&bin, "pg_ctl", user.as_ref())
            .args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            // The standby's copied configuration names the primary's socket directory.
            .arg(format!("-k {} -c listen_addresses=", self.dir.display()))
            .output()
            .unwrap();
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start {}: {log}", self.dir.display());
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@localhost:{}/{database}?host={}",
            embedded::SUPERUSER,
            embedded::PORT,
            self.dir.display()
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let (Ok(bin), Ok(user)) = (embedded::find_bin_dir(), embedded::server_user()) {
            let _ = embedded::server_command(&bin, "pg_ctl", user.as_ref())
                .args(["stop", "-w", "-s", "-m", "immediate", "-D"])
                .arg(&self.dir)
                .output();
        }
    }
}

/// The token `url` resolves for [`INSTANCE`] right now, read from that database.
async fn visible_token(url: &str) -> Option<String> {
    let mut conn = PgConnection::connect(url).await.ok()?;
    let rows = idgate::db::resolve::RESOLVE_SQL;
    let token: Option<uuid::Uuid> = sqlx::query_scalar(&format!("SELECT auth_token FROM ({rows}) AS r LIMIT 1"))
        .bind(INSTANCE)
        .fetch_optional(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    token.map(|t| t.to_string())
}

/// Replication is asynchronous: waits (bounded) until the standby has
/// replayed what the primary shows.
async fn replayed(standby_url: &str, want: &str) {
    for _ in 0..300 {
        if visible_token(standby_url).await.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the standby did not replay token {want} within 15 s");
}

/// A real streaming standby as the read URL: `idgate serve` prepares its
/// statement and sets its session setting there (a hot standby refuses
/// writes), answers from it, and follows a rebuild once the standby has
/// replayed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_standby_serves_resolutions() {
    let primary = tokio::task::spawn_blocking(Cluster::primary).await.unwrap();
    let primary_url = primary.url("postgres");
    let db = idgate::db::Db::open(Some(&primary_url), Default::default())
        .await
        .unwrap();
    let test_db = TestDb {
        name: "postgres".into(),
        url: primary_url.clone(),
        pool: db.pool.clone(),
    };
    let first = add_agent_cli(&test_db, "demo", INSTANCE, "main");
    let standby = tokio::task::spawn_blocking(move || {
        let standby = Cluster::standby_of(&primary);
        (primary, standby)
    })
    .await
    .unwrap();
    let (_primary, standby) = standby;
    let standby_url = standby.url("postgres");
    replayed(&standby_url, &first).await;
    let mut check = PgConnection::connect(&standby_url).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut check)
        .await
        .unwrap();
    assert!(in_recovery, "the read URL must be a standby");

    let mut cmd = idgate(&test_db, &[]);
    cmd.arg("--database-read-url").arg(&standby_url);
    let served = serve_command(cmd);
    let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
    assert_eq!((status, &body), (200, &json!({"session_token": first})));

    let out = idgate(&test_db, &["workspaces", "rebuild", "demo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rebuilt = token_of(&test_db, "demo", "main").await;
    replayed(&standby_url, &rebuilt).await;
    let (status, body, _) = post(&served.base, "aws-instance-identity", aws_request()).await;
    assert_eq!((status, &body), (200, &json!({"session_token": rebuilt})));
    // idgate's read pool holds its connection on the standby.
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut check)
    .await
    .unwrap();
    assert!(others >= 1, "idgate holds no connection on the standby");
    stop(served);
    let _ = check.close().await;
    db.close().await;
}
