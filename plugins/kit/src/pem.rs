//! PEM armour: trust material arrives as PEM text, often several certificates in
//! one string with comment lines between them.

use crate::encoding::base64_decode;

/// Every `-----BEGIN <label>-----` block in `text`, decoded to DER, in order.
/// Text outside the blocks (comments, blank lines) is ignored. A begun block
/// without its end, or with bad base64, is an error.
pub fn decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body_start = start + begin.len();
        let Some(len) = rest[body_start..].find(&end) else {
            return Err(format!("PEM block {label} has no END line"));
        };
        let body = &rest[body_start..body_start + len];
        out.push(base64_decode(body).map_err(|e| format!("PEM block {label}: {e}"))?);
        rest = &rest[body_start + len + end.len()..];
    }
    Ok(out)
}

/// The single `<label>` block in `text`, decoded to DER.
pub fn decode_one(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let mut blocks = decode_all(text, label)?;
    match blocks.len() {
        1 => Ok(blocks.remove(0)),
        0 => Err(format!("no PEM {label} block")),
        n => Err(format!("expected one PEM {label} block, found {n}")),
    }
}

/// Certificates (`CERTIFICATE` blocks) in `text`, as DER.
pub fn certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    decode_all(text, "CERTIFICATE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_blocks_with_comments() {
        let text = "# region=a\n-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n\
                    # region=b\n-----BEGIN CERTIFICATE-----\nd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert_eq!(certificates(text).unwrap(), vec![b"hello".to_vec(), b"world".to_vec()]);
        assert!(decode_one(text, "CERTIFICATE").is_err());
    }

    #[test]
    fn unterminated_or_garbage() {
        assert!(certificates("-----BEGIN CERTIFICATE-----\naGVsbG8=\n").is_err());
        assert!(certificates("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
        assert!(certificates("no pem here").unwrap().is_empty());
    }
}
