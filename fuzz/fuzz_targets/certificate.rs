//! Fuzz target: certificate input (DER, PEM or base64) through `ParsedCert::from_input` and the
//! `CertFacts` read from it; a certificate that parses must re-parse to the same facts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki::facts::ParsedCert;
use pki::serial::CertSerial;

fuzz_target!(|data: &[u8]| {
    let Ok(cert) = ParsedCert::from_input(data) else {
        return;
    };
    let facts = &cert.facts;
    let _ = facts.holder_name();
    let _ = facts.is_citizen();
    let _ = facts.is_organization();
    let _ = facts.can_sign();
    let _ = cert.spki_der();
    // The serial in the facts is canonical: parsing its text gives it back.
    assert_eq!(
        CertSerial::parse(facts.serial.as_str()).as_ref(),
        Ok(&facts.serial)
    );
    // Facts depend on the DER only.
    let again = ParsedCert::from_der(cert.der.clone()).expect("parsed DER parses again");
    assert_eq!(&again.facts, facts);
});
