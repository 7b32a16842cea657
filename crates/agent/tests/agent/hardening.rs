//! The agent against programs on the same machine: a program holding the IPv6 loopback port, a
//! program sending wrong PINs in a burst, PINs and TBS whose encoding is ambiguous, and a site
//! asking the preflight for the popup's relay header.

use crate::helpers::*;
use agent::protocol::ret;
use agent::server::AgentConfig;
use agent::softcard::SoftCards;
use serde_json::{Value, json};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use testpki::KeyAlg;

fn ret_of(v: &Value) -> u64 {
    v["ret_code"].as_u64().expect("ret_code")
}

fn tries_left(agent: &TestAgent, slot: usize) -> Value {
    agent.pkcs11info()["slots"][slot]["token"]["triesLeft"].clone()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_agent_answers_on_both_loopbacks_and_does_not_start_beside_a_program_on_ipv6() {
    let squatter = match TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
        Ok(l) => l,
        Err(e) => panic!("this test needs the IPv6 loopback ([::1]): {e}"),
    };
    let port = squatter.local_addr().unwrap().port();

    // Another program listens on [::1]:port: the agent refuses to start, says why, and leaves
    // 127.0.0.1:port free again.
    let err = runtime()
        .block_on(agent::server::bind(port))
        .expect_err("the agent started beside a program on [::1]");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("[::1]:{port}")), "{text}");
    assert!(text.contains("another program"), "{text}");
    TcpListener::bind(("127.0.0.1", port)).expect("127.0.0.1 released after the refusal");
    // `serve`, which the CLI's path shares, fails the same way.
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(SoftCards::open(&dir).unwrap());
    let served = runtime().block_on(agent::server::serve(
        AgentConfig {
            port,
            ..default_config()
        },
        cards,
        async {},
    ));
    assert_eq!(
        served.unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse,
        "serve"
    );
    drop(squatter);

    // Normally the agent answers on both, under each of its host names.
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let port = agent.addr.port();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    for (addr, host) in [
        (agent.addr, format!("127.0.0.1:{port}")),
        (v6, format!("[::1]:{port}")),
        (v6, format!("localhost:{port}")),
        (agent.addr, format!("localhost:{port}")),
    ] {
        let r = http(
            addr,
            "POST",
            "/pkcs11info",
            &[("Host", &host), ("Origin", SITE)],
            b"",
        );
        assert_eq!(r.status, 200, "{addr} as {host}");
        assert_eq!(ret_of(&r.json()), 0, "{addr} as {host}");
        assert_eq!(r.header("access-control-allow-origin"), Some(SITE));
    }
    // The popup served from [::1] is one of the agent's own pages.
    let own = format!("http://[::1]:{port}");
    let r = http(
        v6,
        "POST",
        "/sign",
        &[
            ("Origin", &own),
            ("Content-Type", "application/json"),
            ("X-Certreg-Relay-Origin", SITE),
        ],
        package(&challenge().tbs(), &pin_of(pki(), "gca-agency"), "PKCS7")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(ret_of(&r.json()), 0, "{}", r.text());
}

/// `count` wrong PINs for the card in reader 1, sent at once.
fn burst(agent: &TestAgent, count: usize) -> Vec<Value> {
    let tbs = challenge().tbs();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                let tbs = &tbs;
                s.spawn(move || agent.sign(&package(tbs, &format!("2222222{i}"), "PKCS7")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn after_a_wrong_pin_the_card_takes_no_pin_for_a_while() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(SoftCards::open(&dir).unwrap());
    cards.insert("gca-agency").unwrap();
    cards.insert("moica-admin").unwrap();
    // Far longer than the test takes: every PIN after the first wrong one comes "too soon".
    let agent = TestAgent::start(
        AgentConfig {
            wrong_pin_delay: Duration::from_secs(600),
            ..default_config()
        },
        cards.clone(),
        Some(cards),
    );
    // A burst of wrong PINs: one is tried; the others, queued behind it on the card's lock,
    // are refused without reaching the card.
    let answers = burst(&agent, 6);
    let count = |code: u32| answers.iter().filter(|a| ret_of(a) == code as u64).count();
    assert_eq!(count(ret::LOGIN_FAILED), 1, "{answers:#?}");
    assert_eq!(count(ret::PIN_WAIT), 5, "{answers:#?}");
    assert_eq!(tries_left(&agent, 0), 2);

    // Neither another wrong PIN nor the right one reaches the card now.
    let tbs = challenge().tbs();
    for pin in ["11111111".to_string(), pin_of(pki(), "gca-agency")] {
        let r = agent.sign(&package(&tbs, &pin, "PKCS7"));
        assert_eq!(ret_of(&r), ret::PIN_WAIT as u64, "{r}");
        assert_eq!(
            r["message"],
            "PIN碼輸入錯誤後須稍候數秒才能再試，本次未使用IC卡"
        );
        let m2 = r["message2"].as_str().unwrap();
        assert!(
            m2.starts_with("請於 ") && m2.ends_with(" 秒後再輸入PIN碼"),
            "{m2}"
        );
        assert!(r["signature"].as_str().unwrap().is_empty());
    }
    assert_eq!(tries_left(&agent, 0), 2);

    // Per card: the card in the other reader signs.
    let mut other = package(&challenge().tbs(), &pin_of(pki(), "moica-admin"), "PKCS1");
    other["slotDescription"] = json!("certreg soft reader 2");
    assert_eq!(ret_of(&agent.sign(&other)), 0, "the other card");
}

#[test]
fn an_honest_retry_after_the_wait_is_tried() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(SoftCards::open(&dir).unwrap());
    cards.insert("gca-agency").unwrap();
    let delay = Duration::from_millis(300);
    let agent = TestAgent::start(
        AgentConfig {
            wrong_pin_delay: delay,
            ..default_config()
        },
        cards.clone(),
        Some(cards),
    );
    let tbs = challenge().tbs();
    let wrong = agent.sign(&package(&tbs, "00000000", "PKCS7"));
    assert_eq!(ret_of(&wrong), ret::LOGIN_FAILED as u64, "{wrong}");
    // The wait began before the answer left the agent: after `delay` from here it is over.
    std::thread::sleep(delay + Duration::from_millis(50));
    let again = agent.sign(&package(&tbs, "00000001", "PKCS7"));
    assert_eq!(ret_of(&again), ret::LOGIN_FAILED as u64, "{again}");
    assert_eq!(again["triesLeft"], 1);
    std::thread::sleep(delay + Duration::from_millis(50));
    let ok = agent.sign(&package(&tbs, &pin_of(pki(), "gca-agency"), "PKCS7"));
    assert_eq!(ret_of(&ok), 0, "{ok}");
    assert_eq!(tries_left(&agent, 0), 3, "the right PIN resets the counter");
}

#[test]
fn a_pin_mangled_by_its_encoding_is_refused_before_the_card_in_both_transports() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let pin = pin_of(pki(), "gca-agency");
    let tbs = challenge().tbs();
    // Left-over escapes, a form's '+' read as a space, non-ASCII digits, a stray control.
    let mangled = [
        format!("{pin}%25"),
        pin.replacen(&pin[..2], &format!("%25{}", &pin[..2]), 1),
        format!("{} {}", &pin[..3], &pin[3..]),
        // The first digit as its full-width form (U+FF10…).
        pin.chars()
            .enumerate()
            .map(|(i, c)| match (i, c.to_digit(10)) {
                (0, Some(d)) => char::from_u32(0xFF10 + d).unwrap(),
                _ => c,
            })
            .collect(),
        format!("{pin}\n"),
        format!("{pin}%0A"),
        format!("%C2%A0{pin}"),
    ];
    let json_post = |p: &Value| {
        agent
            .request(
                "POST",
                "/sign",
                &[("Origin", SITE), ("Content-Type", "application/json")],
                p.to_string().as_bytes(),
            )
            .json()
    };
    for m in &mangled {
        let pkg = package(&tbs, m, "PKCS7");
        let by_form = agent.sign(&pkg);
        assert_eq!(
            ret_of(&by_form),
            ret::PARAMETER as u64,
            "form {m:?}: {by_form}"
        );
        let by_json = json_post(&pkg);
        assert_eq!(
            ret_of(&by_json),
            ret::PARAMETER as u64,
            "json {m:?}: {by_json}"
        );
    }
    // A form body whose package was not percent-encoded: its '+' arrives as a space.
    let raw = format!(
        r#"tbsPackage={{"tbs":"{}","pin":"{}+"}}"#,
        tbs.replace('\n', "%0A"),
        pin
    );
    let r = agent
        .request(
            "POST",
            "/sign",
            &[
                ("Origin", SITE),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            raw.as_bytes(),
        )
        .json();
    assert_eq!(ret_of(&r), ret::PARAMETER as u64, "{r}");
    assert_eq!(tries_left(&agent, 0), 3, "no PIN was tried");
    // The right PIN, percent-encoded or not, in either transport, signs.
    let encoded: String = pin.bytes().map(|b| format!("%{b:02X}")).collect();
    for p in [&pin, &encoded] {
        assert_eq!(ret_of(&agent.sign(&package(&tbs, p, "PKCS7"))), 0);
        assert_eq!(ret_of(&json_post(&package(&tbs, p, "PKCS7"))), 0);
    }
}

#[test]
fn base64_tbs_with_unicode_whitespace_is_refused_never_signed() {
    use base64::Engine as _;
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let pin = pin_of(pki(), "gca-agency");
    let b64 = base64::engine::general_purpose::STANDARD.encode(challenge().tbs());
    let (head, tail) = b64.split_at(8);
    for odd in ["\u{85}", "\u{a0}", "\u{2028}", "\u{3000}", "\u{b}", "\u{c}"] {
        let mut pkg = package(&format!("{head}{odd}{tail}"), &pin, "PKCS7");
        pkg["tbsEncoding"] = json!("base64");
        let r = agent.sign(&pkg);
        assert_eq!(ret_of(&r), ret::BASE64_DECODE as u64, "{odd:?}: {r}");
        assert!(r["signature"].as_str().unwrap().is_empty());
    }
    // ASCII whitespace (line breaks of a wrapped base64) is fine.
    let c = challenge();
    let b64 = base64::engine::general_purpose::STANDARD.encode(c.tbs());
    let wrapped = format!("{}\r\n {}\t", &b64[..20], &b64[20..]);
    let mut pkg = package(&wrapped, &pin, "PKCS7");
    pkg["tbsEncoding"] = json!("base64");
    assert_eq!(ret_of(&agent.sign(&pkg)), 0);
    assert_eq!(tries_left(&agent, 0), 3);
}

#[test]
fn the_preflight_never_allows_the_relay_header() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &[]);
    let ask = |headers: &str| {
        agent.request(
            "OPTIONS",
            "/sign",
            &[
                ("Origin", SITE),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", headers),
            ],
            b"",
        )
    };
    for (asked, allowed) in [
        ("content-type,x-certreg-relay-origin", "content-type"),
        (
            "X-Certreg-Relay-Origin, content-type, x-hipki",
            "content-type, x-hipki",
        ),
        ("x-certreg-relay-origin", "Content-Type"),
    ] {
        let r = ask(asked);
        assert_eq!(r.status, 204, "{asked}");
        let got = r.header("access-control-allow-headers").unwrap();
        assert_eq!(got, allowed, "{asked}");
        assert!(
            !got.to_ascii_lowercase().contains("relay"),
            "{asked}: {got}"
        );
    }
}
