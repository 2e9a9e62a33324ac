//! BASELINE, NOT IDGATE: Coder's stage-B resolution (`handleAuthInstanceID`
//! after coder/coder#24973, coder-reference §1), rewritten here only to be
//! measured against idgate. It runs the same statement sequence Coder's
//! handler runs against the same tables:
//!
//! 1. `GetWorkspaceAgentsByInstanceID` — agents by instance ID, not deleted,
//!    no parent, newest first;
//! 2. per candidate `GetWorkspaceResourceByID` then `GetProvisionerJobByID`,
//!    keeping `workspace_build` jobs;
//! 3. selection (name, 404, 409);
//! 4. the job input's `workspace_build_id` → `GetWorkspaceBuildByID`, then
//!    `GetLatestWorkspaceBuildByWorkspaceID`, compared (400 if not latest).
//!
//! Each statement takes a connection from the pool on its own, as Go's
//! `database/sql` does outside a transaction. Not reproduced: Coder's dbauthz
//! layer (which after #24973 adds no SQL for the system subject, but does RBAC
//! checks in Go) and the `workspace_build_with_user` view (here the plain
//! `workspace_builds` table, which is what that view reads first).
//!
//! Also Coder main's pattern ([`resolve_coder_main`]): after coder/coder#25031
//! one joined query, `GetWorkspaceBuildAgentsByInstanceID`, then
//! `GetLatestWorkspaceBuildByWorkspaceID`; measured on a database whose
//! prior-build agents are soft-deleted, as #25207 leaves it
//! ([`crate::fixtures::soft_delete_prior_agents`]).

use idgate::db::resolve::{go_quote, select, Candidate, Resolution};
use sqlx::postgres::PgRow;
use sqlx::{Column, PgPool, Row};
use uuid::Uuid;

/// What the baseline answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with this token.
    Token(Uuid),
    /// Another status, with Coder's message.
    Status(u16, String),
}

impl Answer {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Token(_) => 200,
            Answer::Status(s, _) => *s,
        }
    }
}

/// One surviving candidate, carrying its job as #24973 does.
struct Survivor {
    agent: Candidate,
    job_input: serde_json::Value,
}

/// Coder's stage-B resolution of `instance_id` (+ optional agent name).
pub async fn resolve(pool: &PgPool, instance_id: &str, agent_name: Option<&str>) -> Result<Answer, sqlx::Error> {
    let agents = sqlx::query(
        "SELECT * FROM workspace_agents WHERE auth_instance_id = $1::text AND deleted = FALSE \
         AND parent_id IS NULL ORDER BY created_at DESC",
    )
    .bind(instance_id)
    .fetch_all(pool)
    .await?;
    let mut survivors = Vec::new();
    for agent in &agents {
        let resource_id: Uuid = agent.try_get("resource_id")?;
        let resource = sqlx::query("SELECT * FROM workspace_resources WHERE id = $1")
            .bind(resource_id)
            .fetch_one(pool)
            .await?;
        let job_id: Uuid = resource.try_get("job_id")?;
        let job = sqlx::query("SELECT * FROM provisioner_jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(pool)
            .await?;
        // An enum column; its binary form is the label's text.
        let job_type: String = job.try_get_unchecked("type")?;
        if job_type != "workspace_build" {
            continue;
        }
        survivors.push(Survivor {
            agent: Candidate {
                name: agent.try_get("name")?,
                auth_token: agent.try_get("auth_token")?,
            },
            job_input: job.try_get("input")?,
        });
    }

    // Selection: Coder's rules, shared with idgate (same messages).
    let names: Vec<Candidate> = survivors.iter().map(|s| s.agent.clone()).collect();
    let chosen = match select(instance_id, agent_name, names) {
        Resolution::Token(token, _) => survivors
            .into_iter()
            .find(|s| s.agent.auth_token == token)
            .expect("the selected candidate is a survivor"),
        Resolution::NotFound(m) | Resolution::NoSuchName(m) => return Ok(Answer::Status(404, m)),
        Resolution::Ambiguous(m) => return Ok(Answer::Status(409, m)),
    };

    let Some(build_id) = chosen
        .job_input
        .get("workspace_build_id")
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(Answer::Status(500, "Internal error extracting job data.".into()));
    };
    let build = sqlx::query("SELECT * FROM workspace_builds WHERE id = $1")
        .bind(build_id)
        .fetch_one(pool)
        .await?;
    let workspace_id: Uuid = build.try_get("workspace_id")?;
    if let Some(refused) = unless_latest(pool, workspace_id, build_id, instance_id).await? {
        return Ok(refused);
    }
    Ok(Answer::Token(chosen.agent.auth_token))
}

/// Coder main's `GetWorkspaceBuildAgentsByInstanceID` (coder/coder#25031, as
/// coder-reference §5 reconstructs it): every column of the agent and of its
/// workspace (`sqlc.embed`), and the build's ID, for root, non-deleted agents
/// with the instance ID on a `workspace_build` job of a non-deleted workspace,
/// newest first. Not restricted to the latest build: that is the second
/// statement's check.
const CODER_MAIN_AGENTS: &str = "\
SELECT workspace_agents.*, workspace_builds.id AS workspace_build_id, workspaces.*
FROM workspace_agents
JOIN workspace_resources ON workspace_resources.id = workspace_agents.resource_id
JOIN workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
JOIN provisioner_jobs ON provisioner_jobs.id = workspace_builds.job_id
JOIN workspaces ON workspaces.id = workspace_builds.workspace_id
WHERE workspace_agents.auth_instance_id = $1::text
  AND workspace_agents.deleted = FALSE
  AND workspace_agents.parent_id IS NULL
  AND provisioner_jobs.type = 'workspace_build'
  AND workspaces.deleted = FALSE
ORDER BY workspace_agents.created_at DESC";

/// The value of the first column named `name` (the agent's, before the
/// embedded workspace's columns of the same names).
fn first<'r, T>(row: &'r PgRow, name: &str) -> Result<T, sqlx::Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let at = row
        .columns()
        .iter()
        .position(|c| c.name() == name)
        .ok_or_else(|| sqlx::Error::ColumnNotFound(name.to_string()))?;
    row.try_get(at)
}

/// Coder main's resolution of `instance_id` (+ optional agent name): the
/// joined query, selection (name, 404, 409), then
/// `GetLatestWorkspaceBuildByWorkspaceID` compared with the agent's build
/// (400 if it is not the latest). Two statements for an answer with a token,
/// one for a 404 or 409; each takes a pooled connection on its own.
pub async fn resolve_coder_main(
    pool: &PgPool,
    instance_id: &str,
    agent_name: Option<&str>,
) -> Result<Answer, sqlx::Error> {
    let rows = sqlx::query(CODER_MAIN_AGENTS).bind(instance_id).fetch_all(pool).await?;
    let mut candidates = Vec::with_capacity(rows.len());
    for row in &rows {
        candidates.push(Candidate {
            name: first(row, "name")?,
            auth_token: first(row, "auth_token")?,
        });
    }
    let row = match select(instance_id, agent_name, candidates) {
        Resolution::Token(token, _) => {
            let at = rows
                .iter()
                .position(|r| first::<Uuid>(r, "auth_token").is_ok_and(|t| t == token))
                .expect("the selected candidate is a row");
            &rows[at]
        }
        Resolution::NotFound(m) | Resolution::NoSuchName(m) => return Ok(Answer::Status(404, m)),
        Resolution::Ambiguous(m) => return Ok(Answer::Status(409, m)),
    };
    let build_id: Uuid = row.try_get("workspace_build_id")?;
    // The embedded workspace's `id` is the second column named `id`.
    let workspace_id: Uuid = {
        let at = row
            .columns()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name() == "id")
            .nth(1)
            .map(|(i, _)| i)
            .ok_or_else(|| sqlx::Error::ColumnNotFound("workspaces.id".into()))?;
        row.try_get(at)?
    };
    if let Some(refused) = unless_latest(pool, workspace_id, build_id, instance_id).await? {
        return Ok(refused);
    }
    Ok(Answer::Token(first(row, "auth_token")?))
}

/// Coder's last step, in both patterns: the workspace's latest build, one
/// statement; a 400 unless the agent's build is it.
async fn unless_latest(
    pool: &PgPool,
    workspace_id: Uuid,
    build_id: Uuid,
    instance_id: &str,
) -> sqlx::Result<Option<Answer>> {
    let latest =
        sqlx::query("SELECT * FROM workspace_builds WHERE workspace_id = $1 ORDER BY build_number DESC LIMIT 1")
            .bind(workspace_id)
            .fetch_one(pool)
            .await?;
    let latest_id: Uuid = latest.try_get("id")?;
    Ok((latest_id != build_id).then(|| {
        Answer::Status(
            400,
            format!(
                "Resource found for id {}, but isn't registered on the latest history.",
                go_quote(instance_id)
            ),
        )
    }))
}

/// idgate's resolution as an [`Answer`], for comparing outcomes.
pub fn idgate_answer(resolution: Resolution) -> Answer {
    match resolution {
        Resolution::Token(token, _) => Answer::Token(token),
        Resolution::NotFound(m) | Resolution::NoSuchName(m) => Answer::Status(404, m),
        Resolution::Ambiguous(m) => Answer::Status(409, m),
    }
}
