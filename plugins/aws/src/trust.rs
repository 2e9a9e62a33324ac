//! The built-in trust table: AWS's published regional certificates, as data.
//!
//! `certs/rsa1024.pem` holds the certificates for IMDS `/signature` (RSA-1024;
//! 17 default regions share one key), `certs/rsa2048.pem` those for `/rsa2048`,
//! each preceded by a `# region=<code> (<name>) ...` line; `certs/dsa.pem` is the
//! DSA certificate of the legacy `/pkcs7` for most regions.

use der::{Decode, Encode};
use x509_cert::Certificate;

const RSA1024: &str = include_str!("../certs/rsa1024.pem");
const RSA2048: &str = include_str!("../certs/rsa2048.pem");
/// The DSA certificate of the legacy PKCS#7.
pub const DSA: &str = include_str!("../certs/dsa.pem");

/// Regions whose published table reuses another region's certificate.
const ALIASES: &[(&str, &str)] = &[("cn-north-1", "cn-northwest-1")];

/// Which built-in table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// IMDS `/signature` keys.
    Rsa1024,
    /// IMDS `/rsa2048` keys.
    Rsa2048,
}

impl Table {
    fn text(self) -> &'static str {
        match self {
            Table::Rsa1024 => RSA1024,
            Table::Rsa2048 => RSA2048,
        }
    }
}

/// The PEM certificate of `region` in `table`, if listed.
pub fn certificate_pem(table: Table, region: &str) -> Option<&'static str> {
    let region = ALIASES.iter().find(|(r, _)| *r == region).map_or(region, |(_, to)| to);
    let text = table.text();
    let marker = format!("# region={region} ");
    let start = text.find(&marker)?;
    let rest = &text[start..];
    let begin = rest.find("-----BEGIN CERTIFICATE-----")?;
    let end = rest.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    (begin < end).then(|| &rest[begin..end])
}

/// Every region listed in `table` (aliases included).
pub fn regions(table: Table) -> Vec<String> {
    let mut out: Vec<String> = table
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("# region="))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    out.extend(ALIASES.iter().map(|(r, _)| r.to_string()));
    out
}

/// A public key taken from a certificate.
#[derive(Debug, Clone)]
pub struct Key {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// RSA modulus size (0 for non-RSA keys).
    pub bits: usize,
    /// `built-in` or `configured`, for messages.
    pub source: &'static str,
}

/// The key of a PEM certificate. Validity dates are deliberately not checked.
pub fn key_of(pem: &str, source: &'static str) -> Result<Key, String> {
    let der = idgate_plugin_kit::pem::decode_one(pem, "CERTIFICATE")?;
    let cert = Certificate::from_der(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let spki_der = spki.to_der().map_err(|e| e.to_string())?;
    let bits = rsa_bits(spki.subject_public_key.raw_bytes());
    Ok(Key { spki_der, bits, source })
}

/// Bit length of the modulus of a DER RSAPublicKey, 0 if it is not one.
fn rsa_bits(rsa_public_key: &[u8]) -> usize {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        n: der::asn1::UintRef<'a>,
        _e: der::asn1::UintRef<'a>,
    }
    match RsaPublicKey::from_der(rsa_public_key) {
        Ok(k) => {
            let n = k.n.as_bytes();
            n.first().map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize)
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_region_resolves_to_a_key() {
        for table in [Table::Rsa1024, Table::Rsa2048] {
            let regions = regions(table);
            assert!(regions.len() >= 38, "{table:?}: {}", regions.len());
            for region in regions {
                let pem = certificate_pem(table, &region).unwrap_or_else(|| panic!("{table:?} {region}"));
                let key = key_of(pem, "built-in").unwrap_or_else(|e| panic!("{table:?} {region}: {e}"));
                assert!(key.bits >= 1024, "{table:?} {region}: {} bits", key.bits);
            }
        }
        assert!(key_of(DSA, "built-in").is_ok());
    }

    #[test]
    fn partitions_are_covered() {
        for region in [
            "us-east-1",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-west-1",
            "us-gov-east-1",
        ] {
            assert!(certificate_pem(Table::Rsa1024, region).is_some(), "{region}");
            assert!(certificate_pem(Table::Rsa2048, region).is_some(), "{region}");
        }
        assert!(certificate_pem(Table::Rsa1024, "us-east-").is_none());
        assert!(certificate_pem(Table::Rsa1024, "mars-1").is_none());
    }
}
