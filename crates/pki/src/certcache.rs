//! Parsed certificates kept by the SHA-256 of their exact DER bytes: what depends only on those
//! bytes (the decoded certificate and its facts) is read once per certificate, not once per
//! proof. Another encoding of the same certificate is other bytes and so another entry; only
//! certificates that parse are kept, and the cache never holds more than its capacity (it is
//! emptied when full, so a flood of distinct certificates costs time, never memory).

use crate::error::Result;
use crate::facts::ParsedCert;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many parsed certificates a validator keeps by default (a few KiB each).
pub const DEFAULT_CERT_CACHE_CAPACITY: usize = 2048;

/// A bounded map from SHA-256(DER) to the parsed certificate.
#[derive(Debug)]
pub struct CertCache {
    map: Mutex<HashMap<[u8; 32], Arc<ParsedCert>>>,
    capacity: usize,
}

impl Default for CertCache {
    fn default() -> Self {
        Self::new(DEFAULT_CERT_CACHE_CAPACITY)
    }
}

impl CertCache {
    /// A cache of at most `capacity` certificates (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The certificate of exactly these DER bytes, parsed now or earlier. Errors are not kept:
    /// bytes that do not parse are refused again, the same way, each time.
    pub fn parse(&self, der: &[u8]) -> Result<Arc<ParsedCert>> {
        let key = digest(der);
        if let Ok(map) = self.map.lock()
            && let Some(hit) = map.get(&key)
        {
            return Ok(hit.clone());
        }
        let parsed = Arc::new(ParsedCert::from_der(der.to_vec())?);
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(key, parsed.clone());
        }
        Ok(parsed)
    }

    /// How many certificates are held.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most certificates held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn digest(der: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    key
}
