//! The plain-HTTP transport of OCSP requests and CRL downloads.

use super::OcspTransport;
use crate::error::{ErrorCode, PkiError, Result};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Minimal HTTP/1.1 client over `std::net`, for `http://` URLs only: OCSP responses are signed,
/// and GPKI serves them over plain HTTP.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpTransport;

/// Cap on the status line and headers together.
const MAX_HEAD: usize = 16 * 1024;

impl OcspTransport for HttpTransport {
    fn post(
        &self,
        url: &str,
        request_der: &[u8],
        timeout: Duration,
        max_len: usize,
    ) -> Result<Vec<u8>, PkiError> {
        exchange(
            HttpCall {
                what: "OCSP",
                code: ErrorCode::OcspUnavailable,
                method: "POST",
                headers: "Content-Type: application/ocsp-request\r\nAccept: application/ocsp-response\r\n",
                body: request_der,
            },
            url,
            timeout,
            max_len,
        )
    }
}

/// Fetches an `http://` URL (a CRL distribution point) with the same client: the whole exchange
/// within `timeout`, a body of at most `max_len` bytes. Failures are `revocation_unknown`
/// (a body over the limit `input_too_large`). CRLs are signed, so plain HTTP is enough.
pub fn http_get(url: &str, timeout: Duration, max_len: usize) -> Result<Vec<u8>, PkiError> {
    exchange(
        HttpCall {
            what: "GET",
            code: ErrorCode::RevocationUnknown,
            method: "GET",
            headers: "",
            body: &[],
        },
        url,
        timeout,
        max_len,
    )
}

/// One request of [`exchange`]: what it is for (in messages) and what it sends.
struct HttpCall<'a> {
    what: &'static str,
    code: ErrorCode,
    method: &'static str,
    /// Extra header lines, each ending in CRLF.
    headers: &'static str,
    body: &'a [u8],
}

fn exchange(
    call: HttpCall<'_>,
    url: &str,
    timeout: Duration,
    max_len: usize,
) -> Result<Vec<u8>, PkiError> {
    let request_der = call.body;
    let (host, port, path) = parse_http_url(url, call.code, call.what)?;
    let deadline = Instant::now() + timeout;
    let what = call.what;
    let unavailable = |detail: String| PkiError::new(call.code, format!("{what} {url}: {detail}"));
    let map_io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            unavailable(format!("no answer within {timeout:?}"))
        } else {
            unavailable(e.to_string())
        }
    };
    // Name resolution has no timeout in std; GPKI URLs resolve through the local resolver.
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut stream = None;
    let mut last_err = unavailable(format!("{host} resolves to no address"));
    for addr in addrs {
        let Some(left) = remaining(deadline) else {
            return Err(unavailable(format!("no answer within {timeout:?}")));
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = map_io(e),
        }
    }
    let mut stream = stream.ok_or(last_err)?;

    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let host_header = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let body_headers = if call.method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", request_der.len())
    };
    let mut msg = format!(
        "{} {path} HTTP/1.1\r\nHost: {host_header}\r\n{}{body_headers}Connection: close\r\n\r\n",
        call.method, call.headers,
    )
    .into_bytes();
    msg.extend_from_slice(request_der);
    let left =
        remaining(deadline).ok_or_else(|| unavailable(format!("no answer within {timeout:?}")))?;
    stream.set_write_timeout(Some(left)).map_err(map_io)?;
    stream.write_all(&msg).map_err(map_io)?;

    let mut conn = Conn {
        stream,
        deadline,
        buf: Vec::new(),
    };
    let head = conn
        .read_head()
        .map_err(|e| e.into_pki(&unavailable, &map_io))?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (proto, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !proto.starts_with("HTTP/1.") {
        return Err(unavailable(format!(
            "not an HTTP response: {status_line:?}"
        )));
    }
    if code != "200" {
        return Err(unavailable(format!("HTTP status {}", status_line.trim())));
    }
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| unavailable(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let too_large = |n: usize| {
        PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "{what} {url}: response body of {n} bytes or more exceeds the limit of {max_len} bytes"
            ),
        )
    };
    let body = if chunked {
        conn.read_chunked(max_len)
    } else if let Some(n) = content_length {
        if n > max_len {
            return Err(too_large(n));
        }
        conn.read_exact_body(n)
    } else {
        conn.read_to_close(max_len)
    };
    body.map_err(|e| match e {
        HttpErr::TooLarge(n) => too_large(n),
        e => e.into_pki(&unavailable, &map_io),
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn parse_http_url(url: &str, code: ErrorCode, what: &str) -> Result<(String, u16, String)> {
    let bad = |why: &str| PkiError::new(code, format!("{what} URL {url:?}: {why}"));
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') || path.contains(char::is_whitespace) {
        return Err(bad("unsupported characters"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_string(), port, path))
}

enum HttpErr {
    Io(std::io::Error),
    Protocol(String),
    TooLarge(usize),
    Timeout,
}

impl HttpErr {
    fn into_pki(
        self,
        unavailable: &dyn Fn(String) -> PkiError,
        map_io: &dyn Fn(std::io::Error) -> PkiError,
    ) -> PkiError {
        match self {
            Self::Io(e) => map_io(e),
            Self::Protocol(s) => unavailable(s),
            Self::TooLarge(n) => unavailable(format!("{n} bytes is too large")),
            Self::Timeout => map_io(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// A response being read: `buf` holds bytes received but not yet consumed.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`; `Ok(0)` at end of stream.
    fn fill(&mut self) -> Result<usize, HttpErr> {
        let left = remaining(self.deadline).ok_or(HttpErr::Timeout)?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(HttpErr::Io)?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpErr::Io(e)),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Status line and headers, without the blank line.
    fn read_head(&mut self) -> Result<Vec<u8>, HttpErr> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.take(i);
                self.take(4);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HttpErr::Protocol("response headers too long".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(
                    "connection closed before the end of the headers".into(),
                ));
            }
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, HttpErr> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i);
                self.take(2);
                return Ok(line);
            }
            if self.buf.len() > 1024 {
                return Err(HttpErr::Protocol("chunk header too long".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(
                    "connection closed inside a chunk header".into(),
                ));
            }
        }
    }

    fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, HttpErr> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(format!(
                    "connection closed after {} of {n} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.take(n))
    }

    fn read_to_close(&mut self, max_len: usize) -> Result<Vec<u8>, HttpErr> {
        while self.fill()? > 0 {
            if self.buf.len() > max_len {
                return Err(HttpErr::TooLarge(self.buf.len()));
            }
        }
        if self.buf.len() > max_len {
            return Err(HttpErr::TooLarge(self.buf.len()));
        }
        Ok(std::mem::take(&mut self.buf))
    }

    fn read_chunked(&mut self, max_len: usize) -> Result<Vec<u8>, HttpErr> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| HttpErr::Protocol(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers are ignored; the body is complete.
                return Ok(body);
            }
            let total = body.len().saturating_add(size);
            if total > max_len {
                return Err(HttpErr::TooLarge(total));
            }
            body.extend(self.read_exact_body(size)?);
            if !self.read_line()?.is_empty() {
                return Err(HttpErr::Protocol("chunk not followed by CRLF".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Serves one connection with `reply` after reading the request; returns the URL.
    fn fake_server(reply: Vec<u8>, delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/ocsp",
            listener.local_addr().unwrap().port()
        );
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            std::thread::sleep(delay);
            let _ = s.write_all(&reply);
        });
        url
    }

    #[test]
    fn silent_responder_times_out() {
        let url = fake_server(Vec::new(), Duration::from_secs(5));
        let started = Instant::now();
        let e = HttpTransport
            .post(&url, b"x", Duration::from_millis(400), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn http_body_size_is_capped() {
        let big = vec![0x41u8; 100_000];
        let mut with_length = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        with_length.extend_from_slice(&big);
        let url = fake_server(with_length, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");

        let mut to_close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        to_close.extend_from_slice(&big);
        let url = fake_server(to_close, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8000\r\n".to_vec();
        let mut chunked = chunked;
        chunked.extend_from_slice(&big[..0x8000]);
        chunked.extend_from_slice(b"\r\n8000\r\n");
        chunked.extend_from_slice(&big[..0x8000]);
        chunked.extend_from_slice(b"\r\n1\r\nA\r\n0\r\n\r\n");
        let url = fake_server(chunked, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");
    }

    #[test]
    fn http_bodies_and_statuses() {
        let url = fake_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
                .to_vec(),
            Duration::ZERO,
        );
        assert_eq!(
            HttpTransport
                .post(&url, b"x", Duration::from_secs(5), 1024)
                .unwrap(),
            b"abcde"
        );

        let url = fake_server(
            b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nxyz".to_vec(),
            Duration::ZERO,
        );
        assert_eq!(
            HttpTransport
                .post(&url, b"x", Duration::from_secs(5), 1024)
                .unwrap(),
            b"xyz"
        );

        let url = fake_server(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec(),
            Duration::ZERO,
        );
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        assert!(e.detail.contains("503"), "{e}");

        let url = fake_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            Duration::ZERO,
        );
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);

        let e = HttpTransport
            .post("https://x.test/", b"x", Duration::from_secs(1), 10)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        // Nothing listens on a port we just released.
        let url = format!("http://127.0.0.1:{}/", free_port());
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(1), 10)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
    }

    #[test]
    fn http_get_fetches_a_body_within_its_cap() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/gca.crl", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .unwrap();
            }
            requests
        });
        assert_eq!(
            super::http_get(&url, Duration::from_secs(5), 100).unwrap(),
            b"hello"
        );
        let e = super::http_get(&url, Duration::from_secs(5), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge);
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("GET /gca.crl HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(!requests[0].contains("Content-Length"));
        let e = super::http_get("ftp://x/", Duration::from_secs(1), 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationUnknown);
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_http_url("http://a.test", ErrorCode::OcspUnavailable, "OCSP").unwrap(),
            ("a.test".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url(
                "HTTP://a.test:8080/x/y?z",
                ErrorCode::OcspUnavailable,
                "OCSP"
            )
            .unwrap(),
            ("a.test".into(), 8080, "/x/y?z".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/", ErrorCode::OcspUnavailable, "OCSP").unwrap(),
            ("::1".into(), 81, "/".into())
        );
        assert!(parse_http_url("http://u@a.test/", ErrorCode::OcspUnavailable, "OCSP").is_err());
        assert!(parse_http_url("http://:80/", ErrorCode::OcspUnavailable, "OCSP").is_err());
        assert!(parse_http_url("ftp://a.test/", ErrorCode::OcspUnavailable, "OCSP").is_err());
    }
}
