//! Property tests: arbitrary bytes never panic a parser.

use pki::challenge::Challenge;
use pki::facts::ParsedCert;
use pki::revocation::CrlStore;
use proptest::prelude::*;

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (0..seed.len(), any::<u8>(), 0..seed.len()).prop_map(move |(i, b, cut)| {
        let mut v = seed.clone();
        v[i] = b;
        if cut % 3 == 0 {
            v.truncate(cut.max(1));
        }
        v
    })
}

/// A CMS proof as a streaming signer starts it: the outer SEQUENCE with an indefinite length.
fn ber_proof() -> Vec<u8> {
    let c = crate::proofs::challenge("org_card");
    let der = crate::proofs::cms_proof(
        crate::helpers::pki(),
        "gca-agency",
        c.tbs().as_bytes(),
        &Default::default(),
    );
    let header = 2 + usize::from(der[1] & 0x7f) * usize::from(der[1] >= 0x80);
    let mut ber = vec![0x30, 0x80];
    ber.extend_from_slice(&der[header..]);
    ber.extend_from_slice(&[0, 0]);
    ber
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What `ber::to_der` gives is DER already (lengths): a second pass changes nothing.
    #[test]
    fn mutated_ber_never_panics_and_converts_once(bytes in mutated(ber_proof())) {
        if let Ok(der) = pki::ber::to_der(&bytes) {
            let again = pki::ber::to_der(&der).unwrap();
            prop_assert!(matches!(again, std::borrow::Cow::Borrowed(_)));
        }
        let c = crate::proofs::challenge("org_card");
        let _ = pki::proof::verify_proof(&crate::helpers::no_crl_validator(), &c, &bytes, None, pki::anchors::Role::Organization, crate::helpers::NOW);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ParsedCert::from_input(&bytes);
        let _ = pki::cms::parse(&bytes);
        let _ = pki::proof::decode_signature(&bytes);
        let _ = Challenge::parse_tbs(&bytes);
        let _ = CrlStore::new().add(&bytes);
        let _ = pki::pkcs12::read_pkcs12(&bytes, "123456");
        let text = String::from_utf8_lossy(&bytes);
        let _ = pki::ids::NationalId::parse(&text);
        let _ = pki::ids::UniformNumber::parse(&text);
        let _ = pki::serial::CertSerial::parse(&text);
    }

    /// A signature sent as base64, standard or URL-safe, padded or not, wrapped in lines
    /// and spaces, decodes to its bytes.
    #[test]
    fn base64_signatures_decode_however_wrapped(
        bytes in proptest::collection::vec(any::<u8>(), 1..512),
        url_safe in any::<bool>(),
        padded in any::<bool>(),
        width in 1usize..80,
        breaks in prop::sample::select(vec!["\n", "\r\n", " ", "\t", "\x0c", " \n "]),
    ) {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let engine = match (url_safe, padded) {
            (false, true) => &STANDARD,
            (false, false) => &STANDARD_NO_PAD,
            (true, true) => &URL_SAFE,
            (true, false) => &URL_SAFE_NO_PAD,
        };
        let text = engine.encode(&bytes);
        let wrapped = text
            .as_bytes()
            .chunks(width)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect::<Vec<_>>()
            .join(breaks);
        let wrapped = format!("{breaks}{wrapped}{breaks}");
        let decoded = pki::proof::decode_signature(wrapped.as_bytes());
        // A URL-safe text without '-' or '_' is standard base64 as well.
        prop_assert_eq!(decoded.map_err(|e| e.to_string()), Ok(bytes));
    }

    #[test]
    fn mutated_certificates_never_panic(bytes in mutated(crate::helpers::pki().card("moica-admin").issued.cert_der.clone())) {
        if let Ok(c) = ParsedCert::from_der(bytes) {
            let _ = crate::helpers::no_crl_validator().validate(&c, &[], pki::anchors::Role::Citizen, crate::helpers::NOW);
        }
    }

    #[test]
    fn mutated_cms_never_panics(bytes in mutated({
        let c = crate::proofs::challenge("org_card");
        crate::proofs::cms_proof(crate::helpers::pki(), "gca-agency", c.tbs().as_bytes(), &Default::default())
    })) {
        let c = crate::proofs::challenge("org_card");
        let _ = pki::proof::verify_proof(&crate::helpers::no_crl_validator(), &c, &bytes, None, pki::anchors::Role::Organization, crate::helpers::NOW);
    }

    #[test]
    fn mutated_crls_never_panic(bytes in mutated(crate::helpers::pki().crl_for(testpki::CaKind::Moica, crate::helpers::NOW, crate::helpers::NOW + time::Duration::days(1)))) {
        let mut crls = CrlStore::new();
        if crls.add(&bytes).is_ok() {
            let v = crate::helpers::validator_with(crls, Default::default());
            let _ = v.validate(&crate::helpers::card("moica-admin"), &[], pki::anchors::Role::Citizen, crate::helpers::NOW);
        }
    }
}
