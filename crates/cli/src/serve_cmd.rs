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

/// Re-reads the CRL sources every `every` and puts them in force; a failed refresh keeps what
/// is in force (the health check shows when it goes stale).
/// After each refresh (and once at start, as sessions outlive a restart) the operator
/// sessions whose certificate is revoked on the CRLs in force are ended, and the expiry and
/// revocation notices not yet sent today go out.
pub async fn refresh_crls(
    validator: Arc<Validator>,
    db: Db,
    mailer: web::mail::Mailer,
    sources: Vec<String>,
    mut last_good: HashMap<String, std::sync::Arc<pki::revocation::CrlEntry>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and the CRLs were just loaded.
    tick.tick().await;
    after_refresh(&validator, &db, &mailer).await;
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc();
        match load_crls(&sources, &mut last_good, validator.trust(), now).await {
            Ok(store) => {
                tracing::info!(crls = store.entries().len(), next_update = ?store.earliest_next_update(), "CRLs refreshed");
                validator.replace_crls(store);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "CRL refresh failed"),
        }
        after_refresh(&validator, &db, &mailer).await;
    }
}

async fn after_refresh(validator: &Arc<Validator>, db: &Db, mailer: &web::mail::Mailer) {
    let now = time::OffsetDateTime::now_utc();
    let backend: domain::store::Backend = Arc::new(db.clone());
    match web::session::end_revoked_sessions(&backend, validator, now).await {
        Ok(n) if n > 0 => {
            tracing::info!(ended = n, "operator sessions of revoked certificates ended")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ending sessions of revoked certificates"),
    }
    if let Err(e) = domain::notices::notify_once(db, validator, now, mailer).await {
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
        service.validator.clone(),
        service.db.clone(),
        service.mailer.clone(),
        settings.crls.clone(),
        crl_copies,
        Duration::from_secs(settings.crl_refresh_minutes * 60),
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
