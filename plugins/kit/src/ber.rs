//! BER → DER normalisation, so strict DER decoders (`der` 0.7, `cms` 0.2) can read
//! PKCS#7 produced by BER encoders.
//!
//! AWS's PKCS#7 uses indefinite lengths and a constructed (segmented) eContent
//! OCTET STRING; Azure's is already DER. [`to_der`] rewrites one BER element so
//! that every length is definite and minimal and every constructed string is a
//! single primitive string. It does not sort SET OF (signers DER-encode what they
//! sign) and does not canonicalise primitive values (BOOLEAN, INTEGER): the DER
//! decoder downstream still rejects those if they are not DER.
//!
//! DER input comes back byte for byte; the output is a fixed point. The parser is
//! total: bounded nesting, bounded lengths, no panics on any input.

/// Deepest nesting accepted; CMS needs about 12 levels.
pub const MAX_DEPTH: usize = 32;

/// Longest length field accepted, in bytes (4 bytes: up to 4 GiB).
const MAX_LENGTH_BYTES: usize = 4;

/// Longest tag field accepted, in bytes (high tag numbers up to 2^21).
const MAX_TAG_BYTES: usize = 4;

/// Universal string types that BER lets an encoder segment (X.690 8.21 and
/// OCTET STRING); DER requires them primitive.
const STRING_TAGS: [u8; 15] = [4, 12, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30];

/// Universal BIT STRING: segmenting one would need unused-bit bookkeeping that
/// nothing we read uses, so it is refused.
const BIT_STRING: u8 = 3;

/// Rewrites the single BER element in `input` as DER (see the module doc).
/// Errors name what is wrong; trailing bytes after the element are an error.
pub fn to_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let node = parse(input, &mut pos, 0)?;
    if pos != input.len() {
        return Err(format!("{} trailing bytes after the BER element", input.len() - pos));
    }
    let mut out = Vec::with_capacity(input.len());
    node.encode(&mut out);
    Ok(out)
}

/// Whether [`to_der`] would give `input` back unchanged (one element, every
/// length definite and minimal, no constructed string, within the same
/// bounds), found by walking it without building anything. DER input (Azure's
/// PKCS#7) then needs no rewrite: the rewrite's copies of every element were a
/// visible share of a sandboxed Azure verification in the profile.
pub fn is_der(input: &[u8]) -> bool {
    let mut pos = 0;
    walk_der(input, &mut pos, 0) && pos == input.len()
}

/// [`is_der`] for the element at `*pos` (advanced past it), mirroring [`parse`].
fn walk_der(input: &[u8], pos: &mut usize, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let start = *pos;
    let Ok(h) = header(input, pos) else {
        return false;
    };
    let Some(len) = h.length else {
        return false;
    };
    // The length as `push_length` writes it: short form below 0x80, else the fewest bytes.
    let minimal = if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    };
    if h.tag == [0] || *pos - start - h.tag.len() != minimal {
        return false;
    }
    let Some(end) = pos.checked_add(len).filter(|e| *e <= input.len()) else {
        return false;
    };
    if !h.constructed {
        *pos = end;
        return true;
    }
    let universal = h.tag[0] & 0x1f;
    if h.tag == [BIT_STRING | 0x20] || (h.tag.len() == 1 && h.tag[0] & 0xc0 == 0 && STRING_TAGS.contains(&universal)) {
        return false;
    }
    let body = &input[..end];
    while *pos < end {
        if !walk_der(body, pos, depth + 1) {
            return false;
        }
    }
    true
}

/// One decoded element.
enum Node<'a> {
    /// Tag bytes (constructed bit clear) and content.
    Primitive(Vec<u8>, Vec<u8>),
    /// Tag bytes (constructed bit set) and the children.
    Constructed(&'a [u8], Vec<Node<'a>>),
}

impl Node<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Node::Primitive(tag, content) => {
                out.extend_from_slice(tag);
                push_length(out, content.len());
                out.extend_from_slice(content);
            }
            Node::Constructed(tag, children) => {
                let mut body = Vec::new();
                for child in children {
                    child.encode(&mut body);
                }
                out.extend_from_slice(tag);
                push_length(out, body.len());
                out.extend_from_slice(&body);
            }
        }
    }

    /// The concatenated content of a (possibly segmented) string.
    fn append_string(&self, universal: u8, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Node::Primitive(tag, content) if tag[..] == [universal] => {
                out.extend_from_slice(content);
                Ok(())
            }
            Node::Constructed(tag, children) if tag[..] == [universal | 0x20] => {
                children.iter().try_for_each(|c| c.append_string(universal, out))
            }
            _ => Err(format!("segment of a constructed string is not of type {universal}")),
        }
    }
}

/// Appends a minimal definite length (for callers re-encoding DER parts).
pub fn push_der_length(out: &mut Vec<u8>, len: usize) {
    push_length(out, len);
}

/// Appends a minimal definite length.
fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = (len as u64).to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// What a tag-and-length header says.
struct Header<'a> {
    tag: &'a [u8],
    constructed: bool,
    /// `None` for the indefinite form.
    length: Option<usize>,
}

/// Reads a tag and a length at `*pos`.
fn header<'a>(input: &'a [u8], pos: &mut usize) -> Result<Header<'a>, String> {
    let start = *pos;
    let first = *input.get(start).ok_or("truncated: tag expected")?;
    let mut end = start + 1;
    if first & 0x1f == 0x1f {
        // High tag number: base-128 digits, the last one without bit 8.
        loop {
            let b = *input.get(end).ok_or("truncated tag")?;
            end += 1;
            if end - start > MAX_TAG_BYTES {
                return Err("tag number too large".into());
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let tag = &input[start..end];
    let len_byte = *input.get(end).ok_or("truncated: length expected")?;
    end += 1;
    let length = match len_byte {
        0x80 => None,
        b if b < 0x80 => Some(b as usize),
        b => {
            let n = (b & 0x7f) as usize;
            if n > MAX_LENGTH_BYTES {
                return Err(format!("length field of {n} bytes is too long"));
            }
            let bytes = input.get(end..end + n).ok_or("truncated length")?;
            end += n;
            Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
        }
    };
    *pos = end;
    Ok(Header {
        tag,
        constructed: first & 0x20 != 0,
        length,
    })
}

/// Parses one element at `*pos`, advancing past it.
fn parse<'a>(input: &'a [u8], pos: &mut usize, depth: usize) -> Result<Node<'a>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nesting deeper than {MAX_DEPTH}"));
    }
    let h = header(input, pos)?;
    if h.tag == [0] {
        return Err("unexpected end-of-contents marker".into());
    }
    if !h.constructed {
        let len = h.length.ok_or("indefinite length on a primitive element")?;
        let content = input
            .get(*pos..pos.saturating_add(len))
            .ok_or("truncated: content shorter than its length")?;
        *pos += len;
        return Ok(Node::Primitive(h.tag.to_vec(), content.to_vec()));
    }
    if h.tag == [BIT_STRING | 0x20] {
        return Err("constructed BIT STRING is not supported".into());
    }
    let mut children = Vec::new();
    match h.length {
        Some(len) => {
            let end = pos.checked_add(len).filter(|e| *e <= input.len());
            let end = end.ok_or("truncated: content shorter than its length")?;
            let body = &input[..end];
            while *pos < end {
                children.push(parse(body, pos, depth + 1)?);
            }
        }
        None => loop {
            if input.get(*pos..*pos + 2) == Some(&[0, 0]) {
                *pos += 2;
                break;
            }
            if *pos >= input.len() {
                return Err("truncated: missing end-of-contents".into());
            }
            children.push(parse(input, pos, depth + 1)?);
        },
    }
    let universal = h.tag[0] & 0x1f;
    if h.tag.len() == 1 && h.tag[0] & 0xc0 == 0 && STRING_TAGS.contains(&universal) {
        let mut content = Vec::new();
        for child in &children {
            child.append_string(universal, &mut content)?;
        }
        return Ok(Node::Primitive(vec![universal], content));
    }
    Ok(Node::Constructed(h.tag, children))
}

/// One element of DER already known to be well formed (e.g. [`to_der`]'s
/// output): its tag byte, its content and its whole encoding.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    /// The first tag byte (CMS uses only low tag numbers).
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
    /// Tag, length and content.
    pub whole: &'a [u8],
}

/// Splits DER `content` into its elements (definite lengths only), for finding
/// the original bytes of a part that a decoder would re-encode.
pub fn der_elements(content: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let start = pos;
        let h = header(content, &mut pos)?;
        let len = h.length.ok_or("indefinite length in DER")?;
        let end = pos.checked_add(len).filter(|e| *e <= content.len());
        let end = end.ok_or("truncated: content shorter than its length")?;
        out.push(Tlv {
            tag: h.tag[0],
            content: &content[pos..end],
            whole: &content[start..end],
        });
        pos = end;
    }
    Ok(out)
}

/// The single DER element in `input` (nothing may follow it).
pub fn der_element(input: &[u8]) -> Result<Tlv<'_>, String> {
    let mut all = der_elements(input)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err("no DER element".into()),
        n => Err(format!("{n} DER elements where one was expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indefinite_and_segmented() {
        // SEQUENCE(indef) { OCTET STRING(constructed, indef) { "ab", "c" }, NULL }
        let ber = [0x30, 0x80, 0x24, 0x80, 4, 2, b'a', b'b', 4, 1, b'c', 0, 0, 5, 0, 0, 0];
        let der = to_der(&ber).unwrap();
        assert_eq!(der, [0x30, 7, 4, 3, b'a', b'b', b'c', 5, 0]);
        assert_eq!(to_der(&der).unwrap(), der);
    }

    #[test]
    fn non_minimal_length_is_shortened() {
        assert_eq!(to_der(&[4, 0x82, 0, 1, 7]).unwrap(), [4, 1, 7]);
        let long = [&[4u8, 0x81, 200][..], &[9u8; 200]].concat();
        assert_eq!(to_der(&long).unwrap(), long);
    }

    #[test]
    fn rejects() {
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 40).flatten().collect();
        for (bad, why) in [
            (&[0x23u8, 0x80, 3, 1, 0, 0, 0][..], "constructed BIT STRING"),
            (&[4, 1, 7, 0][..], "trailing"),
            (&[4, 0x85, 0, 0, 0, 0, 1, 7][..], "5-byte length"),
            (&[4, 0x80, 0, 0][..], "indefinite primitive"),
            (&[0x30, 0x80, 4, 0][..], "no end-of-contents"),
            (&[0x24, 0x80, 0x0c, 1, b'a', 0, 0][..], "mixed segment type"),
            (&[0, 0][..], "bare end-of-contents"),
            (&deep[..], "deep"),
            (&[][..], "empty"),
        ] {
            assert!(to_der(bad).is_err(), "{why}");
        }
    }

    /// `is_der` says yes exactly where `to_der` is the identity.
    #[test]
    fn is_der_is_to_ders_fixed_point() {
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 40).flatten().collect();
        let long = [&[4u8, 0x81, 200][..], &[9u8; 200]].concat();
        let longer = [&[4u8, 0x82, 1, 44][..], &[9u8; 300]].concat();
        let cases: [&[u8]; 17] = [
            &[0x30, 0x80, 0x24, 0x80, 4, 2, b'a', b'b', 4, 1, b'c', 0, 0, 5, 0, 0, 0],
            &[0x30, 7, 4, 3, b'a', b'b', b'c', 5, 0],
            &[4, 0x82, 0, 1, 7],
            &[4, 0x81, 5, 1, 2, 3, 4, 5],
            &long,
            &longer,
            &[0x23, 0x80, 3, 1, 0, 0, 0],
            &[0x23, 3, 3, 1, 0],
            &[0x24, 3, 4, 1, 7],
            &[0xa0, 3, 4, 1, 7],
            &[4, 1, 7, 0],
            &[0x30, 3, 4, 2, 7],
            &[0x30, 0],
            &[0, 0],
            &[0x1f, 0x81, 0x01, 1, 7],
            &deep,
            &[],
        ];
        for case in cases {
            let fixed = to_der(case).is_ok_and(|d| d == case);
            assert_eq!(is_der(case), fixed, "{case:02x?}");
        }
        let pkcs7 = include_bytes!("../../../tests/data/azure/coder_regular_attested.b64");
        let der = crate::encoding::base64_decode(std::str::from_utf8(pkcs7).unwrap()).unwrap();
        assert!(is_der(&der));
        assert_eq!(to_der(&der).unwrap(), der);
    }

    #[test]
    fn elements() {
        let tlvs = der_elements(&[2, 1, 5, 0x30, 2, 5, 0]).unwrap();
        assert_eq!(tlvs.len(), 2);
        assert_eq!(
            (tlvs[1].tag, tlvs[1].content, tlvs[1].whole),
            (0x30, &[5u8, 0][..], &[0x30, 2, 5, 0][..])
        );
        assert!(der_element(&[2, 1, 5, 0]).is_err());
        assert!(der_elements(&[2, 5, 0]).is_err());
    }
}
