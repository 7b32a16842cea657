//! Soft cards: a folder of PKCS#12 files, each one a card whose PIN is the file's password, for
//! demos and tests. Which cards are "in a reader" and the wrong-PIN counters live in a JSON state
//! file, so that ejecting, inserting and a locked card survive a restart of the agent.
//!
//! Folder layout (what `certreg pki generate` writes in `cards/`): `<name>.p12` and, beside it,
//! the certificate `<name>.pem` (or `.crt`/`.cer`, PEM or DER). The certificate file is what the
//! agent lists without a PIN, as a real card's certificate is readable without one; at signing
//! time the certificate inside the PKCS#12 must be that same certificate.

use crate::backend::{CardBackend, CardCert, CardError, PinState, SlotInfo, TokenInfo};
use pki::ErrorCode;
use pki::facts::{ParsedCert, decode_input, sha256_hex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Wrong PINs a soft card accepts before it locks, as GPKI cards do.
pub const MAX_PIN_TRIES: u32 = 3;
/// Longer "PINs" are refused without counting, as a card refuses a PIN of the wrong length.
const MAX_PIN_LEN: usize = 64;
/// The state file's name inside the folder unless configured otherwise.
pub const DEFAULT_STATE_FILE: &str = "agent-state.json";

/// Reader description of reader `n` (1-based), the HiPKI `slotDescription`.
pub fn reader_description(n: u32) -> String {
    format!("certreg soft reader {n}")
}

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Reader number (1-based) → the card name in it.
    #[serde(default)]
    readers: BTreeMap<u32, String>,
    /// Card name → wrong PINs since the last right one. A card at [`MAX_PIN_TRIES`] is locked.
    #[serde(default)]
    wrong_pins: BTreeMap<String, u32>,
}

/// One card of the folder, for `certreg agent cards list` and the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SoftCardInfo {
    pub name: String,
    pub card_number: String,
    /// The reader it is in, if inserted.
    pub reader: Option<u32>,
    #[serde(skip)]
    pub pin: PinState,
    pub wrong_pins: u32,
    pub locked: bool,
    /// Why the card cannot be used (no certificate file beside it …), if so.
    pub problem: Option<String>,
}

/// A card file found in the folder.
#[derive(Debug, Clone)]
struct CardFile {
    name: String,
    p12: PathBuf,
    cert_der: Option<Vec<u8>>,
    problem: Option<String>,
    card_number: String,
}

/// The soft-card backend.
#[derive(Debug)]
pub struct SoftCards {
    dir: PathBuf,
    state_path: PathBuf,
    /// Card numbers from a test-PKI `index.json` (card name → number), read once.
    numbers: HashMap<String, String>,
    /// Serialises read-modify-write of the state file within this process.
    lock: Mutex<()>,
}

fn device(e: impl std::fmt::Display) -> CardError {
    CardError::Device(e.to_string())
}

/// A card name is a file stem in the folder: no separators, no way out of it.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
}

fn pin_state(wrong: u32) -> PinState {
    let left = MAX_PIN_TRIES.saturating_sub(wrong);
    PinState {
        count_low: wrong > 0,
        final_try: left == 1,
        locked: left == 0,
        tries_left: Some(left),
    }
}

/// `index.json` of a test PKI (beside the folder or one level up): card name → card number.
fn read_index(dir: &Path) -> HashMap<String, String> {
    let candidates = [
        Some(dir.join("index.json")),
        dir.parent().map(|p| p.join("index.json")),
    ];
    for path in candidates.into_iter().flatten() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(index) = serde_json::from_str::<serde_json::Value>(&text) else {
            tracing::warn!(path = %path.display(), "index.json is not JSON; card numbers derived from certificates");
            continue;
        };
        let mut map = HashMap::new();
        for entry in index["files"].as_array().into_iter().flatten() {
            if entry["kind"] != "pkcs12" {
                continue;
            }
            if let (Some(card), Some(number)) =
                (entry["card"].as_str(), entry["card_number"].as_str())
            {
                map.insert(card.to_string(), number.to_string());
            }
        }
        return map;
    }
    HashMap::new()
}

impl SoftCards {
    /// Soft cards in `dir`, state in `<dir>/agent-state.json`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CardError> {
        let dir = dir.into();
        let state_path = dir.join(DEFAULT_STATE_FILE);
        Self::open_with_state(dir, state_path)
    }

    /// Soft cards in `dir` with the state file elsewhere.
    pub fn open_with_state(
        dir: impl Into<PathBuf>,
        state_path: impl Into<PathBuf>,
    ) -> Result<Self, CardError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(CardError::NoReader);
        }
        let numbers = read_index(&dir);
        Ok(Self {
            dir,
            state_path: state_path.into(),
            numbers,
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding it leaves no half-written state (writes are atomic), so a
        // poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_state(&self) -> Result<State, CardError> {
        match std::fs::read(&self.state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                device(format!(
                    "state file {} is not valid: {e}",
                    self.state_path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(device(format!(
                "reading {}: {e}",
                self.state_path.display()
            ))),
        }
    }

    /// Writes a temporary file beside the state file and renames it over: a crash leaves the
    /// old or the new state, never half of one.
    fn save_state(&self, state: &State) -> Result<(), CardError> {
        let text = serde_json::to_string_pretty(state).map_err(device)?;
        let file_name = self
            .state_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| DEFAULT_STATE_FILE.to_string());
        let tmp = self
            .state_path
            .with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            device(format!("writing {}: {e}", self.state_path.display()))
        })
    }

    fn card_file(&self, name: &str) -> Result<CardFile, CardError> {
        if !valid_name(name) {
            return Err(device(format!("{name:?} is not a card name")));
        }
        let p12 = self.dir.join(format!("{name}.p12"));
        if !p12.is_file() {
            return Err(device(format!(
                "no card file {name}.p12 in {}",
                self.dir.display()
            )));
        }
        let mut cert_der = None;
        let mut problem = Some(format!(
            "no certificate file {name}.pem (or .crt/.cer) beside {name}.p12"
        ));
        for ext in ["pem", "crt", "cer"] {
            let path = self.dir.join(format!("{name}.{ext}"));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match decode_input(&bytes).and_then(ParsedCert::from_der) {
                Ok(parsed) => {
                    cert_der = Some(parsed.der);
                    problem = None;
                }
                Err(e) => problem = Some(format!("{}: {e}", path.display())),
            }
            break;
        }
        // The number a real card carries is printed on it; ours comes from the test PKI's
        // index, else from the certificate so that it is at least stable.
        let card_number = self.numbers.get(name).cloned().unwrap_or_else(|| {
            cert_der
                .as_deref()
                .map(|der| sha256_hex(der)[..16].to_string())
                .unwrap_or_else(|| sha256_hex(name.as_bytes())[..16].to_string())
        });
        Ok(CardFile {
            name: name.to_string(),
            p12,
            cert_der,
            problem,
            card_number,
        })
    }

    /// Every `.p12` in the folder, by name.
    fn card_names(&self) -> Result<Vec<String>, CardError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| device(format!("reading {}: {e}", self.dir.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                (path.extension()? == "p12")
                    .then(|| path.file_stem()?.to_str().map(str::to_string))
                    .flatten()
            })
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every card of the folder with its reader and PIN counter.
    pub fn cards(&self) -> Result<Vec<SoftCardInfo>, CardError> {
        let state = {
            let _g = self.guard();
            self.load_state()?
        };
        let mut out = Vec::new();
        for name in self.card_names()? {
            let file = self.card_file(&name)?;
            let wrong = state.wrong_pins.get(&name).copied().unwrap_or(0);
            out.push(SoftCardInfo {
                reader: state
                    .readers
                    .iter()
                    .find(|(_, n)| **n == name)
                    .map(|(r, _)| *r),
                card_number: file.card_number,
                pin: pin_state(wrong),
                wrong_pins: wrong,
                locked: wrong >= MAX_PIN_TRIES,
                problem: file.problem,
                name,
            });
        }
        Ok(out)
    }

    /// Puts card `name` into the lowest free reader; returns the reader number. Inserting a card
    /// that is already in a reader leaves it there.
    pub fn insert(&self, name: &str) -> Result<u32, CardError> {
        let file = self.card_file(name)?;
        if let Some(problem) = file.problem {
            return Err(device(problem));
        }
        let _g = self.guard();
        let mut state = self.load_state()?;
        if let Some((reader, _)) = state.readers.iter().find(|(_, n)| *n == name) {
            return Ok(*reader);
        }
        let reader = (1..).find(|r| !state.readers.contains_key(r)).unwrap_or(1);
        state.readers.insert(reader, name.to_string());
        self.save_state(&state)?;
        tracing::info!(card = name, reader, "soft card inserted");
        Ok(reader)
    }

    /// Takes card `name` out of its reader; `false` when it was not in one.
    pub fn eject(&self, name: &str) -> Result<bool, CardError> {
        if !valid_name(name) {
            return Err(device(format!("{name:?} is not a card name")));
        }
        let _g = self.guard();
        let mut state = self.load_state()?;
        let before = state.readers.len();
        state.readers.retain(|_, n| n != name);
        if state.readers.len() == before {
            return Ok(false);
        }
        self.save_state(&state)?;
        tracing::info!(card = name, "soft card ejected");
        Ok(true)
    }

    fn token_of(&self, file: &CardFile, wrong: u32) -> Option<TokenInfo> {
        let der = file.cert_der.clone()?;
        let id = ring::digest::digest(&ring::digest::SHA256, &der)
            .as_ref()
            .to_vec();
        Some(TokenInfo {
            label: file.name.clone(),
            serial_number: file.card_number.clone(),
            pin: pin_state(wrong),
            certs: vec![CardCert {
                label: file.name.clone(),
                id,
                der,
            }],
        })
    }
}

impl CardBackend for SoftCards {
    fn name(&self) -> String {
        format!("softcard:{}", self.dir.display())
    }

    fn slots(&self) -> Result<Vec<SlotInfo>, CardError> {
        let state = {
            let _g = self.guard();
            self.load_state()?
        };
        // Readers 1..=highest in use (at least one), so that an empty reader is still a reader
        // and a card keeps its reader when another one is ejected.
        let last = state.readers.keys().max().copied().unwrap_or(1).max(1);
        let mut slots = Vec::new();
        for n in 1..=last {
            let token = match state.readers.get(&n) {
                None => None,
                Some(name) => match self.card_file(name) {
                    Ok(file) => {
                        let wrong = state.wrong_pins.get(name).copied().unwrap_or(0);
                        self.token_of(&file, wrong)
                    }
                    // The file was deleted while "inserted": the reader is empty.
                    Err(_) => None,
                },
            };
            slots.push(SlotInfo {
                id: u64::from(n),
                description: reader_description(n),
                token,
            });
        }
        Ok(slots)
    }

    fn sign(
        &self,
        token_serial: &str,
        cert: &CardCert,
        pin: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, CardError> {
        let _g = self.guard();
        let mut state = self.load_state()?;
        let file = state
            .readers
            .values()
            .filter_map(|name| self.card_file(name).ok())
            .find(|f| f.card_number == token_serial)
            .ok_or(CardError::TokenRemoved)?;
        let wrong = state.wrong_pins.get(&file.name).copied().unwrap_or(0);
        if wrong >= MAX_PIN_TRIES {
            return Err(CardError::PinLocked);
        }
        if pin.is_empty() {
            return Err(CardError::NoPin);
        }
        if pin.len() > MAX_PIN_LEN {
            return Err(CardError::PinLenRange);
        }
        let bytes = std::fs::read(&file.p12)
            .map_err(|e| device(format!("reading {}: {e}", file.p12.display())))?;
        let contents = match pki::pkcs12::read_pkcs12(&bytes, pin) {
            Ok(c) => c,
            Err(e) if e.code == ErrorCode::WrongPassword => {
                let wrong = wrong + 1;
                state.wrong_pins.insert(file.name.clone(), wrong);
                self.save_state(&state)?;
                tracing::info!(card = %file.name, wrong, "soft card: wrong PIN");
                return Err(if wrong >= MAX_PIN_TRIES {
                    CardError::PinLocked
                } else {
                    CardError::PinIncorrect {
                        pin: pin_state(wrong),
                    }
                });
            }
            Err(e) => return Err(device(e)),
        };
        if wrong > 0 {
            state.wrong_pins.remove(&file.name);
            self.save_state(&state)?;
        }
        if contents.cert_der != cert.der || file.cert_der.as_deref() != Some(&cert.der[..]) {
            return Err(CardError::NoKey);
        }
        pki::sig::sign_pkcs8(&contents.key_pkcs8_der, message).map_err(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_states_count_down_to_locked() {
        assert_eq!(
            pin_state(0),
            PinState {
                tries_left: Some(3),
                ..PinState::default()
            }
        );
        let one = pin_state(1);
        assert!(one.count_low && !one.final_try && !one.locked);
        let two = pin_state(2);
        assert!(two.count_low && two.final_try && !two.locked);
        assert!(pin_state(3).locked);
    }

    #[test]
    fn card_names_cannot_leave_the_folder() {
        assert!(valid_name("gca-agency"));
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
    }
}
