//! The error mapping, the PIN-flag mapping and the signature flow on a **fake token**.
//!
//! STAND-IN: SoftHSM2 never locks a PIN (it only sets count-low, see
//! `softhsm::wrong_pin_reports_count_low_and_softhsm_never_locks`), never sets final-try, does
//! not check PIN lengths at login, and cannot be pulled out mid-signature. What a real card does
//! there is played here by `FakeToken`, which implements the same `SignSession` trait as the
//! real cryptoki session and answers with the PKCS#11 return values a card would give. These
//! tests show what the backend makes of those answers; they do not show that any real card
//! answers that way.

use agent::backend::{CardError, PinState};
use agent::pkcs11::{
    CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, KeyKind, Phase,
    SignSession, map_error, map_rv, pin_len_ok, pin_state_from_flags, sign_in_session,
};
use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use std::cell::{Cell, RefCell};

fn ck(rv: RvError, f: Function) -> Error {
    Error::Pkcs11(rv, f)
}

/// A scripted token: what login and sign answer, the flags after a failed login, and a log of
/// the calls made, to check "one login, always a logout, never a retry".
struct FakeToken {
    login: Option<RvError>,
    flags_after_login_failure: u64,
    key: Option<KeyKind>,
    sign: Result<Vec<u8>, RvError>,
    logins: Cell<u32>,
    logouts: Cell<u32>,
    signed: RefCell<Vec<(MechanismType, Vec<u8>)>>,
}

impl FakeToken {
    fn new() -> Self {
        Self {
            login: None,
            flags_after_login_failure: 0,
            key: Some(KeyKind::Rsa),
            sign: Ok(vec![1; 256]),
            logins: Cell::new(0),
            logouts: Cell::new(0),
            signed: RefCell::new(Vec::new()),
        }
    }
}

impl SignSession for FakeToken {
    type Key = u32;

    fn login(&self, _pin: &str) -> Result<(), Error> {
        self.logins.set(self.logins.get() + 1);
        match self.login {
            None => Ok(()),
            Some(rv) => Err(ck(rv, Function::Login)),
        }
    }

    fn logout(&self) -> Result<(), Error> {
        self.logouts.set(self.logouts.get() + 1);
        Ok(())
    }

    fn token_flags(&self) -> Result<u64, Error> {
        Ok(self.flags_after_login_failure)
    }

    fn find_private_key(&self, _id: &[u8]) -> Result<Option<(u32, KeyKind)>, Error> {
        Ok(self.key.map(|k| (7, k)))
    }

    fn sign(&self, key: u32, mechanism: &Mechanism<'_>, data: &[u8]) -> Result<Vec<u8>, Error> {
        assert_eq!(key, 7);
        self.signed
            .borrow_mut()
            .push((mechanism.mechanism_type(), data.to_vec()));
        self.sign.clone().map_err(|rv| ck(rv, Function::Sign))
    }
}

#[test]
fn error_mapping_table() {
    use Phase::{List, Sign};
    let cases = [
        (RvError::PinLenRange, List, CardError::PinLenRange),
        (RvError::PinLocked, Sign, CardError::PinLocked),
        (RvError::TokenNotPresent, List, CardError::NoCard),
        (RvError::TokenNotPresent, Sign, CardError::TokenRemoved),
        (RvError::DeviceRemoved, List, CardError::NoCard),
        (RvError::DeviceRemoved, Sign, CardError::TokenRemoved),
        (RvError::SessionHandleInvalid, Sign, CardError::TokenRemoved),
        (RvError::SessionClosed, Sign, CardError::TokenRemoved),
        (RvError::TokenNotRecognized, Sign, CardError::TokenRemoved),
        (RvError::SlotIdInvalid, List, CardError::NoCard),
    ];
    for (rv, phase, want) in cases {
        assert_eq!(map_rv(rv, phase), want, "{rv:?} in {phase:?}");
    }
    assert_eq!(
        map_rv(RvError::PinIncorrect, Sign),
        CardError::PinIncorrect {
            pin: PinState::default()
        },
        "the flow fills in the re-read flags"
    );
    for rv in [
        RvError::DeviceError,
        RvError::GeneralError,
        RvError::UserAlreadyLoggedIn,
        RvError::MechanismInvalid,
    ] {
        assert!(matches!(map_rv(rv, Sign), CardError::Device(_)), "{rv:?}");
    }
    let e = map_error(&ck(RvError::DeviceError, Function::Sign), Sign);
    assert!(
        matches!(&e, CardError::Device(d) if d.contains("DeviceError") && d.contains("Sign")),
        "names the return value and the function: {e:?}"
    );
    assert!(matches!(
        map_error(&Error::NullFunctionPointer, List),
        CardError::Device(_)
    ));
}

#[test]
fn pin_flags_from_synthetic_token_info_flags() {
    // Flags a real card reports in CK_TOKEN_INFO; SoftHSM only ever sets count-low.
    let other_flags = 0x0000_0400 | 0x0000_0004; // CKF_TOKEN_INITIALIZED | CKF_LOGIN_REQUIRED
    assert_eq!(pin_state_from_flags(other_flags), PinState::default());
    let low = pin_state_from_flags(other_flags | CKF_USER_PIN_COUNT_LOW);
    assert!(low.count_low && !low.final_try && !low.locked);
    let last = pin_state_from_flags(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY);
    assert!(last.count_low && last.final_try && !last.locked);
    let locked = pin_state_from_flags(CKF_USER_PIN_LOCKED);
    assert!(locked.locked && !locked.final_try);
    assert_eq!(locked.tries_left, None, "PKCS#11 reports no exact count");
}

#[test]
fn fake_locked_card_is_pin_locked_after_one_login_attempt() {
    let t = FakeToken {
        login: Some(RvError::PinLocked),
        ..FakeToken::new()
    };
    assert_eq!(
        sign_in_session(&t, b"id", "123456", b"m"),
        Err(CardError::PinLocked)
    );
    assert_eq!(t.logins.get(), 1, "never retried");
    assert_eq!(t.logouts.get(), 0, "not logged in, nothing to log out");
    assert!(t.signed.borrow().is_empty());
}

#[test]
fn fake_wrong_pin_on_the_final_try_reports_the_reread_flags() {
    let t = FakeToken {
        login: Some(RvError::PinIncorrect),
        flags_after_login_failure: CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY,
        ..FakeToken::new()
    };
    let e = sign_in_session(&t, b"id", "111111", b"m").unwrap_err();
    assert_eq!(
        e,
        CardError::PinIncorrect {
            pin: PinState {
                count_low: true,
                final_try: true,
                locked: false,
                tries_left: None
            }
        }
    );
    assert_eq!(t.logins.get(), 1, "never retried");
}

#[test]
fn fake_pin_length_out_of_range() {
    let t = FakeToken {
        login: Some(RvError::PinLenRange),
        ..FakeToken::new()
    };
    assert_eq!(
        sign_in_session(&t, b"id", "12", b"m"),
        Err(CardError::PinLenRange)
    );
}

#[test]
fn fake_card_pulled_out_during_sign_is_token_removed_and_logged_out() {
    let t = FakeToken {
        sign: Err(RvError::DeviceRemoved),
        ..FakeToken::new()
    };
    assert_eq!(
        sign_in_session(&t, b"id", "123456", b"m"),
        Err(CardError::TokenRemoved)
    );
    assert_eq!((t.logins.get(), t.logouts.get()), (1, 1));
}

#[test]
fn fake_already_logged_in_is_not_retried_and_logs_out() {
    let t = FakeToken {
        login: Some(RvError::UserAlreadyLoggedIn),
        ..FakeToken::new()
    };
    let e = sign_in_session(&t, b"id", "123456", b"m").unwrap_err();
    assert!(
        matches!(e, CardError::Device(ref d) if d.contains("UserAlreadyLoggedIn")),
        "{e:?}"
    );
    assert_eq!((t.logins.get(), t.logouts.get()), (1, 1));
}

#[test]
fn fake_no_key_logs_out() {
    let t = FakeToken {
        key: None,
        ..FakeToken::new()
    };
    assert_eq!(
        sign_in_session(&t, b"id", "123456", b"m"),
        Err(CardError::NoKey)
    );
    assert_eq!((t.logins.get(), t.logouts.get()), (1, 1));
}

#[test]
fn fake_empty_pin_never_reaches_the_token() {
    let t = FakeToken::new();
    assert_eq!(sign_in_session(&t, b"id", "", b"m"), Err(CardError::NoPin));
    assert_eq!(t.logins.get(), 0);
}

#[test]
fn fake_mechanisms_rsa_over_message_ec_over_digest_with_der_output() {
    let rsa = FakeToken::new();
    assert_eq!(
        sign_in_session(&rsa, b"id", "123456", b"message").unwrap(),
        vec![1; 256]
    );
    assert_eq!(
        rsa.signed.borrow()[0],
        (MechanismType::SHA256_RSA_PKCS, b"message".to_vec())
    );

    // r with its top bit set (DER needs a 0x00 pad), s with leading zeros (DER drops them).
    let mut raw = vec![0x80; 32];
    raw.extend([0u8; 31]);
    raw.push(0x01);
    let ec = FakeToken {
        key: Some(KeyKind::Ec),
        sign: Ok(raw),
        ..FakeToken::new()
    };
    let der = sign_in_session(&ec, b"id", "123456", b"message").unwrap();
    let mut want = vec![0x30, 0x26, 0x02, 0x21, 0x00];
    want.extend([0x80; 32]);
    want.extend([0x02, 0x01, 0x01]);
    assert_eq!(der, want);
    let (mech, data) = ec.signed.borrow()[0].clone();
    assert_eq!(mech, MechanismType::ECDSA);
    assert_eq!(
        pki::facts::sha256_hex(b"message"),
        data.iter().map(|b| format!("{b:02X}")).collect::<String>(),
        "CKM_ECDSA gets SHA-256(message), not the message"
    );
    assert_eq!(ec.logouts.get(), 1);
}

#[test]
fn pin_length_range_from_token_info() {
    // SoftHSM reports 4..=255; GPKI cards typically 6..=8 (synthetic values here).
    assert!(pin_len_ok("1234", 4, 255));
    assert!(!pin_len_ok("123", 4, 255));
    assert!(!pin_len_ok(&"1".repeat(256), 4, 255));
    assert!(pin_len_ok("123456", 6, 8) && !pin_len_ok("123456789", 6, 8));
    // No usable range reported: the token decides.
    assert!(pin_len_ok("1", 0, 0));
    assert!(pin_len_ok("1", 8, 6));
}
