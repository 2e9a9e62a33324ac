//! DNS name-constraint matching for the names webpki does not look at: a
//! leaf's subject commonNames.
//!
//! webpki (like Go since 1.15) checks name constraints against subjectAltName
//! only, because neither uses the commonName as a host name. A verifier that
//! does trust a commonName (Azure's signer check accepts the CN) must have it
//! constrained too, or a sub-CA limited to `example.com` could issue a leaf
//! whose SAN is `www.example.com` and whose CN is `metadata.azure.com`. So every
//! commonName of the leaf is held to the DNS subtrees of every CA above it, by
//! RFC 5280 4.2.1.10's rule as Go applies it: a base matches itself and any
//! name below it, a base with a leading `.` only names below it, the empty
//! base matches everything; case-insensitive; a trailing `.` on the name is
//! ignored. A commonName that is not a DNS name cannot be checked and is
//! refused under any DNS constraint.

use crate::certificate::DnsConstraints;

/// `Err(why)` if `name` breaks `constraints`.
pub(crate) fn check(name: &str, constraints: &DnsConstraints) -> Result<(), String> {
    if constraints.permitted.is_empty() && constraints.excluded.is_empty() {
        return Ok(());
    }
    let Some(labels) = labels(name.strip_suffix('.').unwrap_or(name)) else {
        return Err(format!(
            "commonName {name:?} is not a DNS name, so it cannot be checked against the CA's name constraints"
        ));
    };
    if let Some(base) = constraints.excluded.iter().find(|b| within(&labels, b)) {
        return Err(format!(
            "commonName {name:?} is excluded by the name constraint {base:?}"
        ));
    }
    if !constraints.permitted.is_empty() && !constraints.permitted.iter().any(|b| within(&labels, b)) {
        return Err(format!(
            "commonName {name:?} is not permitted by the name constraints {:?}",
            constraints.permitted
        ));
    }
    Ok(())
}

/// The lowercase labels of a DNS name, or `None` if it is not one.
fn labels(name: &str) -> Option<Vec<String>> {
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let labels: Vec<String> = name.split('.').map(|l| l.to_ascii_lowercase()).collect();
    let valid = |l: &String| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    labels.iter().all(valid).then_some(labels)
}

/// Whether the name `labels` lies within the constraint `base`.
fn within(labels: &[String], base: &str) -> bool {
    if base.is_empty() {
        return true;
    }
    let (base, strictly_below) = match base.strip_prefix('.') {
        Some(rest) => (rest, true),
        None => (base, false),
    };
    let Some(base) = self::labels(base) else {
        // A base we cannot read matches nothing (so it permits nothing and
        // excludes nothing; webpki refuses such a constraint on the SAN side).
        return false;
    };
    if labels.len() < base.len() || (strictly_below && labels.len() == base.len()) {
        return false;
    }
    labels[labels.len() - base.len()..] == base[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nc(permitted: &[&str], excluded: &[&str]) -> DnsConstraints {
        DnsConstraints {
            permitted: permitted.iter().map(|s| s.to_string()).collect(),
            excluded: excluded.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn subtrees_match_as_rfc_5280_says() {
        let ex = nc(&["example.com"], &[]);
        assert!(check("example.com", &ex).is_ok());
        assert!(check("WWW.Example.COM.", &ex).is_ok());
        assert!(check("metadata.azure.com", &ex).is_err());
        assert!(check("badexample.com", &ex).is_err());
        let below = nc(&[".example.com"], &[]);
        assert!(check("example.com", &below).is_err());
        assert!(check("a.example.com", &below).is_ok());
        let excluded = nc(&[], &["azure.com"]);
        assert!(check("metadata.azure.com", &excluded).is_err());
        assert!(check("metadata.azure.us", &excluded).is_ok());
        assert!(check("not a host name", &excluded).is_err());
        assert!(check("anything at all", &nc(&[], &[])).is_ok());
    }
}
