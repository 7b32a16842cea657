//! Differential tests against OpenSSL: deterministic mutations of valid card proofs,
//! certificates and CRLs. certreg may accept a mutated proof only if `openssl cms -verify`
//! (CMS) or `openssl dgst -verify` (raw PKCS#1 / ECDSA) accepts it too, and may read a mutated
//! certificate or CRL only if `openssl x509` / `openssl crl` reads it, with the same facts.
//!
//! Only what certreg accepts needs the oracle (most mutations are refused by certreg and cost
//! no OpenSSL run), so `cargo test` runs a few thousand cases in seconds. The number of cases
//! of each test is `CERTREG_DIFF_CASES` (default [`DEFAULT_CASES`]) and the mutation seed
//! `CERTREG_DIFF_SEED` (default fixed); a nightly run sets, for example,
//! `CERTREG_DIFF_CASES=200000 CERTREG_DIFF_SEED=$(date +%s) cargo test -p pki --release differential`.
//! A disagreement is written to `target/differential/` for replay.

use crate::helpers::*;
use crate::proofs::challenge;
use pki::anchors::Role;
use pki::challenge::Challenge;
use pki::cms::{CmsSignOptions, SignerIdForm};
use pki::facts::ParsedCert;
use pki::proof::{ProofFormat, verify_proof};
use pki::revocation::CrlStore;
use pki::validate::Validator;
use std::path::PathBuf;
use testpki::{CaKind, TestPki};

/// Cases per test when `CERTREG_DIFF_CASES` is not set.
pub const DEFAULT_CASES: usize = 3000;

fn cases() -> usize {
    std::env::var("CERTREG_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn seed() -> u64 {
    std::env::var("CERTREG_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0063_6572_7472_6567)
}

/// SplitMix64: small, seeded, the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

// ---------------------------------------------------------------------------------------------
// An element tree to mutate structurally (re-tag, drop, duplicate, swap, re-encode lengths)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Len {
    /// Minimal definite length.
    Der,
    /// Definite, in a long form `extra` bytes longer than needed.
    Long(usize),
    /// Indefinite, closed by end-of-contents (constructed elements only).
    Indefinite,
    /// Definite but off by this much (a wrong length).
    Off(i64),
}

#[derive(Clone, Debug)]
struct Node {
    tag: u8,
    len: Len,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Leaf(Vec<u8>),
    Tree(Vec<Node>),
}

/// Parses DER (one-byte tags) into a tree; `None` when it is not DER of that shape.
fn parse_tree(der: &[u8]) -> Option<Vec<Node>> {
    let mut out = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        let tag = rest[0];
        if tag & 0x1f == 0x1f || rest.len() < 2 {
            return None;
        }
        let (len, header) = match rest[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81..=0x84 => {
                let n = usize::from(rest[1] & 0x7f);
                let bytes = rest.get(2..2 + n)?;
                (
                    bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
                    2 + n,
                )
            }
            _ => return None,
        };
        let content = rest.get(header..header + len)?;
        let body = if tag & 0x20 != 0 {
            Body::Tree(parse_tree(content)?)
        } else {
            Body::Leaf(content.to_vec())
        };
        out.push(Node {
            tag,
            len: Len::Der,
            body,
        });
        rest = &rest[header + len..];
    }
    Some(out)
}

fn put_len(out: &mut Vec<u8>, n: usize, extra: usize) {
    if n < 0x80 && extra == 0 {
        out.push(n as u8);
        return;
    }
    let bytes = (n as u64).to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let used = (8 - skip + extra).min(8 + extra);
    out.push(0x80 | used as u8);
    out.extend(std::iter::repeat_n(0u8, used - (8 - skip)));
    out.extend_from_slice(&bytes[skip..]);
}

fn write_tree(nodes: &[Node], out: &mut Vec<u8>) {
    for n in nodes {
        let mut content = Vec::new();
        match &n.body {
            Body::Leaf(v) => content.extend_from_slice(v),
            Body::Tree(children) => write_tree(children, &mut content),
        }
        out.push(n.tag);
        match n.len {
            Len::Der => put_len(out, content.len(), 0),
            Len::Long(extra) => put_len(out, content.len(), extra),
            Len::Indefinite => out.push(0x80),
            Len::Off(d) => put_len(out, (content.len() as i64 + d).max(0) as usize, 0),
        }
        out.extend_from_slice(&content);
        if matches!(n.len, Len::Indefinite) {
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// Paths (child indices from the root list) of every node.
fn paths(nodes: &[Node], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, n) in nodes.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Body::Tree(c) = &n.body {
            paths(c, prefix, out);
        }
        prefix.pop();
    }
}

/// The list holding the node at `path`, and the node's index in it.
fn siblings<'a>(nodes: &'a mut Vec<Node>, path: &[usize]) -> (&'a mut Vec<Node>, usize) {
    let (last, parents) = path.split_last().unwrap();
    let mut list = nodes;
    for i in parents {
        list = match &mut list[*i].body {
            Body::Tree(c) => c,
            Body::Leaf(_) => unreachable!("paths lead through constructed nodes"),
        };
    }
    (list, *last)
}

const TAGS: [u8; 14] = [
    0x30, 0x31, 0x02, 0x04, 0x24, 0x05, 0x06, 0x80, 0x81, 0xA0, 0xA1, 0xA2, 0x0C, 0x13,
];

/// One mutation of `input` (whose DER form is `tree`): byte-level or structural (byte-level
/// only when `tree` is empty).
fn mutate(input: &[u8], tree: &[Node], rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let mut v = input.to_vec();
    match rng.below(if tree.is_empty() { 6 } else { 16 }) {
        0 | 1 => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
            return (v, "bit flip");
        }
        2 => {
            let i = rng.below(v.len());
            v[i] = rng.byte();
            return (v, "byte set");
        }
        3 => {
            let i = rng.below(v.len() + 1);
            for _ in 0..=rng.below(3) {
                v.insert(i, rng.byte());
            }
            return (v, "insertion");
        }
        4 => {
            let i = rng.below(v.len());
            let n = (1 + rng.below(4)).min(v.len() - i);
            v.drain(i..i + n);
            return (v, "deletion");
        }
        5 => {
            let i = rng.below(v.len());
            v.truncate(i);
            v.extend(std::iter::repeat_n(0, rng.below(3)));
            return (v, "truncation");
        }
        _ => {}
    }
    let mut t = tree.to_vec();
    let mut all = Vec::new();
    paths(&t, &mut Vec::new(), &mut all);
    let path = all[rng.below(all.len())].clone();
    let what = {
        let (list, i) = siblings(&mut t, &path);
        match rng.below(11) {
            0 => {
                list[i].tag = TAGS[rng.below(TAGS.len())];
                "re-tag"
            }
            1 => {
                list[i].tag ^= 0x20;
                "constructed bit"
            }
            2 => {
                let copy = list[i].clone();
                list.insert(i + 1, copy);
                "duplicate"
            }
            3 => {
                list.remove(i);
                "drop"
            }
            4 => {
                let j = rng.below(list.len());
                list.swap(i, j);
                "swap siblings"
            }
            5 => {
                list[i].len = Len::Long(1 + rng.below(2));
                "long-form length"
            }
            6 => {
                if matches!(list[i].body, Body::Tree(_)) {
                    list[i].len = Len::Indefinite;
                } else {
                    list[i].len = Len::Long(1);
                }
                "indefinite length"
            }
            7 => {
                list[i].len = Len::Off(if rng.below(2) == 0 { -1 } else { 1 });
                "length off by one"
            }
            8 => {
                // Wrap in a SEQUENCE, SET or [0].
                let inner = list[i].clone();
                list[i] = Node {
                    tag: [0x30, 0x31, 0xA0][rng.below(3)],
                    len: Len::Der,
                    body: Body::Tree(vec![inner]),
                };
                "wrap"
            }
            9 => {
                // Chunk a primitive OCTET STRING (BER), or replace a tree by one of its children.
                match list[i].body.clone() {
                    Body::Leaf(bytes) if list[i].tag == 0x04 && !bytes.is_empty() => {
                        let cut = rng.below(bytes.len());
                        let chunk = |b: &[u8]| Node {
                            tag: 0x04,
                            len: Len::Der,
                            body: Body::Leaf(b.to_vec()),
                        };
                        list[i] = Node {
                            tag: 0x24,
                            len: Len::Indefinite,
                            body: Body::Tree(vec![chunk(&bytes[..cut]), chunk(&bytes[cut..])]),
                        };
                        "chunked OCTET STRING"
                    }
                    Body::Tree(children) if !children.is_empty() => {
                        list[i] = children[rng.below(children.len())].clone();
                        "unwrap"
                    }
                    _ => "none",
                }
            }
            _ => {
                // Move the node to another place in the tree (e.g. an attribute or SignerInfo
                // into a neighbouring SET).
                let node = list.remove(i);
                let mut all = Vec::new();
                paths(&t, &mut Vec::new(), &mut all);
                if all.is_empty() {
                    t.push(node);
                } else {
                    let to = all[rng.below(all.len())].clone();
                    let (list, j) = siblings(&mut t, &to);
                    list.insert(j, node);
                }
                "move"
            }
        }
    };
    let mut out = Vec::new();
    write_tree(&t, &mut out);
    (out, what)
}

/// Where a disagreement is kept for replay.
fn keep(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/differential");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// CMS proofs
// ---------------------------------------------------------------------------------------------

struct Seed {
    name: String,
    pki: &'static TestPki,
    validator: &'static Validator,
    challenge: Challenge,
    role: Role,
    proof: Vec<u8>,
}

fn cms_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let openssl_forms: [&[&str]; 7] = [
        &["-nodetach"],
        &[],
        &["-nodetach", "-keyid"],
        &["-keyid"],
        &["-nodetach", "-noattr"],
        &["-stream", "-nodetach"],
        &["-stream", "-keyid", "-noattr"],
    ];
    for (p, card, role) in [
        (pki(), "gca-agency", Role::Organization),
        (pki_p256(), "moica-admin", Role::Citizen),
    ] {
        let validator: &'static Validator = Box::leak(Box::new(validator_of(p)));
        for form in openssl_forms {
            let c = challenge("org_card");
            let proof = openssl_cms_sign(p.card(card), c.tbs().as_bytes(), form);
            seeds.push(Seed {
                name: format!("openssl {card} {form:?}"),
                pki: p,
                validator,
                challenge: c,
                role,
                proof,
            });
        }
        let ours = [
            (
                "hipki attrs",
                CmsSignOptions {
                    signing_time: Some(NOW),
                    nonce: Some(vec![0xAB; 16]),
                    card_number: Some("TP03000000000001".into()),
                    ..Default::default()
                },
            ),
            (
                "key id, detached",
                CmsSignOptions {
                    detached: true,
                    signer_id: SignerIdForm::KeyId,
                    ..Default::default()
                },
            ),
            (
                "no attrs",
                CmsSignOptions {
                    without_signed_attrs: true,
                    ..Default::default()
                },
            ),
            (
                "with chain",
                CmsSignOptions {
                    chain: vec![p.ca(p.card(card).ca).cert_der.clone()],
                    ..Default::default()
                },
            ),
        ];
        for (what, opts) in ours {
            let c = challenge("org_card");
            let proof = p.card(card).sign_cms(c.tbs().as_bytes(), &opts).unwrap();
            seeds.push(Seed {
                name: format!("certreg {card} {what}"),
                pki: p,
                validator,
                challenge: c,
                role,
                proof,
            });
        }
    }
    seeds
}

#[test]
fn mutated_cms_proofs_certreg_accepts_only_what_openssl_accepts() {
    let seeds = cms_seeds();
    let trees: Vec<Vec<Node>> = seeds
        .iter()
        .map(|s| parse_tree(&pki::ber::to_der(&s.proof).unwrap()).unwrap())
        .collect();
    for s in &seeds {
        // Every seed is a valid proof for both.
        let ok = verify_proof(s.validator, &s.challenge, &s.proof, None, s.role, NOW)
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let content = (ok.format == ProofFormat::CmsDetached).then(|| s.challenge.tbs());
        openssl_cms_verify(s.pki, &s.proof, content.as_ref().map(|t| t.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: OpenSSL: {e}", s.name));
    }
    let mut rng = Rng(seed());
    let (mut accepted, mut oracle_runs) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for case in 0..cases() {
        let k = case % seeds.len();
        let s = &seeds[k];
        let (bytes, what) = mutate(&s.proof, &trees[k], &mut rng);
        if bytes == s.proof {
            continue;
        }
        let Ok(ok) = verify_proof(s.validator, &s.challenge, &bytes, None, s.role, NOW) else {
            continue;
        };
        accepted += 1;
        if !seen.insert(bytes.clone()) {
            continue;
        }
        oracle_runs += 1;
        let tbs = s.challenge.tbs();
        let content = (ok.format == ProofFormat::CmsDetached).then_some(tbs.as_bytes());
        match openssl_cms_verify(s.pki, &bytes, content) {
            Ok(out) if out == tbs.as_bytes() => {}
            other => {
                let path = keep(&format!("cms-{case}.der"), &bytes);
                panic!(
                    "case {case} ({what} of {}): certreg accepts, OpenSSL: {other:?}; kept in {}",
                    s.name,
                    path.display()
                );
            }
        }
    }
    eprintln!(
        "CMS: {} cases over {} seeds, {accepted} accepted by certreg, {oracle_runs} OpenSSL runs",
        cases(),
        seeds.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Raw PKCS#1 v1.5 and ECDSA proofs (certificate beside)
// ---------------------------------------------------------------------------------------------

/// DER `Ecdsa-Sig-Value` from r‖s, written here independently of certreg's conversion.
fn raw_to_der(raw: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        let mut v = if v.is_empty() { vec![0] } else { v };
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    out
}

/// `openssl dgst -sha256 -verify` with the public key of `cert_der`.
fn openssl_dgst_verify(cert_der: &[u8], message: &[u8], der_signature: &[u8]) -> bool {
    let dir = TempDir::new("dgst");
    let cert = dir.write("cert.der", cert_der);
    let key = dir.path("key.pem");
    let (ok, _, err) = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        cert.to_str().unwrap(),
        "-pubkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let msg = dir.write("msg.bin", message);
    let sig = dir.write("sig.bin", der_signature);
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        key.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        msg.to_str().unwrap(),
    ])
    .0
}

#[test]
fn mutated_raw_signatures_certreg_accepts_only_what_openssl_accepts() {
    let c = challenge("org_card");
    let tbs = c.tbs();
    let rsa = pki().card("gca-agency");
    let ec = pki_p256().card("gca-agency");
    let rsa_sig = pki::sig::sign_pkcs8(&rsa.issued.key.pkcs8_der, tbs.as_bytes()).unwrap();
    let ec_der = pki::sig::sign_pkcs8(&ec.issued.key.pkcs8_der, tbs.as_bytes()).unwrap();
    let ec_raw = {
        let t = parse_tree(&ec_der).unwrap();
        let Body::Tree(ints) = &t[0].body else {
            panic!()
        };
        let mut raw = Vec::new();
        for i in ints {
            let Body::Leaf(v) = &i.body else { panic!() };
            let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
            raw.extend(std::iter::repeat_n(0, 32 - v.len()));
            raw.extend(v);
        }
        raw
    };
    let rsa_validator = validator();
    let ec_validator = validator_of(pki_p256());
    let seeds: [(&str, &testpki::Card, &Validator, Vec<u8>, bool); 3] = [
        ("PKCS#1", rsa, &rsa_validator, rsa_sig, false),
        ("ECDSA DER", ec, &ec_validator, ec_der.clone(), false),
        ("ECDSA r‖s", ec, &ec_validator, ec_raw, true),
    ];
    let mut rng = Rng(seed() ^ 1);
    let (mut accepted, mut oracle_runs) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for (name, card, v, sig, raw) in &seeds {
        let cert = &card.issued.cert_der;
        verify_proof(v, &c, sig, Some(cert), Role::Organization, NOW)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let der = if *raw { raw_to_der(sig) } else { sig.clone() };
        assert!(openssl_dgst_verify(cert, tbs.as_bytes(), &der), "{name}");
    }
    let empty = Vec::new();
    for case in 0..cases() {
        let (name, card, v, sig, raw) = &seeds[case % seeds.len()];
        let tree = if sig[0] == 0x30 && !raw {
            parse_tree(sig).unwrap_or_default()
        } else {
            empty.clone()
        };
        let (bytes, what) = mutate(sig, &tree, &mut rng);
        if bytes == *sig || bytes.is_empty() {
            continue;
        }
        let cert = &card.issued.cert_der;
        if verify_proof(v, &c, &bytes, Some(cert), Role::Organization, NOW).is_err() {
            continue;
        }
        accepted += 1;
        if !seen.insert(bytes.clone()) {
            continue;
        }
        oracle_runs += 1;
        // What certreg reads a raw ECDSA signature as: DER when it starts as a SEQUENCE and is
        // not 64 bytes long, r‖s otherwise.
        let der = if card.issued.key.alg == testpki::KeyAlg::P256
            && !(bytes[0] == 0x30 && bytes.len() != 64)
        {
            raw_to_der(&bytes)
        } else {
            bytes.clone()
        };
        if !openssl_dgst_verify(cert, tbs.as_bytes(), &der) {
            let path = keep(&format!("raw-{case}.bin"), &bytes);
            panic!(
                "case {case} ({what} of {name}): certreg accepts, OpenSSL refuses; kept in {}",
                path.display()
            );
        }
    }
    eprintln!(
        "raw: {} cases, {accepted} accepted by certreg, {oracle_runs} OpenSSL runs",
        cases()
    );
}

// ---------------------------------------------------------------------------------------------
// Certificates and CRLs: what certreg reads, OpenSSL reads, with the same facts
// ---------------------------------------------------------------------------------------------

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What `openssl storeutl -text` prints of each object: its text block, in order; `None` for an
/// object OpenSSL cannot read. One OpenSSL run for all, split in halves only where OpenSSL
/// skipped something.
fn openssl_read_all(label: &str, kind: &str, objects: &[Vec<u8>]) -> Vec<Option<String>> {
    if objects.is_empty() {
        return Vec::new();
    }
    let dir = TempDir::new("store");
    let pem: String = objects.iter().map(|o| pem_of(label, o)).collect();
    let file = dir.write("all.pem", pem);
    let (_, out, _) = openssl(&["storeutl", kind, "-noout", "-text", file.to_str().unwrap()]);
    let mut blocks: Vec<String> = Vec::new();
    for line in out.lines() {
        let header = line
            .split_once(": ")
            .is_some_and(|(n, rest)| n.parse::<usize>().is_ok() && !rest.starts_with(' '));
        if header {
            blocks.push(String::new());
        } else if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    if blocks.len() == objects.len() {
        return blocks.into_iter().map(Some).collect();
    }
    if objects.len() == 1 {
        return vec![None];
    }
    let (a, b) = objects.split_at(objects.len() / 2);
    let mut r = openssl_read_all(label, kind, a);
    r.extend(openssl_read_all(label, kind, b));
    r
}

/// The value after `key` in an OpenSSL text block (the rest of its line, or the next line when
/// the rest is empty, as for long serial numbers).
fn text_field(block: &str, key: &str) -> Option<String> {
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if let Some((_, rest)) = line.split_once(key) {
            let rest = rest.trim();
            return Some(if rest.is_empty() {
                lines.next()?.trim().to_string()
            } else {
                rest.to_string()
            });
        }
    }
    None
}

fn openssl_time(text: &str) -> time::OffsetDateTime {
    let fmt = time::format_description::parse_borrowed::<2>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )
    .unwrap();
    let text = text.split_whitespace().collect::<Vec<_>>();
    let (mon, day, rest) = (text[0], text[1], text[2..].join(" "));
    time::PrimitiveDateTime::parse(&format!("{mon} {day:>2} {rest}"), &fmt)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .assume_utc()
}

/// OpenSSL's serial as certreg writes it: upper-case hex of the magnitude, even length.
fn openssl_serial(text: &str) -> String {
    let hex = match text.split_once("(0x") {
        Some((_, h)) => h.trim_end_matches(')').to_string(),
        None => text.replace(':', ""),
    };
    let hex = hex.trim_start_matches("(Negative)").to_uppercase();
    if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    }
}

/// Every value of the issuer that is plain ASCII appears in OpenSSL's issuer line.
fn same_issuer(ours: &str, theirs: &str) -> bool {
    ours.split(", ")
        .filter_map(|rdn| rdn.split_once('='))
        .filter(|(_, v)| {
            // OpenSSL escapes the others (control characters, `/`, quotes ...) when printing.
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || " -.()':".contains(c))
                && !v.starts_with('#')
                && !v.contains(['\\', ',', '+'])
        })
        .all(|(_, v)| theirs.contains(v))
}

fn cert_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for p in [pki(), pki_p256()] {
        seeds.push(("root".to_string(), p.root.cert_der.clone()));
        seeds.push(("MOICA".to_string(), p.ca(CaKind::Moica).cert_der.clone()));
        for card in ["moica-admin", "moeaca-company", "gca-agency"] {
            if let Some(c) = p.find_card(card) {
                seeds.push((card.to_string(), c.issued.cert_der.clone()));
            }
        }
    }
    for name in [
        "GRCA-G3.cer",
        "MOICA-G3.cer",
        "MOEACA-G2_2013.der",
        "GRCA-G1_selfsigned.der",
        "GRCA-G2key_linkcert_signed_by_G1.der",
    ] {
        let der = pki::facts::decode_input(&real_ca(name)).unwrap();
        seeds.push((name.to_string(), der));
    }
    seeds
}

#[test]
fn mutated_certificates_certreg_reads_only_what_openssl_reads_with_the_same_facts() {
    let seeds = cert_seeds();
    let trees: Vec<Vec<Node>> = seeds.iter().map(|(_, d)| parse_tree(d).unwrap()).collect();
    let mut rng = Rng(seed() ^ 2);
    let mut read = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in 0..cases() {
        let k = case % seeds.len();
        let (bytes, what) = mutate(&seeds[k].1, &trees[k], &mut rng);
        if !seen.insert(bytes.clone()) {
            continue;
        }
        if let Ok(cert) = ParsedCert::from_der(bytes.clone()) {
            read.push((case, what, k, bytes, cert.facts));
        }
    }
    let ders: Vec<Vec<u8>> = read.iter().map(|r| r.3.clone()).collect();
    let theirs = openssl_read_all("CERTIFICATE", "-certs", &ders);
    for ((case, what, k, bytes, facts), text) in read.iter().zip(&theirs) {
        let fail = |why: String| -> ! {
            let path = keep(&format!("cert-{case}.der"), bytes);
            panic!(
                "case {case} ({what} of {}): {why}; kept in {}",
                seeds[*k].0,
                path.display()
            )
        };
        let Some(text) = text else {
            fail("certreg reads it, OpenSSL cannot".into());
        };
        let serial = text_field(text, "Serial Number:").map(|s| openssl_serial(&s));
        if serial.as_deref() != Some(facts.serial.as_str()) {
            fail(format!(
                "serial {} vs OpenSSL {serial:?}",
                facts.serial.as_str()
            ));
        }
        let not_after = text_field(text, "Not After :").map(|t| openssl_time(&t));
        if not_after != Some(facts.not_after) {
            fail(format!(
                "notAfter {} vs OpenSSL {not_after:?}",
                facts.not_after
            ));
        }
        let issuer = text_field(text, "Issuer:").unwrap_or_default();
        if !same_issuer(&facts.issuer, &issuer) {
            fail(format!("issuer {:?} vs OpenSSL {issuer:?}", facts.issuer));
        }
    }
    eprintln!(
        "certificates: {} cases, {} read by certreg, all read alike by OpenSSL",
        cases(),
        read.len()
    );
}

#[test]
fn mutated_crls_certreg_reads_only_what_openssl_reads_with_the_same_facts() {
    let seeds: Vec<Vec<u8>> = [pki(), pki_p256()]
        .iter()
        .flat_map(|p| {
            [CaKind::Moica, CaKind::Gca].map(|k| {
                p.crl_for(
                    k,
                    NOW - time::Duration::hours(1),
                    NOW + time::Duration::days(7),
                )
            })
        })
        .collect();
    let trees: Vec<Vec<Node>> = seeds.iter().map(|d| parse_tree(d).unwrap()).collect();
    let mut rng = Rng(seed() ^ 3);
    let mut read = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in 0..cases() {
        let k = case % seeds.len();
        let (bytes, what) = mutate(&seeds[k], &trees[k], &mut rng);
        if !seen.insert(bytes.clone()) {
            continue;
        }
        let mut store = CrlStore::new();
        if let Ok(entry) = store.add(&bytes) {
            let facts = (
                entry.issuer.clone(),
                entry.this_update,
                entry.next_update,
                entry.revoked,
            );
            read.push((case, what, bytes, facts));
        }
    }
    let ders: Vec<Vec<u8>> = read.iter().map(|r| r.2.clone()).collect();
    let theirs = openssl_read_all("X509 CRL", "-crls", &ders);
    for ((case, what, bytes, (issuer, this_update, next_update, revoked)), text) in
        read.iter().zip(&theirs)
    {
        let fail = |why: String| -> ! {
            let path = keep(&format!("crl-{case}.der"), bytes);
            panic!("case {case} ({what}): {why}; kept in {}", path.display())
        };
        let Some(text) = text else {
            fail("certreg reads it, OpenSSL cannot".into());
        };
        let last = text_field(text, "Last Update:").map(|t| openssl_time(&t));
        if last != Some(*this_update) {
            fail(format!("thisUpdate {this_update} vs OpenSSL {last:?}"));
        }
        let next = text_field(text, "Next Update:")
            .filter(|t| t != "NONE")
            .map(|t| openssl_time(&t));
        if next != *next_update {
            fail(format!("nextUpdate {next_update:?} vs OpenSSL {next:?}"));
        }
        let theirs = text.matches("Serial Number:").count();
        if theirs != *revoked {
            fail(format!("{revoked} revoked vs OpenSSL {theirs}"));
        }
        let their_issuer = text_field(text, "Issuer:").unwrap_or_default();
        if !same_issuer(issuer, &their_issuer) {
            fail(format!("issuer {issuer:?} vs OpenSSL {their_issuer:?}"));
        }
    }
    eprintln!(
        "CRLs: {} cases, {} read by certreg, all read alike by OpenSSL",
        cases(),
        read.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Named structural refusals (the classes the mutations above explore at random)
// ---------------------------------------------------------------------------------------------

fn node<'a>(t: &'a mut [Node], path: &[usize]) -> &'a mut Node {
    let (first, rest) = path.split_first().unwrap();
    let n = &mut t[*first];
    if rest.is_empty() {
        return n;
    }
    match &mut n.body {
        Body::Tree(c) => node(c, rest),
        Body::Leaf(_) => panic!("not constructed"),
    }
}

fn children<'a>(t: &'a mut [Node], path: &[usize]) -> &'a mut Vec<Node> {
    match &mut node(t, path).body {
        Body::Tree(c) => c,
        Body::Leaf(_) => panic!("not constructed"),
    }
}

#[test]
fn misplaced_repeated_and_extra_fields_are_refused() {
    let c = challenge("org_card");
    let proof = pki()
        .card("gca-agency")
        .sign_cms(c.tbs().as_bytes(), &CmsSignOptions::default())
        .unwrap();
    let tree = parse_tree(&proof).unwrap();
    // ContentInfo / [0] / SignedData: fields 0..=4; signerInfos (4) / SignerInfo (0): fields
    // version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature.
    const SD: [usize; 3] = [0, 1, 0];
    const SI: [usize; 5] = [0, 1, 0, 4, 0];
    type Edit = fn(&mut Vec<Node>);
    let edits: [(&str, Edit); 9] = [
        ("two SignerInfos", |t| {
            let si = node(t, &SI).clone();
            children(t, &[0, 1, 0, 4]).push(si);
        }),
        ("primitive [0] where the signed attributes are", |t| {
            node(t, &[0, 1, 0, 4, 0, 3]).tag = 0x80;
        }),
        ("signed attributes before digestAlgorithm", |t| {
            children(t, &SI).swap(2, 3);
        }),
        ("signed attributes twice", |t| {
            let a = node(t, &[0, 1, 0, 4, 0, 3]).clone();
            children(t, &SI).insert(3, a);
        }),
        ("CRLs in the proof", |t| {
            let crl = Node {
                tag: 0xA1,
                len: Len::Der,
                body: Body::Tree(vec![]),
            };
            children(t, &SD).insert(4, crl);
        }),
        ("SignerInfo version 3 with issuerAndSerialNumber", |t| {
            node(t, &[0, 1, 0, 4, 0, 0]).body = Body::Leaf(vec![3]);
        }),
        ("messageDigest among the unsigned attributes", |t| {
            let attrs = node(t, &[0, 1, 0, 4, 0, 3]).clone();
            let mut unsigned = attrs;
            unsigned.tag = 0xA1;
            children(t, &SI).push(unsigned);
        }),
        ("data after the signature", |t| {
            children(t, &SI).push(Node {
                tag: 0x05,
                len: Len::Der,
                body: Body::Leaf(vec![]),
            });
        }),
        ("a SignerInfo in BER", |t| {
            node(t, &SI).len = Len::Indefinite;
        }),
    ];
    for (what, edit) in edits {
        let mut t = tree.clone();
        edit(&mut t);
        let mut bytes = Vec::new();
        write_tree(&t, &mut bytes);
        let e = verify_proof(&validator(), &c, &bytes, None, Role::Organization, NOW).unwrap_err();
        assert_eq!(e.code, pki::ErrorCode::ProofMalformed, "{what}: {e}");
    }
    let mut trailing = proof.clone();
    trailing.push(0);
    let e = verify_proof(&validator(), &c, &trailing, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, pki::ErrorCode::ProofMalformed, "trailing data: {e}");
}
