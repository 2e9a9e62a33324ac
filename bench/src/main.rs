//! idgate's benchmarks. Every comparison is measured side by side in one run
//! (rounds alternate between the two sides), reported as medians with their
//! spread, and as a ratio: this machine is noisy and absolute times drift.
//!
//! Run with `cargo xtask bench` (release build, plugins built first); it writes
//! `BENCHMARKS.md` at the workspace root.

mod sandbox_costs;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;

/// Paths the benchmarks need.
pub struct Env {
    /// Workspace root.
    pub root: PathBuf,
    /// Plugins and fixtures built by `cargo xtask plugins`.
    pub plugin_dir: PathBuf,
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let env = Env {
        plugin_dir: target.join("test-plugins"),
        root,
    };
    let mut report = String::new();
    let _ = writeln!(report, "# idgate benchmarks\n");
    let _ = writeln!(
        report,
        "Written by `cargo xtask bench` on {} ({} cores; `{}`). Every figure is a median over rounds that \
         alternate between the compared sides, with the spread (min–max of the round medians); compare the \
         ratios, not the absolute times, which drift on a shared machine.\n",
        idgate_plugin_kit::time::format_rfc3339(idgate::cli::unix_now()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH,
    );
    let section = sandbox_costs::run(&env);
    print!("{section}");
    report.push_str(&section);
    let out = env.root.join("BENCHMARKS.md");
    std::fs::write(&out, report).expect("writing BENCHMARKS.md");
    eprintln!("wrote {}", out.display());
}
