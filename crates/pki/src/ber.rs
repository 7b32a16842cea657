//! BER lengths to DER lengths. Signers that stream — OpenSSL's `cms -sign -stream`, Windows
//! CryptoAPI, Java's PKCS#7 writers — send SignedData (and PKCS#12 files) with indefinite
//! lengths and OCTET STRINGs cut into constructed chunks: valid BER, but not the DER the
//! readers of this crate take. [`to_der`] rewrites exactly those encodings (indefinite and
//! non-minimal lengths become minimal definite ones; a constructed OCTET STRING becomes one
//! primitive OCTET STRING) and copies every other byte as it was. SET OF keeps its order: the
//! signature over CMS signed attributes covers them as the signer encoded them.
//!
//! Hostile input gives an error, never a panic: nesting is bounded, every length is checked
//! against what is left, and the output is never larger than the input plus a few bytes per
//! element.

use std::borrow::Cow;

/// Deeper nesting than this is refused (CMS and PKCS#12 nest a dozen levels or so).
pub const MAX_DEPTH: usize = 48;

const OCTET_STRING: u8 = 0x04;
const CONSTRUCTED: u8 = 0x20;

/// The input with DER lengths; borrowed when it already had them. One element must fill it.
pub fn to_der(input: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    // The common case, DER already, is checked without copying anything.
    if der_lengths(input, 0) == Some(input.len()) {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = Vec::with_capacity(input.len());
    let used = element(input, 0, &mut out)?;
    if used != input.len() {
        return Err(format!(
            "{} bytes of trailing data after the encoding",
            input.len() - used
        ));
    }
    Ok(Cow::Owned(out))
}

/// Whether `input` is exactly one element with DER lengths throughout (and no chunked OCTET
/// STRING): what [`to_der`] would return unchanged.
pub fn is_der(input: &[u8]) -> bool {
    der_lengths(input, 0) == Some(input.len())
}

/// The children of the constructed BER element that fills `input`, each as the bytes it has in
/// `input` (definite or indefinite lengths, end-of-contents octets not included).
pub fn elements_of(input: &[u8]) -> Result<Vec<&[u8]>, String> {
    let tl = tag_len(input)?;
    if input[0] & CONSTRUCTED == 0 {
        return Err("a primitive element has no children".into());
    }
    let (len, ll) = length(&input[tl..])?;
    let start = tl + ll;
    let mut out = Vec::new();
    let mut pos = start;
    let end = match len {
        Length::Definite(n) => Some(start.checked_add(n).ok_or("length overflow")?),
        Length::Indefinite => None,
    };
    loop {
        let rest = match end {
            Some(e) => input.get(pos..e).ok_or("truncated element")?,
            None => &input[pos..],
        };
        if end.is_some() && rest.is_empty() || end.is_none() && rest.starts_with(&[0, 0]) {
            break;
        }
        let used = extent(rest, 1)?;
        out.push(&rest[..used]);
        pos += used;
    }
    Ok(out)
}

/// The size of the BER element at the start of `input`.
fn extent(input: &[u8], depth: usize) -> Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let tl = tag_len(input)?;
    let (len, ll) = length(&input[tl..])?;
    let start = tl + ll;
    match len {
        Length::Definite(n) => {
            let end = start.checked_add(n).ok_or("length overflow")?;
            if end > input.len() {
                return Err("truncated element".into());
            }
            Ok(end)
        }
        Length::Indefinite => {
            if input[0] & CONSTRUCTED == 0 {
                return Err("indefinite length on a primitive element".into());
            }
            let mut pos = start;
            loop {
                let rest = &input[pos..];
                if rest.starts_with(&[0, 0]) {
                    return Ok(pos + 2);
                }
                if rest.is_empty() {
                    return Err("indefinite length without end-of-contents".into());
                }
                pos += extent(rest, depth + 1)?;
            }
        }
    }
}

/// Checks the primitive values inside DER `input` (one element, definite lengths) that a
/// typed reader would check but a reader taking them as ANY would not: NULL is empty, BOOLEAN is
/// one byte 00 or FF, INTEGER and ENUMERATED are non-empty and minimal, an OBJECT IDENTIFIER's
/// arcs are minimal, a BIT STRING has at most 7 unused bits (none when empty), and UTF8String,
/// BMPString and UniversalString hold valid text. OCTET STRING contents are not entered.
pub fn check_values(input: &[u8]) -> Result<(), String> {
    fn walk(input: &[u8], depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let mut rest = input;
        while !rest.is_empty() {
            let tl = tag_len(rest)?;
            let (Length::Definite(n), ll) = length(&rest[tl..])? else {
                return Err("indefinite length".into());
            };
            let start = tl + ll;
            let end = start.checked_add(n).ok_or("length overflow")?;
            let v = rest.get(start..end).ok_or("truncated element")?;
            let tag = rest[0];
            if tag & CONSTRUCTED != 0 {
                walk(v, depth + 1)?;
            } else if tl == 1 {
                let ok = match tag {
                    0x01 => v.len() == 1 && (v[0] == 0 || v[0] == 0xFF),
                    0x02 | 0x0A => {
                        !v.is_empty()
                            && !(v.len() > 1
                                && (v[0] == 0 && v[1] & 0x80 == 0
                                    || v[0] == 0xFF && v[1] & 0x80 != 0))
                    }
                    0x03 => match v {
                        [] => false,
                        [0] => true,
                        [_] => false,
                        [unused, ..] => *unused <= 7,
                    },
                    0x05 => v.is_empty(),
                    0x06 => {
                        !v.is_empty()
                            && v.last().is_some_and(|b| b & 0x80 == 0)
                            && v.iter()
                                .enumerate()
                                .all(|(i, b)| *b != 0x80 || i > 0 && v[i - 1] & 0x80 != 0)
                    }
                    0x0C => std::str::from_utf8(v).is_ok(),
                    0x1E => v.len() % 2 == 0,
                    0x1C => v.len() % 4 == 0,
                    _ => true,
                };
                if !ok {
                    return Err(format!("invalid value of universal type {tag:#04x}"));
                }
            }
            rest = &rest[end..];
        }
        Ok(())
    }
    walk(input, 0)
}

/// Checks that DER `input` (definite lengths) holds no universal type other than SEQUENCE and
/// SET in constructed form: strings, OCTET and BIT STRINGs are primitive in DER, and a verifier
/// that re-encodes would see other bytes than the constructed form that was signed.
pub fn check_primitive_strings(input: &[u8]) -> Result<(), String> {
    fn walk(input: &[u8], depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let mut rest = input;
        while !rest.is_empty() {
            let tl = tag_len(rest)?;
            let (Length::Definite(n), ll) = length(&rest[tl..])? else {
                return Err("indefinite length".into());
            };
            let start = tl + ll;
            let end = start.checked_add(n).ok_or("length overflow")?;
            let v = rest.get(start..end).ok_or("truncated element")?;
            let tag = rest[0];
            if tag & CONSTRUCTED != 0 {
                let universal = tag & 0xC0 == 0;
                if universal && tl == 1 && !matches!(tag, 0x30 | 0x31) {
                    return Err(format!(
                        "universal type {:#04x} in constructed form",
                        tag & !CONSTRUCTED
                    ));
                }
                walk(v, depth + 1)?;
            }
            rest = &rest[end..];
        }
        Ok(())
    }
    walk(input, 0)
}

/// A tag's bytes: one, or a high-tag-number form of at most four.
fn tag_len(input: &[u8]) -> Result<usize, String> {
    let first = *input.first().ok_or("unexpected end of data")?;
    if first & 0x1f != 0x1f {
        return Ok(1);
    }
    for (i, b) in input.iter().enumerate().skip(1).take(4) {
        if b & 0x80 == 0 {
            return Ok(i + 1);
        }
    }
    Err("tag number too long or truncated".into())
}

/// The size of the element at the start of `input` when it and everything in it have minimal
/// definite lengths and no chunked OCTET STRING; `None` otherwise (or when it is malformed).
fn der_lengths(input: &[u8], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let tl = tag_len(input).ok()?;
    let (Length::Definite(n), ll) = length(&input[tl..]).ok()? else {
        return None;
    };
    let minimal = match ll {
        1 => true,
        2 => n >= 0x80,
        _ => n >> (8 * (ll - 2)) != 0,
    };
    if !minimal || input[..tl] == [OCTET_STRING | CONSTRUCTED] {
        return None;
    }
    let end = (tl + ll).checked_add(n)?;
    let content = input.get(tl + ll..end)?;
    if input[0] & CONSTRUCTED != 0 {
        let mut pos = 0;
        while pos < content.len() {
            pos += der_lengths(&content[pos..], depth + 1)?;
        }
    }
    Some(end)
}

/// The size of the definite-length element at the start of `input`, its contents not entered.
pub fn element_size(input: &[u8]) -> Result<usize, String> {
    let tl = tag_len(input)?;
    let (Length::Definite(n), ll) = length(&input[tl..])? else {
        return Err("indefinite length".into());
    };
    let end = (tl + ll).checked_add(n).ok_or("length overflow")?;
    if end > input.len() {
        return Err("truncated element".into());
    }
    Ok(end)
}

enum Length {
    Definite(usize),
    Indefinite,
}

/// The length field at the start of `input`: the length and the field's size.
fn length(input: &[u8]) -> Result<(Length, usize), String> {
    let first = *input.first().ok_or("missing length")?;
    if first < 0x80 {
        return Ok((Length::Definite(usize::from(first)), 1));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 {
        return Ok((Length::Indefinite, 1));
    }
    if n > 4 {
        return Err("length field too long".into());
    }
    let bytes = input.get(1..1 + n).ok_or("truncated length")?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok((Length::Definite(len), 1 + n))
}

/// Appends a DER length (short form below 128, else the fewest length octets).
pub(crate) fn put_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Rewrites one element from the start of `input` into `out`; returns the bytes it used.
fn element(input: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let tl = tag_len(input)?;
    let tag = &input[..tl];
    let constructed = input[0] & CONSTRUCTED != 0;
    let (len, ll) = length(&input[tl..])?;
    let start = tl + ll;
    match len {
        Length::Definite(n) => {
            let end = start.checked_add(n).ok_or("length overflow")?;
            let content = input.get(start..end).ok_or("truncated element")?;
            if constructed {
                children(tag, content, false, depth, out)?;
            } else {
                out.extend_from_slice(tag);
                put_length(out, n);
                out.extend_from_slice(content);
            }
            Ok(end)
        }
        Length::Indefinite => {
            if !constructed {
                return Err("indefinite length on a primitive element".into());
            }
            let used = children(tag, &input[start..], true, depth, out)?;
            Ok(start + used)
        }
    }
}

/// Rewrites the children of a constructed element: all of `content` (definite), or up to the
/// end-of-contents octets (indefinite, `until_eoc`). Returns the bytes of `content` used.
fn children(
    tag: &[u8],
    content: &[u8],
    until_eoc: bool,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let mut inner = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &content[pos..];
        if until_eoc {
            if rest.starts_with(&[0, 0]) {
                pos += 2;
                break;
            }
            if rest.is_empty() {
                return Err("indefinite length without end-of-contents".into());
            }
        } else if rest.is_empty() {
            break;
        }
        pos += element(rest, depth + 1, &mut inner)?;
    }
    if tag == [OCTET_STRING | CONSTRUCTED] {
        // A chunked OCTET STRING: its value is its chunks' values, one after the other.
        let mut value = Vec::with_capacity(inner.len());
        let mut chunks = inner.as_slice();
        while !chunks.is_empty() {
            if chunks[0] != OCTET_STRING {
                return Err("a chunk of an OCTET STRING is not an OCTET STRING".into());
            }
            let (len, ll) = length(&chunks[1..])?;
            let Length::Definite(n) = len else {
                return Err("indefinite length on a primitive element".into());
            };
            let from = 1 + ll;
            value.extend_from_slice(&chunks[from..from + n]);
            chunks = &chunks[from + n..];
        }
        out.push(OCTET_STRING);
        put_length(out, value.len());
        out.extend_from_slice(&value);
    } else {
        out.extend_from_slice(tag);
        put_length(out, inner.len());
        out.extend_from_slice(&inner);
    }
    Ok(pos)
}

/// The DER `der` as a streaming BER writer would put it: every constructed element with an
/// indefinite length, every OCTET STRING longer than 64 bytes in constructed chunks of 64.
/// For tests of the readers that take BER.
#[cfg(test)]
pub(crate) fn to_ber(der: &[u8]) -> Vec<u8> {
    fn one(input: &[u8], out: &mut Vec<u8>) -> usize {
        let tl = tag_len(input).unwrap();
        let (Length::Definite(n), ll) = length(&input[tl..]).unwrap() else {
            panic!("not DER")
        };
        let (start, end) = (tl + ll, tl + ll + n);
        let content = &input[start..end];
        if input[0] & CONSTRUCTED != 0 {
            out.extend_from_slice(&input[..tl]);
            out.push(0x80);
            let mut pos = 0;
            while pos < content.len() {
                pos += one(&content[pos..], out);
            }
            out.extend_from_slice(&[0, 0]);
        } else if input[0] == OCTET_STRING && n > 64 {
            out.extend_from_slice(&[OCTET_STRING | CONSTRUCTED, 0x80]);
            for chunk in content.chunks(64) {
                out.push(OCTET_STRING);
                put_length(out, chunk.len());
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&input[..end]);
        }
        end
    }
    let mut out = Vec::new();
    one(der, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 certificate and its PKCS#8 key, made by the openssl CLI.
    fn openssl_cert() -> (Vec<u8>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("certreg-ber-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl CLI");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-outform",
            "DER",
            "-out",
            "cert.der",
            "-subj",
            "/CN=ber test",
            "-days",
            "2",
        ]);
        openssl(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ]);
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let material = (read("cert.der"), read("key.der"));
        std::fs::remove_dir_all(&dir).unwrap();
        material
    }

    #[test]
    fn ber_written_from_der_reads_back_to_the_same_der() {
        let (cert, key) = openssl_cert();
        // Attached content over 64 bytes, so its OCTET STRING is written in chunks.
        let cms = crate::cms::build_signed_data(&[b'x'; 300], &cert, &Default::default(), |m| {
            crate::sig::sign_pkcs8(&key, m)
        })
        .unwrap();
        for der in [cms, cert] {
            let ber = to_ber(&der);
            assert_ne!(ber, der);
            assert_eq!(to_der(&ber).unwrap().as_ref(), der.as_slice());
        }
    }

    #[test]
    fn der_is_borrowed_unchanged() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xAA];
        assert!(matches!(to_der(&der).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn indefinite_lengths_and_chunked_octet_strings_become_der() {
        // SEQUENCE (indefinite) { INTEGER 5, OCTET STRING (constructed, indefinite)
        // { "ab", "c" }, [0] (indefinite) { NULL } }
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x05, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c',
            0x00, 0x00, 0xA0, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let der = [
            0x30, 0x0C, 0x02, 0x01, 0x05, 0x04, 0x03, b'a', b'b', b'c', 0xA0, 0x02, 0x05, 0x00,
        ];
        assert_eq!(to_der(&ber).unwrap().as_ref(), der);
    }

    #[test]
    fn non_minimal_lengths_become_minimal() {
        let ber = [0x04, 0x82, 0x00, 0x02, 0x01, 0x02];
        assert_eq!(to_der(&ber).unwrap().as_ref(), [0x04, 0x02, 0x01, 0x02]);
        let mut long = vec![0x04, 0x81, 0xC8];
        long.extend(std::iter::repeat_n(7u8, 200));
        assert_eq!(to_der(&long).unwrap().as_ref(), long.as_slice());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x02, 0x01, 0x05], // no end-of-contents
            &[0x04, 0x80, 0x00, 0x00],       // indefinite primitive
            &[0x30, 0x05, 0x02, 0x01],       // truncated
            &[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8], // length field too long
            &[0x24, 0x03, 0x02, 0x01, 0x00], // a chunk that is not an OCTET STRING
            &[0x02, 0x01, 0x05, 0x00],       // trailing data
            &[0x1f, 0x81, 0x81, 0x81, 0x81, 0x01], // tag number too long
        ] {
            assert!(to_der(bad).is_err(), "{bad:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n([0x30, 0x80], MAX_DEPTH + 2)
            .flatten()
            .chain(std::iter::repeat_n(0u8, 2 * (MAX_DEPTH + 2)))
            .collect();
        assert!(to_der(&deep).unwrap_err().contains("nested deeper"));
    }
}
