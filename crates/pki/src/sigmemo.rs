//! The certificate signatures of a path that have verified, remembered by the SHA-256 of
//! everything the check depends on (algorithms, public key, signed bytes, signature): the same
//! certificate under the same issuer key is not verified with RSA again when its path is
//! built anew (after a CRL refresh, or without the path cache). Only successes are kept, and
//! at most a fixed number of them (the memo is emptied when full).

use pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use std::collections::HashSet;
use std::sync::Mutex;

/// How many verified signatures a validator remembers (32 bytes each).
pub const SIGNATURE_MEMO_CAPACITY: usize = 8192;

/// A bounded set of verified signature checks.
#[derive(Debug)]
pub(crate) struct SignatureMemo {
    seen: Mutex<HashSet<[u8; 32]>>,
    capacity: usize,
}

impl SignatureMemo {
    /// A memo of at most `capacity` signatures; none at all when it is 0.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn len(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }
}

/// A webpki signature algorithm that answers from `memo` what it has verified before.
#[derive(Debug)]
pub(crate) struct Memoized<'a> {
    pub inner: &'static dyn SignatureVerificationAlgorithm,
    pub memo: &'a SignatureMemo,
}

impl Memoized<'_> {
    fn key(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        // Every part length-prefixed, so that no two inputs hash the same bytes.
        for part in [
            self.inner.public_key_alg_id().as_ref(),
            self.inner.signature_alg_id().as_ref(),
            public_key,
            message,
            signature,
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }
}

impl SignatureVerificationAlgorithm for Memoized<'_> {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key = self.key(public_key, message, signature);
        if self.memo.seen.lock().is_ok_and(|s| s.contains(&key)) {
            return Ok(());
        }
        self.inner
            .verify_signature(public_key, message, signature)?;
        if let Ok(mut seen) = self.memo.seen.lock() {
            if seen.len() >= self.memo.capacity {
                seen.clear();
            }
            seen.insert(key);
        }
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        false
    }
}
