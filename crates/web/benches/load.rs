//! Load generator for the web service (`cargo bench -p web --bench load`; with
//! `TEST_DATABASE_URL` set, PostgreSQL too, in a fresh database dropped afterwards): the service
//! runs in-process on 127.0.0.1:0 and 1, 16 and 64 clients drive card flows end to end over real
//! HTTP/1.1 on loopback, each with its own bearer session and keep-alive connection. Next to the
//! figures, the single-thread `pki::proof::verify_proof` rate of the same machine and run.
//! No criterion: plain timed loops.

use base64::Engine as _;
use domain::clock::FixedClock;
use domain::model::*;
use domain::store::Store as _;
use domain::types::*;
use pki::anchors::Role;
use pki::challenge::Challenge;
use pki::proof::verify_proof;
use pki::validate::Validator;
use pki::{ErrorCode, PkiError};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};
use store::Backend;
use testkit::db::FreshDb;
use testkit::seed::TAIPEI;
use testpki::{KeyAlg, TestPki, TestPkiOptions};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use web::WebConfig;
use web::security::Limits;

/// The test PKI's reference time (as in the web tests): certificates valid, CRLs current.
const NOW: OffsetDateTime = datetime!(2026-06-01 02:00 UTC);
const CLIENTS: [usize; 3] = [1, 16, 64];
const WARM_UP: StdDuration = StdDuration::from_secs(1);
const MEASURE: StdDuration = StdDuration::from_secs(5);
/// Distinct proofs cycled by the verification-rate case.
const PROOFS: usize = 64;
const VERIFY_WARM_UP: StdDuration = StdDuration::from_millis(500);
const VERIFY_MEASURE: StdDuration = StdDuration::from_secs(2);
/// Thread names, so the CPU time of the service and of the clients can be told apart.
const SERVER_THREADS: &str = "bench-server";
const CLIENT_THREADS: &str = "bench-client";

/// The test PKI with every key (CAs and cards) of `alg`.
fn test_pki(alg: KeyAlg) -> TestPki {
    TestPki::generate(TestPkiOptions {
        key_alg: alg,
        ..TestPkiOptions::new(NOW)
    })
    .expect("test PKI")
}

/// No path cache: the benchmark repeats one card, which would always hit it, while real traffic
/// brings many distinct cards.
fn validator(pki: &TestPki) -> Arc<Validator> {
    Arc::new(testkit::validator(pki, NOW))
}

// ---------------------------------------------------------------------------------------------
// The card (the client's side)

/// A test-PKI citizen card as the agent uses it: attached CMS over the TBS. The key is parsed
/// once, so the client's signing cost is the signature, not PKCS#8 parsing.
struct Card {
    cert_der: Vec<u8>,
    key: CardKey,
    national_id: String,
}

enum CardKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl Card {
    fn of(pki: &TestPki, name: &str) -> Self {
        let card = pki.card(name);
        let der = &card.issued.key.pkcs8_der;
        let key = match card.issued.key.alg {
            KeyAlg::P256 => CardKey::P256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    der,
                    &ring::rand::SystemRandom::new(),
                )
                .expect("P-256 test card"),
            ),
            _ => CardKey::Rsa(RsaKeyPair::from_pkcs8(der).expect("RSA test card")),
        };
        Self {
            cert_der: card.issued.cert_der.clone(),
            key,
            national_id: card.national_id.clone().expect("citizen card"),
        }
    }

    fn sign(&self, tbs: &str) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let failed = |_| PkiError::new(ErrorCode::CertMalformed, "signing failed");
        pki::cms::build_signed_data(tbs.as_bytes(), &self.cert_der, &Default::default(), |m| {
            Ok(match &self.key {
                CardKey::Rsa(key) => {
                    let mut out = vec![0u8; key.public().modulus_len()];
                    key.sign(&RSA_PKCS1_SHA256, &rng, m, &mut out)
                        .map_err(failed)?;
                    out
                }
                CardKey::P256(key) => key.sign(&rng, m).map_err(failed)?.as_ref().to_vec(),
            })
        })
        .expect("CMS")
    }
}

// ---------------------------------------------------------------------------------------------
// The verification rate

/// `verify_proof` on one thread over pre-made CMS proofs (path + CRL, no cache); returns proofs/s.
fn verify_rate(pki: &TestPki, card: &Card) -> f64 {
    let v = validator(pki);
    let origin = "http://127.0.0.1:8080";
    let challenges: Vec<Challenge> = (0..PROOFS)
        .map(|i| {
            Challenge::new(
                "query_citizen_serial",
                origin,
                &format!("flow-{i}"),
                "query_citizen_card",
                NOW,
            )
            .expect("challenge")
        })
        .collect();
    let proofs: Vec<Vec<u8>> = challenges.iter().map(|c| card.sign(&c.tbs())).collect();
    let at = NOW + Duration::minutes(1);
    let op = |i: usize| {
        let k = i % PROOFS;
        verify_proof(&v, &challenges[k], &proofs[k], None, Role::Citizen, at)
            .expect("proof verifies");
    };
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < VERIFY_WARM_UP {
        op(i);
        i += 1;
    }
    let (start, mut n) = (Instant::now(), 0usize);
    while start.elapsed() < VERIFY_MEASURE {
        op(n);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time

struct Http {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Http {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are written whole; Nagle would only add a delayed-ACK wait to each.
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    async fn reconnect(&mut self) -> io::Result<()> {
        *self = Self::connect(self.addr).await?;
        Ok(())
    }

    async fn post(&mut self, path: &str, token: Option<&str>, body: &[u8]) -> io::Result<Reply> {
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await?;
        self.read_reply().await
    }

    /// Reads one response; the service always sends Content-Length (whole JSON bodies).
    async fn read_reply(&mut self) -> io::Result<Reply> {
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| invalid("head"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid("status line"))?;
        let mut length = None;
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(invalid("chunked replies are not supported"));
                }
            }
        }
        let length = length.ok_or_else(|| invalid("no Content-Length"))?;
        while self.buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Reply {
            status,
            body: self.buf[head_end..head_end + length].to_vec(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The flows

#[derive(Clone, Copy)]
enum Case {
    /// R4.3 查詢自然人憑證序號: one citizen card step, the flow done.
    CitizenSerial,
    /// The same, with the challenge asked for in the flow's start: two requests, not three.
    CitizenSerialChallengeAtStart,
    /// R5.1 經辦人登入: one card step against the agency's operators, the session becomes the
    /// operator's.
    OperatorLogin,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::CitizenSerial => "R4.3 citizen serial query",
            Case::CitizenSerialChallengeAtStart => "R4.3, challenge at start",
            Case::OperatorLogin => "R5.1 operator login",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Case::CitizenSerial | Case::CitizenSerialChallengeAtStart => "query_citizen_serial",
            Case::OperatorLogin => "operator_login",
        }
    }

    fn card(self) -> &'static str {
        match self {
            Case::CitizenSerial | Case::CitizenSerialChallengeAtStart => "moica-admin",
            Case::OperatorLogin => "moica-operator-1",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Case::CitizenSerial | Case::CitizenSerialChallengeAtStart => "citizen_serial",
            Case::OperatorLogin => "operator",
        }
    }
}

/// What one step took.
struct StepTimes {
    /// `POST /flows`.
    start: StdDuration,
    /// `POST /challenge`, as the client waits for it.
    challenge: StdDuration,
    /// `POST /card`.
    card: StdDuration,
    /// The card's signature and the proof's encoding.
    sign: StdDuration,
}

enum StepError {
    /// The connection failed: reconnect.
    Io(io::Error),
    /// An unexpected answer.
    Refused(String),
}

impl From<io::Error> for StepError {
    fn from(e: io::Error) -> Self {
        StepError::Io(e)
    }
}

fn answer(what: &str, reply: &Reply, status: u16) -> Result<Value, StepError> {
    if reply.status != status {
        return Err(StepError::Refused(format!(
            "{what}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )));
    }
    Ok(reply.json())
}

/// Start a flow, ask for its challenge, sign it with the card, send the proof.
async fn step(
    http: &mut Http,
    token: &str,
    case: Case,
    card: &Card,
) -> Result<StepTimes, StepError> {
    let t = Instant::now();
    let at_start = matches!(case, Case::CitizenSerialChallengeAtStart);
    let start_body = json!({ "kind": case.kind(), "challenge": at_start }).to_string();
    let reply = http
        .post("/api/v1/flows", Some(token), start_body.as_bytes())
        .await?;
    let start = t.elapsed();
    let mut flow = answer("start", &reply, 201)?;
    let id = flow["id"].as_str().unwrap_or_default().to_string();

    let (challenge, challenge_time) = if at_start {
        (flow["challenge"].take(), StdDuration::ZERO)
    } else {
        let t = Instant::now();
        let reply = http
            .post(&format!("/api/v1/flows/{id}/challenge"), Some(token), b"")
            .await?;
        (answer("challenge", &reply, 200)?, t.elapsed())
    };

    let t = Instant::now();
    let tbs = challenge["tbs"].as_str().unwrap_or_default();
    let signature = base64::engine::general_purpose::STANDARD.encode(card.sign(tbs));
    let mut proof = json!({
        "challenge_id": challenge["challenge_id"],
        "signature": signature,
        "national_id": card.national_id,
    });
    if let Case::OperatorLogin = case {
        proof["institution_code"] = json!(TAIPEI);
    }
    let proof = proof.to_string();
    let sign = t.elapsed();

    let t = Instant::now();
    let reply = http
        .post(
            &format!("/api/v1/flows/{id}/card"),
            Some(token),
            proof.as_bytes(),
        )
        .await?;
    let card_time = t.elapsed();
    let outcome = answer("card", &reply, 200)?;
    if outcome["outcome"] != case.outcome() {
        return Err(StepError::Refused(format!("card: {outcome}")));
    }
    Ok(StepTimes {
        start,
        challenge: challenge_time,
        card: card_time,
        sign,
    })
}

#[derive(Default)]
struct ClientResult {
    /// Steps that ended inside the measured window.
    steps: Vec<StepTimes>,
    errors: usize,
    first_error: Option<String>,
}

/// One client: its own connection and bearer session, steps back to back until `end`; steps
/// that end between `measure_from` and `end` are kept.
async fn client(
    addr: SocketAddr,
    case: Case,
    card: Arc<Card>,
    measure_from: Instant,
    end: Instant,
) -> ClientResult {
    let mut result = ClientResult::default();
    let mut http = Http::connect(addr).await.expect("connect");
    // A session takes as many flows as the default limit allows, then the client opens the
    // next one: as many live flows per session as a real one can have.
    let per_session = Limits::default().flows_per_session;
    let mut token = new_session(&mut http).await;
    let mut flows = 0;
    loop {
        if Instant::now() >= end {
            break;
        }
        if flows == per_session {
            token = new_session(&mut http).await;
            flows = 0;
        }
        flows += 1;
        let outcome = step(&mut http, &token, case, &card).await;
        // Throughput counts steps by when they end, so none is lost at the window's edges.
        let done = Instant::now();
        let kept = done >= measure_from && done <= end;
        match outcome {
            Ok(t) if kept => result.steps.push(t),
            Ok(_) => {}
            Err(e) => {
                let message = match e {
                    StepError::Io(e) => {
                        let _ = http.reconnect().await;
                        format!("connection: {e}")
                    }
                    StepError::Refused(m) => m,
                };
                // A failure during warm-up counts too: every step must succeed.
                result.errors += 1;
                result.first_error.get_or_insert(message);
            }
        }
    }
    result
}

/// A new bearer session (`POST /api/v1/sessions`), its token.
async fn new_session(http: &mut Http) -> String {
    let reply = http
        .post("/api/v1/sessions", None, b"")
        .await
        .expect("session");
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["token"].as_str().expect("token").to_string()
}

// ---------------------------------------------------------------------------------------------
// CPU time per thread group

/// Run time (ns) of this process, (server side, clients): the clients' runtime threads, and
/// everything else as the service's (its runtime, the threads a blocking statement is handed
/// to, the main thread, which idles while measuring). The whole comes from the process's
/// account, which keeps the time of threads that have ended (a blocking thread retires after
/// 10 s idle), where summing the live threads would lose it. PostgreSQL's own processes are
/// not in it.
fn cpu_split() -> (u64, u64) {
    let mut clients = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() == CLIENT_THREADS {
                clients += std::fs::read_to_string(path.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                    .unwrap_or(0u64);
            }
        }
    }
    (process_cpu().saturating_sub(clients), clients)
}

/// The process's user and system time (ns), threads that have ended included: `utime` and
/// `stime` of `/proc/self/stat`, in Linux's fixed 100 ticks a second.
fn process_cpu() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the command name.
    (ticks(11) + ticks(12)) * 10_000_000
}

/// User and system time (ns) of this host's PostgreSQL processes (its backends, writers,
/// WAL writer, …; ones that end during the window are lost), from `/proc/PID/stat`.
fn postgres_cpu() -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0u64;
    for p in procs.flatten() {
        let path = p.path();
        let is_pid = p
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("postgres") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    ticks * 10_000_000
}

/// The whole machine's CPU time (ticks): (idle, including waiting on a disk; all), from the
/// `cpu` line of `/proc/stat`.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, all)
}

/// What the bench database's PostgreSQL backends were doing, sampled from
/// `pg_stat_activity` every [`WAIT_SAMPLE`] while a case is measured: counts per state.
#[derive(Default)]
struct DbWaits {
    samples: u64,
    /// Executing (no wait event).
    running: u64,
    /// Inside a transaction, waiting for the service's next statement.
    service_in_tx: u64,
    /// Outside a transaction, waiting for the service (a connection between statements or
    /// idle in the pool).
    service_idle: u64,
    /// Flushing or waiting to flush the WAL (a commit's `fsync`).
    wal: u64,
    /// Waiting for another transaction's row lock.
    lock: u64,
    other: u64,
}

const WAIT_SAMPLE: StdDuration = StdDuration::from_millis(20);

impl DbWaits {
    async fn sample_until(url: &str, end: Instant) -> Self {
        use sqlx::Connection as _;
        let mut waits = Self::default();
        let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
            return waits;
        };
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_default();
        while Instant::now() < end {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            )
            .bind(&db)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            for (state, kind, event) in rows {
                waits.samples += 1;
                let (state, kind, event) = (
                    state.unwrap_or_default(),
                    kind.unwrap_or_default(),
                    event.unwrap_or_default(),
                );
                match (kind.as_str(), event.as_str()) {
                    ("", _) => waits.running += 1,
                    ("Client", "ClientRead") if state == "idle" => waits.service_idle += 1,
                    ("Client", "ClientRead") => waits.service_in_tx += 1,
                    ("IO", "WALSync" | "WALWrite") | ("LWLock", "WALWrite" | "WALInsert") => {
                        waits.wal += 1
                    }
                    ("Lock", _) => waits.lock += 1,
                    _ => waits.other += 1,
                }
            }
            tokio::time::sleep(WAIT_SAMPLE).await;
        }
        let _ = conn.close().await;
        waits
    }

    fn line(&self) -> String {
        let pc = |n: u64| 100.0 * n as f64 / self.samples.max(1) as f64;
        format!(
            "running {:.0}%, waiting for the service {:.0}% (in a transaction {:.0}%), WAL \
             flush {:.0}%, row locks {:.0}%, other {:.0}% ({} samples)",
            pc(self.running),
            pc(self.service_idle + self.service_in_tx),
            pc(self.service_in_tx),
            pc(self.wal),
            pc(self.lock),
            pc(self.other),
            self.samples
        )
    }
}

// ---------------------------------------------------------------------------------------------
// One backend

struct Row {
    case: Case,
    clients: usize,
    steps: usize,
    elapsed: StdDuration,
    /// Server time per step (challenge + card), sorted.
    server: Vec<StdDuration>,
    /// Flow start, challenge and card requests per step, each sorted.
    start: Vec<StdDuration>,
    challenge: Vec<StdDuration>,
    card: Vec<StdDuration>,
    sign_mean: StdDuration,
    server_cpu_per_step: StdDuration,
    client_cpu_per_step: StdDuration,
    /// The database server's processes on this host (PostgreSQL); `None` for SQLite, which
    /// runs inside the service.
    db_cpu_per_step: Option<StdDuration>,
    /// The machine's idle share while measuring (waiting on a disk counts as idle).
    idle: f64,
    /// What the database's backends were doing (PostgreSQL).
    db_waits: Option<DbWaits>,
    errors: usize,
    first_error: Option<String>,
}

impl Row {
    /// All the CPU one step took on this host: the service's, the clients' and the database
    /// server's.
    fn cpu_per_step(&self) -> StdDuration {
        self.server_cpu_per_step
            + self.client_cpu_per_step
            + self.db_cpu_per_step.unwrap_or_default()
    }
}

fn percentile(sorted: &[StdDuration], p: f64) -> StdDuration {
    if sorted.is_empty() {
        return StdDuration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn per_step(ns: u64, steps: usize) -> StdDuration {
    StdDuration::from_nanos(ns / steps.max(1) as u64)
}

async fn run_case(
    addr: SocketAddr,
    case: Case,
    card: Arc<Card>,
    clients: usize,
    fresh: &FreshDb,
) -> Row {
    let begin = Instant::now();
    let measure_from = begin + WARM_UP;
    let end = measure_from + MEASURE;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, case, card.clone(), measure_from, end)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let pg = fresh.backend() == Backend::Postgres;
    let (cpu_from, db_from, idle_from) = (cpu_split(), pg.then(postgres_cpu), machine_cpu());
    let db_waits = match pg {
        true => Some(DbWaits::sample_until(&fresh.url, end).await),
        false => None,
    };
    tokio::time::sleep_until(end.into()).await;
    let (cpu_to, db_to, idle_to) = (cpu_split(), pg.then(postgres_cpu), machine_cpu());
    let mut all = ClientResult::default();
    for t in tasks {
        let r = t.await.expect("client task");
        all.steps.extend(r.steps);
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    let steps = all.steps.len();
    let sorted = |f: fn(&StepTimes) -> StdDuration| {
        let mut v: Vec<_> = all.steps.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let server = sorted(|s| s.challenge + s.card);
    let start = sorted(|s| s.start);
    let challenge = sorted(|s| s.challenge);
    let card = sorted(|s| s.card);
    let sign_total: StdDuration = all.steps.iter().map(|s| s.sign).sum();
    Row {
        case,
        clients,
        steps,
        elapsed: MEASURE,
        server,
        start,
        challenge,
        card,
        sign_mean: sign_total / steps.max(1) as u32,
        server_cpu_per_step: per_step(cpu_to.0.saturating_sub(cpu_from.0), steps),
        client_cpu_per_step: per_step(cpu_to.1.saturating_sub(cpu_from.1), steps),
        db_cpu_per_step: db_from
            .zip(db_to)
            .map(|(from, to)| per_step(to.saturating_sub(from), steps)),
        idle: idle_to.0.saturating_sub(idle_from.0) as f64
            / idle_to.1.saturating_sub(idle_from.1).max(1) as f64,
        db_waits,
        errors: all.errors,
        first_error: all.first_error,
    }
}

/// What the R5.1 case needs on file: the seeded agencies, `TAIPEI` registered, the card's
/// holder its operator.
async fn seed(db: &store::Db, pki: &TestPki) {
    let code = InstitutionCode::parse(TAIPEI).expect("code");
    db.upsert_agencies(&testkit::seed::agencies())
        .await
        .expect("agencies");
    let org = pki.card("gca-agency");
    let admin = pki.card("moica-admin");
    let cert = |c: &testpki::Card| CertRef {
        issuer: "CN=test CA".into(),
        serial: CertSerial::parse(&c.issued.serial_hex()).expect("serial"),
        subject: format!("CN={}", c.holder),
        sha256: pki::serial::hex_upper(
            ring::digest::digest(&ring::digest::SHA256, &c.issued.cert_der).as_ref(),
        )
        .to_lowercase(),
        not_before: NOW - Duration::days(365),
        not_after: NOW + Duration::days(365),
    };
    let admin_id = NationalId::parse(admin.national_id.as_deref().expect("ID")).expect("ID");
    db.bulk_load_registrations(&[Registration {
        code: code.clone(),
        org: OrgCard {
            cert: cert(org),
            org_identifier: OrgIdentifier::parse(testpki::GCA_AGENCY_OID).expect("oid"),
            org_name: org.holder.clone(),
        },
        admin_card: CitizenCard {
            cert: cert(admin),
            holder_name: admin.holder.clone(),
            id_last4: admin_id.last4().to_string(),
        },
        admin_id,
        admin: AdminContact {
            name: PersonName::parse("name", &admin.holder).expect("name"),
            email: Email::parse("admin@example.gov.tw").expect("email"),
            phone: Phone::parse("phone", "連絡電話", "(02)2701-3411").expect("phone"),
            phone_ext: None,
            mobile: None,
            unit: None,
            title: None,
        },
        registered_at: NOW - Duration::days(30),
        updated_at: NOW - Duration::days(30),
        version: 1,
    }])
    .await
    .expect("registration");
    let operator = pki.card(Case::OperatorLogin.card());
    db.bulk_load_operators(
        &[(
            code,
            OperatorInput {
                serial: CertSerial::parse(&operator.issued.serial_hex()).expect("serial"),
                name: PersonName::parse("name", &operator.holder).expect("name"),
                national_id: NationalId::parse(operator.national_id.as_deref().expect("ID"))
                    .expect("ID"),
                functions: vec!["query".into()],
                cert: None,
                validity: Default::default(),
            },
        )],
        NOW - Duration::days(1),
    )
    .await
    .expect("operator");
}

struct Server {
    addr: SocketAddr,
    db: store::Db,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<io::Result<()>>,
}

/// The service as `certreg serve` runs it, but with limits that never throttle and the fixed
/// clock the test PKI's certificates and CRLs are current at. Runs on the caller's runtime.
async fn start_server(fresh: &FreshDb, pki: &TestPki) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = server::build(server::Settings {
        web: WebConfig {
            public_origin: format!("http://{addr}"),
            // The fixed clock never leaves its minute, so any finite limit would end the run.
            limits: Limits {
                card_steps_per_client: u32::MAX,
                card_steps_per_code: u32::MAX,
                receipt_queries_per_client: u32::MAX,
                introspections_per_client: u32::MAX,
                sessions_per_client: u32::MAX,
                // No flow of the fixed clock ever idles out: the clients open a new session
                // when one has taken its `flows_per_session` (the default).
                ..Limits::default()
            },
            ..WebConfig::default()
        },
        ..server::Settings::new(
            fresh.url.clone(),
            fresh.secrets.clone(),
            validator(pki),
            Arc::new(FixedClock::new(NOW)),
        )
    })
    .await
    .expect("the service");
    seed(&service.db, pki).await;
    let app = service.router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
    });
    Server {
        addr,
        db: service.db,
        stop,
        served,
    }
}

/// [`CLIENTS`], or the counts `CERTREG_BENCH_CLIENTS` lists (`64`, `16,64`).
fn clients_measured() -> Vec<usize> {
    match std::env::var("CERTREG_BENCH_CLIENTS") {
        Ok(list) => list
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => panic!("CERTREG_BENCH_CLIENTS: client counts such as `16,64`, not {list:?}"),
            })
            .collect(),
        Err(_) => CLIENTS.to_vec(),
    }
}

fn run_backend(
    label: &str,
    fresh: &FreshDb,
    pki: &TestPki,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    out: &mut Vec<String>,
) -> (usize, usize) {
    let server = server_rt.block_on(start_server(fresh, pki));
    let mut rows = Vec::new();
    for case in [
        Case::CitizenSerial,
        Case::CitizenSerialChallengeAtStart,
        Case::OperatorLogin,
    ] {
        let card = Arc::new(Card::of(pki, case.card()));
        for clients in clients_measured() {
            eprintln!("{label}: {} with {clients} client(s)...", case.name());
            let row = client_rt.block_on(run_case(server.addr, case, card.clone(), clients, fresh));
            if let Some(e) = &row.first_error {
                eprintln!("  {} error(s), the first: {e}", row.errors);
            }
            rows.push(row);
        }
    }
    let _ = server.stop.send(());
    server_rt.block_on(async {
        let _ = server.served.await;
        server.db.close().await;
    });

    out.push(format!("{label}:"));
    out.push(format!(
        "{:<26} {:>7} {:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>5} {:>7} {:>6}",
        "case",
        "clients",
        "steps",
        "steps/s",
        "p50 ms",
        "p99 ms",
        "start50",
        "chal50",
        "card50",
        "sign ms",
        "srv CPU",
        "cli CPU",
        "db CPU",
        "idle",
        "ceil/s",
        "errors"
    ));
    out.push("-".repeat(148));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in &rows {
        let ms = |d: StdDuration| d.as_secs_f64() * 1e3;
        out.push(format!(
            "{:<26} {:>7} {:>6} {:>8.1} {:>7.2} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.2} {:>8.2} {:>7} {:>4.0}% {:>7.0} {:>6}",
            r.case.name(),
            r.clients,
            r.steps,
            r.steps as f64 / r.elapsed.as_secs_f64(),
            ms(percentile(&r.server, 0.50)),
            ms(percentile(&r.server, 0.99)),
            ms(percentile(&r.start, 0.50)),
            ms(percentile(&r.challenge, 0.50)),
            ms(percentile(&r.card, 0.50)),
            ms(r.sign_mean),
            ms(r.server_cpu_per_step),
            ms(r.client_cpu_per_step),
            r.db_cpu_per_step
                .map_or_else(|| "-".to_string(), |d| format!("{:.2}", ms(d))),
            100.0 * r.idle,
            cores * 1e3 / ms(r.cpu_per_step()).max(1e-3),
            r.errors
        ));
    }
    for r in &rows {
        if let Some(w) = &r.db_waits {
            out.push(format!(
                "  {} @{}: backends {}",
                r.case.name(),
                r.clients,
                w.line()
            ));
        }
    }
    out.push(String::new());
    (rows.len(), rows.iter().map(|r| r.errors).sum())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL database of the run

fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("nproc {nproc}, {model}")
}

fn alg_name(alg: KeyAlg) -> &'static str {
    match alg {
        KeyAlg::P256 => "P-256",
        _ => "RSA-2048",
    }
}

fn runtime(name: &'static str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` is not supported: run everything.
    let total = Instant::now();
    // P-256 cards, so the clients' signing leaves the cores to the service; RSA-2048, the
    // cards most holders carry, beside them. `CERTREG_BENCH_CARDS=p256` or `rsa` runs one.
    let only = std::env::var("CERTREG_BENCH_CARDS").unwrap_or_default();
    let algs: Vec<(KeyAlg, &str)> = [(KeyAlg::P256, "p256"), (KeyAlg::Rsa2048, "rsa")]
        .into_iter()
        .filter(|(_, name)| only.is_empty() || only == *name)
        .collect();
    eprintln!("generating the test PKIs...");
    let pkis: Vec<(KeyAlg, TestPki)> = algs.iter().map(|(a, _)| (*a, test_pki(*a))).collect();

    eprintln!("measuring verify_proof (single thread)...");
    let verify: Vec<(KeyAlg, f64)> = pkis
        .iter()
        .map(|(alg, pki)| {
            (
                *alg,
                verify_rate(pki, &Card::of(pki, Case::CitizenSerial.card())),
            )
        })
        .collect();
    let mut cases = verify.len();

    // The service and the clients on runtimes of their own, so their threads' CPU time can be
    // told apart; both share this machine's cores, as a client on the same host would.
    let server_rt = runtime(SERVER_THREADS);
    let client_rt = runtime(CLIENT_THREADS);
    let mut out = Vec::new();
    let mut errors = 0usize;

    for backend in [Backend::Sqlite, Backend::Postgres] {
        if !testkit::db::backends().contains(&backend) {
            out.push("PostgreSQL: skipped (TEST_DATABASE_URL not set)".into());
            continue;
        }
        for (alg, pki) in &pkis {
            let label = format!(
                "{}, {} cards",
                match backend {
                    Backend::Sqlite => "SQLite (temp file)",
                    Backend::Postgres => "PostgreSQL (same host)",
                },
                alg_name(*alg)
            );
            let fresh = server_rt.block_on(FreshDb::on(backend, "certreg_loadbench"));
            let (n, e) = run_backend(&label, &fresh, pki, &server_rt, &client_rt, &mut out);
            (cases, errors) = (cases + n, errors + e);
        }
    }
    drop((server_rt, client_rt));

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!("machine: {}", machine());
    println!(
        "service in-process on 127.0.0.1 ({workers} runtime workers); clients on a second runtime \
         of {workers} workers in the same process, sharing the cores; HTTP/1.1 keep-alive, one \
         connection per client, a new bearer session every {} flows (the default limit); {} s \
         per case after {} s warm-up",
        Limits::default().flows_per_session,
        MEASURE.as_secs(),
        WARM_UP.as_secs()
    );
    println!(
        "step: POST /api/v1/flows, POST …/challenge, the card signs the TBS (P-256 or RSA-2048, \
         attached CMS, client side), POST …/card; validator without path cache, fixed clock, \
         rate limits off; \"R4.3, challenge at start\": the challenge comes with the start \
         (`\"challenge\": true`), two requests per step"
    );
    println!(
        "steps/s: steps completed per second; p50/p99: server time of challenge + card as the \
         client waits for it (signing excluded); start50, chal50, card50: p50 of each request; \
         sign ms: the client's signing and encoding per step (mean)"
    );
    println!(
        "srv CPU / cli CPU / db CPU: ms of CPU per step on the service's threads (runtime, \
         blocking threads), on the clients' (mostly signing), and in this host's PostgreSQL \
         processes (SQLite runs inside the service); idle: the machine's idle CPU while measuring \
         (waiting on a disk counts as idle), above zero when a case is bound by latency rather \
         than by the cores"
    );
    println!(
        "ceil/s: the steps per second this machine's {workers} cores would carry at the CPU one \
         step took here (srv + cli + db), every core busy: the ceiling of the case on this \
         machine, whatever its latency"
    );
    println!(
        "backends (PostgreSQL): what the bench database's backends were doing, sampled from \
         pg_stat_activity every {} ms while measuring",
        WAIT_SAMPLE.as_millis()
    );
    println!();
    for (alg, rate) in verify {
        println!(
            "pki verify_proof (CMS {} attached, path + CRL, no cache), single thread: \
             {rate:.0} proofs/s ({:.0} µs each)",
            alg_name(alg),
            1e6 / rate
        );
    }
    println!();
    for line in out {
        println!("{line}");
    }
    println!("run time {:.0} s", total.elapsed().as_secs_f64());
    if errors > 0 {
        println!("errors: {errors} failed steps (see above); there must be none");
    }
    println!("bench: {cases} cases measured");
    if errors > 0 {
        std::process::exit(1);
    }
}
