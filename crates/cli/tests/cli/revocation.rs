//! `certreg serve` with `revocation = "ocsp"` as a real process: the organization card step of
//! a first registration, walked over TCP as the pages do, against a real `openssl ocsp`
//! responder for the test GCA named in the cards' Authority Information Access. No CRL is
//! configured: OCSP alone decides. The responder dates its answers by the system clock, and so
//! does the service: the test PKI and the responder's index are made relative to
//! `testkit::ocsp::responder_clock`, so nothing here names a date.

use crate::serve::{command, dechunk, start};
use base64::Engine as _;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use testpki::{CaKind, GCA_AGENCY_OID, TestPki, TestPkiOptions};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A browser over plain TCP: one connection per request, cookies kept.
struct Browser {
    host: String,
    cookies: Vec<(String, String)>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Page {
        let mut s = TcpStream::connect(&self.host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.host,
            body.len()
        );
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let mut location = None;
        let mut chunked = false;
        for line in head.lines().skip(1) {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "location" => location = Some(v.to_string()),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "set-cookie" => {
                    let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
                    let (name, value) = kv.split_once('=').unwrap();
                    self.cookies.retain(|(n, _)| n != name);
                    if !attrs.contains("Max-Age=0") {
                        self.cookies.push((name.to_string(), value.to_string()));
                    }
                }
                _ => {}
            }
        }
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Page {
            status,
            location,
            body,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.host)
    }

    fn csrf(&mut self) -> String {
        let home = self.send("GET", "/", &[], "").body;
        let start = home.find("name=\"csrf-token\" content=\"").unwrap() + 27;
        home[start..start + 64].to_string()
    }

    fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf();
        let mut all = vec![("_csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let body = all
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let origin = self.origin();
        self.send(
            "POST",
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", &origin),
            ],
            &body,
        )
    }

    /// The organization card step as the page script makes it: a challenge, the card's CMS
    /// signature over it, and the post.
    fn card_step(&mut self, flow: &str, cert_der: &[u8], key: &testpki::TestKey) -> Page {
        let csrf = self.csrf();
        let origin = self.origin();
        let challenge = self.send(
            "POST",
            &format!("/flows/{flow}/challenge"),
            &[("Origin", &origin), ("x-csrf-token", &csrf)],
            "",
        );
        assert_eq!(challenge.status, 200, "{}", challenge.body);
        let v: serde_json::Value = serde_json::from_str(&challenge.body).unwrap();
        let cms = pki::cms::build_signed_data(
            v["tbs"].as_str().unwrap().as_bytes(),
            cert_der,
            &Default::default(),
            |m| pki::sig::sign_pkcs8(&key.pkcs8_der, m),
        )
        .unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(cms);
        self.post_form(
            &format!("/flows/{flow}/card"),
            &[
                ("challenge_id", v["challenge_id"].as_str().unwrap()),
                ("signature", &signature),
                ("institution_code", "A0001"),
            ],
        )
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn serve_with_ocsp_refuses_a_revoked_card_and_accepts_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    // The responder's clock (see `testkit::ocsp`): everything here is relative to it.
    let at = testkit::ocsp::responder_clock();
    let pki = TestPki::generate(TestPkiOptions::new(at)).unwrap();
    pki.write_dir(&dir.path().join("pki")).unwrap();

    // The responder of the test GCA, and the two cards issued again naming it.
    let gca = pki.ca(CaKind::Gca);
    let ocsp_dir = dir.path().join("ocsp");
    std::fs::create_dir_all(&ocsp_dir).unwrap();
    std::fs::write(ocsp_dir.join("ca.pem"), gca.cert_pem()).unwrap();
    std::fs::write(ocsp_dir.join("ca.key"), gca.key.pem()).unwrap();
    let good = pki.card("gca-agency");
    let revoked = pki.card("gca-agency-revoked");
    std::fs::write(
        ocsp_dir.join("index.txt"),
        testkit::ocsp::index_line(&good.issued.serial_hex(), "good", false, at)
            + &testkit::ocsp::index_line(&revoked.issued.serial_hex(), "revoked", true, at),
    )
    .unwrap();
    let responder = testkit::ocsp::ocsp_responder(&ocsp_dir, "ca.pem", "ca.key", &[]);
    let ocsp_url = responder.url.clone();
    let with_ocsp = |card: &testpki::Card| {
        let mut spec = card.issued.spec.clone();
        spec.ocsp_url = Some(ocsp_url.clone());
        testpki::try_issue(&spec, card.issued.key.clone(), gca)
            .unwrap()
            .cert_der
    };
    let (good_der, revoked_der) = (with_ocsp(good), with_ocsp(revoked));

    let db = format!("sqlite://{}", dir.path().join("certreg.db").display());
    let csv = dir.path().join("agencies.csv");
    std::fs::write(
        &csv,
        format!(
            "機關代號,機關名稱,縣市,機關憑證OID\nA0001,臺北市政府人事處,臺北市,{GCA_AGENCY_OID}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = crate::certreg(&[
        "agencies",
        "import",
        csv.to_str().unwrap(),
        "--database",
        &db,
    ]);
    assert_eq!(code, 0, "{err}");

    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let mut cmd = command();
    cmd.arg("serve")
        .env("CERTREG_DATABASE_URL", &db)
        .env("CERTREG_ANCHORS_DIR", dir.path().join("pki/anchors"))
        .env("CERTREG_LISTEN", &host)
        .env("CERTREG_PUBLIC_ORIGIN", format!("http://{host}"))
        .env("CERTREG_REVOCATION", "ocsp");
    let (_serve, _) = start(cmd, "certreg listening on", Duration::from_secs(60));

    let mut browser = Browser {
        host,
        cookies: Vec::new(),
    };
    let door = browser.send("GET", "/flows/new/first_registration", &[], "");
    assert_eq!(door.status, 200, "{}", door.body);
    let started = browser.post_form("/flows/new/first_registration", &[]);
    assert_eq!(started.status, 303, "{}", started.body);
    let flow = started
        .location
        .unwrap()
        .trim_start_matches("/flows/")
        .to_string();
    let terms = browser.post_form(&format!("/flows/{flow}/terms"), &[]);
    assert_eq!(terms.status, 303, "{}", terms.body);

    let refused = browser.card_step(&flow, &revoked_der, &revoked.issued.key);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("憑證已被廢止"), "{}", refused.body);

    let accepted = browser.card_step(&flow, &good_der, &good.issued.key);
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    let next = browser.send("GET", &format!("/flows/{flow}"), &[], "");
    assert!(
        next.body.contains("首次註冊－自然人憑證確認"),
        "{}",
        next.body
    );
}

#[test]
fn serve_refuses_revocation_settings_it_cannot_honour_with_exit_2() {
    for (env, want) in [
        (
            vec![("CERTREG_REVOCATION", "ocsp-only")],
            "CERTREG_REVOCATION must be one of crl, ocsp, crl_and_ocsp, crl_or_ocsp",
        ),
        (
            vec![("CERTREG_CRL_SOURCE", "ldap")],
            "CERTREG_CRL_SOURCE must be one of configured, distribution_point",
        ),
        (
            vec![
                ("CERTREG_REVOCATION", "ocsp"),
                ("CERTREG_CRL_SOURCE", "distribution_point"),
            ],
            "of no use with revocation = \"ocsp\"",
        ),
        (
            vec![("CERTREG_OCSP_TIMEOUT_SECONDS", "0")],
            "ocsp_timeout_seconds must be 1 to 60, not 0",
        ),
    ] {
        let err = crate::serve::serve_fails(&env);
        assert!(err.contains(want), "{env:?}: {err}");
    }
}
