//! How expiry and revocation notices travel: a minimal SMTP client (plain SMTP over TCP: EHLO,
//! MAIL FROM, RCPT TO, DATA, QUIT; the subject as an RFC 2047 encoded word, the body base64), and
//! what to do with a notice ([`Mailer`]: nothing, print it, or send it). Who is told what, once a
//! day, is the domain's ([`domain::notices::notify_once`]); the [`Mailer`] is its sender.

use base64::Engine as _;
use domain::notices::{Notice, NoticeSender, SendError};
use std::io;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The whole SMTP exchange must finish within this.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// The envelope and header sender.
    pub from: String,
}

fn bad(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

/// An address that can go in a header and an SMTP command as it is.
fn check_address(a: &str) -> io::Result<()> {
    if a.is_empty() || a.len() > 254 || a.chars().any(|c| c.is_control() || "<> ".contains(c)) {
        return Err(bad(format!("unusable mail address {a:?}")));
    }
    Ok(())
}

/// `=?UTF-8?B?…?=` words of at most 75 characters, folded onto continuation lines.
pub fn encode_header(text: &str) -> String {
    if text.is_ascii() && !text.contains("=?") && text.len() <= 70 {
        return text.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        // 45 bytes of UTF-8 make 60 base64 characters: 72 with the delimiters.
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// The message as DATA carries it (CRLF lines, without the final dot).
pub fn message(from: &str, notice: &Notice, date: OffsetDateTime) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(notice.body.as_bytes());
    let mut lines = vec![
        format!("From: {from}"),
        format!("To: {}", notice.to),
        format!("Subject: {}", encode_header(&notice.subject)),
        format!(
            "Date: {}",
            date.format(&time::format_description::well_known::Rfc2822)
                .unwrap_or_default()
        ),
        "MIME-Version: 1.0".into(),
        "Content-Type: text/plain; charset=UTF-8".into(),
        "Content-Transfer-Encoding: base64".into(),
        String::new(),
    ];
    // Base64 lines never start with a dot: no dot-stuffing is needed.
    lines.extend(
        body.as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
    );
    lines.join("\r\n")
}

struct Conversation {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Conversation {
    /// The server's reply (all lines of a multi-line one); an error unless its code is `want`.
    async fn expect(&mut self, want: &[u16]) -> io::Result<()> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(bad("the SMTP server closed the connection"));
            }
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad(format!("SMTP reply {line:?}")))?;
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            if !want.contains(&code) {
                return Err(bad(format!("SMTP server answered {:?}", line.trim_end())));
            }
            return Ok(());
        }
    }

    async fn command(&mut self, line: &str, want: &[u16]) -> io::Result<()> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.expect(want).await
    }
}

/// Sends `notice` through the SMTP server of `config` (no TLS, no authentication: a relay on
/// the internal network).
pub async fn send_smtp(config: &SmtpConfig, notice: &Notice) -> io::Result<()> {
    check_address(&config.from)?;
    check_address(&notice.to)?;
    let exchange = async {
        let stream = TcpStream::connect((config.host.as_str(), config.port)).await?;
        let (r, w) = stream.into_split();
        let mut c = Conversation {
            reader: BufReader::new(r),
            writer: w,
        };
        c.expect(&[220]).await?;
        c.command("EHLO certreg", &[250]).await?;
        c.command(&format!("MAIL FROM:<{}>", config.from), &[250])
            .await?;
        c.command(&format!("RCPT TO:<{}>", notice.to), &[250, 251])
            .await?;
        c.command("DATA", &[354]).await?;
        let data = message(&config.from, notice, OffsetDateTime::now_utc());
        c.command(&format!("{data}\r\n."), &[250]).await?;
        c.command("QUIT", &[221]).await?;
        Ok(())
    };
    tokio::time::timeout(SMTP_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SMTP exchange timed out"))?
}

impl Mailer {
    pub async fn send(&self, notice: &Notice) -> io::Result<()> {
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

    pub fn is_enabled(&self) -> bool {
        *self != Mailer::Disabled
    }
}

impl NoticeSender for Mailer {
    fn is_enabled(&self) -> bool {
        Mailer::is_enabled(self)
    }

    async fn send(&self, notice: &Notice) -> Result<(), SendError> {
        Ok(Mailer::send(self, notice).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_encoded_words_that_decode_back() {
        assert_eq!(encode_header("Hello"), "Hello");
        let subject = "憑證到期／廢止通知（機關代號 A0001）".repeat(2);
        let encoded = encode_header(&subject);
        let mut decoded = Vec::new();
        for word in encoded.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
            let b64 = word
                .strip_prefix("=?UTF-8?B?")
                .and_then(|w| w.strip_suffix("?="))
                .unwrap();
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            );
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), subject);
    }

    #[test]
    fn addresses_that_could_inject_are_refused() {
        assert!(check_address("a@example.gov.tw").is_ok());
        assert!(check_address("a@x\r\nRCPT TO:<b@y>").is_err());
        assert!(check_address("a@x> <b@y").is_err());
    }
}
