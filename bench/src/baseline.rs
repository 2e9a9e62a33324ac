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

use idgate::db::resolve::{go_quote, select, Candidate, Resolution};
use sqlx::{PgPool, Row};
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
    let latest =
        sqlx::query("SELECT * FROM workspace_builds WHERE workspace_id = $1 ORDER BY build_number DESC LIMIT 1")
            .bind(workspace_id)
            .fetch_one(pool)
            .await?;
    let latest_id: Uuid = latest.try_get("id")?;
    if latest_id != build_id {
        return Ok(Answer::Status(
            400,
            format!(
                "Resource found for id {}, but isn't registered on the latest history.",
                go_quote(instance_id)
            ),
        ));
    }
    Ok(Answer::Token(chosen.agent.auth_token))
}

/// idgate's resolution as an [`Answer`], for comparing outcomes.
pub fn idgate_answer(resolution: Resolution) -> Answer {
    match resolution {
        Resolution::Token(token, _) => Answer::Token(token),
        Resolution::NotFound(m) | Resolution::NoSuchName(m) => Answer::Status(404, m),
        Resolution::Ambiguous(m) => Answer::Status(409, m),
    }
}
