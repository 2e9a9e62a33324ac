//! `idgate-bench topology-report FILE`: BENCHMARKS.md's *Topology* section
//! from the figures the HA topology scenarios append, one JSON line each, to
//! `target/topology/figures.jsonl` (`cargo xtask test --topology`). The
//! scenarios assert the targets; this only reports what they measured.
//!
//! The last line per scenario wins, so a file holding several runs reports the
//! newest; `cargo xtask bench --topology` truncates it first so that every row
//! comes from one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// The section's heading; an existing section with it is replaced.
const HEADING: &str = "## Topology: replicas behind HAProxy, Patroni failover";

/// The order the scenarios run in (and are reported in); any other scenario
/// found in the file follows, by name.
const ORDER: [&str; 5] = [
    "rolling_restart",
    "primary_killed_reads_on_replica",
    "primary_killed_reads_on_primary",
    "lagging_standby",
    "registration_during_failover",
];

/// Reads `file`, renders the section and splices it into `BENCHMARKS.md` at
/// `root`.
pub fn run(root: &Path, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let scenarios = last_per_scenario(&text)?;
    if scenarios.is_empty() {
        anyhow::bail!("{} holds no scenario's figures", file.display());
    }
    let section = render(&scenarios);
    let path = root.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    std::fs::write(&path, splice(&doc, &section))?;
    print!("{section}");
    Ok(())
}

/// The last line of each scenario, by name.
fn last_per_scenario(text: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        let name = v["scenario"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("line {}: no \"scenario\"", n + 1))?
            .to_string();
        out.insert(name, v);
    }
    Ok(out)
}

/// Replaces the section (from its `## Topology` heading to the next `## `)
/// or, when there is none, inserts it before `## Charts` (or at the end):
/// the rest of the document stays byte for byte.
fn splice(doc: &str, section: &str) -> String {
    let starts: Vec<usize> = heading_offsets(doc);
    let next_after = |at: usize| starts.iter().copied().find(|&s| s > at).unwrap_or(doc.len());
    if let Some(&at) = starts.iter().find(|&&s| doc[s..].starts_with("## Topology")) {
        return format!("{}{section}{}", &doc[..at], &doc[next_after(at)..]);
    }
    let at = starts
        .iter()
        .copied()
        .find(|&s| doc[s..].starts_with("## Charts"))
        .unwrap_or(doc.len());
    let sep = if at == doc.len() && !doc.ends_with("\n\n") {
        "\n"
    } else {
        ""
    };
    format!("{}{sep}{section}{}", &doc[..at], &doc[at..])
}

/// Byte offsets of the lines starting with `## `.
fn heading_offsets(doc: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        if line.starts_with("## ") {
            out.push(offset);
        }
        offset += line.len();
    }
    out
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1000.0 => format!("{:.2} s", x / 1000.0),
        Some(x) => format!("{x:.1} ms"),
        None => "–".to_string(),
    }
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "–".to_string(), |n| n.to_string())
}

/// `failed / requests`, with the failures' kinds when there are some.
fn failed(f: &Value) -> String {
    let mut s = format!("{} / {}", num(&f["failed"]), num(&f["requests"]));
    if let Some(kinds) = f["failures"]["kinds"].as_object().filter(|k| !k.is_empty()) {
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{} {k}", num(n))).collect();
        write!(s, " ({})", kinds.join(", ")).unwrap();
    }
    s
}

fn title(name: &str) -> &str {
    match name {
        "rolling_restart" => "Rolling restart of both `idgate serve`",
        "primary_killed_reads_on_replica" => "Primary killed, reads on the standbys (`database_read_url`)",
        "primary_killed_reads_on_primary" => "Primary killed, reads on the primary",
        "lagging_standby" => "Standbys' replay paused across a rebuild (lag)",
        "registration_during_failover" => "Registration (`idgate add`, `rebuild`) during the failover",
        other => other,
    }
}

/// The rows of one scenario: (figure, value).
fn rows(name: &str, f: &Value) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = vec![("Failed / requests".into(), failed(f))];
    let mut push = |k: &str, v: String| r.push((k.to_string(), v));
    match name {
        "rolling_restart" => {
            push("Longest gap between right answers", ms(&f["longest_gap_ms"]));
            push(
                "p50 / p99 / max during the restarts",
                format!(
                    "{} / {} / {}",
                    ms(&f["p50_during_restarts_ms"]),
                    ms(&f["p99_during_restarts_ms"]),
                    ms(&f["max_during_restarts_ms"])
                ),
            );
            push("Both restarts took", ms(&f["restart_total_ms"]));
            for restart in f["restarts"].as_array().into_iter().flatten() {
                push(
                    &format!(
                        "Replica {}: exited / listening / up in the balancer",
                        num(&restart["replica"])
                    ),
                    format!(
                        "{} / {} / {} after SIGTERM (balancer had it {} at exit)",
                        ms(&restart["exited_after_ms"]),
                        ms(&restart["listening_again_after_ms"]),
                        ms(&restart["up_in_balancer_after_ms"]),
                        restart["balancer_status_at_exit"].as_str().unwrap_or("–")
                    ),
                );
            }
        }
        "lagging_standby" => {
            push(
                "Previous build's answers after the rebuild",
                format!(
                    "{} over {} (new build's before resume: {})",
                    num(&f["previous_build_answers_after_rebuild"]),
                    ms(&f["previous_build_answered_for_ms"]),
                    num(&f["new_build_answers_before_resume"])
                ),
            );
            push("Resuming replay took", ms(&f["resume_took_ms"]));
            push(
                "First new build's answer / last previous after resume",
                format!(
                    "{} / {}",
                    ms(&f["first_new_after_resume_ms"]),
                    ms(&f["last_previous_after_resume_ms"])
                ),
            );
        }
        _ => {
            push(
                "Promoted / routed by HAProxy after the kill",
                format!("{} / {}", ms(&f["promoted_after_ms"]), ms(&f["routed_after_ms"])),
            );
            push(
                "Longest gap between right answers",
                format!(
                    "{} (began {} after the kill)",
                    ms(&f["longest_gap_ms"]),
                    ms(&f["longest_gap_began_after_kill_ms"])
                ),
            );
            push(
                "p99 before → during the event (p50, max during)",
                format!(
                    "{} → {} ({}, {})",
                    ms(&f["p99_before_ms"]),
                    ms(&f["p99_during_event_ms"]),
                    ms(&f["p50_during_event_ms"]),
                    ms(&f["max_during_event_ms"])
                ),
            );
            if !f["first_200_after_routed_ms"].is_null() {
                push(
                    "First failure after the kill; first 200 after routing",
                    format!(
                        "{}; {}",
                        ms(&f["first_failure_after_kill_ms"]),
                        ms(&f["first_200_after_routed_ms"])
                    ),
                );
                push(
                    "503 from the balancer / from idgate; unclean (not 503 + Retry-After)",
                    format!(
                        "{} / {}; {}",
                        num(&f["refused_503_by_balancer"]),
                        num(&f["refused_503_by_idgate"]),
                        num(&f["unclean_failures"])
                    ),
                );
            }
            let w = &f["writes"];
            if w.is_object() {
                push(
                    "Writes ok / failed / lost (`add`; `rebuild`)",
                    format!(
                        "{} / {} / {}; {} / {}",
                        num(&w["adds_succeeded"]),
                        num(&w["adds_failed"]),
                        w["lost"].as_array().map_or(0, Vec::len),
                        num(&w["rebuilds_succeeded"]),
                        num(&w["rebuilds_failed"])
                    ),
                );
                push(
                    "Failed but committed; unclean; first write back after routing; longest command",
                    format!(
                        "{}; {}; {}; {}",
                        num(&w["failed_but_committed"]),
                        num(&w["unclean"]),
                        ms(&w["first_write_back_after_routed_ms"]),
                        ms(&w["longest_command_ms"])
                    ),
                );
            }
        }
    }
    r
}

/// The set-up paragraph, with the settings the figures carry.
fn setup(scenarios: &BTreeMap<String, Value>) -> String {
    let any = scenarios.values().next().expect("at least one scenario");
    let clients = any["clients"].as_u64().unwrap_or(8);
    let mut settings = String::new();
    if let Some(r) = scenarios.get("rolling_restart") {
        let b = &r["balancer"];
        write!(
            settings,
            " (checks every {} ms, `fall` {}, `rise` {}; the replicas' `drain_ms` {})",
            num(&b["inter_ms"]),
            num(&b["fall"]),
            num(&b["rise"]),
            r["drain_ms"].as_f64().map_or("–".to_string(), |d| format!("{d:.0}"))
        )
        .unwrap();
    }
    format!(
        "Three PostgreSQL 15 nodes under Patroni with one etcd (synchronous replication, Patroni's `ttl` shortened \
         to 6 s so a failover takes ≈ 6 s instead of 10), HAProxy's `primary` and `replica` frontends checked on \
         Patroni's REST API; two `idgate serve` behind a second HAProxy in HTTP mode checked on `/readyz`{settings}; \
         {clients} clients on 4 agents sending the genuine AWS identity document, every answer checked against its \
         agent's token. All on loopback on this machine's cores, one scenario at a time; the scenarios assert only \
         the issue's targets (no failure where the standbys serve reads, only clean 503 + `Retry-After` otherwise, \
         no wrong token, nothing committed lost), never a timing.\n"
    )
}

/// The Markdown section.
fn render(scenarios: &BTreeMap<String, Value>) -> String {
    let mut names: Vec<&String> = scenarios.keys().collect();
    names.sort_by_key(|n| (ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()), n.as_str()));
    let newest = scenarios
        .values()
        .filter_map(|v| v["unix_time"].as_u64())
        .max()
        .unwrap_or(0);
    let mut s = format!("{HEADING}\n\n");
    writeln!(
        s,
        "Measured by `cargo xtask bench --topology` (the scenarios of `cargo xtask test --topology`, then \
         `idgate-bench topology-report target/topology/figures.jsonl`); last scenario finished {}.\n",
        idgate_plugin_kit::time::format_rfc3339(newest as i64)
    )
    .unwrap();
    s.push_str(&setup(scenarios));
    for name in names {
        let f = &scenarios[name];
        write!(s, "\n### {}\n\n| Figure | `{name}` |\n|---|---|\n", title(name)).unwrap();
        for (k, v) in rows(name, f) {
            writeln!(s, "| {k} | {v} |").unwrap();
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_the_section_or_inserts_it_before_charts() {
        let doc = "# B\n\n## A\n\na\n\n## Charts\n\nc\n";
        let once = splice(doc, "## Topology: x\n\nt\n\n");
        assert_eq!(once, "# B\n\n## A\n\na\n\n## Topology: x\n\nt\n\n## Charts\n\nc\n");
        let twice = splice(&once, "## Topology: y\n\nu\n\n");
        assert_eq!(twice, "# B\n\n## A\n\na\n\n## Topology: y\n\nu\n\n## Charts\n\nc\n");
    }
}
