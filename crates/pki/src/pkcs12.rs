//! PKCS#12 (PFX) soft cards: writing the files the test PKI and demo hand out, and reading them
//! (ours and `openssl pkcs12 -export` output) for the card agent.
//!
//! The ASN.1 is small and fixed, so it is built and walked by hand over DER TLVs: every read is
//! bounds-checked (BER input is first rewritten to DER lengths by [`crate::ber`]), so hostile input
//! gives an error, not a panic.
//! PBES2 (PBKDF2 + AES-CBC) comes from the `pkcs5` crate through `pkcs8`; the MAC key derivation
//! of RFC 7292 appendix B, which no crate we use offers, is implemented here with ring.

use crate::error::{ErrorCode, PkiError, Result};
use const_oid::ObjectIdentifier as Oid;
use der::Decode;
use pkcs8::pkcs5::{self, pbes2};
use ring::{digest, hmac, rand::SecureRandom};

/// Soft-card files are a few KiB; anything much larger is not one of ours.
pub const MAX_PKCS12_LEN: usize = 64 * 1024;

/// PBKDF2 rounds for the key bag we write (the brief's floor; the PIN is the real secret).
const WRITE_PBKDF2_ITERATIONS: u32 = 10_000;
/// MAC key-derivation rounds for files we write.
const WRITE_MAC_ITERATIONS: u32 = 10_000;
/// Refuse to spend unbounded time on an attacker-chosen iteration count (real files use
/// 2 000 – 600 000).
const MAX_ITERATIONS: u64 = 1_000_000;

const OID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
const OID_ENCRYPTED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.6");
const OID_KEY_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.1");
const OID_SHROUDED_KEY_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.2");
const OID_CERT_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.3");
const OID_X509_CERT: Oid = Oid::new_unwrap("1.2.840.113549.1.9.22.1");
const OID_FRIENDLY_NAME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.20");
const OID_LOCAL_KEY_ID: Oid = Oid::new_unwrap("1.2.840.113549.1.9.21");
/// pkcs-12PbeIds: the legacy PBES1-style schemes (3DES, RC2) of old exports.
const OID_PKCS12_PBE_ARC: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1");

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_BMP_STRING: u8 = 0x1e;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_CTX0_CONSTRUCTED: u8 = 0xa0;
const TAG_CTX0_PRIMITIVE: u8 = 0x80;

/// What a PKCS#12 file holds: one private key, its certificate and the rest of the chain.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs12Contents {
    /// PKCS#8 PrivateKeyInfo, DER, unencrypted.
    pub key_pkcs8_der: Vec<u8>,
    /// The certificate of that key (the card certificate).
    pub cert_der: Vec<u8>,
    /// The other certificates in the file, in file order.
    pub chain_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Pkcs12Contents {
    // The key is a secret; keep it out of logs and test failure output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs12Contents")
            .field(
                "key_pkcs8_der",
                &format_args!("<{} bytes>", self.key_pkcs8_der.len()),
            )
            .field("cert_der", &format_args!("<{} bytes>", self.cert_der.len()))
            .field("chain_der", &self.chain_der.len())
            .finish()
    }
}

fn malformed(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::Pkcs12Malformed, detail)
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Builds a PFX v3 file: certificates in a plain SafeContents (they are public), the key as a
/// pkcs8ShroudedKeyBag under PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), and an HMAC-SHA256 MAC.
///
/// The card certificate and the key share a `localKeyId` and `friendlyName`, which is how
/// OpenSSL, Windows and our reader pair them.
pub fn write_pkcs12(
    cert_der: &[u8],
    chain_der: &[Vec<u8>],
    key_pkcs8_der: &[u8],
    password: &str,
    friendly_name: &str,
) -> Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let random = |n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        rng.fill(&mut b).map_err(|_| {
            PkiError::new(ErrorCode::Pkcs12Malformed, "system random source failed")
        })?;
        Ok(b)
    };

    // SHA-1 of the certificate is the localKeyId OpenSSL computes; matching it keeps files
    // recognisable to tools that compare ids. It is an identifier, not a security function.
    let local_key_id = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der)
        .as_ref()
        .to_vec();
    let attrs = bag_attributes(friendly_name, &local_key_id);

    let mut cert_bags = vec![safe_bag(OID_CERT_BAG, &cert_bag(cert_der), Some(&attrs))];
    for c in chain_der {
        cert_bags.push(safe_bag(OID_CERT_BAG, &cert_bag(c), None));
    }
    let certs_safe_contents = tlv(TAG_SEQUENCE, &cert_bags.concat());

    let salt = random(16)?;
    let iv: [u8; 16] = random(16)?.try_into().map_err(|_| malformed("iv length"))?;
    let params =
        pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(WRITE_PBKDF2_ITERATIONS, &salt, iv)
            .map_err(|e| malformed(format!("PBES2 parameters: {e}")))?;
    let scheme = pkcs5::EncryptionScheme::Pbes2(params);
    let ciphertext = scheme
        .encrypt(password.as_bytes(), key_pkcs8_der)
        .map_err(|e| malformed(format!("key encryption: {e}")))?;
    let scheme_der =
        der::Encode::to_der(&scheme).map_err(|e| malformed(format!("PBES2 encoding: {e}")))?;
    let epki = tlv(
        TAG_SEQUENCE,
        &[scheme_der, tlv(TAG_OCTET_STRING, &ciphertext)].concat(),
    );
    let key_safe_contents = tlv(
        TAG_SEQUENCE,
        &safe_bag(OID_SHROUDED_KEY_BAG, &epki, Some(&attrs)),
    );

    let auth_safe = tlv(
        TAG_SEQUENCE,
        &[
            data_content_info(&certs_safe_contents),
            data_content_info(&key_safe_contents),
        ]
        .concat(),
    );

    let mac_salt = random(16)?;
    let mac = compute_mac(
        MacHash::Sha256,
        password,
        &mac_salt,
        WRITE_MAC_ITERATIONS,
        &auth_safe,
    )?;
    let mac_data = tlv(
        TAG_SEQUENCE,
        &[
            tlv(
                TAG_SEQUENCE,
                &[
                    tlv(
                        TAG_SEQUENCE,
                        &[oid_tlv(&crate::oid::SHA256), tlv(TAG_NULL, &[])].concat(),
                    ),
                    tlv(TAG_OCTET_STRING, &mac),
                ]
                .concat(),
            ),
            tlv(TAG_OCTET_STRING, &mac_salt),
            uint_tlv(u64::from(WRITE_MAC_ITERATIONS)),
        ]
        .concat(),
    );

    Ok(tlv(
        TAG_SEQUENCE,
        &[uint_tlv(3), data_content_info(&auth_safe), mac_data].concat(),
    ))
}

/// A DER TLV with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn oid_tlv(oid: &Oid) -> Vec<u8> {
    tlv(TAG_OID, oid.as_bytes())
}

fn uint_tlv(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut content = Vec::with_capacity(9);
    if bytes[skip] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&bytes[skip..]);
    tlv(TAG_INTEGER, &content)
}

fn explicit0(inner: &[u8]) -> Vec<u8> {
    tlv(TAG_CTX0_CONSTRUCTED, inner)
}

fn data_content_info(content: &[u8]) -> Vec<u8> {
    tlv(
        TAG_SEQUENCE,
        &[
            oid_tlv(&OID_DATA),
            explicit0(&tlv(TAG_OCTET_STRING, content)),
        ]
        .concat(),
    )
}

fn cert_bag(cert_der: &[u8]) -> Vec<u8> {
    tlv(
        TAG_SEQUENCE,
        &[
            oid_tlv(&OID_X509_CERT),
            explicit0(&tlv(TAG_OCTET_STRING, cert_der)),
        ]
        .concat(),
    )
}

fn safe_bag(bag_id: Oid, value: &[u8], attributes: Option<&[u8]>) -> Vec<u8> {
    let mut content = [oid_tlv(&bag_id), explicit0(value)].concat();
    if let Some(a) = attributes {
        content.extend_from_slice(a);
    }
    tlv(TAG_SEQUENCE, &content)
}

fn bag_attributes(friendly_name: &str, local_key_id: &[u8]) -> Vec<u8> {
    let bmp: Vec<u8> = friendly_name
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let friendly = tlv(
        TAG_SEQUENCE,
        &[
            oid_tlv(&OID_FRIENDLY_NAME),
            tlv(TAG_SET, &tlv(TAG_BMP_STRING, &bmp)),
        ]
        .concat(),
    );
    let key_id = tlv(
        TAG_SEQUENCE,
        &[
            oid_tlv(&OID_LOCAL_KEY_ID),
            tlv(TAG_SET, &tlv(TAG_OCTET_STRING, local_key_id)),
        ]
        .concat(),
    );
    // DER orders SET OF members by encoding; both start with 0x30 and the friendlyName OID
    // (…9.20) sorts before localKeyId (…9.21) at equal lengths, but sort anyway.
    let mut members = [friendly, key_id];
    members.sort();
    tlv(TAG_SET, &members.concat())
}

// ---------------------------------------------------------------------------------------------
// MAC (RFC 7292 appendix B)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum MacHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl MacHash {
    fn from_oid(o: &Oid) -> Option<Self> {
        Some(match *o {
            crate::oid::SHA1 => Self::Sha1,
            crate::oid::SHA256 => Self::Sha256,
            crate::oid::SHA384 => Self::Sha384,
            crate::oid::SHA512 => Self::Sha512,
            _ => return None,
        })
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Self::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha384 => hmac::HMAC_SHA384,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// The PKCS#12 KDF: password as a BMPString with its two-byte terminator, `id` 3 for MAC keys.
fn pkcs12_kdf(
    hash: MacHash,
    password: &str,
    salt: &[u8],
    id: u8,
    iterations: u64,
    n: usize,
) -> Vec<u8> {
    let alg = hash.digest_alg();
    let u = alg.output_len();
    let v = alg.block_len();
    let mut pw: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    pw.extend_from_slice(&[0, 0]);

    let fill = |src: &[u8]| -> Vec<u8> {
        if src.is_empty() {
            return Vec::new();
        }
        let len = v * src.len().div_ceil(v);
        src.iter().copied().cycle().take(len).collect()
    };
    let d = vec![id; v];
    let mut i_buf = [fill(salt), fill(&pw)].concat();

    let mut out = Vec::with_capacity(n + u);
    while out.len() < n {
        let mut ctx = digest::Context::new(alg);
        ctx.update(&d);
        ctx.update(&i_buf);
        let mut a = ctx.finish().as_ref().to_vec();
        for _ in 1..iterations {
            a = digest::digest(alg, &a).as_ref().to_vec();
        }
        out.extend_from_slice(&a);
        if out.len() >= n {
            break;
        }
        let b: Vec<u8> = a.iter().copied().cycle().take(v).collect();
        // I_j = (I_j + B + 1) mod 2^(8v), big-endian, for every v-byte block of I.
        for block in i_buf.chunks_mut(v) {
            let mut carry = 1u16;
            for k in (0..v).rev() {
                let sum = u16::from(block[k]) + u16::from(b[k]) + carry;
                block[k] = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    out.truncate(n);
    out
}

fn compute_mac(
    hash: MacHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
    data: &[u8],
) -> Result<Vec<u8>> {
    let key_len = hash.digest_alg().output_len();
    let key = pkcs12_kdf(hash, password, salt, 3, u64::from(iterations), key_len);
    let key = hmac::Key::new(hash.hmac_alg(), &key);
    Ok(hmac::sign(&key, data).as_ref().to_vec())
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// One DER element: its tag, its content and its whole encoding.
#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    raw: &'a [u8],
}

/// Splits one DER element off the front of `input`.
fn next_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8])> {
    let tag = *input
        .first()
        .ok_or_else(|| malformed("unexpected end of data"))?;
    if tag & 0x1f == 0x1f {
        return Err(malformed("multi-byte tags are not used in PKCS#12"));
    }
    let first = *input.get(1).ok_or_else(|| malformed("missing length"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(malformed("indefinite length (BER) is not supported"));
        }
        if n > 4 {
            return Err(malformed("length too large"));
        }
        let bytes = input
            .get(2..2 + n)
            .ok_or_else(|| malformed("truncated length"))?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let end = header
        .checked_add(len)
        .ok_or_else(|| malformed("length overflow"))?;
    let raw = input
        .get(..end)
        .ok_or_else(|| malformed("truncated element"))?;
    let content = raw
        .get(header..)
        .ok_or_else(|| malformed("truncated element"))?;
    Ok((Tlv { tag, content, raw }, &input[end..]))
}

/// Reads exactly one element of the expected tag that fills `input`.
fn single<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<Tlv<'a>> {
    let (t, rest) = next_tlv(input)?;
    if t.tag != tag {
        return Err(malformed(format!(
            "{what}: expected tag {tag:#04x}, found {:#04x}",
            t.tag
        )));
    }
    if !rest.is_empty() {
        return Err(malformed(format!("{what}: trailing data")));
    }
    Ok(t)
}

/// Walks the elements of a constructed value's content.
struct Seq<'a> {
    rest: &'a [u8],
}

impl<'a> Seq<'a> {
    fn new(content: &'a [u8]) -> Self {
        Self { rest: content }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn next_any(&mut self) -> Result<Tlv<'a>> {
        let (t, rest) = next_tlv(self.rest)?;
        self.rest = rest;
        Ok(t)
    }

    fn next(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>> {
        let t = self.next_any()?;
        if t.tag != tag {
            return Err(malformed(format!(
                "{what}: expected tag {tag:#04x}, found {:#04x}",
                t.tag
            )));
        }
        Ok(t)
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn next_oid(&mut self, what: &str) -> Result<Oid> {
        let t = self.next(TAG_OID, what)?;
        Oid::from_bytes(t.content).map_err(|_| malformed(format!("{what}: bad object identifier")))
    }
}

fn parse_uint(t: &Tlv<'_>, what: &str) -> Result<u64> {
    if t.tag != TAG_INTEGER || t.content.is_empty() || t.content[0] & 0x80 != 0 {
        return Err(malformed(format!("{what}: not a non-negative INTEGER")));
    }
    let digits = match t.content {
        [0, rest @ ..] => rest,
        all => all,
    };
    if digits.len() > 8 {
        return Err(malformed(format!("{what}: integer too large")));
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Opens a PKCS#12 file with its password: checks the MAC first (a mismatch is
/// [`ErrorCode::WrongPassword`]), then decrypts the key and any encrypted certificate bags.
///
/// Reads PBES2 (PBKDF2 with HMAC-SHA1/SHA-2, AES-CBC) as OpenSSL 3 writes by default; the legacy
/// RC2/3DES schemes of old exports are refused with [`ErrorCode::UnsupportedAlgorithm`].
pub fn read_pkcs12(bytes: &[u8], password: &str) -> Result<Pkcs12Contents> {
    if bytes.len() > MAX_PKCS12_LEN {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "PKCS#12 file of {} bytes exceeds {MAX_PKCS12_LEN}",
                bytes.len()
            ),
        ));
    }
    // Windows and Java write PFX files in BER (indefinite lengths, chunked OCTET STRINGs).
    let bytes = crate::ber::to_der(bytes).map_err(|e| malformed(format!("PFX: {e}")))?;
    let pfx = single(&bytes, TAG_SEQUENCE, "PFX")?;
    let mut pfx = Seq::new(pfx.content);
    let version = parse_uint(&pfx.next(TAG_INTEGER, "PFX version")?, "PFX version")?;
    if version != 3 {
        return Err(malformed(format!("PFX version {version}, expected 3")));
    }
    let auth_safe_ci = pfx.next(TAG_SEQUENCE, "authSafe")?;
    let auth_safe = data_content(auth_safe_ci.content)?;

    let mac_verified = if pfx.is_empty() {
        false
    } else {
        verify_mac(
            pfx.next(TAG_SEQUENCE, "macData")?.content,
            password,
            auth_safe,
        )?;
        true
    };
    if !pfx.is_empty() {
        return Err(malformed("trailing data after macData"));
    }

    let mut keys: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut certs: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();

    let mut infos = Seq::new(single(auth_safe, TAG_SEQUENCE, "AuthenticatedSafe")?.content);
    while !infos.is_empty() {
        let ci = infos.next(TAG_SEQUENCE, "ContentInfo")?;
        let mut ci_seq = Seq::new(ci.content);
        let content_type = ci_seq.next_oid("ContentInfo contentType")?;
        let safe_contents = if content_type == OID_DATA {
            data_content(ci.content)?.to_vec()
        } else if content_type == OID_ENCRYPTED_DATA {
            let explicit = ci_seq.next(TAG_CTX0_CONSTRUCTED, "EncryptedData wrapper")?;
            decrypt_encrypted_data(explicit.content, password, mac_verified)?
        } else {
            // Public-key privacy mode (envelopedData) is not something soft cards use.
            return Err(PkiError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("PKCS#12 content type {content_type} is not supported"),
            ));
        };
        read_safe_contents(
            &safe_contents,
            password,
            mac_verified,
            &mut keys,
            &mut certs,
        )?;
    }

    let (key, key_id) = match keys.len() {
        1 => keys.remove(0),
        0 => return Err(malformed("no private key in the file")),
        n => {
            return Err(malformed(format!(
                "{n} private keys in the file, expected one"
            )));
        }
    };
    if certs.is_empty() {
        return Err(malformed("no certificate in the file"));
    }
    // The key's certificate is the one sharing its localKeyId; without ids, the first one.
    let index = key_id
        .as_ref()
        .and_then(|id| certs.iter().position(|(_, cid)| cid.as_ref() == Some(id)))
        .unwrap_or(0);
    let (cert_der, _) = certs.remove(index);
    x509_cert::Certificate::from_der(&cert_der).map_err(|e| {
        PkiError::new(
            ErrorCode::CertMalformed,
            format!("certificate in PKCS#12: {e}"),
        )
    })?;
    pkcs8::PrivateKeyInfoRef::from_der(&key)
        .map_err(|e| malformed(format!("private key is not PKCS#8: {e}")))?;

    Ok(Pkcs12Contents {
        key_pkcs8_der: key,
        cert_der,
        chain_der: certs.into_iter().map(|(c, _)| c).collect(),
    })
}

/// The OCTET STRING inside a `ContentInfo { data, [0] EXPLICIT OCTET STRING }` (given its content).
fn data_content(content_info: &[u8]) -> Result<&[u8]> {
    let mut s = Seq::new(content_info);
    let ct = s.next_oid("ContentInfo contentType")?;
    if ct != OID_DATA {
        return Err(malformed(format!(
            "expected a data ContentInfo, found {ct}"
        )));
    }
    let explicit = s.next(TAG_CTX0_CONSTRUCTED, "ContentInfo content")?;
    Ok(single(explicit.content, TAG_OCTET_STRING, "ContentInfo data")?.content)
}

fn verify_mac(mac_data: &[u8], password: &str, auth_safe: &[u8]) -> Result<()> {
    let mut s = Seq::new(mac_data);
    let digest_info = s.next(TAG_SEQUENCE, "MacData mac")?;
    let salt = s.next(TAG_OCTET_STRING, "MacData salt")?.content;
    let iterations = if s.is_empty() {
        1
    } else {
        parse_uint(&s.next_any()?, "MacData iterations")?
    };
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(malformed(format!(
            "MAC iteration count {iterations} out of range"
        )));
    }
    let mut di = Seq::new(digest_info.content);
    let alg = di.next(TAG_SEQUENCE, "MAC digestAlgorithm")?;
    let expected = di.next(TAG_OCTET_STRING, "MAC digest")?.content;
    let alg_oid = Seq::new(alg.content).next_oid("MAC digestAlgorithm")?;
    let hash = MacHash::from_oid(&alg_oid).ok_or_else(|| {
        PkiError::new(
            ErrorCode::UnsupportedAlgorithm,
            format!("PKCS#12 MAC digest {alg_oid}"),
        )
    })?;

    let key_len = hash.digest_alg().output_len();
    let key = pkcs12_kdf(hash, password, salt, 3, iterations, key_len);
    let key = hmac::Key::new(hash.hmac_alg(), &key);
    hmac::verify(&key, auth_safe, expected)
        .map_err(|_| PkiError::new(ErrorCode::WrongPassword, "PKCS#12 MAC does not verify"))
}

/// Decrypts with a PBES2 AlgorithmIdentifier (its full DER). A failure means a wrong password
/// unless the MAC already proved the password right, in which case the file is broken.
fn pbes_decrypt(
    alg_id_der: &[u8],
    ciphertext: &[u8],
    password: &str,
    mac_verified: bool,
) -> Result<Vec<u8>> {
    let alg_oid = Seq::new(single(alg_id_der, TAG_SEQUENCE, "encryption algorithm")?.content)
        .next_oid("encryption algorithm")?;
    if alg_oid
        .as_bytes()
        .starts_with(OID_PKCS12_PBE_ARC.as_bytes())
    {
        return Err(PkiError::new(
            ErrorCode::UnsupportedAlgorithm,
            format!(
                "legacy PKCS#12 encryption {alg_oid}: re-export with OpenSSL 3 defaults (PBES2/AES)"
            ),
        ));
    }
    let scheme = pkcs5::EncryptionScheme::try_from(alg_id_der).map_err(|e| {
        PkiError::new(
            ErrorCode::UnsupportedAlgorithm,
            format!("encryption algorithm {alg_oid}: {e}"),
        )
    })?;
    // scrypt parameters in a hostile file could ask for gigabytes; soft cards use PBKDF2.
    let Some(pbkdf2) = scheme.pbes2().and_then(|p| p.kdf.pbkdf2()) else {
        return Err(PkiError::new(
            ErrorCode::UnsupportedAlgorithm,
            "PBES2 key derivation other than PBKDF2",
        ));
    };
    if u64::from(pbkdf2.iteration_count) > MAX_ITERATIONS {
        return Err(malformed(format!(
            "PBKDF2 iteration count {} out of range",
            pbkdf2.iteration_count
        )));
    }
    scheme
        .decrypt(password.as_bytes(), ciphertext)
        .map_err(|e| {
            if mac_verified {
                malformed(format!("decryption failed although the MAC verified: {e}"))
            } else {
                PkiError::new(ErrorCode::WrongPassword, format!("decryption failed: {e}"))
            }
        })
}

/// `EncryptedData ::= SEQUENCE { version, EncryptedContentInfo }` (given the [0] wrapper content).
fn decrypt_encrypted_data(wrapper: &[u8], password: &str, mac_verified: bool) -> Result<Vec<u8>> {
    let ed = single(wrapper, TAG_SEQUENCE, "EncryptedData")?;
    let mut s = Seq::new(ed.content);
    parse_uint(
        &s.next(TAG_INTEGER, "EncryptedData version")?,
        "EncryptedData version",
    )?;
    let eci = s.next(TAG_SEQUENCE, "EncryptedContentInfo")?;
    let mut e = Seq::new(eci.content);
    let ct = e.next_oid("EncryptedContentInfo contentType")?;
    if ct != OID_DATA {
        return Err(malformed(format!(
            "encrypted content type {ct}, expected data"
        )));
    }
    let alg = e.next(TAG_SEQUENCE, "contentEncryptionAlgorithm")?;
    let ciphertext = match e.peek_tag() {
        Some(TAG_CTX0_PRIMITIVE) => e.next_any()?.content.to_vec(),
        // Some writers wrap the [0] IMPLICIT OCTET STRING in constructed form: concatenate.
        Some(TAG_CTX0_CONSTRUCTED) => {
            let outer = e.next_any()?;
            let mut parts = Seq::new(outer.content);
            let mut buf = Vec::new();
            while !parts.is_empty() {
                buf.extend_from_slice(
                    parts
                        .next(TAG_OCTET_STRING, "encryptedContent chunk")?
                        .content,
                );
            }
            buf
        }
        _ => return Err(malformed("EncryptedData without encryptedContent")),
    };
    pbes_decrypt(alg.raw, &ciphertext, password, mac_verified)
}

type Found = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn read_safe_contents(
    der: &[u8],
    password: &str,
    mac_verified: bool,
    keys: &mut Found,
    certs: &mut Found,
) -> Result<()> {
    let mut bags = Seq::new(single(der, TAG_SEQUENCE, "SafeContents")?.content);
    while !bags.is_empty() {
        let bag = bags.next(TAG_SEQUENCE, "SafeBag")?;
        let mut b = Seq::new(bag.content);
        let bag_id = b.next_oid("SafeBag bagId")?;
        let value = single(
            b.next(TAG_CTX0_CONSTRUCTED, "SafeBag bagValue")?.content,
            TAG_SEQUENCE,
            "bagValue",
        )?;
        let local_key_id = if b.peek_tag() == Some(TAG_SET) {
            local_key_id(b.next(TAG_SET, "bagAttributes")?.content)?
        } else {
            None
        };
        match bag_id {
            OID_KEY_BAG => keys.push((value.raw.to_vec(), local_key_id)),
            OID_SHROUDED_KEY_BAG => {
                let mut epki = Seq::new(value.content);
                let alg = epki.next(TAG_SEQUENCE, "EncryptedPrivateKeyInfo algorithm")?;
                let data = epki.next(TAG_OCTET_STRING, "EncryptedPrivateKeyInfo data")?;
                keys.push((
                    pbes_decrypt(alg.raw, data.content, password, mac_verified)?,
                    local_key_id,
                ));
            }
            OID_CERT_BAG => {
                let mut cb = Seq::new(value.content);
                let cert_type = cb.next_oid("CertBag certId")?;
                if cert_type != OID_X509_CERT {
                    continue; // SDSI certificates: nothing a card uses.
                }
                let explicit = cb.next(TAG_CTX0_CONSTRUCTED, "CertBag certValue")?;
                let cert = single(explicit.content, TAG_OCTET_STRING, "CertBag certValue")?.content;
                single(cert, TAG_SEQUENCE, "certificate")?;
                certs.push((cert.to_vec(), local_key_id));
            }
            // CRL, secret and nested bags carry nothing a soft card needs.
            _ => {}
        }
    }
    Ok(())
}

fn local_key_id(attributes: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut attrs = Seq::new(attributes);
    while !attrs.is_empty() {
        let attr = attrs.next(TAG_SEQUENCE, "bag attribute")?;
        let mut a = Seq::new(attr.content);
        if a.next_oid("bag attribute type")? == OID_LOCAL_KEY_ID {
            let mut values = Seq::new(a.next(TAG_SET, "localKeyId values")?.content);
            return Ok(Some(
                values
                    .next(TAG_OCTET_STRING, "localKeyId")?
                    .content
                    .to_vec(),
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "certreg-pkcs12-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A CA and a leaf signed by it, made by the openssl CLI so that these tests do not depend
    /// on our own certificate builder: (leaf.der, key.der PKCS#8, ca.der), files left in `dir`.
    fn material(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=pkcs12 test CA",
            "-days",
            "2",
        ];
        ca.extend(ec);
        openssl(dir, &ca);
        let mut req = vec![
            "req",
            "-new",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=pkcs12 test leaf",
        ];
        req.extend(ec);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-out",
                "leaf.pem", "-days", "2",
            ],
        );
        openssl(
            dir,
            &[
                "x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der",
            ],
        );
        openssl(
            dir,
            &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"],
        );
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "leaf.key",
                "-outform",
                "DER",
                "-out",
                "leaf.key.der",
            ],
        );
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        (read("leaf.der"), read("leaf.key.der"), read("ca.der"))
    }

    #[test]
    fn round_trip_and_wrong_password() {
        let dir = temp_dir("roundtrip");
        let (cert, key, ca) = material(&dir);
        let p12 = write_pkcs12(
            &cert,
            std::slice::from_ref(&ca),
            &key,
            "123456",
            "王大明 test",
        )
        .unwrap();
        let back = read_pkcs12(&p12, "123456").unwrap();
        assert_eq!(back.cert_der, cert);
        assert_eq!(back.key_pkcs8_der, key);
        assert_eq!(back.chain_der, vec![ca]);

        let err = read_pkcs12(&p12, "654321").unwrap_err();
        assert_eq!(err.code, ErrorCode::WrongPassword);
        assert_eq!(err.code.as_str(), "wrong_password");
        assert_eq!(err.code.message_zh(), "密碼錯誤");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pfx_in_ber_reads_like_its_der() {
        let dir = temp_dir("ber");
        let (cert, key, ca) = material(&dir);
        let p12 = write_pkcs12(&cert, std::slice::from_ref(&ca), &key, "123456", "ber").unwrap();
        let ber = crate::ber::to_ber(&p12);
        assert_eq!(ber[..2], [0x30, 0x80]);
        let back = read_pkcs12(&ber, "123456").unwrap();
        assert_eq!(back.cert_der, cert);
        assert_eq!(back.key_pkcs8_der, key);
        assert_eq!(
            read_pkcs12(&ber, "654321").unwrap_err().code,
            ErrorCode::WrongPassword
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn openssl_reads_our_file() {
        let dir = temp_dir("openssl-reads");
        let (cert, key, ca) = material(&dir);
        let p12 = write_pkcs12(&cert, &[ca], &key, "20241231", "soft card").unwrap();
        std::fs::write(dir.join("ours.p12"), &p12).unwrap();
        let out = openssl(
            &dir,
            &[
                "pkcs12",
                "-in",
                "ours.p12",
                "-passin",
                "pass:20241231",
                "-nodes",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("BEGIN PRIVATE KEY"), "{text}");
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
        assert!(text.contains("friendlyName: soft card"), "{text}");
        assert!(text.contains("localKeyID"), "{text}");
        // The algorithms are the promised ones, as OpenSSL itself reports them.
        let info = openssl(
            &dir,
            &[
                "pkcs12",
                "-in",
                "ours.p12",
                "-passin",
                "pass:20241231",
                "-info",
                "-noout",
            ],
        );
        let info = String::from_utf8_lossy(&info.stderr);
        assert!(info.contains("MAC: sha256, Iteration 10000"), "{info}");
        assert!(
            info.contains(
                "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"
            ),
            "{info}"
        );
        // The MAC check in OpenSSL rejects a wrong password too: the MAC is the standard one.
        let bad = Command::new("openssl")
            .args([
                "pkcs12",
                "-in",
                "ours.p12",
                "-passin",
                "pass:0000",
                "-nodes",
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!bad.status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn we_read_openssl_export() {
        let dir = temp_dir("we-read");
        let (cert, key, ca) = material(&dir);
        openssl(
            &dir,
            &[
                "pkcs12",
                "-export",
                "-inkey",
                "leaf.key",
                "-in",
                "leaf.pem",
                "-certfile",
                "ca.pem",
                "-name",
                "exported",
                "-passout",
                "pass:87654321",
                "-out",
                "theirs.p12",
            ],
        );
        let p12 = std::fs::read(dir.join("theirs.p12")).unwrap();
        let back = read_pkcs12(&p12, "87654321").unwrap();
        assert_eq!(back.cert_der, cert);
        assert_eq!(back.key_pkcs8_der, key);
        assert_eq!(back.chain_der, vec![ca]);
        assert_eq!(
            read_pkcs12(&p12, "12345678").unwrap_err().code,
            ErrorCode::WrongPassword
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn legacy_encryption_is_a_clear_error() {
        let dir = temp_dir("legacy");
        let _ = material(&dir);
        openssl(
            &dir,
            &[
                "pkcs12",
                "-export",
                "-inkey",
                "leaf.key",
                "-in",
                "leaf.pem",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
                "-passout",
                "pass:1234",
                "-out",
                "old.p12",
            ],
        );
        let p12 = std::fs::read(dir.join("old.p12")).unwrap();
        assert_eq!(
            read_pkcs12(&p12, "1234").unwrap_err().code,
            ErrorCode::UnsupportedAlgorithm
        );
        // The SHA-1 MAC still tells a wrong password apart from an unsupported cipher.
        assert_eq!(
            read_pkcs12(&p12, "9999").unwrap_err().code,
            ErrorCode::WrongPassword
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_and_corrupted_input_is_an_error_not_a_panic() {
        let dir = temp_dir("truncated");
        let (cert, key, ca) = material(&dir);
        let p12 = write_pkcs12(&cert, &[ca], &key, "1234", "x").unwrap();
        for len in (0..p12.len()).step_by(13) {
            assert!(
                read_pkcs12(&p12[..len], "1234").is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        // Any flipped byte either breaks the structure or the MAC: never a panic, never success
        // with different contents.
        for i in (0..p12.len()).step_by(17) {
            let mut bad = p12.clone();
            bad[i] ^= 0x5a;
            if let Ok(c) = read_pkcs12(&bad, "1234") {
                assert_eq!(
                    c.cert_der, cert,
                    "byte {i} flipped and still accepted with other contents"
                );
            }
        }
        let mut trailing = p12.clone();
        trailing.push(0);
        assert_eq!(
            read_pkcs12(&trailing, "1234").unwrap_err().code,
            ErrorCode::Pkcs12Malformed
        );
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x80\x00\x00",
            b"\x30\x84\xff\xff\xff\xff",
            b"hello world",
        ] {
            assert!(read_pkcs12(input, "x").is_err());
        }
        let big = vec![0x30u8; MAX_PKCS12_LEN + 1];
        assert_eq!(
            read_pkcs12(&big, "x").unwrap_err().code,
            ErrorCode::InputTooLarge
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
