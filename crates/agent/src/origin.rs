//! Web origins as the agent compares them. One strict parser reads the configured
//! `--allow-origin` values, the request's Origin header, the `postMessage` sender's origin the
//! popup relays, and the `origin=` line of a certreg challenge, and writes each in one form
//! (scheme and host lower case, the scheme's default port left out, no trailing slash), so that
//! two spellings of one origin compare equal and anything the parser does not understand is
//! refused rather than guessed at.

use std::fmt;

/// Why a value is not an origin the agent accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("{0:?} is not an http(s) origin (scheme://host[:port])")]
    Malformed(String),
    #[error(
        "{0:?} would let every page use the agent (null, *, file: and other schemes are refused)"
    )]
    Opaque(String),
    #[error("{0:?} has a path, query or user name; give the origin only (scheme://host[:port])")]
    HasPath(String),
    #[error(
        "{0:?} has a non-ASCII host; give its punycode (xn--) form, as browsers send it in Origin"
    )]
    NotAscii(String),
    #[error(
        "{0:?} is plain http on a host other than the loopback: anyone on the network path could \
         use the card through it (start the agent with --allow-insecure-origin to accept it)"
    )]
    InsecureHttp(String),
}

/// A parsed origin: `http`/`https`, a lower-case ASCII host (a name, a dotted IPv4 address or a
/// bracketed IPv6 address) and the port when it is not the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    https: bool,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Reads `scheme://host[:port]` exactly; `with_root_slash` also accepts one trailing `/`
    /// (how people type a configured origin; browsers never send it).
    fn read(text: &str, with_root_slash: bool) -> Result<Self, OriginError> {
        let err_malformed = || OriginError::Malformed(text.to_string());
        if !text.is_ascii() {
            return Err(OriginError::NotAscii(text.to_string()));
        }
        let lower = text.to_ascii_lowercase();
        let (https, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, r)
        } else if lower == "null" || lower == "*" || lower.contains(':') {
            return Err(OriginError::Opaque(text.to_string()));
        } else {
            return Err(err_malformed());
        };
        let rest = match rest.strip_suffix('/') {
            Some(r) if with_root_slash => r,
            _ => rest,
        };
        if rest.contains(['/', '?', '#', '@', '\\']) {
            return Err(OriginError::HasPath(text.to_string()));
        }
        let (host, port_text) = if let Some(v6) = rest.strip_prefix('[') {
            let (inner, after) = v6.split_once(']').ok_or_else(err_malformed)?;
            let ok = !inner.is_empty()
                && inner.contains(':')
                && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            if !ok {
                return Err(err_malformed());
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(err_malformed)?),
            };
            (format!("[{inner}]"), port)
        } else {
            let (h, p) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !h.starts_with('.')
                && !h.ends_with('.')
                && !h.contains("..");
            if !ok {
                return Err(err_malformed());
            }
            (h.to_string(), p)
        };
        let port = match port_text {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err_malformed());
                }
                let n: u16 = p.parse().map_err(|_| err_malformed())?;
                if n == 0 {
                    return Err(err_malformed());
                }
                let default = if https { 443 } else { 80 };
                (n != default).then_some(n)
            }
        };
        Ok(Self { https, host, port })
    }

    /// An Origin header, a relayed `postMessage` origin or a challenge's `origin=`: exactly
    /// `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        Self::read(text, false)
    }

    /// Whether the host is this machine: `localhost`, `127.x.x.x` or `[::1]`.
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" || self.host == "[::1]" {
            return true;
        }
        let parts: Vec<&str> = self.host.split('.').collect();
        parts.len() == 4
            && parts[0] == "127"
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u8>().is_ok())
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match self.port {
            Some(p) => write!(f, "{scheme}://{}:{p}", self.host),
            None => write!(f, "{scheme}://{}", self.host),
        }
    }
}

/// A `--allow-origin` value, checked and written in the one form: refuses what would open the
/// agent to every page (`null`, `*`, `file:` and other schemes, a path) and plain `http://`
/// other than the loopback unless `allow_insecure_http`.
pub fn parse_allowed(value: &str, allow_insecure_http: bool) -> Result<String, OriginError> {
    let origin = Origin::read(value.trim(), true)?;
    if !origin.is_https() && !origin.is_loopback() && !allow_insecure_http {
        return Err(OriginError::InsecureHttp(value.to_string()));
    }
    Ok(origin.to_string())
}

/// The one form of an origin for comparison, `None` when it is not an origin.
pub fn normalize(text: &str) -> Option<String> {
    Origin::parse(text).ok().map(|o| o.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_origin_compare_equal() {
        for s in [
            "https://certreg.example.gov.tw",
            "HTTPS://Certreg.Example.GOV.tw",
            "https://certreg.example.gov.tw:443",
            "https://certreg.example.gov.tw:00443",
        ] {
            assert_eq!(
                normalize(s).as_deref(),
                Some("https://certreg.example.gov.tw"),
                "{s}"
            );
        }
        assert_eq!(
            normalize("http://localhost:80").as_deref(),
            Some("http://localhost")
        );
        assert_eq!(
            normalize("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            normalize("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
    }

    #[test]
    fn different_origins_stay_different() {
        let n = |s: &str| normalize(s).unwrap();
        // Other scheme, other port, other host (the loopback's two names are two origins).
        assert_ne!(
            n("http://certreg.example.gov.tw"),
            n("https://certreg.example.gov.tw")
        );
        assert_ne!(
            n("https://certreg.example.gov.tw:8443"),
            n("https://certreg.example.gov.tw")
        );
        assert_ne!(n("http://127.0.0.1:8080"), n("http://localhost:8080"));
        assert_ne!(n("https://xn--fiq228c.tw"), n("https://fiq228c.tw"));
    }

    #[test]
    fn anything_but_an_exact_origin_is_refused() {
        for s in [
            "",
            "null",
            "*",
            "file://",
            "file:///etc/passwd",
            "chrome-extension://abcdef",
            "https://",
            "https://certreg.example.gov.tw/",
            "https://certreg.example.gov.tw/login",
            "https://certreg.example.gov.tw?x",
            "https://certreg.example.gov.tw#x",
            "https://user@certreg.example.gov.tw",
            "https://certreg.example.gov.tw.",
            "https://certreg..example",
            "https://certreg.example.gov.tw:",
            "https://certreg.example.gov.tw:0",
            "https://certreg.example.gov.tw:65536",
            "https://certreg.example.gov.tw:+443",
            "https://certreg.example.gov.tw:443:443",
            "https://憑證.tw",
            "https:// certreg.example.gov.tw",
            "https://[::1",
            "https://[]",
            "https://[zz::1]",
            "https://certreg.example.gov.tw\\@evil.example",
        ] {
            assert!(Origin::parse(s).is_err(), "{s:?} was accepted");
        }
    }

    #[test]
    fn configured_origins_refuse_what_opens_the_agent_to_everyone() {
        let ok = |s: &str| parse_allowed(s, false).unwrap();
        assert_eq!(
            ok("https://Certreg.Example:443/"),
            "https://certreg.example"
        );
        assert_eq!(ok(" https://certreg.example "), "https://certreg.example");
        assert_eq!(ok("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(ok("http://localhost:8080/"), "http://localhost:8080");
        assert_eq!(ok("http://[::1]:8080"), "http://[::1]:8080");
        let err = |s: &str| parse_allowed(s, false).unwrap_err();
        assert!(matches!(err("null"), OriginError::Opaque(_)));
        assert!(matches!(err("*"), OriginError::Opaque(_)));
        assert!(matches!(err("file:///"), OriginError::Opaque(_)));
        assert!(matches!(
            err("https://certreg.example/app"),
            OriginError::HasPath(_)
        ));
        assert!(matches!(
            err("https://certreg.example//"),
            OriginError::HasPath(_)
        ));
        assert!(matches!(err("https://憑證.tw"), OriginError::NotAscii(_)));
        assert!(matches!(
            err("http://certreg.example"),
            OriginError::InsecureHttp(_)
        ));
        // 127.0.0.1.example.com is not the loopback.
        assert!(matches!(
            err("http://127.0.0.1.example.com"),
            OriginError::InsecureHttp(_)
        ));
        assert_eq!(
            parse_allowed("http://certreg.example", true).unwrap(),
            "http://certreg.example"
        );
        assert!(parse_allowed("*", true).is_err());
    }
}
