//! What a distribution point CRL costs a validation (`cargo bench -p pki --bench online`): the
//! first validation of a card (fetch through an in-memory transport, parse, signature check,
//! verdict) and every later one (kept CRL, kept verdict), for partitions of 1 000 and 100 000
//! entries, next to a validation against the same CRL configured (path cache on) and this
//! machine's `openssl speed rsa2048` verify rate. No criterion: a plain timed loop.

use pki::anchors::Role;
use pki::error::Result;
use pki::facts::ParsedCert;
use pki::online::{CrlFetch, CrlSource, RevocationPolicy, RevocationSettings, Transports, wire};
use pki::revocation::CrlStore;
use pki::validate::{ValidationOptions, Validator};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testpki::{CaKind, CrlSpec, TestPki, TestPkiOptions, crl_from, try_issue};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);
const URL: &str = "http://crl.test.certreg.invalid/gca-1.crl";
const MEASURE: Duration = Duration::from_secs(2);

/// A distribution point that always serves the same bytes.
struct Serve(Vec<u8>);

impl CrlFetch for Serve {
    fn get(&self, _: &str, _: Duration, _: usize) -> Result<Vec<u8>> {
        Ok(self.0.clone())
    }
}

/// Validations per second of `cert` with `v` on this thread.
fn rate(v: &Validator, cert: &ParsedCert) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MEASURE {
        v.validate(cert, &[], Role::Organization, NOW)
            .expect("the card validates");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `openssl speed -seconds 2 rsa2048`: the verify/s of the `rsa 2048 bits` line.
fn openssl_rsa2048_verify() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "rsa2048"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.contains("verify/s"))?
        .split_whitespace()
        .collect();
    let col = header.iter().position(|h| *h == "verify/s")?;
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("rsa 2048 bits"))?
        .split_whitespace()
        .skip(3)
        .collect();
    row.get(col)?.parse().ok()
}

fn main() {
    let pki = TestPki::generate(TestPkiOptions::new(NOW)).expect("test PKI");
    let gca = pki.ca(CaKind::Gca);
    let card = pki.card("gca-agency");
    let mut spec = card.issued.spec.clone();
    spec.crl_url = Some(URL.to_string());
    let cert = ParsedCert::from_der(
        try_issue(&spec, card.issued.key.clone(), gca)
            .expect("card")
            .cert_der,
    )
    .expect("card parses");
    let settings = RevocationSettings {
        policy: RevocationPolicy::Crl,
        crl_source: CrlSource::DistributionPoint,
        ..RevocationSettings::default()
    };
    println!(
        "| CRL entries | CRL bytes | first validation (ms) | later validations/s | configured CRL, path cache: validations/s |"
    );
    println!("|---|---|---|---|---|");
    for entries in [1_000u64, 100_000] {
        let revoked = (0..entries)
            .map(|i| {
                (
                    (i + 1_000_000).to_be_bytes().to_vec(),
                    NOW - time::Duration::days(1),
                )
            })
            .collect();
        let der = crl_from(
            gca,
            &CrlSpec {
                revoked,
                idp_url: Some(URL.to_string()),
                ..CrlSpec::new(
                    NOW - time::Duration::hours(1),
                    NOW + time::Duration::hours(6),
                )
            },
        );
        let online = wire(
            pki.trust_store().expect("anchors"),
            CrlStore::new(),
            ValidationOptions::default(),
            &settings,
            Transports {
                crl: Arc::new(Serve(der.clone())),
                ..Transports::default()
            },
        );
        let start = Instant::now();
        online
            .validate(&cert, &[], Role::Organization, NOW)
            .expect("the card validates");
        let first = start.elapsed();
        let later = rate(&online, &cert);
        let mut store = CrlStore::new();
        store.add(&der).expect("CRL");
        let configured = wire(
            pki.trust_store().expect("anchors"),
            store,
            ValidationOptions::default(),
            &RevocationSettings::default(),
            Transports::default(),
        );
        let configured = rate(&configured, &cert);
        println!(
            "| {entries} | {} | {:.2} | {later:.0} | {configured:.0} |",
            der.len(),
            first.as_secs_f64() * 1000.0
        );
    }
    match openssl_rsa2048_verify() {
        Some(v) => println!("openssl speed rsa2048: {v:.0} verify/s"),
        None => println!("openssl speed rsa2048: not measured (openssl missing or unreadable)"),
    }
}
