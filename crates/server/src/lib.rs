//! certreg's running service, built one way from its settings: the database opened (and
//! migrated) under its keys, its audit chain checked, the domain services over it with the
//! office calendar on file, and the web state the router serves. `certreg serve`, `certreg
//! demo`, the web tests and the benchmarks all build the service with [`build`]; what runs
//! beside it (CRL refresh, notices, session and flow sweeps, calendar reloads) is started by the
//! caller from the handles [`Service`] holds.

use anyhow::{Context, Result, anyhow, bail};
use domain::clock::Clock;
use domain::service::{ServiceConfig, Services};
use domain::store::Backend;
use pki::validate::Validator;
use std::sync::Arc;
use std::time::Duration;
use store::{Db, Secrets};
use web::mail::Mailer;
use web::{AppState, WebConfig};

/// The service's allocator, in every binary that builds the service (`certreg`, the tests, the
/// benchmarks): a request's many short-lived allocations cost a fraction of what glibc's
/// malloc takes for them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long opening the database waits for an answer before giving up with a message.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the running service is made of.
pub struct Settings {
    /// `sqlite://path/certreg.db` or `postgres://…`; the schema is migrated when it is opened.
    pub database_url: String,
    /// The keys of personal data at rest and of the audit chain.
    pub secrets: Secrets,
    /// Trust anchors and the CRLs in force; shared with whoever refreshes the CRLs.
    pub validator: Arc<Validator>,
    /// The clock of every rule (time limits, business days, certificate validity).
    pub clock: Arc<dyn Clock>,
    /// The public origin (card proofs and the Origin check are bound to it), the card agent's
    /// URL, trusted proxies, limits, body size, token audiences.
    pub web: WebConfig,
    /// The version of 用戶約定條款 users agree to.
    pub terms_version: String,
    /// Where expiry and revocation notices go.
    pub mailer: Mailer,
}

impl Settings {
    /// The database, its keys, the validator and the clock; everything else as `certreg
    /// serve` defaults it (web configuration, terms version, no mail).
    pub fn new(
        database_url: impl Into<String>,
        secrets: Secrets,
        validator: Arc<Validator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            secrets,
            validator,
            clock,
            web: WebConfig::default(),
            terms_version: ServiceConfig::default().terms_version,
            mailer: Mailer::Disabled,
        }
    }
}

/// The built service and the handles of what runs beside it.
pub struct Service {
    /// The web state (services, configuration, limiter, metrics, signing keys).
    pub state: AppState,
    /// The database: background tasks, seeding, and closing it after the last request.
    pub db: Db,
    /// The validator the services use: the CRL refresh puts new lists in force here.
    pub validator: Arc<Validator>,
    /// Where notices go.
    pub mailer: Mailer,
}

impl Service {
    /// The public router.
    pub fn router(&self) -> axum::Router {
        web::app(self.state.clone())
    }

    /// The router of the internal address (`/metrics`, the detailed `/healthz`).
    pub fn internal_router(&self) -> axum::Router {
        web::ops::internal_app(self.state.clone())
    }

    /// The store as the web layer and the domain hold it.
    pub fn backend(&self) -> Backend {
        self.state.db().clone()
    }
}

/// Builds the service: opens the database (see [`open`]), loads the office calendar on file,
/// and makes the web state with the public origin and agent URL without a trailing slash.
pub async fn build(settings: Settings) -> Result<Service> {
    let db = open(&settings.database_url, &settings.secrets).await?;
    let origin = settings.web.public_origin.trim_end_matches('/').to_string();
    let svc_config = ServiceConfig {
        origin: origin.clone(),
        terms_version: settings.terms_version,
        ..ServiceConfig::default()
    };
    let svc = Services::with_stored_calendar(
        Arc::new(db.clone()) as Backend,
        settings.clock,
        settings.validator.clone(),
        svc_config,
    )
    .await
    .map_err(|e| anyhow!("{e}"))
    .context("loading the office calendar")?;
    for w in svc.calendar_warnings() {
        tracing::warn!("{w}");
    }
    let agent_url = settings.web.agent_url.trim_end_matches('/').to_string();
    let web_config = WebConfig {
        public_origin: origin,
        agent_url,
        ..settings.web
    };
    Ok(Service {
        state: AppState::new(svc, web_config),
        db,
        validator: settings.validator,
        mailer: settings.mailer,
    })
}

/// Opens (and migrates) the database within [`CONNECT_TIMEOUT`]; the message names the
/// database (without its password). A chain of audit rows not keyed under `secrets` is refused.
pub async fn open(url: &str, secrets: &Secrets) -> Result<Db> {
    let db = tokio::time::timeout(CONNECT_TIMEOUT, Db::connect(url, secrets))
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot open the database {}", redact(url)))?;
    // Rows not keyed under the key file at the chain's head are either a chain written before
    // the log was keyed or a rewrite: the service does not take them in by itself. Sealing is
    // the operator's step (`certreg migrate`, after `certreg audit verify` and a look at them).
    let (seq, hash) = db
        .audit_head()
        .await
        .map_err(|e| anyhow!("reading the audit chain head: {e}"))?;
    if seq > 0 && !store::audit::is_keyed(&hash) {
        db.close().await;
        bail!(
            "the audit chain (up to row {seq}) ends in rows not keyed under the key file: \
             check them with `certreg audit verify`, then seal them with `certreg migrate` \
             (see README)"
        );
    }
    Ok(db)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_never_reaches_a_message() {
        use super::redact as r;
        assert_eq!(
            r("postgres://certreg:secret@db:5432/certreg"),
            "postgres://certreg@db:5432/certreg"
        );
        assert_eq!(r("postgres://certreg@db/x"), "postgres://certreg@db/x");
        assert_eq!(r("sqlite://data/certreg.db"), "sqlite://data/certreg.db");
    }
}
