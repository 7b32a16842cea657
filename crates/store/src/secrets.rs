//! Keys for personal data at rest: AES-256-GCM for national IDs and flow data, and an HMAC key
//! for looking rows up by national ID without decrypting them (SPEC §4.4).

use crate::error::StoreError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use domain::types::NationalId;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::path::Path;

/// Prefix of every encrypted value, so that a later key or algorithm change can tell old values
/// from new ones.
const V1: &str = "v1:";

/// The two keys. They are independent: the hash key must not let anyone decrypt, and rotating
/// the encryption key must not change lookup hashes.
#[derive(Clone)]
pub struct Secrets {
    enc_key: [u8; 32],
    hash_key: [u8; 32],
    /// `enc_key` and `hash_key` expanded once (AES round keys and GHASH table, HMAC pads),
    /// not again for every value.
    aead: LessSafeKey,
    hmac: hmac::Key,
    chain: crate::audit::ChainKey,
}

impl PartialEq for Secrets {
    fn eq(&self, other: &Self) -> bool {
        self.enc_key == other.enc_key && self.hash_key == other.hash_key
    }
}

impl Eq for Secrets {}

// Keys never reach a log.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// Fresh random keys.
    pub fn generate() -> Result<Self, StoreError> {
        let rng = SystemRandom::new();
        let mut enc_key = [0u8; 32];
        let mut hash_key = [0u8; 32];
        rng.fill(&mut enc_key)
            .and_then(|_| rng.fill(&mut hash_key))
            .map_err(|_| StoreError::Key("the system random generator failed".into()))?;
        Ok(Self::of(enc_key, hash_key))
    }

    /// The keys given.
    fn of(enc_key: [u8; 32], hash_key: [u8; 32]) -> Self {
        Self {
            // A 32-byte key is always a valid AES-256 key.
            aead: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &enc_key).expect("32-byte AES key"),
            ),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &hash_key),
            chain: crate::audit::ChainKey::derive(&hash_key),
            enc_key,
            hash_key,
        }
    }

    /// Parses the key file format: base64 of the 32-byte encryption key followed by the 32-byte
    /// hash key (one line; surrounding whitespace ignored). Fits an environment variable too.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| StoreError::Key(format!("key is not base64: {e}")))?;
        if bytes.len() != 64 {
            return Err(StoreError::Key(format!(
                "key must be 64 bytes (encryption key + hash key), got {}",
                bytes.len()
            )));
        }
        let mut enc_key = [0u8; 32];
        let mut hash_key = [0u8; 32];
        enc_key.copy_from_slice(&bytes[..32]);
        hash_key.copy_from_slice(&bytes[32..]);
        Ok(Self::of(enc_key, hash_key))
    }

    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&self.enc_key);
        bytes.extend_from_slice(&self.hash_key);
        B64.encode(bytes)
    }

    /// Reads the key file, or creates it with fresh keys (mode 0600) when it does not exist.
    /// Losing this file makes every stored national ID unreadable: back it up with the database.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                warn_if_readable_by_others(path);
                Self::from_base64(&text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secrets = Self::generate()?;
                write_new_private(path, format!("{}\n", secrets.to_base64()).as_bytes()).map_err(
                    |e| StoreError::Key(format!("cannot create key file {}: {e}", path.display())),
                )?;
                Ok(secrets)
            }
            Err(e) => Err(StoreError::Key(format!(
                "cannot read key file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Encrypts `plain` as `v1:` + base64(nonce ‖ ciphertext ‖ tag). `purpose` is bound as
    /// associated data, so a value copied into another column does not decrypt there.
    pub fn encrypt(&self, purpose: &str, plain: &[u8]) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Key("the system random generator failed".into()))?;
        let mut buf = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Key("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("{V1}{}", B64.encode(out)))
    }

    pub fn decrypt(&self, purpose: &str, stored: &str) -> Result<Vec<u8>, StoreError> {
        let bad = |why: &str| StoreError::Key(format!("cannot decrypt a stored {purpose}: {why}"));
        let body = stored
            .strip_prefix(V1)
            .ok_or_else(|| bad("unknown format"))?;
        let bytes = B64.decode(body).map_err(|_| bad("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(bad("too short"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("bad nonce"))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
            .map_err(|_| bad("wrong key or altered value"))?;
        Ok(plain.to_vec())
    }

    /// The key of the audit chain.
    pub(crate) fn chain_key(&self) -> &crate::audit::ChainKey {
        &self.chain
    }

    /// The keyed hash that finds rows by national ID (hex HMAC-SHA256).
    pub fn id_hash(&self, id: &NationalId) -> String {
        hex(hmac::sign(&self.hmac, id.as_str().as_bytes()).as_ref())
    }
}

/// The form lists and logs show (SPEC §4.4), e.g. `A12****789`.
pub fn mask_national_id(id: &NationalId) -> String {
    id.masked()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(unix)]
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: two processes starting at once must not each write their own keys.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "key file is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_purpose_binding() {
        let s = Secrets::generate().unwrap();
        let a = s.encrypt("operators.national_id", b"A123456789").unwrap();
        let b = s.encrypt("operators.national_id", b"A123456789").unwrap();
        assert!(a.starts_with("v1:"));
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(
            s.decrypt("operators.national_id", &a).unwrap(),
            b"A123456789"
        );
        assert!(s.decrypt("registrations.admin_id", &a).is_err());
        let other = Secrets::generate().unwrap();
        assert!(other.decrypt("operators.national_id", &a).is_err());
    }

    #[test]
    fn key_text_round_trip_and_hash_is_keyed() {
        let s = Secrets::generate().unwrap();
        assert_eq!(Secrets::from_base64(&s.to_base64()).unwrap(), s);
        assert!(Secrets::from_base64("AAAA").is_err());
        let id = NationalId::parse("A123456789").unwrap();
        let other = Secrets::generate().unwrap();
        assert_eq!(s.id_hash(&id), s.id_hash(&id));
        assert_ne!(s.id_hash(&id), other.id_hash(&id));
        assert_eq!(mask_national_id(&id), "A12****789");
        assert_eq!(format!("{s:?}"), "Secrets(..)");
    }

    #[test]
    fn key_file_is_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certreg.key");
        let a = Secrets::load_or_create(&path).unwrap();
        let b = Secrets::load_or_create(&path).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(
            Secrets::load_or_create(&path).is_err(),
            "a broken key file is never replaced"
        );
    }
}
