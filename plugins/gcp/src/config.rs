//! The `[gcp]` configuration block as the plugin receives it (JSON).

use idgate_plugin_kit::VerifyError;
use serde::de::IgnoredAny;
use serde::Deserialize;

use idgate_plugin_kit::jwk::KeySet;

/// The audience Coder's agent asks the metadata server for.
pub const DEFAULT_AUDIENCE: &str = "coder";
/// Allowed clock difference between Google and the host, seconds.
pub const DEFAULT_SKEW_SECS: i64 = 60;
/// Largest accepted skew: a token lives one hour, a larger skew would mean
/// accepting tokens long after Google stopped vouching for them.
const MAX_SKEW_SECS: u64 = 3600;

/// The block as written, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    audience: Option<String>,
    skew_secs: Option<u64>,
    allowed_projects: Option<Vec<String>>,
    allowed_zones: Option<Vec<String>>,
    jwks: Option<serde_json::Value>,
    // Consumed by the host's key cache; they may reach the plugin unchanged.
    #[serde(rename = "jwks_url")]
    _jwks_url: Option<IgnoredAny>,
    #[serde(rename = "jwks_file")]
    _jwks_file: Option<IgnoredAny>,
    #[serde(rename = "jwks_min_refresh_secs")]
    _jwks_min_refresh_secs: Option<IgnoredAny>,
}

/// The checked configuration, defaults filled in.
pub struct Config {
    /// The `aud` a token must carry.
    pub audience: String,
    /// Seconds of clock difference tolerated on `exp` and `iat`.
    pub skew_secs: i64,
    /// Projects accepted; `None` accepts every project.
    pub allowed_projects: Option<Vec<String>>,
    /// Zones accepted; `None` accepts every zone.
    pub allowed_zones: Option<Vec<String>>,
    /// A key set written in the configuration (`jwks`), used only when the host
    /// supplies none for the call. The host normally fetches Google's keys and
    /// hands them over per call (they rotate, so they are never part of the
    /// configured snapshot).
    pub keys: Option<KeySet>,
}

impl Config {
    /// The key set for one call: the host's (`host_keys`, JSON) if it supplied
    /// one, else the configured `jwks`.
    pub fn key_set(&self, host_keys: Option<&str>) -> Result<std::borrow::Cow<'_, KeySet>, VerifyError> {
        let bad = |msg: String| VerifyError::BadConfig(format!("gcp config: {msg}"));
        match (host_keys, &self.keys) {
            (Some(text), _) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| bad(format!("the host's key set: {e}")))?;
                Ok(std::borrow::Cow::Owned(KeySet::parse(&value).map_err(bad)?))
            }
            (None, Some(keys)) => Ok(std::borrow::Cow::Borrowed(keys)),
            (None, None) => Err(bad(
                "no jwks: the host supplies Google's key set (configure jwks_url or jwks_file in [gcp])".into(),
            )),
        }
    }

    /// Parses the JSON configuration; every problem is [`VerifyError::BadConfig`].
    pub fn parse(text: &str) -> Result<Config, VerifyError> {
        let bad = |msg: String| VerifyError::BadConfig(format!("gcp config: {msg}"));
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let audience = raw.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_string());
        if audience.is_empty() {
            return Err(bad("audience is empty".into()));
        }
        let skew_secs = match raw.skew_secs {
            None => DEFAULT_SKEW_SECS,
            Some(s) if s <= MAX_SKEW_SECS => s as i64,
            Some(s) => return Err(bad(format!("skew_secs {s} is over the maximum {MAX_SKEW_SECS}"))),
        };
        let allow_list = |name: &str, list: Option<Vec<String>>| match list {
            Some(l) if l.is_empty() => Err(bad(format!(
                "{name} is empty, which would refuse every token; omit it to allow all"
            ))),
            other => Ok(other),
        };
        let allowed_projects = allow_list("allowed_projects", raw.allowed_projects)?;
        let allowed_zones = allow_list("allowed_zones", raw.allowed_zones)?;
        let keys = raw.jwks.map(|jwks| KeySet::parse(&jwks).map_err(bad)).transpose()?;
        Ok(Config {
            audience,
            skew_secs,
            allowed_projects,
            allowed_zones,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = r#"{"keys":[]}"#;

    fn parse(text: &str) -> Result<Config, VerifyError> {
        Config::parse(text)
    }

    #[test]
    fn defaults() {
        let c = parse(&format!(r#"{{"jwks":{KEYS}}}"#)).unwrap();
        assert_eq!(c.audience, "coder");
        assert_eq!(c.skew_secs, 60);
        assert!(c.allowed_projects.is_none() && c.allowed_zones.is_none());
    }

    #[test]
    fn all_keys_and_host_keys() {
        let c = parse(&format!(
            r#"{{"jwks":{KEYS},"audience":"x","skew_secs":5,"allowed_projects":["p"],"allowed_zones":["z"],
                "jwks_url":"https://example.test/certs","jwks_file":"/k.json","jwks_min_refresh_secs":10}}"#
        ))
        .unwrap();
        assert_eq!(c.audience, "x");
        assert_eq!(c.skew_secs, 5);
        assert_eq!(c.allowed_projects.as_deref(), Some(&["p".to_string()][..]));
    }

    #[test]
    fn refused_configs() {
        assert!(matches!(
            parse("{}").unwrap().key_set(None),
            Err(VerifyError::BadConfig(_))
        ));
        for text in [
            "[]",
            "not json",
            &format!(r#"{{"jwks":{KEYS},"audiance":"x"}}"#),
            &format!(r#"{{"jwks":{KEYS},"audience":""}}"#),
            &format!(r#"{{"jwks":{KEYS},"skew_secs":-1}}"#),
            &format!(r#"{{"jwks":{KEYS},"skew_secs":100000}}"#),
            &format!(r#"{{"jwks":{KEYS},"allowed_zones":[]}}"#),
            &format!(r#"{{"jwks":{KEYS},"allowed_projects":"p"}}"#),
            r#"{"jwks":{"nokeys":[]}}"#,
            r#"{"jwks":[1]}"#,
        ] {
            assert!(matches!(parse(text), Err(VerifyError::BadConfig(_))), "{text}");
        }
    }
}
