//! `certreg agent …`: runs the local card agent (HiPKI protocol on 127.0.0.1) over soft cards or
//! PKCS#11 modules, and chooses which soft cards are "in a reader".

use agent::backend::CardBackend;
use agent::server::{AgentConfig, DEFAULT_MAX_BODY, DEFAULT_PORT};
use agent::softcard::{SoftCards, reader_description};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// TCP port on 127.0.0.1 and [::1] (the agent never listens on other interfaces, and does
    /// not start while another program holds the port on either loopback).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Serve the PKCS#12 soft cards of this folder (`cards/` of `certreg pki generate`).
    #[arg(long, value_name = "DIR")]
    soft_cards: Option<PathBuf>,
    /// Soft-card state file (default `<DIR>/agent-state.json`).
    #[arg(long, value_name = "FILE", requires = "soft_cards")]
    state: Option<PathBuf>,
    /// Serve the tokens of this PKCS#11 module (repeatable).
    #[arg(long = "pkcs11", value_name = "MODULE_PATH")]
    pkcs11: Vec<PathBuf>,
    /// Origin whose pages may use the agent, e.g. https://certreg.example.gov.tw (repeatable).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Sign for local programs that send no Origin header (any site's challenge). Not a
    /// security boundary against local programs: any program on this machine can send an allowed
    /// site's Origin header with or without this flag; the PIN, the certreg-challenge-only rule
    /// and the wait after a wrong PIN are what hold such a program back.
    #[arg(long)]
    allow_no_origin: bool,
    /// Accept plain http:// origins on hosts other than the loopback in --allow-origin.
    #[arg(long)]
    allow_insecure_origin: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Soft cards: list them, put one into a reader, take one out.
    Cards {
        #[command(subcommand)]
        command: CardsCommand,
    },
}

#[derive(Args)]
struct CardsDir {
    /// The soft-card folder.
    #[arg(long, value_name = "DIR")]
    soft_cards: PathBuf,
    /// Soft-card state file (default `<DIR>/agent-state.json`).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CardsCommand {
    /// One JSON line per card: name, card number, reader, wrong PINs, locked.
    List {
        #[command(flatten)]
        dir: CardsDir,
    },
    /// Put card NAME (file NAME.p12) into the lowest free reader.
    Insert {
        name: String,
        #[command(flatten)]
        dir: CardsDir,
    },
    /// Take card NAME out of its reader.
    Eject {
        name: String,
        #[command(flatten)]
        dir: CardsDir,
    },
}

fn open_soft_cards(dir: &Path, state: Option<&Path>) -> Result<SoftCards> {
    let cards = match state {
        Some(s) => SoftCards::open_with_state(dir, s),
        None => SoftCards::open(dir),
    };
    cards.with_context(|| format!("{} is not a soft-card folder", dir.display()))
}

/// The PKCS#11 backend. This is the only place that knows it is missing: when
/// `agent::pkcs11` lands, the body becomes
/// `Ok(Arc::new(agent::pkcs11::Pkcs11Backend::open(modules)?))`.
fn open_pkcs11(modules: &[PathBuf]) -> Result<Arc<dyn CardBackend>> {
    Ok(Arc::new(agent::pkcs11::Pkcs11Backend::open(modules)?))
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    match args.command {
        Some(AgentCommand::Cards { command }) => cards(command),
        None => serve(args.serve),
    }
}

fn cards(command: CardsCommand) -> Result<ExitCode> {
    match command {
        CardsCommand::List { dir } => {
            let cards = open_soft_cards(&dir.soft_cards, dir.state.as_deref())?;
            let mut out = std::io::stdout().lock();
            for c in cards.cards()? {
                let line = json!({
                        "name": c.name,
                        "card_number": c.card_number,
                        "reader": c.reader,
                        "slotDescription": c.reader.map(reader_description),
                        "wrong_pins": c.wrong_pins,
                        "locked": c.locked,
                    "problem": c.problem,
                });
                // A closed pipe (`| head`) ends the listing; it is not an error.
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
        }
        CardsCommand::Insert { name, dir } => {
            let cards = open_soft_cards(&dir.soft_cards, dir.state.as_deref())?;
            let reader = cards
                .insert(&name)
                .with_context(|| format!("cannot insert {name}"))?;
            println!(
                "{}",
                json!({"inserted": name, "reader": reader, "slotDescription": reader_description(reader)})
            );
        }
        CardsCommand::Eject { name, dir } => {
            let cards = open_soft_cards(&dir.soft_cards, dir.state.as_deref())?;
            let was_in = cards
                .eject(&name)
                .with_context(|| format!("cannot eject {name}"))?;
            println!("{}", json!({"ejected": name, "was_inserted": was_in}));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM from a service manager.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("stopping");
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    {
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(crate::serve_cmd::log_filter("info"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
    let (backend, soft_cards): (Arc<dyn CardBackend>, Option<Arc<SoftCards>>) =
        match (&args.soft_cards, args.pkcs11.is_empty()) {
            (Some(_), false) => bail!("choose --soft-cards or --pkcs11, not both"),
            (Some(dir), true) => {
                let cards = Arc::new(open_soft_cards(dir, args.state.as_deref())?);
                (cards.clone(), Some(cards))
            }
            (None, false) => (open_pkcs11(&args.pkcs11)?, None),
            (None, true) => bail!("give --soft-cards DIR or --pkcs11 MODULE_PATH"),
        };
    if args.allow_origin.is_empty() {
        tracing::warn!(
            "no --allow-origin: only local programs and the agent's own pages are answered"
        );
    }
    let config = AgentConfig {
        port: args.port,
        allowed_origins: args.allow_origin,
        max_body: args.max_body,
        allow_no_origin: args.allow_no_origin,
        allow_insecure_origin: args.allow_insecure_origin,
        ..AgentConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = agent::server::bind(config.port)
            .await
            .with_context(|| format!("cannot listen on loopback port {}", config.port))?;
        agent::server::serve_on(listener, config, backend, soft_cards, shutdown_signal())
            .await
            .context("serving")
    })?;
    Ok(ExitCode::SUCCESS)
}
