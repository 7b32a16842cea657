//! `certreg demo`: the whole system on one machine in one process — a data directory with a
//! SQLite database, the test PKI and its soft cards, seeded agencies and a reviewer, the web
//! service and the card agent with the valid cards in readers — and a table of what to try.

use crate::config::{LogFormat, Settings};
use crate::serve_cmd;
use anyhow::{Context, Result};
use clap::Args;
use domain::model::{Agency, Section};
use domain::store::Store as _;
use domain::types::{InstitutionCode, OrgIdentifier, cert_serial};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use testpki::{TestPki, TestPkiOptions};
use time::{Duration, OffsetDateTime};

#[derive(Args)]
pub struct DemoArgs {
    /// The data directory (created if missing; its PKI and database are reused).
    #[arg(long, value_name = "DIR", default_value = "certreg-demo")]
    dir: PathBuf,
    /// Port of the web service on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of the card agent on 127.0.0.1 (0: any free port; pages find it there).
    #[arg(long, default_value_t = agent::server::DEFAULT_PORT)]
    agent_port: u16,
}

/// A seeded agency and the card that goes with it.
struct DemoAgency {
    code: &'static str,
    name: &'static str,
    county: &'static str,
    /// The organization identifier on file.
    on_file: Option<&'static str>,
    card: &'static str,
    hint: &'static str,
}

const fn agency(
    code: &'static str,
    name: &'static str,
    county: &'static str,
    on_file: Option<&'static str>,
    card: &'static str,
    hint: &'static str,
) -> DemoAgency {
    DemoAgency {
        code,
        name,
        county,
        on_file,
        card,
        hint,
    }
}

const AGENCIES: &[DemoAgency] = &[
    agency(
        "A0001",
        "臺北市政府人事處",
        "臺北市",
        Some(testpki::GCA_AGENCY_OID),
        "gca-agency",
        "首次註冊：機關代號 A0001 + 此卡，再以 moica-admin；之後授權指派同樣兩張卡",
    ),
    agency(
        "A0002",
        "新北市政府主計處",
        "新北市",
        // On file, and not what `gca-agency-mismatch` carries: the review path.
        Some("2.16.886.101.20003.20065.20099"),
        "gca-agency-mismatch",
        "首次註冊：機關代號 A0002 + 此卡 → OID 比對不符，填聯絡資料送審核",
    ),
    agency(
        "A0003",
        "臺北市立測試國民小學",
        "臺北市",
        Some(testpki::XCA_SCHOOL_OID),
        "xca-school",
        "首次註冊：機關代號 A0003 + 此卡（XCA 學校，OID 不以 2.16.886.101 開頭）",
    ),
    agency(
        "A0004",
        "測試科技股份有限公司",
        "臺北市",
        None,
        "moeaca-company",
        "首次註冊：機關代號 A0004 + 此卡 → 主檔無機關識別，進入審核",
    ),
    agency(
        "A0005",
        "臺中市立測試醫院",
        "臺中市",
        Some(testpki::HCA_HOSPITAL_OID),
        "hca-hospital",
        "首次註冊：機關代號 A0005（臺中市，承保第二科）+ 此卡",
    ),
];

/// The demo reviewer's section: the one in charge of the agencies whose registration needs a
/// review (A0002, A0004), so the reviewer sees them in the queue.
const REVIEWER_SECTION: Section = Section::First;

/// Hints for cards that are not an agency's own, beyond the note of `index.json`.
fn hint(card: &str) -> Option<&'static str> {
    Some(match card {
        "moica-admin" => "首次註冊第二步與授權指派：身分證統一編號 A123456789",
        "gca-agency-renewed" => "更換機關憑證：機關代號 A0001（已註冊後）",
        "moica-admin-renewed" => "更換授權管理者自然人憑證：A0001，同一人換發的新卡",
        "moica-admin2" => "更換授權管理者自然人憑證：A0001，改由陳美玲擔任",
        "moica-operator-1" | "moica-operator-2" => {
            "授權指派→新增經辦人（讀取憑證）；之後經辦人登入：機關代號 A0001；\
             「取得其他系統用權杖」後以 cargo run -p web --example downstream -- <web> <權杖> 驗證"
        }
        "moica-reviewer" => {
            "已建立為本部審核人員（承保第一科：後台審核 A0002、A0004 的比對不符申請）"
        }
        _ => return None,
    })
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    serve_cmd::init_logging(LogFormat::Compact, "warn");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::path::absolute(&args.dir).unwrap_or(args.dir.clone());
    let pki_dir = dir.join("pki");
    let now = OffsetDateTime::now_utc();
    prepare_pki(&pki_dir, now)?;
    let index: Value = serde_json::from_slice(
        &std::fs::read(pki_dir.join("index.json")).context("reading the test PKI's index.json")?,
    )
    .context("index.json")?;
    let cards = pkcs12_entries(&index);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let web_listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on 127.0.0.1:{} (another demo running? try --port)",
                    args.port
                )
            })?;
        let agent_listener = agent::server::bind(args.agent_port)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on 127.0.0.1:{} (another card agent running? try --agent-port)",
                    args.agent_port
                )
            })?;
        let origin = format!("http://127.0.0.1:{}", web_listener.local_addr()?.port());
        let agent_url = format!("http://127.0.0.1:{}", agent_listener.local_addr()?.port());

        let settings = Settings {
            database_url: format!("sqlite://{}", dir.join("certreg.db").display()),
            public_origin: origin.clone(),
            agent_url: agent_url.clone(),
            anchors_dir: pki_dir.join("anchors"),
            crls: testpki::CaKind::ISSUING
                .iter()
                .map(|k| {
                    pki_dir
                        .join(format!("crl/{}.crl", k.slug()))
                        .display()
                        .to_string()
                })
                .collect(),
            ..Settings::default()
        };
        let mut serving = serve_cmd::build(&settings).await?;
        // The demo has no mail relay: notices are printed instead.
        serving.service.mailer = web::mail::Mailer::Stdout;
        seed(&serving.service.db, &index).await?;

        let soft = Arc::new(
            agent::softcard::SoftCards::open(pki_dir.join("cards"))
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the soft cards")?,
        );
        for c in cards.iter().filter(|c| c["variant"] == "valid") {
            let name = c["card"].as_str().unwrap_or_default();
            soft.insert(name)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("inserting soft card {name}"))?;
        }

        // One signal stops both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::agent_cmd::shutdown_signal().await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let agent_config = agent::server::AgentConfig {
            port: agent_listener.local_addr()?.port(),
            allowed_origins: vec![origin.clone()],
            ..Default::default()
        };
        let agent_task = tokio::spawn(agent::server::serve_on(
            agent_listener,
            agent_config,
            soft.clone(),
            Some(soft),
            until_stopped(stopped.clone()),
        ));

        print_table(&origin, &agent_url, &dir, &cards);
        let web = serve_cmd::run(web_listener, serving, &settings, until_stopped(stopped)).await;
        let agent = agent_task.await.context("card agent task")?;
        web?;
        agent.context("card agent")?;
        eprintln!("certreg demo: stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The test PKI in `dir`: generated on first use, reused after (so registered cards stay
/// valid), with fresh CRLs signed at every start.
fn prepare_pki(dir: &Path, now: OffsetDateTime) -> Result<()> {
    let complete = dir.join("index.json").is_file()
        && testpki::CaKind::ISSUING
            .iter()
            .all(|k| dir.join(format!("ca/{}.key.pem", k.slug())).is_file());
    if !complete {
        eprintln!(
            "certreg demo: generating the test PKI and soft cards in {} (RSA keys: takes a little while)…",
            dir.display()
        );
        let pki = TestPki::generate(TestPkiOptions::new(now))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("generating the test PKI")?;
        pki.write_dir(dir)
            .and_then(|_| pki.write_ca_keys(dir))
            .with_context(|| format!("writing the test PKI to {}", dir.display()))?;
    }
    let crls = testpki::fresh_crls(dir, now - Duration::hours(1), now + Duration::days(30))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("signing fresh CRLs for the test PKI in {}", dir.display()))?;
    for (kind, der) in crls {
        let path = dir.join(format!("crl/{}.crl", kind.slug()));
        std::fs::write(&path, der).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn pkcs12_entries(index: &Value) -> Vec<Value> {
    index["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["kind"] == "pkcs12")
        .cloned()
        .collect()
}

/// Agencies and the reviewer; run at every start, changing nothing the second time.
async fn seed(db: &store::Db, index: &Value) -> Result<()> {
    let storage = |e: domain::DomainError| anyhow::anyhow!("{e}");
    let agencies = AGENCIES
        .iter()
        .map(|a| {
            Ok(Agency {
                code: InstitutionCode::parse(a.code)?,
                name: a.name.into(),
                county: a.county.into(),
                org_identifier: a.on_file.map(OrgIdentifier::parse).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, domain::DomainError>>()
        .map_err(storage)?;
    db.upsert_agencies(&agencies)
        .await
        .map_err(storage)
        .context("seeding agencies")?;
    let reviewer = pkcs12_entries(index)
        .into_iter()
        .find(|c| c["card"] == "moica-reviewer")
        .context("index.json has no moica-reviewer card")?;
    let serial =
        cert_serial("serial", reviewer["serial"].as_str().unwrap_or_default()).map_err(storage)?;
    let existing = db.reviewers().await.map_err(storage)?;
    if !existing.iter().any(|r| r.cert_serial == serial) {
        let name = reviewer["holder"].as_str().unwrap_or("李建國");
        db.add_reviewer(name, REVIEWER_SECTION, &serial)
            .await
            .map_err(storage)
            .context("seeding the reviewer")?;
    }
    Ok(())
}

fn print_table(origin: &str, agent_url: &str, dir: &Path, cards: &[Value]) {
    let mut out = String::new();
    out.push_str(&format!(
        "\ncertreg demo\n  網站      {origin}\n  讀卡程式  {agent_url}  (狀態頁可插入或退出測試卡)\n  資料目錄  {}\n\n",
        dir.display()
    ));
    out.push_str(&format!(
        "  {:<22} {:<9} {:<11} {}\n",
        "測試卡", "PIN", "身分證號", "試試看"
    ));
    for c in cards {
        let name = c["card"].as_str().unwrap_or_default();
        let agency = AGENCIES.iter().find(|a| a.card == name).map(|a| a.hint);
        let note = c["note"].as_str().unwrap_or_default();
        // Our hint names the codes seeded here; the note of index.json says what the card is.
        let what = agency.or_else(|| hint(name)).unwrap_or(note);
        let reader = if c["variant"] == "valid" {
            ""
        } else {
            "（未插入）"
        };
        out.push_str(&format!(
            "  {:<22} {:<9} {:<11} {reader}{what}\n",
            name,
            c["pin"].as_str().unwrap_or_default(),
            c["national_id"].as_str().unwrap_or("-"),
        ));
    }
    out.push_str(&format!(
        "\n  機關代號：{}\n  按 Ctrl-C 結束。\n",
        AGENCIES
            .iter()
            .map(|a| format!("{} {}（{}）", a.code, a.name, a.county))
            .collect::<Vec<_>>()
            .join("、")
    ));
    print!("{out}");
    // The line tests and scripts look for.
    println!("certreg demo: web {origin} agent {agent_url}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_reviewer_is_in_charge_of_the_agencies_that_need_a_review() {
        let directory = domain::model::ContactDirectory::default();
        for code in ["A0002", "A0004"] {
            let a = AGENCIES.iter().find(|a| a.code == code).unwrap();
            let section = directory.section_for(a.county).map(|s| s.section);
            assert_eq!(section, Some(REVIEWER_SECTION), "{code} in {}", a.county);
        }
    }
}
