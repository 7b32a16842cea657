//! The PKCS#11 backend against real SoftHSM2 tokens: listing without a PIN, RSA and ECDSA
//! signatures verified by the pki crate and by OpenSSL, wrong PINs, unknown tokens, concurrency
//! and the time one signature takes.

use crate::harness::{NOW, run, slot_of, softhsm_test};
use agent::backend::{CardBackend, CardError, PinState};
use agent::pkcs11::Pkcs11Backend;
use pki::anchors::Role;
use pki::challenge::Challenge;
use pki::cms::{CmsSignOptions, build_signed_data};
use pki::proof::{ProofFormat, verify_proof};
use pki::sig::{SigAlg, verify};
use pki::{ErrorCode, PkiError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ORIGIN: &str = "https://certreg.example.gov.tw";

fn challenge(step: &str) -> Challenge {
    Challenge::new("first_registration", ORIGIN, "flow-1", step, NOW).unwrap()
}

softhsm_test! {
    /// Every token, its serial number (= card number) and its certificate, with no PIN given;
    /// the blank slot SoftHSM always offers shows no card.
    fn slots_list_tokens_serials_and_certificates_without_pin(fx) {
        let backend = fx.backend();
        assert_eq!(backend.name(), format!("pkcs11:{}", crate::harness::MODULE));
        let slots = backend.slots().unwrap();
        for t in &fx.tokens {
            let slot = slot_of(&slots, &t.label);
            let token = slot.token.as_ref().unwrap();
            assert_eq!(token.serial_number, t.serial, "{}", t.label);
            if t.label != "p11-wrongpin" {
                // The wrong-PIN test's own token: its count-low depends on test order.
                assert_eq!(token.pin, PinState::default(), "{}", t.label);
            }
            assert!(!slot.description.is_empty());
            if t.card.is_some() {
                assert_eq!(token.certs.len(), 1, "{}", t.label);
                assert_eq!(token.certs[0].der, t.cert_der);
                assert_eq!(token.certs[0].id, t.id);
                assert_eq!(token.certs[0].label, t.label);
            } else {
                assert!(token.certs.is_empty());
            }
        }
        assert!(
            slots.iter().any(|s| s.token.is_none()),
            "SoftHSM's free (uninitialised) slot is listed without a card"
        );
        let mut ids: Vec<u64> = slots.iter().map(|s| s.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), slots.len(), "slot ids are unique");

        // The same module listed twice is one module, not every slot twice.
        let module = PathBuf::from(crate::harness::MODULE);
        let twice = Pkcs11Backend::open(&[module.clone(), module]).unwrap();
        assert_eq!(twice.slots().unwrap().len(), slots.len());
    }
}

softhsm_test! {
    /// CKM_SHA256_RSA_PKCS: a PKCS#1 v1.5 SHA-256 signature over the message itself.
    fn rsa_signature_verifies(fx) {
        let t = fx.token("p11-rsa");
        let msg = challenge("org_card").tbs();
        let sig = fx
            .backend()
            .sign(&t.serial, &t.card_cert(), &t.pin, msg.as_bytes())
            .unwrap();
        assert_eq!(sig.len(), 256);
        verify(&t.spki(), SigAlg::RsaSha256, msg.as_bytes(), &sig).unwrap();
        assert!(verify(&t.spki(), SigAlg::RsaSha256, b"other", &sig).is_err());
    }
}

softhsm_test! {
    /// A full HiPKI-style CMS signed on the token verifies as a proof (pki crate) and with
    /// `openssl cms -verify`, and carries the token serial as the card number.
    fn rsa_cms_verifies_as_proof_and_with_openssl(fx) {
        let t = fx.token("p11-rsa");
        let backend = fx.backend();
        let c = challenge("org_card");
        let tbs = c.tbs();
        let opts = CmsSignOptions {
            signing_time: Some(NOW),
            nonce: Some(vec![0x5A; 16]),
            card_number: Some(t.serial.clone()),
            ..Default::default()
        };
        let cms = build_signed_data(tbs.as_bytes(), &t.cert_der, &opts, |m| {
            backend
                .sign(&t.serial, &t.card_cert(), &t.pin, m)
                .map_err(|e| PkiError::new(ErrorCode::ProofMalformed, e.to_string()))
        })
        .unwrap();
        let ok = verify_proof(&t.validator(), &c, &cms, None, Role::Organization, NOW).unwrap();
        assert_eq!(ok.format, ProofFormat::CmsAttached);
        assert_eq!(ok.attrs.card_number.as_deref(), Some(t.serial.as_str()));

        let dir = &fx.dir;
        let sig = dir.join("rsa-cms.der");
        let ca = dir.join("rsa-ca.pem");
        let out = dir.join("rsa-cms.out");
        std::fs::write(&sig, &cms).unwrap();
        std::fs::write(&ca, t.ca_bundle()).unwrap();
        run(
            "openssl",
            &[
                "cms", "-verify", "-inform", "DER",
                "-in", sig.to_str().unwrap(),
                "-CAfile", ca.to_str().unwrap(),
                "-purpose", "any",
                "-attime", &NOW.unix_timestamp().to_string(),
                "-out", out.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(std::fs::read(out).unwrap(), tbs.as_bytes());
    }
}

softhsm_test! {
    /// CKM_ECDSA over SHA-256(message) (SoftHSM has no CKM_ECDSA_SHA256), returned as DER;
    /// also as a CMS proof.
    fn ecdsa_signature_is_der_and_verifies(fx) {
        let t = fx.token("p11-ec");
        let backend = fx.backend();
        let c = challenge("admin_card");
        let msg = c.tbs();
        let sig = backend
            .sign(&t.serial, &t.card_cert(), &t.pin, msg.as_bytes())
            .unwrap();
        assert_eq!(sig[0], 0x30, "DER SEQUENCE, not raw r‖s");
        verify(&t.spki(), SigAlg::EcdsaSha256, msg.as_bytes(), &sig).unwrap();

        let cms = build_signed_data(msg.as_bytes(), &t.cert_der, &CmsSignOptions::default(), |m| {
            backend
                .sign(&t.serial, &t.card_cert(), &t.pin, m)
                .map_err(|e| PkiError::new(ErrorCode::ProofMalformed, e.to_string()))
        })
        .unwrap();
        verify_proof(&t.validator(), &c, &cms, None, Role::Citizen, NOW).unwrap();
    }
}

softhsm_test! {
    /// A wrong PIN: `PinIncorrect` with count-low re-read from the token, one try only. SoftHSM
    /// then never locks: after many more wrong PINs the right one still works (hence the fake
    /// token in `fake.rs` for the lock path).
    fn wrong_pin_reports_count_low_and_softhsm_never_locks(fx) {
        let t = fx.token("p11-wrongpin");
        let backend = fx.backend();
        let flags = |b: &Pkcs11Backend| slot_of(&b.slots().unwrap(), &t.label).token.clone().unwrap().pin;
        assert_eq!(flags(&backend), PinState::default());

        let e = backend.sign(&t.serial, &t.card_cert(), "000000", b"m").unwrap_err();
        let CardError::PinIncorrect { pin } = e else { panic!("{e:?}") };
        assert!(pin.count_low, "{pin:?}");
        assert!(!pin.final_try && !pin.locked && pin.tries_left.is_none(), "{pin:?}");
        assert!(flags(&backend).count_low, "listing shows count-low too");

        let sig = backend.sign(&t.serial, &t.card_cert(), &t.pin, b"m").unwrap();
        verify(&t.spki(), SigAlg::RsaSha256, b"m", &sig).unwrap();
        let after_good = flags(&backend);
        println!("SoftHSM count-low after a correct PIN: {}", after_good.count_low);
        assert!(!after_good.count_low, "a correct login clears count-low");

        for _ in 0..10 {
            let e = backend.sign(&t.serial, &t.card_cert(), "000000", b"m").unwrap_err();
            assert!(matches!(e, CardError::PinIncorrect { pin } if !pin.locked && !pin.final_try), "{e:?}");
        }
        assert!(backend.sign(&t.serial, &t.card_cert(), &t.pin, b"m").is_ok(),
            "SoftHSM 2.6 does not lock a PIN after 10 wrong tries");
    }
}

softhsm_test! {
    /// PINs outside the token's length range (SoftHSM: 4..=255 bytes) are refused as
    /// `PinLenRange` before login, so no try is spent. Why not leave it to the token: SoftHSM's
    /// C_Login does not check the length, it answers CKR_PIN_INCORRECT and sets count-low
    /// (observed with SoftHSM 2.6.1 before this check existed).
    fn pin_length_out_of_range_costs_no_try(fx) {
        let t = fx.token("p11-pinlen");
        let backend = fx.backend();
        for pin in ["12".to_string(), "9".repeat(300)] {
            let e = backend.sign(&t.serial, &t.card_cert(), &pin, b"m").unwrap_err();
            assert_eq!(e, CardError::PinLenRange, "PIN of {} characters", pin.len());
        }
        // An empty PIN is refused before the token sees it too.
        assert_eq!(backend.sign(&t.serial, &t.card_cert(), "", b"m"), Err(CardError::NoPin));
        let token = slot_of(&backend.slots().unwrap(), &t.label).token.clone().unwrap();
        assert!(!token.pin.count_low, "no PIN try was spent: {:?}", token.pin);
    }
}

softhsm_test! {
    /// A serial no slot holds (the card was pulled out, or never there) is `TokenRemoved`; a
    /// certificate whose CKA_ID has no key is `NoKey`.
    fn unknown_token_and_missing_key(fx) {
        let t = fx.token("p11-rsa");
        let backend = fx.backend();
        assert_eq!(
            backend.sign("0000000000000000", &t.card_cert(), &t.pin, b"m"),
            Err(CardError::TokenRemoved)
        );
        let mut other = t.card_cert();
        other.id = vec![0xFF; 4];
        assert_eq!(backend.sign(&t.serial, &other, &t.pin, b"m"), Err(CardError::NoKey));
        // The failed key lookup logged out: the next signature logs in normally.
        assert!(backend.sign(&t.serial, &t.card_cert(), &t.pin, b"m").is_ok());
    }
}

softhsm_test! {
    /// Four threads sign on one token at once (and a fifth lists slots meanwhile): all succeed,
    /// no CKR_USER_ALREADY_LOGGED_IN, because signatures on one token are serialised inside.
    fn concurrent_signs_on_one_token(fx) {
        let t = fx.token("p11-rsa");
        let backend = fx.backend();
        std::thread::scope(|s| {
            let signers: Vec<_> = (0..4)
                .map(|i| {
                    let backend = &backend;
                    s.spawn(move || {
                        for j in 0..5 {
                            let msg = format!("thread {i} message {j}");
                            let sig = backend
                                .sign(&t.serial, &t.card_cert(), &t.pin, msg.as_bytes())
                                .unwrap_or_else(|e| panic!("thread {i} sign {j}: {e:?}"));
                            verify(&t.spki(), SigAlg::RsaSha256, msg.as_bytes(), &sig).unwrap();
                        }
                    })
                })
                .collect();
            let lister = s.spawn(|| {
                for _ in 0..10 {
                    let slots = backend.slots().unwrap();
                    assert_eq!(slot_of(&slots, &t.label).token.as_ref().unwrap().certs.len(), 1);
                }
            });
            for h in signers {
                h.join().unwrap();
            }
            lister.join().unwrap();
        });
    }
}

softhsm_test! {
    /// How long one signature takes through SoftHSM (find token, open session, login, sign,
    /// logout, close). Printed; run with `--nocapture` to see it.
    fn signature_time(fx) {
        let backend = fx.backend();
        for label in ["p11-rsa", "p11-ec"] {
            let t = fx.token(label);
            backend.sign(&t.serial, &t.card_cert(), &t.pin, b"warm-up").unwrap();
            let n = 20;
            let mut times = Vec::new();
            for i in 0..n {
                let msg = format!("timing {i}");
                let start = Instant::now();
                backend.sign(&t.serial, &t.card_cert(), &t.pin, msg.as_bytes()).unwrap();
                times.push(start.elapsed());
            }
            times.sort();
            let total: Duration = times.iter().sum();
            println!(
                "SoftHSM {label}: one signature (login+sign+logout) median {:.2} ms, mean {:.2} ms, min {:.2} ms over {n}",
                times[n / 2].as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3 / n as f64,
                times[0].as_secs_f64() * 1e3,
            );
        }
    }
}
