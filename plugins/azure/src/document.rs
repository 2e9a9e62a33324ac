//! The attested document Azure signs: `{"vmId", "subscriptionId", "nonce",
//! "timeStamp": {"createdOn", "expiresOn"}, ...}`, with times like
//! `04/19/22 07:27:21 -0000`.

use idgate_plugin_kit::time::{digits, unix_from_parts};
use idgate_plugin_kit::VerifyError;
use serde::Deserialize;

/// The fields idgate uses.
#[derive(Debug, Deserialize)]
pub struct Document {
    /// The VM's unique ID: the identity.
    #[serde(rename = "vmId")]
    pub vm_id: String,
    /// The subscription the VM belongs to.
    #[serde(rename = "subscriptionId", default)]
    pub subscription_id: String,
    /// The nonce the VM asked IMDS to include (or IMDS's default).
    #[serde(default)]
    pub nonce: String,
    /// When the document was made and until when it is good.
    #[serde(rename = "timeStamp")]
    pub time_stamp: Option<TimeStamp>,
}

/// Azure's `timeStamp` object.
#[derive(Debug, Deserialize)]
pub struct TimeStamp {
    /// `MM/DD/YY HH:MM:SS -0000`.
    #[serde(rename = "createdOn", default)]
    pub created_on: String,
    /// `MM/DD/YY HH:MM:SS -0000`.
    #[serde(rename = "expiresOn", default)]
    pub expires_on: String,
}

impl Document {
    /// Decodes the signed content; Malformed if it is not the expected JSON.
    pub fn parse(content: &[u8]) -> Result<Document, VerifyError> {
        let doc: Document = serde_json::from_slice(content)
            .map_err(|e| VerifyError::Malformed(format!("attested document is not the expected JSON: {e}")))?;
        if doc.vm_id.is_empty() {
            return Err(VerifyError::Malformed("attested document has an empty vmId".into()));
        }
        Ok(doc)
    }
}

/// Parses Azure's `MM/DD/YY HH:MM:SS ±HHMM` (years 20YY) to Unix seconds.
pub fn parse_azure_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 23 || b[2] != b'/' || b[5] != b'/' || b[8] != b' ' || b[11] != b':' || b[14] != b':' || b[17] != b' '
    {
        return None;
    }
    let num = |r| digits(text, r);
    let (month, day, year) = (num(0..2)?, num(3..5)?, num(6..8)?);
    let (hour, min, sec) = (num(9..11)?, num(12..14)?, num(15..17)?);
    let sign = match b[18] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (oh, om) = (num(19..21)? as i64, num(21..23)? as i64);
    if om > 59 {
        return None;
    }
    let local = unix_from_parts(2000 + year as i64, month, day, hour, min, sec)?;
    Some(local - sign * (oh * 3600 + om * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idgate_plugin_kit::time::parse_rfc3339;

    #[test]
    fn azure_times() {
        assert_eq!(
            parse_azure_time("04/19/22 07:27:21 -0000"),
            parse_rfc3339("2022-04-19T07:27:21Z")
        );
        assert_eq!(
            parse_azure_time("03/08/23 23:09:33 +0100"),
            parse_rfc3339("2023-03-08T22:09:33Z")
        );
        for bad in [
            "",
            "04/19/22 07:27:21",
            "13/19/22 07:27:21 -0000",
            "04/19/2022 07:27:21 -0000",
            "04/19/22 07:27:21 Z0000",
            "0x/19/22 07:27:21 -0000",
        ] {
            assert_eq!(parse_azure_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn documents() {
        let doc = Document::parse(br#"{"vmId":"v","timeStamp":{"expiresOn":"e"},"extra":1}"#).unwrap();
        assert_eq!(
            (doc.vm_id.as_str(), doc.time_stamp.unwrap().expires_on.as_str()),
            ("v", "e")
        );
        for bad in [&br#"{"vmId":""}"#[..], b"{}", b"[]", b"\xff", br#"{"vmId":7}"#] {
            assert!(matches!(Document::parse(bad), Err(VerifyError::Malformed(_))));
        }
    }
}
