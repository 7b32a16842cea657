//! How expiry and revocation notices travel ([`Mailer`]: nowhere, printed, or by SMTP through
//! `lettre`). Who is told what, once a day, is the domain's
//! ([`domain::notices::notify_once`]); the [`Mailer`] is its sender.
//!
//! A mail is one text/plain part in UTF-8, base64, with the subject as RFC 2047 encoded words,
//! From, To, Date and a Message-ID in the sender's domain. The SMTP relay is reached in plain SMTP,
//! or with STARTTLS when the server offers it, or only with STARTTLS ([`StartTls`]), trusting the
//! system's CA certificates and any configured beside them; credentials, when configured, are sent
//! with AUTH PLAIN or LOGIN, and only over STARTTLS unless the relay is on this machine.

use domain::notices::{Notice, NoticeSender, SendError};
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// The whole SMTP exchange must finish within this (and each reply of the server too).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The name certreg gives itself in EHLO.
const HELLO_NAME: &str = "certreg";

/// Where notices go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mailer {
    /// No mail (the default: no `smtp_host` configured).
    #[default]
    Disabled,
    /// Printed on stdout (the demo).
    Stdout,
    Smtp(SmtpConfig),
}

/// Whether the SMTP connection is encrypted with STARTTLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartTls {
    /// Plain SMTP (a relay on the internal network).
    #[default]
    None,
    /// STARTTLS when the server offers it, plain SMTP when it does not (someone on the path can
    /// remove the offer).
    Opportunistic,
    /// STARTTLS or no mail: a server that does not offer it, or whose certificate is not trusted
    /// for its name, gets nothing.
    Required,
}

impl std::str::FromStr for StartTls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "opportunistic" => Ok(Self::Opportunistic),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "STARTTLS must be none, opportunistic or required, not {other:?}"
            )),
        }
    }
}

/// SMTP credentials (AUTH PLAIN or LOGIN, whichever the server offers).
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpAuth {
    pub user: String,
    pub password: String,
}

// Passwords never reach a log.
impl std::fmt::Debug for SmtpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// The envelope and header sender.
    pub from: String,
    pub starttls: StartTls,
    pub auth: Option<SmtpAuth>,
    /// CA certificates (PEM) trusted for the server's STARTTLS certificate besides the
    /// system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl SmtpConfig {
    /// Plain SMTP without authentication to `host:port`, sending as `from`.
    pub fn new(host: impl Into<String>, port: u16, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            from: from.into(),
            starttls: StartTls::None,
            auth: None,
            ca_pem: None,
        }
    }

    /// What can be known before connecting: the sender is a usable address, the CA
    /// certificates parse, and credentials travel encrypted (STARTTLS `required`) unless the
    /// relay is on this machine.
    pub fn check(&self) -> Result<(), SendError> {
        address(&self.from)?;
        if self.auth.is_some() && self.starttls != StartTls::Required && !is_loopback(&self.host) {
            return Err(format!(
                "SMTP credentials are sent only with STARTTLS required (the relay {} is not on \
                 this machine)",
                self.host
            )
            .into());
        }
        if self.starttls != StartTls::None {
            self.tls_parameters()?;
        }
        Ok(())
    }

    fn tls_parameters(&self) -> Result<TlsParameters, SendError> {
        let mut builder = TlsParameters::builder(self.host.clone());
        if let Some(pem) = &self.ca_pem {
            builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
        }
        Ok(builder.build_rustls()?)
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
        self.check()?;
        let tls = match self.starttls {
            StartTls::None => Tls::None,
            StartTls::Opportunistic => Tls::Opportunistic(self.tls_parameters()?),
            StartTls::Required => Tls::Required(self.tls_parameters()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .hello_name(ClientId::Domain(HELLO_NAME.into()))
            .timeout(Some(SMTP_TIMEOUT))
            .tls(tls);
        if let Some(auth) = &self.auth {
            builder =
                builder.credentials(Credentials::new(auth.user.clone(), auth.password.clone()));
        }
        Ok(builder.build())
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A mail address as SMTP and the headers carry it: refused if it could smuggle anything else
/// into either (line breaks, angle brackets, spaces).
fn address(a: &str) -> Result<Address, SendError> {
    Ok(a.parse::<Address>()
        .map_err(|e| format!("unusable mail address {a:?}: {e}"))?)
}

/// The mail of `notice` from `from`, dated `date`.
pub fn message(from: &str, notice: &Notice, date: SystemTime) -> Result<Message, SendError> {
    let from = address(from)?;
    let to = address(&notice.to)?;
    let id = format!(
        "<{}@{}>",
        &crate::security::random_token()[..32],
        from.domain()
    );
    let body = Body::new_with_encoding(notice.body.clone(), ContentTransferEncoding::Base64)
        .map_err(|_| "the notice cannot be encoded")?;
    Ok(Message::builder()
        .from(Mailbox::new(None, from))
        .to(Mailbox::new(None, to))
        .subject(notice.subject.as_str())
        .date(date)
        .message_id(Some(id))
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(body),
        )?)
}

/// Sends `notice` through the SMTP server of `config`.
pub async fn send_smtp(config: &SmtpConfig, notice: &Notice) -> Result<(), SendError> {
    let message = message(&config.from, notice, SystemTime::now())?;
    let transport = config.transport()?;
    tokio::time::timeout(SMTP_TIMEOUT, transport.send(message))
        .await
        .map_err(|_| "SMTP exchange timed out")??;
    Ok(())
}

impl Mailer {
    pub fn is_enabled(&self) -> bool {
        *self != Mailer::Disabled
    }
}

impl NoticeSender for Mailer {
    fn is_enabled(&self) -> bool {
        Mailer::is_enabled(self)
    }

    async fn send(&self, notice: &Notice) -> Result<(), SendError> {
        match self {
            Mailer::Disabled => Ok(()),
            Mailer::Stdout => {
                println!(
                    "--- mail to {} ---\nSubject: {}\n\n{}---",
                    notice.to, notice.subject, notice.body
                );
                Ok(())
            }
            Mailer::Smtp(config) => send_smtp(config, notice).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn notice() -> Notice {
        Notice {
            code: domain::types::InstitutionCode::parse("A0001").unwrap(),
            to: "admin@example.gov.tw".into(),
            subject: "憑證到期／廢止通知（機關代號 A0001）".repeat(2),
            body: "王大明 您好：\n\n貴機關的下列憑證需要處理：\n".into(),
        }
    }

    /// The text of encoded words (`=?UTF-8?B?…?=`, either case), folded or not.
    fn decode_words(value: &str) -> String {
        let mut decoded = Vec::new();
        for word in value.split_whitespace() {
            assert!(word.len() <= 75, "{word}");
            let b64 = word
                .get(..10)
                .filter(|p| p.eq_ignore_ascii_case("=?UTF-8?B?"))
                .and_then(|_| word[10..].strip_suffix("?="))
                .unwrap_or_else(|| panic!("not an encoded word: {word}"));
            decoded.extend(B64.decode(b64).unwrap());
        }
        String::from_utf8(decoded).unwrap()
    }

    #[test]
    fn the_message_has_its_headers_and_a_base64_utf8_body() {
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let n = notice();
        let text = String::from_utf8(
            message("certreg@example.gov.tw", &n, date)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = head.replace("\r\n ", " ");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("no {name} in {head}"))
                .to_string()
        };
        assert_eq!(header("From"), "certreg@example.gov.tw");
        assert_eq!(header("To"), "admin@example.gov.tw");
        assert_eq!(decode_words(&header("Subject")), n.subject);
        assert_eq!(header("Date"), "Thu, 28 May 2026 20:26:40 +0000");
        let id = header("Message-ID");
        assert!(
            id.starts_with('<') && id.ends_with("@example.gov.tw>") && id.len() > 40,
            "{id}"
        );
        assert_eq!(header("MIME-Version"), "1.0");
        assert_eq!(header("Content-Type"), "text/plain; charset=utf-8");
        assert_eq!(header("Content-Transfer-Encoding"), "base64");
        assert!(text.is_ascii());
        let body: String = body.lines().collect();
        assert_eq!(
            String::from_utf8(B64.decode(body).unwrap()).unwrap(),
            n.body.replace('\n', "\r\n")
        );
        // A new Message-ID for every mail.
        let again = message("certreg@example.gov.tw", &n, date).unwrap();
        assert!(!String::from_utf8(again.formatted()).unwrap().contains(&id));
    }

    #[test]
    fn addresses_that_could_inject_are_refused() {
        assert!(address("a@example.gov.tw").is_ok());
        assert!(address("a@x\r\nRCPT TO:<b@y>").is_err());
        assert!(address("a@x> <b@y").is_err());
        let mut n = notice();
        n.to = "a@x\r\nRCPT TO:<b@y>".into();
        assert!(message("certreg@example.gov.tw", &n, SystemTime::now()).is_err());
    }

    #[test]
    fn credentials_travel_only_encrypted_unless_the_relay_is_local() {
        let auth = Some(SmtpAuth {
            user: "certreg".into(),
            password: "s3cret".into(),
        });
        let mut c = SmtpConfig {
            auth,
            ..SmtpConfig::new("mail.example.gov.tw", 587, "certreg@example.gov.tw")
        };
        for starttls in [StartTls::None, StartTls::Opportunistic] {
            c.starttls = starttls;
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains("STARTTLS required"), "{e}");
        }
        c.starttls = StartTls::Required;
        c.check().unwrap();
        for local in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            c.host = local.into();
            c.starttls = StartTls::None;
            c.check().unwrap();
        }
        assert!(!format!("{c:?}").contains("s3cret"));
        c.starttls = StartTls::Required;
        c.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec());
        assert!(c.check().is_err());
    }

    /// What the fake SMTP server offers.
    #[derive(Default)]
    struct Offer {
        /// STARTTLS, with this server configuration for the handshake.
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
        /// AUTH PLAIN LOGIN.
        auth: bool,
    }

    /// What the fake SMTP server saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// The client's command lines, in order (`TLS` where the handshake happened).
        commands: Vec<String>,
        /// The DATA text.
        data: String,
    }

    impl Seen {
        fn has(&self, prefix: &str) -> bool {
            self.commands.iter().any(|c| c.starts_with(prefix))
        }
    }

    /// One SMTP session with one client on a loopback port: answers just enough SMTP.
    async fn fake_server(offer: Offer) -> (u16, tokio::task::JoinHandle<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut seen = Seen::default();
            if let Some(plain) = converse(stream, &offer, false, &mut seen).await {
                let acceptor = tokio_rustls::TlsAcceptor::from(offer.tls.clone().unwrap());
                if let Ok(tls) = acceptor.accept(plain).await {
                    seen.commands.push("TLS".into());
                    converse(tls, &offer, true, &mut seen).await;
                }
            }
            seen
        });
        (port, task)
    }

    /// Reads commands until QUIT or the end; the stream back when the client asked for STARTTLS.
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        offer: &Offer,
        encrypted: bool,
        seen: &mut Seen,
    ) -> Option<S> {
        let mut s = BufReader::new(stream);
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                return None;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    s.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    seen.data.push_str(&line);
                }
                continue;
            }
            let command = line.trim_end().to_string();
            seen.commands.push(command.clone());
            let upper = command.to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO") {
                let mut r = String::from("250-fake\r\n");
                if offer.tls.is_some() && !encrypted {
                    r.push_str("250-STARTTLS\r\n");
                }
                if offer.auth {
                    r.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                r + "250 8BITMIME\r\n"
            } else if upper == "STARTTLS" && offer.tls.is_some() && !encrypted {
                s.write_all(b"220 go ahead\r\n").await.unwrap();
                return Some(s.into_inner());
            } else if upper.starts_with("AUTH") && offer.auth {
                "235 accepted\r\n".into()
            } else if upper.starts_with("DATA") {
                in_data = true;
                "354 go ahead\r\n".into()
            } else if upper.starts_with("QUIT") {
                let _ = s.write_all(b"221 bye\r\n").await;
                return None;
            } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") {
                "250 ok\r\n".into()
            } else {
                "502 not here\r\n".into()
            };
            s.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    fn smtp(port: u16) -> SmtpConfig {
        SmtpConfig::new("127.0.0.1", port, "certreg@example.gov.tw")
    }

    #[tokio::test]
    async fn plain_smtp_delivers_the_message() {
        let (port, server) = fake_server(Offer::default()).await;
        send_smtp(&smtp(port), &notice()).await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(
            seen.commands[..3],
            [
                "EHLO certreg",
                "MAIL FROM:<certreg@example.gov.tw>",
                "RCPT TO:<admin@example.gov.tw>"
            ],
            "{seen:?}"
        );
        assert!(seen.has("DATA") && seen.has("QUIT"), "{seen:?}");
        assert!(
            seen.data.contains("To: admin@example.gov.tw\r\n"),
            "{seen:?}"
        );
        assert!(!seen.has("AUTH"), "{seen:?}");
    }

    #[tokio::test]
    async fn configured_credentials_are_sent_with_auth() {
        let (port, server) = fake_server(Offer {
            auth: true,
            ..Offer::default()
        })
        .await;
        let config = SmtpConfig {
            auth: Some(SmtpAuth {
                user: "certreg".into(),
                password: "s3cret".into(),
            }),
            ..smtp(port)
        };
        send_smtp(&config, &notice()).await.unwrap();
        let seen = server.await.unwrap();
        let auth = seen
            .commands
            .iter()
            .find_map(|c| c.strip_prefix("AUTH PLAIN "))
            .unwrap_or_else(|| panic!("no AUTH PLAIN: {seen:?}"));
        assert_eq!(B64.decode(auth).unwrap(), b"\0certreg\0s3cret");
        let at = |p: &str| seen.commands.iter().position(|c| c.starts_with(p));
        assert!(at("AUTH") < at("MAIL FROM"), "{seen:?}");
        assert!(!seen.data.is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn required_starttls_sends_nothing_to_a_server_without_it() {
        let (port, server) = fake_server(Offer {
            auth: true,
            ..Offer::default()
        })
        .await;
        let config = SmtpConfig {
            starttls: StartTls::Required,
            auth: Some(SmtpAuth {
                user: "certreg".into(),
                password: "s3cret".into(),
            }),
            ..smtp(port)
        };
        let e = send_smtp(&config, &notice()).await.unwrap_err();
        assert!(e.to_string().contains("STARTTLS"), "{e}");
        let seen = server.await.unwrap();
        assert!(!seen.has("AUTH") && !seen.has("MAIL"), "{seen:?}");
        assert!(seen.data.is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn opportunistic_starttls_falls_back_to_plain_smtp_when_not_offered() {
        let (port, server) = fake_server(Offer::default()).await;
        let config = SmtpConfig {
            starttls: StartTls::Opportunistic,
            ..smtp(port)
        };
        send_smtp(&config, &notice()).await.unwrap();
        let seen = server.await.unwrap();
        assert!(!seen.has("STARTTLS") && !seen.data.is_empty(), "{seen:?}");
    }

    /// A server certificate for 127.0.0.1 signed by a CA of its own; the CA's PEM.
    fn server_tls() -> (std::sync::Arc<tokio_rustls::rustls::ServerConfig>, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(
            tokio_rustls::rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (std::sync::Arc::new(config), ca.pem())
    }

    #[tokio::test]
    async fn required_starttls_encrypts_before_auth_and_mail() {
        let (tls, ca_pem) = server_tls();
        let (port, server) = fake_server(Offer {
            tls: Some(tls),
            auth: true,
        })
        .await;
        let config = SmtpConfig {
            starttls: StartTls::Required,
            auth: Some(SmtpAuth {
                user: "certreg".into(),
                password: "s3cret".into(),
            }),
            ca_pem: Some(ca_pem.into_bytes()),
            ..smtp(port)
        };
        send_smtp(&config, &notice()).await.unwrap();
        let seen = server.await.unwrap();
        let at = |p: &str| seen.commands.iter().position(|c| c.starts_with(p));
        assert!(at("STARTTLS").is_some(), "{seen:?}");
        assert!(at("TLS") < at("AUTH") && at("TLS") < at("MAIL"), "{seen:?}");
        assert!(!seen.data.is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn an_untrusted_starttls_certificate_gets_nothing() {
        let (tls, _) = server_tls();
        let (port, server) = fake_server(Offer {
            tls: Some(tls),
            auth: true,
        })
        .await;
        let config = SmtpConfig {
            starttls: StartTls::Opportunistic,
            ..smtp(port)
        };
        assert!(send_smtp(&config, &notice()).await.is_err());
        let seen = server.await.unwrap();
        assert!(!seen.has("TLS") && !seen.has("MAIL"), "{seen:?}");
    }
}
