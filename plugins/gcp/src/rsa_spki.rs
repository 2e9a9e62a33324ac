//! A JWK's RSA modulus and exponent as the DER SubjectPublicKeyInfo the host's
//! `verify-signature` takes.

use der::asn1::{AnyRef, BitStringRef, SequenceOf, UintRef};
use der::Encode;
use spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};

/// `rsaEncryption` (RFC 8017 A.1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The SubjectPublicKeyInfo of the RSA key `(n, e)`, both unsigned big-endian.
///
/// `UintRef` strips redundant leading zeros and adds the one a DER INTEGER needs
/// when the top bit is set, so JWK values with or without a leading zero give the
/// same encoding.
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    if n.iter().all(|&b| b == 0) || e.iter().all(|&b| b == 0) {
        return Err("RSA modulus or exponent is zero".into());
    }
    let mut key = SequenceOf::<UintRef<'_>, 2>::new();
    for part in [n, e] {
        let int = UintRef::new(part).map_err(|err| format!("RSA key: {err}"))?;
        key.add(int).map_err(|err| format!("RSA key: {err}"))?;
    }
    let pkcs1 = key.to_der().map_err(|err| format!("RSA key: {err}"))?;
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: RSA_ENCRYPTION,
            parameters: Some(AnyRef::NULL),
        },
        subject_public_key: BitStringRef::from_bytes(&pkcs1).map_err(|err| format!("RSA key: {err}"))?,
    };
    spki.to_der().map_err(|err| format!("RSA key: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_small_key_exactly() {
        // n = 0x80 01 (top bit set: DER needs a leading zero), e = 65537.
        let der = rsa_spki_der(&[0x80, 0x01], &[0x01, 0x00, 0x01]).unwrap();
        let expected = [
            0x30, 0x1e, // SPKI
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, // alg
            0x03, 0x0d, 0x00, // BIT STRING, no unused bits
            0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(der, expected);
    }

    #[test]
    fn leading_zero_in_input_is_ignored() {
        assert_eq!(
            rsa_spki_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]).unwrap(),
            rsa_spki_der(&[0x80, 0x01], &[0x01, 0x00, 0x01]).unwrap()
        );
    }

    #[test]
    fn zero_and_empty_are_refused() {
        assert!(rsa_spki_der(&[], &[1, 0, 1]).is_err());
        assert!(rsa_spki_der(&[0, 0], &[1, 0, 1]).is_err());
        assert!(rsa_spki_der(&[0x80], &[]).is_err());
    }
}
