//! Section: the agent side. What one `idgate-agent token` run adds over the
//! server's own time for the same exchange: rounds alternate between a bare
//! one-shot POST of the genuine AWS body (a fresh connection, as a booting
//! agent makes) and the release `idgate-agent` binary doing the whole job —
//! process start, IMDSv2 on a loopback stand-in (token, document, signature),
//! the POST, the token on stdout — against the same server and agents.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use idgate::config::FileConfig;
use idgate::db::registry::{add_agent, NewAgent};

/// The IMDSv2 stand-in the integration tests use (std only, so included, not depended on).
#[path = "../../tests/support/imds.rs"]
mod imds;

use crate::cluster::BenchCluster;
use crate::http_load::{serve_idgate, state};
use crate::stats::{fmt, side_by_side};
use crate::{Env, Http};

/// The genuine AWS document's instance (examples/aws-request.json).
const INSTANCE: &str = "i-076e9b91f7c420782";

/// Runs the section: its Markdown.
pub fn run(rt: &tokio::runtime::Runtime, pg: &BenchCluster, http: &Http, env: &Env) -> anyhow::Result<String> {
    // `plugin_dir` is `<target>/test-plugins`.
    let target = env.plugin_dir.parent().unwrap_or(Path::new("target"));
    let agent = target.join("release/idgate-agent");
    anyhow::ensure!(
        agent.is_file(),
        "{} is missing (cargo xtask bench builds it)",
        agent.display()
    );
    let base = rt.block_on(async {
        let pool = pg.open(10).await?;
        for name in ["main", "dev"] {
            let agent = NewAgent {
                workspace: "agent-bench",
                instance_id: INSTANCE,
                name,
                parent: None,
            };
            add_agent(&pool, &agent).await?;
        }
        serve_idgate(state(http.sandbox.clone(), &FileConfig::default(), pool)?).await
    })?;
    let data = env.root.join("tests/data/aws");
    let document = std::fs::read_to_string(data.join("coder_iid_document.json"))?;
    let signature = std::fs::read_to_string(data.join("coder_iid_signature.b64"))?;
    let body = serde_json::json!({"document": document, "signature": signature, "agent_name": "dev"}).to_string();
    let imds = imds::serve(document, signature)?;
    let addr = base.trim_start_matches("http://").to_string();

    let post = || {
        let answer = one_shot_post(&addr, &body).expect("the server answers");
        assert!(answer.contains("session_token"), "{answer}");
    };
    let exchange = || {
        let out = Command::new(&agent)
            .args(["token", "--auth", "aws-instance-identity", "--agent-name", "dev"])
            .args(["--agent-url", &base, "--metadata-url", &imds])
            .env_remove("CODER_AGENT_NAME")
            .stdin(Stdio::null())
            .output()
            .expect("idgate-agent runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Warm both: the plugin's first call, the binary in the page cache.
    post();
    exchange();
    let (alone, whole) = side_by_side(7, 30, post, exchange);
    let added = whole.median.saturating_sub(alone.median);
    let size = std::fs::metadata(&agent)?.len();
    let mut md = String::new();
    writeln!(md, "## The agent side: one `idgate-agent` exchange\n")?;
    writeln!(
        md,
        "Rounds alternate (7 × 30 calls): a bare one-shot POST of the genuine AWS body over a fresh \
         connection, and the release `idgate-agent token --auth aws-instance-identity --agent-name dev` \
         doing the whole job (process start, IMDSv2 token, document and signature from a loopback \
         stand-in, the POST, the token on stdout) against the same in-process server. Medians of the \
         per-round medians (min–max).\n"
    )?;
    writeln!(md, "| | per exchange |\n|---|---|")?;
    writeln!(md, "| the server's own time (bare POST) | {} |", alone.show())?;
    writeln!(md, "| `idgate-agent token`, end to end | {} |", whole.show())?;
    writeln!(md, "| **added by the agent** | **{}** (target ≤ 5 ms) |\n", fmt(added))?;
    writeln!(
        md,
        "The binary measured: {:.2} MiB ({} bytes, release, unstripped).\n",
        size as f64 / 1048576.0,
        size
    )?;
    Ok(md)
}

/// One POST on a fresh connection (`Connection: close`): the answer's text.
fn one_shot_post(addr: &str, body: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
