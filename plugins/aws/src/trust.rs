//! The built-in trust table: AWS's published regional certificates, as data.
//!
//! `certs/rsa1024.pem` holds the certificates for IMDS `/signature` (RSA-1024;
//! 17 default regions share one key), `certs/rsa2048.pem` those for `/rsa2048`,
//! each preceded by a `# region=<code> (<name>) expires=<date>` line (copied from
//! AWS's documentation as collected by SPIFFE SPIRE); `certs/dsa.pem` is the DSA
//! certificate of the legacy `/pkcs7`, which AWS publishes for most regions.
//!
//! Only the public keys matter: validity dates are never checked, because AWS's
//! classic `ec2.amazonaws.com` certificate expired in 2024 while its key still
//! signs.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::Certificate;

const RSA1024: &str = include_str!("../certs/rsa1024.pem");
const RSA2048: &str = include_str!("../certs/rsa2048.pem");
/// The DSA certificate of the legacy PKCS#7 (`O=Amazon Web Services LLC`, 2012..2038).
pub const DSA: &str = include_str!("../certs/dsa.pem");

/// Regions a table lacks that use another region's certificate: AWS lists one
/// RSA-1024 certificate for both China regions.
const ALIASES: &[(Table, &str, &str)] = &[(Table::Rsa1024, "cn-north-1", "cn-northwest-1")];

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");

/// Which built-in RSA table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// IMDS `/signature` keys (RSA-1024).
    Rsa1024,
    /// IMDS `/rsa2048` PKCS#7 keys.
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

/// The PEM certificate of `region` in `table`, if listed (directly or by alias).
pub fn certificate_pem(table: Table, region: &str) -> Option<&'static str> {
    listed_pem(table, region).or_else(|| {
        ALIASES
            .iter()
            .find(|(t, r, _)| *t == table && *r == region)
            .and_then(|(_, _, to)| listed_pem(table, to))
    })
}

fn listed_pem(table: Table, region: &str) -> Option<&'static str> {
    const END: &str = "-----END CERTIFICATE-----";
    // A region code never holds a space, so the marker cannot match a longer code.
    if region.is_empty() || region.contains(char::is_whitespace) {
        return None;
    }
    let text = table.text();
    let start = text.find(&format!("# region={region} "))?;
    let rest = &text[start..];
    let begin = rest.find("-----BEGIN CERTIFICATE-----")?;
    let end = rest.find(END)? + END.len();
    (begin < end).then(|| &rest[begin..end])
}

/// Every region `table` resolves, aliases included.
pub fn regions(table: Table) -> Vec<String> {
    let mut out: Vec<String> = table
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("# region="))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for (t, region, _) in ALIASES {
        if *t == table && !out.iter().any(|r| r == region) {
            out.push(region.to_string());
        }
    }
    out
}

/// Whether the built-in tables know `region` (the DSA certificate is offered
/// for these regions only).
pub fn is_known_region(region: &str) -> bool {
    certificate_pem(Table::Rsa1024, region).is_some() || certificate_pem(Table::Rsa2048, region).is_some()
}

/// What kind of public key a certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, with the modulus size in bits.
    Rsa {
        /// Modulus bit length.
        bits: usize,
    },
    /// DSA (legacy PKCS#7).
    Dsa,
}

/// A public key taken from a certificate.
#[derive(Debug, Clone)]
pub struct Key {
    /// DER SubjectPublicKeyInfo, as the host's crypto takes it.
    pub spki_der: Vec<u8>,
    /// RSA (with size) or DSA.
    pub kind: KeyKind,
    /// The certificate's DER, so a PKCS#7 signer can be matched to it.
    pub cert_der: Vec<u8>,
    /// `built-in` or `configured`, for messages.
    pub source: &'static str,
}

impl Key {
    /// RSA modulus size, 0 for DSA.
    pub fn bits(&self) -> usize {
        match self.kind {
            KeyKind::Rsa { bits } => bits,
            KeyKind::Dsa => 0,
        }
    }
}

/// The key of the single certificate in `pem`. Validity dates are deliberately not checked.
pub fn key_of(pem: &str, source: &'static str) -> Result<Key, String> {
    let der = idgate_plugin_kit::pem::decode_one(pem, "CERTIFICATE")?;
    key_of_der(der, source)
}

/// The key of a DER certificate: RSA of at least 1024 bits, or DSA.
pub fn key_of_der(cert_der: Vec<u8>, source: &'static str) -> Result<Key, String> {
    let cert = Certificate::from_der(&cert_der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let spki_der = spki.to_der().map_err(|e| e.to_string())?;
    let kind = match spki.algorithm.oid {
        RSA_ENCRYPTION => {
            let bits =
                rsa_bits(spki.subject_public_key.raw_bytes()).ok_or("the RSA public key is not a DER RSAPublicKey")?;
            if bits < 1024 {
                return Err(format!("an RSA key of {bits} bits is too small (1024 at least)"));
            }
            KeyKind::Rsa { bits }
        }
        ID_DSA => KeyKind::Dsa,
        other => return Err(format!("the key is neither RSA nor DSA (algorithm {other})")),
    };
    Ok(Key {
        spki_der,
        kind,
        cert_der,
        source,
    })
}

/// Bit length of the modulus of a DER RSAPublicKey.
fn rsa_bits(rsa_public_key: &[u8]) -> Option<usize> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        n: der::asn1::UintRef<'a>,
        _e: der::asn1::UintRef<'a>,
    }
    let key = RsaPublicKey::from_der(rsa_public_key).ok()?;
    let n = key.n.as_bytes();
    let first = n.first()?;
    Some(n.len() * 8 - first.leading_zeros() as usize)
}

/// Loads every built-in certificate and checks each region of both tables
/// resolves to an RSA key of the table's size, and the DSA certificate to a DSA
/// key. Returns the number of regions per table. For tests and `idgate check`.
pub fn check_builtin() -> Result<(usize, usize), String> {
    let mut counts = [0; 2];
    for (i, (table, want_bits)) in [(Table::Rsa1024, 1024), (Table::Rsa2048, 2048)].into_iter().enumerate() {
        for region in regions(table) {
            let pem = certificate_pem(table, &region).ok_or_else(|| format!("{table:?} {region}: not found"))?;
            let key = key_of(pem, "built-in").map_err(|e| format!("{table:?} {region}: {e}"))?;
            if key.kind != (KeyKind::Rsa { bits: want_bits }) {
                return Err(format!("{table:?} {region}: {:?} instead of RSA-{want_bits}", key.kind));
            }
            counts[i] += 1;
        }
    }
    let dsa = key_of(DSA, "built-in").map_err(|e| format!("DSA: {e}"))?;
    if dsa.kind != KeyKind::Dsa {
        return Err(format!("DSA certificate holds {:?}", dsa.kind));
    }
    Ok((counts[0], counts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_region_resolves_to_a_key() {
        let (rsa1024, rsa2048) = check_builtin().unwrap();
        // 38 listed + the cn-north-1 alias; 39 listed.
        assert_eq!((rsa1024, rsa2048), (39, 39));
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
        for bogus in ["us-east-", "mars-1", "", "us-east-1 (", "af-south-1 (Africa"] {
            assert!(certificate_pem(Table::Rsa1024, bogus).is_none(), "{bogus}");
        }
        assert!(is_known_region("eusc-de-east-1"));
        assert!(!is_known_region("mars-1"));
    }

    #[test]
    fn aliases_apply_only_where_the_table_lacks_the_region() {
        assert_eq!(
            certificate_pem(Table::Rsa1024, "cn-north-1"),
            certificate_pem(Table::Rsa1024, "cn-northwest-1")
        );
        assert_ne!(
            certificate_pem(Table::Rsa2048, "cn-north-1"),
            certificate_pem(Table::Rsa2048, "cn-northwest-1")
        );
        let listed = regions(Table::Rsa2048);
        assert_eq!(listed.iter().filter(|r| *r == "cn-north-1").count(), 1);
    }

    #[test]
    fn seventeen_default_regions_share_one_rsa1024_key() {
        let east = key_of(certificate_pem(Table::Rsa1024, "us-east-1").unwrap(), "built-in").unwrap();
        let sharing = regions(Table::Rsa1024)
            .iter()
            .filter(|r| {
                key_of(certificate_pem(Table::Rsa1024, r).unwrap(), "")
                    .unwrap()
                    .spki_der
                    == east.spki_der
            })
            .count();
        assert_eq!(sharing, 17);
    }
}
