//! The registration commands' SQL: adding agents, rebuilding and deleting
//! workspaces, listing agents. Each operation is one transaction, and writes
//! rows the way Coder's provisioner would (a build per rebuild, its
//! `workspace_build` job with `{"workspace_build_id": ...}` input, resources,
//! agents with fresh tokens; prior-build agents soft-deleted as Coder does
//! since coder/coder#25207).

use std::collections::HashMap;

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

/// Longest workspace, agent and resource name (Coder's `varchar(64)`).
pub const MAX_NAME_CHARS: usize = 64;

/// What `agents add` registers.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    /// Workspace name; the workspace is created if missing.
    pub workspace: &'a str,
    /// The instance ID the agent authenticates with.
    pub instance_id: &'a str,
    /// Agent name.
    pub name: &'a str,
    /// Makes it a sub-agent of this root agent of the same build.
    pub parent: Option<&'a str>,
}

/// An agent of a workspace's latest build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    /// Workspace name.
    pub workspace: String,
    /// Build number.
    pub build: i32,
    /// Agent ID.
    pub id: Uuid,
    /// Agent name.
    pub name: String,
    /// `auth_instance_id`.
    pub instance_id: Option<String>,
    /// The parent agent's name, for a sub-agent.
    pub sub_agent_of: Option<String>,
    /// The session token the agent receives.
    pub auth_token: Uuid,
}

/// The outcome of a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rebuilt {
    /// Workspace name.
    pub workspace: String,
    /// The new build's number.
    pub build: i32,
    /// The new build's ID.
    pub build_id: Uuid,
    /// Agents carried over (new rows and tokens).
    pub agents: usize,
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    ensure!(!name.is_empty(), "the {what} must not be empty");
    // Requests' agent_name is trimmed, so a name with outer spaces could never be chosen.
    ensure!(
        name.trim() == name,
        "the {what} {name:?} has leading or trailing whitespace"
    );
    ensure!(
        name.chars().count() <= MAX_NAME_CHARS,
        "the {what} {name:?} is longer than {MAX_NAME_CHARS} characters"
    );
    Ok(())
}

/// The latest build of a workspace: (build id, number, job id).
async fn latest_build(
    tx: &mut Transaction<'_, Postgres>,
    workspace_id: Uuid,
) -> sqlx::Result<Option<(Uuid, i32, Uuid)>> {
    sqlx::query_as(
        "SELECT id, build_number, job_id FROM workspace_builds WHERE workspace_id = $1 \
         ORDER BY build_number DESC LIMIT 1",
    )
    .bind(workspace_id)
    .fetch_optional(&mut **tx)
    .await
}

/// Inserts build `number` of a workspace and its `workspace_build` job;
/// returns (build id, job id).
async fn insert_build(
    tx: &mut Transaction<'_, Postgres>,
    workspace_id: Uuid,
    number: i32,
) -> sqlx::Result<(Uuid, Uuid)> {
    let (build_id, job_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO provisioner_jobs (id, type, input) \
         VALUES ($1, 'workspace_build', jsonb_build_object('workspace_build_id', $2::text))",
    )
    .bind(job_id)
    .bind(build_id.to_string())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO workspace_builds (id, workspace_id, build_number, transition, job_id) \
         VALUES ($1, $2, $3, 'start', $4)",
    )
    .bind(build_id)
    .bind(workspace_id)
    .bind(number)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok((build_id, job_id))
}

/// Locks a live workspace by name (case-insensitive, as Coder's unique index).
async fn lock_workspace(tx: &mut Transaction<'_, Postgres>, name: &str) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as("SELECT id, name FROM workspaces WHERE lower(name) = lower($1) AND deleted = false FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
}

/// Adds an agent to the workspace's latest build, on the resource that holds
/// the instance's other agents (or a new one), creating the workspace and its
/// first build when missing. Returns the new agent.
pub async fn add_agent(pool: &PgPool, new: &NewAgent<'_>) -> anyhow::Result<AgentRow> {
    check_name("workspace name", new.workspace)?;
    check_name("agent name", new.name)?;
    ensure!(!new.instance_id.is_empty(), "the instance ID must not be empty");
    let mut tx = pool.begin().await?;
    let (workspace_id, workspace) = match lock_workspace(&mut tx, new.workspace).await? {
        Some(w) => w,
        None => {
            let id = Uuid::new_v4();
            sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, $2)")
                .bind(id)
                .bind(new.workspace)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("creating workspace {:?}", new.workspace))?;
            (id, new.workspace.to_string())
        }
    };
    let (build_number, job_id) = match latest_build(&mut tx, workspace_id).await? {
        Some((_, number, job)) => (number, job),
        None => (1, insert_build(&mut tx, workspace_id, 1).await?.1),
    };

    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id \
         WHERE r.job_id = $1 AND a.name = $2 AND a.deleted = false)",
    )
    .bind(job_id)
    .bind(new.name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        bail!("workspace {workspace:?} already has an agent named {:?}", new.name);
    }

    let parent: Option<(Uuid, Uuid)> = match new.parent {
        None => None,
        Some(parent) => Some(
            sqlx::query_as(
                "SELECT a.id, a.resource_id FROM workspace_agents a \
                 JOIN workspace_resources r ON r.id = a.resource_id \
                 WHERE r.job_id = $1 AND a.name = $2 AND a.parent_id IS NULL AND a.deleted = false",
            )
            .bind(job_id)
            .bind(parent)
            .fetch_optional(&mut *tx)
            .await?
            .with_context(|| format!("workspace {workspace:?} has no root agent named {parent:?}"))?,
        ),
    };
    let resource_id = match parent {
        // A sub-agent runs inside its parent's machine.
        Some((_, resource)) => resource,
        None => {
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT a.resource_id FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id \
                 WHERE r.job_id = $1 AND a.auth_instance_id = $2 AND a.deleted = false LIMIT 1",
            )
            .bind(job_id)
            .bind(new.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
            match existing {
                Some(id) => id,
                None => {
                    let id = Uuid::new_v4();
                    let name: String = new.instance_id.chars().take(MAX_NAME_CHARS).collect();
                    sqlx::query(
                        "INSERT INTO workspace_resources (id, job_id, transition, type, name) \
                         VALUES ($1, $2, 'start', 'idgate_instance', $3)",
                    )
                    .bind(id)
                    .bind(job_id)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    id
                }
            }
        }
    };
    let (id, token) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, parent_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(new.name)
    .bind(resource_id)
    .bind(token)
    .bind(new.instance_id)
    .bind(parent.map(|(p, _)| p))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(AgentRow {
        workspace,
        build: build_number,
        id,
        name: new.name.to_string(),
        instance_id: Some(new.instance_id.to_string()),
        sub_agent_of: new.parent.map(str::to_string),
        auth_token: token,
    })
}

/// Makes a new latest build of the workspace carrying the same resources and
/// agents as the current one: new rows and tokens, same names, instance IDs and
/// parent links. The prior builds' agents are soft-deleted.
pub async fn rebuild_workspace(pool: &PgPool, name: &str) -> anyhow::Result<Rebuilt> {
    let mut tx = pool.begin().await?;
    let (workspace_id, workspace) = lock_workspace(&mut tx, name)
        .await?
        .with_context(|| format!("no workspace named {name:?}"))?;
    let (_, number, old_job) = latest_build(&mut tx, workspace_id)
        .await?
        .with_context(|| format!("workspace {workspace:?} has no build to rebuild"))?;
    let (build_id, job_id) = insert_build(&mut tx, workspace_id, number + 1).await?;

    let resources: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT id, type, name FROM workspace_resources WHERE job_id = $1 ORDER BY created_at, id")
            .bind(old_job)
            .fetch_all(&mut *tx)
            .await?;
    let mut resource_map = HashMap::new();
    for (old, kind, rname) in resources {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO workspace_resources (id, job_id, transition, type, name) VALUES ($1, $2, 'start', $3, $4)",
        )
        .bind(id)
        .bind(job_id)
        .bind(kind)
        .bind(rname)
        .execute(&mut *tx)
        .await?;
        resource_map.insert(old, id);
    }

    type OldAgent = (Uuid, String, Uuid, Option<String>, Option<Uuid>);
    let mut pending: Vec<OldAgent> = sqlx::query_as(
        "SELECT a.id, a.name, a.resource_id, a.auth_instance_id, a.parent_id FROM workspace_agents a \
         JOIN workspace_resources r ON r.id = a.resource_id \
         WHERE r.job_id = $1 AND a.deleted = false ORDER BY a.created_at, a.id",
    )
    .bind(old_job)
    .fetch_all(&mut *tx)
    .await?;
    let total = pending.len();
    let mut agent_map: HashMap<Uuid, Uuid> = HashMap::new();
    // Parents before their sub-agents, whatever the nesting depth.
    while !pending.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|a| a.4.is_none_or(|p| agent_map.contains_key(&p)));
        if ready.is_empty() {
            // Parents outside this build (or deleted): keep them as roots would
            // change who authenticates, so refuse.
            bail!(
                "workspace {workspace:?}: agents {:?} have parents outside the latest build",
                waiting.iter().map(|a| &a.1).collect::<Vec<_>>()
            );
        }
        for (old_id, agent_name, old_resource, instance_id, parent) in ready {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, parent_id) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(agent_name)
            .bind(resource_map[&old_resource])
            .bind(Uuid::new_v4())
            .bind(instance_id)
            .bind(parent.map(|p| agent_map[&p]))
            .execute(&mut *tx)
            .await?;
            agent_map.insert(old_id, id);
        }
        pending = waiting;
    }

    // Coder's SoftDeletePriorWorkspaceAgents.
    sqlx::query(
        "UPDATE workspace_agents SET deleted = true, updated_at = now() \
         WHERE deleted = false AND resource_id IN ( \
           SELECT r.id FROM workspace_resources r JOIN workspace_builds b ON b.job_id = r.job_id \
           WHERE b.workspace_id = $1 AND b.id <> $2)",
    )
    .bind(workspace_id)
    .bind(build_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE workspaces SET updated_at = now() WHERE id = $1")
        .bind(workspace_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Rebuilt {
        workspace,
        build: number + 1,
        build_id,
        agents: total,
    })
}

/// Marks the workspace deleted and soft-deletes its agents (Coder's
/// SoftDeleteWorkspaceAgentsByWorkspaceID).
pub async fn delete_workspace(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let (workspace_id, _) = lock_workspace(&mut tx, name)
        .await?
        .with_context(|| format!("no workspace named {name:?}"))?;
    sqlx::query("UPDATE workspaces SET deleted = true, updated_at = now() WHERE id = $1")
        .bind(workspace_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE workspace_agents SET deleted = true, updated_at = now() \
         WHERE deleted = false AND resource_id IN ( \
           SELECT r.id FROM workspace_resources r JOIN workspace_builds b ON b.job_id = r.job_id \
           WHERE b.workspace_id = $1)",
    )
    .bind(workspace_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The agents of every live workspace's latest build, by workspace, instance ID
/// and name.
pub async fn list_agents(pool: &PgPool) -> anyhow::Result<Vec<AgentRow>> {
    let rows = sqlx::query(
        "SELECT w.name, b.build_number, a.id, a.name, a.auth_instance_id, p.name, a.auth_token \
         FROM workspace_agents a \
         JOIN workspace_resources r ON r.id = a.resource_id \
         JOIN workspace_builds b ON b.job_id = r.job_id \
         JOIN workspaces w ON w.id = b.workspace_id \
         LEFT JOIN workspace_agents p ON p.id = a.parent_id \
         WHERE w.deleted = false AND a.deleted = false \
           AND b.build_number = (SELECT max(x.build_number) FROM workspace_builds x WHERE x.workspace_id = w.id) \
         ORDER BY w.name, a.auth_instance_id, a.name, a.id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AgentRow {
                workspace: r.try_get(0)?,
                build: r.try_get(1)?,
                id: r.try_get(2)?,
                name: r.try_get(3)?,
                instance_id: r.try_get(4)?,
                sub_agent_of: r.try_get(5)?,
                auth_token: r.try_get(6)?,
            })
        })
        .collect()
}
