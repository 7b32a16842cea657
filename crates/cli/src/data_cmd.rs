//! The system operator's data commands: agency master data (`certreg agencies`), the office
//! calendar (`certreg calendar`) and reviewer accounts (`certreg staff`). Each prints JSON lines
//! on stdout; a refusal prints `"ok": false` with a stable code and the zh-TW message (also on
//! stderr) and exits 1, leaving the database as it was.

use crate::store_cmd::{DatabaseArgs, open, runtime};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use domain::DomainError;
use domain::calendar::{BusinessCalendar, check_days, parse_csv};
use domain::clock::{Clock, SystemClock};
use domain::model::{Reviewer, Section};
use domain::store::Store;
use domain::types::{InstitutionCode, PersonName, cert_serial};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use time::Date;

#[derive(Subcommand)]
pub enum AgenciesCommand {
    /// Import master data from CSV (機關代號,機關名稱,縣市,機關憑證OID; UTF-8 or Big5): all or
    /// nothing, every bad line reported.
    Import {
        file: PathBuf,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Print one agency's master data.
    Show {
        code: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Subcommand)]
pub enum CalendarCommand {
    /// Import an office calendar file (西元日期,星期,是否放假,備註; UTF-8, UTF-8 with BOM or
    /// Big5) of whole years, replacing those years.
    Import {
        file: PathBuf,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The loaded years (shipped and imported) and the warnings the health check shows.
    Status {
        /// The date to report for (YYYY-MM-DD); default: today in Asia/Taipei.
        #[arg(long, value_name = "DATE")]
        on: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SectionArg {
    /// 承保第一科
    First,
    /// 承保第二科
    Second,
}

impl From<SectionArg> for Section {
    fn from(s: SectionArg) -> Self {
        match s {
            SectionArg::First => Section::First,
            SectionArg::Second => Section::Second,
        }
    }
}

#[derive(Subcommand)]
pub enum StaffCommand {
    /// Create a reviewer account (R6.1): the reviewer logs in with this citizen card.
    Add(StaffAdd),
    /// List reviewer accounts, one JSON line each.
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Disable a reviewer account (it can no longer log in or decide).
    Disable {
        id: i64,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Enable a disabled reviewer account again.
    Enable {
        id: i64,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Args)]
pub struct StaffAdd {
    /// 姓名
    #[arg(long)]
    name: String,
    /// The section the reviewer belongs to (承保第一科 / 承保第二科).
    #[arg(long, value_enum)]
    section: SectionArg,
    /// 憑證序號 of the reviewer's citizen card (hex; spaces and colons allowed). The account
    /// then learns the card's issuer at its first login; `--cert` records it now.
    #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
    serial: Option<String>,
    /// The reviewer's citizen card certificate (DER, PEM or base64): serial and issuer are
    /// both taken from it, so only that CA's card with that serial ever logs in.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// The serial and issuer of a reviewer's citizen card certificate file.
fn reviewer_card(path: &std::path::Path) -> domain::Result<pki::facts::CertFacts> {
    let bytes = std::fs::read(path).map_err(|e| {
        DomainError::invalid(
            "cert",
            format!("{}: {e}", path.display()),
            "無法讀取憑證檔案",
        )
    })?;
    let cert = pki::facts::ParsedCert::from_input(&bytes)?;
    if !cert.facts.is_citizen() {
        return Err(DomainError::invalid(
            "cert",
            "not a citizen card certificate",
            "此憑證非自然人憑證",
        ));
    }
    Ok(cert.facts)
}

fn print(v: Value) {
    println!("{v}");
}

/// A refusal the user can act on: JSON on stdout, the zh-TW message on stderr, exit 1.
fn refuse(code: &str, message_zh: &str, mut extra: Value) -> ExitCode {
    let mut v = json!({"ok": false, "code": code, "message": message_zh});
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object_mut()) {
        v.append(extra);
    }
    print(v);
    eprintln!("certreg: {message_zh}");
    ExitCode::from(1)
}

/// Domain refusals exit 1; a storage failure is not the user's to fix and goes up as an error.
fn refused(e: DomainError) -> Result<ExitCode> {
    if let DomainError::Storage(_) = e {
        return Err(anyhow::anyhow!("{e}"));
    }
    Ok(refuse(e.code(), &e.message_zh(), json!({})))
}

fn read(file: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

pub fn agencies(command: AgenciesCommand) -> Result<ExitCode> {
    match command {
        AgenciesCommand::Import { file, db } => {
            let bytes = read(&file)?;
            let agencies = match domain::import::parse_agencies_csv(&bytes) {
                Ok(a) => a,
                Err(errors) => {
                    for e in &errors {
                        print(json!({"line": e.line, "message": e.message_zh}));
                    }
                    eprintln!(
                        "certreg: {} 有 {} 處錯誤，未匯入任何資料",
                        file.display(),
                        errors.len()
                    );
                    return Ok(ExitCode::from(1));
                }
            };
            runtime()?.block_on(async {
                let db = open(&db).await?;
                let result = db.upsert_agencies(&agencies).await;
                db.close().await;
                match result {
                    Ok(n) => {
                        print(json!({"ok": true, "imported": n}));
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => refused(e),
                }
            })
        }
        AgenciesCommand::Show { code, db } => {
            let code = match InstitutionCode::parse(&code) {
                Ok(c) => c,
                Err(e) => return refused(e),
            };
            runtime()?.block_on(async {
                let db = open(&db).await?;
                let result = db.agency(&code).await;
                db.close().await;
                match result {
                    Ok(Some(a)) => {
                        print(json!({
                            "code": a.code.as_str(),
                            "name": a.name,
                            "county": a.county,
                            "org_identifier": a.org_identifier.as_ref().map(|o| o.as_str()),
                        }));
                        Ok(ExitCode::SUCCESS)
                    }
                    Ok(None) => refused(DomainError::UnknownAgency),
                    Err(e) => refused(e),
                }
            })
        }
    }
}

pub fn calendar(command: CalendarCommand) -> Result<ExitCode> {
    match command {
        CalendarCommand::Import { file, db } => {
            let bytes = read(&file)?;
            let days = match parse_csv(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    return Ok(refuse(e.code(), &e.message_zh(), json!({"line": e.line()})));
                }
            };
            if days.is_empty() {
                return Ok(refuse("calendar_empty", "檔案內容為空", json!({})));
            }
            let years = check_days(&days).unwrap_or_default();
            runtime()?.block_on(async {
                let db = open(&db).await?;
                let result = db.import_calendar(&days).await;
                db.close().await;
                match result {
                    Ok(()) => {
                        print(json!({"ok": true, "years": years, "days": days.len()}));
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => refused(e),
                }
            })
        }
        CalendarCommand::Status { on, db } => {
            let today = match on {
                None => SystemClock.today(),
                Some(text) => match parse_date(&text) {
                    Some(d) => d,
                    None => {
                        return Ok(refuse(
                            "invalid_input",
                            "日期格式錯誤，應為 YYYY-MM-DD",
                            json!({}),
                        ));
                    }
                },
            };
            runtime()?.block_on(async {
                let db = open(&db).await?;
                let days = db.calendar_days().await;
                db.close().await;
                let days = match days {
                    Ok(d) => d,
                    Err(e) => return refused(e),
                };
                let imported = check_days(&days).unwrap_or_default();
                let calendar = BusinessCalendar::with_imported(days)
                    .map_err(|e| anyhow::anyhow!("stored office calendar: {e}"))?;
                print(json!({
                    "ok": true,
                    "today": today.to_string(),
                    "years": calendar.years(),
                    "shipped": BusinessCalendar::shipped().years(),
                    "imported": imported,
                    "warnings": calendar.warnings_for(today),
                }));
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn parse_date(s: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.trim(), format).ok()
}

fn section_name(s: Section) -> &'static str {
    match s {
        Section::First => "first",
        Section::Second => "second",
    }
}

fn reviewer_json(r: &Reviewer) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "section": section_name(r.section),
        "section_label": r.section.label_zh(),
        "serial": r.cert_serial.as_str(),
        // Known from `--cert`, or learned at the reviewer's first login.
        "issuer": r.cert_issuer,
        "active": r.active,
    })
}

pub fn staff(command: StaffCommand) -> Result<ExitCode> {
    match command {
        StaffCommand::Add(add) => {
            let card = match add.cert.as_deref().map(reviewer_card).transpose() {
                Ok(card) => card,
                Err(e) => return refused(e),
            };
            let checked = PersonName::parse("name", &add.name).and_then(|n| {
                let serial = match (&card, &add.serial) {
                    (Some(c), _) => c.serial.clone(),
                    (None, Some(s)) => cert_serial("serial", s)?,
                    (None, None) => {
                        return Err(DomainError::invalid(
                            "serial",
                            "no serial",
                            "請輸入憑證序號",
                        ));
                    }
                };
                Ok((n, serial))
            });
            let (name, serial) = match checked {
                Ok(v) => v,
                Err(e) => return refused(e),
            };
            let issuer = card.map(|c| c.issuer);
            let section = Section::from(add.section);
            runtime()?.block_on(async {
                let db = open(&add.db).await?;
                let mut result = db.add_reviewer(name.as_str(), section, &serial).await;
                if let (Ok(id), Some(issuer)) = (&result, &issuer)
                    && let Err(e) = db.learn_reviewer_issuer(*id, &serial, issuer).await
                {
                    result = Err(e);
                }
                db.close().await;
                match result {
                    Ok(id) => {
                        let mut v = reviewer_json(&Reviewer {
                            id,
                            name: name.as_str().to_string(),
                            section,
                            cert_serial: serial,
                            cert_issuer: issuer,
                            active: true,
                        });
                        if let Some(o) = v.as_object_mut() {
                            o.insert("ok".into(), json!(true));
                        }
                        print(v);
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => refused(e),
                }
            })
        }
        StaffCommand::List { db } => runtime()?.block_on(async {
            let db = open(&db).await?;
            let result = db.reviewers().await;
            db.close().await;
            match result {
                Ok(list) => {
                    for r in &list {
                        print(reviewer_json(r));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }),
        StaffCommand::Disable { id, db } => set_active(id, false, db),
        StaffCommand::Enable { id, db } => set_active(id, true, db),
    }
}

fn set_active(id: i64, active: bool, db: DatabaseArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let db = open(&db).await?;
        let result = db.set_reviewer_active(id, active).await;
        db.close().await;
        match result {
            Ok(()) => {
                print(json!({"ok": true, "id": id, "active": active}));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refused(e),
        }
    })
}
