//! `idgate agents ...`, `idgate workspaces ...` and `idgate migrate`: register
//! the agents that may authenticate, in idgate's own database.

use clap::Subcommand;

use crate::db::registry::{self, AgentRow, NewAgent};
use crate::db::{Db, PoolSettings};

/// `idgate agents`.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Add an agent to a workspace's latest build (creating the workspace if
    /// needed) and print its session token.
    Add {
        /// Workspace name.
        #[arg(long)]
        workspace: String,
        /// The machine's instance ID (AWS instanceId, Azure vmId, GCP instance_id).
        #[arg(long)]
        instance_id: String,
        /// Agent name (what CODER_AGENT_NAME selects).
        #[arg(long)]
        name: String,
        /// Make it a sub-agent of this agent (sub-agents never authenticate by instance ID).
        #[arg(long, value_name = "AGENT")]
        sub_agent_of: Option<String>,
        /// Print the agent as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the agents of every workspace's latest build.
    List {
        /// Include the session tokens.
        #[arg(long)]
        show_tokens: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `idgate workspaces`.
#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// Make a new latest build with the same agents (new tokens, same instance IDs).
    Rebuild {
        /// Workspace name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a workspace deleted: its agents no longer authenticate.
    Delete {
        /// Workspace name.
        name: String,
    },
}

/// Runs an `agents` command.
pub async fn run_agents(db: &Db, cmd: AgentsCommand) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::Add {
            workspace,
            instance_id,
            name,
            sub_agent_of,
            json,
        } => {
            db.require_managed("agents add")?;
            let agent = registry::add_agent(
                &db.pool,
                &NewAgent {
                    workspace: &workspace,
                    instance_id: &instance_id,
                    name: &name,
                    parent: sub_agent_of.as_deref(),
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&agent)?);
            } else {
                // The token alone on stdout, for scripts; the rest on stderr.
                eprintln!(
                    "added agent {:?} to workspace {:?} (build {}) for instance {:?}",
                    agent.name, agent.workspace, agent.build, instance_id
                );
                println!("{}", agent.auth_token.hyphenated());
            }
        }
        AgentsCommand::List { show_tokens, json } => {
            let agents = registry::list_agents(&db.pool).await?;
            if json {
                let list: Vec<serde_json::Value> = agents.iter().map(|a| agent_json(a, show_tokens)).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", agent_table(&agents, show_tokens));
            }
        }
    }
    Ok(())
}

/// Runs a `workspaces` command.
pub async fn run_workspaces(db: &Db, cmd: WorkspacesCommand) -> anyhow::Result<()> {
    match cmd {
        WorkspacesCommand::Rebuild { name, json } => {
            db.require_managed("workspaces rebuild")?;
            let rebuilt = registry::rebuild_workspace(&db.pool, &name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rebuilt)?);
            } else {
                println!(
                    "workspace {:?}: build {} with {} agent(s); their tokens are new (`idgate agents list --show-tokens`)",
                    rebuilt.workspace, rebuilt.build, rebuilt.agents
                );
            }
        }
        WorkspacesCommand::Delete { name } => {
            db.require_managed("workspaces delete")?;
            registry::delete_workspace(&db.pool, &name).await?;
            println!("workspace {name:?} deleted");
        }
    }
    Ok(())
}

/// `idgate migrate`: opens the database (which applies pending migrations) and
/// reports the schema version.
pub async fn run_migrate(url: Option<&str>, settings: PoolSettings) -> anyhow::Result<()> {
    let db = Db::open(url, settings).await?;
    let result = async {
        db.require_managed("migrate")?;
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&db.pool)
            .await?;
        println!(
            "database schema is up to date (version {})",
            version.map_or_else(|| "none".to_string(), |v| v.to_string())
        );
        Ok(())
    }
    .await;
    db.close().await;
    result
}

fn agent_json(a: &AgentRow, show_tokens: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "workspace": a.workspace,
        "build": a.build,
        "id": a.id,
        "name": a.name,
        "instance_id": a.instance_id,
        "sub_agent_of": a.sub_agent_of,
    });
    if show_tokens {
        v["auth_token"] = serde_json::Value::String(a.auth_token.hyphenated().to_string());
    }
    v
}

/// The agent list as an aligned text table.
pub fn agent_table(agents: &[AgentRow], show_tokens: bool) -> String {
    let mut header = vec!["WORKSPACE", "BUILD", "AGENT", "INSTANCE ID", "SUB-AGENT OF"];
    if show_tokens {
        header.push("TOKEN");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for a in agents {
        let mut row = vec![
            a.workspace.clone(),
            a.build.to_string(),
            a.name.clone(),
            a.instance_id.clone().unwrap_or_else(|| "-".into()),
            a.sub_agent_of.clone().unwrap_or_else(|| "-".into()),
        ];
        if show_tokens {
            row.push(a.auth_token.hyphenated().to_string());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        #[command(subcommand)]
        Agents(AgentsCommand),
        #[command(subcommand)]
        Workspaces(WorkspacesCommand),
    }

    #[test]
    fn command_line_shape() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "idgate",
            "agents",
            "add",
            "--workspace",
            "w",
            "--instance-id",
            "i-1",
            "--name",
            "dev",
            "--sub-agent-of",
            "main",
        ])
        .unwrap();
        let Top::Agents(AgentsCommand::Add {
            workspace,
            instance_id,
            name,
            sub_agent_of,
            json,
        }) = cli.command
        else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (
                workspace.as_str(),
                instance_id.as_str(),
                name.as_str(),
                sub_agent_of.as_deref(),
                json
            ),
            ("w", "i-1", "dev", Some("main"), false)
        );
        let cli = Cli::try_parse_from(["idgate", "agents", "list", "--show-tokens", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Top::Agents(AgentsCommand::List {
                show_tokens: true,
                json: true
            })
        ));
        let cli = Cli::try_parse_from(["idgate", "workspaces", "rebuild", "w"]).unwrap();
        assert!(
            matches!(cli.command, Top::Workspaces(WorkspacesCommand::Rebuild { ref name, json: false }) if name == "w")
        );
        let cli = Cli::try_parse_from(["idgate", "workspaces", "delete", "w"]).unwrap();
        assert!(matches!(cli.command, Top::Workspaces(WorkspacesCommand::Delete { ref name }) if name == "w"));
        assert!(Cli::try_parse_from(["idgate", "agents", "add", "--workspace", "w"]).is_err());
    }

    #[test]
    fn table_aligns_and_hides_tokens() {
        let a = AgentRow {
            workspace: "ws".into(),
            build: 12,
            id: Uuid::nil(),
            name: "main".into(),
            instance_id: Some("i-0123".into()),
            sub_agent_of: None,
            auth_token: Uuid::from_u128(5),
        };
        let t = agent_table(std::slice::from_ref(&a), false);
        assert_eq!(
            t,
            "WORKSPACE  BUILD  AGENT  INSTANCE ID  SUB-AGENT OF\nws         12     main   i-0123       -\n"
        );
        assert!(!t.contains("0000-000000000005"));
        assert!(agent_table(std::slice::from_ref(&a), true).contains("00000000-0000-0000-0000-000000000005"));
        assert!(agent_json(&a, false).get("auth_token").is_none());
        assert_eq!(
            agent_json(&a, true)["auth_token"],
            "00000000-0000-0000-0000-000000000005"
        );
    }
}
