//! The plain-HTTP transport of OCSP requests and CRL downloads, on `ureq` built without TLS.

use super::OcspTransport;
use crate::error::{ErrorCode, PkiError, Result};
use std::time::Duration;

/// HTTP/1.1 client for `http://` URLs only: OCSP responses are signed, and GPKI serves them over
/// plain HTTP. The whole exchange (name resolution, connecting, sending, the answer's headers and
/// body) shares one timeout; no proxy is used, redirects are not followed, and only a `200`
/// answer is taken.
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
                ocsp_request: Some(request_der),
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
            ocsp_request: None,
        },
        url,
        timeout,
        max_len,
    )
}

/// One request of [`exchange`]: what it is for (in messages) and what it sends.
struct HttpCall<'a> {
    what: &'static str,
    /// The code of every failure but an oversized body.
    code: ErrorCode,
    /// A DER OCSPRequest to POST; `None` for a GET.
    ocsp_request: Option<&'a [u8]>,
}

fn exchange(
    call: HttpCall<'_>,
    url: &str,
    timeout: Duration,
    max_len: usize,
) -> Result<Vec<u8>, PkiError> {
    let (host, port, path) = parse_http_url(url, call.code, call.what)?;
    let what = call.what;
    let unavailable = |detail: String| PkiError::new(call.code, format!("{what} {url}: {detail}"));
    let too_large = |size: String| {
        PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "{what} {url}: response body of {size} bytes exceeds the limit of {max_len} bytes"
            ),
        )
    };
    let limit = u64::try_from(max_len).unwrap_or(u64::MAX);
    let map_err = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => unavailable(format!("no answer within {timeout:?}")),
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            unavailable(format!("no answer within {timeout:?}"))
        }
        ureq::Error::HostNotFound => unavailable(format!("cannot resolve {host}")),
        ureq::Error::LargeResponseHeader(..) => unavailable("response headers too long".into()),
        ureq::Error::BodyExceedsLimit(_) => too_large(format!("more than {max_len}")),
        e => unavailable(e.to_string()),
    };

    let authority = match (host.contains(':'), port) {
        (false, 80) => host.clone(),
        (false, _) => format!("{host}:{port}"),
        (true, 80) => format!("[{host}]"),
        (true, _) => format!("[{host}]:{port}"),
    };
    let target = format!("http://{authority}{path}");
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .user_agent("")
            .accept("")
            .max_response_header_size(MAX_HEAD)
            .max_idle_connections(0)
            .build(),
    );
    let sent = match call.ocsp_request {
        Some(body) => agent
            .post(&target)
            .header("Content-Type", "application/ocsp-request")
            .header("Accept", "application/ocsp-response")
            .header("Connection", "close")
            .send(body),
        None => agent.get(&target).header("Connection", "close").call(),
    };
    let mut response = sent.map_err(&map_err)?;
    let status = response.status();
    if status != ureq::http::StatusCode::OK {
        return Err(unavailable(format!(
            "HTTP status {} {}",
            status.as_str(),
            status.canonical_reason().unwrap_or_default()
        )));
    }
    // A declared length over the cap is refused before any of the body is read.
    if let Some(n) = response.body().content_length()
        && n > limit
    {
        return Err(too_large(n.to_string()));
    }
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(&map_err)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Instant;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Reads one request from `s`: the headers and a body of the declared Content-Length.
    fn read_request(s: &mut TcpStream) -> String {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let body_len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + body_len {
                    break;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&request).into_owned()
    }

    /// Serves one connection: reads the request, waits `delay`, writes `reply`, and keeps the
    /// connection open for `hold` before closing it. Returns the URL and the request received.
    fn serve(reply: Vec<u8>, delay: Duration, hold: Duration) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/ocsp",
            listener.local_addr().unwrap().port()
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = tx.send(read_request(&mut s));
            std::thread::sleep(delay);
            let _ = s.write_all(&reply);
            std::thread::sleep(hold);
        });
        (url, rx)
    }

    /// Serves one connection with `reply` after reading the request; returns the URL.
    fn fake_server(reply: Vec<u8>, delay: Duration) -> String {
        serve(reply, delay, Duration::ZERO).0
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
        assert!(!requests[0].to_ascii_lowercase().contains("content-length"));
        let e = super::http_get("ftp://x/", Duration::from_secs(1), 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationUnknown);
    }

    #[test]
    fn the_request_is_a_plain_http_1_1_post() {
        let (url, request) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            Duration::ZERO,
            Duration::ZERO,
        );
        let body = HttpTransport
            .post(&url, b"\x30\x00", Duration::from_secs(5), 1024)
            .unwrap();
        assert_eq!(body, b"ok");
        let request = request.recv().unwrap();
        assert!(request.starts_with("POST /ocsp HTTP/1.1\r\n"), "{request}");
        let lower = request.to_ascii_lowercase();
        for header in [
            "content-type: application/ocsp-request\r\n",
            "accept: application/ocsp-response\r\n",
            "content-length: 2\r\n",
            "connection: close\r\n",
        ] {
            assert!(lower.contains(header), "{header:?} in {request}");
        }
        assert!(request.ends_with("\r\n\r\n\x30\x00"), "{request:?}");
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_before_the_body() {
        // The body never comes: only a refusal on the Content-Length header answers in time.
        for get in [false, true] {
            let (url, _) = serve(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nAAAA".to_vec(),
                Duration::ZERO,
                Duration::from_secs(5),
            );
            let started = Instant::now();
            let e = if get {
                http_get(&url, Duration::from_secs(3), 64 * 1024)
            } else {
                HttpTransport.post(&url, b"x", Duration::from_secs(3), 64 * 1024)
            }
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");
            assert!(e.detail.contains("1000000000"), "{e}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn a_body_over_the_cap_is_refused_once_the_cap_is_passed() {
        // Bodies without a length: the server sends a little more than the cap and then keeps
        // the connection open. The client stops at the cap instead of reading on to the end.
        let cap = 64 * 1024;
        let over = vec![0x41u8; cap + 100];
        let mut to_close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        to_close.extend_from_slice(&over);
        let mut chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            10 * cap
        )
        .into_bytes();
        chunked.extend_from_slice(&over);
        for reply in [to_close, chunked] {
            for get in [false, true] {
                let (url, _) = serve(reply.clone(), Duration::ZERO, Duration::from_secs(5));
                let started = Instant::now();
                let e = if get {
                    http_get(&url, Duration::from_secs(3), cap)
                } else {
                    HttpTransport.post(&url, b"x", Duration::from_secs(3), cap)
                }
                .unwrap_err();
                assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{:?}",
                    started.elapsed()
                );
            }
        }
    }

    #[test]
    fn a_silent_server_hits_the_timeout_of_a_get() {
        let url = fake_server(Vec::new(), Duration::from_secs(5));
        let started = Instant::now();
        let e = http_get(&url, Duration::from_millis(400), 1024).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
        assert!(e.detail.contains("no answer within 400ms"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_timeout_covers_the_body_too() {
        // The headers come at once, then ten of the hundred body bytes, then nothing.
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        reply.extend_from_slice(&[0x41; 10]);
        let (url, _) = serve(reply, Duration::ZERO, Duration::from_secs(5));
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
    fn redirects_are_not_followed() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let location = format!("http://{}/moved", elsewhere.local_addr().unwrap());
        for status in [
            "301 Moved Permanently",
            "302 Found",
            "307 Temporary Redirect",
        ] {
            for get in [false, true] {
                let url = fake_server(
                    format!(
                        "HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                    )
                    .into_bytes(),
                    Duration::ZERO,
                );
                let (e, code) = if get {
                    (
                        http_get(&url, Duration::from_secs(5), 1024).unwrap_err(),
                        ErrorCode::RevocationUnknown,
                    )
                } else {
                    (
                        HttpTransport
                            .post(&url, b"x", Duration::from_secs(5), 1024)
                            .unwrap_err(),
                        ErrorCode::OcspUnavailable,
                    )
                };
                assert_eq!(e.code, code, "{e}");
                assert!(e.detail.contains(&status[..3]), "{e}");
            }
        }
        assert_eq!(
            elsewhere.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn oversized_headers_are_refused() {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nX-Padding: {}\r\nContent-Length: 1\r\n\r\nA",
            "a".repeat(MAX_HEAD)
        );
        let url = fake_server(reply.into_bytes(), Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable, "{e}");
        assert!(e.detail.contains("headers too long"), "{e}");
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
