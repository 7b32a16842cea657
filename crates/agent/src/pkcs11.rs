//! The PKCS#11 card backend: every slot of every configured module, certificates read without a
//! PIN, and one login → sign → logout per signature, with PKCS#11 return values mapped to the
//! HiPKI error kinds of [`CardError`].
//!
//! What shaped it (DESIGN §2):
//! - Tokens move between slots when initialised or re-plugged, so a signature finds its token by
//!   serial number (= card number) every time instead of remembering a slot id.
//! - Login state belongs to the application and the token, not to a session: a second `C_Login`
//!   from another thread returns `CKR_USER_ALREADY_LOGGED_IN`, and one thread's logout logs the
//!   other out. So signatures on one token are serialised here, whatever the caller does.
//! - SoftHSM has no `CKM_ECDSA_SHA256`: EC keys sign a SHA-256 digest with `CKM_ECDSA`, and the
//!   raw r‖s the token returns is converted to DER.
//! - A PIN is tried exactly once per request; a wrong PIN is never retried here, and a PIN
//!   outside the token's length range is not sent at all (SoftHSM would count it as wrong).

use crate::backend::{CardBackend, CardCert, CardError, PinState, SlotInfo, TokenInfo};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// `CKF_USER_PIN_COUNT_LOW` (PKCS#11 v2.40 §3.2, CK_TOKEN_INFO flags).
pub const CKF_USER_PIN_COUNT_LOW: u64 = 0x0001_0000;
/// `CKF_USER_PIN_FINAL_TRY`.
pub const CKF_USER_PIN_FINAL_TRY: u64 = 0x0002_0000;
/// `CKF_USER_PIN_LOCKED`.
pub const CKF_USER_PIN_LOCKED: u64 = 0x0004_0000;

/// Where in the protocol a PKCS#11 error happened: a vanished token means "no card" while
/// listing, but "the card was removed" in the middle of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    List,
    Sign,
}

/// Maps a PKCS#11 return value to the HiPKI error kind.
///
/// `CKR_PIN_INCORRECT` yields `PinIncorrect` with an empty [`PinState`]: the caller re-reads the
/// token flags after the failed login and fills it in (see [`sign_in_session`]).
pub fn map_rv(rv: RvError, phase: Phase) -> CardError {
    match rv {
        RvError::PinIncorrect => CardError::PinIncorrect {
            pin: PinState::default(),
        },
        RvError::PinLenRange => CardError::PinLenRange,
        RvError::PinLocked => CardError::PinLocked,
        RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::DeviceRemoved
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::SlotIdInvalid => match phase {
            Phase::List => CardError::NoCard,
            Phase::Sign => CardError::TokenRemoved,
        },
        other => CardError::Device(format!("PKCS#11 {other:?}")),
    }
}

/// Maps any cryptoki error: PKCS#11 return values by [`map_rv`], the rest (library loading,
/// conversions) as device errors.
pub fn map_error(e: &Error, phase: Phase) -> CardError {
    match e {
        Error::Pkcs11(rv, function) => match map_rv(*rv, phase) {
            CardError::Device(d) => CardError::Device(format!("{d} in {function}")),
            mapped => mapped,
        },
        other => CardError::Device(other.to_string()),
    }
}

/// The PIN counter as the token reports it in `CK_TOKEN_INFO.flags`. PKCS#11 has no tries-left
/// number, only these three flags.
pub fn pin_state_from_flags(flags: u64) -> PinState {
    PinState {
        count_low: flags & CKF_USER_PIN_COUNT_LOW != 0,
        final_try: flags & CKF_USER_PIN_FINAL_TRY != 0,
        locked: flags & CKF_USER_PIN_LOCKED != 0,
        tries_left: None,
    }
}

fn flags_of(info: &cryptoki::slot::TokenInfo) -> u64 {
    let mut flags = 0;
    if info.user_pin_count_low() {
        flags |= CKF_USER_PIN_COUNT_LOW;
    }
    if info.user_pin_final_try() {
        flags |= CKF_USER_PIN_FINAL_TRY;
    }
    if info.user_pin_locked() {
        flags |= CKF_USER_PIN_LOCKED;
    }
    flags
}

/// Whether `pin` fits the token's `ulMinPinLen..=ulMaxPinLen` (bytes). A token that reports no
/// usable range (max 0, or min > max) gets every PIN.
pub fn pin_len_ok(pin: &str, min: usize, max: usize) -> bool {
    if max == 0 || min > max {
        return true;
    }
    (min..=max).contains(&pin.len())
}

/// The kind of private key, which decides the mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
}

/// The PKCS#11 calls one signature makes on an open session. The real implementation is a
/// cryptoki session; tests substitute a fake token for what SoftHSM cannot do (lock a PIN).
pub trait SignSession {
    type Key: Copy;
    /// `C_Login(CKU_USER, pin)`.
    fn login(&self, pin: &str) -> Result<(), Error>;
    /// `C_Logout`.
    fn logout(&self) -> Result<(), Error>;
    /// `CK_TOKEN_INFO.flags`, re-read (after a wrong PIN, for the counter flags).
    fn token_flags(&self) -> Result<u64, Error>;
    /// The first private key with this `CKA_ID`, and its `CKA_KEY_TYPE`.
    fn find_private_key(&self, id: &[u8]) -> Result<Option<(Self::Key, KeyKind)>, Error>;
    /// `C_SignInit` + `C_Sign`.
    fn sign(
        &self,
        key: Self::Key,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, Error>;
}

/// One signature on an open session: login with `pin` (once), find the key with `key_id`, sign
/// (RSA: `CKM_SHA256_RSA_PKCS` over `message`; EC: `CKM_ECDSA` over SHA-256(`message`), raw r‖s
/// converted to DER), and log out whatever happened after a successful login.
pub fn sign_in_session<S: SignSession>(
    session: &S,
    key_id: &[u8],
    pin: &str,
    message: &[u8],
) -> Result<Vec<u8>, CardError> {
    if pin.is_empty() {
        return Err(CardError::NoPin);
    }
    match session.login(pin) {
        Ok(()) => {}
        Err(Error::Pkcs11(RvError::PinIncorrect, _)) => {
            // The counter flags changed with this failure; the page shows "tries left" from them.
            // If the token cannot say, the PIN was still wrong: report that, flags unknown.
            let pin = session
                .token_flags()
                .map(pin_state_from_flags)
                .unwrap_or_default();
            return Err(CardError::PinIncorrect { pin });
        }
        Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, function)) => {
            // Someone in this process is logged in (we serialise our own signatures, so not us).
            // The PIN was not checked; logging in again would be a retry, so report it and leave
            // the token logged out for the next request.
            let _ = session.logout();
            return Err(CardError::Device(format!(
                "PKCS#11 UserAlreadyLoggedIn in {function}"
            )));
        }
        Err(e) => return Err(map_error(&e, Phase::Sign)),
    }
    let result = sign_logged_in(session, key_id, message);
    if let Err(e) = session.logout() {
        // The signature (or its error) stands; closing the session logs the token out anyway
        // when it is this application's last session.
        tracing::warn!(error = %e, "PKCS#11 logout failed");
    }
    result
}

fn sign_logged_in<S: SignSession>(
    session: &S,
    key_id: &[u8],
    message: &[u8],
) -> Result<Vec<u8>, CardError> {
    let (key, kind) = session
        .find_private_key(key_id)
        .map_err(|e| map_error(&e, Phase::Sign))?
        .ok_or(CardError::NoKey)?;
    match kind {
        KeyKind::Rsa => session
            .sign(key, &Mechanism::Sha256RsaPkcs, message)
            .map_err(|e| map_error(&e, Phase::Sign)),
        KeyKind::Ec => {
            let digest = sha256(message);
            let raw = session
                .sign(key, &Mechanism::Ecdsa, &digest)
                .map_err(|e| map_error(&e, Phase::Sign))?;
            pki::sig::ecdsa_raw_to_der(&raw)
                .map_err(|e| CardError::Device(format!("ECDSA signature from the token: {e}")))
        }
    }
}

/// SHA-256 through the `pki` crate (ring), which the agent already depends on; the token's own
/// `C_Digest` is not used because many smart-card modules do not offer it.
fn sha256(data: &[u8]) -> Vec<u8> {
    let hex = pki::facts::sha256_hex(data);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_default())
        .collect()
}

/// A real session on a token.
struct CkSession<'a> {
    ctx: &'a Pkcs11,
    slot: Slot,
    session: Session,
}

impl SignSession for CkSession<'_> {
    type Key = ObjectHandle;

    fn login(&self, pin: &str) -> Result<(), Error> {
        self.session
            .login(UserType::User, Some(&AuthPin::from(pin)))
    }

    fn logout(&self) -> Result<(), Error> {
        self.session.logout()
    }

    fn token_flags(&self) -> Result<u64, Error> {
        self.ctx.get_token_info(self.slot).map(|i| flags_of(&i))
    }

    fn find_private_key(&self, id: &[u8]) -> Result<Option<(ObjectHandle, KeyKind)>, Error> {
        let keys = self.session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])?;
        let Some(&key) = keys.first() else {
            return Ok(None);
        };
        let attrs = self
            .session
            .get_attributes(key, &[AttributeType::KeyType])?;
        let kind = attrs.iter().find_map(|a| match a {
            Attribute::KeyType(t) if *t == KeyType::RSA => Some(KeyKind::Rsa),
            Attribute::KeyType(t) if *t == KeyType::EC => Some(KeyKind::Ec),
            _ => None,
        });
        // A key we cannot sign with (DSA, EdDSA…) is as good as no key for this request.
        Ok(kind.map(|k| (key, k)))
    }

    fn sign(
        &self,
        key: ObjectHandle,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.session.sign(mechanism, key, data)
    }
}

/// A loaded and initialised module. Kept for the life of the process: `C_Initialize` may be
/// called once per process and module, and unloading a module without `C_Finalize` while
/// another backend still uses it would pull the library out from under it.
struct Module {
    path: PathBuf,
    ctx: Pkcs11,
}

fn module(path: &Path) -> Result<Arc<Module>, CardError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let canonical = path
        .canonicalize()
        .map_err(|e| CardError::Device(format!("PKCS#11 module {}: {e}", path.display())))?;
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = modules.get(&canonical) {
        return Ok(m.clone());
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| {
        CardError::Device(format!(
            "cannot load PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another component of this process initialised it first; the library is shared.
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(CardError::Device(format!(
                "cannot initialise PKCS#11 module {}: {e}",
                path.display()
            )));
        }
    }
    let m = Arc::new(Module {
        // As configured (for the name shown), while the registry is keyed by canonical path.
        path: path.to_path_buf(),
        ctx,
    });
    modules.insert(canonical, m.clone());
    Ok(m)
}

/// One lock per token serial for the whole process (several backends may share a module):
/// login state is per token, so two signatures on one token must not overlap.
fn token_lock(serial: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(serial.to_string())
        .or_default()
        .clone()
}

/// Cards behind one or more PKCS#11 modules (the module paths are configuration).
pub struct Pkcs11Backend {
    modules: Vec<Arc<Module>>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field(
                "modules",
                &self.modules.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pkcs11Backend {
    /// Loads and initialises each module (once per process; a module listed twice counts once).
    pub fn open(modules: &[PathBuf]) -> Result<Self, CardError> {
        let mut loaded: Vec<Arc<Module>> = Vec::new();
        for path in modules {
            let m = module(path)?;
            if !loaded.iter().any(|l| Arc::ptr_eq(l, &m)) {
                loaded.push(m);
            }
        }
        Ok(Self { modules: loaded })
    }

    /// Slot ids are unique across modules: module index in the high 32 bits, the module's own
    /// slot id in the low 32 bits. They are for display and the caller's bookkeeping only;
    /// signatures find their token by serial number.
    fn slot_id(index: usize, slot: Slot) -> u64 {
        ((index as u64) << 32) | (slot.id() & 0xFFFF_FFFF)
    }

    fn read_token(m: &Module, slot: Slot) -> Result<Option<TokenInfo>, CardError> {
        let info = m
            .ctx
            .get_token_info(slot)
            .map_err(|e| map_error(&e, Phase::List))?;
        if !info.token_initialized() {
            // A blank card (SoftHSM always offers one free slot) cannot sign: show no card.
            return Ok(None);
        }
        let session = m
            .ctx
            .open_ro_session(slot)
            .map_err(|e| map_error(&e, Phase::List))?;
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(cryptoki::object::CertificateType::X_509),
            ])
            .map_err(|e| map_error(&e, Phase::List))?;
        let mut certs = Vec::new();
        for h in handles {
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::Value,
                    ],
                )
                .map_err(|e| map_error(&e, Phase::List))?;
            let mut cert = CardCert {
                label: String::new(),
                id: Vec::new(),
                der: Vec::new(),
            };
            for a in attrs {
                match a {
                    Attribute::Label(l) => cert.label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(id) => cert.id = id,
                    Attribute::Value(v) => cert.der = v,
                    _ => {}
                }
            }
            if !cert.der.is_empty() {
                certs.push(cert);
            }
        }
        Ok(Some(TokenInfo {
            label: info.label().to_string(),
            serial_number: info.serial_number().to_string(),
            pin: pin_state_from_flags(flags_of(&info)),
            certs,
        }))
    }

    /// The module and slot holding the token with this serial number, looked up now.
    fn find_token(
        &self,
        serial: &str,
    ) -> Result<(&Module, Slot, cryptoki::slot::TokenInfo), CardError> {
        // A slot or module that fails to answer may be someone else's broken reader: keep
        // looking, and report its error only if the token is not found anywhere.
        let mut failure = None;
        for m in &self.modules {
            let slots = match m.ctx.get_slots_with_token() {
                Ok(slots) => slots,
                Err(e) => {
                    failure.get_or_insert(map_error(&e, Phase::Sign));
                    continue;
                }
            };
            for slot in slots {
                match m.ctx.get_token_info(slot) {
                    Ok(info) if info.serial_number() == serial => return Ok((m, slot, info)),
                    Ok(_) => {}
                    // A token leaving another slot during the scan is not our concern.
                    Err(e) if map_error(&e, Phase::Sign) == CardError::TokenRemoved => {}
                    Err(e) => {
                        failure.get_or_insert(map_error(&e, Phase::Sign));
                    }
                }
            }
        }
        Err(failure.unwrap_or(CardError::TokenRemoved))
    }
}

impl CardBackend for Pkcs11Backend {
    fn name(&self) -> String {
        let paths: Vec<String> = self
            .modules
            .iter()
            .map(|m| m.path.display().to_string())
            .collect();
        format!("pkcs11:{}", paths.join(","))
    }

    fn slots(&self) -> Result<Vec<SlotInfo>, CardError> {
        let mut out = Vec::new();
        for (index, m) in self.modules.iter().enumerate() {
            let slots = m
                .ctx
                .get_all_slots()
                .map_err(|e| map_error(&e, Phase::List))?;
            for slot in slots {
                let info = match m.ctx.get_slot_info(slot) {
                    Ok(info) => info,
                    // The reader went away between the two calls.
                    Err(e) if map_error(&e, Phase::List) == CardError::NoCard => continue,
                    Err(e) => return Err(map_error(&e, Phase::List)),
                };
                let token = if info.token_present() {
                    match Self::read_token(m, slot) {
                        Ok(t) => t,
                        // Pulled out while we were reading it: an empty slot now.
                        Err(CardError::NoCard) => None,
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                out.push(SlotInfo {
                    id: Self::slot_id(index, slot),
                    description: info.slot_description().to_string(),
                    token,
                });
            }
        }
        if out.is_empty() {
            return Err(CardError::NoReader);
        }
        Ok(out)
    }

    fn sign(
        &self,
        token_serial: &str,
        cert: &CardCert,
        pin: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, CardError> {
        // Checked before touching the card: neither costs a PIN try.
        if pin.is_empty() {
            return Err(CardError::NoPin);
        }
        if cert.id.is_empty() {
            return Err(CardError::NoKey);
        }
        let lock = token_lock(token_serial);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up after taking the lock: the token may have moved while we waited.
        let (m, slot, info) = self.find_token(token_serial)?;
        // A PIN the token says cannot be valid is refused here: sent to the card it would cost
        // a try (SoftHSM, for one, answers CKR_PIN_INCORRECT and counts it), and GPKI cards
        // lock after three.
        if !pin_len_ok(pin, info.min_pin_length(), info.max_pin_length()) {
            return Err(CardError::PinLenRange);
        }
        let session = m
            .ctx
            .open_ro_session(slot)
            .map_err(|e| map_error(&e, Phase::Sign))?;
        let session = CkSession {
            ctx: &m.ctx,
            slot,
            session,
        };
        sign_in_session(&session, &cert.id, pin, message)
    }
}
