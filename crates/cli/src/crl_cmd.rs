//! CRL sources (files, or `http://` URLs): loaded by `serve` at start and on its refresh
//! interval, and by `certreg crl refresh`, which reports each one.

use crate::store_cmd::DatabaseArgs;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use pki::anchors::TrustStore;
use pki::revocation::{CrlEntry, CrlStore};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

/// A CRL fetched over HTTP is at most this large (GPKI's largest full CRLs are a few MiB).
pub(crate) const MAX_CRL_DOWNLOAD: usize = 32 * 1024 * 1024;
pub(crate) const CRL_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum CrlCommand {
    /// Load the configured CRL sources (`crls`) as `serve` does, one JSON line per source
    /// (issuer, this_update, next_update, entries); exit 1 if any source failed.
    Refresh(DatabaseArgs),
}

/// How far ahead of the clock a CRL's thisUpdate may be (issuers' clocks drift a little).
const CRL_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The CRLs of `sources` (files, or `http://` URLs), each read afresh at `now`. A source whose
/// read fails, whose bytes are not a CRL signed by a CA of `trust` named as its issuer, whose
/// thisUpdate lies ahead of `now`, or whose CRL is older (by thisUpdate) than its last good
/// copy in `last_good` keeps that copy: a replayed old CRL must not bring back certificates
/// revoked since, and a forged one dated in the future must not stand in for every later one.
/// With no good copy the whole load fails. Each download is read once; the copies kept are the
/// CRLs as read (their serial index), shared with the store, not their bytes.
pub async fn load_crls(
    sources: &[String],
    last_good: &mut HashMap<String, Arc<CrlEntry>>,
    trust: &TrustStore,
    now: time::OffsetDateTime,
) -> Result<CrlStore> {
    let mut store = CrlStore::new();
    for source in sources {
        let fetched = fetch(source)
            .await
            .and_then(|bytes| checked(bytes, trust, now));
        let previous = last_good.get(source).cloned();
        let entry = match (fetched, previous) {
            // The same list again: the copy in force stays.
            (Ok(fresh), Some(old)) if fresh.sha256 == old.sha256 => old,
            // A refresh never goes back (not to an earlier thisUpdate, not to a lower number)
            // and never turns a source into another CA's list or partition.
            (Ok(fresh), Some(old)) if fresh.same_scope(&old) && fresh.supersedes(&old) => fresh,
            (Ok(fresh), Some(old)) => {
                tracing::warn!(
                    source,
                    this_update = %rfc3339(fresh.this_update),
                    number = ?fresh.number,
                    kept_this_update = %rfc3339(old.this_update),
                    kept_number = ?old.number,
                    issuer = %fresh.issuer,
                    kept_issuer = %old.issuer,
                    "CRL older than the one in force, or of another issuer or partition; keeping the last good copy"
                );
                old
            }
            (Err(e), Some(old)) => {
                tracing::warn!(source, error = %format!("{e:#}"), "CRL refresh failed; keeping the last good copy");
                old
            }
            (Ok(fresh), None) => fresh,
            (Err(e), None) => return Err(e),
        };
        let added = store
            .insert(entry.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("CRL {source}"))?;
        tracing::debug!(source, issuer = %added.issuer, next_update = ?added.next_update, "CRL loaded");
        last_good.insert(source.clone(), entry);
    }
    Ok(store)
}

/// The CRL of `bytes` if it is signed by a CA of `trust` named as its issuer and not dated
/// ahead of `now`, or why the bytes are not such a CRL. The bytes are let go once read.
fn checked(bytes: Vec<u8>, trust: &TrustStore, now: time::OffsetDateTime) -> Result<Arc<CrlEntry>> {
    let mut one = CrlStore::new();
    one.add_owned(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let entry = one
        .into_entries()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no CRL"))?;
    if !trust
        .keys_named(&entry.issuer)
        .iter()
        .any(|k| entry.signed_by(k))
    {
        bail!(
            "CRL of {} is not signed by a trusted CA of that name",
            entry.issuer
        );
    }
    if entry.this_update > now + CRL_CLOCK_SKEW {
        bail!(
            "CRL of {} is dated {} (thisUpdate), ahead of the clock",
            entry.issuer,
            rfc3339(entry.this_update)
        );
    }
    Ok(entry)
}

/// One source's bytes: a file read or an `http://` download.
pub async fn fetch(source: &str) -> Result<Vec<u8>> {
    if source.starts_with("http://") || source.starts_with("HTTP://") {
        let url = source.to_string();
        // The client is blocking std I/O with its own deadline; keep it off the async workers.
        return tokio::task::spawn_blocking(move || {
            pki::ocsp::http_get(&url, CRL_FETCH_TIMEOUT, MAX_CRL_DOWNLOAD)
        })
        .await
        .context("CRL download task")?
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("fetching CRL {source}"));
    }
    if source.contains("://") {
        bail!("CRL source {source:?}: only files and http:// URLs are supported");
    }
    tokio::fs::read(source)
        .await
        .with_context(|| format!("reading CRL {source}"))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The report line of one source: what was read from it, or why it failed.
async fn report(source: &str) -> (bool, serde_json::Value) {
    let parsed = async {
        let bytes = fetch(source).await?;
        let mut one = CrlStore::new();
        let entry = one
            .add(&bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("CRL {source}"))?;
        Ok::<_, anyhow::Error>(serde_json::json!({
            "source": source,
            "issuer": entry.issuer,
            "this_update": rfc3339(entry.this_update),
            "next_update": entry.next_update.map(rfc3339),
            "entries": entry.revoked,
            "sha256": entry.sha256,
        }))
    }
    .await;
    match parsed {
        Ok(v) => (true, v),
        Err(e) => (
            false,
            serde_json::json!({ "source": source, "error": format!("{e:#}") }),
        ),
    }
}

pub fn run(command: CrlCommand) -> Result<ExitCode> {
    match command {
        CrlCommand::Refresh(args) => {
            let settings = args.settings()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let mut ok = true;
            if settings.crls.is_empty() {
                eprintln!("certreg: no CRLs configured (`crls` / CERTREG_CRLS)");
            }
            for source in &settings.crls {
                let (good, line) = runtime.block_on(report(source));
                ok &= good;
                println!("{line}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testpki::{CaKind, TestPki, TestPkiOptions};
    use time::macros::datetime;

    fn last_issuer(crl: &[u8]) -> String {
        let mut one = CrlStore::new();
        one.add(crl).unwrap().issuer.clone()
    }

    #[tokio::test]
    async fn a_refresh_keeps_the_newer_crl_against_an_older_or_garbage_download() {
        let now = datetime!(2026-06-01 02:00 UTC);
        let pki = TestPki::generate(TestPkiOptions::new(now)).unwrap();
        let trust = pki.trust_store().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gca.crl");
        let source = path.display().to_string();
        let day = time::Duration::days(1);
        let newer = pki.crl_for(CaKind::Gca, now, now + day);
        let older = pki.crl_for(CaKind::Gca, now - day, now + day);
        let mut last_good = HashMap::new();

        std::fs::write(&path, &newer).unwrap();
        let store = load_crls(std::slice::from_ref(&source), &mut last_good, &trust, now)
            .await
            .unwrap();
        assert_eq!(store.entries()[0].this_update, now);

        // An older CRL (a replay) does not replace the one in force.
        std::fs::write(&path, &older).unwrap();
        let store = load_crls(std::slice::from_ref(&source), &mut last_good, &trust, now)
            .await
            .unwrap();
        assert_eq!(store.entries()[0].this_update, now);
        assert_eq!(last_good[&source].sha256, pki::facts::sha256_hex(&newer));

        // Nor does a later one numbered lower (a CA's number never goes back: this is a
        // replay with a forged date, or a misissued list).
        let renumbered = testpki::crl_from(
            pki.ca(CaKind::Gca),
            &testpki::CrlSpec {
                number: vec![1],
                ..testpki::CrlSpec::new(now + time::Duration::minutes(10), now + day)
            },
        );
        std::fs::write(&path, &renumbered).unwrap();
        let store = load_crls(
            std::slice::from_ref(&source),
            &mut last_good,
            &trust,
            now + day,
        )
        .await
        .unwrap();
        assert_eq!(store.entries()[0].this_update, now);
        assert_eq!(last_good[&source].sha256, pki::facts::sha256_hex(&newer));

        // Nor does another CA's genuine CRL served at this source, however new: the source
        // keeps speaking for its own CA.
        let other = pki.crl_for(CaKind::Moica, now + day, now + day * 2);
        std::fs::write(&path, &other).unwrap();
        let store = load_crls(
            std::slice::from_ref(&source),
            &mut last_good,
            &trust,
            now + day,
        )
        .await
        .unwrap();
        assert_eq!(store.entries()[0].issuer, last_issuer(&newer));
        assert_eq!(last_good[&source].sha256, pki::facts::sha256_hex(&newer));

        // Garbage, or a failed read, keeps it too.
        std::fs::write(&path, b"not a CRL").unwrap();
        let store = load_crls(std::slice::from_ref(&source), &mut last_good, &trust, now)
            .await
            .unwrap();
        assert_eq!(store.entries()[0].this_update, now);
        std::fs::remove_file(&path).unwrap();
        let store = load_crls(std::slice::from_ref(&source), &mut last_good, &trust, now)
            .await
            .unwrap();
        assert_eq!(store.entries()[0].this_update, now);

        // A later one is taken (by a refresh a day later).
        let later = pki.crl_for(CaKind::Gca, now + day, now + day * 2);
        std::fs::write(&path, &later).unwrap();
        let store = load_crls(
            std::slice::from_ref(&source),
            &mut last_good,
            &trust,
            now + day,
        )
        .await
        .unwrap();
        assert_eq!(store.entries()[0].this_update, now + day);

        // A CRL of the same issuer name signed by another key (a forged download), or one
        // dated ahead of the clock, does not replace it: a later genuine CRL is still taken.
        let impostor = TestPki::generate(TestPkiOptions::new(now)).unwrap();
        for forged in [
            impostor.crl_for(CaKind::Gca, now + day * 2, now + day * 3),
            pki.crl_for(CaKind::Gca, now + day * 365, now + day * 366),
        ] {
            std::fs::write(&path, &forged).unwrap();
            let store = load_crls(
                std::slice::from_ref(&source),
                &mut last_good,
                &trust,
                now + day * 2,
            )
            .await
            .unwrap();
            assert_eq!(store.entries()[0].this_update, now + day);
            assert_eq!(last_good[&source].sha256, pki::facts::sha256_hex(&later));
        }
        let latest = pki.crl_for(CaKind::Gca, now + day * 2, now + day * 3);
        std::fs::write(&path, &latest).unwrap();
        let store = load_crls(
            std::slice::from_ref(&source),
            &mut last_good,
            &trust,
            now + day * 2,
        )
        .await
        .unwrap();
        assert_eq!(store.entries()[0].this_update, now + day * 2);

        // Without a good copy, garbage or a forged CRL fails the load.
        std::fs::write(&path, impostor.crl_for(CaKind::Gca, now, now + day)).unwrap();
        assert!(
            load_crls(
                std::slice::from_ref(&source),
                &mut HashMap::new(),
                &trust,
                now
            )
            .await
            .is_err()
        );
        std::fs::write(&path, b"not a CRL").unwrap();
        assert!(
            load_crls(&[source], &mut HashMap::new(), &trust, now)
                .await
                .is_err()
        );
    }
}
