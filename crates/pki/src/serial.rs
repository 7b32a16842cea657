//! Certificate serial numbers (憑證序號) in their canonical form, as users type and compare them.

use std::fmt;

/// Upper bound on accepted serial length: RFC 5280 allows 20 octets; real CAs have exceeded it
/// slightly, so certreg accepts twice that and no more.
const MAX_OCTETS: usize = 40;

/// A certificate serial number in canonical form: upper-case hex of the positive integer's bytes,
/// even length, without the `00` sign byte DER may add and without separators — what
/// `openssl x509 -serial` prints. Two serials are equal when they are the same integer.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct CertSerial(String);

/// Why a typed or pasted serial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("serial number is empty")]
    Empty,
    #[error("serial number has a character that is not a hex digit: {0:?}")]
    BadCharacter(char),
    #[error("serial number is longer than {MAX_OCTETS} octets")]
    TooLong,
}

impl SerialError {
    pub fn message_zh(&self) -> &'static str {
        match self {
            Self::Empty => "請輸入憑證序號",
            Self::BadCharacter(_) => "憑證序號只能包含 0-9、A-F",
            Self::TooLong => "憑證序號過長",
        }
    }
}

impl CertSerial {
    /// Accepts spaces, colons, hyphens, lower case, a `0x` prefix and extra leading zeros.
    ///
    /// ```
    /// use pki::serial::CertSerial;
    /// let typed = CertSerial::parse("0x04:d7:80:39").unwrap();
    /// assert_eq!(typed.as_str(), "04D78039");
    /// assert_eq!(typed, CertSerial::parse("4D78039").unwrap());
    /// assert_eq!(CertSerial::parse("00A1B2").unwrap().as_str(), "A1B2");
    /// ```
    pub fn parse(input: &str) -> Result<Self, SerialError> {
        let trimmed = input.trim();
        let body = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let mut digits = String::with_capacity(body.len());
        for c in body.chars() {
            match c {
                ' ' | ':' | '-' | '\t' => {}
                c if c.is_ascii_hexdigit() => digits.push(c.to_ascii_uppercase()),
                c => return Err(SerialError::BadCharacter(c)),
            }
        }
        if digits.is_empty() {
            return Err(SerialError::Empty);
        }
        let significant = digits.trim_start_matches('0');
        let canonical = if significant.is_empty() {
            "00".to_string()
        } else if significant.len() % 2 == 1 {
            format!("0{significant}")
        } else {
            significant.to_string()
        };
        if canonical.len() > MAX_OCTETS * 2 {
            return Err(SerialError::TooLong);
        }
        Ok(Self(canonical))
    }

    /// From the content octets of a DER INTEGER (as `x509_cert::serial_number::SerialNumber`
    /// holds them): the sign byte is dropped.
    pub fn from_der_bytes(bytes: &[u8]) -> Result<Self, SerialError> {
        let significant: &[u8] = match bytes.iter().position(|b| *b != 0) {
            Some(i) => &bytes[i..],
            None => &[0],
        };
        if significant.len() > MAX_OCTETS {
            return Err(SerialError::TooLong);
        }
        Ok(Self(hex_upper(significant)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The integer's big-endian bytes (no sign byte).
    pub fn to_bytes(&self) -> Vec<u8> {
        decode_hex(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CertSerial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for CertSerial {
    type Error = SerialError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CertSerial> for String {
    fn from(s: CertSerial) -> String {
        s.0
    }
}

/// Upper-case hex without separators.
pub fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xF) as usize] as char);
    }
    s
}

/// Decodes even-length hex (either case); `None` on anything else.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_compare_as_integers() {
        let a = CertSerial::parse("04:d7:80:39").unwrap();
        assert_eq!(a.as_str(), "04D78039");
        assert_eq!(CertSerial::parse("0x4D78039").unwrap(), a);
        assert_eq!(CertSerial::parse(" 0004 D780 39 ").unwrap(), a);
        assert_eq!(CertSerial::parse("00A1B2").unwrap().as_str(), "A1B2");
        assert_eq!(CertSerial::parse("0").unwrap().as_str(), "00");
    }

    #[test]
    fn der_sign_byte_is_dropped() {
        assert_eq!(
            CertSerial::from_der_bytes(&[0x00, 0xA1, 0xB2])
                .unwrap()
                .as_str(),
            "A1B2"
        );
        assert_eq!(
            CertSerial::from_der_bytes(&[0x04, 0xD7]).unwrap().as_str(),
            "04D7"
        );
        assert_eq!(CertSerial::from_der_bytes(&[0x00]).unwrap().as_str(), "00");
    }

    #[test]
    fn bad_input_is_refused_precisely() {
        assert_eq!(CertSerial::parse("  "), Err(SerialError::Empty));
        assert_eq!(
            CertSerial::parse("12G4"),
            Err(SerialError::BadCharacter('G'))
        );
        assert_eq!(
            CertSerial::parse(&"1".repeat(81)),
            Err(SerialError::TooLong)
        );
        assert_eq!(CertSerial::parse("0x"), Err(SerialError::Empty));
    }

    #[test]
    fn round_trip_bytes() {
        let s = CertSerial::parse("A1B2").unwrap();
        assert_eq!(s.to_bytes(), vec![0xA1, 0xB2]);
        assert_eq!(decode_hex("zz"), None);
    }
}
