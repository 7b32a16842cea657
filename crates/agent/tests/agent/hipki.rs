//! What pages written for the real HiPKI local server send and read: percent-encoded `tbs` and
//! `pin` (also with `+` turned into `%2B` in the whole package, and in form bodies that arrive
//! with a real newline inside the JSON), `GET /pkcs11info`, `/p11Image.bmp`, HiPKI's DN form,
//! Unix-second validity and every key usage.

use crate::helpers::*;
use agent::protocol::ret;
use pki::facts::ParsedCert;
use serde_json::{Value, json};
use testpki::KeyAlg;

/// JavaScript's `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The form body such pages post: `tbsPackage=` + the package text as it is, `+` written `%2B`.
fn hipki_form(package: &Value) -> String {
    format!("tbsPackage={}", package.to_string().replace('+', "%2B"))
}

#[test]
fn percent_encoded_packages_sign_the_same_challenge_in_every_transport() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let pin = pin_of(pki(), "gca-agency");
    let site = [("Origin", SITE)];

    // As the pages build it: tbs and pin encoded, the nonce with a '+' in it.
    let c = challenge();
    let mut pkg = package(
        &encode_uri_component(&c.tbs()),
        &encode_uri_component(&pin),
        "PKCS7",
    );
    pkg["nonce"] = json!("a+b");
    let form = hipki_form(&pkg);
    assert!(form.contains("%0A") && form.contains("%2B"), "{form}");
    let r = agent
        .request("POST", "/sign", &site, form.as_bytes())
        .json();
    let proof = crate::verify(pki(), "gca-agency", &c, &r, false);
    assert_eq!(proof.attrs.nonce.as_deref(), Some("612B62"), "'+' survives");

    // The same package as a JSON body (the popup's transport) and fully form-encoded.
    let c = challenge();
    let pkg = package(
        &encode_uri_component(&c.tbs()),
        &encode_uri_component(&pin),
        "PKCS1",
    );
    let r = agent
        .request(
            "POST",
            "/sign",
            &[("Origin", SITE), ("Content-Type", "application/json")],
            pkg.to_string().as_bytes(),
        )
        .json();
    crate::verify(pki(), "gca-agency", &c, &r, true);
    let c = challenge();
    let pkg = package(&encode_uri_component(&c.tbs()), &pin, "PKCS7");
    let body = format!("tbsPackage={}", urlencode(&pkg.to_string()));
    crate::verify(
        pki(),
        "gca-agency",
        &c,
        &agent
            .request("POST", "/sign", &site, body.as_bytes())
            .json(),
        false,
    );

    // Base64 TBS, percent-encoded ('+', '/', '=' escaped).
    use base64::Engine as _;
    let c = challenge();
    let b64 = base64::engine::general_purpose::STANDARD.encode(c.tbs());
    let mut pkg = package(&encode_uri_component(&b64), &pin, "PKCS7");
    pkg["tbsEncoding"] = json!("base64");
    crate::verify(
        pki(),
        "gca-agency",
        &c,
        &agent
            .request("POST", "/sign", &site, hipki_form(&pkg).as_bytes())
            .json(),
        false,
    );

    // A wrong PIN sent encoded is still just a wrong PIN, and a stray '%' is a parameter error
    // (nothing is guessed), neither costs more than the one try.
    let r = agent
        .request(
            "POST",
            "/sign",
            &site,
            hipki_form(&package(
                &encode_uri_component(&challenge().tbs()),
                "%30%30%30%30%30%30",
                "PKCS7",
            ))
            .as_bytes(),
        )
        .json();
    assert_eq!(r["ret_code"], ret::LOGIN_FAILED, "{r}");
    assert_eq!(r["message2"], "剩餘 2 次機會");
    let r = agent
        .request(
            "POST",
            "/sign",
            &site,
            hipki_form(&package(
                &encode_uri_component(&challenge().tbs()),
                "12%4",
                "PKCS7",
            ))
            .as_bytes(),
        )
        .json();
    assert_eq!(r["ret_code"], ret::PARAMETER, "{r}");
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 2);
}

#[test]
fn certificates_are_described_as_hipki_pages_read_them() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["moica-admin", "gca-agency"]);
    // GET as the bank page does it, with a header of its own (after a preflight).
    let pre = agent.request(
        "OPTIONS",
        "/pkcs11info?withcert=true",
        &[
            ("Origin", SITE),
            ("Access-Control-Request-Method", "GET"),
            (
                "Access-Control-Request-Headers",
                "x-bank-client,content-type",
            ),
        ],
        b"",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("x-bank-client, content-type")
    );
    let got = agent.request(
        "GET",
        "/pkcs11info?withcert=true",
        &[("Origin", SITE), ("X-Bank-Client", "1")],
        b"",
    );
    assert_eq!(got.header("access-control-allow-origin"), Some(SITE));
    let info = got.json();
    assert_eq!(info, agent.pkcs11info(), "GET and POST answer alike");
    assert_eq!(info["message2"], "");

    let citizen = &info["slots"][0]["token"]["certs"][0];
    let card = pki().card("moica-admin");
    let facts = ParsedCert::from_der(card.issued.cert_der.clone())
        .unwrap()
        .facts;
    // Split as the pages do: on "," then on "=", keys compared exactly.
    let dn = citizen["subjectDN"].as_str().unwrap();
    assert!(!dn.contains(", "), "{dn}");
    let parts: Vec<(&str, &str)> = dn.split(',').filter_map(|p| p.split_once('=')).collect();
    let get = |k: &str| parts.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("C"), Some("TW"), "{dn}");
    assert_eq!(get("CN"), Some(card.holder.as_str()), "{dn}");
    if let Some(sn) = &facts.subject_serial_number {
        assert_eq!(get("serialNumber"), Some(sn.as_str()), "{dn}");
    }
    assert!(citizen["issuerDN"].as_str().unwrap().starts_with("C=TW,"));
    assert_eq!(citizen["notBeforeT"], facts.not_before.unix_timestamp());
    assert_eq!(citizen["notAfterT"], facts.not_after.unix_timestamp());
    assert_eq!(citizen["usage"], "digitalSignature|nonRepudiation");
    let org = &info["slots"][1]["token"]["certs"][0];
    let org_dn = org["subjectDN"].as_str().unwrap();
    assert!(org_dn.split(',').any(|p| p == "C=TW"), "{org_dn}");
}

#[test]
fn an_encryption_only_certificate_lists_its_usages() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let Some(card) = pki()
        .cards
        .iter()
        .find(|c| c.variant == testpki::Variant::WrongKeyUsage)
    else {
        panic!("the test PKI has a card with the wrong key usage");
    };
    let agent = TestAgent::soft(&dir, &[card.name.as_str()]);
    let cert = &agent.pkcs11info()["slots"][0]["token"]["certs"][0];
    assert_eq!(cert["usage"], "keyEncipherment");
}

/// The text a page reads from the image: for each pixel blue, green, red as characters, until
/// the first pixel whose blue byte is 0.
fn read_p11_image(bmp: &[u8]) -> String {
    assert_eq!(&bmp[..2], b"BM");
    let u32_at = |i: usize| u32::from_le_bytes(bmp[i..i + 4].try_into().unwrap());
    let offset = u32_at(10) as usize;
    assert_eq!(u32_at(2) as usize, bmp.len());
    assert_eq!(u32_at(18), 2000, "width");
    assert_eq!(u32_at(22), 1, "height");
    assert_eq!(u16::from_le_bytes([bmp[28], bmp[29]]), 24, "bits per pixel");
    assert_eq!(bmp.len() - offset, 6000);
    let mut text = String::new();
    for px in bmp[offset..].chunks(3) {
        if px[0] == 0 {
            break;
        }
        for b in px {
            text.push(*b as char);
        }
    }
    text
}

#[test]
fn p11_image_carries_pkcs11info_for_allowed_sites() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["moica-admin"]);
    let img = agent.request("GET", "/p11Image.bmp", &[("Origin", SITE)], b"");
    assert_eq!(img.status, 200);
    assert_eq!(img.header("content-type"), Some("image/bmp"));
    assert_eq!(img.header("access-control-allow-origin"), Some(SITE));
    let text = read_p11_image(&img.body);
    assert!(text.is_ascii());
    let info: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(info["ret_code"], 0);
    assert!(
        info["serverVersion"]
            .as_str()
            .unwrap()
            .starts_with("certreg-agent/")
    );
    let cert = &info["slots"][0]["token"]["certs"][0];
    assert_eq!(
        cert["subjectCN"],
        pki().card("moica-admin").holder,
        "\\u escapes decode"
    );
    assert!(cert.get("certb64").is_none());
    // What a page would read through POST, without certificates.
    assert_eq!(info, agent.post("/pkcs11info", b"").json());

    // A site that is not trusted gets no image; the preflight is answered like the others.
    let evil = agent.request(
        "GET",
        "/p11Image.bmp",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(evil.status, 403);
    assert!(evil.header("access-control-allow-origin").is_none());
    let cross = agent.request(
        "GET",
        "/p11Image.bmp",
        &[("Sec-Fetch-Site", "cross-site")],
        b"",
    );
    assert_eq!(cross.status, 403, "a cross-site request without Origin");
    for path in ["/p11Image.bmp", "/popupForm"] {
        let pre = agent.request(
            "OPTIONS",
            path,
            &[("Origin", SITE), ("Access-Control-Request-Method", "GET")],
            b"",
        );
        assert_eq!(pre.status, 204, "{path}");
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some(SITE),
            "{path}"
        );
    }

    // No reader at all still makes an image (the component is installed, no reader).
    let (_tmp2, dir2) = soft_card_dir(KeyAlg::Rsa2048);
    let empty = TestAgent::soft(&dir2, &[]);
    let info: Value = serde_json::from_str(&read_p11_image(
        &empty
            .request("GET", "/p11Image.bmp", &[("Origin", SITE)], b"")
            .body,
    ))
    .unwrap();
    assert_eq!(info["func"], "pkcs11info");
}
