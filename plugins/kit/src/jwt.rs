//! JSON Web Tokens (RFC 7519) in JWS compact form (RFC 7515): the header, the
//! signature checked by the host's crypto with a key from a [`KeySet`], the
//! claims, and `exp`/`nbf`/`iat` against the host's time with a skew.
//!
//! What a token may say about its own verification is read narrowly: `alg` must
//! be one the caller accepts *and* the one the `kid`'s key type allows (see
//! [`crate::jwk`]); keys come only from the caller's set, never from the token
//! (`jwk`, `jku`, `x5u`, `x5c` headers are ignored); a `crit` header is refused,
//! since no extension is understood. The claims are parsed only after the
//! signature verified, and a JSON object with a repeated member name (which
//! parsers resolve differently) is refused, in the header and in the claims.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::encoding::base64url_decode;
use crate::jwk::{JwsAlgorithm, KeySet};
use crate::{Crypto, VerifyError};

/// Largest token [`verify`] reads; identity tokens are 1-2 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Largest header accepted before decoding it, bytes of base64url.
const MAX_HEADER_LEN: usize = 2048;

/// A token's verified claims: its payload, a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(Map<String, Value>);

/// Verifies `token`'s signature with the key its `kid` names in `keys` and
/// returns its claims, nothing else checked yet (issuer, audience and times are
/// the caller's: [`Claims`], [`check_times`]).
///
/// Errors: not a compact JWS, a header or payload that is not a JSON object, or
/// over [`MAX_TOKEN_LEN`]: `malformed`. An `alg` outside `accepted` (`none`,
/// `HS256`, ...) or other than the key's, a `crit` header, a signature that does
/// not verify: `bad-signature`. No `kid`, an unknown one, a key of the wrong kind
/// or one the host cannot use: `untrusted-signer`.
pub fn verify(
    crypto: &dyn Crypto,
    token: &str,
    keys: &KeySet,
    accepted: &[JwsAlgorithm],
) -> Result<Claims, VerifyError> {
    let malformed = |m: String| VerifyError::Malformed(format!("token: {m}"));
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "{} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a JWS compact token (three dot-separated parts)".into()));
    };
    if header.len() > MAX_HEADER_LEN {
        return Err(malformed("header too large".into()));
    }
    let header = base64url_decode(header).map_err(|e| malformed(format!("header: {e}")))?;
    let header = parse_object(&header).map_err(|e| malformed(format!("header: {e}")))?;

    let names = || accepted.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        Some(other) => return Err(VerifyError::BadSignature(format!("token alg {other} refused"))),
        None => return Err(malformed("header has no alg".into())),
    };
    let Some(alg) = accepted.iter().copied().find(|a| a.name() == alg) else {
        // `none`, HMAC keyed with a public key, schemes this verifier does not take.
        return Err(VerifyError::BadSignature(format!(
            "token alg {alg:?} refused: accepted are {}",
            names()
        )));
    };
    if let Some(crit) = header.get("crit") {
        return Err(VerifyError::BadSignature(format!(
            "token header names critical extensions {crit}, none of which is understood"
        )));
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.as_str(),
        _ => {
            return Err(VerifyError::UntrustedSigner(
                "token header names no key (kid): cannot pick a key".into(),
            ))
        }
    };
    let key = keys.key(kid)?;
    if key.algorithm != alg {
        return Err(VerifyError::BadSignature(format!(
            "token alg {} does not fit key {kid:?}, an {} key",
            alg.name(),
            key.algorithm.name()
        )));
    }

    let signature = base64url_decode(signature).map_err(|e| malformed(format!("signature: {e}")))?;
    let signature = match alg {
        JwsAlgorithm::Rs256 => signature,
        JwsAlgorithm::Es256 => ecdsa_der(&signature)
            .ok_or_else(|| VerifyError::BadSignature("ES256 signature is not 64 bytes (R || S)".into()))?,
    };
    let signed = &token[..header_len(token) + 1 + payload.len()];
    match crypto.verify_signature(alg.signature_algorithm(), &key.spki_der, signed.as_bytes(), &signature) {
        Ok(true) => {}
        Ok(false) => return Err(VerifyError::BadSignature("token signature does not verify".into())),
        Err(reason) => {
            return Err(VerifyError::UntrustedSigner(format!(
                "key {kid:?} is unusable: {reason}"
            )))
        }
    }

    let payload = base64url_decode(payload).map_err(|e| malformed(format!("payload: {e}")))?;
    let claims = parse_object(&payload).map_err(|e| malformed(format!("claims: {e}")))?;
    Ok(Claims(claims))
}

/// Length of the first part of `token` (it has at least one dot here).
fn header_len(token: &str) -> usize {
    token.find('.').unwrap_or(token.len())
}

/// JWS's fixed-width `R || S` (RFC 7518 3.4) as the DER `SEQUENCE { r, s }` the
/// host's ECDSA takes; `None` unless 64 bytes.
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    use der::asn1::{SequenceOf, UintRef};
    use der::Encode;
    if raw.len() != 64 {
        return None;
    }
    let mut seq = SequenceOf::<UintRef<'_>, 2>::new();
    for half in raw.chunks(32) {
        seq.add(UintRef::new(half).ok()?).ok()?;
    }
    seq.to_der().ok()
}

impl Claims {
    /// The claims as parsed (for tests and callers that deserialize them into
    /// their own types with `serde_json::from_value`).
    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }

    /// Every claim, by name.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The claim `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The string claim `name`: `None` if absent, `malformed` if not a string.
    pub fn string(&self, name: &str) -> Result<Option<&str>, VerifyError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(VerifyError::Malformed(format!(
                "token claim {name} is {other}, not a string"
            ))),
        }
    }

    /// The NumericDate claim `name` (Unix seconds; integers only, as issuers
    /// write them): `None` if absent, `malformed` otherwise.
    pub fn time(&self, name: &str) -> Result<Option<i64>, VerifyError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| VerifyError::Malformed(format!("token claim {name} is {value}, not an integer time"))),
        }
    }

    /// `aud` as a list: a string is one audience (RFC 7519 4.1.3); absent is
    /// none; anything but a string or a list of strings is `malformed`.
    pub fn audiences(&self) -> Result<Vec<&str>, VerifyError> {
        let bad = || VerifyError::Malformed("token claim aud is neither a string nor a list of strings".into());
        match self.0.get("aud") {
            None => Ok(Vec::new()),
            Some(Value::String(aud)) => Ok(vec![aud]),
            Some(Value::Array(list)) => list.iter().map(|a| a.as_str().ok_or_else(bad)).collect(),
            Some(_) => Err(bad()),
        }
    }
}

/// Checks the token's times against the host's `now`, each giving or taking
/// `skew` seconds: `exp` (required) has not passed, `nbf` (if present) has
/// come, `iat` (required when `require_iat`) does not lie ahead. A missing
/// required or non-integer time is `malformed`; a failed check, `expired`.
pub fn check_times(claims: &Claims, now: i64, skew: i64, require_iat: bool) -> Result<(), VerifyError> {
    let missing = |name: &str| VerifyError::Malformed(format!("token has no {name} claim"));
    let exp = claims.time("exp")?.ok_or_else(|| missing("exp"))?;
    let iat = claims.time("iat")?;
    if require_iat && iat.is_none() {
        return Err(missing("iat"));
    }
    let when = crate::time::describe;
    if now > exp.saturating_add(skew) {
        return Err(VerifyError::Expired(format!(
            "token expired at {} (now {}, skew {skew}s)",
            when(exp),
            when(now)
        )));
    }
    if let Some(nbf) = claims.time("nbf")? {
        if nbf > now.saturating_add(skew) {
            return Err(VerifyError::Expired(format!(
                "token not valid before {} (now {}, skew {skew}s)",
                when(nbf),
                when(now)
            )));
        }
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(VerifyError::Expired(format!(
                "token issued in the future at {} (now {}, skew {skew}s)",
                when(iat),
                when(now)
            )));
        }
    }
    Ok(())
}

/// A JSON object, refusing repeated member names at any depth.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let StrictValue(value) = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!("expected a JSON object, not {}", json_kind(&other))),
    }
}

/// What kind of JSON value `value` is, for messages ("a number", "an array").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A [`Value`] whose objects have distinct member names.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if members.insert(name.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format!("member {name:?} appears twice")));
            }
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        Claims(v.as_object().unwrap().clone())
    }

    #[test]
    fn strict_objects() {
        assert!(parse_object(br#"{"a": {"b": 1, "c": [1, 2.5, null, true, "x"]}}"#).is_ok());
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"a": {"b": 1, "b": 1}}"#,
            br#"[{"a": 1}]"#,
            b"\"x\"",
            b"{",
            b"{} ",
            b"{}x",
        ] {
            if bad == b"{} " {
                // Trailing whitespace is JSON.
                assert!(parse_object(bad).is_ok());
                continue;
            }
            assert!(parse_object(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // serde_json's depth limit holds through the visitor.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(parse_object(deep.as_bytes()).is_err());
    }

    #[test]
    fn ecdsa_raw_to_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its top bit set: DER adds a zero
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
        assert!(ecdsa_der(&[1; 63]).is_none());
        assert!(ecdsa_der(&[1; 65]).is_none());
    }

    #[test]
    fn times_with_skew() {
        let c = claims(json!({"exp": 1000, "nbf": 500, "iat": 400}));
        assert!(check_times(&c, 1000, 0, true).is_ok());
        assert!(check_times(&c, 1060, 60, true).is_ok());
        assert!(matches!(check_times(&c, 1061, 60, true), Err(VerifyError::Expired(_))));
        assert!(check_times(&c, 440, 60, true).is_ok());
        match check_times(&c, 439, 60, true) {
            Err(VerifyError::Expired(m)) => assert!(m.contains("not valid before"), "{m}"),
            other => panic!("{other:?}"),
        }
        let future = claims(json!({"exp": 1000, "iat": 900}));
        assert!(matches!(
            check_times(&future, 800, 60, false),
            Err(VerifyError::Expired(_))
        ));
        assert!(matches!(
            check_times(&claims(json!({"iat": 1})), 0, 0, false),
            Err(VerifyError::Malformed(_))
        ));
        assert!(check_times(&claims(json!({"exp": 10})), 0, 0, false).is_ok());
        assert!(matches!(
            check_times(&claims(json!({"exp": 10})), 0, 0, true),
            Err(VerifyError::Malformed(_))
        ));
        for bad in [
            json!({"exp": "soon"}),
            json!({"exp": 1.5}),
            json!({"exp": 10, "nbf": "x"}),
        ] {
            assert!(matches!(
                check_times(&claims(bad), 0, 0, false),
                Err(VerifyError::Malformed(_))
            ));
        }
        // No overflow at the edges.
        assert!(check_times(&claims(json!({"exp": i64::MAX})), i64::MAX, i64::MAX, false).is_ok());
    }

    #[test]
    fn audiences_and_strings() {
        assert_eq!(claims(json!({"aud": "a"})).audiences().unwrap(), ["a"]);
        assert_eq!(claims(json!({"aud": ["a", "b"]})).audiences().unwrap(), ["a", "b"]);
        assert!(claims(json!({})).audiences().unwrap().is_empty());
        assert!(claims(json!({"aud": [1]})).audiences().is_err());
        assert!(claims(json!({"aud": 1})).audiences().is_err());
        let c = claims(json!({"iss": "x", "n": 1}));
        assert_eq!(c.string("iss").unwrap(), Some("x"));
        assert_eq!(c.string("none").unwrap(), None);
        assert!(c.string("n").is_err());
    }
}
