//! idgate's configuration file (TOML). Host settings are top-level keys and
//! tables; every other table is a provider block (`[aws]`, `[azure]`, `[gcp]`, or a
//! drop-in plugin's name) handed to that plugin's `configure` as JSON once, at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::db::DatabaseKind;
use crate::sandbox::Limits;

/// The parsed configuration file.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// Host settings.
    pub host: HostConfig,
    /// Provider blocks by provider name, as JSON objects.
    pub providers: BTreeMap<String, serde_json::Value>,
}

/// Top-level host keys; every one can also be set by a flag or `IDGATE_*` variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Listen address of `idgate serve`.
    pub listen: Option<String>,
    /// PostgreSQL URL; absent means the embedded cluster.
    pub database_url: Option<String>,
    /// PostgreSQL URL for resolutions only (a read replica); absent means `database_url`.
    pub database_read_url: Option<String>,
    /// Which kind of database `database_url` is (`auto`, `idgate`, `coder`).
    pub database_kind: Option<DatabaseKind>,
    /// Directory of plugin `.wasm` files.
    pub plugins: Option<PathBuf>,
    /// Directory for compiled plugins.
    pub cache_dir: Option<PathBuf>,
    /// Log format: `pretty` or `json`.
    pub log_format: Option<String>,
    /// Sandbox limits.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// HTTP and database limits.
    #[serde(default)]
    pub limits: ServeLimits,
    /// `[tls]`: the certificate `idgate serve` terminates TLS with.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[plugin_sha256]`: provider → full hex SHA-256 of the only `.wasm` that may
    /// serve it. With any entry, unpinned or mismatching plugins are refused.
    #[serde(default)]
    pub plugin_sha256: BTreeMap<String, String>,
    /// `[issuers]`: where issuer certificates may be fetched from for plugins.
    #[serde(default)]
    pub issuers: crate::issuers::IssuersConfig,
    /// `[mounts.<name>]`: a plugin (`plugin = "<provider>"`) mounted again under
    /// `<name>`, the table's other keys its block (see `mounts.rs`).
    #[serde(default)]
    pub mounts: BTreeMap<String, serde_json::Value>,
    /// Days before the earliest `notAfter` of a provider's current trust
    /// material at which `/readyz` starts warning (default 30).
    pub trust_warning_days: Option<u64>,
}

/// `[sandbox]`: per-call limits for plugins.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Memory cap of one plugin call, MiB (default 64).
    pub memory_mib: Option<usize>,
    /// CPU deadline of one plugin call, ms (default 500).
    pub deadline_ms: Option<u64>,
    /// Plugin calls running at once (default: number of cores).
    pub max_concurrent: Option<usize>,
    /// Use wasmtime's pooling allocator for instance memory (default: see `Limits`).
    pub pooling: Option<bool>,
}

impl SandboxConfig {
    /// The sandbox limits, defaults filled in.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            memory_bytes: self.memory_mib.map_or(d.memory_bytes, |m| m << 20),
            deadline: self.deadline_ms.map_or(d.deadline, Duration::from_millis),
            max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent),
            pooling: self.pooling.unwrap_or(d.pooling),
            ..d
        }
    }
}

/// `[limits]`: request and database limits of `idgate serve`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeLimits {
    /// Largest request body, bytes (default 65536).
    pub max_body_bytes: Option<usize>,
    /// Whole-request timeout, ms (default 10000).
    pub request_timeout_ms: Option<u64>,
    /// Database pool size (default 10).
    pub db_max_connections: Option<u32>,
    /// How long a request waits for a pooled connection before 503, ms (default 2000).
    pub db_acquire_timeout_ms: Option<u64>,
    /// How long a connection may take to deliver a request head (and, with TLS, to
    /// finish the handshake), ms (default 10000).
    pub header_timeout_ms: Option<u64>,
    /// How long a keep-alive connection may wait for its next request, ms (default 30000).
    pub idle_timeout_ms: Option<u64>,
    /// Largest request head (request line and headers), bytes (default 16384).
    pub max_head_bytes: Option<usize>,
    /// Connections served at once (default: derived from the descriptor limit).
    pub max_connections: Option<usize>,
    /// How long SIGTERM/SIGINT waits for open connections before closing them, ms
    /// (default: the request timeout).
    pub shutdown_grace_ms: Option<u64>,
    /// How long `serve` goes on serving after SIGTERM/SIGINT, `/readyz` failing,
    /// before it stops accepting, ms (default 10000; 0 stops accepting at once).
    pub drain_ms: Option<u64>,
}

/// `[tls]`: PEM files `idgate serve` terminates TLS with; both or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first (PEM).
    pub cert_file: Option<PathBuf>,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

const HOST_KEYS: &[&str] = &[
    "listen",
    "database_url",
    "database_read_url",
    "database_kind",
    "plugins",
    "cache_dir",
    "log_format",
    "sandbox",
    "limits",
    "tls",
    "plugin_sha256",
    "issuers",
    "trust_warning_days",
    "mounts",
];

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        Self::from_table(text.parse()?)
    }

    /// Reads `path` (if any), then overlays `IDGATE_*` environment variables:
    /// `IDGATE_LISTEN`, `IDGATE_LOG_FORMAT`, `IDGATE_SANDBOX_DEADLINE_MS`,
    /// `IDGATE_LIMITS_MAX_BODY_BYTES`, ... for host keys and
    /// `IDGATE_<PROVIDER>_<KEY>` (e.g. `IDGATE_GCP_AUDIENCE`) for provider keys,
    /// `IDGATE_PLUGIN_SHA256_<PROVIDER>` for pins.
    /// Values are read as TOML values (`5`, `true`, `["a","b"]`), else as strings.
    /// The variables behind command-line flags (`IDGATE_CONFIG`, `IDGATE_PLUGINS`,
    /// `IDGATE_CACHE_DIR`, `IDGATE_DATABASE_URL`, `IDGATE_DATABASE_READ_URL`,
    /// `IDGATE_DATABASE_KIND`) are left to the flags.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<FileConfig> {
        let mut table: toml::Table = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?
                .parse()
                .with_context(|| format!("in config file {}", path.display()))?,
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(key) = name.strip_prefix("IDGATE_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // Flags own these; IDGATE_DATA_DIR places the embedded cluster.
            if [
                "config",
                "plugins",
                "cache_dir",
                "database_url",
                "database_read_url",
                "database_kind",
                "data_dir",
            ]
            .contains(&key.as_str())
            {
                continue;
            }
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            // Provider names use '-', which variable names cannot: `_` stands for it.
            let pinned = key.strip_prefix("plugin_sha256_").map(|p| p.replace('_', "-"));
            let (section, field) = match key.split_once('_') {
                _ if HOST_KEYS.contains(&key.as_str()) => (None, key.as_str()),
                _ if pinned.is_some() => (Some("plugin_sha256"), pinned.as_deref().unwrap_or_default()),
                Some((section, field)) => (Some(section), field),
                None => bail!("environment variable {name} names no setting"),
            };
            match section {
                None => {
                    table.insert(field.to_string(), value);
                }
                Some(section) => {
                    let block = table
                        .entry(section.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let toml::Value::Table(block) = block else {
                        bail!("{name}: {section} is not a table");
                    };
                    block.insert(field.to_string(), value);
                }
            }
        }
        Self::from_table(table).context("in the configuration (file and IDGATE_* variables)")
    }

    fn from_table(table: toml::Table) -> anyhow::Result<FileConfig> {
        let mut host = toml::Table::new();
        let mut providers = BTreeMap::new();
        for (key, value) in table {
            if HOST_KEYS.contains(&key.as_str()) {
                host.insert(key, value);
            } else if let toml::Value::Table(block) = value {
                providers.insert(key, serde_json::to_value(block)?);
            } else {
                bail!("unknown key {key:?}: host keys are {HOST_KEYS:?}; provider settings go in a [provider] table");
            }
        }
        Ok(FileConfig {
            host: toml::Value::Table(host).try_into()?,
            providers,
        })
    }

    /// The provider block for `provider` (`{}` when absent).
    pub fn provider(&self, provider: &str) -> serde_json::Value {
        self.providers
            .get(provider)
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
    }
}

/// Where compiled plugins are cached by default: `$XDG_CACHE_HOME/idgate` or
/// `~/.cache/idgate`, when that base is an absolute path to an existing
/// directory. Otherwise there is no default: never one under a shared
/// directory such as `/tmp` (others could plant entries there), so without a
/// home and without `cache_dir` plugins are compiled in memory at each start.
pub fn default_cache_dir() -> Option<PathBuf> {
    let usable = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|d| d.is_absolute() && d != Path::new("/") && d.is_dir())
    };
    usable("XDG_CACHE_HOME")
        .map(|d| d.join("idgate"))
        .or_else(|| usable("HOME").map(|h| h.join(".cache/idgate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_and_provider_blocks() {
        let c = FileConfig::parse(
            r#"
            listen = "127.0.0.1:9000"
            database_read_url = "postgres://idgate@standby/coder"
            database_kind = "coder"
            [sandbox]
            deadline_ms = 250
            [aws]
            allowed_accounts = ["1"]
            [aws.certificates]
            "us-east-1" = "PEM"
            [gcp]
            audience = "coder"
            "#,
        )
        .unwrap();
        assert_eq!(c.host.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(
            c.host.database_read_url.as_deref(),
            Some("postgres://idgate@standby/coder")
        );
        assert!(!c.providers.contains_key("database_read_url"));
        assert_eq!(c.host.database_kind, Some(DatabaseKind::Coder));
        assert_eq!(c.host.sandbox.limits().deadline, Duration::from_millis(250));
        assert_eq!(c.provider("aws")["certificates"]["us-east-1"], "PEM");
        assert_eq!(c.provider("azure"), serde_json::json!({}));
    }

    #[test]
    fn environment_overlays_the_file() {
        let env = [
            ("IDGATE_LISTEN", "0.0.0.0:1"),
            ("IDGATE_SANDBOX_DEADLINE_MS", "99"),
            ("IDGATE_GCP_AUDIENCE", "my-aud"),
            ("IDGATE_AWS_ALLOWED_ACCOUNTS", r#"["1", "2"]"#),
            ("IDGATE_PLUGINS", "/ignored/here"),
            ("IDGATE_PLUGIN_SHA256_AWS", "ab"),
            ("IDGATE_PLUGIN_SHA256_MY_CLOUD", "cd"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = FileConfig::load_with_env(None, env).unwrap();
        assert_eq!(c.host.listen.as_deref(), Some("0.0.0.0:1"));
        assert_eq!(c.host.sandbox.deadline_ms, Some(99));
        assert_eq!(c.provider("gcp")["audience"], "my-aud");
        assert_eq!(c.provider("aws")["allowed_accounts"], serde_json::json!(["1", "2"]));
        assert_eq!(c.host.plugins, None);
        assert_eq!(c.host.plugin_sha256["aws"], "ab");
        assert_eq!(c.host.plugin_sha256["my-cloud"], "cd");
        assert!(!c.providers.contains_key("plugin"));
    }

    #[test]
    fn plugin_pins_are_a_host_table() {
        let c = FileConfig::parse("[plugin_sha256]\naws = \"00ff\"\n").unwrap();
        assert_eq!(c.host.plugin_sha256["aws"], "00ff");
        assert!(c.providers.is_empty());
    }

    #[test]
    fn edge_limits_and_tls_files() {
        let env = [
            ("IDGATE_LIMITS_HEADER_TIMEOUT_MS", "2000"),
            ("IDGATE_TLS_CERT_FILE", "/etc/idgate/cert.pem"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = FileConfig::load_with_env(None, env).unwrap();
        assert_eq!(c.host.limits.header_timeout_ms, Some(2000));
        assert_eq!(c.host.tls.cert_file.as_deref(), Some(Path::new("/etc/idgate/cert.pem")));
        assert!(c.providers.is_empty(), "[tls] is a host table, not a provider block");
        assert!(FileConfig::parse("[tls]\ncert = \"x\"").is_err());
    }

    #[test]
    fn typos_are_errors() {
        assert!(FileConfig::parse("listn = \"x\"").is_err());
        assert!(FileConfig::parse("[sandbox]\ndeadline = 5").is_err());
    }
}
