//! One typed settings struct: defaults, then a TOML file, then `CERTREG_*` environment
//! variables. Secrets may come from files (`…_file` keys / `CERTREG_…_FILE` variables) so they
//! stay out of the process environment and the config file.

use anyhow::{Context, Result, bail};
use pki::online::{CrlSource, RevocationPolicy};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sqlite://path/certreg.db` (default) or `postgres://…`.
    pub database_url: String,
    /// Reads `database_url` from this file instead (a URL with a password is a secret).
    pub database_url_file: Option<PathBuf>,
    /// The key file for personal data at rest (created with mode 0600 when missing). Unset:
    /// `certreg.key` beside the SQLite database (see [`Settings::key_path`]).
    pub key_file: Option<PathBuf>,
    /// The public origin card proofs are bound to: https, unless it is a loopback address or
    /// `allow_http_origin` says otherwise. Requests naming another host are refused.
    pub public_origin: String,
    /// Serve an http:// public origin that is not a loopback address (a test network behind
    /// nothing); never in production.
    pub allow_http_origin: bool,
    /// Address the service listens on.
    pub listen: String,
    /// An internal address for `/metrics` and the detailed `/healthz`; when set, the public
    /// listener answers only a minimal health status and no metrics.
    pub internal_listen: Option<String>,
    /// The audiences (`aud`) downstream systems may ask operator tokens for; the first is the
    /// default.
    pub token_audiences: Vec<String>,
    /// Show operators the page 「取得其他系統用權杖」 (off: agencies whose other systems do not
    /// take certreg's tokens never see a raw token).
    pub operator_token_page: bool,
    /// The anchors directory (`manifest.toml` + CA certificates).
    pub anchors_dir: PathBuf,
    /// CRL files or URLs, refreshed every `crl_refresh_minutes`.
    pub crls: Vec<String>,
    pub crl_refresh_minutes: u64,
    /// Accept a CRL past its nextUpdate (with a warning) instead of refusing cards; with
    /// `crl_source = "distribution_point"` also a CRL kept from its distribution point when
    /// no newer one can be fetched.
    pub accept_stale_crl: bool,
    /// Which revocation checks a card must pass: `crl` (the default: a CRL of its issuer),
    /// `ocsp` (the responder of the card's Authority Information Access), `crl_and_ocsp`
    /// (both), or `crl_or_ocsp` (OCSP, and a CRL when the responder gives no valid answer).
    pub revocation: RevocationPolicy,
    /// Where the CRLs that decide come from: `configured` (the default: `crls`) or
    /// `distribution_point` (the CRL at the card's own `http://` CRL distribution point,
    /// fetched when a card is checked and kept until its nextUpdate).
    pub crl_source: CrlSource,
    /// How long one OCSP exchange may take, in seconds (1–60).
    pub ocsp_timeout_seconds: u64,
    /// Send a nonce with each OCSP request and require the answer to echo it.
    pub ocsp_nonce: bool,
    /// The version of 用戶約定條款 users agree to.
    pub terms_version: String,
    /// The insurer's 用戶約定條款 (UTF-8 text, one clause per paragraph); unset: the shipped
    /// sample, marked 範例 on every terms page.
    pub terms_file: Option<PathBuf>,
    /// Where the pages' card client finds the local card agent.
    pub agent_url: String,
    /// Reverse proxies (IP addresses) whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `compact` (human) or `json` (one object per line, for log collectors).
    pub log_format: LogFormat,
    /// The SMTP relay for expiry/revocation notices; unset: no mail is sent.
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    /// STARTTLS: `none` (plain SMTP, the default), `opportunistic` (when the relay offers it) or
    /// `required` (no mail to a relay without it or with an untrusted certificate).
    pub smtp_starttls: web::mail::StartTls,
    /// CA certificates (PEM) trusted for the relay's certificate besides the system's.
    pub smtp_ca_file: Option<PathBuf>,
    /// The SMTP user, if the relay wants authentication; the password comes from
    /// `smtp_password_file` or `CERTREG_SMTP_PASSWORD`.
    pub smtp_user: Option<String>,
    /// Reads the SMTP password from this file.
    pub smtp_password_file: Option<PathBuf>,
    /// Never in the settings file: from `smtp_password_file` or `CERTREG_SMTP_PASSWORD`.
    #[serde(skip)]
    pub smtp_password: Option<Secret>,
    /// The sender of notices.
    pub mail_from: String,
}

/// A secret setting: kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Compact,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "sqlite://certreg-data/certreg.db".into(),
            database_url_file: None,
            key_file: None,
            public_origin: "http://127.0.0.1:8080".into(),
            allow_http_origin: false,
            listen: "127.0.0.1:8080".into(),
            internal_listen: None,
            token_audiences: vec![web::DEFAULT_AUDIENCE.to_string()],
            operator_token_page: false,
            anchors_dir: PathBuf::from("certreg-data/pki/anchors"),
            crls: Vec::new(),
            crl_refresh_minutes: 60,
            accept_stale_crl: false,
            revocation: RevocationPolicy::Crl,
            crl_source: CrlSource::Configured,
            ocsp_timeout_seconds: 5,
            ocsp_nonce: true,
            terms_version: "2026-01".into(),
            terms_file: None,
            agent_url: "http://127.0.0.1:61161".into(),
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Compact,
            smtp_host: None,
            smtp_port: 25,
            smtp_starttls: web::mail::StartTls::None,
            smtp_ca_file: None,
            smtp_user: None,
            smtp_password_file: None,
            smtp_password: None,
            mail_from: "certreg@localhost".into(),
        }
    }
}

/// A comma-separated environment value.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|x| !x.is_empty())
}

impl Settings {
    /// 用戶約定條款: the file the settings name, else the sample (marked 範例).
    pub fn terms(&self) -> Result<web::Terms> {
        let Some(path) = &self.terms_file else {
            return Ok(web::Terms::sample());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the terms file {}", path.display()))?;
        web::Terms::parse(&text)
            .with_context(|| format!("the terms file {} holds no clause", path.display()))
    }

    /// Defaults → `file` (if given) → the environment (`CERTREG_DATABASE_URL`, …).
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_from(file, |k| std::env::var(k).ok())
    }

    pub fn load_from(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut s = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("{}", path.display()))?
            }
            None => Settings::default(),
        };
        let string = |key: &str, slot: &mut String| {
            if let Some(v) = env(&format!("CERTREG_{key}")) {
                *slot = v;
            }
        };
        string("DATABASE_URL", &mut s.database_url);
        string("PUBLIC_ORIGIN", &mut s.public_origin);
        string("LISTEN", &mut s.listen);
        string("TERMS_VERSION", &mut s.terms_version);
        if let Some(v) = env("CERTREG_TERMS_FILE") {
            s.terms_file = Some(v).filter(|p| !p.trim().is_empty()).map(PathBuf::from);
        }
        string("AGENT_URL", &mut s.agent_url);
        if let Some(v) = env("CERTREG_TRUSTED_PROXIES") {
            s.trusted_proxies = list(&v)
                .map(|p| p.parse().with_context(|| format!("trusted proxy {p:?}")))
                .collect::<Result<_>>()?;
        }
        if let Some(v) = env("CERTREG_LOG_FORMAT") {
            s.log_format = match v.as_str() {
                "json" => LogFormat::Json,
                "compact" => LogFormat::Compact,
                other => bail!("CERTREG_LOG_FORMAT must be compact or json, not {other:?}"),
            };
        }
        if let Some(v) = env("CERTREG_INTERNAL_LISTEN") {
            s.internal_listen = Some(v).filter(|a| !a.trim().is_empty());
        }
        if let Some(v) = env("CERTREG_ALLOW_HTTP_ORIGIN") {
            s.allow_http_origin = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = env("CERTREG_OPERATOR_TOKEN_PAGE") {
            s.operator_token_page = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = env("CERTREG_TOKEN_AUDIENCES") {
            s.token_audiences = list(&v).map(String::from).collect();
        }
        if let Some(v) = env("CERTREG_DATABASE_URL_FILE") {
            s.database_url_file = Some(v.into());
        }
        if let Some(v) = env("CERTREG_KEY_FILE") {
            s.key_file = Some(v.into());
        }
        if let Some(v) = env("CERTREG_ANCHORS_DIR") {
            s.anchors_dir = v.into();
        }
        if let Some(v) = env("CERTREG_CRLS") {
            s.crls = list(&v).map(String::from).collect();
        }
        if let Some(v) = env("CERTREG_CRL_REFRESH_MINUTES") {
            s.crl_refresh_minutes = v
                .parse()
                .context("CERTREG_CRL_REFRESH_MINUTES must be a number")?;
        }
        if let Some(v) = env("CERTREG_ACCEPT_STALE_CRL") {
            s.accept_stale_crl = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = env("CERTREG_REVOCATION") {
            s.revocation = RevocationPolicy::parse(&v).with_context(|| {
                format!(
                    "CERTREG_REVOCATION must be one of {}, not {v:?}",
                    RevocationPolicy::NAMES.join(", ")
                )
            })?;
        }
        if let Some(v) = env("CERTREG_CRL_SOURCE") {
            s.crl_source = CrlSource::parse(&v).with_context(|| {
                format!(
                    "CERTREG_CRL_SOURCE must be one of {}, not {v:?}",
                    CrlSource::NAMES.join(", ")
                )
            })?;
        }
        if let Some(v) = env("CERTREG_OCSP_TIMEOUT_SECONDS") {
            s.ocsp_timeout_seconds = v
                .parse()
                .context("CERTREG_OCSP_TIMEOUT_SECONDS must be a number")?;
        }
        if let Some(v) = env("CERTREG_OCSP_NONCE") {
            s.ocsp_nonce = matches!(v.as_str(), "1" | "true" | "yes");
        }
        string("MAIL_FROM", &mut s.mail_from);
        if let Some(v) = env("CERTREG_SMTP_HOST") {
            s.smtp_host = Some(v).filter(|h| !h.trim().is_empty());
        }
        if let Some(v) = env("CERTREG_SMTP_PORT") {
            s.smtp_port = v
                .parse()
                .context("CERTREG_SMTP_PORT must be a port number")?;
        }
        if let Some(v) = env("CERTREG_SMTP_STARTTLS") {
            s.smtp_starttls = v.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(v) = env("CERTREG_SMTP_CA_FILE") {
            s.smtp_ca_file = Some(v.into());
        }
        if let Some(v) = env("CERTREG_SMTP_USER") {
            s.smtp_user = Some(v).filter(|u| !u.is_empty());
        }
        if let Some(v) = env("CERTREG_SMTP_PASSWORD_FILE") {
            s.smtp_password_file = Some(v.into());
        }
        if let Some(v) = env("CERTREG_SMTP_PASSWORD") {
            s.smtp_password = Some(Secret(v));
        }
        if let Some(path) = &s.smtp_password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            s.smtp_password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(path) = &s.database_url_file {
            s.database_url = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string();
        }
        s.check()?;
        Ok(s)
    }

    /// Where expiry/revocation notices go: SMTP when `smtp_host` is set, else nowhere. Refused
    /// when the CA file cannot be read or parsed, or credentials would travel unencrypted to a
    /// relay on another machine.
    pub fn mailer(&self) -> Result<web::mail::Mailer> {
        let Some(host) = &self.smtp_host else {
            return Ok(web::mail::Mailer::Disabled);
        };
        let ca_pem = match &self.smtp_ca_file {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            }
            None => None,
        };
        let auth = match (&self.smtp_user, &self.smtp_password) {
            (Some(user), Some(password)) => Some(web::mail::SmtpAuth {
                user: user.clone(),
                password: password.0.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                bail!("smtp_user needs a password: smtp_password_file or CERTREG_SMTP_PASSWORD")
            }
            (None, Some(_)) => bail!("an SMTP password is set but no smtp_user"),
        };
        let config = web::mail::SmtpConfig {
            starttls: self.smtp_starttls,
            auth,
            ca_pem,
            ..web::mail::SmtpConfig::new(host.clone(), self.smtp_port, self.mail_from.clone())
        };
        config
            .check()
            .map_err(|e| anyhow::anyhow!("SMTP settings: {e}"))?;
        Ok(web::mail::Mailer::Smtp(config))
    }

    /// The key file: the one configured, else `certreg.key` beside the SQLite database (so the
    /// default database and its key live together in `certreg-data/`). PostgreSQL has no file
    /// to put it beside, so there it must be configured.
    pub fn key_path(&self) -> Result<PathBuf> {
        if let Some(k) = &self.key_file {
            return Ok(k.clone());
        }
        match store::sqlite_path(&self.database_url) {
            Some(db) => Ok(db
                .parent()
                .map(|d| d.join("certreg.key"))
                .unwrap_or_else(|| PathBuf::from("certreg.key"))),
            None => bail!(
                "a key file is required for this database: --key-file, key_file in the settings \
                 file, or CERTREG_KEY_FILE"
            ),
        }
    }

    fn check(&self) -> Result<()> {
        if !(self.public_origin.starts_with("https://")
            || self.public_origin.starts_with("http://"))
        {
            bail!("public_origin must start with https:// (or http:// for local use)");
        }
        if !(self.agent_url.starts_with("http://") || self.agent_url.starts_with("https://")) {
            bail!("agent_url must start with http:// or https://");
        }
        if self
            .mail_from
            .chars()
            .any(|c| c.is_control() || "<> ".contains(c))
            || !self.mail_from.contains('@')
        {
            bail!("mail_from must be a plain mail address");
        }
        if self.terms_version.trim().is_empty()
            || self.terms_version.chars().count() > 32
            || self.terms_version.chars().any(char::is_control)
        {
            bail!("terms_version must be 1 to 32 printable characters");
        }
        if self.crl_refresh_minutes == 0 {
            bail!("crl_refresh_minutes must be at least 1");
        }
        if !(1..=60).contains(&self.ocsp_timeout_seconds) {
            bail!(
                "ocsp_timeout_seconds must be 1 to 60, not {}",
                self.ocsp_timeout_seconds
            );
        }
        if self.revocation == RevocationPolicy::Ocsp
            && self.crl_source == CrlSource::DistributionPoint
        {
            bail!(
                "crl_source = \"distribution_point\" is of no use with revocation = \"ocsp\", \
                 which consults no CRL: choose revocation = \"crl\", \"crl_and_ocsp\" or \
                 \"crl_or_ocsp\", or leave crl_source out"
            );
        }
        if self.token_audiences.is_empty()
            || self
                .token_audiences
                .iter()
                .any(|a| a.trim().is_empty() || a.chars().any(char::is_control))
        {
            bail!("token_audiences must name at least one audience, none of them empty");
        }
        Ok(())
    }

    /// How `certreg serve` establishes revocation: the policy and CRL source of the settings,
    /// OCSP within `ocsp_timeout_seconds` (with a nonce unless `ocsp_nonce` is off), and
    /// distribution points read like the configured CRL URLs (30 s, 32 MiB).
    pub fn revocation_settings(&self) -> pki::online::RevocationSettings {
        pki::online::RevocationSettings {
            policy: self.revocation,
            crl_source: self.crl_source,
            ocsp: pki::ocsp::OcspConfig {
                timeout: std::time::Duration::from_secs(self.ocsp_timeout_seconds),
                require_nonce: self.ocsp_nonce,
                ..pki::ocsp::OcspConfig::default()
            },
            cdp: pki::online::CdpConfig {
                timeout: crate::crl_cmd::CRL_FETCH_TIMEOUT,
                max_bytes: crate::crl_cmd::MAX_CRL_DOWNLOAD,
                ..pki::online::CdpConfig::default()
            },
            ..pki::online::RevocationSettings::default()
        }
    }

    /// What `certreg serve` asks of the public origin: https, unless it is a loopback address
    /// (nobody else can reach it) or `allow_http_origin` is set.
    pub fn check_serving_origin(&self) -> Result<()> {
        let origin = self.public_origin.trim_end_matches('/');
        if origin.starts_with("https://") || self.allow_http_origin {
            return Ok(());
        }
        let authority = origin.trim_start_matches("http://");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        bail!(
            "public_origin {origin} must be https:// (cookies and card proofs are bound to it); \
             set allow_http_origin = true (CERTREG_ALLOW_HTTP_ORIGIN=1) only for a test network"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn terms_come_from_the_file_the_settings_name_else_the_sample() {
        assert!(Settings::default().terms().unwrap().sample);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("terms.txt");
        std::fs::write(&file, "\u{feff}第一條　甲。\r\n\r\n第二條　乙。\r\n").unwrap();
        let s = Settings::load_from(None, |k| {
            (k == "CERTREG_TERMS_FILE").then(|| file.display().to_string())
        })
        .unwrap();
        let terms = s.terms().unwrap();
        assert_eq!(terms.clauses, ["第一條　甲。", "第二條　乙。"]);
        assert!(!terms.sample);
        std::fs::write(&file, "\n\n").unwrap();
        assert!(format!("{:#}", s.terms().unwrap_err()).contains("no clause"));
        let missing = Settings {
            terms_file: Some(dir.path().join("none.txt")),
            ..Settings::default()
        };
        assert!(missing.terms().is_err());
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("certreg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("certreg.toml");
        std::fs::write(
            &file,
            "public_origin = \"https://certreg.example.gov.tw\"\ncrl_refresh_minutes = 30\n",
        )
        .unwrap();
        let secret = dir.join("db-url");
        std::fs::write(&secret, "postgres://certreg:secret@db/certreg\n").unwrap();
        let env: HashMap<&str, String> = [
            ("CERTREG_CRL_REFRESH_MINUTES", "15".to_string()),
            ("CERTREG_TRUSTED_PROXIES", " 10.0.0.1 ,".to_string()),
            ("CERTREG_LOG_FORMAT", "json".to_string()),
            ("CERTREG_SMTP_HOST", "mail.example.gov.tw".to_string()),
            ("CERTREG_SMTP_PORT", "2525".to_string()),
            ("CERTREG_DATABASE_URL_FILE", secret.display().to_string()),
        ]
        .into();
        let s = Settings::load_from(Some(&file), |k| env.get(k).cloned()).unwrap();
        assert_eq!(s.public_origin, "https://certreg.example.gov.tw");
        assert_eq!(s.crl_refresh_minutes, 15);
        assert_eq!(
            s.trusted_proxies,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.database_url, "postgres://certreg:secret@db/certreg");
        assert_eq!(s.listen, Settings::default().listen);
        assert_eq!(
            s.mailer().unwrap(),
            web::mail::Mailer::Smtp(web::mail::SmtpConfig::new(
                "mail.example.gov.tw",
                2525,
                "certreg@localhost"
            ))
        );
        assert_eq!(
            Settings::default().mailer().unwrap(),
            web::mail::Mailer::Disabled
        );
        assert!(
            s.key_path().is_err(),
            "PostgreSQL needs a configured key file"
        );
        assert_eq!(
            Settings::default().key_path().unwrap(),
            PathBuf::from("certreg-data/certreg.key")
        );
        let keyed: HashMap<&str, String> =
            [("CERTREG_KEY_FILE", "/etc/certreg/key".to_string())].into();
        let s = Settings::load_from(None, |k| keyed.get(k).cloned()).unwrap();
        assert_eq!(s.key_path().unwrap(), PathBuf::from("/etc/certreg/key"));

        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        assert!(Settings::load_from(Some(&file), |_| None).is_err());
        let bad: HashMap<&str, String> = [("CERTREG_PUBLIC_ORIGIN", "ftp://x".to_string())].into();
        assert!(Settings::load_from(None, |k| bad.get(k).cloned()).is_err());
        let ops: HashMap<&str, String> = [
            ("CERTREG_INTERNAL_LISTEN", "127.0.0.1:9090".to_string()),
            ("CERTREG_TOKEN_AUDIENCES", "enrollment, premium".to_string()),
        ]
        .into();
        let s = Settings::load_from(None, |k| ops.get(k).cloned()).unwrap();
        assert_eq!(s.internal_listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(s.token_audiences, vec!["enrollment", "premium"]);
        assert_eq!(
            Settings::default().token_audiences,
            vec![web::DEFAULT_AUDIENCE]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn revocation_settings_default_to_configured_crls_and_are_checked() {
        let d = Settings::default();
        assert_eq!(d.revocation, RevocationPolicy::Crl);
        assert_eq!(d.crl_source, CrlSource::Configured);
        let r = d.revocation_settings();
        assert_eq!(r.ocsp.timeout, std::time::Duration::from_secs(5));
        assert!(r.ocsp.require_nonce);
        assert!(pki::online::crl_in_path(&r));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("certreg.toml");
        let load = |toml: &str, env: &[(&str, &str)]| {
            std::fs::write(&file, toml).unwrap();
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::load_from(Some(&file), |k| env.get(k).cloned())
        };
        let s = load(
            "revocation = \"crl_or_ocsp\"\ncrl_source = \"distribution_point\"\nocsp_timeout_seconds = 3\nocsp_nonce = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.revocation, RevocationPolicy::CrlOrOcsp);
        assert_eq!(s.crl_source, CrlSource::DistributionPoint);
        let r = s.revocation_settings();
        assert_eq!(r.ocsp.timeout, std::time::Duration::from_secs(3));
        assert!(!r.ocsp.require_nonce);
        assert!(!pki::online::crl_in_path(&r));
        // The environment wins.
        let s = load(
            "revocation = \"crl\"\n",
            &[
                ("CERTREG_REVOCATION", "crl_and_ocsp"),
                ("CERTREG_CRL_SOURCE", "configured"),
                ("CERTREG_OCSP_TIMEOUT_SECONDS", "10"),
                ("CERTREG_OCSP_NONCE", "0"),
            ],
        )
        .unwrap();
        assert_eq!(s.revocation, RevocationPolicy::CrlAndOcsp);
        assert_eq!(s.ocsp_timeout_seconds, 10);
        assert!(!s.ocsp_nonce);

        let refused =
            |toml: &str, env: &[(&str, &str)]| format!("{:#}", load(toml, env).unwrap_err());
        let e = refused("revocation = \"ocsp_only\"\n", &[]);
        assert!(
            e.contains("unknown variant `ocsp_only`") && e.contains("crl_or_ocsp"),
            "{e}"
        );
        let e = refused("crl_source = \"cdp\"\n", &[]);
        assert!(e.contains("distribution_point"), "{e}");
        let e = refused("", &[("CERTREG_REVOCATION", "OCSP")]);
        assert!(e.contains("CERTREG_REVOCATION must be one of crl, ocsp, crl_and_ocsp, crl_or_ocsp, not \"OCSP\""), "{e}");
        let e = refused("", &[("CERTREG_CRL_SOURCE", "aia")]);
        assert!(
            e.contains("CERTREG_CRL_SOURCE must be one of configured, distribution_point"),
            "{e}"
        );
        let e = refused(
            "revocation = \"ocsp\"\ncrl_source = \"distribution_point\"\n",
            &[],
        );
        assert!(e.contains("of no use with revocation = \"ocsp\""), "{e}");
        for bad in ["0", "61"] {
            let e = refused("", &[("CERTREG_OCSP_TIMEOUT_SECONDS", bad)]);
            assert!(
                e.contains(&format!("ocsp_timeout_seconds must be 1 to 60, not {bad}")),
                "{e}"
            );
        }
        let e = refused("", &[("CERTREG_OCSP_TIMEOUT_SECONDS", "five")]);
        assert!(
            e.contains("CERTREG_OCSP_TIMEOUT_SECONDS must be a number"),
            "{e}"
        );
    }

    #[test]
    fn smtp_starttls_and_credentials_from_file_or_environment() {
        let dir = std::env::temp_dir().join(format!("certreg-mail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("certreg.toml");
        let password = dir.join("smtp-password");
        std::fs::write(&password, "from-file\n").unwrap();
        std::fs::write(
            &file,
            format!(
                "smtp_host = \"mail.example.gov.tw\"\nsmtp_port = 587\n\
                 smtp_starttls = \"required\"\nsmtp_user = \"certreg\"\n\
                 smtp_password_file = {:?}\nmail_from = \"certreg@example.gov.tw\"\n",
                password.display().to_string()
            ),
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), |_| None).unwrap();
        assert!(!format!("{s:?}").contains("from-file"));
        let mut expected = web::mail::SmtpConfig {
            starttls: web::mail::StartTls::Required,
            auth: Some(web::mail::SmtpAuth {
                user: "certreg".into(),
                password: "from-file".into(),
            }),
            ..web::mail::SmtpConfig::new("mail.example.gov.tw", 587, "certreg@example.gov.tw")
        };
        assert_eq!(
            s.mailer().unwrap(),
            web::mail::Mailer::Smtp(expected.clone())
        );

        // The password from the environment, STARTTLS from the environment.
        let env: HashMap<&str, String> = [
            ("CERTREG_SMTP_HOST", "mail.example.gov.tw".to_string()),
            ("CERTREG_SMTP_STARTTLS", "opportunistic".to_string()),
            ("CERTREG_SMTP_USER", "certreg".to_string()),
            ("CERTREG_SMTP_PASSWORD", "from-env".to_string()),
        ]
        .into();
        let s = Settings::load_from(None, |k| env.get(k).cloned()).unwrap();
        assert_eq!(s.smtp_starttls, web::mail::StartTls::Opportunistic);
        assert_eq!(s.smtp_password, Some(Secret("from-env".into())));
        // Credentials to another machine go only with STARTTLS required.
        let e = s.mailer().unwrap_err().to_string();
        assert!(e.contains("STARTTLS required"), "{e}");
        let s = Settings {
            smtp_host: Some("127.0.0.1".into()),
            smtp_port: 25,
            smtp_starttls: web::mail::StartTls::None,
            ..s
        };
        expected.host = "127.0.0.1".into();
        expected.port = 25;
        expected.from = "certreg@localhost".into();
        expected.starttls = web::mail::StartTls::None;
        expected.auth.as_mut().unwrap().password = "from-env".into();
        assert_eq!(s.mailer().unwrap(), web::mail::Mailer::Smtp(expected));

        let refused = |pairs: &[(&'static str, &str)]| {
            let env: HashMap<&str, String> =
                pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
            Settings::load_from(None, |k| env.get(k).cloned()).and_then(|s| s.mailer())
        };
        assert!(refused(&[("CERTREG_SMTP_STARTTLS", "always")]).is_err());
        let host = ("CERTREG_SMTP_HOST", "127.0.0.1");
        assert!(refused(&[host, ("CERTREG_SMTP_USER", "certreg")]).is_err());
        assert!(refused(&[host, ("CERTREG_SMTP_PASSWORD", "x")]).is_err());
        let missing = dir.join("no-such-ca.pem").display().to_string();
        assert!(refused(&[host, ("CERTREG_SMTP_CA_FILE", &missing)]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn serving_needs_an_https_origin_unless_loopback_or_allowed() {
        let with = |origin: &str, allow: bool| Settings {
            public_origin: origin.into(),
            allow_http_origin: allow,
            ..Settings::default()
        };
        assert!(
            with("https://certreg.example.gov.tw", false)
                .check_serving_origin()
                .is_ok()
        );
        assert!(
            with("http://127.0.0.1:8080", false)
                .check_serving_origin()
                .is_ok()
        );
        assert!(
            with("http://[::1]:8080", false)
                .check_serving_origin()
                .is_ok()
        );
        assert!(
            with("http://localhost:8080", false)
                .check_serving_origin()
                .is_ok()
        );
        let err = with("http://certreg.example.gov.tw", false)
            .check_serving_origin()
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_http_origin"), "{err}");
        assert!(
            with("http://10.1.2.3:8080", true)
                .check_serving_origin()
                .is_ok()
        );
    }

    #[test]
    fn a_terms_version_is_short_printable_text() {
        let with = |v: &str| Settings {
            terms_version: v.into(),
            ..Settings::default()
        };
        assert!(with("2026-01").check().is_ok());
        for bad in ["", "  ", "2026\n01", &"9".repeat(33)] {
            let err = with(bad).check().unwrap_err().to_string();
            assert!(err.contains("terms_version"), "{bad:?}: {err}");
        }
    }
}
