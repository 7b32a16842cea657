//! SoftHSM2 test tokens, and running each SoftHSM test in a child process of this binary.
//!
//! Why a child process: SoftHSM reads `SOFTHSM2_CONF` from the environment at `C_Initialize`,
//! and the environment is process-global. Edition 2024 makes `std::env::set_var` `unsafe`, and
//! the workspace forbids `unsafe`, so this process cannot point SoftHSM at temporary tokens.
//! Instead the parent creates every token once (OnceLock), then each test re-runs this test
//! binary with `--exact <its name>` and `SOFTHSM2_CONF` set for the child only; the child runs
//! the body. The parent forwards the child's output and fails when the child fails or did not
//! run exactly that one test.

#![allow(dead_code)]

use agent::backend::{CardCert, SlotInfo};
use agent::pkcs11::Pkcs11Backend;
use pki::anchors::TrustStore;
use pki::revocation::CrlStore;
use pki::validate::{ValidationOptions, Validator};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use testpki::{KeyAlg, TestPki, TestPkiOptions};
use time::OffsetDateTime;
use time::macros::datetime;

/// The reference time of the test PKIs (as in the pki crate's tests).
pub const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const SO_PIN: &str = "87654321";
/// Set in the child: the path of the fixture manifest.
const CHILD_ENV: &str = "CERTREG_P11_FIXTURE";
const INSTALL: &str = "install the Debian packages `softhsm2` and `opensc` \
     (apt-get install softhsm2 opensc); the PKCS#11 tests need real SoftHSM2 tokens";

/// One SoftHSM token with a test card's key and certificate under the same CKA_ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenFx {
    pub label: String,
    /// As `softhsm2-util --show-slots` printed it: an independent source for the check.
    pub serial: String,
    pub pin: String,
    /// The test card (name in its test PKI) whose key and certificate the token holds.
    pub card: Option<String>,
    pub pki_dir: PathBuf,
    pub ca: String,
    pub id: Vec<u8>,
    pub cert_der: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fixture {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub tokens: Vec<TokenFx>,
}

impl Fixture {
    pub fn token(&self, label: &str) -> &TokenFx {
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .unwrap_or_else(|| panic!("no test token {label}"))
    }

    pub fn backend(&self) -> Pkcs11Backend {
        Pkcs11Backend::open(&[PathBuf::from(MODULE)]).expect("SoftHSM module opens")
    }
}

impl TokenFx {
    pub fn card_cert(&self) -> CardCert {
        CardCert {
            label: self.label.clone(),
            id: self.id.clone(),
            der: self.cert_der.clone(),
        }
    }

    pub fn spki(&self) -> Vec<u8> {
        pki::facts::ParsedCert::from_der(self.cert_der.clone())
            .unwrap()
            .spki_der()
            .unwrap()
    }

    /// A validator over this card's test PKI, CRLs required, as the server would use it.
    pub fn validator(&self) -> Validator {
        let trust = TrustStore::load_dir(&self.pki_dir.join("anchors")).unwrap();
        let mut crls = CrlStore::new();
        for e in std::fs::read_dir(self.pki_dir.join("crl")).unwrap() {
            crls.add(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap();
        }
        Validator::new(trust, crls, ValidationOptions::default())
    }

    /// Root and issuing CA in one PEM file, as `openssl cms -verify -CAfile` wants them.
    pub fn ca_bundle(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.pki_dir.join(p)).unwrap();
        read("ca/grca.pem") + &read(&format!("ca/{}.pem", self.ca))
    }
}

/// The slot holding the token with this label.
pub fn slot_of<'a>(slots: &'a [SlotInfo], label: &str) -> &'a SlotInfo {
    slots
        .iter()
        .find(|s| s.token.as_ref().is_some_and(|t| t.label == label))
        .unwrap_or_else(|| panic!("no slot with token {label}: {slots:#?}"))
}

/// Runs an external tool; panics with the install hint when it is missing.
pub fn run(program: &str, args: &[&str], conf: Option<&Path>) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(conf) = conf {
        cmd.env("SOFTHSM2_CONF", conf);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What each test token holds: (label, card, RSA?, PIN override).
const TOKENS: &[(&str, Option<&str>, bool)] = &[
    ("p11-rsa", Some("gca-agency"), true),
    ("p11-ec", Some("moica-admin"), false),
    // Wrong-PIN tests change the token's counter flags: they get tokens of their own, so that
    // the flags the other tests see stay clean while tests run in parallel.
    ("p11-wrongpin", Some("gca-agency"), true),
    ("p11-pinlen", Some("gca-agency"), true),
    ("p11-blank", None, true),
];

fn create(dir: &Path) -> Fixture {
    assert!(Path::new(MODULE).exists(), "{MODULE} is missing; {INSTALL}");
    for tool in ["softhsm2-util", "pkcs11-tool", "openssl"] {
        let found = Command::new(tool).arg("--help").output().is_ok();
        assert!(
            found,
            "{tool} is missing; {INSTALL} (openssl: package `openssl`)"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();

    let rsa = TestPki::generate(TestPkiOptions::new(NOW)).expect("RSA test PKI");
    let p256 = TestPki::generate(TestPkiOptions {
        key_alg: KeyAlg::P256,
        ..TestPkiOptions::new(NOW)
    })
    .expect("P-256 test PKI");
    rsa.write_dir(&dir.join("pki-rsa")).unwrap();
    p256.write_dir(&dir.join("pki-p256")).unwrap();

    let mut tokens = Vec::new();
    for (i, &(label, card, is_rsa)) in TOKENS.iter().enumerate() {
        let (pki, pki_dir) = if is_rsa {
            (&rsa, dir.join("pki-rsa"))
        } else {
            (&p256, dir.join("pki-p256"))
        };
        let c = card.map(|name| pki.card(name));
        let pin = c.map_or("123456".to_string(), |c| c.pin.clone());
        let c_conf = Some(conf.as_path());
        run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                &pin,
            ],
            c_conf,
        );
        let id = vec![0xC0, 0xDE, i as u8];
        let (cert_der, ca) = match c {
            Some(c) => {
                let key = dir.join(format!("{label}.key.pem"));
                let cert = dir.join(format!("{label}.cert.der"));
                std::fs::write(&key, c.issued.key.pem()).unwrap();
                std::fs::write(&cert, &c.issued.cert_der).unwrap();
                run(
                    "softhsm2-util",
                    &[
                        "--import",
                        key.to_str().unwrap(),
                        "--token",
                        label,
                        "--label",
                        label,
                        "--id",
                        &hex(&id),
                        "--pin",
                        &pin,
                    ],
                    c_conf,
                );
                run(
                    "pkcs11-tool",
                    &[
                        "--module",
                        MODULE,
                        "--token-label",
                        label,
                        "--login",
                        "--pin",
                        &pin,
                        "--write-object",
                        cert.to_str().unwrap(),
                        "--type",
                        "cert",
                        "--id",
                        &hex(&id),
                        "--label",
                        label,
                    ],
                    c_conf,
                );
                (c.issued.cert_der.clone(), c.ca.slug().to_string())
            }
            None => (Vec::new(), String::new()),
        };
        tokens.push(TokenFx {
            label: label.into(),
            serial: String::new(),
            pin,
            card: card.map(str::to_string),
            pki_dir,
            ca,
            id,
            cert_der,
        });
    }

    // Serial numbers as SoftHSM's own tool reports them, block by block ("Slot N" … "Serial
    // number:" … "Label:").
    let shown = run("softhsm2-util", &["--show-slots"], Some(&conf));
    let mut serial = String::new();
    for line in shown.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix("Serial number:") {
            serial = s.trim().to_string();
        } else if let Some(l) = line.strip_prefix("Label:")
            && let Some(t) = tokens.iter_mut().find(|t| t.label == l.trim())
        {
            t.serial = serial.clone();
        }
    }
    for t in &tokens {
        assert!(!t.serial.is_empty(), "no serial for {}: {shown}", t.label);
    }
    Fixture {
        dir: dir.to_path_buf(),
        conf,
        tokens,
    }
}

/// Creates the tokens once per test binary run; returns the manifest path and the config.
fn parent_fixture() -> &'static Result<(PathBuf, PathBuf), String> {
    static FX: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    FX.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale(&base);
        let dir = base.join(format!("pkcs11-{}", std::process::id()));
        // A panic here (missing tool) becomes every SoftHSM test's failure message.
        let made = std::panic::catch_unwind(|| create(&dir)).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "creating the SoftHSM tokens failed".into())
        })?;
        let manifest = dir.join("fixture.json");
        std::fs::write(&manifest, serde_json::to_vec_pretty(&made).unwrap()).unwrap();
        Ok((manifest, made.conf))
    })
}

/// Token directories of earlier runs whose process is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("pkcs11-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Runs `body` against the SoftHSM tokens, in a child process (see the module comment).
/// `module` is `module_path!()` of the test, `name` its function name.
pub fn in_softhsm(module: &str, name: &str, body: impl FnOnce(&Fixture)) {
    if let Some(manifest) = std::env::var_os(CHILD_ENV) {
        let fx: Fixture = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        body(&fx);
        return;
    }
    let (manifest, conf) = match parent_fixture() {
        Ok(p) => p,
        Err(e) => panic!("SoftHSM test tokens: {e}"),
    };
    let test = match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_string(),
    };
    // One child at a time: SoftHSM keeps tokens in files shared by every process using the
    // config, and while one process rewrites a token (a wrong PIN persists count-low), another
    // process's C_GetTokenInfo can fail with CKR_GENERAL_ERROR or miss the token for a moment.
    // Real cards are not shared files; concurrency within one process is tested on purpose.
    static ONE_CHILD: Mutex<()> = Mutex::new(());
    let _one = ONE_CHILD.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", conf)
        .env(CHILD_ENV, manifest)
        .output()
        .expect("the test binary re-runs itself");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Forwarded so that `--nocapture` shows what the child printed (timings) and failures show
    // the child's panic.
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "SoftHSM test {test} failed in its child process"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process did not run exactly the test {test}"
    );
}

/// A test against the SoftHSM tokens: `softhsm_test!(fn name(fx) { … })`.
macro_rules! softhsm_test {
    ($(#[$m:meta])* fn $name:ident($fx:ident) $body:block) => {
        $(#[$m])*
        #[test]
        fn $name() {
            $crate::harness::in_softhsm(module_path!(), stringify!($name), |$fx| $body);
        }
    };
}
pub(crate) use softhsm_test;
