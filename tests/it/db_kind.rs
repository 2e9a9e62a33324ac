//! Which kind of database a URL is (`database_kind`, `idgate::db::kind`),
//! against a real PostgreSQL: Coder's database is recognised by Coder's own
//! migration history, a stray `_sqlx_migrations` table in it neither blocks
//! start-up nor gets written, an explicit kind wins over detection, and
//! idgate's own database is still migrated.

use idgate::db::registry::{self, NewAgent};
use idgate::db::resolve::{resolve, Resolution};
use idgate::db::{DatabaseKind, Db, PoolSettings};
use idgate_tests::pg::{self, fresh_database, TestDb};
use sqlx::{Connection, PgConnection, PgPool};

/// Coder's golang-migrate history: one row, `version`, `dirty`.
const CODER_HISTORY: &str =
    "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); \
                             INSERT INTO schema_migrations VALUES (368, false)";

/// What another sqlx-based tool leaves: its own history, one migration
/// idgate does not have (so migrating over it fails).
const STRAY_SQLX: &str = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                          VALUES (99990101000000, 'another tool', true, '\\x00', 1)";

fn settings(kind: DatabaseKind) -> PoolSettings {
    PoolSettings {
        max_connections: 2,
        kind,
        ..PoolSettings::default()
    }
}

async fn open(db: &TestDb, kind: DatabaseKind) -> Result<Db, String> {
    open_url(&db.url, kind).await
}

async fn open_url(url: &str, kind: DatabaseKind) -> Result<Db, String> {
    Db::open(Some(url), settings(kind)).await.map_err(|e| format!("{e:#}"))
}

/// A migrated database holding one agent on instance `i-coder`, as a Coder
/// database holds it.
async fn with_agent() -> TestDb {
    let db = fresh_database().await;
    registry::add_agent(
        &db.pool,
        &NewAgent {
            workspace: "w",
            instance_id: "i-coder",
            name: "main",
            parent: None,
        },
    )
    .await
    .unwrap();
    db
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `_sqlx_migrations`' rows, to see that nothing touched them.
async fn sqlx_history(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The agent resolves on the opened database's resolution pool.
async fn serves_the_agent(db: &Db) {
    match resolve(db.resolution_pool(), "i-coder", None).await.unwrap() {
        Resolution::Token(_, name) => assert_eq!(name, "main"),
        other => panic!("expected the agent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_coder_database_with_a_stray_sqlx_table_is_served_read_only() {
    let db = with_agent().await;
    exec(&db.pool, CODER_HISTORY).await;
    exec(&db.pool, STRAY_SQLX).await;
    let before = sqlx_history(&db.pool).await;

    // Taken for idgate's, the stray table would stop start-up: sqlx refuses a
    // history with a migration it does not know.
    let e = open(&db, DatabaseKind::Idgate).await.unwrap_err();
    assert!(e.contains("migrat"), "{e}");

    let opened = open(&db, DatabaseKind::Auto).await.unwrap();
    assert!(!opened.is_managed(), "recognised as Coder's by schema_migrations");
    serves_the_agent(&opened).await;
    let e = opened.require_managed("agents add").unwrap_err().to_string();
    assert!(e.contains("Coder database"), "{e}");
    // Its sessions are read-only: PostgreSQL itself refuses a write.
    let write = sqlx::query("UPDATE workspace_agents SET name = 'x'")
        .execute(&opened.pool)
        .await
        .unwrap_err();
    assert!(
        write.to_string().contains("read-only transaction"),
        "a write reached a Coder database: {write}"
    );
    opened.close().await;
    assert_eq!(sqlx_history(&db.pool).await, before, "the stray history was written");
}

#[tokio::test]
async fn the_binary_reads_a_coder_database_and_refuses_to_write_it() {
    let db = with_agent().await;
    exec(&db.pool, CODER_HISTORY).await;
    let idgate = |args: &[&str]| {
        std::process::Command::new(crate::http::idgate_binary())
            .args(["--database-url", &db.url])
            .args(args)
            .env_remove("IDGATE_CONFIG")
            .env_remove("IDGATE_DATABASE_KIND")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let listed = idgate(&["agents", "list", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("i-coder"));
    for args in [
        &[
            "agents",
            "add",
            "--workspace",
            "w",
            "--instance-id",
            "i-2",
            "--name",
            "b",
        ][..],
        &["migrate"][..],
        &["--database-kind", "coder", "workspaces", "delete", "w"][..],
    ] {
        let out = idgate(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("Coder database"), "{args:?}: {stderr}");
    }
    assert_eq!(
        registry::list_agents(&db.pool).await.unwrap().len(),
        1,
        "nothing was written"
    );
}

#[tokio::test]
async fn an_explicit_kind_overrides_detection() {
    // idgate's own by detection (it has idgate's history), Coder's by setting:
    // not migrated, not written. Its history is emptied so that a migration,
    // had one run, would fail (idgate's tables exist) and leave a trace.
    let db = with_agent().await;
    exec(&db.pool, "DELETE FROM _sqlx_migrations").await;
    assert!(open(&db, DatabaseKind::Auto).await.is_err(), "auto migrates, and fails");
    let opened = open(&db, DatabaseKind::Coder).await.unwrap();
    assert!(!opened.is_managed());
    serves_the_agent(&opened).await;
    opened.close().await;
    assert!(
        sqlx_history(&db.pool).await.is_empty(),
        "a Coder-kind database was migrated"
    );

    // Coder's by detection, idgate's by setting: migrated (here: already up to
    // date) and writable.
    let db = with_agent().await;
    exec(&db.pool, CODER_HISTORY).await;
    let opened = open(&db, DatabaseKind::Idgate).await.unwrap();
    assert!(opened.is_managed());
    opened.require_managed("agents add").unwrap();
    opened.close().await;

    // Coder's tables with neither history: no guess, until the kind is set.
    let db = with_agent().await;
    exec(&db.pool, "DROP TABLE _sqlx_migrations").await;
    let e = open(&db, DatabaseKind::Auto).await.unwrap_err();
    assert!(e.contains("cannot tell") && e.contains("database_kind"), "{e}");
    let opened = open(&db, DatabaseKind::Coder).await.unwrap();
    serves_the_agent(&opened).await;
    opened.close().await;

    // `coder` on a database without Coder's tables is a configuration error.
    let (_, url) = empty_database().await;
    let e = open_url(&url, DatabaseKind::Coder).await.unwrap_err();
    assert!(e.contains("no workspace_agents"), "{e}");
    // And without a URL there is no Coder database to read.
    let e = format!("{:#}", Db::open(None, settings(DatabaseKind::Coder)).await.unwrap_err());
    assert!(e.contains("needs the Coder database's URL"), "{e}");
}

#[tokio::test]
async fn idgate_databases_are_still_migrated() {
    for kind in [DatabaseKind::Auto, DatabaseKind::Idgate] {
        let (_, url) = empty_database().await;
        let db = open_url(&url, kind).await.unwrap();
        assert!(db.is_managed(), "{kind}");
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(applied as usize, idgate::db::MIGRATOR.iter().count(), "{kind}");
        db.require_managed("agents add").unwrap();
        registry::add_agent(
            &db.pool,
            &NewAgent {
                workspace: "w",
                instance_id: "i-new",
                name: "main",
                parent: None,
            },
        )
        .await
        .unwrap();
        db.close().await;
    }
}

/// A new, empty database of the test cluster: its name and URL.
async fn empty_database() -> (String, String) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("kind_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut admin = PgConnection::connect(&pg::cluster_url()).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = pg::db_url(&name);
    (name, url)
}
