//! What the HTTP layer needs from a card reader: list slots with their tokens and certificates
//! (no PIN), and sign with a PIN. PKCS#11 modules and soft cards implement it.

use std::fmt;

/// A reader slot and the card in it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Backend-specific slot identifier (PKCS#11 slot id; index for soft cards).
    pub id: u64,
    /// Human-readable reader name (`slotDescription` in the HiPKI protocol).
    pub description: String,
    pub token: Option<TokenInfo>,
}

/// A card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub label: String,
    /// The card number (`token.serialNumber` in the HiPKI protocol).
    pub serial_number: String,
    pub pin: PinState,
    pub certs: Vec<CardCert>,
}

/// What the card says about its PIN counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PinState {
    /// At least one wrong PIN since the last correct one.
    pub count_low: bool,
    /// One more wrong PIN locks the card.
    pub final_try: bool,
    pub locked: bool,
    /// Tries left, when the backend knows the exact number (soft cards do; PKCS#11 does not).
    pub tries_left: Option<u32>,
}

/// A certificate on a card, readable without a PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCert {
    pub label: String,
    /// CKA_ID (soft cards: the certificate's SHA-256), to find the matching private key.
    pub id: Vec<u8>,
    pub der: Vec<u8>,
}

/// Why a card operation failed, in the terms the HiPKI protocol reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("no card reader")]
    NoReader,
    #[error("no card in the reader")]
    NoCard,
    #[error("no PIN given")]
    NoPin,
    #[error("wrong PIN")]
    PinIncorrect { pin: PinState },
    #[error("PIN length out of range")]
    PinLenRange,
    #[error("card locked")]
    PinLocked,
    #[error("the card was removed")]
    TokenRemoved,
    #[error("no certificate or key on the card for this request")]
    NoKey,
    #[error("card error: {0}")]
    Device(String),
}

/// A card reader backend. Implementations must be safe to call from several threads; the HTTP
/// layer serialises operations per token.
pub trait CardBackend: Send + Sync {
    /// A name for logs and the status page (`softcard`, `pkcs11:/usr/lib/...so`).
    fn name(&self) -> String;

    /// Every slot with its token and certificates. Never asks for a PIN.
    fn slots(&self) -> Result<Vec<SlotInfo>, CardError>;

    /// Logs in to the token with card number `token_serial` with `pin`, signs `message` with the
    /// private key belonging to `cert` — RSA: PKCS#1 v1.5 over SHA-256 of `message`
    /// (`CKM_SHA256_RSA_PKCS`); EC P-256: ECDSA over SHA-256 of `message` (`CKM_ECDSA` on the
    /// digest), returned as DER — and logs out. Never retries a PIN.
    fn sign(
        &self,
        token_serial: &str,
        cert: &CardCert,
        pin: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, CardError>;
}

impl fmt::Debug for dyn CardBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardBackend({})", self.name())
    }
}
