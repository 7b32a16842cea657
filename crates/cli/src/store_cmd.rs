//! `certreg migrate`, `certreg audit verify` and `certreg audit head`, and how every database command finds its
//! database and key. They print JSON on stdout, like the other commands, so scripts can read
//! the outcome.

use crate::config::Settings;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use domain::store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use store::{Backend, Db, Secrets};

/// Where the database is: the settings (defaults → `--config` file → `CERTREG_*`
/// environment), with `--database` and `--key-file` over them.
#[derive(Args, Clone, Debug, Default)]
pub struct DatabaseArgs {
    /// Settings file (TOML); `CERTREG_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB. Overrides `database_url`
    /// of the settings and CERTREG_DATABASE_URL.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The key file for personal data (created if missing). Overrides `key_file` of the
    /// settings and CERTREG_KEY_FILE; default: certreg.key beside the SQLite file; required for
    /// PostgreSQL.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's keyed hash chain (needs the key file); exit 1 and name the first
    /// broken link if any.
    Verify(DatabaseArgs),
    /// Print the chain head (last sequence number and hash), to record outside the database:
    /// a later `audit verify` plus a head that still extends it shows nothing was cut off.
    Head(DatabaseArgs),
}

impl DatabaseArgs {
    /// The settings with this command line's overrides applied.
    pub fn settings(&self) -> Result<Settings> {
        let mut s = Settings::load(self.config.as_deref())?;
        if let Some(url) = &self.database {
            s.database_url = url.clone();
        }
        if let Some(key) = &self.key_file {
            s.key_file = Some(key.clone());
        }
        Ok(s)
    }
}

/// The keys for `settings`' database, created beside it when missing, so that no data is ever
/// written without one. On PostgreSQL without a configured key file, `None`.
pub(crate) fn keys(settings: &Settings, backend: Backend) -> Result<Option<Secrets>> {
    if backend == Backend::Sqlite || settings.key_file.is_some() {
        let path = settings.key_path()?;
        let secrets = Secrets::load_or_create(&path)
            .with_context(|| format!("key file {}", path.display()))?;
        return Ok(Some(secrets));
    }
    Ok(None)
}

/// Connects (migrating) for a command that writes or reads master data, reviewers or the
/// calendar. None of those is encrypted, so on PostgreSQL a missing key file is no obstacle.
pub async fn open(args: &DatabaseArgs) -> Result<Db> {
    let settings = args.settings()?;
    // Checked first: an unknown scheme must not leave a key file behind either.
    let backend = store::backend_of(&settings.database_url)?;
    let secrets = match keys(&settings, backend)? {
        Some(s) => s,
        None => Secrets::generate()?,
    };
    Db::connect(&settings.database_url, &secrets)
        .await
        .with_context(|| format!("connecting to {}", redact(&settings.database_url)))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn migrate(args: DatabaseArgs) -> Result<ExitCode> {
    let settings = args.settings()?;
    // Checked first: an unknown scheme must not leave a key file behind either.
    let backend = store::backend_of(&settings.database_url)?;
    runtime()?.block_on(async {
        // The database and its key are created together, so no data is ever written without one.
        let secrets = keys(&settings, backend)?;
        // Migrating needs no key; without one, a throwaway keeps the connection honest.
        let real_key = secrets.is_some();
        let secrets = match secrets {
            Some(s) => s,
            None => Secrets::generate()?,
        };
        let db = Db::connect_only(&settings.database_url, &secrets)
            .await
            .with_context(|| format!("connecting to {}", redact(&settings.database_url)))?;
        let applied = db.migrate().await.context("migrating")?;
        if real_key {
            // With this database's own key: a chain written before the log was keyed is sealed.
            db.seal_audit_chain(time::OffsetDateTime::now_utc())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("sealing the audit chain")?;
        }
        db.close().await;
        println!(
            "{}",
            json!({"ok": true, "applied": applied, "backend": backend_name(backend)})
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn audit(command: AuditCommand) -> Result<ExitCode> {
    let (args, head) = match command {
        AuditCommand::Verify(args) => (args, false),
        AuditCommand::Head(args) => (args, true),
    };
    let settings = args.settings()?;
    let database = settings.database_url.clone();
    let backend = store::backend_of(&database)?;
    runtime()?.block_on(async {
        if head {
            // The head is read as stored: no key needed.
            let db = Db::connect_only(&database, &Secrets::generate()?)
                .await
                .with_context(|| format!("connecting to {}", redact(&database)))?;
            let (seq, hash) = db
                .audit_head()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("reading the audit chain head")?;
            db.close().await;
            println!("{}", json!({"ok": true, "seq": seq, "hash": hash}));
            return Ok(ExitCode::SUCCESS);
        }
        // The chain is keyed with a key derived from the key file.
        let Some(secrets) = keys(&settings, backend)? else {
            anyhow::bail!(
                "the audit chain is keyed: give this database's key file (--key-file or key_file)"
            );
        };
        let db = Db::connect_only(&database, &secrets)
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
pub use server::redact;
