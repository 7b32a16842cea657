//! The certreg command: parses arguments, then calls library code.

mod agent_cmd;
mod pki_cmd;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki { command } => pki_cmd::run(command),
        Command::Agent(args) => agent_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certreg: {e:#}");
            ExitCode::from(2)
        }
    }
}
