//! Certificate facts: names in every string type, GPKI attributes, serials, input encodings.

use crate::helpers::*;
use base64::Engine as _;
use pki::ErrorCode;
use pki::facts::{OrgIdAttr, ParsedCert, decode_input};

#[test]
fn spec_2_1_organization_card_facts() {
    let c = card("gca-agency");
    let f = &c.facts;
    assert_eq!(f.subject_type.as_deref(), Some("2.16.886.1.100.3.2.1.1"));
    assert_eq!(
        f.org_oid.as_deref(),
        pki().card("gca-agency").org_identifier.as_deref()
    );
    assert_eq!(f.org_identifier, f.org_oid);
    assert!(f.is_organization() && !f.is_citizen());
    assert!(
        f.key_usage.contains(&"digitalSignature"),
        "{:?}",
        f.key_usage
    );
    assert!(
        f.issuer.starts_with("C=TW, O=行政院, OU=政府憑證管理中心"),
        "{}",
        f.issuer
    );
    assert_eq!(f.crl_urls.len(), 1);
    assert!(f.crl_urls[0].ends_with(".crl"), "{:?}", f.crl_urls);
    assert!(
        f.policies.contains(&"2.16.886.101.0.3.0".to_string()),
        "{:?}",
        f.policies
    );
    assert_eq!(
        f.holder_name(),
        Some(pki().card("gca-agency").holder.as_str())
    );
    assert_eq!(f.sha256.len(), 64);
}

#[test]
fn spec_2_1_citizen_card_facts() {
    let tc = pki().card("moica-admin");
    let f = card("moica-admin").facts;
    assert_eq!(f.subject_type.as_deref(), Some("2.16.886.1.100.3.1.1"));
    assert!(f.is_citizen());
    let id = tc.national_id.as_deref().unwrap();
    assert_eq!(f.id_last4.as_deref(), Some(&id[6..]));
    assert_eq!(f.cn.as_deref(), Some(tc.holder.as_str()));
    assert_eq!(f.holder_name(), Some(tc.holder.as_str()));
    let sn = f.subject_serial_number.as_deref().unwrap();
    assert_eq!(sn.len(), 16, "{sn}");
    assert!(sn.bytes().all(|b| b.is_ascii_digit()));
    assert_ne!(sn, f.serial.as_str());
    assert_eq!(f.card_kind.as_deref(), Some("primary"));
    assert!(f.issuer.contains("內政部憑證管理中心"), "{}", f.issuer);
}

#[test]
fn spec_2_1_uniform_number_from_moeaca() {
    let tc = pki().card("moeaca-company");
    let mut f = card("moeaca-company").facts;
    assert_eq!(f.uniform_number.as_deref(), tc.org_identifier.as_deref());
    assert!(pki::ids::UniformNumber::parse(f.uniform_number.as_deref().unwrap()).is_ok());
    f.set_org_id_attr(OrgIdAttr::UniformNumber);
    assert_eq!(f.org_identifier, f.uniform_number);
    f.set_org_id_attr(OrgIdAttr::Oid);
    assert_eq!(f.org_identifier, None);
}

#[test]
fn spec_2_1_xca_and_hca_subject_types() {
    assert_eq!(
        card("xca-school").facts.subject_type.as_deref(),
        Some("2.16.886.1.100.3.2.11")
    );
    assert!(
        card("xca-school")
            .facts
            .org_oid
            .unwrap()
            .starts_with("2.16.886.111.")
    );
    assert_eq!(
        card("hca-hospital").facts.subject_type.as_deref(),
        Some("2.16.886.1.100.3.2.21")
    );
    assert!(card("xca-school").facts.is_organization());
}

#[test]
fn spec_2_1_bmpstring_name_decodes() {
    let tc = pki().card("moica-bmp");
    let f = card("moica-bmp").facts;
    assert_eq!(f.cn.as_deref(), Some(tc.holder.as_str()));
    assert!(f.subject.contains(&tc.holder), "{}", f.subject);
}

#[test]
fn spec_2_1_every_card_serial_is_what_openssl_prints() {
    let dir = TempDir::new("serial");
    let mut saw_sign_byte = false;
    for tc in &pki().cards {
        let der = &tc.issued.cert_der;
        let path = dir.write(&format!("{}.der", tc.name), der);
        let (ok, out, err) = openssl(&[
            "x509",
            "-inform",
            "DER",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-serial",
            "-fingerprint",
            "-sha256",
        ]);
        assert!(ok, "{err}");
        let f = ParsedCert::from_der(der.clone()).unwrap().facts;
        let serial_line = out.lines().find(|l| l.starts_with("serial=")).unwrap();
        assert_eq!(
            f.serial.as_str(),
            &serial_line["serial=".len()..],
            "{}",
            tc.name
        );
        let fp_line = out.lines().find(|l| l.contains("Fingerprint=")).unwrap();
        let fp: String = fp_line.split('=').nth(1).unwrap().replace(':', "");
        assert_eq!(f.sha256, fp, "{}", tc.name);
        let raw = x509_serial_der_len(der);
        saw_sign_byte |= raw > f.serial.as_str().len() / 2;
    }
    assert!(
        saw_sign_byte,
        "the test PKI should hold a serial whose DER carries a 00 sign byte"
    );
}

/// Content length of the DER INTEGER serial (includes a sign byte when present).
fn x509_serial_der_len(der: &[u8]) -> usize {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    der::Encode::encoded_len(cert.tbs_certificate().serial_number())
        .map(|l| u32::from(l) as usize)
        .unwrap()
        - 2
}

#[test]
fn input_as_pem_base64_and_urlsafe() {
    let der = pki().card("moica-admin").issued.cert_der.clone();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = pki().card("moica-admin").issued.cert_pem();
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der);
    for input in [
        pem.as_bytes(),
        b64.as_bytes(),
        wrapped.as_bytes(),
        url.as_bytes(),
    ] {
        assert_eq!(decode_input(input).unwrap(), der);
    }
    let prefixed = format!("garbage before\n{pem}");
    assert_eq!(decode_input(prefixed.as_bytes()).unwrap(), der);
}

#[test]
fn malformed_inputs_have_precise_codes() {
    let der = pki().card("gca-agency").issued.cert_der.clone();
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("empty", vec![], ErrorCode::CertMalformed),
        ("spaces", b"   \n".to_vec(), ErrorCode::CertMalformed),
        ("not base64", b"!!!!".to_vec(), ErrorCode::CertMalformed),
        (
            "binary garbage",
            vec![0xFF, 0x00, 0x12],
            ErrorCode::CertMalformed,
        ),
        (
            "truncated DER",
            der[..der.len() / 2].to_vec(),
            ErrorCode::CertMalformed,
        ),
        (
            "trailing byte",
            [der.clone(), vec![0]].concat(),
            ErrorCode::CertMalformed,
        ),
        (
            "sequence of nothing",
            vec![0x30, 0x00],
            ErrorCode::CertMalformed,
        ),
        (
            "PEM without END",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec(),
            ErrorCode::CertMalformed,
        ),
        (
            "oversized",
            vec![0x30; 200 * 1024],
            ErrorCode::InputTooLarge,
        ),
        (
            "a CRL, not a certificate",
            pki().crl_for(testpki::CaKind::Gca, NOW, NOW + time::Duration::days(1)),
            ErrorCode::CertMalformed,
        ),
    ];
    for (name, input, code) in cases {
        let e = ParsedCert::from_input(&input).expect_err(name);
        assert_eq!(e.code, code, "{name}: {e}");
    }
}

#[test]
fn flipped_byte_in_signature_still_parses_but_fails_validation() {
    let mut der = pki().card("gca-agency").issued.cert_der.clone();
    let n = der.len();
    der[n - 5] ^= 0x01;
    let parsed = ParsedCert::from_der(der).unwrap();
    let e = validator()
        .validate(&parsed, &[], pki::anchors::Role::Organization, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
}
