//! `certreg pki …`: what operators use to diagnose a refused card, and what acceptance checks call.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pki::anchors::{Role, TrustStore};
use pki::challenge::Challenge;
use pki::facts::ParsedCert;
use pki::revocation::{CrlStore, StalePolicy};
use pki::validate::{CrlMode, ValidationOptions, Validator};
use pki::{ErrorCode, PkiError};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Write a test PKI (GRCA-like root, GCA/XCA/MOEACA/HCA/MOICA-like CAs, cards, CRLs, soft
    /// cards, an anchors directory and an index.json).
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// Use ECDSA P-256 keys instead of RSA-2048.
        #[arg(long)]
        p256: bool,
        /// Reference time for validity periods (RFC 3339; default now).
        #[arg(long, value_parser = parse_time)]
        at: Option<OffsetDateTime>,
    },
    /// Print each certificate's facts as one JSON object per line.
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate a certificate for a role; prints {"ok":true,"facts":…} or {"ok":false,"code":…}.
    Verify {
        #[command(flatten)]
        common: VerifyArgs,
        cert: PathBuf,
    },
    /// Verify a card proof (CMS, PKCS#1 or ECDSA signature over a certreg TBS).
    VerifyProof {
        #[command(flatten)]
        common: VerifyArgs,
        /// The signed text (a certreg challenge TBS).
        #[arg(long)]
        tbs: PathBuf,
        /// The signature: base64 or DER.
        #[arg(long)]
        signature: PathBuf,
        /// The signer's certificate (required for PKCS#1 and ECDSA).
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Directory with manifest.toml and the anchor certificates.
    #[arg(long)]
    anchors: PathBuf,
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// CRL files (DER or PEM). Without any, revocation is not checked and a warning says so.
    #[arg(long = "crl")]
    crls: Vec<PathBuf>,
    /// Validate as of this time (RFC 3339; default now).
    #[arg(long, value_parser = parse_time)]
    at: Option<OffsetDateTime>,
    /// Accept a CRL past its nextUpdate, with a warning.
    #[arg(long)]
    accept_stale_crl: bool,
    /// Also ask the OCSP responder (the certificate's AIA URL, or this one).
    #[arg(long)]
    ocsp: Option<Option<String>>,
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

pub fn run(command: PkiCommand) -> Result<ExitCode> {
    match command {
        PkiCommand::Generate { out, p256, at } => generate(&out, p256, at),
        PkiCommand::Inspect { files } => Ok(inspect(&files)),
        PkiCommand::Verify { common, cert } => {
            let result = (|| {
                let validator = validator(&common)?;
                let bytes = read(&cert)?;
                let parsed = ParsedCert::from_input(&bytes)?;
                validator.validate(&parsed, &[], common.role, now(&common))
            })();
            Ok(report(
                result.map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
            ))
        }
        PkiCommand::VerifyProof {
            common,
            tbs,
            signature,
            cert,
        } => {
            let result = (|| {
                let validator = validator(&common)?;
                let challenge = Challenge::parse_tbs(&read(&tbs)?)?;
                let signature = read(&signature)?;
                let cert = cert.as_deref().map(read).transpose()?;
                pki::proof::verify_proof(
                    &validator,
                    &challenge,
                    &signature,
                    cert.as_deref(),
                    common.role,
                    now(&common),
                )
            })();
            Ok(report(result.map(|p| {
                let mut v = serde_json::to_value(&p.certificate).unwrap_or(Value::Null);
                v["format"] = json!(p.format);
                v["signed_attrs"] = json!(p.attrs);
                v
            })))
        }
    }
}

fn now(args: &VerifyArgs) -> OffsetDateTime {
    args.at.unwrap_or_else(OffsetDateTime::now_utc)
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path)
        .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("{}: {e}", path.display())))
}

fn validator(args: &VerifyArgs) -> Result<Validator, PkiError> {
    let trust = TrustStore::load_dir(&args.anchors)?;
    let mut crls = CrlStore::new();
    for path in &args.crls {
        crls.add_owned(read(path)?)
            .map_err(|e| PkiError::new(e.code, format!("{}: {}", path.display(), e.detail)))?;
    }
    let options = ValidationOptions {
        crl: if args.crls.is_empty() {
            CrlMode::Off
        } else {
            CrlMode::Required
        },
        stale_crl: if args.accept_stale_crl {
            StalePolicy::Warn
        } else {
            StalePolicy::Reject
        },
        ..ValidationOptions::default()
    };
    let validator = Validator::new(trust, crls, options);
    Ok(match &args.ocsp {
        None => validator,
        Some(url) => validator.with_online(std::sync::Arc::new(pki::ocsp::OcspChecker::new(
            pki::ocsp::OcspConfig {
                url_override: url.clone(),
                ..Default::default()
            },
            std::sync::Arc::new(pki::ocsp::HttpTransport),
        ))),
    })
}

/// `{"ok":true, …}` on stdout and exit 0, or `{"ok":false,"code","message"}` and exit 1.
fn report(result: Result<Value, PkiError>) -> ExitCode {
    match result {
        Ok(mut v) => {
            let mut out = json!({"ok": true});
            if let Some(facts) = v.get_mut("facts").map(Value::take) {
                out["facts"] = facts;
            }
            if let (Some(o), Some(rest)) = (out.as_object_mut(), v.as_object()) {
                for (k, val) in rest {
                    if k != "facts" {
                        o.insert(k.clone(), val.clone());
                    }
                }
            }
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", error_json(&e));
            ExitCode::from(1)
        }
    }
}

fn error_json(e: &PkiError) -> Value {
    json!({"ok": false, "code": e.code, "message": e.detail, "message_zh": e.code.message_zh()})
}

fn inspect(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let result = read(file).and_then(|b| ParsedCert::from_input(&b));
        let line = match result {
            Ok(c) => {
                let mut v = serde_json::to_value(&c.facts).unwrap_or(Value::Null);
                v["file"] = json!(file.display().to_string());
                v
            }
            Err(e) => {
                failed = true;
                let mut v = error_json(&e);
                v["file"] = json!(file.display().to_string());
                v
            }
        };
        println!("{line}");
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn generate(out: &Path, p256: bool, at: Option<OffsetDateTime>) -> Result<ExitCode> {
    use testpki::{KeyAlg, TestPki, TestPkiOptions};
    let opts = TestPkiOptions {
        key_alg: if p256 { KeyAlg::P256 } else { KeyAlg::Rsa2048 },
        ..TestPkiOptions::new(at.unwrap_or_else(OffsetDateTime::now_utc))
    };
    let pki = TestPki::generate(opts).context("generating the test PKI")?;
    pki.write_dir(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote the test PKI to {} (see index.json)", out.display());
    Ok(ExitCode::SUCCESS)
}
