//! The manual's chapter 3 walked end to end in real headless Chromium: this test starts, in
//! process on 127.0.0.1 port 0, the web service over a fresh SQLite file (the test PKI's anchors,
//! fresh CRLs, testkit's seeded agencies) and the real card agent on soft cards (every
//! valid card in a reader, the service's origin allowed), then runs `walk.mjs` (playwright-core
//! driving Debian's `/usr/bin/chromium`), which types into the pages and presses their buttons
//! like a person while the agent signs. Its JSON report is asserted here, and the database is
//! checked for what the walk should have left behind.
//!
//! The walk ends with a review across two days: the mismatch application of step 1 is
//! approved by a reviewer (`moica-reviewer`, seeded for the section of the agency's county) in a
//! browser of its own; the same day 首次註冊 is still refused; then the walk writes
//! `advance.json` (the effective date it was shown) into `CERTREG_E2E_SYNC`, this test moves the
//! service's injected clock to 09:00 Taipei of that date and answers with `advanced.json`, and
//! 首次註冊 with the mismatch card completes.
//!
//! Needs `node`/`npm` and `chromium` (Debian packages `nodejs`, `npm`, `chromium`); it fails,
//! never skips, without them. `npm ci` runs here when `node_modules` is missing or stale, so
//! `cargo test --workspace` stays the one test command. On failure the walk saves a screenshot
//! of the step in `target/browser-screenshots/e2e-<step>.png`.

use domain::clock::{Clock, TAIPEI};
use domain::model::{ContactDirectory, ReviewState};
use domain::store::Store as _;
use domain::types::InstitutionCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testpki::{TestPki, TestPkiOptions, Variant};
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
use web::WebConfig;

/// walk.mjs gives up by itself after 150 s; this is the backstop if node itself hangs.
const NODE_DEADLINE: Duration = Duration::from_secs(200);

// The seeded agencies the walk registers: `gca-agency`'s, and the one whose identifier on file
// is not what `gca-agency-mismatch` carries.
use testkit::seed::{MISMATCH, TAIPEI as MATCHING};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn e2e_dir() -> PathBuf {
    manifest_dir().join("tests/e2e")
}

fn require_tools() -> PathBuf {
    testkit::require_tools(&e2e_dir(), "the end-to-end test")
}

/// The service's clock: the real time (so it ticks: receipts are ordered by it) shifted by what
/// the test sets — 10:00 Taipei of the first day, then the review's effective date. The card
/// agent checks validity against the real clock; the test cards are valid from 30 days before
/// now, CRLs for 30 days after, so a shift of a few days forward is harmless.
#[derive(Default)]
struct ShiftedClock(Mutex<time::Duration>);

impl ShiftedClock {
    /// From now on, the clock reads `at` (and goes on ticking from there).
    fn jump_to(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap() = at - OffsetDateTime::now_utc();
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + *self.0.lock().unwrap()
    }
}

/// What walk.mjs needs to know about a card: its PIN, ID, serial and holder.
fn card_json(pki: &TestPki, name: &str) -> Value {
    let card = pki.card(name);
    let facts = pki::facts::ParsedCert::from_der(card.issued.cert_der.clone())
        .expect("test card certificate")
        .facts;
    json!({
        "name": name,
        "pin": card.pin,
        // Same length as the real one, so it is refused as wrong, not for its length.
        "wrongPin": card.pin.chars().rev().map(|c| if c == '9' { '0' } else { '9' }).collect::<String>(),
        "nationalId": card.national_id,
        "serial": facts.serial.to_string(),
        "holder": card.holder,
        "orgIdentifier": card.org_identifier,
    })
}

/// Runs the walk with a deadline, answering its clock requests on each tick.
fn run_node(
    script: &Path,
    envs: &[(&str, String)],
    tick: &mut dyn FnMut(),
) -> (Option<i32>, String, String) {
    testkit::run_node(script, &e2e_dir(), envs, NODE_DEADLINE, tick)
}

/// The two servers, running on the runtime's worker threads while node drives the browser.
struct Servers {
    origin: String,
    agent_url: String,
    db: store::Db,
    cards: Arc<agent::softcard::SoftCards>,
    clock: Arc<ShiftedClock>,
    /// The database file, removed with the servers.
    _db: testkit::db::FreshDb,
}

/// A test PKI written to `dir` and the web service and agent started over it on a runtime of
/// their own. The browser tests run on the real clock: the agent, like HiPKI's, checks a card's
/// validity against the machine's clock, so the hierarchy is made around the real "now", and
/// the service's clock starts there.
fn pki_and_servers(dir: &Path) -> (TestPki, tokio::runtime::Runtime, Servers) {
    let now = OffsetDateTime::now_utc();
    let pki = TestPki::generate(TestPkiOptions::new(now)).expect("test PKI");
    pki.write_dir(&dir.join("pki")).expect("write the test PKI");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let servers = runtime.block_on(start_servers(&pki, dir, now));
    (pki, runtime, servers)
}

async fn start_servers(pki: &TestPki, dir: &Path, now: OffsetDateTime) -> Servers {
    let web_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind the web service");
    let agent_listener = agent::server::bind(0).await.expect("bind the card agent");
    let origin = format!("http://{}", web_listener.local_addr().unwrap());
    let agent_port = agent_listener.local_addr().unwrap().port();
    let agent_url = format!("http://127.0.0.1:{agent_port}");

    // The test PKI's anchors and fresh CRLs.
    let validator = Arc::new(testkit::validator(pki, now));
    // The walk's first day starts at 10:00 Taipei (the next such time from now), so the
    // reviewer's 核准 and the same day's refused 首次註冊 never straddle midnight.
    let shifted = Arc::new(ShiftedClock::default());
    let taipei = now.to_offset(TAIPEI);
    let ten = PrimitiveDateTime::new(taipei.date(), Time::from_hms(10, 0, 0).unwrap())
        .assume_offset(TAIPEI);
    shifted.jump_to(if ten >= taipei {
        ten
    } else {
        ten + time::Duration::days(1)
    });
    // The web service over a fresh SQLite file, the seeded agencies on file.
    let fresh = testkit::db::FreshDb::sqlite();
    let service = server::build(server::Settings {
        web: WebConfig {
            public_origin: origin.clone(),
            agent_url: agent_url.clone(),
            ..WebConfig::default()
        },
        ..server::Settings::new(
            fresh.url.clone(),
            fresh.secrets.clone(),
            validator,
            shifted.clone(),
        )
    })
    .await
    .expect("the web service");
    let db = service.db.clone();
    db.upsert_agencies(&testkit::seed::agencies())
        .await
        .expect("seed agencies");
    // The reviewer of the section in charge of the mismatch agency's county (新北市: 承保第一科).
    let county = &testkit::seed::agency(MISMATCH).county;
    let section = ContactDirectory::default()
        .section_for(county)
        .expect("a section for the county")
        .section;
    let reviewer = pki.card("moica-reviewer");
    db.add_reviewer(
        &reviewer.holder,
        section,
        &domain::types::cert_serial("serial", &reviewer.issued.serial_hex()).unwrap(),
    )
    .await
    .expect("seed the reviewer");
    let app = service
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        axum::serve(web_listener, app).await.expect("web service");
    });

    // The real card agent on soft cards, every valid card in a reader.
    let cards =
        Arc::new(agent::softcard::SoftCards::open(dir.join("pki/cards")).expect("soft cards"));
    for c in pki.cards.iter().filter(|c| c.variant == Variant::Valid) {
        cards.insert(&c.name).expect("insert a soft card");
    }
    let config = agent::server::AgentConfig {
        port: agent_port,
        allowed_origins: vec![origin.clone()],
        ..Default::default()
    };
    let backend = cards.clone();
    let soft = cards.clone();
    tokio::spawn(async move {
        agent::server::serve_on(
            agent_listener,
            config,
            backend,
            Some(soft),
            std::future::pending(),
        )
        .await
        .expect("card agent");
    });
    Servers {
        origin,
        agent_url,
        db,
        cards,
        clock: shifted,
        _db: fresh,
    }
}

/// The walk's request to move the clock (`advance.json`: `{"effective": "YYYY/MM/DD"}`), once:
/// the clock jumps to 09:00 Taipei of that date and `advanced.json` tells the walk so.
fn answer_advance(sync: &Path, clock: &ShiftedClock, effective: &mut Option<Date>) {
    if effective.is_some() {
        return;
    }
    let Ok(raw) = std::fs::read_to_string(sync.join("advance.json")) else {
        return;
    };
    let Ok(req) = serde_json::from_str::<Value>(&raw) else {
        return; // still being written
    };
    let shown = req["effective"].as_str().unwrap_or_default();
    let format = time::macros::format_description!("[year]/[month]/[day]");
    let date = Date::parse(shown, &format)
        .unwrap_or_else(|e| panic!("the walk's effective date {shown:?}: {e}"));
    assert!(
        date > clock.today(),
        "the effective date {date} is not after today {}",
        clock.today()
    );
    let at = PrimitiveDateTime::new(date, Time::from_hms(9, 0, 0).unwrap()).assume_offset(TAIPEI);
    clock.jump_to(at);
    eprintln!("e2e: the clock jumped to {at} (the effective date the reviewer was shown)");
    let tmp = sync.join("advanced.json.tmp");
    std::fs::write(&tmp, json!({"now": at.to_string()}).to_string()).unwrap();
    std::fs::rename(&tmp, sync.join("advanced.json")).unwrap();
    *effective = Some(date);
}

#[test]
fn the_manual_walked_in_headless_chromium() {
    let started = Instant::now();
    let chromium = require_tools();

    let tmp = tempfile::tempdir().unwrap();
    let (pki, runtime, servers) = pki_and_servers(tmp.path());

    let names = [
        "gca-agency",
        "gca-agency-mismatch",
        "gca-agency-renewed",
        "moica-admin",
        "moica-admin-renewed",
        "moica-admin2",
        "moica-operator-1",
        "moica-reviewer",
    ];
    let cards: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), card_json(&pki, n)))
        .collect();
    let agencies: Vec<Value> = testkit::seed::agencies()
        .iter()
        .map(|a| json!({"code": a.code.as_str(), "name": a.name}))
        .collect();
    let shots = manifest_dir().join("../../target/browser-screenshots");
    // Only this run's failures of the walk in there.
    if let Ok(entries) = std::fs::read_dir(&shots) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("e2e-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let walk = json!({
        "cards": cards,
        "matching": MATCHING,
        "mismatch": MISMATCH,
        "agencies": agencies,
    });
    let sync = tmp.path().join("sync");
    std::fs::create_dir_all(&sync).unwrap();
    let mut effective = None;
    let (code, stdout, stderr) = run_node(
        &e2e_dir().join("walk.mjs"),
        &[
            ("CERTREG_WEB_URL", servers.origin.clone()),
            ("CERTREG_AGENT_URL", servers.agent_url.clone()),
            ("CERTREG_E2E", walk.to_string()),
            ("CERTREG_SCREENSHOT_DIR", shots.display().to_string()),
            ("CERTREG_CHROMIUM", chromium.display().to_string()),
            ("CERTREG_E2E_SYNC", sync.display().to_string()),
        ],
        &mut || answer_advance(&sync, &servers.clock, &mut effective),
    );
    eprintln!("--- walk.mjs (stderr) ---\n{stderr}--- end of walk.mjs ---");
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("walk.mjs printed no JSON report (exit {code:?}):\n{stdout}\n{stderr}")
        });
    let steps = report["steps"].as_array().expect("steps");
    let failed: Vec<String> = steps
        .iter()
        .filter(|s| s["ok"] != true)
        .map(|s| format!("{}: {}", s["name"], s["detail"]))
        .collect();
    assert!(
        failed.is_empty() && code == Some(0),
        "the walk failed (exit {code:?}; screenshots in {}):\n{}",
        shots.display(),
        failed.join("\n")
    );
    // Every step of walk.mjs ran (a step that silently disappeared would pass otherwise).
    assert_eq!(report["expected"], 26, "walk.mjs plans 26 steps");
    assert_eq!(steps.len(), 26, "steps: {steps:#?}");
    let effective = effective.expect("the walk asked for the clock to move");

    // What the browser did is what the database holds.
    runtime.block_on(async {
        let db = &servers.db;
        let code = InstitutionCode::parse(MATCHING).unwrap();
        let reg = db
            .registration(&code)
            .await
            .unwrap()
            .expect("A0001 registered");
        assert!(
            reg.org.cert.serial.as_str().eq_ignore_ascii_case(
                cards["gca-agency"]["serial"].as_str().unwrap()
            ),
            "after 更換機關憑證和更換授權管理者自然人憑證 the organization card is gca-agency again: {:?}",
            reg.org.cert.serial
        );
        assert_eq!(
            reg.admin_id.as_str(),
            cards["moica-admin2"]["nationalId"].as_str().unwrap(),
            "the administrator is moica-admin2's holder"
        );
        let operators = db.operators(&code).await.unwrap();
        assert_eq!(operators.len(), 1, "{operators:?}");
        // The mismatch application: approved by moica-reviewer, effective the date the walk
        // was shown, and the registration made with the mismatch card from that day.
        let mismatch = InstitutionCode::parse(MISMATCH).unwrap();
        let reviews = db.reviews(&mismatch).await.unwrap();
        assert_eq!(reviews.len(), 1, "the mismatch review: {reviews:?}");
        match &reviews[0].state {
            ReviewState::Approved {
                effective: e, note, ..
            } => {
                assert_eq!(*e, effective, "{reviews:?}");
                assert_eq!(note, "已電話確認識別碼", "{reviews:?}");
            }
            other => panic!("the review is not approved: {other:?}"),
        }
        let reg = db
            .registration(&mismatch)
            .await
            .unwrap()
            .expect("A0002 registered on the effective date");
        assert!(
            reg.org.cert.serial.as_str().eq_ignore_ascii_case(
                cards["gca-agency-mismatch"]["serial"].as_str().unwrap()
            ),
            "A0002 is registered with gca-agency-mismatch: {:?}",
            reg.org.cert.serial
        );
    });
    // The wrong PIN of step 7 was counted, then cleared by the right one.
    let state = servers.cards.cards().unwrap();
    assert!(state.iter().all(|c| !c.locked), "{state:?}");
    drop(runtime);
    // axe checked every page the walk arrived at (each once plain, once with a message).
    let axe_pages = report["axePages"].as_u64().unwrap_or(0);
    assert!(
        axe_pages >= 30,
        "axe checked only {axe_pages} pages: {}",
        report["axeChecked"]
    );
    eprintln!("e2e: axe checked {}", report["axeChecked"]);
    eprintln!(
        "e2e: {} steps in {} ms (walk {} ms, {axe_pages} pages checked by axe)",
        steps.len(),
        started.elapsed().as_millis(),
        report["elapsedMs"]
    );
}

/// The card step in popup mode (the real HiPKI agent's only mode outside IE) with Chromium's
/// popup blocker on and a slow challenge: `popup.mjs` types the PIN, presses Enter and expects
/// the step done. Only `gca-agency` is in a reader: without a direct answer the page cannot list
/// the cards, so the agent signs with the first card that can.
#[test]
fn the_card_step_works_in_popup_mode_with_the_popup_blocker_on() {
    let chromium = require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _runtime, servers) = pki_and_servers(tmp.path());
    for c in servers.cards.cards().unwrap() {
        if c.reader.is_some() && c.name != "gca-agency" {
            servers.cards.eject(&c.name).unwrap();
        }
    }
    let case = json!({
        "code": MATCHING,
        "pin": pki.card("gca-agency").pin,
        "next": "首次註冊－自然人憑證確認",
    });
    let (code, stdout, stderr) = run_node(
        &e2e_dir().join("popup.mjs"),
        &[
            ("CERTREG_WEB_URL", servers.origin.clone()),
            ("CERTREG_AGENT_URL", servers.agent_url.clone()),
            ("CERTREG_E2E_POPUP", case.to_string()),
            ("CERTREG_CHROMIUM", chromium.display().to_string()),
        ],
        &mut || {},
    );
    eprintln!("--- popup.mjs (stderr) ---\n{stderr}--- end of popup.mjs ---");
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("popup.mjs printed no JSON report (exit {code:?}):\n{stdout}"));
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2, "{checks:#?}");
    assert!(
        code == Some(0) && checks.iter().all(|c| c["ok"] == true),
        "popup-mode card step failed (exit {code:?}): {checks:#?}"
    );
}
