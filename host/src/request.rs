//! Request bodies of the instance-identity endpoints: which fields are
//! required (Coder's, for Coder's three mounts; for any other mount the plugin
//! says, through its `malformed`), and how a body is split into the plugin's
//! credential and the optional agent name.

use serde_json::{Map, Value};

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

/// Parses a request body for `provider` (a mount): checks it is a JSON object, checks the
/// required fields (Coder's, plus idgate's `pkcs7` alternative for AWS), removes
/// `agent_name`, and keeps the rest as the credential. Unknown fields are kept
/// (Coder ignores them; the plugin decides).
pub fn parse_body(provider: &str, body: &[u8]) -> Result<Parsed, BodyError> {
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
                json_type(&other)
            )))
        }
    };
    let missing: Vec<Validation> = required_fields(provider, &fields)
        .into_iter()
        .filter(|f| !is_nonempty_string(&fields, f))
        .map(|f| Validation {
            field: f.to_string(),
            detail: format!(
                "Validation failed for tag \"required\" with value: \"{}\"",
                shown(&fields, f)
            ),
        })
        .collect();
    if !missing.is_empty() {
        return Err(BodyError::Validation(missing));
    }
    Ok(Parsed {
        credential: Value::Object(fields).to_string(),
        agent_name,
    })
}

fn required_fields(mount: &str, fields: &Map<String, Value>) -> Vec<&'static str> {
    crate::mounts::coder_route(mount).map_or_else(Vec::new, |r| (r.required)(fields))
}

fn is_nonempty_string(fields: &Map<String, Value>, name: &str) -> bool {
    matches!(fields.get(name), Some(Value::String(s)) if !s.is_empty())
}

/// The value Coder's validator would print: the string, or empty.
fn shown(fields: &Map<String, Value>, name: &str) -> String {
    match fields.get(name) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_agent_name_and_keeps_the_rest() {
        let p = parse_body(
            "aws",
            br#"{"signature":"s","document":"d","agent_name":"  dev ","x":1}"#,
        )
        .unwrap();
        assert_eq!(p.agent_name.as_deref(), Some("dev"));
        let cred: Value = serde_json::from_str(&p.credential).unwrap();
        assert_eq!(cred, serde_json::json!({"signature":"s","document":"d","x":1}));
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
