//! Instance ID (+ optional agent name) → the agent's session token.
//!
//! One SQL statement fetches every candidate; the choice between them (and the
//! Coder-compatible 404 / 409 messages) is made in memory by [`select`]. Under
//! load the statement is shared: authentications waiting for a connection go
//! to the database together, in one [`BATCH_SQL`] (see [`crate::db::batch`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// One resolution statement's text, for one instance ID or for several: the
/// two differ only in how the ID is matched (`$ids`) and in whether a row
/// carries its agent's instance ID (`$tag`), so they are written once.
macro_rules! resolution_sql {
    ($ids:literal, $tag:literal) => {
        concat!(
            "WITH candidate_builds AS MATERIALIZED (
  SELECT workspace_resources.id AS resource_id, workspace_resources.job_id,
         workspace_builds.workspace_id, workspace_builds.build_number
  FROM workspace_resources
  JOIN workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
  WHERE workspace_resources.id IN (
    SELECT candidate.resource_id FROM workspace_agents AS candidate
    WHERE candidate.auth_instance_id ",
            $ids,
            "
      AND candidate.deleted = FALSE
      AND candidate.parent_id IS NULL)
), latest_builds AS MATERIALIZED (
  SELECT workspaces.id AS workspace_id,
         (SELECT max(latest.build_number) FROM workspace_builds AS latest
          WHERE latest.workspace_id = workspaces.id) AS build_number
  FROM workspaces
  WHERE workspaces.id IN (SELECT candidate_builds.workspace_id FROM candidate_builds)
    AND workspaces.deleted = FALSE
)
SELECT ",
            $tag,
            "workspace_agents.name, workspace_agents.auth_token
FROM candidate_builds
JOIN latest_builds ON latest_builds.workspace_id = candidate_builds.workspace_id
  AND latest_builds.build_number = candidate_builds.build_number
JOIN provisioner_jobs ON provisioner_jobs.id = candidate_builds.job_id
JOIN workspace_agents ON workspace_agents.resource_id = candidate_builds.resource_id
WHERE provisioner_jobs.type = 'workspace_build'
  AND workspace_agents.auth_instance_id ",
            $ids,
            "
  AND workspace_agents.deleted = FALSE
  AND workspace_agents.parent_id IS NULL
ORDER BY workspace_agents.created_at DESC, workspace_agents.id"
        )
    };
}

/// The one statement of a resolution: root, non-deleted agents carrying the
/// instance ID, on a resource of a `workspace_build` job whose build is the
/// latest of a non-deleted workspace. It is Coder's
/// `GetWorkspaceBuildAgentsByInstanceID` join plus the latest-build predicate
/// of coder/coder#25440. `$1::text` matches Coder's parameter type (so the
/// `(auth_instance_id, deleted)` index serves it) and lets the server infer the
/// parameter's type when the statement is prepared ahead of time.
/// Newest first, as Coder orders its candidates.
///
/// It is shaped so that one cached (generic) plan is cheap for every data
/// shape, because the pool makes PostgreSQL plan it once per connection (see
/// [`crate::db::plan`]) and a generic plan cannot know how many rows an
/// instance ID has. Work is done per *distinct* thing, not per candidate row:
/// 1. `candidate_builds`: the distinct resources of the candidate agents, with
///    their build (two key lookups per resource, not per agent: an instance
///    with 50 agents on each of 101 builds has 5,050 candidate rows but 101
///    resources);
/// 2. `latest_builds`: the latest build number of each distinct live
///    workspace among them (one backward index probe per workspace, not per
///    candidate);
/// 3. the agents of the resources that are on a latest `workspace_build`
///    build, fetched by resource.
///
/// The CTEs are `MATERIALIZED` so the planner keeps that order whatever it
/// estimates: merged into one join, a plan built for "about three rows per
/// instance ID" walks every candidate through every join (tens of ms on
/// 5,050 not-soft-deleted rows).
pub const RESOLVE_SQL: &str = resolution_sql!("= $1::text", "");

/// [`RESOLVE_SQL`] for several instance IDs at once (`$1::text[]`, at most
/// [`crate::db::batch::MAX_BATCH`] distinct IDs), each row tagged with its
/// agent's instance ID. Same joins, same predicates, same order; an agent is
/// returned for ID `x` exactly when [`RESOLVE_SQL`] returns it for `x` alone:
/// a resource found through any ID of the batch holds only agents whose own
/// instance ID also finds it. The rows of one ID keep their relative order.
///
/// `= ANY($1::text[])` is served by the same `(auth_instance_id, deleted)`
/// index (one probe per ID), and the plan is generic like [`RESOLVE_SQL`]'s.
pub const BATCH_SQL: &str = resolution_sql!("= ANY($1::text[])", "workspace_agents.auth_instance_id, ");

/// The outcome of a resolution. The messages are Coder's, ready for the
/// response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Exactly one agent: its `auth_token` and name.
    Token(Uuid, String),
    /// 404: no candidate at all.
    NotFound(String),
    /// 404: candidates exist, none with the requested name.
    NoSuchName(String),
    /// 409: several candidates and no name to choose by.
    Ambiguous(String),
}

/// One row of [`RESOLVE_SQL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `workspace_agents.name`.
    pub name: String,
    /// `workspace_agents.auth_token`.
    pub auth_token: Uuid,
}

/// Resolves an instance ID to one agent with one statement, shared with the
/// other resolutions waiting for a connection at the time (see
/// [`crate::db::batch`]); alone when nothing else waits. On connections from
/// [`crate::db::pool::connect`] the statements are already prepared, so this is
/// one Bind/Execute/Sync exchange.
///
/// The pool does not ping connections before use (that would be a second round
/// trip); a connection that turns out to be dead (server restarted) fails with
/// an I/O error before any row is read, and the query is retried on another
/// connection, a few times at most.
pub async fn resolve(pool: &PgPool, instance_id: &str, agent_name: Option<&str>) -> Result<Resolution, sqlx::Error> {
    Ok(resolve_measured(pool, instance_id, agent_name).await?.0)
}

/// [`resolve`], also returning how long it waited for its statement to start
/// (a pooled connection, or a place in a batch: the server's
/// `pool_wait_seconds` metric).
pub async fn resolve_measured(
    pool: &PgPool,
    instance_id: &str,
    agent_name: Option<&str>,
) -> Result<(Resolution, Duration), sqlx::Error> {
    let (candidates, waited) = crate::db::batch::candidates(pool, instance_id).await?;
    Ok((select(instance_id, agent_name, candidates), waited))
}

/// [`resolve`] without sharing: this request's own connection and its own
/// [`RESOLVE_SQL`], whatever else is waiting. For comparisons (tests, the
/// benchmarks); the server uses [`resolve`].
pub async fn resolve_alone(
    pool: &PgPool,
    instance_id: &str,
    agent_name: Option<&str>,
) -> Result<Resolution, sqlx::Error> {
    let mut attempts = 0;
    let candidates = loop {
        attempts += 1;
        let mut conn = pool.acquire().await?;
        match fetch_one(&mut conn, instance_id).await {
            Err(sqlx::Error::Io(e)) if attempts < 3 => {
                // Do not return a dead connection to the pool.
                conn.close_on_drop();
                tracing::debug!(error = %e, "database connection lost; retrying the resolution");
            }
            other => break other?,
        }
    };
    Ok(select(instance_id, agent_name, candidates))
}

/// The candidates of one instance ID ([`RESOLVE_SQL`]), in query order.
pub async fn fetch_one(conn: &mut PgConnection, instance_id: &str) -> Result<Vec<Candidate>, sqlx::Error> {
    let rows = sqlx::query(RESOLVE_SQL).bind(instance_id).fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            Ok(Candidate {
                name: row.try_get(0)?,
                auth_token: row.try_get(1)?,
            })
        })
        .collect()
}

/// The candidates of several distinct instance IDs ([`BATCH_SQL`]), each
/// tagged with its instance ID, in query order.
pub async fn fetch_many(
    conn: &mut PgConnection,
    instance_ids: &[&str],
) -> Result<Vec<(String, Candidate)>, sqlx::Error> {
    let rows = sqlx::query(BATCH_SQL).bind(instance_ids).fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                Candidate {
                    name: row.try_get(1)?,
                    auth_token: row.try_get(2)?,
                },
            ))
        })
        .collect()
}

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<(Resolution, Duration), sqlx::Error>> + Send + 'a>>;

/// What answers resolutions in place of the database: the instance ID and
/// optional agent name in, [`resolve_measured`]'s answer out.
///
/// Production always resolves in PostgreSQL. The benchmarks put a stub here,
/// behind the same router, to measure the HTTP floor (the "ceiling" rows).
pub trait Resolver: Send + Sync {
    /// Resolves one instance ID; also returns the time spent waiting for a connection.
    fn resolve<'a>(&'a self, instance_id: &'a str, agent_name: Option<&'a str>) -> ResolveFuture<'a>;
}

/// Coder's selection rules (stage B of coder-reference §1), applied to the
/// candidates in query order.
pub fn select(instance_id: &str, agent_name: Option<&str>, candidates: Vec<Candidate>) -> Resolution {
    let name = agent_name.map(str::trim).filter(|n| !n.is_empty());
    if candidates.is_empty() {
        return Resolution::NotFound(format!("Instance with id {} not found.", go_quote(instance_id)));
    }
    if let Some(name) = name {
        return match candidates.into_iter().find(|c| c.name == name) {
            Some(c) => Resolution::Token(c.auth_token, c.name),
            None => Resolution::NoSuchName(format!(
                "No agent found with instance ID {} and name {}.",
                go_quote(instance_id),
                go_quote(name)
            )),
        };
    }
    if candidates.len() > 1 {
        // Bytewise order, duplicates kept: Go's sort.Strings.
        let mut names: Vec<String> = candidates.into_iter().map(|c| c.name).collect();
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        return Resolution::Ambiguous(format!(
            "Multiple agents found with instance ID {}. Set CODER_AGENT_NAME to one of: {}",
            go_quote(instance_id),
            names.join(", ")
        ));
    }
    let only = candidates.into_iter().next().expect("one candidate");
    Resolution::Token(only.auth_token, only.name)
}

/// Quotes a string as Go's `%q` (`strconv.Quote`) does: double quotes, `\"` and
/// `\\`, C-style escapes for `\a \b \f \n \r \t \v`, `\xNN` for other ASCII
/// controls, `\uNNNN` / `\UNNNNNNNN` for other non-printable characters.
///
/// Go's "printable" is Unicode categories L, M, N, P, S plus the ASCII space.
/// Without Unicode tables this escapes controls, the other space separators,
/// line/paragraph separators, the common format characters and private-use
/// characters, and prints unassigned code points as they are (Go escapes those).
pub fn go_quote(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !go_printable(c) => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint` (see [`go_quote`]).
fn go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    let not_printable = matches!(u,
        // Zs other than U+0020, Zl, Zp.
        0x00a0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000
        // Cf (format) characters.
        | 0x00ad | 0x0600..=0x0605 | 0x061c | 0x06dd | 0x070f | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb
        | 0x110bd | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        // Co (private use).
        | 0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd
        // Noncharacters (Cn in every Unicode version).
        | 0xfdd0..=0xfdef | 0xfffe | 0xffff);
    !not_printable && (u & 0xfffe) != 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARCHITECTURE.md quotes the statement; the quote is the statement.
    #[test]
    fn architecture_quotes_the_resolution_statement() {
        let doc = include_str!("../../../ARCHITECTURE.md");
        let quoted = doc
            .split("```sql\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("ARCHITECTURE.md has a SQL block");
        assert_eq!(quoted, RESOLVE_SQL);
    }

    fn cand(name: &str, n: u128) -> Candidate {
        Candidate {
            name: name.to_string(),
            auth_token: Uuid::from_u128(n),
        }
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        // Expected values are Go's strconv.Quote outputs.
        assert_eq!(go_quote("i-076e9b91f7c420782"), r#""i-076e9b91f7c420782""#);
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(go_quote("\x07\x08\x0c\n\r\t\x0b"), r#""\a\b\f\n\r\t\v""#);
        assert_eq!(go_quote("\0\x01\x1b\x7f"), r#""\x00\x01\x1b\x7f""#);
        assert_eq!(go_quote("\u{80}\u{9f}"), r#""\u0080\u009f""#);
        assert_eq!(
            go_quote("a\u{a0}b\u{2028}\u{feff}\u{200b}"),
            r#""a\u00a0b\u2028\ufeff\u200b""#
        );
        assert_eq!(go_quote("\u{e000}\u{10fffd}"), r#""\ue000\U0010fffd""#);
        assert_eq!(go_quote("héllo 世界 🦀 ünïcödé"), "\"héllo 世界 🦀 ünïcödé\"");
        assert_eq!(go_quote("tab\there"), r#""tab\there""#);
    }

    #[test]
    fn no_candidates_is_not_found() {
        assert_eq!(
            select("i-1", None, vec![]),
            Resolution::NotFound(r#"Instance with id "i-1" not found."#.into())
        );
        // Even with a name: Coder checks for candidates first.
        assert_eq!(
            select("i-1", Some("dev"), vec![]),
            Resolution::NotFound(r#"Instance with id "i-1" not found."#.into())
        );
    }

    #[test]
    fn single_candidate_without_name() {
        assert_eq!(
            select("i-1", None, vec![cand("dev", 1)]),
            Resolution::Token(Uuid::from_u128(1), "dev".into())
        );
        assert_eq!(
            select("i-1", Some("  "), vec![cand("dev", 1)]),
            Resolution::Token(Uuid::from_u128(1), "dev".into())
        );
    }

    #[test]
    fn single_candidate_with_wrong_name_is_404() {
        assert_eq!(
            select("i-1", Some("main"), vec![cand("dev", 1)]),
            Resolution::NoSuchName(r#"No agent found with instance ID "i-1" and name "main"."#.into())
        );
    }

    #[test]
    fn several_candidates_without_name_is_409_sorted_bytewise() {
        let c = vec![cand("beta", 1), cand("Zeta", 2), cand("alpha", 3), cand("beta", 4)];
        for name in [None, Some(""), Some(" \t\n ")] {
            assert_eq!(
                select("i-\"x\"", name, c.clone()),
                Resolution::Ambiguous(
                    r#"Multiple agents found with instance ID "i-\"x\"". Set CODER_AGENT_NAME to one of: Zeta, alpha, beta, beta"#
                        .into()
                )
            );
        }
    }

    #[test]
    fn name_selects_exactly_and_case_sensitively_after_trimming() {
        let c = vec![cand("alpha", 1), cand("beta", 2)];
        assert_eq!(
            select("i-1", Some(" beta\n"), c.clone()),
            Resolution::Token(Uuid::from_u128(2), "beta".into())
        );
        assert_eq!(
            select("i-1", Some("Beta"), c.clone()),
            Resolution::NoSuchName(r#"No agent found with instance ID "i-1" and name "Beta"."#.into())
        );
        // The name in the message is the trimmed one.
        assert_eq!(
            select("i-1", Some(" gamma "), c),
            Resolution::NoSuchName(r#"No agent found with instance ID "i-1" and name "gamma"."#.into())
        );
    }

    #[test]
    fn duplicate_names_take_the_first_in_query_order() {
        let c = vec![cand("dev", 7), cand("dev", 8)];
        assert_eq!(
            select("i-1", Some("dev"), c),
            Resolution::Token(Uuid::from_u128(7), "dev".into())
        );
    }
}
