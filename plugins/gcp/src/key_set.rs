//! Google's key set (a JWKS the host fetched) and the lookup by `kid`.

use idgate_plugin_kit::encoding::base64url_decode;
use idgate_plugin_kit::VerifyError;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

/// How an unknown-`kid` rejection starts. The host matches this prefix to
/// refresh its cached key set once (Google rotates keys) before giving up.
pub const UNKNOWN_KID_PREFIX: &str = "unknown signing key id";

/// Most keys accepted in a set; Google publishes two or three.
const MAX_KEYS: usize = 64;

/// The JWKS's keys, kept as JSON objects until one is needed.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<Map<String, Value>>,
}

impl KeySet {
    /// Reads `{"keys": [..]}`; entries that are not objects are refused.
    pub fn parse(jwks: &Value) -> Result<KeySet, String> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("jwks is not a key set: expected {\"keys\": [...]}")?;
        if keys.len() > MAX_KEYS {
            return Err(format!("jwks has {} keys, more than {MAX_KEYS}", keys.len()));
        }
        let keys = keys
            .iter()
            .map(|k| k.as_object().cloned().ok_or("a jwks entry is not an object"))
            .collect::<Result<_, _>>()?;
        Ok(KeySet { keys })
    }

    /// The RS256 verification key with id `kid`.
    pub fn rsa_key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        let untrusted = |msg: String| VerifyError::UntrustedSigner(msg);
        let key = self
            .keys
            .iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .ok_or_else(|| {
                untrusted(format!(
                    "{UNKNOWN_KID_PREFIX} {kid:?}: not in Google's key set ({} keys)",
                    self.keys.len()
                ))
            })?;
        let field = |name: &str| key.get(name).and_then(Value::as_str);
        if field("kty") != Some("RSA") {
            return Err(untrusted(format!("key {kid:?} is not an RSA key")));
        }
        // A key pinned to another algorithm must not verify RS256 tokens.
        if let Some(alg) = key.get("alg") {
            if alg.as_str() != Some("RS256") {
                return Err(untrusted(format!("key {kid:?} is for {alg}, not RS256")));
            }
        }
        if let Some(usage) = key.get("use") {
            if usage.as_str() != Some("sig") {
                return Err(untrusted(format!("key {kid:?} is for use {usage}, not sig")));
            }
        }
        let part = |name: &str| {
            field(name)
                .ok_or_else(|| format!("no {name}"))
                .and_then(base64url_decode)
                .map_err(|e| VerifyError::BadConfig(format!("jwks key {kid:?}: {name}: {e}")))
        };
        Ok(DecodingKey::from_rsa_raw_components(&part("n")?, &part("e")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(keys: Value) -> KeySet {
        KeySet::parse(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn finds_by_kid() {
        let s = set(
            json!([{"kid":"a","kty":"RSA","n":"AQAB","e":"AQAB"},{"kid":"b","kty":"RSA","alg":"RS256","use":"sig","n":"AQAB","e":"AQAB"}]),
        );
        assert!(s.rsa_key("a").is_ok());
        assert!(s.rsa_key("b").is_ok());
        match s.rsa_key("c") {
            Err(VerifyError::UntrustedSigner(m)) => assert!(m.starts_with(UNKNOWN_KID_PREFIX) && m.contains("\"c\"")),
            _ => panic!("unknown kid accepted"),
        }
    }

    #[test]
    fn wrong_key_kinds_refused() {
        let s = set(json!([
            {"kid":"ec","kty":"EC","crv":"P-256","x":"AA","y":"AA"},
            {"kid":"rs512","kty":"RSA","alg":"RS512","n":"AQAB","e":"AQAB"},
            {"kid":"enc","kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},
            {"kid":"bad-n","kty":"RSA","n":"!!","e":"AQAB"},
            {"kid":"no-e","kty":"RSA","n":"AQAB"},
        ]));
        for kid in ["ec", "rs512", "enc"] {
            assert!(matches!(s.rsa_key(kid), Err(VerifyError::UntrustedSigner(_))), "{kid}");
        }
        for kid in ["bad-n", "no-e"] {
            assert!(matches!(s.rsa_key(kid), Err(VerifyError::BadConfig(_))), "{kid}");
        }
    }

    #[test]
    fn malformed_sets_refused() {
        for v in [json!([]), json!({"keys": 1}), json!({"keys": [1]}), json!("x")] {
            assert!(KeySet::parse(&v).is_err(), "{v}");
        }
    }
}
