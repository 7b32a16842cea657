//! Fuzz target: certificate input (DER, PEM or base64) through `ParsedCert::from_input` and the
//! `CertFacts` read from it; a certificate that parses must re-parse to the same facts, be DER
//! as a whole (one encoding per certificate), and have a positive serial.
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
    assert!(
        pki::ber::is_der(&cert.der),
        "a certificate read from non-DER"
    );
    assert!(pki::ber::check_values(&cert.der).is_ok());
    assert!(cert.cert.tbs_certificate().serial_number().as_bytes()[0] & 0x80 == 0);
    // Facts depend on the DER only.
    let again = ParsedCert::from_der(cert.der.clone()).expect("parsed DER parses again");
    assert_eq!(&again.facts, facts);
});
