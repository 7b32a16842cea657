//! `certreg migrate` and `certreg audit verify`: the database commands. They print one JSON
//! object on stdout, like the other commands, so scripts can read the outcome.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use domain::store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use store::{Backend, Db, Secrets};

#[derive(Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long)]
    pub database: String,
    /// The key file for personal data (created if missing). Default: certreg.key beside the
    /// SQLite file; required for PostgreSQL.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's hash chain; exit 1 and name the first broken link if any.
    Verify {
        /// sqlite://PATH or postgres://USER@HOST/DB.
        #[arg(long)]
        database: String,
    },
}

impl DatabaseArgs {
    /// The key file to use: the one given, or `certreg.key` beside the SQLite file.
    pub fn key_path(&self) -> Result<PathBuf> {
        if let Some(k) = &self.key_file {
            return Ok(k.clone());
        }
        match store::sqlite_path(&self.database) {
            Some(db) => Ok(db
                .parent()
                .map(|d| d.join("certreg.key"))
                .unwrap_or_else(|| PathBuf::from("certreg.key"))),
            None => bail!("--key-file is required for {}", self.database),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn migrate(args: DatabaseArgs) -> Result<ExitCode> {
    // Checked first: an unknown scheme must not leave a key file behind either.
    let backend = store::backend_of(&args.database)?;
    runtime()?.block_on(async {
        // The database and its key are created together, so no data is ever written without one.
        let secrets = if backend == Backend::Sqlite || args.key_file.is_some() {
            let path = args.key_path()?;
            Some(
                Secrets::load_or_create(&path)
                    .with_context(|| format!("key file {}", path.display()))?,
            )
        } else {
            None
        };
        // Migrating needs no key; without one, a throwaway keeps the connection honest.
        let secrets = match secrets {
            Some(s) => s,
            None => Secrets::generate()?,
        };
        let db = Db::connect_only(&args.database, &secrets)
            .await
            .with_context(|| format!("connecting to {}", redact(&args.database)))?;
        let applied = db.migrate().await.context("migrating")?;
        db.close().await;
        println!(
            "{}",
            json!({"ok": true, "applied": applied, "backend": backend_name(backend)})
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn audit(command: AuditCommand) -> Result<ExitCode> {
    let AuditCommand::Verify { database } = command;
    store::backend_of(&database)?;
    runtime()?.block_on(async {
        // The audit log holds no encrypted data: verification needs no key.
        let db = Db::connect_only(&database, &Secrets::generate()?)
            .await
            .with_context(|| format!("connecting to {}", redact(&database)))?;
        let report = db
            .verify_audit()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("reading the audit log")?;
        db.close().await;
        match report.first_broken {
            None => {
                println!("{}", json!({"ok": true, "events": report.events}));
                Ok(ExitCode::SUCCESS)
            }
            Some(seq) => {
                println!(
                    "{}",
                    json!({
                        "ok": false,
                        "events": report.events,
                        "first_broken": seq,
                        "detail": report.detail,
                    })
                );
                eprintln!(
                    "certreg: audit log broken at seq {seq}: {}",
                    report.detail.unwrap_or_default()
                );
                Ok(ExitCode::from(1))
            }
        }
    })
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
