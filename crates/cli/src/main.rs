//! The certreg command: parses arguments, then calls library code.

mod agent_cmd;
mod config;
mod crl_cmd;
mod data_cmd;
mod demo_cmd;
mod keys_cmd;
mod pki_cmd;
mod serve_cmd;
mod store_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "certreg",
    version,
    about = "公教人員保險 要保機關憑證註冊與授權指派服務"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates and card proofs: generate a test PKI, inspect and verify certificates.
    Pki {
        #[command(subcommand)]
        command: pki_cmd::PkiCommand,
    },
    /// The local card agent (HiPKI protocol on 127.0.0.1) over soft cards or PKCS#11 modules.
    Agent(agent_cmd::AgentArgs),
    /// Try it: the web service, the card agent and test cards in one process (README's first command).
    Demo(demo_cmd::DemoArgs),
    /// The web service (settings: --config FILE and CERTREG_* variables).
    Serve(serve_cmd::ServeArgs),
    /// Create or upgrade the database schema.
    Migrate(store_cmd::DatabaseArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: store_cmd::AuditCommand,
    },
    /// Agency master data (R6.3).
    Agencies {
        #[command(subcommand)]
        command: data_cmd::AgenciesCommand,
    },
    /// The government office calendar that decides business days (SPEC §4.2).
    Calendar {
        #[command(subcommand)]
        command: data_cmd::CalendarCommand,
    },
    /// Certificate revocation lists: `crl refresh` loads the configured sources.
    Crl {
        #[command(subcommand)]
        command: crl_cmd::CrlCommand,
    },
    /// Back-office reviewer accounts (R6.1).
    Staff {
        #[command(subcommand)]
        command: data_cmd::StaffCommand,
    },
    /// The keys that sign the operators' tokens for other systems (docs/downstream.md).
    Keys {
        #[command(subcommand)]
        command: keys_cmd::KeysCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki { command } => pki_cmd::run(command),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Migrate(args) => store_cmd::migrate(args),
        Command::Audit { command } => store_cmd::audit(command),
        Command::Agencies { command } => data_cmd::agencies(command),
        Command::Calendar { command } => data_cmd::calendar(command),
        Command::Staff { command } => data_cmd::staff(command),
        Command::Keys { command } => keys_cmd::run(command),
        Command::Crl { command } => crl_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certreg: {e:#}");
            ExitCode::from(2)
        }
    }
}
