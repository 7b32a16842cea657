//! The challenge of a card step and its text to be signed (TBS). The TBS names the purpose, the
//! public origin, the flow, the step, a single-use nonce and the issue time, so that a signature
//! made for one site, flow or step is worthless at another.

use crate::error::{ErrorCode, PkiError, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SecureRandom as _;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// First line of every certreg TBS; the card agent signs nothing else.
pub const TBS_HEADER: &str = "certreg-challenge/1";
/// A challenge may be answered within this time of being issued.
pub const CHALLENGE_LIFETIME: Duration = Duration::minutes(5);
/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 32;
/// No TBS is longer than this.
pub const MAX_TBS_BYTES: usize = 2048;

/// A challenge as the server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// What the signature is for, e.g. `first_registration`.
    pub purpose: String,
    /// The server's configured public origin, e.g. `https://certreg.example.gov.tw`.
    pub origin: String,
    pub flow_id: String,
    /// The step of the flow, e.g. `org_card`.
    pub step: String,
    pub nonce: Vec<u8>,
    pub issued_at: OffsetDateTime,
}

fn mismatch(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::ChallengeMismatch, detail)
}

/// Purpose, flow and step are identifiers: short, printable, no separators of the format.
fn check_token(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(mismatch(format!(
            "{field} {value:?} is not a valid identifier"
        )))
    }
}

fn check_origin(origin: &str) -> Result<()> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| mismatch(format!("origin {origin:?} is not http(s)")))?;
    let ok = !rest.is_empty()
        && origin.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(mismatch(format!("origin {origin:?} is not an origin")))
    }
}

impl Challenge {
    /// A fresh challenge with a random nonce.
    pub fn new(
        purpose: &str,
        origin: &str,
        flow_id: &str,
        step: &str,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let mut nonce = vec![0u8; NONCE_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PkiError::new(ErrorCode::ChallengeMismatch, "no randomness available"))?;
        Self::with_nonce(purpose, origin, flow_id, step, nonce, now)
    }

    /// A challenge with a given nonce (stored challenges are rebuilt this way).
    pub fn with_nonce(
        purpose: &str,
        origin: &str,
        flow_id: &str,
        step: &str,
        nonce: Vec<u8>,
        issued_at: OffsetDateTime,
    ) -> Result<Self> {
        check_token("purpose", purpose)?;
        check_origin(origin)?;
        check_token("flow", flow_id)?;
        check_token("step", step)?;
        if nonce.len() < NONCE_BYTES || nonce.len() > 64 {
            return Err(mismatch(format!(
                "nonce of {} bytes (32 to 64 required)",
                nonce.len()
            )));
        }
        // Whole seconds: the TBS carries RFC 3339 without fractions.
        let issued_at = issued_at.replace_nanosecond(0).unwrap_or(issued_at);
        Ok(Self {
            purpose: purpose.into(),
            origin: origin.into(),
            flow_id: flow_id.into(),
            step: step.into(),
            nonce,
            issued_at,
        })
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.issued_at + CHALLENGE_LIFETIME
    }

    /// The text the card signs (UTF-8, LF line ends, no trailing newline).
    ///
    /// ```
    /// use pki::challenge::Challenge;
    /// let now = time::macros::datetime!(2026-11-26 12:00 UTC);
    /// let c = Challenge::with_nonce("first_registration", "https://certreg.example.gov.tw",
    ///     "f-1", "org_card", vec![0; 32], now).unwrap();
    /// assert_eq!(c.tbs(), "certreg-challenge/1\npurpose=first_registration\n\
    ///     origin=https://certreg.example.gov.tw\nflow=f-1\nstep=org_card\n\
    ///     nonce=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nissued=2026-11-26T12:00:00Z");
    /// assert_eq!(Challenge::parse_tbs(c.tbs().as_bytes()).unwrap(), c);
    /// ```
    pub fn tbs(&self) -> String {
        let issued = self
            .issued_at
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_default();
        format!(
            "{TBS_HEADER}\npurpose={}\norigin={}\nflow={}\nstep={}\nnonce={}\nissued={issued}",
            self.purpose,
            self.origin,
            self.flow_id,
            self.step,
            B64.encode(&self.nonce)
        )
    }

    /// Reads a TBS back; anything but the exact format is refused.
    pub fn parse_tbs(tbs: &[u8]) -> Result<Self> {
        if tbs.len() > MAX_TBS_BYTES {
            return Err(mismatch(format!("TBS of {} bytes", tbs.len())));
        }
        let text = std::str::from_utf8(tbs).map_err(|_| mismatch("TBS is not UTF-8"))?;
        let mut lines = text.split('\n');
        if lines.next() != Some(TBS_HEADER) {
            return Err(mismatch("not a certreg challenge"));
        }
        let mut field = |name: &str| -> Result<&str> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| mismatch(format!("TBS line {name} missing or out of order")))
        };
        let purpose = field("purpose")?;
        let origin = field("origin")?;
        let flow = field("flow")?;
        let step = field("step")?;
        let nonce = B64
            .decode(field("nonce")?)
            .map_err(|_| mismatch("nonce is not base64url"))?;
        let issued = OffsetDateTime::parse(field("issued")?, &Rfc3339)
            .map_err(|_| mismatch("issued is not RFC 3339"))?;
        if lines.next().is_some() {
            return Err(mismatch("TBS has extra lines"));
        }
        let c = Self::with_nonce(purpose, origin, flow, step, nonce, issued)?;
        // Canonical form only: the same challenge must always be the same bytes.
        if c.tbs().as_bytes() != tbs {
            return Err(mismatch("TBS is not in canonical form"));
        }
        Ok(c)
    }

    /// Checks that `signed` is exactly this challenge's TBS and that it is still fresh.
    pub fn check_signed(&self, signed: &[u8], now: OffsetDateTime) -> Result<()> {
        if now >= self.expires_at() {
            return Err(PkiError::new(
                ErrorCode::ChallengeExpired,
                format!("the challenge expired at {}", self.expires_at()),
            ));
        }
        if self.tbs().as_bytes() == signed {
            return Ok(());
        }
        // Say which part differs: the user (or the log) learns whether this is a replay from
        // another step, flow or site.
        let other = Self::parse_tbs(signed)?;
        let detail = if other.origin != self.origin {
            format!(
                "signed for origin {}, expected {}",
                other.origin, self.origin
            )
        } else if other.flow_id != self.flow_id {
            "signed for another flow".to_string()
        } else if other.step != self.step {
            format!("signed for step {}, expected {}", other.step, self.step)
        } else if other.purpose != self.purpose {
            format!(
                "signed for purpose {}, expected {}",
                other.purpose, self.purpose
            )
        } else if other.nonce != self.nonce {
            "signed over another nonce (a replayed or outdated challenge)".to_string()
        } else {
            "signed content differs from the challenge".to_string()
        };
        Err(mismatch(detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> Challenge {
        Challenge::with_nonce(
            "first_registration",
            "https://certreg.example.gov.tw",
            "f-123",
            "org_card",
            vec![7u8; 32],
            datetime!(2026-11-26 12:00:00.5 UTC),
        )
        .unwrap()
    }

    #[test]
    fn tbs_round_trips_and_is_canonical() {
        let c = sample();
        let tbs = c.tbs();
        assert!(tbs.starts_with("certreg-challenge/1\npurpose=first_registration\n"));
        assert!(tbs.ends_with("issued=2026-11-26T12:00:00Z"));
        assert_eq!(Challenge::parse_tbs(tbs.as_bytes()).unwrap(), c);
        let spaced = tbs.replace("step=org_card", "step= org_card");
        assert_eq!(
            Challenge::parse_tbs(spaced.as_bytes()).unwrap_err().code,
            ErrorCode::ChallengeMismatch
        );
        assert!(Challenge::parse_tbs(format!("{tbs}\n").as_bytes()).is_err());
        assert!(Challenge::parse_tbs(b"hello").is_err());
    }

    #[test]
    fn fresh_challenges_differ() {
        let now = OffsetDateTime::now_utc();
        let a = Challenge::new("p", "https://a.example", "f", "s", now).unwrap();
        let b = Challenge::new("p", "https://a.example", "f", "s", now).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), NONCE_BYTES);
    }

    #[test]
    fn check_names_what_differs() {
        let c = sample();
        let now = c.issued_at + Duration::minutes(1);
        c.check_signed(c.tbs().as_bytes(), now).unwrap();
        let mut other = c.clone();
        other.step = "admin_card".into();
        let e = c.check_signed(other.tbs().as_bytes(), now).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChallengeMismatch);
        assert!(e.detail.contains("step admin_card"), "{}", e.detail);
        let mut other = c.clone();
        other.origin = "https://evil.example".into();
        assert!(
            c.check_signed(other.tbs().as_bytes(), now)
                .unwrap_err()
                .detail
                .contains("origin")
        );
        let e = c
            .check_signed(c.tbs().as_bytes(), c.issued_at + CHALLENGE_LIFETIME)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ChallengeExpired);
    }

    #[test]
    fn bad_fields_are_refused() {
        let t = datetime!(2026-11-26 12:00 UTC);
        assert!(Challenge::with_nonce("a b", "https://x", "f", "s", vec![0; 32], t).is_err());
        assert!(Challenge::with_nonce("p", "ftp://x", "f", "s", vec![0; 32], t).is_err());
        assert!(Challenge::with_nonce("p", "https://x/path", "f", "s", vec![0; 32], t).is_err());
        assert!(Challenge::with_nonce("p", "https://x", "f\nstep=x", "s", vec![0; 32], t).is_err());
        assert!(Challenge::with_nonce("p", "https://x", "f", "s", vec![0; 16], t).is_err());
    }
}
