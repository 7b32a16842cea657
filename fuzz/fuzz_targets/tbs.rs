//! Fuzz target: the text parsers — `Challenge::parse_tbs`, national ID and 統一編號 parsers,
//! and `CertSerial` — with their round-trip properties.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki::challenge::Challenge;
use pki::ids::{NationalId, UniformNumber};
use pki::serial::CertSerial;

fuzz_target!(|data: &[u8]| {
    // A TBS that parses is canonical: it prints back to the same bytes.
    if let Ok(c) = Challenge::parse_tbs(data) {
        assert_eq!(c.tbs().as_bytes(), data);
    }

    let Ok(text) = std::str::from_utf8(data) else {
        let _ = CertSerial::from_der_bytes(data);
        return;
    };
    if let Ok(id) = NationalId::parse(text) {
        let _ = (id.kind(), id.last4(), id.masked());
        // NationalId has no Debug (IDs must not reach logs): compare without assert_eq.
        assert!(NationalId::parse(id.as_str()).is_ok_and(|again| again == id));
    }
    if let Ok(n) = UniformNumber::parse(text) {
        assert_eq!(UniformNumber::parse(n.as_str()).as_ref(), Ok(&n));
    }
    if let Ok(s) = CertSerial::parse(text) {
        assert_eq!(CertSerial::parse(s.as_str()).as_ref(), Ok(&s));
        assert_eq!(CertSerial::from_der_bytes(&s.to_bytes()).as_ref(), Ok(&s));
    }
    if let Ok(s) = CertSerial::from_der_bytes(data) {
        assert_eq!(CertSerial::parse(s.as_str()).as_ref(), Ok(&s));
    }
});
