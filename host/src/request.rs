//! Request bodies of the instance-identity endpoints: which fields are
//! required (Coder's, for Coder's three mounts, from `mounts::CODER_ROUTES`;
//! for any other mount the plugin says, through its `malformed`), and how a
//! body is split into the plugin's credential and the optional agent name.
//!
//! Coder reads these bodies with Go's `json.Decoder` into its `agentsdk`
//! structs, then validates the `required` tags (`httpapi.Read`); [`go_json`]
//! reads them the same way, so a body gets Coder's answer whatever its shape.

use serde_json::{Map, Value};

use crate::go_json;
use crate::mounts::{coder_route, CoderRoute};

/// A field that failed validation, as Coder reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Validation {
    /// JSON name of the field.
    pub field: String,
    /// Coder's text: `Validation failed for tag "required" with value: ""`.
    pub detail: String,
}

/// Why a body was refused before any plugin saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not a JSON object (Coder: 400 `Request body must be valid JSON.`).
    InvalidJson(String),
    /// Required fields missing or empty (Coder: 400 `Validation failed.`).
    Validation(Vec<Validation>),
}

/// A body split for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The provider fields as a JSON object string: what the plugin receives.
    pub credential: String,
    /// The trimmed `agent_name`; `None` when absent or blank.
    pub agent_name: Option<String>,
}

/// Parses a request body for `provider` (a mount). On Coder's routes it reads the body
/// as Coder does (see [`go_json`]): the first JSON value, into Coder's struct,
/// then the required fields (Coder's, but a non-empty `pkcs7` stands in for
/// AWS's two). The credential the plugin receives is that struct's fields as a
/// JSON object, `agent_name` removed: unknown fields are dropped, as Coder
/// ignores them. Any other mount (a drop-in plugin, or a plugin mounted again)
/// gets the whole JSON object, `agent_name` removed, to interpret.
pub fn parse_body(provider: &str, body: &[u8]) -> Result<Parsed, BodyError> {
    match coder_route(provider) {
        Some(route) => parse_coder_body(route, body),
        None => parse_object(body),
    }
}

fn parse_coder_body(route: &CoderRoute, body: &[u8]) -> Result<Parsed, BodyError> {
    let values = go_json::decode(body, &route.body).map_err(BodyError::InvalidJson)?;
    let mut credential = Map::new();
    let mut agent_name = None;
    for (name, value) in route.body.fields.iter().zip(values) {
        match (*name, value) {
            ("agent_name", value) => agent_name = value.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            (_, Some(value)) => {
                credential.insert((*name).to_string(), Value::String(value));
            }
            (_, None) => {}
        }
    }
    let given = |name: &str| matches!(credential.get(name), Some(Value::String(s)) if !s.is_empty());
    // A field that stands in for the required ones (AWS's `pkcs7` carries the document).
    let required: &[&str] = match route.stands_in {
        Some(field) if given(field) => &[],
        _ => route.required,
    };
    let missing: Vec<Validation> = required
        .iter()
        .filter(|f| !given(f))
        .map(|f| Validation {
            field: f.to_string(),
            // Go prints the field's value, which is always empty here.
            detail: "Validation failed for tag \"required\" with value: \"\"".to_string(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(BodyError::Validation(missing));
    }
    Ok(Parsed {
        credential: Value::Object(credential).to_string(),
        agent_name,
    })
}

/// A drop-in provider's body: any JSON object; `agent_name`, if present, must
/// be a string.
fn parse_object(body: &[u8]) -> Result<Parsed, BodyError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(BodyError::InvalidJson("expected a JSON object".into()));
    };
    let agent_name = match fields.remove("agent_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(other) => {
            return Err(BodyError::InvalidJson(format!(
                "agent_name must be a string, not {}",
                idgate_plugin_kit::jwt::json_kind(&other)
            )))
        }
    };
    Ok(Parsed {
        credential: Value::Object(fields).to_string(),
        agent_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_agent_name_and_drops_what_coder_ignores() {
        let p = parse_body(
            "aws",
            br#"{"Signature":"s","document":"d","agent_name":"  dev ","x":1} trailing"#,
        )
        .unwrap();
        assert_eq!(p.agent_name.as_deref(), Some("dev"));
        let cred: Value = serde_json::from_str(&p.credential).unwrap();
        assert_eq!(cred, serde_json::json!({"signature":"s","document":"d"}));
        // A drop-in provider gets the whole object to interpret.
        let p = parse_body("acme", br#"{"x":1,"agent_name":"a"}"#).unwrap();
        assert_eq!(p.credential, r#"{"x":1}"#);
    }

    #[test]
    fn blank_agent_name_is_unset() {
        for body in [
            r#"{"json_web_token":"t","agent_name":""}"#,
            r#"{"json_web_token":"t","agent_name":"   "}"#,
        ] {
            assert_eq!(parse_body("gcp", body.as_bytes()).unwrap().agent_name, None);
        }
    }

    #[test]
    fn required_fields_like_coder() {
        let Err(BodyError::Validation(v)) = parse_body("aws", br#"{"document":"d"}"#) else {
            panic!("expected a validation error");
        };
        assert_eq!(
            v,
            vec![Validation {
                field: "signature".into(),
                detail: "Validation failed for tag \"required\" with value: \"\"".into()
            }]
        );
        assert!(parse_body("aws", br#"{"pkcs7":"p"}"#).is_ok());
        assert!(
            matches!(parse_body("azure", br#"{"signature":"s"}"#), Err(BodyError::Validation(v)) if v[0].field == "encoding")
        );
    }

    #[test]
    fn a_wrong_type_is_invalid_json_as_in_go() {
        let Err(BodyError::InvalidJson(detail)) = parse_body("aws", br#"{"signature":5,"document":"d"}"#) else {
            panic!("expected invalid JSON");
        };
        assert_eq!(
            detail,
            "json: cannot unmarshal number into Go struct field AWSInstanceIdentityToken.signature of type string"
        );
        // `null` is Go's zero value: the required check answers.
        assert!(matches!(parse_body("gcp", b"null"), Err(BodyError::Validation(v)) if v[0].field == "json_web_token"));
    }

    #[test]
    fn not_json_or_not_an_object() {
        for body in [
            &b"{"[..],
            b"[]",
            b"\"x\"",
            b"",
            br#"{"json_web_token":"t","agent_name":5}"#,
        ] {
            assert!(
                matches!(parse_body("gcp", body), Err(BodyError::InvalidJson(_))),
                "{body:?}"
            );
        }
    }
}
