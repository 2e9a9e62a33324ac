//! The provider block as the plugin receives it (JSON): one issuer, its
//! audience, where the instance ID is, the allow-lists and the keys.

use std::borrow::Cow;
use std::collections::BTreeMap;

use idgate_plugin_kit::jwk::KeySet;
use idgate_plugin_kit::VerifyError;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::claim_path::ClaimPath;

/// Allowed clock difference between the issuer and the host, seconds.
pub const DEFAULT_SKEW_SECS: i64 = 60;
/// Largest accepted skew: beyond an hour the times stop meaning anything for
/// tokens that live minutes to hours.
const MAX_SKEW_SECS: u64 = 3600;
/// The claim the instance ID is read from by default.
pub const DEFAULT_INSTANCE_ID_CLAIM: &str = "sub";
/// Most allow-listed claims.
const MAX_ALLOWED_CLAIMS: usize = 32;

/// The block as written, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<String>,
    audience: Option<String>,
    instance_id_claim: Option<String>,
    allowed_claims: Option<BTreeMap<String, Vec<String>>>,
    skew_secs: Option<u64>,
    jwks: Option<Value>,
    // A key source the host fetches from and answers through `host-keys`;
    // they may reach the plugin unchanged.
    #[serde(rename = "jwks_url")]
    _jwks_url: Option<IgnoredAny>,
    #[serde(rename = "jwks_file")]
    _jwks_file: Option<IgnoredAny>,
    #[serde(rename = "jwks_min_refresh_secs")]
    _jwks_min_refresh_secs: Option<IgnoredAny>,
}

/// One exact-match allow-list: the claim at `path` must be one of `values`.
pub struct AllowList {
    /// Where the claim is.
    pub path: ClaimPath,
    /// The accepted values.
    pub values: Vec<String>,
}

/// The checked configuration, defaults filled in.
pub struct Config {
    /// The `iss` a token must carry, exactly.
    pub issuer: String,
    /// The audience a token's `aud` must be or contain.
    pub audience: String,
    /// Where the instance ID is.
    pub instance_id_claim: ClaimPath,
    /// Allow-lists, in the order of their paths.
    pub allowed_claims: Vec<AllowList>,
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    pub skew_secs: i64,
    /// The configured key set (`jwks`), used when the host supplies none.
    pub keys: Option<KeySet>,
}

impl Config {
    /// Parses the JSON configuration; every problem is [`VerifyError::BadConfig`]
    /// naming the key.
    pub fn parse(text: &str) -> Result<Config, VerifyError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let required = |name: &str, value: Option<String>| match value {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(bad(format!("{name} is empty"))),
            None => Err(bad(format!("{name} is required"))),
        };
        let issuer = required("issuer", raw.issuer)?;
        let audience = required("audience", raw.audience)?;
        let instance_id_claim = ClaimPath::parse(raw.instance_id_claim.as_deref().unwrap_or(DEFAULT_INSTANCE_ID_CLAIM))
            .map_err(|e| bad(format!("instance_id_claim: {e}")))?;
        let skew_secs = match raw.skew_secs {
            None => DEFAULT_SKEW_SECS,
            Some(s) if s <= MAX_SKEW_SECS => s as i64,
            Some(s) => return Err(bad(format!("skew_secs {s} is over the maximum {MAX_SKEW_SECS}"))),
        };
        let allowed = raw.allowed_claims.unwrap_or_default();
        if allowed.len() > MAX_ALLOWED_CLAIMS {
            return Err(bad(format!(
                "allowed_claims lists {} claims, more than {MAX_ALLOWED_CLAIMS}",
                allowed.len()
            )));
        }
        let allowed_claims = allowed
            .into_iter()
            .map(|(path, values)| {
                if values.is_empty() {
                    return Err(bad(format!(
                        "allowed_claims {path:?} is empty, which would refuse every token; omit it to allow all"
                    )));
                }
                let path = ClaimPath::parse(&path).map_err(|e| bad(format!("allowed_claims: {e}")))?;
                Ok(AllowList { path, values })
            })
            .collect::<Result<_, _>>()?;
        let keys = raw.jwks.map(parse_jwks).transpose()?;
        Ok(Config {
            issuer,
            audience,
            instance_id_claim,
            allowed_claims,
            skew_secs,
            keys,
        })
    }

    /// The key set for one call: the host's (`host_keys`, JSON text) when it
    /// supplied one, else the configured `jwks`.
    pub fn key_set(&self, host_keys: Option<&str>) -> Result<Cow<'_, KeySet>, VerifyError> {
        match (host_keys, &self.keys) {
            (Some(text), _) => Ok(Cow::Owned(
                KeySet::parse_text(text).map_err(|e| bad(format!("the host's key set: {e}")))?,
            )),
            (None, Some(keys)) => Ok(Cow::Borrowed(keys)),
            (None, None) => Err(bad(
                "no key set: configure jwks (or jwks_file), or a key source the host fetches for this provider".into(),
            )),
        }
    }
}

/// `jwks` as an object, or as JSON text (what `jwks_file` hands over).
fn parse_jwks(jwks: Value) -> Result<KeySet, VerifyError> {
    let keys = match &jwks {
        Value::String(text) => KeySet::parse_text(text),
        other => KeySet::parse(other),
    }
    .map_err(|e| bad(format!("jwks: {e}")))?;
    if keys.is_empty() {
        return Err(bad("jwks holds no keys".into()));
    }
    Ok(keys)
}

fn bad(msg: String) -> VerifyError {
    VerifyError::BadConfig(format!("oidc config: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = r#"{"kid":"k","kty":"RSA","n":"AQAB","e":"AQAB"}"#;

    fn base() -> Value {
        json!({"issuer": "https://issuer.test", "audience": "idgate", "jwks": {"keys": [serde_json::from_str::<Value>(KEY).unwrap()]}})
    }

    fn with(extra: Value) -> Value {
        let mut c = base();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn defaults() {
        let c = Config::parse(&base().to_string()).unwrap();
        assert_eq!(c.issuer, "https://issuer.test");
        assert_eq!(c.audience, "idgate");
        assert_eq!(c.instance_id_claim.as_str(), "sub");
        assert_eq!(c.skew_secs, 60);
        assert!(c.allowed_claims.is_empty());
        assert_eq!(c.keys.unwrap().len(), 1);
    }

    #[test]
    fn every_key() {
        let c = Config::parse(
            &with(json!({
                "instance_id_claim": "kubernetes.io.pod.uid",
                "allowed_claims": {"kubernetes.io.namespace": ["agents", "ci"], "/kubernetes.io/serviceaccount/name": ["coder"]},
                "skew_secs": 0,
                "jwks": format!(r#"{{"keys":[{KEY}]}}"#),
                "jwks_url": "https://issuer.test/keys", "jwks_file": "/etc/k.json", "jwks_min_refresh_secs": 30,
            }))
            .to_string(),
        )
        .unwrap();
        assert_eq!(c.instance_id_claim.as_str(), "kubernetes.io.pod.uid");
        assert_eq!(c.skew_secs, 0);
        let paths: Vec<_> = c.allowed_claims.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["/kubernetes.io/serviceaccount/name", "kubernetes.io.namespace"]);
        assert_eq!(c.allowed_claims[1].values, ["agents", "ci"]);
    }

    #[test]
    fn keys_prefer_the_host() {
        let c = Config::parse(&base().to_string()).unwrap();
        assert_eq!(c.key_set(None).unwrap().len(), 1);
        let host = format!(r#"{{"keys":[{KEY},{}]}}"#, KEY.replace("\"k\"", "\"k2\""));
        assert_eq!(c.key_set(Some(&host)).unwrap().len(), 2);
        assert!(matches!(c.key_set(Some("{")), Err(VerifyError::BadConfig(_))));
        let mut none = base();
        none.as_object_mut().unwrap().remove("jwks");
        let c = Config::parse(&none.to_string()).unwrap();
        assert!(matches!(c.key_set(None), Err(VerifyError::BadConfig(_))));
        assert!(c.key_set(Some(&host)).is_ok());
    }

    #[test]
    fn refused_configs() {
        let mut no_issuer = base();
        no_issuer.as_object_mut().unwrap().remove("issuer");
        let mut no_audience = base();
        no_audience.as_object_mut().unwrap().remove("audience");
        for config in [
            json!([]),
            no_issuer,
            no_audience,
            with(json!({"issuer": ""})),
            with(json!({"audience": ""})),
            with(json!({"audience": ["a"]})),
            with(json!({"audiance": "x"})),
            with(json!({"skew_secs": -1})),
            with(json!({"skew_secs": 3601})),
            with(json!({"instance_id_claim": ""})),
            with(json!({"instance_id_claim": "a..b"})),
            with(json!({"allowed_claims": {"kubernetes.io.namespace": []}})),
            with(json!({"allowed_claims": {"a.": ["x"]}})),
            with(json!({"allowed_claims": {"a": "x"}})),
            with(json!({"allowed_claims": {"a": [1]}})),
            with(json!({"jwks": {"keys": []}})),
            with(json!({"jwks": "not json"})),
            with(json!({"jwks": [1]})),
        ] {
            assert!(
                matches!(Config::parse(&config.to_string()), Err(VerifyError::BadConfig(_))),
                "{config}"
            );
        }
        assert!(matches!(Config::parse("not json"), Err(VerifyError::BadConfig(_))));
    }
}
