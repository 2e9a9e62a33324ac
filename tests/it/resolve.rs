//! Agent resolution against a real PostgreSQL: Coder's sub-tests
//! (coder-reference §6), the latest-build and job-type rules, scale, the exact
//! messages, and one round trip / one statement per resolution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idgate::db::embedded::EmbeddedCluster;
use idgate::db::registry::{self, NewAgent};
use idgate::db::resolve::{resolve, Resolution, RESOLVE_SQL};
use idgate_tests::pg::{self, fresh_database, fresh_db};
use sqlx::PgPool;
use uuid::Uuid;

/// A unique instance ID, `instance-<unixnano>` as in Coder's tests.
fn instance_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("instance-{nanos}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

async fn add(pool: &PgPool, workspace: &str, iid: &str, name: &str) -> Uuid {
    add_agent(pool, workspace, iid, name, None).await
}

async fn add_agent(pool: &PgPool, workspace: &str, iid: &str, name: &str, parent: Option<&str>) -> Uuid {
    registry::add_agent(
        pool,
        &NewAgent {
            workspace,
            instance_id: iid,
            name,
            parent,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("adding agent {name}: {e:#}"))
    .auth_token
}

async fn res(pool: &PgPool, iid: &str, name: Option<&str>) -> Resolution {
    resolve(pool, iid, name).await.expect("resolution query")
}

fn ambiguous(iid: &str, names: &str) -> Resolution {
    Resolution::Ambiguous(format!(
        "Multiple agents found with instance ID \"{iid}\". Set CODER_AGENT_NAME to one of: {names}"
    ))
}

fn not_found(iid: &str) -> Resolution {
    Resolution::NotFound(format!("Instance with id \"{iid}\" not found."))
}

/// The token of the latest build's agent `name` on workspace `ws`.
async fn current_token(pool: &PgPool, ws: &str, name: &str) -> Uuid {
    registry::list_agents(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.workspace.eq_ignore_ascii_case(ws) && a.name == name)
        .unwrap_or_else(|| panic!("no agent {name} on {ws}"))
        .auth_token
}

/// Un-deletes every agent: the state of a database before Coder's soft-delete
/// of prior-build agents (#25207), where only the latest-build predicate keeps
/// stale agents out.
async fn undelete_all_agents(pool: &PgPool) {
    sqlx::query("UPDATE workspace_agents SET deleted = false")
        .execute(pool)
        .await
        .unwrap();
}

async fn rows_with_instance_id(pool: &PgPool, iid: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM workspace_agents WHERE auth_instance_id = $1 AND deleted = false")
        .bind(iid)
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---- Coder's Ambiguous/* sub-tests -------------------------------------------

#[tokio::test]
async fn single_agent() {
    let pool = fresh_db().await;
    let iid = instance_id();
    let token = add(&pool, "ws", &iid, "dev").await;
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(token, "dev".into()));
}

/// `idgate serve`'s pool (`keep_warm`) has every connection open, with the
/// statement prepared, before it is handed out; a lazy pool opens them on
/// demand. Counted by PostgreSQL, not by the pool.
#[tokio::test]
async fn a_warm_pool_opens_every_connection_before_the_first_request() {
    let db = fresh_database().await;
    let iid = instance_id();
    let token = add(&db.pool, "ws", &iid, "dev").await;
    let options = idgate::db::embedded::connect_options(&pg::cluster().dir, &db.name);
    let backends = |app: &'static str| {
        let (pool, name) = (db.pool.clone(), db.name.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            )
            .bind(name)
            .bind(app)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    let settings = |keep_warm| idgate::db::PoolSettings {
        max_connections: 3,
        keep_warm,
        ..Default::default()
    };

    let lazy = idgate::db::pool::connect(options.clone().application_name("idgate-lazy"), settings(false))
        .await
        .unwrap();
    assert!(
        backends("idgate-lazy").await < 3,
        "a lazy pool opens connections on demand"
    );

    let warm = idgate::db::pool::connect(options.application_name("idgate-warm"), settings(true))
        .await
        .unwrap();
    assert_eq!(backends("idgate-warm").await, 3);
    assert_eq!(warm.size(), 3);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = warm.acquire().await.unwrap();
        let prepared = idgate::db::plan::plan_counts(&mut conn).await.unwrap();
        assert!(
            prepared.is_some(),
            "the resolution statement is prepared on every connection"
        );
        held.push(conn);
    }
    drop(held);
    lazy.close().await;
    assert_eq!(res(&warm, &iid, None).await, Resolution::Token(token, "dev".into()));
}

#[tokio::test]
async fn multiple_agents_no_selector() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "beta").await;
    add(&pool, "ws", &iid, "alpha").await;
    let r = res(&pool, &iid, None).await;
    let Resolution::Ambiguous(ref message) = r else {
        panic!("{r:?}")
    };
    assert!(message.contains("CODER_AGENT_NAME") && message.contains("alpha, beta"));
    assert_eq!(r, ambiguous(&iid, "alpha, beta"));
}

#[tokio::test]
async fn empty_agent_name_treated_as_unset() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "alpha").await;
    add(&pool, "ws", &iid, "beta").await;
    assert_eq!(res(&pool, &iid, Some("")).await, ambiguous(&iid, "alpha, beta"));
}

#[tokio::test]
async fn whitespace_agent_name_treated_as_unset() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "alpha").await;
    add(&pool, "ws", &iid, "beta").await;
    assert_eq!(res(&pool, &iid, Some("   ")).await, ambiguous(&iid, "alpha, beta"));
}

#[tokio::test]
async fn multiple_agents_with_selector() {
    let pool = fresh_db().await;
    let iid = instance_id();
    let alpha = add(&pool, "ws", &iid, "alpha").await;
    let beta = add(&pool, "ws", &iid, "beta").await;
    assert_eq!(
        res(&pool, &iid, Some("alpha")).await,
        Resolution::Token(alpha, "alpha".into())
    );
    assert_eq!(
        res(&pool, &iid, Some(" beta ")).await,
        Resolution::Token(beta, "beta".into())
    );
}

#[tokio::test]
async fn multiple_agents_unknown_selector() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "alpha").await;
    add(&pool, "ws", &iid, "beta").await;
    assert_eq!(
        res(&pool, &iid, Some("nonexistent")).await,
        Resolution::NoSuchName(format!(
            "No agent found with instance ID \"{iid}\" and name \"nonexistent\"."
        ))
    );
}

#[tokio::test]
async fn sub_agent_excluded() {
    let pool = fresh_db().await;
    let iid = instance_id();
    let dev = add(&pool, "ws", &iid, "dev").await;
    add_agent(&pool, "ws", &iid, "sub", Some("dev")).await;
    assert_eq!(rows_with_instance_id(&pool, &iid).await, 2);
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(dev, "dev".into()));
    // A sub-agent cannot be selected by name either.
    assert!(matches!(res(&pool, &iid, Some("sub")).await, Resolution::NoSuchName(_)));
}

#[tokio::test]
async fn prior_build_agents_excluded() {
    let pool = fresh_db().await;
    let iid = instance_id();
    let first = add(&pool, "ws", &iid, "dev").await;
    // Stop, then start: two more builds carrying the agent.
    registry::rebuild_workspace(&pool, "ws").await.unwrap();
    let rebuilt = registry::rebuild_workspace(&pool, "ws").await.unwrap();
    assert_eq!(rebuilt.build, 3);
    let latest = current_token(&pool, "ws", "dev").await;
    assert_ne!(latest, first);
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(latest, "dev".into()));

    // Even when the stale rows are not soft-deleted, only the latest build counts.
    undelete_all_agents(&pool).await;
    assert_eq!(rows_with_instance_id(&pool, &iid).await, 3);
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(latest, "dev".into()));
    assert_eq!(
        res(&pool, &iid, Some("dev")).await,
        Resolution::Token(latest, "dev".into())
    );
}

#[tokio::test]
async fn recycled_instance_id() {
    let pool = fresh_db().await;
    let (old_iid, new_iid) = (instance_id(), instance_id());
    add(&pool, "ws", &old_iid, "dev").await;
    // A successor template version: the new build's machine has a new instance ID.
    registry::rebuild_workspace(&pool, "ws").await.unwrap();
    sqlx::query(
        "UPDATE workspace_agents SET auth_instance_id = $1 WHERE id IN ( \
           SELECT a.id FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id \
           JOIN workspace_builds b ON b.job_id = r.job_id WHERE b.build_number = 2)",
    )
    .bind(&new_iid)
    .execute(&pool)
    .await
    .unwrap();
    let latest = current_token(&pool, "ws", "dev").await;
    assert_eq!(res(&pool, &old_iid, None).await, not_found(&old_iid));
    assert_eq!(
        res(&pool, &new_iid, None).await,
        Resolution::Token(latest, "dev".into())
    );
    // Pre-#25207 data (prior agent not soft-deleted): still 404, not Coder's old 400.
    undelete_all_agents(&pool).await;
    assert_eq!(res(&pool, &old_iid, None).await, not_found(&old_iid));
    assert_eq!(res(&pool, &old_iid, Some("dev")).await, not_found(&old_iid));
}

// ---- Beyond Coder's tests -----------------------------------------------------

#[tokio::test]
async fn instance_not_found() {
    let pool = fresh_db().await;
    assert_eq!(res(&pool, "i-nobody", None).await, not_found("i-nobody"));
    assert_eq!(res(&pool, "i-nobody", Some("dev")).await, not_found("i-nobody"));
}

/// Inserts a job of `job_type` with one resource holding an agent named `name`
/// for `iid`; if `build_of` names a workspace, the job becomes that workspace's
/// next (latest) build even though it is not a workspace_build job.
async fn agent_on_job(pool: &PgPool, job_type: &str, iid: &str, name: &str, build_of: Option<Uuid>) -> Uuid {
    let (job, resource, agent, token) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO provisioner_jobs (id, type, input) VALUES ($1, $2::text::provisioner_job_type, '{}')")
        .bind(job)
        .bind(job_type)
        .execute(pool)
        .await
        .unwrap();
    if let Some(ws) = build_of {
        sqlx::query(
            "INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id) \
             SELECT $1, $2, coalesce(max(build_number), 0) + 1, 'start', $3 FROM workspace_builds WHERE workspace_id = $2",
        )
        .bind(Uuid::new_v4())
        .bind(ws)
        .bind(job)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO workspace_resources (id, job_id, transition, type, name) VALUES ($1, $2, 'start', 'instance', 'r')")
        .bind(resource)
        .bind(job)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(agent)
    .bind(name)
    .bind(resource)
    .bind(token)
    .bind(iid)
    .execute(pool)
    .await
    .unwrap();
    token
}

#[tokio::test]
async fn template_import_and_dry_run_agents_are_ignored() {
    let pool = fresh_db().await;
    let iid = instance_id();
    // Template imports and dry runs have no build.
    agent_on_job(&pool, "template_version_import", &iid, "main", None).await;
    agent_on_job(&pool, "template_version_dry_run", &iid, "other", None).await;
    assert_eq!(res(&pool, &iid, None).await, not_found(&iid));
    let token = add(&pool, "ws", &iid, "main").await;
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(token, "main".into()));
    assert_eq!(
        res(&pool, &iid, Some("main")).await,
        Resolution::Token(token, "main".into())
    );
    assert!(matches!(
        res(&pool, &iid, Some("other")).await,
        Resolution::NoSuchName(_)
    ));

    // A build whose job is not a workspace_build job (Coder never makes one)
    // is still excluded by the job-type predicate.
    let odd: Uuid =
        sqlx::query_scalar("INSERT INTO workspaces (id, name) VALUES (gen_random_uuid(), 'odd') RETURNING id")
            .fetch_one(&pool)
            .await
            .unwrap();
    agent_on_job(&pool, "template_version_dry_run", &iid, "dry", Some(odd)).await;
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(token, "main".into()));
}

#[tokio::test]
async fn deleted_workspace_is_not_found() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "dev").await;
    add(&pool, "other", &iid, "dev2").await;
    registry::delete_workspace(&pool, "other").await.unwrap();
    assert!(matches!(res(&pool, &iid, None).await, Resolution::Token(_, ref n) if n == "dev"));
    registry::delete_workspace(&pool, "ws").await.unwrap();
    assert_eq!(res(&pool, &iid, None).await, not_found(&iid));
    // Deleted workspace whose agents were never soft-deleted: still 404.
    undelete_all_agents(&pool).await;
    assert_eq!(res(&pool, &iid, None).await, not_found(&iid));
    assert_eq!(res(&pool, &iid, Some("dev")).await, not_found(&iid));
}

#[tokio::test]
async fn duplicate_names_on_the_latest_build_are_ambiguous() {
    let pool = fresh_db().await;
    let iid = instance_id();
    add(&pool, "ws", &iid, "main").await;
    // The registry refuses a second "main" on the build...
    let err = registry::add_agent(
        &pool,
        &NewAgent {
            workspace: "ws",
            instance_id: &iid,
            name: "main",
            parent: None,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already has an agent named"), "{err:#}");
    // ...but another workspace on the same machine may have one.
    add(&pool, "ws2", &iid, "main").await;
    assert_eq!(res(&pool, &iid, None).await, ambiguous(&iid, "main, main"));
    // A name matching both picks the newest, as Coder's query order does.
    let newest = current_token(&pool, "ws2", "main").await;
    assert_eq!(
        res(&pool, &iid, Some("main")).await,
        Resolution::Token(newest, "main".into())
    );

    // Two rows with one name on the same build (raw SQL, as Coder's DB allows).
    let iid2 = instance_id();
    add(&pool, "ws3", &iid2, "dev").await;
    sqlx::query(
        "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id) \
         SELECT gen_random_uuid(), name, resource_id, gen_random_uuid(), auth_instance_id \
         FROM workspace_agents WHERE auth_instance_id = $1",
    )
    .bind(&iid2)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(res(&pool, &iid2, None).await, ambiguous(&iid2, "dev, dev"));
}

#[tokio::test]
async fn names_are_listed_in_byte_order_and_ids_are_go_quoted() {
    let pool = fresh_db().await;
    let iid = format!("{}\"q\\\t\u{7}é", instance_id());
    for name in ["beta", "Zed", "alpha", "_x", "Alpha", "ä"] {
        add(&pool, "ws", &iid, name).await;
    }
    let quoted = iid
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\t', "\\t")
        .replace('\u{7}', "\\a");
    assert_eq!(
        res(&pool, &iid, None).await,
        Resolution::Ambiguous(format!(
            "Multiple agents found with instance ID \"{quoted}\". Set CODER_AGENT_NAME to one of: Alpha, Zed, _x, alpha, beta, ä"
        ))
    );
    assert_eq!(
        res(&pool, &iid, Some("gamma")).await,
        Resolution::NoSuchName(format!(
            "No agent found with instance ID \"{quoted}\" and name \"gamma\"."
        ))
    );
    let other = "i-\"nope\"\n";
    assert_eq!(
        res(&pool, other, None).await,
        Resolution::NotFound("Instance with id \"i-\\\"nope\\\"\\n\" not found.".into())
    );
    // Selection is exact and case-sensitive.
    assert!(matches!(
        res(&pool, &iid, Some("ALPHA")).await,
        Resolution::NoSuchName(_)
    ));
    assert!(matches!(res(&pool, &iid, Some("Alpha")).await, Resolution::Token(_, ref n) if n == "Alpha"));
}

/// A workspace with `agents` agents on one instance and `prior_builds` earlier
/// builds carrying them (not soft-deleted, the worst case for the query).
async fn big_workspace(pool: &PgPool, agents: usize, prior_builds: usize) -> String {
    let iid = instance_id();
    for i in 0..agents {
        add(pool, "big", &iid, &format!("agent-{i:02}")).await;
    }
    for _ in 0..prior_builds {
        registry::rebuild_workspace(pool, "big").await.unwrap();
    }
    undelete_all_agents(pool).await;
    assert_eq!(
        rows_with_instance_id(pool, &iid).await as usize,
        agents * (prior_builds + 1)
    );
    iid
}

#[tokio::test]
async fn fifty_agents_and_a_hundred_earlier_builds() {
    let pool = fresh_db().await;
    let iid = big_workspace(&pool, 50, 100).await;
    let names: Vec<String> = (0..50).map(|i| format!("agent-{i:02}")).collect();
    assert_eq!(res(&pool, &iid, None).await, ambiguous(&iid, &names.join(", ")));
    let token = current_token(&pool, "big", "agent-37").await;
    assert_eq!(
        res(&pool, &iid, Some("agent-37")).await,
        Resolution::Token(token, "agent-37".into())
    );
    assert!(matches!(
        res(&pool, &iid, Some("agent-50")).await,
        Resolution::NoSuchName(_)
    ));
}

#[tokio::test]
async fn one_round_trip_and_one_statement_per_resolution() {
    for (agents, expect_token) in [(1, true), (2, false), (50, false)] {
        let db = fresh_database().await;
        let iid = big_workspace(&db.pool, agents, 100).await;
        let (pool, wire, _proxy) = pg::counting_pool(&db, 1).await;
        // Let the pool's start-up connection settle (its release check is a
        // bare Sync in a background task). No warm-up resolution: the first
        // one on a fresh connection must already be a single round trip.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Every connection opened so far ran the statement once, to plan it.
        let (calls_before, _) = resolution_statements(&db.name).await;

        for name in [None, Some("agent-00")] {
            let statements_before = pg::statements_executed(&db.name)
                .await
                .expect("pg_stat_statements is installed");
            let trips_before = wire.round_trips();
            let queries_before = wire.simple_queries.load(Ordering::SeqCst);
            let r = res(&pool, &iid, name).await;
            // Read before yielding: the release check has not run yet.
            let trips = wire.round_trips() - trips_before;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let trips_with_release = wire.round_trips() - trips_before;
            let statements = pg::statements_executed(&db.name).await.unwrap() - statements_before;
            println!(
                "{agents} agent(s), 100 earlier builds, name {name:?}: {trips} round trip(s) while resolving, \
                 {trips_with_release} including the pool's release check, {statements} statement(s)"
            );
            assert_eq!(trips, 1, "round trips for {agents} agents");
            assert_eq!(
                statements,
                1,
                "statements for {agents} agents: {:?}",
                pg::statement_stats(&db.name).await
            );
            assert!(trips_with_release <= 2);
            assert_eq!(
                wire.simple_queries.load(Ordering::SeqCst),
                queries_before,
                "no simple queries"
            );
            match (name, &r) {
                (Some(_), Resolution::Token(_, n)) => assert_eq!(n, "agent-00"),
                (None, Resolution::Token(..)) => assert!(expect_token),
                (None, Resolution::Ambiguous(_)) => assert!(!expect_token),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            resolution_statements(&db.name).await.0 - calls_before,
            2,
            "the two measured resolutions"
        );
        pool.close().await;
    }
}

/// Populates a database like a busy deployment and checks the resolution is
/// served by indexes; prints the plan (`-- --nocapture`).
#[tokio::test]
async fn resolution_plan_uses_indexes() {
    let pool = fresh_db().await;
    sqlx::raw_sql(
        "INSERT INTO workspaces (id, name) SELECT md5('w' || w)::uuid, 'ws-' || w FROM generate_series(1, 5000) w;
         INSERT INTO provisioner_jobs (id, type, input)
           SELECT md5('j' || w || '-' || b)::uuid, 'workspace_build',
                  jsonb_build_object('workspace_build_id', md5('b' || w || '-' || b)::uuid)
           FROM generate_series(1, 5000) w, generate_series(1, 4) b;
         INSERT INTO provisioner_jobs (id, type, input)
           SELECT md5('t' || t)::uuid, 'template_version_import', '{}' FROM generate_series(1, 500) t;
         INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id)
           SELECT md5('b' || w || '-' || b)::uuid, md5('w' || w)::uuid, b, 'start', md5('j' || w || '-' || b)::uuid
           FROM generate_series(1, 5000) w, generate_series(1, 4) b;
         INSERT INTO workspace_resources (id, job_id, transition, type, name)
           SELECT md5('r' || w || '-' || b)::uuid, md5('j' || w || '-' || b)::uuid, 'start', 'instance', 'i-' || w
           FROM generate_series(1, 5000) w, generate_series(1, 4) b;
         INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, deleted)
           SELECT md5('a' || w || '-' || b || '-' || a)::uuid, 'agent-' || a, md5('r' || w || '-' || b)::uuid,
                  gen_random_uuid(), 'i-' || w, b < 4
           FROM generate_series(1, 5000) w, generate_series(1, 4) b, generate_series(1, 2) a;
         ANALYZE;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {RESOLVE_SQL}"
    ))
    .bind("i-4242")
    .fetch_all(&pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    println!("EXPLAIN (40000 agents, 20000 builds, 5000 workspaces):\n{plan}");
    assert!(plan.contains("workspace_agents_auth_instance_id_deleted_idx"), "{plan}");
    assert!(
        plan.contains("workspace_builds_workspace_id_build_number_key"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(matches!(res(&pool, "i-4242", None).await, Resolution::Ambiguous(_)));
}

/// Plan once: on a pooled connection every resolution runs on the one cached
/// generic plan, whatever the data shape (one agent and no history; 50 agents
/// on each of 101 builds, none soft-deleted, skewing the statistics; a
/// 20,000-workspace fleet), and that plan does its work per distinct resource
/// and workspace, not per candidate row. Prints the plans (`-- --nocapture`).
#[tokio::test]
async fn one_cached_plan_for_every_data_shape() {
    let db = fresh_database().await;
    // 20,000 workspaces, each on its own instance with three builds.
    sqlx::raw_sql(
        "INSERT INTO workspaces (id, name) SELECT md5('w' || w)::uuid, 'fleet-' || w FROM generate_series(1, 20000) w;
         INSERT INTO provisioner_jobs (id, type, input)
           SELECT md5('j' || w || '-' || b)::uuid, 'workspace_build', '{}'
           FROM generate_series(1, 20000) w, generate_series(1, 3) b;
         INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id)
           SELECT md5('b' || w || '-' || b)::uuid, md5('w' || w)::uuid, b, 'start', md5('j' || w || '-' || b)::uuid
           FROM generate_series(1, 20000) w, generate_series(1, 3) b;
         INSERT INTO workspace_resources (id, job_id, transition, type, name)
           SELECT md5('r' || w || '-' || b)::uuid, md5('j' || w || '-' || b)::uuid, 'start', 'instance', 'vm'
           FROM generate_series(1, 20000) w, generate_series(1, 3) b;
         INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, deleted)
           SELECT md5('a' || w || '-' || b)::uuid, 'main', md5('r' || w || '-' || b)::uuid,
                  gen_random_uuid(), 'i-fleet-' || w, b < 3
           FROM generate_series(1, 20000) w, generate_series(1, 3) b;
         -- One instance with 50 agents on each of 101 builds, none soft-deleted.
         INSERT INTO workspaces (id, name) VALUES (md5('skew')::uuid, 'skew');
         INSERT INTO provisioner_jobs (id, type, input)
           SELECT md5('skew-j' || b)::uuid, 'workspace_build', '{}' FROM generate_series(1, 101) b;
         INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id)
           SELECT md5('skew-b' || b)::uuid, md5('skew')::uuid, b, 'start', md5('skew-j' || b)::uuid
           FROM generate_series(1, 101) b;
         INSERT INTO workspace_resources (id, job_id, transition, type, name)
           SELECT md5('skew-r' || b)::uuid, md5('skew-j' || b)::uuid, 'start', 'instance', 'vm'
           FROM generate_series(1, 101) b;
         INSERT INTO workspace_agents (id, created_at, name, resource_id, auth_token, auth_instance_id)
           SELECT md5('skew-a' || b || '-' || a)::uuid, now() + b * interval '1 s', 'agent-' || a,
                  md5('skew-r' || b)::uuid, gen_random_uuid(), 'i-skew'
           FROM generate_series(1, 101) b, generate_series(0, 49) a;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let solo_token = add(&db.pool, "solo", "i-solo", "main").await;
    sqlx::raw_sql("ANALYZE").execute(&db.pool).await.unwrap();
    let latest_37: Uuid =
        sqlx::query_scalar("SELECT auth_token FROM workspace_agents WHERE id = md5('skew-a101-37')::uuid")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let fleet_token: Uuid =
        sqlx::query_scalar("SELECT auth_token FROM workspace_agents WHERE id = md5('a777-3')::uuid")
            .fetch_one(&db.pool)
            .await
            .unwrap();

    let settings = idgate::db::PoolSettings {
        max_connections: 1,
        ..Default::default()
    };
    let options = idgate::db::embedded::connect_options(&pg::cluster().dir, &db.name);
    let pool = idgate::db::pool::connect(options.clone(), settings).await.unwrap();
    let rounds = 4;
    for _ in 0..rounds {
        assert_eq!(
            res(&pool, "i-solo", None).await,
            Resolution::Token(solo_token, "main".into())
        );
        assert_eq!(
            res(&pool, "i-skew", Some("agent-37")).await,
            Resolution::Token(latest_37, "agent-37".into())
        );
        assert!(matches!(res(&pool, "i-skew", None).await, Resolution::Ambiguous(_)));
        assert_eq!(
            res(&pool, "i-fleet-777", None).await,
            Resolution::Token(fleet_token, "main".into())
        );
        assert_eq!(res(&pool, "i-nobody", None).await, not_found("i-nobody"));
    }
    let mut conn = pool.acquire().await.unwrap();
    let counts = idgate::db::plan::plan_counts(&mut conn)
        .await
        .unwrap()
        .expect("prepared");
    println!("pooled connection: {counts:?}");
    assert_eq!(
        counts,
        idgate::db::plan::PlanCounts {
            // And the one the pool ran when the connection opened, to plan it.
            generic: 5 * rounds + 1,
            custom: 0
        }
    );

    for (iid, what) in [
        ("i-solo", "1 agent, no history"),
        ("i-skew", "50 agents × 101 builds"),
        ("i-fleet-777", "a fleet instance"),
    ] {
        let plan = idgate::db::plan::explain_cached(&mut conn, iid).await.unwrap();
        let text = plan.join("\n");
        println!("EXPLAIN EXECUTE ({what}):\n{text}\n");
        assert!(!text.contains("Seq Scan"), "{text}");
        // The latest build is looked up once per workspace, not per candidate.
        let probes = plan
            .iter()
            .find(|l| l.contains("workspace_builds latest"))
            .unwrap_or_else(|| panic!("no latest-build probe in\n{text}"));
        assert!(probes.contains("loops=1)"), "{probes}");
    }
    // Executing under EXPLAIN used the same cached plan.
    let after = idgate::db::plan::plan_counts(&mut conn).await.unwrap().unwrap();
    assert_eq!(after.custom, 0);
    drop(conn);
    pool.close().await;

    // For contrast, PostgreSQL's default on a plain connection: custom plans first.
    use sqlx::{Connection, Executor};
    let mut plain = sqlx::PgConnection::connect_with(&options).await.unwrap();
    plain.prepare(RESOLVE_SQL).await.unwrap();
    for _ in 0..rounds {
        for iid in ["i-solo", "i-skew", "i-fleet-777", "i-nobody"] {
            sqlx::query(RESOLVE_SQL).bind(iid).fetch_all(&mut plain).await.unwrap();
        }
    }
    let default = idgate::db::plan::plan_counts(&mut plain).await.unwrap().unwrap();
    println!("plain connection, plan_cache_mode = auto: {default:?}");
    assert!(default.custom >= 5, "{default:?}");
    plain.close().await.unwrap();
}

// ---- Registration commands -------------------------------------------------

#[tokio::test]
async fn rebuild_carries_agents_with_new_tokens_and_parent_links() {
    let pool = fresh_db().await;
    let (iid_a, iid_b) = (instance_id(), instance_id());
    let main = add(&pool, "Ws", &iid_a, "main").await;
    add_agent(&pool, "ws", &iid_a, "devcontainer", Some("main")).await;
    add(&pool, "WS", &iid_b, "gpu").await;
    let before = registry::list_agents(&pool).await.unwrap();
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|a| a.workspace == "Ws" && a.build == 1));
    // Agents of one instance share a resource; the other instance has its own.
    let resources: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace_resources")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(resources, 2);

    let rebuilt = registry::rebuild_workspace(&pool, "ws").await.unwrap();
    assert_eq!((rebuilt.build, rebuilt.agents), (2, 3));
    let input_text: String = sqlx::query_scalar(
        "SELECT j.input->>'workspace_build_id' FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id WHERE b.id = $1",
    )
    .bind(rebuilt.build_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(input_text, rebuilt.build_id.to_string());

    let after = registry::list_agents(&pool).await.unwrap();
    assert_eq!(after.len(), 3);
    for a in &after {
        let old = before.iter().find(|b| b.name == a.name).unwrap();
        assert_eq!(a.build, 2);
        assert_eq!(a.instance_id, old.instance_id);
        assert_eq!(a.sub_agent_of, old.sub_agent_of);
        assert_ne!(a.auth_token, old.auth_token);
        assert_ne!(a.id, old.id);
    }
    let sub = after.iter().find(|a| a.name == "devcontainer").unwrap();
    assert_eq!(sub.sub_agent_of.as_deref(), Some("main"));
    // The old token no longer resolves; the new one does.
    let new_main = current_token(&pool, "ws", "main").await;
    assert_ne!(new_main, main);
    assert_eq!(
        res(&pool, &iid_a, None).await,
        Resolution::Token(new_main, "main".into())
    );
    // Prior agents are soft-deleted, as Coder does.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace_agents WHERE deleted = false")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 3);

    // Adding to a rebuilt workspace goes to the latest build.
    add(&pool, "ws", &iid_b, "second").await;
    assert!(registry::list_agents(&pool).await.unwrap().iter().all(|a| a.build == 2));
    assert_eq!(res(&pool, &iid_b, None).await, ambiguous(&iid_b, "gpu, second"));

    // Errors are clear.
    let e = registry::rebuild_workspace(&pool, "nope").await.unwrap_err();
    assert!(e.to_string().contains("no workspace named"), "{e:#}");
    let e = registry::delete_workspace(&pool, "nope").await.unwrap_err();
    assert!(e.to_string().contains("no workspace named"), "{e:#}");
    let e = registry::add_agent(
        &pool,
        &NewAgent {
            workspace: "ws",
            instance_id: &iid_a,
            name: "x",
            parent: Some("nobody"),
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no root agent named"), "{e:#}");
    for bad in ["", " padded", &"n".repeat(65)] {
        let e = registry::add_agent(
            &pool,
            &NewAgent {
                workspace: "ws",
                instance_id: &iid_a,
                name: bad,
                parent: None,
            },
        )
        .await;
        assert!(e.is_err(), "{bad:?} accepted");
    }
    // A deleted workspace's name can be reused for a new workspace.
    registry::delete_workspace(&pool, "ws").await.unwrap();
    assert!(registry::list_agents(&pool).await.unwrap().is_empty());
    let fresh = add(&pool, "ws", &iid_a, "main").await;
    assert_eq!(res(&pool, &iid_a, None).await, Resolution::Token(fresh, "main".into()));
}

/// The embedded cluster: initialised on first start, reused when already
/// running (and then left running), stopped by the process that started it.
#[tokio::test]
async fn embedded_cluster_lifecycle() {
    let parent = tempfile::Builder::new().prefix("idgate-embedded-").tempdir().unwrap();
    if idgate::db::embedded::is_root() {
        // The server user must be able to enter the directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = parent.path().join("postgres");
    let d = dir.clone();
    let first = tokio::task::spawn_blocking(move || EmbeddedCluster::start(&d))
        .await
        .unwrap()
        .unwrap();
    assert!(first.started_here());
    assert!(idgate::db::embedded::is_running(&dir));
    let mode = std::fs::metadata(&dir).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o700);
    // Socket only: no TCP listener configured.
    let conf = std::fs::read_to_string(dir.join("postgresql.conf")).unwrap();
    assert!(conf.contains("listen_addresses = ''"));

    let d = dir.clone();
    let second = tokio::task::spawn_blocking(move || EmbeddedCluster::start(&d))
        .await
        .unwrap()
        .unwrap();
    assert!(!second.started_here());
    let db = idgate::db::Db::open_with(second.connect_options("postgres"), Default::default())
        .await
        .unwrap();
    assert!(db.is_managed());
    assert_eq!(res(&db.pool, "i-x", None).await, not_found("i-x"));
    db.close().await;
    tokio::task::spawn_blocking(move || second.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(
        idgate::db::embedded::is_running(&dir),
        "a cluster started elsewhere is left running"
    );
    tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(!idgate::db::embedded::is_running(&dir));
}

/// A Coder database (Coder's tables and Coder's golang-migrate history, no
/// idgate migration history) is used as it is: not migrated, and the
/// registration commands refuse to write to it. (`db_kind.rs` has the rest.)
#[tokio::test]
async fn coder_database_is_read_not_migrated() {
    let db = fresh_database().await;
    sqlx::raw_sql(
        "DROP TABLE _sqlx_migrations; \
         CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); \
         INSERT INTO schema_migrations VALUES (300, false)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let iid = instance_id();
    agent_on_job_build(&db.pool, &iid).await;
    let opened = idgate::db::Db::open(Some(&db.url), Default::default()).await.unwrap();
    assert!(!opened.is_managed());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&opened.pool)
        .await
        .unwrap();
    assert!(!exists, "a Coder database must not be migrated");
    assert!(matches!(res(&opened.pool, &iid, None).await, Resolution::Token(_, ref n) if n == "coder"));
    assert!(opened.require_managed("agents add").is_err());
    opened.close().await;
}

async fn agent_on_job_build(pool: &PgPool, iid: &str) {
    let ws: Uuid = sqlx::query_scalar("INSERT INTO workspaces (id, name) VALUES (gen_random_uuid(), 'c') RETURNING id")
        .fetch_one(pool)
        .await
        .unwrap();
    agent_on_job(pool, "workspace_build", iid, "coder", Some(ws)).await;
}

/// `Db::open(None)` runs the embedded cluster in `$IDGATE_DATA_DIR/postgres`,
/// stops it on close, and the data persists between runs. Each run is a child
/// process (this test re-executed) so the environment variable stays private.
#[tokio::test]
async fn db_open_without_url_runs_the_embedded_cluster() {
    const PHASE: &str = "IDGATE_TEST_EMBEDDED_PHASE";
    if let Ok(phase) = std::env::var(PHASE) {
        let db = idgate::db::Db::open(None, Default::default()).await.unwrap();
        assert!(db.embedded().expect("embedded cluster").started_here());
        if phase == "add" {
            add(&db.pool, "ws", "i-persisted", "dev").await;
        } else {
            assert!(matches!(res(&db.pool, "i-persisted", None).await, Resolution::Token(_, ref n) if n == "dev"));
        }
        db.close().await;
        return;
    }
    let parent = tempfile::Builder::new().prefix("idgate-datadir-").tempdir().unwrap();
    if idgate::db::embedded::is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for phase in ["add", "check"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "resolve::db_open_without_url_runs_the_embedded_cluster",
                "--exact",
                "--test-threads=1",
            ])
            .env("IDGATE_DATA_DIR", parent.path())
            .env(PHASE, phase)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "phase {phase}:\n{text}"
        );
        let dir = parent.path().join("postgres");
        assert!(idgate::db::embedded::is_initialised(&dir));
        assert!(!idgate::db::embedded::is_running(&dir), "stopped on close");
    }
}

// ---- Shared statements under load (idgate::db::batch) ----------------------

/// Resolves every request at once, each in its own task; answers in order.
async fn resolve_all(pool: &PgPool, requests: &[(String, Option<String>)]) -> Vec<Resolution> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (iid, name)) in requests.iter().cloned().enumerate() {
        let pool = pool.clone();
        tasks.spawn(async move { (i, resolve(&pool, &iid, name.as_deref()).await.expect("resolution")) });
    }
    let mut answers = vec![None; requests.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.expect("resolution task");
        answers[i] = Some(answer);
    }
    answers.into_iter().map(|a| a.expect("answered")).collect()
}

/// Executions of the resolution statements in database `name` so far: the
/// single-ID one and the shared one (`pg_stat_statements`).
async fn resolution_statements(name: &str) -> (i64, i64) {
    let stats = pg::statement_stats(name)
        .await
        .expect("pg_stat_statements is installed");
    let calls = |needle: &str| -> i64 { stats.iter().filter(|(q, _)| q.contains(needle)).map(|(_, n)| n).sum() };
    (
        calls("workspace_agents.auth_instance_id = $1::text"),
        calls("workspace_agents.auth_instance_id = ANY($1::text[])"),
    )
}

/// A pool like the server's with `max_connections` connections.
async fn pool_of(db: &pg::TestDb, max_connections: u32) -> PgPool {
    let settings = idgate::db::PoolSettings {
        max_connections,
        acquire_timeout: Duration::from_secs(10),
        keep_warm: false,
        ..idgate::db::PoolSettings::default()
    };
    idgate::db::pool::connect(
        idgate::db::embedded::connect_options(&pg::cluster().dir, &db.name),
        settings,
    )
    .await
    .unwrap()
}

/// Hundreds of resolutions at once over two connections: single agents, by
/// name, wrong names (404), several agents (409), unknown and deleted
/// instances (404), rebuilt workspaces whose prior-build agents are not
/// soft-deleted, sub-agents, and the same instance asked many times — mixed
/// in the same statements. Each answer is the one a lone resolution gives,
/// and the database ran far fewer statements than there were requests.
#[tokio::test]
async fn concurrent_resolutions_share_statements_and_answer_as_alone() {
    let db = fresh_database().await;
    let mut asked: Vec<(String, Option<String>)> = Vec::new();
    for i in 0..30 {
        let iid = instance_id();
        add(&db.pool, &format!("solo-{i}"), &iid, "main").await;
        for name in [None, Some("main"), Some("nope")] {
            asked.push((iid.clone(), name.map(String::from)));
        }
    }
    for i in 0..8 {
        let iid = instance_id();
        for name in ["gamma", "alpha", "beta"] {
            add(&db.pool, &format!("multi-{i}"), &iid, name).await;
        }
        for name in [None, Some("beta"), Some(" alpha "), Some("delta")] {
            asked.push((iid.clone(), name.map(String::from)));
        }
    }
    for i in 0..4 {
        let iid = instance_id();
        add(&db.pool, &format!("rebuilt-{i}"), &iid, "dev").await;
        add_agent(&db.pool, &format!("rebuilt-{i}"), &iid, "child", Some("dev")).await;
        for _ in 0..3 {
            registry::rebuild_workspace(&db.pool, &format!("rebuilt-{i}"))
                .await
                .unwrap();
        }
        asked.push((iid.clone(), None));
        asked.push((iid, Some("child".into())));
    }
    for i in 0..3 {
        let iid = instance_id();
        add(&db.pool, &format!("gone-{i}"), &iid, "main").await;
        registry::delete_workspace(&db.pool, &format!("gone-{i}"))
            .await
            .unwrap();
        asked.push((iid, None));
    }
    for _ in 0..10 {
        asked.push((instance_id(), None));
    }
    // Prior builds' agents back to not deleted: only the latest-build rule
    // keeps them out, in the shared statement as in the single one.
    undelete_all_agents(&db.pool).await;

    let mut expected = Vec::new();
    for (iid, name) in &asked {
        expected.push(
            idgate::db::resolve::resolve_alone(&db.pool, iid, name.as_deref())
                .await
                .unwrap(),
        );
    }
    assert!(expected.iter().any(|r| matches!(r, Resolution::Token(..))));
    assert!(expected.iter().any(|r| matches!(r, Resolution::Ambiguous(..))));
    assert!(expected.iter().any(|r| matches!(r, Resolution::NoSuchName(..))));
    assert!(expected.iter().any(|r| matches!(r, Resolution::NotFound(..))));

    // Every request three times, interleaved (a fixed permutation).
    let n = asked.len();
    let order: Vec<usize> = (0..3 * n).map(|k| (k * 7919) % (3 * n) % n).collect();
    let requests: Vec<(String, Option<String>)> = order.iter().map(|&i| asked[i].clone()).collect();
    let pool = pool_of(&db, 2).await;
    let (single_before, shared_before) = resolution_statements(&db.name).await;
    let answers = resolve_all(&pool, &requests).await;
    let (single_after, shared_after) = resolution_statements(&db.name).await;
    for (k, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &expected[order[k]], "request {k}: {:?}", requests[k]);
    }
    let (single, shared) = (single_after - single_before, shared_after - shared_before);
    println!(
        "{} concurrent resolutions over 2 connections: {single} single-ID and {shared} shared statement(s)",
        requests.len()
    );
    assert!(shared >= 1, "the shared statement ran");
    assert!(
        single + shared < requests.len() as i64 / 4,
        "{} statements for {} requests",
        single + shared,
        requests.len()
    );

    // The shared statement ran on its one cached generic plan.
    let mut conn = pool.acquire().await.unwrap();
    let counts = idgate::db::plan::plan_counts_of(&mut conn, idgate::db::resolve::BATCH_SQL)
        .await
        .unwrap()
        .expect("prepared with the connection");
    assert_eq!(counts.custom, 0, "{counts:?}");
    drop(conn);
    pool.close().await;
}

/// However large the pool, at most `MAX_STATEMENTS_IN_FLIGHT` drainers take
/// connections: a burst of concurrent resolutions on a fresh pool of 10 (which
/// opens one connection to check the database, then others only when asked)
/// leaves at most that many open, and every answer is still the lone one.
#[tokio::test]
async fn a_large_pool_caps_the_statements_in_flight() {
    use idgate::db::batch::MAX_STATEMENTS_IN_FLIGHT;
    let db = fresh_database().await;
    let mut asked = Vec::new();
    for i in 0..40 {
        let iid = instance_id();
        add(&db.pool, &format!("burst-{i}"), &iid, "main").await;
        asked.push((iid, None));
    }
    asked.push((instance_id(), None));
    let pool = pool_of(&db, 10).await;
    assert!(pool.size() <= 1, "the pool opens connections only when asked");
    let requests: Vec<(String, Option<String>)> = (0..400).map(|k| asked[k * 13 % asked.len()].clone()).collect();
    let answers = resolve_all(&pool, &requests).await;
    for (request, answer) in requests.iter().zip(&answers) {
        let alone = idgate::db::resolve::resolve_alone(&db.pool, &request.0, None)
            .await
            .unwrap();
        assert_eq!(answer, &alone, "{request:?}");
    }
    assert!(answers.iter().any(|a| matches!(a, Resolution::Token(..))));
    assert!(answers.iter().any(|a| matches!(a, Resolution::NotFound(..))));
    println!("{} connections open after the burst", pool.size());
    assert!(
        pool.size() <= MAX_STATEMENTS_IN_FLIGHT,
        "{} connections opened for {} concurrent resolutions",
        pool.size(),
        requests.len()
    );
    pool.close().await;
}

/// Waves of concurrent resolutions with a rebuild of every workspace between
/// them: every request of a wave gets the tokens of the latest rebuild, never
/// one of an earlier wave.
#[tokio::test]
async fn a_rebuild_between_batches_is_seen_by_every_later_request() {
    let db = fresh_database().await;
    let mut workspaces = Vec::new();
    for i in 0..24 {
        let iid = instance_id();
        let ws = format!("ws-{i}");
        add(&db.pool, &ws, &iid, "main").await;
        if i % 4 == 0 {
            add(&db.pool, &ws, &iid, "side").await;
        }
        workspaces.push((ws, iid));
    }
    let pool = pool_of(&db, 2).await;
    let mut seen = std::collections::HashSet::new();
    for wave in 0..4 {
        if wave > 0 {
            for (ws, _) in &workspaces {
                registry::rebuild_workspace(&db.pool, ws).await.unwrap();
            }
        }
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for (ws, iid) in &workspaces {
            let token = current_token(&db.pool, ws, "main").await;
            for _ in 0..4 {
                requests.push((iid.clone(), Some("main".to_string())));
                expected.push(Resolution::Token(token, "main".into()));
            }
        }
        let answers = resolve_all(&pool, &requests).await;
        assert_eq!(answers, expected, "wave {wave}");
        for answer in answers {
            let Resolution::Token(token, _) = answer else {
                unreachable!()
            };
            // Rebuilds give new tokens: a token of an earlier wave would repeat.
            seen.insert((wave, token));
        }
    }
    let tokens: std::collections::HashSet<_> = seen.iter().map(|(_, t)| *t).collect();
    assert_eq!(tokens.len(), 4 * workspaces.len(), "each wave its own tokens");
    pool.close().await;
}

/// Starts a resolution of `iid` on `pool` and holds its statement at the
/// server on an exclusive lock of `workspace_agents`, taken by the returned
/// connection inside a transaction: requests arriving meanwhile queue behind it.
async fn hold_a_statement(
    db: &pg::TestDb,
    pool: &PgPool,
    iid: &str,
) -> (sqlx::PgConnection, tokio::task::JoinHandle<Resolution>) {
    use sqlx::{Connection, Executor};
    let options = idgate::db::embedded::connect_options(&pg::cluster().dir, &db.name);
    let mut locker = sqlx::PgConnection::connect_with(&options).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE workspace_agents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_flight = {
        let (pool, iid) = (pool.clone(), iid.to_string());
        tokio::spawn(async move { resolve(&pool, &iid, None).await.unwrap() })
    };
    // Wait (bounded) until that statement is at the server, blocked.
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
             AND query LIKE '%auth_instance_id = $1::text%'",
        )
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting == 1 {
            return (locker, in_flight);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the first resolution never reached the lock");
}

/// Every pooled connection cut at once (a proxy marking its server down, a
/// promotion, a restart): the pool's idle connections look alive until used.
/// A resolution still gets its answer: after the first dead connection the
/// drainer pings each one it takes, so the retries do not all land on the
/// other cut ones (before, four dead idle connections exhausted the three
/// attempts and the request failed).
#[tokio::test]
async fn a_pool_whose_connections_were_all_cut_still_answers() {
    use sqlx::Connection;
    let db = fresh_database().await;
    let iid = instance_id();
    let token = add(&db.pool, "w", &iid, "main").await;
    let pool = pool_of(&db, 5).await;
    // Four idle connections, each opened and prepared.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    // Back in the pool (sqlx returns them from a background task).
    for _ in 0..500 {
        if pool.num_idle() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.num_idle(), 4);
    let options = idgate::db::embedded::connect_options(&pg::cluster().dir, &db.name);
    let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(&db.name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(cut >= 4, "cut {cut}");
    assert_eq!(res(&pool, &iid, None).await, Resolution::Token(token, "main".into()));
    admin.close().await.unwrap();
    pool.close().await;
}

/// A shared statement that PostgreSQL refuses for one waiter's instance ID (a
/// NUL byte is not valid text) fails only that waiter: its neighbours in the
/// statement are resolved again alone and get their own answers.
#[tokio::test]
async fn a_bad_instance_id_fails_only_its_own_request_in_a_shared_statement() {
    use sqlx::{Connection, Executor};
    let db = fresh_database().await;
    let (first, good) = (instance_id(), instance_id());
    add(&db.pool, "first", &first, "main").await;
    let token = add(&db.pool, "good", &good, "main").await;
    let pool = pool_of(&db, 1).await;
    res(&pool, &first, None).await;
    // The four below queue while `first`'s statement is held, so they go in
    // one shared statement, which PostgreSQL refuses for the NUL (before
    // batches were split, every one of them got that error).
    let (mut locker, in_flight) = hold_a_statement(&db, &pool, &first).await;
    let bad = format!("{good}\0");
    let queued: Vec<_> = [bad, good.clone(), good.clone(), instance_id()]
        .into_iter()
        .map(|iid| {
            let pool = pool.clone();
            tokio::spawn(async move { resolve(&pool, &iid, None).await })
        })
        .collect();
    // Let them queue (this runtime has one thread: they run before it resumes).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    locker.execute("COMMIT").await.unwrap();
    in_flight.await.unwrap();
    let mut answers = Vec::new();
    for task in queued {
        answers.push(task.await.unwrap());
    }
    let error = answers[0].as_ref().unwrap_err().to_string();
    assert!(error.contains("0x00"), "the bad ID's own error: {error}");
    assert_eq!(answers[1].as_ref().unwrap(), &Resolution::Token(token, "main".into()));
    assert_eq!(answers[2].as_ref().unwrap(), &Resolution::Token(token, "main".into()));
    assert!(matches!(answers[3], Ok(Resolution::NotFound(_))), "{:?}", answers[3]);
    locker.close().await.unwrap();
    pool.close().await;
}

/// A request that arrives while a statement is in flight is not answered by
/// it: it waits for the next statement (taken together with the others that
/// arrived meanwhile), which starts after the in-flight one ends. The
/// in-flight statement is held on a table lock, so the order is certain.
#[tokio::test]
async fn a_request_arriving_during_a_statement_waits_for_the_next() {
    use sqlx::{Connection, Executor};
    let db = fresh_database().await;
    let (first, second) = (instance_id(), instance_id());
    let old = add(&db.pool, "first", &first, "main").await;
    add(&db.pool, "second", &second, "main").await;
    let pool = pool_of(&db, 1).await;
    // Open the one connection (and prepare its statements) before locking.
    assert_eq!(res(&pool, &first, None).await, Resolution::Token(old, "main".into()));
    let (single_before, shared_before) = resolution_statements(&db.name).await;

    let (mut locker, in_flight) = hold_a_statement(&db, &pool, &first).await;
    let later: Vec<_> = [first.clone(), second.clone(), first.clone(), instance_id()]
        .into_iter()
        .map(|iid| {
            let pool = pool.clone();
            tokio::spawn(async move { resolve(&pool, &iid, None).await.unwrap() })
        })
        .collect();
    // Let them queue (this runtime has one thread: they run before it resumes).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // A new token for `first`, committed before any later statement starts.
    let new: Uuid = sqlx::query_scalar(
        "UPDATE workspace_agents SET auth_token = gen_random_uuid() WHERE auth_instance_id = $1 RETURNING auth_token",
    )
    .bind(&first)
    .fetch_one(&mut locker)
    .await
    .unwrap();
    locker.execute("COMMIT").await.unwrap();

    let answer = in_flight.await.unwrap();
    assert!(
        answer == Resolution::Token(old, "main".into()) || answer == Resolution::Token(new, "main".into()),
        "{answer:?}"
    );
    let mut later_answers = Vec::new();
    for task in later {
        later_answers.push(task.await.unwrap());
    }
    assert_eq!(later_answers[0], Resolution::Token(new, "main".into()));
    assert_eq!(later_answers[2], Resolution::Token(new, "main".into()));
    assert!(matches!(later_answers[1], Resolution::Token(_, ref n) if n == "main"));
    assert!(matches!(later_answers[3], Resolution::NotFound(_)));
    let (single_after, shared_after) = resolution_statements(&db.name).await;
    assert_eq!(
        (single_after - single_before, shared_after - shared_before),
        (1, 1),
        "the first alone, then the four later ones in one shared statement"
    );
    locker.close().await.unwrap();
    pool.close().await;
}

/// The shared statement's cached generic plan does its work per distinct
/// workspace and uses indexes only, whatever the mix of IDs. Prints the plan
/// (`-- --nocapture`).
#[tokio::test]
async fn the_shared_statement_uses_one_cached_plan_and_indexes() {
    let db = fresh_database().await;
    sqlx::raw_sql(
        "INSERT INTO workspaces (id, name) SELECT md5('w' || w)::uuid, 'fleet-' || w FROM generate_series(1, 5000) w;
         INSERT INTO provisioner_jobs (id, type, input)
           SELECT md5('j' || w || '-' || b)::uuid, 'workspace_build', '{}'
           FROM generate_series(1, 5000) w, generate_series(1, 3) b;
         INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id)
           SELECT md5('b' || w || '-' || b)::uuid, md5('w' || w)::uuid, b, 'start', md5('j' || w || '-' || b)::uuid
           FROM generate_series(1, 5000) w, generate_series(1, 3) b;
         INSERT INTO workspace_resources (id, job_id, transition, type, name)
           SELECT md5('r' || w || '-' || b)::uuid, md5('j' || w || '-' || b)::uuid, 'start', 'instance', 'vm'
           FROM generate_series(1, 5000) w, generate_series(1, 3) b;
         INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, deleted)
           SELECT md5('a' || w || '-' || b)::uuid, 'main', md5('r' || w || '-' || b)::uuid,
                  gen_random_uuid(), 'i-fleet-' || w, b < 3
           FROM generate_series(1, 5000) w, generate_series(1, 3) b;
         ANALYZE;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pool = pool_of(&db, 1).await;
    let mut conn = pool.acquire().await.unwrap();
    let ids = ["i-fleet-7", "i-fleet-4242", "i-fleet-4999", "i-nobody"];
    for _ in 0..6 {
        let rows = idgate::db::resolve::fetch_many(&mut conn, &ids).await.unwrap();
        let tagged: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(tagged.len(), 3, "{tagged:?}");
        for id in &ids[..3] {
            assert!(tagged.contains(id), "{id} in {tagged:?}");
        }
    }
    let counts = idgate::db::plan::plan_counts_of(&mut conn, idgate::db::resolve::BATCH_SQL)
        .await
        .unwrap()
        .expect("prepared");
    // Six, and the one run when the connection opened, to plan it.
    assert_eq!(counts, idgate::db::plan::PlanCounts { generic: 7, custom: 0 });
    let plan = idgate::db::plan::explain_cached_batch(&mut conn, &ids).await.unwrap();
    let text = plan.join("\n");
    println!("EXPLAIN EXECUTE (shared statement, 4 IDs):\n{text}");
    assert!(!text.contains("Seq Scan"), "{text}");
    assert!(text.contains("workspace_agents_auth_instance_id_deleted_idx"), "{text}");
    // One latest-build probe per distinct workspace (three here).
    let probes = plan
        .iter()
        .find(|l| l.contains("workspace_builds latest"))
        .unwrap_or_else(|| panic!("no latest-build probe in\n{text}"));
    assert!(probes.contains("loops=3)"), "{probes}");
    let after = idgate::db::plan::plan_counts_of(&mut conn, idgate::db::resolve::BATCH_SQL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.custom, 0);
    drop(conn);
    pool.close().await;
}
