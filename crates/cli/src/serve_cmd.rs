//! `certreg serve`: the web service from the settings (defaults → TOML file → `CERTREG_*`):
//! database, trust anchors, CRLs loaded at start and refreshed on an interval, structured logs,
//! graceful shutdown on Ctrl-C or SIGTERM. The service itself is built by [`server::build`];
//! `certreg demo` builds on the same pieces.

use crate::config::{LogFormat, Settings};
use crate::store_cmd::{DatabaseArgs, redact};
use anyhow::{Context, Result};
use clap::Args;
use domain::clock::{Clock, SystemClock};
use pki::anchors::TrustStore;
use pki::revocation::StalePolicy;
use pki::validate::{ValidationOptions, Validator};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use store::{Db, Secrets};
use tokio::net::TcpListener;
use web::WebConfig;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Address to listen on (over `listen` / CERTREG_LISTEN), e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// What to log: `RUST_LOG` (`level`, `target=level`, comma-separated) or else `default`. A
/// `RUST_LOG` that does not parse is named on stderr and the default applies.
pub fn log_filter(default: &str) -> tracing_subscriber::filter::Targets {
    log_filter_of(std::env::var("RUST_LOG").ok().as_deref(), default)
}

fn log_filter_of(rust_log: Option<&str>, default: &str) -> tracing_subscriber::filter::Targets {
    let parse = |s: &str| s.parse::<tracing_subscriber::filter::Targets>();
    match rust_log {
        Some(v) if !v.trim().is_empty() => parse(v).unwrap_or_else(|e| {
            eprintln!("certreg: RUST_LOG={v:?} does not parse ({e}); logging {default}");
            parse(default).unwrap_or_default()
        }),
        _ => parse(default).unwrap_or_default(),
    }
}

/// Logs on stderr in the configured format; `RUST_LOG` chooses what (default `default_filter`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry().with(log_filter(default_filter));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A second initialisation (never in the binary) is not worth failing over.
    let _ = match format {
        LogFormat::Json => registry
            .with(layer.json().with_current_span(true).with_span_list(false))
            .try_init(),
        LogFormat::Compact => registry
            .with(
                layer
                    .compact()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
}

use crate::crl_cmd::load_crls;

/// What the revocation work beside the service acts on.
pub struct RevocationWork {
    pub validator: Arc<Validator>,
    pub db: Db,
    pub mailer: web::mail::Mailer,
    /// The time of every refresh and sweep.
    pub clock: Arc<dyn Clock>,
}

/// How often the sessions are swept between CRL refreshes when the validator has an online
/// check (`revocation` other than `crl`, or `crl_source = "distribution_point"`): OCSP answers
/// and distribution point CRLs run out on their own schedule, not the refresh's.
pub const ONLINE_SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);

/// How often the sessions are swept besides the CRL refreshes: [`ONLINE_SWEEP_EVERY`] when
/// `validator` has an online check, never otherwise.
pub fn online_sweep(validator: &Validator) -> Option<Duration> {
    validator.has_online().then_some(ONLINE_SWEEP_EVERY)
}

/// Re-reads the CRL sources every `every` and puts them in force; a failed refresh keeps what
/// is in force (the health check shows when it goes stale).
/// After each refresh (and once at start, as sessions outlive a restart) the operator and
/// administrator sessions whose certificate is revoked end (see
/// [`web::session::end_revoked_sessions`]), and the expiry and revocation notices not yet sent
/// today go out. With `sweep_every`, the sessions are swept that often besides, whether or not
/// a refresh happens (a sweep and a refresh never run at once).
pub async fn refresh_crls(
    work: RevocationWork,
    sources: Vec<String>,
    mut last_good: HashMap<String, std::sync::Arc<pki::revocation::CrlEntry>>,
    every: Duration,
    sweep_every: Option<Duration>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = sweep_every.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    // The first tick is immediate and the CRLs were just loaded.
    tick.tick().await;
    after_refresh(&work).await;
    loop {
        let swept = async {
            match sweep.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                let now = work.clock.now();
                match load_crls(&sources, &mut last_good, work.validator.trust(), now).await {
                    Ok(store) => {
                        tracing::info!(crls = store.entries().len(), next_update = ?store.earliest_next_update(), "CRLs refreshed");
                        work.validator.replace_crls(store);
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "CRL refresh failed"),
                }
                after_refresh(&work).await;
            }
            _ = swept => end_revoked_sessions(&work).await,
        }
    }
}

async fn end_revoked_sessions(work: &RevocationWork) {
    let backend: domain::store::Backend = Arc::new(work.db.clone());
    match web::session::end_revoked_sessions(&backend, &work.validator, work.clock.now()).await {
        Ok(n) if n > 0 => {
            tracing::info!(ended = n, "sessions resting on revoked certificates ended")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ending sessions of revoked certificates"),
    }
}

async fn after_refresh(work: &RevocationWork) {
    end_revoked_sessions(work).await;
    let now = work.clock.now();
    if let Err(e) = domain::notices::notify_once(&work.db, &work.validator, now, &work.mailer).await
    {
        tracing::warn!(error = %e, "expiry notices");
    }
}

/// Deletes expired sessions and day-old idle flows (with their challenges) now and then.
async fn sweep_sessions(db: Db) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc();
        match db.session_delete_expired(now).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "expired sessions deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deleting expired sessions"),
        }
        match db.flow_delete_idle(now - FLOW_KEPT).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "idle flows deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deleting idle flows"),
        }
    }
}

/// Re-reads the office calendar from the database every 10 minutes and on SIGHUP, so a
/// `certreg calendar import` (by any process, on the same database) reaches every running
/// instance; a failed read keeps the calendar in use.
async fn reload_calendar(state: web::AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.tick().await; // the first tick is immediate: the calendar was just loaded
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = hup => tracing::info!("SIGHUP: reloading the office calendar"),
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        let before = state.svc().calendar_years();
        match state.svc().reload_calendar().await {
            Ok(years) if years != before => {
                tracing::info!(?years, "office calendar reloaded");
                for w in state.svc().calendar_warnings() {
                    tracing::warn!("{w}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reloading the office calendar"),
        }
    }
}

/// How long an idle flow is kept: it expires after 15 minutes, and for the rest of the day its
/// page still says 「作業已逾時」 rather than that the flow does not exist.
const FLOW_KEPT: time::Duration = time::Duration::days(1);

/// The key file of the settings, created (with the data directories) on a first start.
fn secrets(settings: &Settings) -> Result<Secrets> {
    store::backend_of(&settings.database_url)?;
    // Personal data is encrypted at rest: the service never runs without its key.
    let key = settings.key_path()?;
    // A fresh SQLite data directory is created with its key, as a first start expects.
    let sqlite_dir =
        store::sqlite_path(&settings.database_url).and_then(|p| p.parent().map(Path::to_path_buf));
    for dir in sqlite_dir
        .iter()
        .chain(key.parent().map(Path::to_path_buf).as_ref())
    {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            // Owner-only: it holds the database and the key file.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Secrets::load_or_create(&key).with_context(|| format!("key file {}", key.display()))
}

/// The validator of `certreg serve`: `trust`, the configured CRLs in force, the stale policy
/// of `accept_stale_crl`, and the revocation checks of `revocation` and `crl_source` over
/// `transports` (see [`pki::online::wire`]), with the path cache.
pub fn validator(
    trust: TrustStore,
    crls: pki::revocation::CrlStore,
    settings: &Settings,
    transports: pki::online::Transports,
) -> Arc<Validator> {
    let options = ValidationOptions {
        stale_crl: if settings.accept_stale_crl {
            StalePolicy::Warn
        } else {
            StalePolicy::Reject
        },
        ..ValidationOptions::default()
    };
    pki::online::wire(
        trust,
        crls,
        options,
        &settings.revocation_settings(),
        transports,
    )
}

/// The service built from the settings, and the CRLs as loaded for the refresh task to fall
/// back on.
pub struct Serving {
    pub service: server::Service,
    pub crl_copies: HashMap<String, std::sync::Arc<pki::revocation::CrlEntry>>,
}

/// Builds the service from the settings: trust anchors and CRLs, the key file, then
/// [`server::build`] on the system clock. `public_origin` and `agent_url` of `settings` are
/// used as they are (the demo sets them after binding); notices go where `smtp_host` says.
pub async fn build(settings: &Settings) -> Result<Serving> {
    let trust = TrustStore::load_dir(&settings.anchors_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "trust anchors {} (a directory with manifest.toml)",
                settings.anchors_dir.display()
            )
        })?;
    let mut crl_copies = HashMap::new();
    let crls = load_crls(
        &settings.crls,
        &mut crl_copies,
        &trust,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    let revocation = settings.revocation_settings();
    if crls.is_empty() && pki::online::crl_in_path(&revocation) {
        tracing::warn!(
            "no CRLs configured (`crls`): every card will be refused as revocation_unknown"
        );
    }
    tracing::info!(
        revocation = revocation.policy.as_str(),
        crl_source = revocation.crl_source.as_str(),
        "revocation checks"
    );
    let validator = validator(trust, crls, settings, pki::online::Transports::default());
    let secrets = secrets(settings)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let service = server::build(server::Settings {
        web: WebConfig {
            public_origin: settings.public_origin.clone(),
            agent_url: settings.agent_url.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            internal_ops: settings.internal_listen.is_some(),
            token_audiences: settings.token_audiences.clone(),
            operator_token_page: settings.operator_token_page,
            terms: settings.terms()?,
            ..WebConfig::default()
        },
        terms_version: settings.terms_version.clone(),
        mailer: settings.mailer()?,
        ..server::Settings::new(settings.database_url.clone(), secrets, validator, clock)
    })
    .await?;
    Ok(Serving {
        service,
        crl_copies,
    })
}

/// Serves the built service on `listener` until `shutdown`, with the CRL refresh, the
/// session sweep and the calendar reload running beside it; closes the database after the last
/// request.
pub async fn run(
    listener: TcpListener,
    serving: Serving,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Serving {
        service,
        crl_copies,
    } = serving;
    let refresh = tokio::spawn(refresh_crls(
        RevocationWork {
            validator: service.validator.clone(),
            db: service.db.clone(),
            mailer: service.mailer.clone(),
            clock: Arc::new(SystemClock),
        },
        settings.crls.clone(),
        crl_copies,
        Duration::from_secs(settings.crl_refresh_minutes * 60),
        online_sweep(&service.validator),
    ));
    let sweep = tokio::spawn(sweep_sessions(service.db.clone()));
    let calendar = tokio::spawn(reload_calendar(service.state.clone()));
    let served = axum::serve(
        listener,
        service
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    refresh.abort();
    sweep.abort();
    calendar.abort();
    service.db.close().await;
    served.context("serving")
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let mut settings = args.db.settings()?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    init_logging(settings.log_format, "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    settings.check_serving_origin()?;
    runtime.block_on(async {
        let serving = build(&settings).await?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        if let Some(internal) = &settings.internal_listen {
            let internal_listener = TcpListener::bind(internal)
                .await
                .with_context(|| format!("cannot listen on {internal} (internal_listen)"))?;
            let addr = internal_listener.local_addr()?;
            let app = serving.service.internal_router();
            // Lives as long as the process: the public server's end ends it.
            tokio::spawn(async move {
                if let Err(e) = axum::serve(internal_listener, app).await {
                    tracing::error!(error = %e, "the internal listener stopped");
                }
            });
            println!("certreg internal on http://{addr}");
        }
        let addr = listener.local_addr()?;
        tracing::info!(%addr, origin = %settings.public_origin, database = %redact(&settings.database_url), "certreg serving");
        // One line on stdout for scripts (and tests) that asked for port 0.
        println!("certreg listening on http://{addr}");
        run(
            listener,
            serving,
            &settings,
            crate::agent_cmd::shutdown_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::log_filter_of;
    use tracing::Level;

    mod sweep {
        use super::super::{RevocationWork, online_sweep, refresh_crls};
        use domain::clock::FixedClock;
        use domain::service::OperatorGrant;
        use domain::store::{SessionRecord, Store as _};
        use pki::online::{CrlSource, RevocationPolicy, RevocationSettings};
        use pki::revocation::CrlStore;
        use pki::serial::CertSerial;
        use pki::validate::{CrlMode, OnlineStatus, ValidationOptions, Validator};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::time::Duration;
        use time::OffsetDateTime;
        use time::macros::datetime;

        const NOW: OffsetDateTime = datetime!(2026-06-01 02:00 UTC);

        /// An online check that has judged every certificate: asked again after the test has
        /// had its sources revoke them, it learns that they are. Counts how often it is asked.
        #[derive(Default)]
        struct Revokes {
            now: AtomicBool,
            learned: AtomicBool,
            asked: AtomicUsize,
        }

        impl OnlineStatus for Revokes {
            fn check(
                &self,
                _cert: &pki::facts::ParsedCert,
                _issuer: &pki::facts::ParsedCert,
                _now: OffsetDateTime,
            ) -> pki::error::Result<()> {
                Ok(())
            }

            fn revoked(
                &self,
                _issuer: Option<&str>,
                _serial: &CertSerial,
            ) -> Option<OffsetDateTime> {
                self.learned.load(Ordering::SeqCst).then_some(NOW)
            }

            fn ask_again(
                &self,
                issuer: Option<&str>,
                serial: &CertSerial,
                _now: OffsetDateTime,
            ) -> Option<OffsetDateTime> {
                if self.now.load(Ordering::SeqCst) {
                    self.learned.store(true, Ordering::SeqCst);
                }
                self.asked.fetch_add(1, Ordering::SeqCst);
                self.revoked(issuer, serial)
            }
        }

        #[test]
        fn the_sessions_are_swept_between_refreshes_only_with_an_online_check() {
            let pki = testpki::TestPki::generate(testpki::TestPkiOptions::new(NOW)).unwrap();
            let wired = |policy, crl_source| {
                pki::online::wire(
                    pki.trust_store().unwrap(),
                    CrlStore::new(),
                    ValidationOptions::default(),
                    &RevocationSettings {
                        policy,
                        crl_source,
                        ..RevocationSettings::default()
                    },
                    pki::online::Transports::default(),
                )
            };
            use {CrlSource::*, RevocationPolicy::*};
            assert_eq!(online_sweep(&wired(Crl, Configured)), None);
            for (policy, source) in [
                (Crl, DistributionPoint),
                (Ocsp, Configured),
                (CrlAndOcsp, Configured),
                (CrlAndOcsp, DistributionPoint),
                (CrlOrOcsp, Configured),
                (CrlOrOcsp, DistributionPoint),
            ] {
                assert_eq!(
                    online_sweep(&wired(policy, source)),
                    Some(super::super::ONLINE_SWEEP_EVERY),
                    "{policy:?} {source:?}"
                );
            }
        }

        /// Runs the refresh task (sources none, every hour; the sweep, if any, every 20 ms)
        /// over one operator's session while the online check turns to "revoked"; whether the
        /// session is gone within three seconds.
        async fn ended_without_a_refresh(sweep_every: Option<Duration>) -> bool {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
            let db = store::Db::connect(&url, &store::Secrets::generate().unwrap())
                .await
                .unwrap();
            let grant = OperatorGrant {
                code: domain::types::InstitutionCode::parse("A0001").unwrap(),
                operator_id: 1,
                serial: CertSerial::parse("0A1B").unwrap(),
                issuer: Some("CN=MOICA".into()),
                name: "林志明".into(),
                functions: Vec::new(),
            };
            let data = web::session::SessionData {
                operator: Some(grant),
                ..Default::default()
            };
            db.session_insert(&SessionRecord {
                id: domain::store::session_key("operator"),
                kind: "operator".into(),
                code: Some("A0001".into()),
                data: serde_json::to_string(&data).unwrap(),
                created_at: NOW,
                touched_at: NOW,
                expires_at: NOW + time::Duration::minutes(15),
                version: 1,
            })
            .await
            .unwrap();
            let online = Arc::new(Revokes::default());
            let validator = Arc::new(
                Validator::new(
                    pki::anchors::TrustStore::new(),
                    CrlStore::new(),
                    ValidationOptions {
                        crl: CrlMode::Off,
                        ..ValidationOptions::default()
                    },
                )
                .with_online(online.clone()),
            );
            let task = tokio::spawn(refresh_crls(
                RevocationWork {
                    validator,
                    db: db.clone(),
                    mailer: web::mail::Mailer::Disabled,
                    clock: Arc::new(FixedClock::new(NOW)),
                },
                Vec::new(),
                Default::default(),
                Duration::from_secs(3600),
                sweep_every,
            ));
            let live = || async { db.sessions_live(NOW).await.unwrap().len() };
            // The session is ended when it is gone and the audit says why.
            let ended = || async {
                let events = db
                    .audit_search(&store::AuditFilter {
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                live().await == 0
                    && events.iter().any(|(_, e)| {
                        e.action == "session.end" && e.detail["reason"] == "certificate_revoked"
                    })
            };
            // The sweeps at start and, with `sweep_every`, two after it find nothing revoked.
            let sweeps = if sweep_every.is_some() { 3 } else { 1 };
            while online.asked.load(Ordering::SeqCst) < sweeps {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(live().await, 1);
            online.now.store(true, Ordering::SeqCst);
            let mut gone = false;
            for _ in 0..150 {
                if ended().await {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            task.abort();
            db.close().await;
            gone
        }

        #[tokio::test]
        async fn an_online_check_sweeps_the_sessions_without_a_crl_refresh() {
            assert!(ended_without_a_refresh(Some(Duration::from_millis(20))).await);
            assert!(!ended_without_a_refresh(None).await);
        }
    }

    #[test]
    fn rust_log_chooses_what_is_logged_and_junk_falls_back_to_the_default() {
        let f = log_filter_of(Some("debug"), "warn");
        assert!(f.would_enable("web", &Level::DEBUG));
        let f = log_filter_of(Some("warn,web=trace"), "warn");
        assert!(
            f.would_enable("web::api", &Level::TRACE) && !f.would_enable("store", &Level::INFO)
        );
        for unset in [None, Some(""), Some("web=nonsense")] {
            let f = log_filter_of(unset, "warn");
            assert!(f.would_enable("web", &Level::WARN), "{unset:?}");
            assert!(!f.would_enable("web", &Level::INFO), "{unset:?}");
        }
    }
}
