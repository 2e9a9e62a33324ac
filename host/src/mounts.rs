//! Mounts: what the host serves. A mount is a name, a plugin and a
//! configuration (Vault's auth mounts are the model): it has its own route
//! (`POST /api/v2/workspaceagents/<mount>-instance-identity`), its own
//! configured snapshot, key cache, metrics label and audit provider.
//!
//! - Every loaded plugin is mounted under its own provider name, configured
//!   with the `[<provider>]` block (or `{}`), unless the file has no such block
//!   and mounts the plugin elsewhere (`[mounts.<name>] plugin = "<provider>"`).
//! - `[mounts.<name>]` mounts a plugin again under another name, with the
//!   table's other keys as its block: two clusters, two issuers, one plugin.
//!
//! Every mount resolves instance IDs in its own **namespace** ([`Namespace`]):
//! a mount other than Coder's three hands resolution `<prefix>:<instance id>`,
//! the prefix its name unless `instance_id_prefix` says otherwise, so no mount
//! can name another's instances (an OIDC issuer's users may influence its
//! `sub`; a cloud's instance IDs are signed). Coder's three keep raw IDs, as
//! Coder's databases hold them. Two mounts share a namespace only when the
//! operator set the same `instance_id_prefix` on both; the raw one (`""`) only
//! for mounts of the plugins behind Coder's three, whose IDs the clouds sign.
//! Any other overlap is refused, naming both mounts.
//!
//! [`CODER_ROUTES`] is the only place in the host that names a provider: Coder's
//! three endpoints keep their paths (`google-instance-identity` serves `gcp`),
//! their messages ("Invalid AWS identity.") and their required fields, and GCP
//! keeps Google's key set as its default key source.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{Map, Value};

use crate::config::FileConfig;
use crate::go_json::GoStruct;

/// Path segment suffix every mount's endpoint ends with.
pub const PATH_SUFFIX: &str = "-instance-identity";

/// Block keys the host keeps for itself: never passed to a plugin.
pub const HOST_BLOCK_KEYS: [&str; 6] = [
    "plugin",
    "display_name",
    "instance_id_prefix",
    "jwks_url",
    "jwks_file",
    "jwks_min_refresh_secs",
];

/// One of Coder's endpoints, as Coder's agents and messages know it.
#[derive(Debug, Clone, Copy)]
pub struct CoderRoute {
    /// The mount (and built-in plugin) it serves.
    pub mount: &'static str,
    /// Path segment under `/api/v2/workspaceagents/`.
    pub path: &'static str,
    /// The cloud's name in Coder's messages (`Invalid AWS identity.`).
    pub display: &'static str,
    /// Coder's request struct: every field is a Go `string`.
    pub body: GoStruct,
    /// Its `validate:"required"` fields, in declaration order (the order of
    /// Coder's `validations`).
    pub required: &'static [&'static str],
    /// A field that, when given, stands in for every required one (idgate's
    /// AWS `pkcs7`, which carries the document).
    pub stands_in: Option<&'static str>,
    /// Where the host fetches this provider's keys when the block names none.
    pub default_key_source: Option<&'static str>,
}

/// Coder's three endpoints.
pub const CODER_ROUTES: [CoderRoute; 3] = [
    CoderRoute {
        mount: "aws",
        path: "aws-instance-identity",
        display: "AWS",
        // `pkcs7` is idgate's: the IMDS PKCS#7, instead of or beside `signature`.
        body: GoStruct {
            type_name: "agentsdk.AWSInstanceIdentityToken",
            fields: &["signature", "document", "agent_name", "pkcs7"],
        },
        required: &["signature", "document"],
        stands_in: Some("pkcs7"),
        default_key_source: None,
    },
    CoderRoute {
        mount: "azure",
        path: "azure-instance-identity",
        display: "Azure",
        body: GoStruct {
            type_name: "agentsdk.AzureInstanceIdentityToken",
            fields: &["signature", "encoding", "agent_name"],
        },
        required: &["signature", "encoding"],
        stands_in: None,
        default_key_source: None,
    },
    CoderRoute {
        mount: "gcp",
        path: "google-instance-identity",
        display: "GCP",
        body: GoStruct {
            type_name: "agentsdk.GoogleInstanceIdentityToken",
            fields: &["json_web_token", "agent_name"],
        },
        required: &["json_web_token"],
        stands_in: None,
        default_key_source: Some("https://www.googleapis.com/oauth2/v3/certs"),
    },
];

/// Coder's route for `mount`, if it is one of Coder's three.
pub fn coder_route(mount: &str) -> Option<&'static CoderRoute> {
    CODER_ROUTES.iter().find(|r| r.mount == mount)
}

/// The path segment `mount` is served at.
pub fn path_of(mount: &str) -> String {
    match coder_route(mount) {
        Some(r) => r.path.to_string(),
        None => format!("{mount}{PATH_SUFFIX}"),
    }
}

/// The mount a path segment names, if it names one (whether or not it is
/// mounted): Coder's paths first, then `<mount>-instance-identity`.
pub fn mount_of_path(segment: &str) -> Option<&str> {
    if let Some(r) = CODER_ROUTES.iter().find(|r| r.path == segment) {
        return Some(r.mount);
    }
    segment.strip_suffix(PATH_SUFFIX).filter(|m| valid_name(m))
}

/// Mount and provider names: lower-case letters, digits and `-`, not empty.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One mount to configure.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    /// The mount's name: its route, metrics label and audit provider.
    pub name: String,
    /// The provider name of the plugin it runs.
    pub plugin: String,
    /// The block as written (host keys included; see [`plugin_block`]).
    pub block: Value,
    /// Whether the operator wrote the block (a refusal then stops start-up).
    pub written: bool,
    /// The name in messages ("Invalid <display> identity.").
    pub display: String,
    /// Where its instance IDs are resolved.
    pub namespace: Namespace,
}

/// Where a mount's instance IDs are resolved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Namespace {
    /// As the plugin returns them: Coder's three clouds, whose IDs are signed
    /// and of disjoint shapes (`i-…`, a UUID, a number).
    Raw,
    /// `<prefix>:<id>`; a prefix is a valid mount name, so it holds no `:` and
    /// the first `:` of a namespaced ID ends it.
    Prefixed(String),
}

impl Namespace {
    /// The ID resolution looks up for the plugin's `instance_id`.
    pub fn apply(&self, instance_id: &str) -> String {
        match self {
            Namespace::Raw => instance_id.to_string(),
            Namespace::Prefixed(prefix) => format!("{prefix}:{instance_id}"),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespace::Raw => f.write_str("the raw namespace"),
            Namespace::Prefixed(p) => write!(f, "namespace {p:?}"),
        }
    }
}

/// A mount's namespace: its `instance_id_prefix`, else raw for Coder's three
/// and its name for any other. Errors: a prefix that is not a mount name, or
/// the raw one for a plugin whose IDs no cloud signs.
fn namespace(name: &str, plugin: &str, block: &Value) -> anyhow::Result<Namespace> {
    match block.get("instance_id_prefix") {
        None => Ok(match coder_route(name) {
            Some(route) if route.mount == plugin => Namespace::Raw,
            _ => Namespace::Prefixed(name.to_string()),
        }),
        Some(Value::String(p)) if p.is_empty() => {
            if coder_route(plugin).is_none() {
                bail!(
                    "[mounts.{name}] instance_id_prefix = \"\": only a mount of one of Coder's three plugins \
                     (aws, azure, gcp: their instance IDs are cloud-signed) may resolve raw instance IDs"
                );
            }
            Ok(Namespace::Raw)
        }
        Some(Value::String(p)) if valid_name(p) => Ok(Namespace::Prefixed(p.clone())),
        Some(other) => bail!(
            "mount {name:?}: instance_id_prefix must be lower-case letters, digits and '-' (or \"\"), not {other}"
        ),
    }
}

/// Refuses two mounts in one namespace unless the operator put both there:
/// the same `instance_id_prefix` on each, or raw IDs from Coder's plugins.
fn check_namespaces(specs: &BTreeMap<String, MountSpec>) -> anyhow::Result<()> {
    let chosen = |m: &MountSpec| m.block.get("instance_id_prefix").is_some();
    let mut owner: BTreeMap<&Namespace, &str> = BTreeMap::new();
    for (name, spec) in specs {
        let Some(first) = owner.insert(&spec.namespace, name) else {
            continue;
        };
        // Raw is reachable only by Coder's plugins (see `namespace`).
        let both_chose = spec.namespace == Namespace::Raw || (chosen(spec) && chosen(&specs[first]));
        if !both_chose {
            bail!(
                "mounts {first:?} and {name:?} would both resolve in {}: either could claim the other's \
                 instances. Give one another name or instance_id_prefix, or set the same \
                 instance_id_prefix on both if they are meant to share agents",
                spec.namespace
            );
        }
    }
    Ok(())
}

/// The mounts `file` asks for, given the providers of the loaded plugins.
/// A mount whose plugin is not loaded is returned too (its plugin name is not
/// in `loaded`): the caller reports it. Errors: a bad mount name, a mount
/// table without `plugin`, or a mount name another mount already uses.
pub fn mounts(file: &FileConfig, loaded: &[String]) -> anyhow::Result<Vec<MountSpec>> {
    let mut out: BTreeMap<String, MountSpec> = BTreeMap::new();
    for (name, table) in &file.host.mounts {
        if !valid_name(name) {
            bail!("[mounts.{name}]: a mount name is lower-case letters, digits and '-'");
        }
        let Some(Value::String(plugin)) = table.get("plugin") else {
            bail!("[mounts.{name}] needs plugin = \"<provider of the plugin to run>\"");
        };
        if file.providers.contains_key(name) {
            bail!("[mounts.{name}] and [{name}] both configure mount {name:?}: keep one");
        }
        out.insert(name.clone(), spec(name, plugin, table.clone(), true)?);
    }
    for provider in loaded {
        let block = file.providers.get(provider);
        let mounted_elsewhere = out.values().any(|m| &m.plugin == provider);
        if block.is_none() && mounted_elsewhere {
            continue;
        }
        if out.contains_key(provider) {
            bail!("[mounts.{provider}] takes the name of the {provider:?} plugin's own mount: name it otherwise");
        }
        let block = block.cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let written = file.providers.contains_key(provider);
        out.insert(provider.clone(), spec(provider, provider, block, written)?);
    }
    // A block for a plugin that is not loaded is still a mount the operator
    // asked for: the caller reports it (`/readyz`), it is not silently dropped.
    for (name, block) in &file.providers {
        if !out.contains_key(name) {
            out.insert(name.clone(), spec(name, name, block.clone(), true)?);
        }
    }
    check_namespaces(&out)?;
    Ok(out.into_values().collect())
}

fn spec(name: &str, plugin: &str, block: Value, written: bool) -> anyhow::Result<MountSpec> {
    let namespace = namespace(name, plugin, &block)?;
    let display = block
        .get("display_name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| coder_route(name).map(|r| r.display.to_string()))
        .unwrap_or_else(|| name.to_string());
    Ok(MountSpec {
        name: name.to_string(),
        plugin: plugin.to_string(),
        block,
        written,
        display,
        namespace,
    })
}

/// The block a mount's plugin is configured with: the written block without
/// the host's own keys ([`HOST_BLOCK_KEYS`]: key sources, display name, plugin).
pub fn plugin_block(mut block: Value) -> Value {
    if let Some(map) = block.as_object_mut() {
        for key in HOST_BLOCK_KEYS {
            map.remove(key);
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loaded(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn coder_paths_and_the_rest() {
        assert_eq!(path_of("gcp"), "google-instance-identity");
        assert_eq!(path_of("k8s-prod"), "k8s-prod-instance-identity");
        assert_eq!(mount_of_path("google-instance-identity"), Some("gcp"));
        assert_eq!(mount_of_path("aws-instance-identity"), Some("aws"));
        assert_eq!(mount_of_path("k8s-prod-instance-identity"), Some("k8s-prod"));
        assert_eq!(mount_of_path("Evil-instance-identity"), None);
        assert_eq!(mount_of_path("-instance-identity"), None);
        assert_eq!(mount_of_path("aws"), None);
    }

    #[test]
    fn every_plugin_gets_its_own_mount_and_mount_tables_add_more() {
        let file = FileConfig::parse(
            "[aws]\nallowed_accounts = [\"1\"]\n[gone]\nx = 1\n\
             [mounts.k8s-prod]\nplugin = \"oidc\"\nissuer = \"https://a\"\ndisplay_name = \"Kubernetes\"\n\
             [mounts.k8s-dev]\nplugin = \"oidc\"\nissuer = \"https://b\"\n",
        )
        .unwrap();
        let mounts = mounts(&file, &loaded(&["aws", "azure", "oidc"])).unwrap();
        let names: Vec<(&str, &str, bool)> = mounts
            .iter()
            .map(|m| (m.name.as_str(), m.plugin.as_str(), m.written))
            .collect();
        // `oidc` has no block and is mounted elsewhere: no mount of its own.
        assert_eq!(
            names,
            [
                ("aws", "aws", true),
                ("azure", "azure", false),
                ("gone", "gone", true),
                ("k8s-dev", "oidc", true),
                ("k8s-prod", "oidc", true)
            ]
        );
        assert_eq!(mounts[0].display, "AWS");
        assert_eq!(mounts[3].display, "k8s-dev");
        assert_eq!(mounts[4].display, "Kubernetes");
        assert_eq!(plugin_block(mounts[4].block.clone()), json!({"issuer": "https://a"}));
    }

    #[test]
    fn bad_mounts_are_errors() {
        for (text, why) in [
            ("[mounts.Bad]\nplugin = \"oidc\"\n", "lower-case"),
            ("[mounts.k8s]\nissuer = \"x\"\n", "needs plugin"),
            ("[mounts.aws]\nplugin = \"oidc\"\n", "takes the name"),
            ("[k8s]\nx = 1\n[mounts.k8s]\nplugin = \"oidc\"\n", "both configure"),
        ] {
            let file = FileConfig::parse(text).unwrap();
            let err = mounts(&file, &loaded(&["aws", "oidc"])).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    fn namespaces(text: &str, plugins: &[&str]) -> anyhow::Result<Vec<(String, Namespace)>> {
        let file = FileConfig::parse(text).unwrap();
        Ok(mounts(&file, &loaded(plugins))?
            .into_iter()
            .map(|m| (m.name, m.namespace))
            .collect())
    }

    fn prefixed(p: &str) -> Namespace {
        Namespace::Prefixed(p.into())
    }

    #[test]
    fn every_mount_but_coders_three_resolves_in_its_own_namespace() {
        let got = namespaces(
            "[aws]\n[mounts.k8s]\nplugin = \"oidc\"\n[mounts.aws-eu]\nplugin = \"aws\"\n[mine]\n",
            &["aws", "azure", "gcp", "oidc", "mine"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("aws".into(), Namespace::Raw),
                ("aws-eu".into(), prefixed("aws-eu")),
                ("azure".into(), Namespace::Raw),
                ("gcp".into(), Namespace::Raw),
                ("k8s".into(), prefixed("k8s")),
                ("mine".into(), prefixed("mine")),
            ]
        );
        assert_eq!(prefixed("k8s").apply("i-076e9b91f7c420782"), "k8s:i-076e9b91f7c420782");
        assert_eq!(Namespace::Raw.apply("i-076e9b91f7c420782"), "i-076e9b91f7c420782");
        // A mount named like a Coder mount but running another plugin is not raw.
        let got = namespaces("[mounts.aws]\nplugin = \"oidc\"\n", &["oidc"]).unwrap();
        assert_eq!(got, [("aws".into(), prefixed("aws"))]);
    }

    #[test]
    fn namespaces_are_shared_only_when_the_operator_says_so_for_both() {
        // Both chose the prefix: a key rotation onto a new mount name.
        let shared = "[mounts.k8s]\nplugin = \"oidc\"\ninstance_id_prefix = \"k8s\"\n\
                      [mounts.k8s-2]\nplugin = \"oidc\"\ninstance_id_prefix = \"k8s\"\n";
        let got = namespaces(shared, &["oidc"]).unwrap();
        assert_eq!(
            got,
            [("k8s".into(), prefixed("k8s")), ("k8s-2".into(), prefixed("k8s"))]
        );
        // Another aws mount may join Coder's raw namespace: its IDs are cloud-signed.
        let raw = "[aws]\n[mounts.aws-eu]\nplugin = \"aws\"\ninstance_id_prefix = \"\"\n";
        let got = namespaces(raw, &["aws"]).unwrap();
        assert_eq!(got, [("aws".into(), Namespace::Raw), ("aws-eu".into(), Namespace::Raw)]);

        for (text, why) in [
            // Only one of the two chose the other's namespace.
            (
                "[mounts.k8s]\nplugin = \"oidc\"\n[mounts.gh]\nplugin = \"oidc\"\ninstance_id_prefix = \"k8s\"\n",
                "\"gh\" and \"k8s\"",
            ),
            // An OIDC mount may never resolve raw IDs: its `sub` is not a cloud's.
            (
                "[mounts.k8s]\nplugin = \"oidc\"\ninstance_id_prefix = \"\"\n",
                "Coder's three plugins",
            ),
            (
                "[mounts.k8s]\nplugin = \"oidc\"\ninstance_id_prefix = \"a:b\"\n",
                "instance_id_prefix must be",
            ),
            (
                "[mounts.k8s]\nplugin = \"oidc\"\ninstance_id_prefix = 5\n",
                "instance_id_prefix must be",
            ),
        ] {
            let err = namespaces(text, &["aws", "oidc"]).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn host_keys_never_reach_the_plugin() {
        let block = json!({"audience": "a", "jwks_url": "https://x", "jwks_file": "/f", "instance_id_prefix": "p",
                           "jwks_min_refresh_secs": 5, "display_name": "D", "skew_secs": 3});
        assert_eq!(plugin_block(block), json!({"audience": "a", "skew_secs": 3}));
    }
}
