//! A real `openssl ocsp` responder for the OCSP tests, answering from an `openssl ca` index.
//!
//! The responder stamps its answers (thisUpdate, nextUpdate) with the machine's clock and
//! openssl has no option to set it, so a test that asks it takes its time from
//! [`responder_clock`] — the one read of the wall clock in the suites — and builds its
//! certificates, index and checks relative to it: nothing in those tests names a date, and
//! under `faketime` the responder (a child process) and the test see the same moved clock.

use std::io::BufRead as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use time::OffsetDateTime;

/// The time an `openssl ocsp` responder started now stamps its answers with, in whole seconds.
pub fn responder_clock() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// An `openssl ca` index time: UTCTime before 2050, GeneralizedTime from then on (RFC 5280).
fn index_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = if t.year() < 2050 {
        format!("{:02}", t.year() % 100)
    } else {
        format!("{:04}", t.year())
    };
    format!(
        "{year}{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// One line of an `openssl ca` index for the certificate `serial_hex`: valid until ten years
/// after `at`, or, with `revoked`, revoked a day before `at`.
pub fn index_line(serial_hex: &str, cn: &str, revoked: bool, at: OffsetDateTime) -> String {
    let expires = index_time(at + time::Duration::days(3650));
    if revoked {
        let when = index_time(at - time::Duration::days(1));
        format!("R\t{expires}\t{when}\t{serial_hex}\tunknown\t/CN={cn}\n")
    } else {
        format!("V\t{expires}\t\t{serial_hex}\tunknown\t/CN={cn}\n")
    }
}

/// An `openssl ocsp` server process, killed when dropped.
pub struct OcspResponder {
    child: Child,
    pub url: String,
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `openssl ocsp` in `dir` (which holds `index.txt` and `ca.pem`), signing with
/// `signer`/`key` (files in `dir`); answers are valid for five minutes unless `extra` (passed
/// to openssl as is) sets `-ndays`.
pub fn ocsp_responder(dir: &Path, signer: &str, key: &str, extra: &[&str]) -> OcspResponder {
    // Another process may take the probed port before openssl binds it: try again.
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let mut args = vec![
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &port,
            "-rsigner",
            signer,
            "-rkey",
            key,
            "-CA",
            "ca.pem",
            "-ignore_err",
        ];
        if !extra.contains(&"-ndays") {
            args.extend_from_slice(&["-nmin", "5"]);
        }
        args.extend_from_slice(extra);
        let mut child = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openssl ocsp");
        // A bare connect-and-close probe wedges openssl 3.0's responder loop, so readiness
        // comes from its log line instead. The thread keeps draining the pipe afterwards.
        let stderr = child.stderr.take().expect("stderr piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("waiting for OCSP client connections") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let r = OcspResponder {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            return r;
        }
    }
    panic!("openssl ocsp did not start");
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn index_times_are_utctime_before_2050_and_generalized_after() {
        assert_eq!(
            index_time(datetime!(2049-12-31 23:59:59 UTC)),
            "491231235959Z"
        );
        assert_eq!(
            index_time(datetime!(2050-01-01 00:00:00 UTC)),
            "20500101000000Z"
        );
        let at = datetime!(2026-06-01 09:00 UTC);
        assert_eq!(
            index_line("0A", "x", false, at),
            "V\t360529090000Z\t\t0A\tunknown\t/CN=x\n"
        );
        assert_eq!(
            index_line("0B", "y", true, at),
            "R\t360529090000Z\t260531090000Z\t0B\tunknown\t/CN=y\n"
        );
    }
}
