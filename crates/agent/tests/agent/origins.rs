//! The agent signs a challenge only for the site it names: directly (the request's Origin),
//! through its popup (the relayed `postMessage` origin), never for a caller without Origin unless
//! started so, and never for a request shaped like one a web page can send without Origin.

use crate::helpers::*;
use agent::protocol::ret;
use agent::server::{AgentConfig, AgentState};
use agent::softcard::SoftCards;
use pki::challenge::Challenge;
use serde_json::Value;
use std::sync::Arc;
use testpki::KeyAlg;

/// The second trusted site of a usual HiPKI install.
const OTHER: &str = "https://other.example.gov.tw";

fn ret_of(v: &Value) -> u64 {
    v["ret_code"].as_u64().expect("ret_code")
}

fn challenge_for(origin: &str) -> Challenge {
    challenge_on(origin, "f-1", "org_card")
}

fn agent_with(config: AgentConfig, dir: &std::path::Path) -> TestAgent {
    let cards = Arc::new(SoftCards::open(dir).unwrap());
    cards.insert("gca-agency").unwrap();
    TestAgent::start(config, cards.clone(), Some(cards))
}

fn two_sites() -> AgentConfig {
    AgentConfig {
        allowed_origins: vec![SITE.into(), OTHER.into(), "http://localhost:8080".into()],
        ..default_config()
    }
}

fn tries_left(agent: &TestAgent) -> Value {
    agent.pkcs11info()["slots"][0]["token"]["triesLeft"].clone()
}

#[test]
fn a_site_cannot_have_another_sites_challenge_signed() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = agent_with(two_sites(), &dir);
    let pin = pin_of(pki(), "gca-agency");

    // OTHER asks for SITE's challenge: refused with its own code, before the PIN is tried.
    let c = challenge_for(SITE);
    let relayed = agent.sign_from(&package(&c.tbs(), &pin, "PKCS7"), Some(OTHER));
    assert_eq!(ret_of(&relayed), ret::ORIGIN_MISMATCH as u64, "{relayed}");
    assert_eq!(
        relayed["message"],
        "簽章挑戰屬於其他網站，本元件拒絕代為簽章"
    );
    assert!(
        relayed["message2"].as_str().unwrap().contains(SITE),
        "{relayed}"
    );
    assert!(relayed["signature"].as_str().unwrap().is_empty());
    assert_eq!(tries_left(&agent), 3);

    // Second spellings of another origin are still another origin.
    let not_site = [
        "http://certreg.example.gov.tw",
        "https://certreg.example.gov.tw:8443",
        "https://certreg.example.gov.tw.evil.example",
        "https://xn--certreg-example.gov.tw",
    ];
    for o in not_site {
        let r = agent.sign_from(&package(&challenge_for(o).tbs(), &pin, "PKCS7"), Some(SITE));
        assert_eq!(ret_of(&r), ret::ORIGIN_MISMATCH as u64, "{o}: {r}");
    }
    // The loopback's two names are two origins.
    let r = agent.sign_from(
        &package(&challenge_for("http://127.0.0.1:8080").tbs(), &pin, "PKCS7"),
        Some("http://localhost:8080"),
    );
    assert_eq!(ret_of(&r), ret::ORIGIN_MISMATCH as u64, "{r}");
    assert_eq!(tries_left(&agent), 3);

    // Spellings of the same origin on either side are the same origin.
    for (tbs_origin, header) in [
        ("https://CERTREG.example.gov.tw", SITE),
        ("https://certreg.example.gov.tw:443", SITE),
        (SITE, "https://Certreg.Example.Gov.Tw:443"),
    ] {
        let c = challenge_for(tbs_origin);
        let r = agent.sign_from(&package(&c.tbs(), &pin, "PKCS7"), Some(header));
        assert_eq!(ret_of(&r), 0, "{tbs_origin} from {header}: {r}");
    }
    // And each site still signs its own.
    let c = challenge_for(OTHER);
    let r = agent.sign_from(&package(&c.tbs(), &pin, "PKCS7"), Some(OTHER));
    assert_eq!(ret_of(&r), 0, "{r}");
}

#[test]
fn the_popup_relays_only_for_the_page_that_posted_to_it() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = agent_with(two_sites(), &dir);
    let pin = pin_of(pki(), "gca-agency");
    let own = format!("http://127.0.0.1:{}", agent.addr.port());
    let relay = |relayed: Option<&str>, c: &Challenge| {
        let mut headers = vec![
            ("Origin", own.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(r) = relayed {
            headers.push(("X-Certreg-Relay-Origin", r));
        }
        agent
            .request(
                "POST",
                "/sign",
                &headers,
                package(&c.tbs(), &pin, "PKCS7").to_string().as_bytes(),
            )
            .json()
    };
    let c = challenge_for(SITE);
    assert_eq!(ret_of(&relay(Some(OTHER), &c)), ret::ORIGIN_MISMATCH as u64);
    assert_eq!(ret_of(&relay(None, &c)), ret::NO_ORIGIN as u64);
    assert_eq!(
        ret_of(&relay(Some("https://evil.example"), &c)),
        ret::SITE_NOT_TRUSTED as u64
    );
    assert_eq!(
        ret_of(&relay(Some("null"), &c)),
        ret::SITE_NOT_TRUSTED as u64
    );
    assert_eq!(tries_left(&agent), 3);
    assert_eq!(ret_of(&relay(Some(SITE), &c)), 0);

    // An allowed site cannot claim to be the popup: the relay header counts only from the
    // agent's own origin.
    let body = package(&challenge_for(SITE).tbs(), &pin, "PKCS7").to_string();
    let r = agent
        .request(
            "POST",
            "/sign",
            &[
                ("Origin", OTHER),
                ("Content-Type", "application/json"),
                ("X-Certreg-Relay-Origin", SITE),
            ],
            body.as_bytes(),
        )
        .json();
    assert_eq!(ret_of(&r), ret::ORIGIN_MISMATCH as u64, "{r}");
}

#[test]
fn callers_without_origin_sign_only_when_allowed_and_never_with_a_form_body() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let pin = pin_of(pki(), "gca-agency");
    let form = |c: &Challenge| {
        format!(
            "tbsPackage={}",
            urlencode(&package(&c.tbs(), &pin, "PKCS7").to_string())
        )
    };
    let json = |c: &Challenge| package(&c.tbs(), &pin, "PKCS7").to_string();

    // By default: refused, whatever the shape.
    let agent = agent_with(default_config(), &dir);
    let c = challenge_for(SITE);
    let r = agent.post("/sign", form(&c).as_bytes()).json();
    assert_eq!(ret_of(&r), ret::NO_ORIGIN as u64, "{r}");
    assert_eq!(r["message"], "請求未標示來源網站，本元件拒絕簽章");
    let r = agent
        .request(
            "POST",
            "/sign",
            &[("Content-Type", "application/json")],
            json(&c).as_bytes(),
        )
        .json();
    assert_eq!(ret_of(&r), ret::NO_ORIGIN as u64, "{r}");
    // A page with a `null` Origin (sandboxed frame, file:) is no local program.
    let r = agent.sign_from(&package(&c.tbs(), &pin, "PKCS7"), Some("null"));
    assert_eq!(ret_of(&r), ret::SITE_NOT_TRUSTED as u64, "{r}");
    assert_eq!(tries_left(&agent), 3);
    drop(agent);

    // Allowed: JSON or a custom header, any site's challenge; a form body, or a browser's
    // cross-site request, still refused.
    let agent = agent_with(
        AgentConfig {
            allow_no_origin: true,
            ..default_config()
        },
        &dir,
    );
    let ct_form = ("Content-Type", "application/x-www-form-urlencoded");
    let ct_text = ("Content-Type", "text/plain");
    let ct_json = ("Content-Type", "application/json; charset=utf-8");
    let refused: [(&[(&str, &str)], String); 4] = [
        (&[ct_form], form(&c)),
        (&[ct_text], json(&c)),
        (&[], json(&c)),
        (&[ct_json, ("Sec-Fetch-Site", "cross-site")], json(&c)),
    ];
    for (headers, body) in &refused {
        let r = agent
            .request("POST", "/sign", headers, body.as_bytes())
            .json();
        assert_eq!(ret_of(&r), ret::UNSAFE_REQUEST as u64, "{headers:?}: {r}");
    }
    let r = agent
        .request(
            "POST",
            "/sign",
            &[ct_json, ("Sec-Fetch-Site", "same-site")],
            json(&c).as_bytes(),
        )
        .json();
    assert_eq!(ret_of(&r), ret::UNSAFE_REQUEST as u64, "{r}");
    assert_eq!(tries_left(&agent), 3);
    let other = challenge_for("https://another.example");
    let r = agent
        .request("POST", "/sign", &[ct_json], json(&other).as_bytes())
        .json();
    assert_eq!(ret_of(&r), 0, "{r}");
    let r = agent
        .request(
            "POST",
            "/sign",
            &[ct_form, ("X-Requested-With", "certreg-tool")],
            form(&c).as_bytes(),
        )
        .json();
    assert_eq!(ret_of(&r), 0, "{r}");
}

#[test]
fn origins_that_open_the_agent_to_everyone_are_refused_at_start_up() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(SoftCards::open(&dir).unwrap());
    let start = |origin: &str, insecure: bool| {
        AgentState::new(
            AgentConfig {
                allowed_origins: vec![SITE.into(), origin.into()],
                allow_insecure_origin: insecure,
                ..default_config()
            },
            cards.clone(),
            None,
        )
        .map(|s| s.config().allowed_origins.clone())
    };
    for bad in [
        "null",
        "*",
        "file://",
        "file:///home/clerk/page.html",
        "https://certreg.example.gov.tw/login",
        "https://*.example.gov.tw",
        "http://certreg.example.gov.tw",
        "http://10.0.0.5:8080",
        "https://憑證.example.tw",
        "",
    ] {
        let e = start(bad, false).expect_err(bad);
        assert!(!e.to_string().is_empty());
    }
    assert!(start("*", true).is_err());
    assert_eq!(
        start("http://intranet.example:8080", true).unwrap(),
        vec![SITE.to_string(), "http://intranet.example:8080".to_string()]
    );
    assert_eq!(
        start("HTTP://LocalHost:8080/", false).unwrap(),
        vec![SITE.to_string(), "http://localhost:8080".to_string()]
    );
    // serve_on reports the same error instead of serving.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime.block_on(async {
        let listener = agent::server::bind(0).await.unwrap();
        agent::server::serve_on(
            listener,
            AgentConfig {
                allowed_origins: vec!["*".into()],
                ..default_config()
            },
            cards.clone(),
            None,
            async {},
        )
        .await
        .unwrap_err()
    });
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn the_status_page_offers_its_buttons_only_to_itself_and_cannot_be_framed() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let page = |site: Option<&str>| {
        let headers: Vec<(&str, &str)> = site.map(|s| ("Sec-Fetch-Site", s)).into_iter().collect();
        agent.request("GET", "/", &headers, b"")
    };
    for site in ["none", "same-origin"] {
        let p = page(Some(site));
        assert!(p.text().contains("<button"), "{site}");
        assert!(p.text().contains("name=\"token\""), "{site}");
    }
    for site in [Some("cross-site"), Some("same-site"), None] {
        let p = page(site);
        assert_eq!(p.status, 200);
        assert!(p.text().contains("certreg soft reader 1"), "{site:?}");
        assert!(!p.text().contains("<button"), "{site:?}");
        assert!(
            !p.text().contains("name=\"token\""),
            "{site:?}: the token leaks"
        );
    }
    let p = page(Some("none"));
    assert_eq!(p.header("x-frame-options"), Some("DENY"));
    assert_eq!(p.header("x-content-type-options"), Some("nosniff"));
    assert!(
        p.header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}
