//! The command line: `serve`, `verify`, `plugins`, and the database commands.

pub mod admin;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::authenticate::{AuthError, Authenticator};
use crate::config::{default_cache_dir, FileConfig};
use crate::db::{DatabaseKind, Db};
use crate::request::{parse_body, BodyError};
use crate::sandbox::{CallError, Sandbox};
use crate::settings::{CacheDir, Settings};

/// idgate authenticates cloud workspace agents by their machine's instance identity.
#[derive(Debug, Parser)]
#[command(name = "idgate", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "IDGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of plugin `.wasm` files [default: ~/.local/share/idgate/plugins].
    #[arg(long, global = true, env = "IDGATE_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Directory for compiled plugins [default: ~/.cache/idgate; without a
    /// usable home, none: plugins are compiled in memory].
    #[arg(long, global = true, env = "IDGATE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// PostgreSQL URL; without one idgate runs its own embedded cluster.
    #[arg(long, global = true, env = "IDGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL URL for `idgate serve`'s resolutions only (a read replica);
    /// registration and migrations stay on `--database-url`.
    #[arg(long, global = true, env = "IDGATE_DATABASE_READ_URL")]
    pub database_read_url: Option<String>,
    /// Which kind of database --database-url is: `idgate` (idgate's own,
    /// migrated), `coder` (a Coder database, only read) or `auto` (recognised
    /// by its migration history) [default: auto].
    #[arg(long, global = true, env = "IDGATE_DATABASE_KIND", value_enum)]
    pub database_kind: Option<DatabaseKind>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify one request body (read from stdin) and print the identity as JSON.
    Verify(VerifyArgs),
    /// List the loaded plugins (with `--trust`, what each trusts and until when).
    Plugins(PluginsArgs),
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// Register and list agents.
    #[command(subcommand)]
    Agents(admin::AgentsCommand),
    /// Rebuild or delete workspaces.
    #[command(subcommand)]
    Workspaces(admin::WorkspacesCommand),
}

/// `idgate plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Also configure each plugin and list the certificates it trusts
    /// (built-in and configured) with their notAfter, marking those current
    /// chains need; exits 1 if any current one expires within
    /// `trust_warning_days`.
    #[arg(long)]
    pub trust: bool,
}

/// `idgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address [default: 127.0.0.1:3000].
    #[arg(long, env = "IDGATE_LISTEN")]
    pub listen: Option<String>,
    /// TLS certificate chain, PEM, leaf first (`[tls] cert_file`); with
    /// `--tls-key-file`, `serve` speaks HTTPS (HTTP/2 and HTTP/1.1).
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key, PEM (`[tls] key_file`).
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
}

/// `idgate verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Mount: aws, azure, gcp, a drop-in plugin's name, or a `[mounts.NAME]`.
    pub provider: String,
    /// Verification time (RFC 3339) instead of now, e.g. for an old credential.
    #[arg(long)]
    pub at: Option<String>,
}

/// Runs the command line; the exit code is 0 on success, 1 when a credential is
/// refused, 2 on usage and configuration errors.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        // Before the runtime's threads exist: see `descriptors`.
        if let Err(e) = crate::descriptors::prepare(crate::descriptors::SERVE_TABLE) {
            eprintln!("idgate: warning: could not prepare file descriptors: {e}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(2, &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(2, &format!("{e:#}")),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("idgate: {message}");
    ExitCode::from(code)
}

/// Resolves the global options: flags (and their `IDGATE_*` variables) win over
/// the config file, which wins over the defaults.
fn resolve_settings(global: &GlobalArgs) -> anyhow::Result<Settings> {
    let file = FileConfig::load_with_env(global.config.as_deref(), std::env::vars())?;
    let plugins = global
        .plugins
        .clone()
        .or_else(|| file.host.plugins.clone())
        .unwrap_or_else(default_plugin_dir);
    let cache_dir = match global.cache_dir.clone().or_else(|| file.host.cache_dir.clone()) {
        Some(dir) => CacheDir::Configured(dir),
        None => default_cache_dir().map_or(CacheDir::None, CacheDir::Default),
    };
    let database_url = global.database_url.clone().or_else(|| file.host.database_url.clone());
    let database_read_url = global
        .database_read_url
        .clone()
        .or_else(|| file.host.database_read_url.clone());
    let database_kind = global.database_kind.or(file.host.database_kind).unwrap_or_default();
    Ok(Settings {
        file,
        plugins,
        cache_dir,
        database_url,
        database_read_url,
        database_kind,
    })
}

/// `--tls-cert-file` and `--tls-key-file` win over `[tls]` (and its
/// `IDGATE_TLS_*` variables).
fn with_tls_flags(settings: &mut Settings, (cert, key): &(Option<PathBuf>, Option<PathBuf>)) {
    let tls = &mut settings.file.host.tls;
    tls.cert_file = cert.clone().or(tls.cert_file.take());
    tls.key_file = key.clone().or(tls.key_file.take());
}

fn default_plugin_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("idgate/plugins")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = resolve_settings(&cli.global)?;
    crate::logging::init(settings.file.host.log_format.as_deref());
    match cli.command {
        Command::Serve(args) => {
            let flags = (args.tls_cert_file, args.tls_key_file);
            with_tls_flags(&mut settings, &flags);
            // A reload resolves the settings as start-up did: the same flags
            // and environment, the file as it is then.
            let global = cli.global;
            let read: crate::reload::ReadSettings = Box::new(move || {
                let mut settings = resolve_settings(&global)?;
                with_tls_flags(&mut settings, &flags);
                Ok(settings)
            });
            crate::serve::serve(&settings, args.listen, read).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            admin::run_migrate(settings.database_url.as_deref(), settings.pool_settings()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents(cmd) => {
            let db = Db::open(settings.database_url.as_deref(), settings.pool_settings()).await?;
            let result = admin::run_agents(&db, cmd).await;
            db.close().await;
            result.map(|()| ExitCode::SUCCESS)
        }
        Command::Workspaces(cmd) => {
            let db = Db::open(settings.database_url.as_deref(), settings.pool_settings()).await?;
            let result = admin::run_workspaces(&db, cmd).await;
            db.close().await;
            result.map(|()| ExitCode::SUCCESS)
        }
        Command::Verify(args) => verify(&settings, args).await,
        Command::Plugins(args) => list_plugins(&settings, &args),
    }
}

/// `idgate plugins`: every plugin with the full digest to pin and whether the
/// configured pins accept it. It loads without enforcing the pins (the point is to
/// learn the digests), but with the directory checks.
fn list_plugins(settings: &Settings, args: &PluginsArgs) -> anyhow::Result<ExitCode> {
    let pins = settings.pins()?;
    let sandbox = Sandbox::load(
        &settings.plugins,
        settings.cache_dir().as_deref(),
        settings.file.host.sandbox.limits(),
    )?;
    for p in sandbox.plugins() {
        let status = match pins.get(&p.provider) {
            Some(pin) if pin == p.sha256 => "pinned",
            Some(_) => "PIN MISMATCH",
            None if pins.is_empty() => "unpinned",
            None => "NOT PINNED (refused while pins are configured)",
        };
        println!(
            "{:<12} contract {}  sha256 {}  {}  {}{}",
            p.provider,
            p.contract,
            p.sha256,
            status,
            p.path.display(),
            if p.cached { "  (cached)" } else { "" }
        );
    }
    if args.trust {
        return list_trust(settings);
    }
    Ok(ExitCode::SUCCESS)
}

/// `idgate plugins --trust`: every configured plugin's trust anchors, then the
/// expiry warnings `/readyz` would give.
fn list_trust(settings: &Settings) -> anyhow::Result<ExitCode> {
    use idgate_plugin_kit::time::format_rfc3339;
    let auth = Authenticator::new(Arc::new(settings.sandbox()?), &settings.file)?;
    for (provider, configured) in auth.configured() {
        println!();
        let anchors = configured.trust();
        if anchors.is_empty() {
            println!("{provider}: no certificates (it trusts keys, or its certificates only carry keys)");
            continue;
        }
        println!("{provider}:");
        for a in anchors {
            println!(
                "  {:<12} {:<10} {:<8} notAfter {}  {}",
                a.role,
                a.origin,
                if a.current { "current" } else { "historic" },
                format_rfc3339(a.not_after),
                a.subject
            );
        }
    }
    let warnings = crate::expiry::warnings(&auth, crate::clock::unix_now());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn verify(settings: &Settings, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let now = match &args.at {
        Some(at) => idgate_plugin_kit::time::parse_rfc3339(at)
            .with_context(|| format!("--at {at:?} is not an RFC 3339 time (e.g. 2022-04-19T03:00:00Z)"))?,
        None => crate::clock::unix_now(),
    };
    let sandbox = Arc::new(settings.sandbox()?);
    let mut body = Vec::new();
    std::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut body)
        .context("reading the request body from stdin")?;
    let parsed = match parse_body(&args.provider, &body) {
        Ok(p) => p,
        Err(BodyError::InvalidJson(e)) => return Ok(fail(1, &format!("request body must be valid JSON: {e}"))),
        Err(BodyError::Validation(v)) => {
            let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
            return Ok(fail(1, &format!("validation failed: missing or empty {fields:?}")));
        }
    };
    // A configuration a plugin refuses is an operator error, like a bad flag.
    let auth = match Authenticator::new(sandbox.clone(), &settings.file) {
        Ok(auth) => auth,
        Err(e) => return Ok(fail(2, &format!("{e:#}"))),
    };
    if !auth.configured().any(|(mount, _)| mount == args.provider) && !auth.unconfigured().contains_key(&args.provider)
    {
        anyhow::bail!(
            "nothing is mounted as {:?} (plugins in {}: {:?}; mounts: {:?})",
            args.provider,
            settings.plugins.display(),
            sandbox.plugins().iter().map(|p| p.provider.clone()).collect::<Vec<_>>(),
            auth.configured().map(|(m, _)| m.to_string()).collect::<Vec<_>>()
        );
    }
    match auth.verify(&args.provider, parsed.credential, now).await {
        Ok(identity) => {
            let attributes: serde_json::Map<String, serde_json::Value> = identity
                .attributes
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let out = serde_json::json!({
                "provider": args.provider,
                "instance_id": identity.instance_id,
                "attributes": attributes,
                "agent_name": parsed.agent_name,
                "verified_at": idgate_plugin_kit::time::format_rfc3339(now),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(AuthError::Call(CallError::Rejected(e @ idgate_plugin_kit::VerifyError::BadConfig(_)))) => {
            Ok(fail(2, &e.to_string()))
        }
        Err(e) => Ok(fail(1, &e.to_string())),
    }
}
