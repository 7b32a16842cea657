//! `certreg keys`: the keys that sign the operators' tokens for other systems (docs/
//! downstream.md). `rotate` makes a new current key; the previous one stays published until the
//! last token it signed has expired. The first key is made on first use (by the service or
//! by `list`).

use crate::store_cmd::{DatabaseArgs, keys, redact, runtime};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;
use store::Db;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// The published signing keys (kid, created, retired, published until).
    List(DatabaseArgs),
    /// Make a new current signing key; the previous one stays published for a token's life.
    Rotate(DatabaseArgs),
}

fn at(t: Option<OffsetDateTime>) -> serde_json::Value {
    t.and_then(|t| t.format(&Rfc3339).ok()).into()
}

pub fn run(command: KeysCommand) -> Result<ExitCode> {
    let (args, rotate) = match command {
        KeysCommand::List(a) => (a, false),
        KeysCommand::Rotate(a) => (a, true),
    };
    let settings = args.settings()?;
    let backend = store::backend_of(&settings.database_url)?;
    runtime()?.block_on(async {
        // The private keys are encrypted with the database key: a throwaway one would make them
        // unreadable to the service.
        let Some(secrets) = keys(&settings, backend)? else {
            bail!("the signing keys are encrypted with the key file: set --key-file or CERTREG_KEY_FILE");
        };
        let db = Db::connect(&settings.database_url, &secrets)
            .await
            .with_context(|| format!("connecting to {}", redact(&settings.database_url)))?;
        let now = OffsetDateTime::now_utc();
        let ring = web::token::KeyRing::new(std::sync::Arc::new(db.clone()));
        let result = async {
            let rotated = if rotate {
                Some(ring.rotate(now).await?)
            } else {
                // As the service would on its first token: a fresh database gets its first key.
                ring.current_kid(now).await?;
                None
            };
            let keys = db.signing_keys(now).await?;
            Ok::<_, domain::DomainError>((rotated, keys))
        }
        .await;
        db.close().await;
        let (rotated, keys) = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "kid": k.kid,
                    "current": k.retired_at.is_none(),
                    "created_at": at(Some(k.created_at)),
                    "retired_at": at(k.retired_at),
                    "publish_until": at(k.publish_until),
                })
            })
            .collect();
        let mut out = json!({ "ok": true, "keys": keys });
        if let Some(kid) = rotated {
            out["current"] = kid.into();
        }
        println!("{out}");
        Ok(ExitCode::SUCCESS)
    })
}
