//! Throughput benchmark of card-proof verification on one core (`cargo bench -p pki --bench proofs`):
//! full proofs (CMS, PKCS#1, ECDSA; path cache off/on; 10k- and 1M-entry CRLs), the parts they
//! are made of, and the ratio to a bare `openssl speed rsa2048` verify; then the load of a
//! 1M-entry CRL (parse, signature, index) and the memory its index holds. No criterion: a plain
//! timed loop. With `CERTREG_BENCH_CRL_DIR=DIR`, the RSA test PKI (`DIR/anchors`, `DIR/cards`, …)
//! and the 1M-entry MOICA CRL (`DIR/moica-1m.crl`) are written there for `certreg pki verify`.

use pki::anchors::Role;
use pki::challenge::Challenge;
use pki::cms::{CmsSignOptions, build_signed_data};
use pki::facts::ParsedCert;
use pki::proof::verify_proof;
use pki::revocation::CrlStore;
use pki::sig::{SigAlg, sign_pkcs8};
use pki::validate::{ValidationOptions, Validator};
use std::hint::black_box;
use std::time::{Duration as StdDuration, Instant};
use testpki::{CaKind, Issued, KeyAlg, TestPki, TestPkiOptions, crl};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The reference time of the test PKIs (as in the integration tests).
const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);
const ORIGIN: &str = "https://certreg.example.gov.tw";
/// Distinct challenges (and proofs) per case; the timed loop cycles through them.
const PROOFS: usize = 256;
/// Synthetic revoked serials added to the MOICA CRL for the "large CRL" rows.
const BIG_CRL_ENTRIES: usize = 10_000;
/// The same at the scale of a national CA's full CRL.
const HUGE_CRL_ENTRIES: usize = 1_000_000;
/// Loads of the 1M-entry CRL timed (the best is reported).
const HUGE_CRL_LOADS: usize = 3;
const WARM_UP: StdDuration = StdDuration::from_millis(500);
const MEASURE: StdDuration = StdDuration::from_secs(2);

fn parsed(issued: &Issued) -> ParsedCert {
    ParsedCert::from_der(issued.cert_der.clone()).expect("certificate parses")
}

/// Current CRLs of every CA; `moica` replaces the MOICA CRL (same thisUpdate, so it wins).
fn crls_of(pki: &TestPki, moica: Option<&[u8]>) -> CrlStore {
    let mut crls = pki
        .crl_store(NOW - Duration::hours(1), NOW + Duration::days(7))
        .expect("CRLs");
    if let Some(der) = moica {
        crls.add(der).expect("big CRL");
    }
    crls
}

fn validator(pki: &TestPki, moica_crl: Option<&[u8]>, cache: bool) -> Validator {
    let v = Validator::new(
        pki.trust_store().expect("anchors"),
        crls_of(pki, moica_crl),
        ValidationOptions::default(),
    );
    if cache { v.with_cache() } else { v }
}

/// The MOICA CRL with its revoked test cards plus `extra` synthetic serials (16 bytes each).
fn big_moica_crl(pki: &TestPki, extra: usize) -> Vec<u8> {
    let at = NOW - Duration::days(30);
    let mut revoked: Vec<(Vec<u8>, OffsetDateTime)> = pki
        .cards
        .iter()
        .filter(|c| c.ca == CaKind::Moica && c.variant == testpki::Variant::Revoked)
        .map(|c| (c.issued.serial().to_vec(), at))
        .collect();
    for i in 0..extra {
        let h = ring::digest::digest(&ring::digest::SHA256, &(i as u64).to_be_bytes());
        let mut serial = h.as_ref()[..16].to_vec();
        serial[0] = 0x40 | (serial[0] & 0x3F); // positive, first byte nonzero
        revoked.push((serial, at));
    }
    let number = u64::try_from(NOW.unix_timestamp()).unwrap_or(1) + 1;
    crl(
        pki.ca(CaKind::Moica),
        &revoked,
        NOW - Duration::hours(1),
        NOW + Duration::days(7),
        number,
        None,
    )
}

fn challenges(step: &str) -> Vec<Challenge> {
    (0..PROOFS)
        .map(|i| {
            Challenge::new(
                "first_registration",
                ORIGIN,
                &format!("flow-{i}"),
                step,
                NOW,
            )
            .expect("challenge")
        })
        .collect()
}

/// What HiPKI's agent sends: attached CMS with signingTime, randomNonce and the card number.
fn hipki_opts(i: usize) -> CmsSignOptions {
    let mut nonce = vec![0u8; 16];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    CmsSignOptions {
        signing_time: Some(NOW),
        nonce: Some(nonce),
        card_number: Some("TP03000000000001".into()),
        ..Default::default()
    }
}

fn cms_proofs(issued: &Issued, challenges: &[Challenge]) -> Vec<Vec<u8>> {
    challenges
        .iter()
        .enumerate()
        .map(|(i, c)| {
            build_signed_data(c.tbs().as_bytes(), &issued.cert_der, &hipki_opts(i), |m| {
                sign_pkcs8(&issued.key.pkcs8_der, m)
            })
            .expect("CMS")
        })
        .collect()
}

fn raw_proofs(issued: &Issued, challenges: &[Challenge]) -> Vec<Vec<u8>> {
    challenges
        .iter()
        .map(|c| sign_pkcs8(&issued.key.pkcs8_der, c.tbs().as_bytes()).expect("signature"))
        .collect()
}

struct Row {
    name: &'static str,
    per_sec: f64,
    /// Compared with `openssl speed rsa2048` verify/s.
    rsa: bool,
}

/// Runs `op(i)` for [`WARM_UP`], then for about [`MEASURE`] on this thread; returns ops/s.
/// `op` returns whether the operation succeeded: a failure aborts the benchmark.
fn measure(name: &'static str, rsa: bool, rows: &mut Vec<Row>, mut op: impl FnMut(usize) -> bool) {
    // `CERTREG_BENCH_ONLY=text` measures only the cases whose name contains it (for profiling).
    if std::env::var("CERTREG_BENCH_ONLY").is_ok_and(|only| !name.contains(only.as_str())) {
        return;
    }
    let mut i = 0usize;
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        assert!(op(i), "{name}: operation failed");
        i += 1;
    }
    // Check the clock about every millisecond, not every operation.
    let per_ms = ((i as f64 / start.elapsed().as_secs_f64()) / 1000.0).ceil() as usize;
    let batch = per_ms.max(1);
    let mut n = 0usize;
    let start = Instant::now();
    let elapsed = loop {
        for _ in 0..batch {
            assert!(op(n), "{name}: operation failed");
            n += 1;
        }
        let e = start.elapsed();
        if e >= MEASURE {
            break e;
        }
    };
    let per_sec = n as f64 / elapsed.as_secs_f64();
    eprintln!("  {name}: {per_sec:.0}/s");
    rows.push(Row { name, per_sec, rsa });
}

/// `openssl speed -seconds 2 rsa2048`: the verify/s of the `rsa 2048 bits` line.
fn openssl_rsa2048_verify() -> Result<f64, String> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "rsa2048"])
        .output()
        .map_err(|_| "openssl not found".to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Header: "sign verify sign/s verify/s" (OpenSSL 3.2+ adds encrypt/decrypt columns).
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.contains("verify/s"))
        .ok_or("openssl speed: no header with verify/s")?
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "verify/s")
        .ok_or("openssl speed: no verify/s column")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rsa") && l.contains("2048 bits"))
        .ok_or("openssl speed: no `rsa 2048 bits` line")?;
    // The line is "rsa 2048 bits" followed by one value per header column.
    let values: Vec<&str> = line.split_whitespace().skip(3).collect();
    values
        .get(col)
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("openssl speed: cannot read verify/s from {line:?}"))
}

fn machine() -> String {
    let nproc = std::process::Command::new("nproc")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.to_string())
        })
        .unwrap_or_else(|| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("nproc {nproc}, {model}")
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` is not supported: run everything.
    let at = NOW + Duration::minutes(1);
    eprintln!("generating test PKIs (RSA-2048 and P-256)...");
    let t = Instant::now();
    let rsa_pki = TestPki::generate(TestPkiOptions::new(NOW)).expect("RSA test PKI");
    let ec_pki = TestPki::generate(TestPkiOptions {
        key_alg: KeyAlg::P256,
        ..TestPkiOptions::new(NOW)
    })
    .expect("P-256 test PKI");
    let big_crl = big_moica_crl(&rsa_pki, BIG_CRL_ENTRIES);
    // Profiling one case (see `measure`) skips the 1M-entry CRL unless the case uses it.
    let huge_wanted =
        std::env::var("CERTREG_BENCH_ONLY").map_or(true, |only| only.contains("1M-entry"));
    let huge_crl = if huge_wanted {
        big_moica_crl(&rsa_pki, HUGE_CRL_ENTRIES)
    } else {
        big_crl.clone()
    };
    eprintln!(
        "  done in {:.1} s; MOICA CRLs with {} and {} entries: {} and {} bytes",
        t.elapsed().as_secs_f64(),
        BIG_CRL_ENTRIES,
        HUGE_CRL_ENTRIES,
        big_crl.len(),
        huge_crl.len()
    );
    if let Some(dir) = std::env::var_os("CERTREG_BENCH_CRL_DIR") {
        let dir = std::path::PathBuf::from(dir);
        rsa_pki.write_dir(&dir).expect("writing the test PKI");
        std::fs::write(dir.join("moica-1m.crl"), &huge_crl).expect("writing the CRL");
        eprintln!("  wrote the test PKI and moica-1m.crl to {}", dir.display());
    }

    // Loading the 1M-entry CRL: parse, index, and the signature check the validator makes.
    eprintln!("loading the {HUGE_CRL_ENTRIES}-entry CRL {HUGE_CRL_LOADS} times...");
    let mut load_secs = f64::INFINITY;
    let mut held = 0usize;
    for _ in 0..if huge_wanted { HUGE_CRL_LOADS } else { 0 } {
        let t = Instant::now();
        let mut store = CrlStore::new();
        store.add(black_box(&huge_crl)).expect("1M-entry CRL");
        let v = Validator::new(
            rsa_pki.trust_store().expect("anchors"),
            store,
            ValidationOptions::default(),
        );
        load_secs = load_secs.min(t.elapsed().as_secs_f64());
        assert!(v.crls().entries()[0].signature_verified(), "CRL signature");
        held = v.crls().held_bytes();
    }

    let v_off = validator(&rsa_pki, None, false);
    let v_on = validator(&rsa_pki, None, true);
    // Nothing remembered between proofs: what a certificate seen for the first time costs.
    let v_cold = validator(&rsa_pki, None, false).with_signature_memo(0);
    let v_big = validator(&rsa_pki, Some(&big_crl), false);
    let v_huge = validator(&rsa_pki, Some(&huge_crl), false);
    let v_ec = validator(&ec_pki, None, false);

    // The citizen card of MOICA (the CA with the large CRL), and its P-256 twin.
    let card = &rsa_pki.card("moica-admin").issued;
    let ec_card = &ec_pki.card("moica-admin").issued;
    let role = Role::Citizen;

    eprintln!("signing {PROOFS} proofs per case...");
    let cms_ch = challenges("admin_card");
    let cms = cms_proofs(card, &cms_ch);
    let raw_ch = challenges("admin_card");
    let pkcs1 = raw_proofs(card, &raw_ch);
    let ec_ch = challenges("admin_card");
    let ecdsa = raw_proofs(ec_card, &ec_ch);
    let cert = parsed(card);
    let spki = cert.spki_der().expect("SPKI");
    let tbs: Vec<String> = raw_ch.iter().map(Challenge::tbs).collect();

    let mut rows = Vec::new();
    eprintln!("measuring (single thread, {MEASURE:?} per case after {WARM_UP:?} warm-up)...");
    let k = |i: usize| i % PROOFS;

    // Full proofs.
    measure(
        "CMS RSA-2048 attached, path+CRL, cache off",
        true,
        &mut rows,
        |i| verify_proof(&v_off, &cms_ch[k(i)], &cms[k(i)], None, role, at).is_ok(),
    );
    measure(
        "CMS RSA-2048 attached, path+CRL, cache on",
        true,
        &mut rows,
        |i| verify_proof(&v_on, &cms_ch[k(i)], &cms[k(i)], None, role, at).is_ok(),
    );
    measure(
        "CMS RSA-2048 attached, path+CRL, no cache, no sig memo",
        true,
        &mut rows,
        |i| verify_proof(&v_cold, &cms_ch[k(i)], &cms[k(i)], None, role, at).is_ok(),
    );
    measure(
        "CMS RSA-2048 attached, 10k-entry CRL, cache off",
        true,
        &mut rows,
        |i| verify_proof(&v_big, &cms_ch[k(i)], &cms[k(i)], None, role, at).is_ok(),
    );
    measure(
        "CMS RSA-2048 attached, 1M-entry CRL, cache off",
        true,
        &mut rows,
        |i| verify_proof(&v_huge, &cms_ch[k(i)], &cms[k(i)], None, role, at).is_ok(),
    );
    measure(
        "PKCS#1 RSA-2048 + cert beside, cache off",
        true,
        &mut rows,
        |i| {
            verify_proof(
                &v_off,
                &raw_ch[k(i)],
                &pkcs1[k(i)],
                Some(&card.cert_der),
                role,
                at,
            )
            .is_ok()
        },
    );
    measure(
        "ECDSA P-256 (DER sig) + cert, cache off",
        false,
        &mut rows,
        |i| {
            verify_proof(
                &v_ec,
                &ec_ch[k(i)],
                &ecdsa[k(i)],
                Some(&ec_card.cert_der),
                role,
                at,
            )
            .is_ok()
        },
    );

    // Where the time goes.
    measure(
        "cert validation only (path+CRL), cache off",
        false,
        &mut rows,
        |_| v_off.validate(black_box(&cert), &[], role, at).is_ok(),
    );
    measure(
        "cert validation only (path+CRL), cache on",
        false,
        &mut rows,
        |_| v_on.validate(black_box(&cert), &[], role, at).is_ok(),
    );
    measure(
        "cert validation only, 10k-entry CRL, cache off",
        false,
        &mut rows,
        |_| v_big.validate(black_box(&cert), &[], role, at).is_ok(),
    );
    measure(
        "cert validation only, 1M-entry CRL, cache off",
        false,
        &mut rows,
        |_| v_huge.validate(black_box(&cert), &[], role, at).is_ok(),
    );
    measure(
        "challenge TBS only (tbs() + check_signed)",
        false,
        &mut rows,
        |i| {
            let c = &raw_ch[k(i)];
            c.check_signed(black_box(c.tbs().as_bytes()), at).is_ok()
        },
    );
    measure("CMS parse only (cms::parse)", false, &mut rows, |i| {
        pki::cms::parse(black_box(&cms[k(i)])).is_ok()
    });
    measure(
        "signer cert parse + facts (ParsedCert)",
        false,
        &mut rows,
        |_| ParsedCert::from_der(black_box(card.cert_der.clone())).is_ok(),
    );
    measure(
        "bare RSA-2048 verify (pki::sig, ring)",
        true,
        &mut rows,
        |i| {
            pki::sig::verify(
                &spki,
                SigAlg::RsaSha256,
                tbs[k(i)].as_bytes(),
                black_box(&pkcs1[k(i)]),
            )
            .is_ok()
        },
    );

    eprintln!("running `openssl speed -seconds 2 rsa2048`...");
    let openssl = openssl_rsa2048_verify();

    println!();
    println!("machine: {}", machine());
    println!(
        "single thread; {} s per case after {} ms warm-up; {PROOFS} distinct proofs cycled; MOICA card",
        MEASURE.as_secs(),
        WARM_UP.as_millis()
    );
    match &openssl {
        Ok(v) => println!("openssl speed -seconds 2 rsa2048: {v:.1} verify/s"),
        Err(e) if e == "openssl not found" => println!("openssl not found"),
        Err(e) => println!("openssl: {e}"),
    }
    println!();
    println!(
        "{:<50} {:>12} {:>10} {:>12}",
        "case", "ops/s", "µs/op", "÷ openssl"
    );
    println!("{}", "-".repeat(87));
    for r in &rows {
        let ratio = match (&openssl, r.rsa) {
            (Ok(o), true) if *o > 0.0 => format!("{:.3}", r.per_sec / o),
            _ => String::new(),
        };
        println!(
            "{:<50} {:>12.0} {:>10.2} {:>12}",
            r.name,
            r.per_sec,
            1e6 / r.per_sec,
            ratio
        );
    }
    let rate = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.per_sec);
    if let (Some(small), Some(huge)) = (
        rate("cert validation only (path+CRL), cache off"),
        rate("cert validation only, 1M-entry CRL, cache off"),
    ) {
        println!(
            "cold validation with the 1M-entry CRL takes {:.2}× the time with the test CRL",
            small / huge
        );
    }
    println!(
        "1M-entry CRL ({} bytes): load (parse + signature + index) {:.2} s (best of {HUGE_CRL_LOADS}); {:.1} MB held after load",
        huge_crl.len(),
        load_secs,
        held as f64 / 1e6
    );
    println!();
    println!("bench: {} cases measured", rows.len());
}
