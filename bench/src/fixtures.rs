//! Registers many instances at once with set-based SQL against idgate's schema
//! (`host/migrations`), shaped as Coder's provisioner leaves them: per
//! workspace a chain of builds, each with its `workspace_build` job (input
//! `{"workspace_build_id": ...}`), one resource and the instance's agents.
//!
//! Earlier builds' agents are left NOT soft-deleted, as in Coder's May 2026
//! incident (coder/coder#25155): they keep the instance ID and stay candidates
//! for a resolution that does not restrict itself to the latest build.

use sqlx::PgPool;

/// One group of instances with the same shape.
#[derive(Debug, Clone)]
pub struct Group {
    /// Unique tag; row IDs are derived from it.
    pub tag: String,
    /// The instance IDs, one workspace each.
    pub instances: Vec<String>,
    /// Agent names on each instance (one: `main`).
    pub agents: Vec<String>,
    /// Builds before the latest one.
    pub earlier_builds: u32,
}

impl Group {
    /// A group of `instances` with `agents` agents each (`main` alone, else
    /// `agent-0`, `agent-1`, ...).
    pub fn new(tag: &str, instances: Vec<String>, agents: usize, earlier_builds: u32) -> Group {
        let agents = if agents == 1 {
            vec!["main".to_string()]
        } else {
            (0..agents).map(|a| format!("agent-{a}")).collect()
        };
        Group {
            tag: tag.to_string(),
            instances,
            agents,
            earlier_builds,
        }
    }

    /// The agent name a request for the `i`-th instance sends: none when the
    /// instance has one agent, else one of its agents.
    pub fn agent_name(&self, i: usize) -> Option<&str> {
        (self.agents.len() > 1).then(|| self.agents[i % self.agents.len()].as_str())
    }
}

/// Inserts every row of `group` in one transaction.
pub async fn register(pool: &PgPool, group: &Group) -> anyhow::Result<()> {
    // Per-row IDs are md5(tag, kind, instance, build[, agent]) as UUIDs, so each
    // statement can find the rows the previous one made without a round trip.
    let builds = group.earlier_builds as i32 + 1;
    let statements = [
        "INSERT INTO workspaces (id, name) \
         SELECT md5($2 || 'w' || i)::uuid, $2 || '-' || i \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(iid, i)",
        "INSERT INTO provisioner_jobs (id, type, input) \
         SELECT md5($2 || 'j' || i || '.' || v)::uuid, 'workspace_build', \
                jsonb_build_object('workspace_build_id', md5($2 || 'b' || i || '.' || v)::uuid, 'dry_run', false) \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(iid, i), generate_series(1, $3) AS v",
        "INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id) \
         SELECT md5($2 || 'b' || i || '.' || v)::uuid, md5($2 || 'w' || i)::uuid, v, 'start', \
                md5($2 || 'j' || i || '.' || v)::uuid \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(iid, i), generate_series(1, $3) AS v",
        "INSERT INTO workspace_resources (id, job_id, transition, type, name) \
         SELECT md5($2 || 'r' || i || '.' || v)::uuid, md5($2 || 'j' || i || '.' || v)::uuid, 'start', \
                'idgate_instance', 'vm' \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(iid, i), generate_series(1, $3) AS v",
        // Later builds' agents are newer; within a build, agents a few ms apart.
        "INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token, auth_instance_id) \
         SELECT md5($2 || 'a' || i || '.' || v || '.' || a)::uuid, \
                timestamptz '2026-01-01 00:00:00Z' + v * interval '1 hour' + a * interval '1 ms', \
                timestamptz '2026-01-01 00:00:00Z' + v * interval '1 hour', \
                aname, md5($2 || 'r' || i || '.' || v)::uuid, gen_random_uuid(), iid \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(iid, i), generate_series(1, $3) AS v, \
              unnest($4::text[]) WITH ORDINALITY AS n(aname, a)",
    ];
    let mut tx = pool.begin().await?;
    for sql in statements {
        sqlx::query(sql)
            .bind(&group.instances)
            .bind(&group.tag)
            .bind(builds)
            .bind(&group.agents)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Refreshes the planner's statistics after bulk loading.
pub async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("ANALYZE").execute(pool).await?;
    Ok(())
}

/// Brings freshly registered rows to the state a running database keeps its
/// agents in: vacuumed (hint bits and visibility map set, as autovacuum
/// leaves them) and in shared buffers (as the agents' earlier
/// authentications left them). Without it the first run after registration
/// pays for first reads of bulk-inserted pages (clog lookups, hint-bit
/// writes, reads from the OS cache) that no later run pays, and the section's
/// comparison depends on which side goes first.
pub async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    // VACUUM refuses to run inside the implicit transaction of a multi-statement
    // query, so each is sent alone.
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(pool).await?;
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        .execute(pool)
        .await?;
    sqlx::raw_sql(
        "SELECT pg_prewarm(c.oid) FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')",
    )
    .execute(pool)
    .await?;
    // Write out what registration and VACUUM dirtied now, not as a checkpoint
    // in the middle of the first timed run.
    sqlx::raw_sql("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// Soft-deletes what Coder's migration 000498 (coder/coder#25207) does, and
/// what Coder main keeps soft-deleted since: the agents of deleted workspaces,
/// and every agent not on its workspace's latest build. Coder main's pattern
/// is measured on a database in this state.
pub async fn soft_delete_prior_agents(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "UPDATE workspace_agents SET deleted = TRUE
         WHERE deleted = FALSE AND resource_id IN (
           SELECT workspace_resources.id FROM workspace_resources
           JOIN workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
           JOIN workspaces ON workspaces.id = workspace_builds.workspace_id
           WHERE workspaces.deleted);
         UPDATE workspace_agents SET deleted = TRUE
         WHERE deleted = FALSE AND resource_id IN (
           SELECT workspace_resources.id FROM workspace_resources
           JOIN workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
           WHERE workspace_builds.id NOT IN (
             SELECT DISTINCT ON (workspace_id) id FROM workspace_builds
             ORDER BY workspace_id, build_number DESC));",
    )
    .execute(pool)
    .await?;
    Ok(())
}
