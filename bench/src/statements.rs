//! Section 1: statements per authentication and resolution latency, idgate's
//! one-statement resolution against the Coder stage-B baseline, over a grid of
//! agents per instance × earlier (not soft-deleted) builds, in a database that
//! also holds a 20,000-workspace fleet. Each cell is measured at first use (a
//! fresh connection) and in the steady state (a warmed, pooled connection), and
//! the plan idgate's connection has cached is shown for three shapes. Coder
//! main's pattern (two statements) runs beside them on a copy of the same
//! registrations whose prior-build agents are soft-deleted, as Coder main
//! keeps them.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use idgate::db::resolve::resolve;
use sqlx::PgPool;

use crate::baseline::{self, idgate_answer, Answer};
use crate::cluster::{BenchCluster, ServerTime, CODER_MAIN_DATABASE};
use crate::fixtures::{register, Group};
use crate::stats::{fmt, ratio, side_by_side, Summary};

const AGENTS: [usize; 4] = [1, 2, 5, 50];
const EARLIER_BUILDS: [u32; 3] = [0, 10, 100];
/// Workspaces in the fleet that fills the database around the grid.
pub const FLEET: usize = 20_000;
/// Earlier builds of each fleet workspace (their agents not soft-deleted).
const FLEET_EARLIER_BUILDS: u32 = 2;
/// Resolutions on a warmed connection whose server time is averaged.
const STEADY_COUNT: u32 = 50;

/// One grid cell's measurements.
pub struct Cell {
    /// Agents on the instance.
    pub agents: usize,
    /// Earlier builds.
    pub builds: u32,
    /// Statements PostgreSQL counted for one idgate authentication.
    pub idgate_statements: i64,
    /// ... and for one baseline authentication.
    pub baseline_statements: i64,
    /// Steady-state latency of idgate's resolution (warmed, pooled connection).
    pub idgate: Summary,
    /// ... and of the baseline's.
    pub baseline: Summary,
    /// Latency of the first resolution on a fresh connection (idgate, baseline).
    pub first_use: (Duration, Duration),
    /// PostgreSQL's time for that first resolution (idgate, baseline).
    pub first_server: (ServerTime, ServerTime),
    /// Statuses without an agent name (idgate, baseline).
    pub unnamed: (u16, u16),
    /// Per-statement counts of the baseline run.
    pub baseline_detail: Vec<(String, i64)>,
    /// PostgreSQL's own planning and execution time per authentication in the
    /// steady state (idgate, baseline).
    pub server: (ServerTime, ServerTime),
    /// Coder main's pattern on the soft-deleted copy.
    pub main: MainCell,
}

/// One grid cell's measurements of Coder main's pattern.
pub struct MainCell {
    /// Statements PostgreSQL counted for one authentication.
    pub statements: i64,
    /// Steady-state latency of idgate and of Coder main's pattern, measured
    /// side by side in their own alternating rounds.
    pub latency: (Summary, Summary),
    /// PostgreSQL's time per authentication.
    pub server: ServerTime,
    /// Status without an agent name.
    pub unnamed: u16,
}

/// What the section found beyond the cells.
pub struct Extra {
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the cached plan: (what, plan lines).
    pub plans: Vec<(String, Vec<String>)>,
    /// How idgate's warmed connection planned the statement over the section.
    pub counts: Option<idgate::db::plan::PlanCounts>,
    /// One client, 1 agent × 0 earlier builds: latency through the shared
    /// queue (`resolve`, a batch of one) and without it (`resolve_alone`).
    pub idle: (Summary, Summary),
}

fn fleet_instance(i: usize) -> String {
    format!("i-fleet-{i}")
}

fn instance(agents: usize, builds: u32) -> String {
    format!("i-grid-{agents}a-{builds}b")
}

/// Runs the section; returns its Markdown and the cells.
pub fn run(rt: &tokio::runtime::Runtime, pg: &BenchCluster) -> anyhow::Result<(String, Vec<Cell>)> {
    // One connection each: a single authentication at a time, and every
    // connection warmed (statements prepared, type OIDs looked up) before counting.
    let (ours, theirs, main) = rt.block_on(async {
        let ours = pg.open(1).await?;
        let theirs = pg.baseline_pool(1).await?;
        // The same registrations in Coder main's database (migrated by
        // opening it as idgate would), then soft-deleted as Coder main keeps them.
        let main_setup = pg.open_in(CODER_MAIN_DATABASE, 1).await?;
        let fleet: Vec<String> = (0..FLEET).map(fleet_instance).collect();
        let mut groups = vec![Group::new("fleet", fleet, 1, FLEET_EARLIER_BUILDS)];
        for &agents in &AGENTS {
            for &builds in &EARLIER_BUILDS {
                groups.push(Group::new(
                    &format!("grid{agents}x{builds}"),
                    vec![instance(agents, builds)],
                    agents,
                    builds,
                ));
            }
        }
        for group in &groups {
            register(&ours, group).await?;
            register(&main_setup, group).await?;
        }
        crate::fixtures::soft_delete_prior_agents(&main_setup).await?;
        crate::fixtures::analyze(&ours).await?;
        crate::fixtures::analyze(&main_setup).await?;
        main_setup.close().await;
        let main = pg.baseline_pool_in(CODER_MAIN_DATABASE, 1).await?;
        anyhow::Ok((ours, theirs, main))
    })?;

    let mut cells = Vec::new();
    for &agents in &AGENTS {
        for &builds in &EARLIER_BUILDS {
            let cell = measure(rt, pg, &ours, &theirs, &main, agents, builds)?;
            eprintln!(
                "statements: {agents} agents × {builds} earlier builds: idgate {} / baseline {} / Coder main {} \
                 statements, {} / {} / {}",
                cell.idgate_statements,
                cell.baseline_statements,
                cell.main.statements,
                fmt(cell.idgate.median),
                fmt(cell.baseline.median),
                fmt(cell.main.latency.1.median)
            );
            cells.push(cell);
        }
    }
    // The idle case: does the queue cost a lone request anything?
    let idle_id = instance(1, 0);
    let idle = side_by_side(
        5,
        200,
        || {
            rt.block_on(resolve(&ours, &idle_id, None)).expect("idgate resolution");
        },
        || {
            rt.block_on(idgate::db::resolve::resolve_alone(&ours, &idle_id, None))
                .expect("idgate resolution");
        },
    );
    eprintln!(
        "statements: one client, through the queue {} / alone {}",
        fmt(idle.0.median),
        fmt(idle.1.median)
    );
    let extra = rt.block_on(async {
        let mut conn = ours.acquire().await?;
        let mut plans = Vec::new();
        for (what, id) in [
            ("1 agent × 0 earlier builds".to_string(), instance(1, 0)),
            ("50 agents × 100 earlier builds".to_string(), instance(50, 100)),
            (
                format!("one of the {FLEET} fleet workspaces (1 agent × {FLEET_EARLIER_BUILDS} earlier builds)"),
                fleet_instance(FLEET / 2),
            ),
        ] {
            plans.push((what, idgate::db::plan::explain_cached(&mut conn, &id).await?));
        }
        let counts = idgate::db::plan::plan_counts(&mut conn).await?;
        drop(conn);
        ours.close().await;
        theirs.close().await;
        main.close().await;
        anyhow::Ok(Extra { plans, counts, idle })
    })?;
    Ok((report(pg, &cells, &extra), cells))
}

fn measure(
    rt: &tokio::runtime::Runtime,
    pg: &BenchCluster,
    ours: &PgPool,
    theirs: &PgPool,
    main: &PgPool,
    agents: usize,
    builds: u32,
) -> anyhow::Result<Cell> {
    let id = instance(agents, builds);
    // Requests name their agent, so both sides do their whole work and answer 200.
    let name = Some(if agents > 1 { "agent-0" } else { "main" });
    let run_ours = || rt.block_on(resolve(ours, &id, name)).map(idgate_answer);
    let run_theirs = || rt.block_on(baseline::resolve(theirs, &id, name));
    let run_main = || rt.block_on(baseline::resolve_coder_main(main, &id, name));

    type Counted = (i64, Vec<(String, i64)>, ServerTime);
    // `n` calls of `f`, counted by PostgreSQL; the counts and time are per call.
    let counted_in = |db: &str, n: u32, f: &dyn Fn() -> Result<Answer, sqlx::Error>| -> anyhow::Result<Counted> {
        if !pg.stat_statements {
            for _ in 0..n {
                f()?;
            }
            return Ok((-1, Vec::new(), ServerTime::default()));
        }
        rt.block_on(pg.reset_counts())?;
        for _ in 0..n {
            f()?;
        }
        let mut detail = rt.block_on(pg.counts_in(db))?;
        for (_, calls) in &mut detail {
            *calls /= i64::from(n);
        }
        let time = rt.block_on(pg.server_time_in(db))?;
        Ok((detail.iter().map(|(_, n)| n).sum(), detail, time.per(n)))
    };
    let counted = |n: u32, f: &dyn Fn() -> Result<Answer, sqlx::Error>| counted_in(crate::cluster::DATABASE, n, f);

    // First use: one resolution on a connection that has never run it (the
    // pool's set-up has prepared idgate's statement; the baseline prepares
    // each of its statements on first use, as sqlx and pgx do).
    let (fresh_ours, fresh_theirs) =
        rt.block_on(async { anyhow::Ok((pg.fresh_pool(1).await?, pg.baseline_pool(1).await?)) })?;
    let first = |f: &dyn Fn() -> Result<Answer, sqlx::Error>| -> anyhow::Result<(Duration, ServerTime, Answer)> {
        if pg.stat_statements {
            rt.block_on(pg.reset_counts())?;
        }
        let t = Instant::now();
        let answer = f()?;
        let latency = t.elapsed();
        let time = if pg.stat_statements {
            rt.block_on(pg.server_time())?
        } else {
            ServerTime::default()
        };
        Ok((latency, time, answer))
    };
    let (ours_first, ours_first_server, a) =
        first(&|| rt.block_on(resolve(&fresh_ours, &id, name)).map(idgate_answer))?;
    let (theirs_first, theirs_first_server, b) = first(&|| rt.block_on(baseline::resolve(&fresh_theirs, &id, name)))?;
    rt.block_on(async {
        fresh_ours.close().await;
        fresh_theirs.close().await;
    });
    // Both must agree on the answer (same agent, same token).
    anyhow::ensure!(
        matches!(a, Answer::Token(_)) && a == b,
        "{id}: idgate answered {a:?}, the baseline {b:?}"
    );

    // Steady state: warm the long-lived connections past PostgreSQL's five
    // custom plans, then average over several resolutions.
    let t = Instant::now();
    run_theirs()?;
    let baseline_once = t.elapsed();
    let repeat =
        ((Duration::from_millis(200).as_secs_f64() / baseline_once.as_secs_f64()) as u32).clamp(1, STEADY_COUNT);
    for _ in 0..10 {
        run_ours()?;
    }
    for _ in 0..repeat.min(10) {
        run_theirs()?;
    }
    let (idgate_statements, _, idgate_server) = counted(STEADY_COUNT, &run_ours)?;
    let (baseline_statements, baseline_detail, baseline_server) = counted(repeat, &run_theirs)?;
    // Its own database has its own tokens: the status must agree.
    let main_answer = run_main()?;
    anyhow::ensure!(
        main_answer.status() == 200,
        "{id}: idgate answered {a:?}, Coder main's pattern {main_answer:?}"
    );
    for _ in 0..10 {
        run_main()?;
    }
    let (main_statements, _, main_server) = counted_in(CODER_MAIN_DATABASE, STEADY_COUNT, &run_main)?;

    // Without a name: a single agent should authenticate; old-build rows make
    // the baseline see several candidates.
    let unnamed = (
        rt.block_on(resolve(ours, &id, None)).map(idgate_answer)?.status(),
        rt.block_on(baseline::resolve(theirs, &id, None))?.status(),
    );
    let main_unnamed = rt.block_on(baseline::resolve_coder_main(main, &id, None))?.status();

    // About 1.5 s of baseline calls per cell, at least one per round.
    let rounds = 5;
    let per_round = ((Duration::from_millis(300).as_secs_f64() / baseline_once.as_secs_f64()) as usize).clamp(1, 100);
    let (idgate, baseline) = side_by_side(
        rounds,
        per_round,
        || {
            run_ours().expect("idgate resolution");
        },
        || {
            run_theirs().expect("baseline resolution");
        },
    );
    // Coder main's pattern costs about what idgate does: a fixed number per round.
    let main_latency = side_by_side(
        rounds,
        100,
        || {
            run_ours().expect("idgate resolution");
        },
        || {
            run_main().expect("Coder main resolution");
        },
    );
    Ok(Cell {
        agents,
        builds,
        idgate_statements,
        baseline_statements,
        idgate,
        baseline,
        first_use: (ours_first, theirs_first),
        first_server: (ours_first_server, theirs_first_server),
        unnamed,
        baseline_detail,
        server: (idgate_server, baseline_server),
        main: MainCell {
            statements: main_statements,
            latency: main_latency,
            server: main_server,
            unnamed: main_unnamed,
        },
    })
}

fn report(pg: &BenchCluster, cells: &[Cell], extra: &Extra) -> String {
    let mut md = String::from("## Statements per authentication: idgate vs Coder's stage-B pattern\n\n");
    let _ = write!(
        md,
        "One instance per cell with N agents on its latest build and the same agents on each of B earlier \
         builds, **not** soft-deleted (as in coder/coder#25155), in a database that also holds a fleet of \
         {FLEET} workspaces (one agent on each of {} builds, not soft-deleted either). The request names its \
         agent (`main`, or `agent-0` when N > 1), so that both sides do their whole work and answer 200. \
         *idgate* is `idgate::db::resolve::resolve` (one statement). *Baseline* is a faithful rewrite, \
         inside this benchmark only (`bench/src/baseline.rs`), of the statement sequence of Coder's stage-B \
         handler (coder/coder#24973): `GetWorkspaceAgentsByInstanceID`, then per candidate \
         `GetWorkspaceResourceByID` + `GetProvisionerJobByID`, selection, then `GetWorkspaceBuildByID` + \
         `GetLatestWorkspaceBuildByWorkspaceID`. Coder's dbauthz layer is not reproduced (after #24973 it adds \
         no SQL for the system subject, only Go-side RBAC checks), so the baseline is if anything cheaper than \
         Coder.\n\n",
        FLEET_EARLIER_BUILDS + 1
    );
    if pg.stat_statements {
        let _ = write!(
            md,
            "Statements are counted by PostgreSQL (`pg_stat_statements.calls` for the benchmark database). \
             *First use* is the first resolution on a fresh connection: idgate's pool prepared and planned its \
             statements when it connected (one execution each for an ID that matches nothing, \
             `idgate::db::pool`), outside the count; the baseline prepares each of its statements on first use, \
             and PostgreSQL plans it then. *Steady* is a long-lived pooled connection after warm-up (past \
             PostgreSQL's five custom plans): latency is one resolution from the application's side (pool of \
             one connection each, sequential), median of 5 alternating rounds with the spread of the round \
             medians; *server time* is PostgreSQL's own planning + execution time per authentication \
             (`pg_stat_statements` with `track_planning`, mean of {STEADY_COUNT} idgate resolutions and of up \
             to {STEADY_COUNT} baseline ones), without round trips. idgate's connections run with \
             `plan_cache_mode = force_generic_plan` (a session setting, `idgate::db::plan`): the statement is \
             planned once per connection.\n\n",
        );
    } else {
        md.push_str("**This PostgreSQL has no `pg_stat_statements`: statement counts are not available.**\n\n");
    }
    md.push_str(
        "| agents | earlier builds | statements idgate / baseline | first use: latency idgate / baseline | \
         first use: server time idgate / baseline | steady latency idgate | steady latency baseline | \
         baseline / idgate (steady) | steady server time idgate | steady server time baseline | \
         without `agent_name`: idgate / baseline |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} / {} |",
            c.agents,
            c.builds,
            c.idgate_statements,
            c.baseline_statements,
            fmt(c.first_use.0),
            fmt(c.first_use.1),
            c.first_server.0.show(),
            c.first_server.1.show(),
            c.idgate.show(),
            c.baseline.show(),
            ratio(&c.idgate, &c.baseline),
            c.server.0.show(),
            c.server.1.show(),
            c.unnamed.0,
            c.unnamed.1,
        );
    }
    md.push_str(&main_report(cells));
    md.push_str(
        "\nThe baseline runs 1 + 2·N·(B+1) + 2 statements (every old-build agent is a candidate that costs a \
         resource and a job lookup); idgate runs 1 whatever N and B. Without `agent_name`, a single-agent \
         instance with earlier builds gets the baseline's 409 listing `main, main, …` (the incident); \
         idgate answers 200 (409 is right for N > 1).\n",
    );
    let _ = writeln!(
        md,
        "\nOne client, 1 agent × 0 earlier builds, a warmed pool of one connection: {} through the shared \
         queue (`idgate::db::batch`, alone: a batch of one on `RESOLVE_SQL`), {} with the request's own \
         connection and statement (`resolve_alone`, no queue); queue / alone {:.3}× (5 alternating rounds of \
         200).",
        extra.idle.0.show(),
        extra.idle.1.show(),
        extra.idle.0.median.as_secs_f64() / extra.idle.1.median.as_secs_f64(),
    );
    if let Some(counts) = extra.counts {
        let _ = writeln!(
            md,
            "\nidgate's warmed connection, over the whole section: the statement ran {} times on its cached \
             generic plan and {} times on a custom plan (`pg_prepared_statements`).",
            counts.generic, counts.custom
        );
    }
    if !extra.plans.is_empty() {
        md.push_str(
            "\n### The cached plan\n\n`EXPLAIN (ANALYZE, BUFFERS) EXECUTE` of the resolution statement on idgate's \
             warmed connection (`idgate::db::plan::explain_cached`): the one generic plan serves every shape. \
             Work is per distinct resource and workspace (the `latest` probe runs once per workspace), not per \
             candidate row. EXPLAIN's own timing inflates the times; the server time above is without it.\n",
        );
        for (what, plan) in &extra.plans {
            let _ = writeln!(md, "\n{what}:\n\n```\n{}\n```", plan.join("\n"));
        }
    }
    if let Some(big) = cells.iter().max_by_key(|c| c.baseline_statements) {
        let _ = writeln!(
            md,
            "\nWhat PostgreSQL counted for one baseline authentication at {} agents × {} earlier builds:\n\n\
             | calls | statement |\n|---|---|",
            big.agents, big.builds
        );
        for (query, calls) in &big.baseline_detail {
            let _ = writeln!(
                md,
                "| {calls} | `{}` |",
                query.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    md.push('\n');
    md
}

/// The grid's Coder-main rows.
fn main_report(cells: &[Cell]) -> String {
    let mut md = String::from(
        "\n### Coder main's pattern\n\n*Coder main* is Coder's handler after coder/coder#25031 and #25207, \
         rewritten in this benchmark (`baseline::resolve_coder_main`): the joined \
         `GetWorkspaceBuildAgentsByInstanceID` query, selection, then `GetLatestWorkspaceBuildByWorkspaceID` \
         compared with the agent's build — two statements per authentication, each on its own pooled \
         connection. It runs on a second database with the same registrations whose prior-build agents are \
         soft-deleted (`fixtures::soft_delete_prior_agents`, what Coder's migration 000498 does), the state \
         Coder main keeps; idgate is measured on the database above, where they are not (its worst case). \
         Latencies are from their own alternating rounds (5 × 100 resolutions each, sequential, one \
         connection).\n\n\
         | agents | earlier builds | statements idgate / Coder main | steady latency idgate | steady latency \
         Coder main | Coder main / idgate | steady server time Coder main | without `agent_name`: Coder main |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            c.agents,
            c.builds,
            c.idgate_statements,
            c.main.statements,
            c.main.latency.0.show(),
            c.main.latency.1.show(),
            ratio(&c.main.latency.0, &c.main.latency.1),
            c.main.server.show(),
            c.main.unnamed,
        );
    }
    md
}
