//! A card check the test holds: an online status check (as OCSP would be) that, once told to,
//! keeps the next certificate check waiting inside its validation — after the challenge is
//! spent, before the step commits — until the test lets it go. It gives up after 10 s
//! (`revocation_unknown`), so a test that never lets go fails instead of hanging.

use pki::facts::ParsedCert;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long a held check waits to be let go.
const HOLD_AT_MOST: Duration = Duration::from_secs(10);

pub struct HeldCheck {
    armed: AtomicBool,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    entered_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>,
    release: Mutex<mpsc::Sender<()>>,
    release_rx: Mutex<mpsc::Receiver<()>>,
}

impl HeldCheck {
    pub fn new() -> Arc<Self> {
        let (entered, entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::channel();
        Arc::new(Self {
            armed: AtomicBool::new(false),
            entered,
            entered_rx: tokio::sync::Mutex::new(entered_rx),
            release: Mutex::new(release),
            release_rx: Mutex::new(release_rx),
        })
    }

    /// The next check waits (the ones before it pass at once).
    pub fn hold_next(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Returns once the held check is waiting.
    pub async fn entered(&self) {
        self.entered_rx
            .lock()
            .await
            .recv()
            .await
            .expect("the held check is reached");
    }

    /// Lets the held check go on (it passes).
    pub fn release(&self) {
        let _ = self.release.lock().unwrap().send(());
    }
}

impl pki::validate::OnlineStatus for HeldCheck {
    fn check(
        &self,
        _cert: &ParsedCert,
        _issuer: &ParsedCert,
        _now: time::OffsetDateTime,
    ) -> pki::error::Result<()> {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.entered.send(());
        let release = self.release_rx.lock().unwrap();
        release
            .recv_timeout(HOLD_AT_MOST)
            .map_err(|_| pki::PkiError::new(pki::ErrorCode::RevocationUnknown, "no answer in time"))
    }
}
