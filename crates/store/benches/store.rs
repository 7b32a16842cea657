//! Store throughput over a generated data set (`cargo bench -p store --bench store`; with
//! `TEST_DATABASE_URL` set, PostgreSQL too, in a fresh database dropped afterwards): operator
//! list, receipt query, a proof-consuming card step and a whole first registration, through the
//! services as `certreg serve` builds them (`server::build`), each with one client and with 8
//! concurrent tasks, with the p50/p99 latency of the two queries and the process's resident
//! memory while it serves (the service is in-process; PostgreSQL's own memory is not counted).
//! No criterion: plain timed loops.
//!
//! `CERTREG_BENCH_SCALE=quick` loads a tenth of the data set (10k agencies, 200k operators).

use domain::clock::FixedClock;
use domain::flow::FlowKind;
use domain::model::*;
use domain::service::{CardStepInput, ContactInput, StepOutcome};
use domain::store::Store as _;
use domain::types::*;
use pki::validate::Validator;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};
use store::{Backend, Db};
use testkit::db::FreshDb;
use testpki::{TestPki, TestPkiOptions};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use web::AppState;

/// The test PKI's reference time, as in the rule tests (certificates valid, CRLs current).
const NOW: OffsetDateTime = datetime!(2025-10-09 02:00 UTC);
const SESSION: &str = "bench-session";
const OPERATORS_PER_AGENCY: usize = 20;
/// Agencies on file without a registration, consumed by the registration-commit case.
const SPARE_AGENCIES: usize = 20_000;
/// Rows generated and loaded at a time, so the data set never sits in memory whole.
const LOAD_CHUNK: usize = 100_000;
const WARM_UP: StdDuration = StdDuration::from_millis(300);
const MEASURE: StdDuration = StdDuration::from_secs(2);
/// Flows per round of the card cases (spread over the clients).
const ROUND: usize = 64;
const CLIENTS: [usize; 2] = [1, 8];

struct Scale {
    name: &'static str,
    agencies: usize,
}

fn scale() -> Scale {
    match std::env::var("CERTREG_BENCH_SCALE").as_deref() {
        Err(_) | Ok("") | Ok("full") => Scale {
            name: "full",
            agencies: 100_000,
        },
        Ok("quick") => Scale {
            name: "quick",
            agencies: 10_000,
        },
        Ok(other) => panic!("CERTREG_BENCH_SCALE must be `full` or `quick`, not {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The data set

fn registered_code(i: usize) -> InstitutionCode {
    InstitutionCode::parse(&format!("R{i:07}")).expect("code")
}

fn spare_code(i: usize) -> InstitutionCode {
    InstitutionCode::parse(&format!("S{i:07}")).expect("code")
}

/// A checksum-valid national ID, distinct for every `n` below 10^7 per letter.
fn national_id(letter: char, n: usize) -> NationalId {
    let prefix = format!("{letter}{}{:07}", 1 + n / 10_000_000 % 2, n % 10_000_000);
    let check = pki::ids::national_id_check_digit(&prefix).expect("check digit");
    NationalId::parse(&format!("{prefix}{check}")).expect("national ID")
}

fn agency(code: InstitutionCode, i: usize) -> Agency {
    Agency {
        code,
        name: format!("測試機關{i}"),
        county: if i.is_multiple_of(2) {
            "臺北市"
        } else {
            "臺中市"
        }
        .into(),
        // The test PKI's agency card carries this identifier: spare agencies register with it.
        org_identifier: Some(OrgIdentifier::parse(testpki::GCA_AGENCY_OID).expect("oid")),
    }
}

fn cert(issuer: &str, serial: &str) -> CertRef {
    CertRef {
        issuer: issuer.into(),
        serial: CertSerial::parse(serial).expect("serial"),
        subject: format!("CN=subject {serial}"),
        sha256: format!("{:0>64}", serial.to_lowercase()),
        not_before: datetime!(2025-01-01 00:00 UTC),
        not_after: datetime!(2030-01-01 00:00 UTC),
    }
}

fn registration(i: usize) -> Registration {
    let admin_id = national_id('A', i);
    Registration {
        code: registered_code(i),
        org: OrgCard {
            cert: cert("CN=GCA", &format!("{:08X}", i + 1)),
            org_identifier: OrgIdentifier::parse(testpki::GCA_AGENCY_OID).expect("oid"),
            org_name: format!("測試機關{i}"),
        },
        admin_card: CitizenCard {
            cert: cert("CN=MOICA", &format!("{:08X}", i + 1)),
            holder_name: "王大明".into(),
            id_last4: admin_id.last4().to_string(),
        },
        admin_id,
        admin: AdminContact {
            name: PersonName::parse("name", "王大明").expect("name"),
            email: Email::parse("admin@example.gov.tw").expect("email"),
            phone: Phone::parse("phone", "連絡電話", "(02)2701-3411").expect("phone"),
            phone_ext: None,
            mobile: None,
            unit: Some("人事室".into()),
            title: None,
        },
        registered_at: NOW - Duration::days(30),
        updated_at: NOW - Duration::days(30),
        version: 1,
    }
}

fn operator(agency: usize, j: usize) -> (InstitutionCode, OperatorInput) {
    let n = agency * OPERATORS_PER_AGENCY + j;
    (
        registered_code(agency),
        OperatorInput {
            serial: CertSerial::parse(&format!("{agency:06X}{j:02X}")).expect("serial"),
            name: PersonName::parse("name", "李小華").expect("name"),
            national_id: national_id('B', n),
            functions: vec!["enroll".into(), "query".into()],
            cert: None,
            validity: Default::default(),
        },
    )
}

/// Loads the data set in chunks; returns the timings of each part.
async fn load(db: &Db, scale: &Scale) -> Vec<(&'static str, usize, StdDuration)> {
    let n = scale.agencies;
    let mut parts = Vec::new();

    let start = Instant::now();
    for from in (0..n).step_by(LOAD_CHUNK) {
        let chunk: Vec<Agency> = (from..(from + LOAD_CHUNK).min(n))
            .map(|i| agency(registered_code(i), i))
            .collect();
        db.bulk_load_agencies(&chunk).await.expect("agencies");
    }
    let spare: Vec<Agency> = (0..SPARE_AGENCIES)
        .map(|i| agency(spare_code(i), i))
        .collect();
    db.bulk_load_agencies(&spare).await.expect("spare agencies");
    parts.push(("agencies", n + SPARE_AGENCIES, start.elapsed()));

    let start = Instant::now();
    for from in (0..n).step_by(LOAD_CHUNK) {
        let chunk: Vec<Registration> = (from..(from + LOAD_CHUNK).min(n))
            .map(registration)
            .collect();
        db.bulk_load_registrations(&chunk)
            .await
            .expect("registrations");
    }
    parts.push(("registrations", n, start.elapsed()));

    let start = Instant::now();
    for from in (0..n).step_by(LOAD_CHUNK) {
        let chunk: Vec<Receipt> = (from..(from + LOAD_CHUNK).min(n))
            .map(|i| Receipt {
                code: registered_code(i),
                kind: ReceiptKind::FirstRegistration,
                at: NOW - Duration::days(30),
                review_id: None,
                terms_version: None,
            })
            .collect();
        db.bulk_load_receipts(&chunk).await.expect("receipts");
    }
    parts.push(("receipts", n, start.elapsed()));

    let start = Instant::now();
    let agencies_per_chunk = LOAD_CHUNK / OPERATORS_PER_AGENCY;
    for from in (0..n).step_by(agencies_per_chunk) {
        let chunk: Vec<_> = (from..(from + agencies_per_chunk).min(n))
            .flat_map(|a| (0..OPERATORS_PER_AGENCY).map(move |j| operator(a, j)))
            .collect();
        db.bulk_load_operators(&chunk, NOW - Duration::days(1))
            .await
            .expect("operators");
    }
    parts.push(("operators", n * OPERATORS_PER_AGENCY, start.elapsed()));
    parts
}

// ---------------------------------------------------------------------------------------------
// The services and the cards

fn test_pki() -> TestPki {
    TestPki::generate(TestPkiOptions::new(NOW)).expect("test PKI")
}

/// As the rule tests build it: the test PKI's anchors and current CRLs.
fn validator(pki: &TestPki) -> Arc<Validator> {
    Arc::new(testkit::validator(pki, NOW))
}

/// The card's side of a step, made the way our agent makes it (attached CMS over the TBS). It
/// is the client's work, so it is never inside a timed phase.
struct Card {
    cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
    national_id: Option<String>,
}

impl Card {
    fn of(pki: &TestPki, name: &str) -> Self {
        let card = pki.card(name);
        Self {
            cert_der: card.issued.cert_der.clone(),
            key_pkcs8: card.issued.key.pkcs8_der.clone(),
            national_id: card.national_id.clone(),
        }
    }

    fn sign(&self, tbs: &str) -> Vec<u8> {
        pki::cms::build_signed_data(tbs.as_bytes(), &self.cert_der, &Default::default(), |m| {
            pki::sig::sign_pkcs8(&self.key_pkcs8, m)
        })
        .expect("CMS")
    }
}

fn input(flow_id: &str, challenge_id: String, signature: Vec<u8>) -> CardStepInput {
    CardStepInput {
        flow_id: flow_id.into(),
        session: SESSION.into(),
        challenge_id,
        signature,
        certificate: None,
        institution_code: None,
        national_id: None,
        client: Some("127.0.0.1".into()),
        login_session: None,
    }
}

fn contact() -> ContactInput {
    ContactInput {
        name: "王大明".into(),
        email: "admin@example.gov.tw".into(),
        phone: "(02)2345-6789".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

#[derive(Default)]
struct Measured {
    ops: usize,
    elapsed: StdDuration,
    /// Each operation's time, sorted (the timed loops only).
    latencies: Vec<StdDuration>,
}

impl Measured {
    /// The `q` quantile of the operations' times, in µs.
    fn quantile_micros(&self, q: f64) -> Option<f64> {
        let n = self.latencies.len();
        (n > 0).then(|| {
            let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            self.latencies[i].as_secs_f64() * 1e6
        })
    }
}

/// The process's resident set and its peak since the last [`reset_peak_rss`], in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts the peak (VmHWM) over from the current resident set (Linux: /proc/self/clear_refs).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("  could not reset the peak RSS ({e}); the peak includes the load");
    }
}

/// Spreads a pseudo-random pick over `n` (the same sequence on every backend).
fn pick(i: usize, n: usize) -> usize {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % n
}

/// `op(i)` from `clients` tasks at once for [`MEASURE`] after [`WARM_UP`].
async fn timed_loop<F, Fut>(clients: usize, op: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let mut result = Measured::default();
    for (length, keep) in [(WARM_UP, false), (MEASURE, true)] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let op = op.clone();
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    while start.elapsed() < length {
                        let t = Instant::now();
                        op(times.len() * clients + c).await;
                        times.push(t.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("client task"));
        }
        if keep {
            latencies.sort_unstable();
            result = Measured {
                ops: latencies.len(),
                elapsed: start.elapsed(),
                latencies,
            };
        }
    }
    result
}

/// Runs `f` over `items` from `clients` tasks at once (item i on task i % clients); returns
/// the results in item order and the wall time of the whole phase.
async fn phase<T, R, F, Fut>(clients: usize, items: Vec<T>, f: F) -> (Vec<R>, StdDuration)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let mut lanes: Vec<Vec<(usize, T)>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % clients].push((i, item));
    }
    let start = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(lane.len());
                for (i, item) in lane {
                    out.push((i, f(item).await));
                }
                out
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    results.sort_by_key(|(i, _)| *i);
    (results.into_iter().map(|(_, r)| r).collect(), elapsed)
}

/// R4.3 in rounds of [`ROUND`] flows: the flows are started untimed, then timed: every client
/// asks for its challenges; untimed: the card signs them; timed: every client submits its
/// proofs (verification, challenge consumed, flow advanced and audited in one commit).
async fn proof_step(svc: &AppState, card: &Arc<Card>, clients: usize) -> Measured {
    let mut m = Measured::default();
    let mut warm = true;
    while warm || m.elapsed < MEASURE {
        let mut flows = Vec::with_capacity(ROUND);
        for _ in 0..ROUND {
            let f = svc
                .svc()
                .start_flow(FlowKind::QueryCitizenSerial, SESSION)
                .await
                .expect("flow");
            flows.push(f.id);
        }
        let s = svc.clone();
        let (challenges, t1) = phase(clients, flows.clone(), move |id: String| {
            let s = s.clone();
            async move {
                let ch = s
                    .svc()
                    .issue_challenge(&id, SESSION)
                    .await
                    .expect("challenge");
                (id, ch)
            }
        })
        .await;
        let inputs: Vec<CardStepInput> = challenges
            .into_iter()
            .map(|(id, ch)| {
                let mut i = input(&id, ch.id, card.sign(&ch.tbs));
                i.national_id = card.national_id.clone();
                i
            })
            .collect();
        let s = svc.clone();
        let (_, t2) = phase(clients, inputs, move |i: CardStepInput| {
            let s = s.clone();
            async move {
                match s.svc().submit_card(i).await.expect("proof accepted") {
                    StepOutcome::CitizenSerial { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        if warm {
            warm = false;
        } else {
            m.ops += ROUND;
            m.elapsed += t1 + t2;
        }
    }
    m
}

/// Whole first registrations of spare agencies, in rounds: every server call is timed (start,
/// terms and the organization challenge; the organization proof and the administrator
/// challenge; the administrator proof and the confirmation); the cards sign between phases.
async fn registration_commit(
    svc: &AppState,
    org: &Arc<Card>,
    admin: &Arc<Card>,
    clients: usize,
    next_spare: &mut usize,
) -> Measured {
    let mut m = Measured::default();
    let mut warm = true;
    while warm || m.elapsed < MEASURE {
        if *next_spare + ROUND > SPARE_AGENCIES {
            eprintln!("  out of spare agencies after {} registrations", m.ops);
            break;
        }
        let codes: Vec<InstitutionCode> =
            (*next_spare..*next_spare + ROUND).map(spare_code).collect();
        *next_spare += ROUND;

        let s = svc.clone();
        let (started, t1) = phase(clients, codes, move |code: InstitutionCode| {
            let s = s.clone();
            async move {
                let f = s
                    .svc()
                    .start_flow(FlowKind::FirstRegistration, SESSION)
                    .await
                    .expect("flow");
                s.svc().agree_terms(&f.id, SESSION).await.expect("terms");
                let ch = s
                    .svc()
                    .issue_challenge(&f.id, SESSION)
                    .await
                    .expect("challenge");
                (code, f.id, ch)
            }
        })
        .await;
        let inputs: Vec<_> = started
            .into_iter()
            .map(|(code, id, ch)| {
                let mut i = input(&id, ch.id, org.sign(&ch.tbs));
                i.institution_code = Some(code.as_str().to_string());
                i
            })
            .collect();
        let s = svc.clone();
        let (orgs, t2) = phase(clients, inputs, move |i: CardStepInput| {
            let s = s.clone();
            async move {
                let id = i.flow_id.clone();
                match s.svc().submit_card(i).await.expect("organization card") {
                    StepOutcome::Advanced(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
                let ch = s
                    .svc()
                    .issue_challenge(&id, SESSION)
                    .await
                    .expect("challenge");
                (id, ch)
            }
        })
        .await;
        let inputs: Vec<_> = orgs
            .into_iter()
            .map(|(id, ch)| {
                let mut i = input(&id, ch.id, admin.sign(&ch.tbs));
                i.national_id = admin.national_id.clone();
                i
            })
            .collect();
        let s = svc.clone();
        let (_, t3) = phase(clients, inputs, move |i: CardStepInput| {
            let s = s.clone();
            async move {
                let id = i.flow_id.clone();
                match s.svc().submit_card(i).await.expect("administrator card") {
                    StepOutcome::Advanced(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
                s.svc()
                    .confirm(&id, SESSION, &contact(), Some("127.0.0.1"))
                    .await
                    .expect("confirmed");
            }
        })
        .await;
        if warm {
            warm = false;
        } else {
            m.ops += ROUND;
            m.elapsed += t1 + t2 + t3;
        }
    }
    m
}

struct Row {
    case: &'static str,
    clients: usize,
    m: Measured,
}

async fn run_backend(
    label: &str,
    fresh: &FreshDb,
    scale: &Scale,
    pki: &TestPki,
    out: &mut Vec<String>,
) -> usize {
    eprintln!("{label}: loading the data set...");
    // The service as `certreg serve` builds it, on the clock the test PKI is current at.
    let service = server::build(server::Settings::new(
        fresh.url.clone(),
        fresh.secrets.clone(),
        validator(pki),
        Arc::new(FixedClock::new(NOW)),
    ))
    .await
    .expect("the service");
    let db = service.db.clone();
    let start = Instant::now();
    let parts = load(&db, scale).await;
    let generation = start.elapsed();
    let (loaded_rss, _) = rss_mib();
    reset_peak_rss();

    let svc = service.state.clone();
    let citizen = Arc::new(Card::of(pki, "moica-admin"));
    let org = Arc::new(Card::of(pki, "gca-agency"));
    let agencies = Arc::new((0..scale.agencies).map(registered_code).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut next_spare = 0usize;
    for clients in CLIENTS {
        eprintln!("{label}: {clients} client(s)...");
        let (s, a) = (svc.clone(), agencies.clone());
        let m = timed_loop(clients, move |i| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                let code = &a[pick(i, a.len())];
                let list = s.svc().store().operators(code).await.expect("operators");
                assert_eq!(list.len(), OPERATORS_PER_AGENCY);
            }
        })
        .await;
        rows.push(Row {
            case: "operator list (Store::operators, 20 rows)",
            clients,
            m,
        });
        let (s, a) = (svc.clone(), agencies.clone());
        let m = timed_loop(clients, move |i| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                let code = a[pick(i, a.len())].as_str().to_string();
                let (_, receipts) = s.svc().receipts(&code).await.expect("receipts");
                assert_eq!(receipts.len(), 1);
            }
        })
        .await;
        rows.push(Row {
            case: "receipt query (Services::receipts)",
            clients,
            m,
        });
        rows.push(Row {
            case: "proof step (R4.3 challenge + CMS submit)",
            clients,
            m: proof_step(&svc, &citizen, clients).await,
        });
        rows.push(Row {
            case: "registration commit (R1 flow, 2 proofs)",
            clients,
            m: registration_commit(&svc, &org, &citizen, clients, &mut next_spare).await,
        });
    }
    let (serving_rss, serving_peak) = rss_mib();
    db.close().await;

    out.push(format!(
        "{label}: {} agencies registered (1 receipt each) + {SPARE_AGENCIES} spare, {} operators; \
         generated in {:.1} s ({})",
        scale.agencies,
        scale.agencies * OPERATORS_PER_AGENCY,
        generation.as_secs_f64(),
        parts
            .iter()
            .map(|(what, n, t)| format!(
                "{what} {n} in {:.1} s = {:.0}/s",
                t.as_secs_f64(),
                *n as f64 / t.as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push(format!(
        "{label}: process RSS {loaded_rss:.0} MiB after the load; while serving the cases \
         {serving_rss:.0} MiB, peak {serving_peak:.0} MiB"
    ));
    out.push(format!(
        "{:<44} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "case", "clients", "ops/s", "µs/op", "p50 µs", "p99 µs", "ops"
    ));
    out.push("-".repeat(103));
    let micros = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
    for r in &rows {
        let per_sec = r.m.ops as f64 / r.m.elapsed.as_secs_f64();
        // As a client sees it: with 8 clients each operation takes 8 × the throughput's inverse.
        let per_op = r.clients as f64 * 1e6 / per_sec;
        out.push(format!(
            "{:<44} {:>7} {:>10.1} {:>10.1} {:>9} {:>9} {:>8}",
            r.case,
            r.clients,
            per_sec,
            per_op,
            micros(r.m.quantile_micros(0.50)),
            micros(r.m.quantile_micros(0.99)),
            r.m.ops
        ));
    }
    out.push(String::new());
    rows.len()
}

fn main() {
    let scale = scale();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!("generating the test PKI...");
    let pki = test_pki();
    let mut out = vec![format!(
        "scale: {} (CERTREG_BENCH_SCALE); {:?} per case after {:?} warm-up; card cases in rounds of {ROUND} flows, the cards' signing untimed",
        scale.name, MEASURE, WARM_UP
    )];
    out.push(String::new());
    let mut cases = 0;
    rt.block_on(async {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            if !testkit::db::backends().contains(&backend) {
                out.push("PostgreSQL: skipped (TEST_DATABASE_URL not set)".into());
                continue;
            }
            let label = match backend {
                Backend::Sqlite => "SQLite (temp file)",
                Backend::Postgres => "PostgreSQL",
            };
            let fresh = FreshDb::on(backend, "certreg_bench").await;
            cases += run_backend(label, &fresh, &scale, &pki, &mut out).await;
        }
    });
    println!();
    for line in out {
        println!("{line}");
    }
    println!("bench: {cases} cases measured");
}
