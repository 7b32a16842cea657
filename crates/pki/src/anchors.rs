//! The trust store: role-tagged anchors (the issuing CAs, or roots) loaded from a directory with a
//! small TOML manifest, plus intermediates used only for building paths.

use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::{OrgIdAttr, ParsedCert};
use pki_types::{CertificateDer, TrustAnchor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a card issued under an anchor may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Organization cards (機關憑證): GCA, XCA, MOEACA, HCA.
    Organization,
    /// Citizen cards (自然人憑證): MOICA.
    Citizen,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Organization => "organization",
            Role::Citizen => "citizen",
        }
    }

    pub fn other(self) -> Role {
        match self {
            Role::Organization => Role::Citizen,
            Role::Citizen => Role::Organization,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "organization" => Ok(Role::Organization),
            "citizen" => Ok(Role::Citizen),
            other => Err(format!("unknown role {other:?} (organization | citizen)")),
        }
    }
}

/// `manifest.toml` of an anchors directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, rename = "anchor")]
    pub anchors: Vec<ManifestAnchor>,
    #[serde(default, rename = "intermediate")]
    pub intermediates: Vec<ManifestIntermediate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAnchor {
    pub name: String,
    /// Relative to the manifest's directory (or absolute). DER, PEM or base64.
    pub file: PathBuf,
    pub role: Role,
    /// Organization anchors: which attribute carries the organization identifier.
    #[serde(default)]
    pub org_id_attr: Option<OrgIdAttr>,
    /// Optional pin: the SHA-256 fingerprint the file must have (hex, any case, colons allowed).
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestIntermediate {
    pub file: PathBuf,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// One trusted CA certificate and what it may vouch for.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub name: String,
    pub role: Role,
    pub org_id_attr: OrgIdAttr,
    pub cert: ParsedCert,
    pub(crate) trust_anchor: TrustAnchor<'static>,
}

/// All anchors and intermediates certreg trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: Vec<Anchor>,
    intermediates: Vec<CertificateDer<'static>>,
}

fn config_err(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::AnchorConfig, detail)
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The public keys (DER SubjectPublicKeyInfo) of the CA certificates, anchors and
    /// intermediates, whose subject is `name` (a distinguished name as the facts write it): the
    /// keys a CRL of that issuer must verify with to count.
    pub fn keys_named(&self, name: &str) -> Vec<Vec<u8>> {
        let anchors = self.anchors.iter().map(|a| a.cert.clone());
        let intermediates = self
            .intermediates
            .iter()
            .filter_map(|d| crate::facts::ParsedCert::from_der(d.to_vec()).ok());
        anchors
            .chain(intermediates)
            .filter(|c| c.facts.subject == name)
            .filter_map(|c| c.spki_der().ok())
            .collect()
    }

    /// Loads `dir/manifest.toml` and the certificates it names.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        Self::from_manifest(&text, dir)
    }

    /// Parses a manifest whose relative file names are relative to `base`.
    pub fn from_manifest(text: &str, base: &Path) -> Result<Self> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| config_err(format!("manifest.toml: {e}")))?;
        let mut store = Self::new();
        for a in &manifest.anchors {
            let cert = read_pinned(base, &a.file, a.sha256.as_deref())?;
            if a.role == Role::Citizen && a.org_id_attr.is_some() {
                return Err(config_err(format!(
                    "anchor {:?}: org_id_attr is for organization anchors only",
                    a.name
                )));
            }
            store.add_anchor(&a.name, a.role, a.org_id_attr.unwrap_or_default(), cert)?;
        }
        for i in &manifest.intermediates {
            let cert = read_pinned(base, &i.file, i.sha256.as_deref())?;
            store.add_intermediate(cert)?;
        }
        if store.anchors.is_empty() {
            return Err(config_err("manifest.toml names no [[anchor]]"));
        }
        Ok(store)
    }

    /// Adds an anchor. It must be a CA certificate.
    pub fn add_anchor(
        &mut self,
        name: &str,
        role: Role,
        org_id_attr: OrgIdAttr,
        cert: ParsedCert,
    ) -> Result<()> {
        if !cert.facts.is_ca {
            return Err(config_err(format!(
                "anchor {name:?} is not a CA certificate"
            )));
        }
        let der = CertificateDer::from(cert.der.clone());
        let trust_anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| config_err(format!("anchor {name:?}: {e}")))?
            .to_owned();
        self.anchors.push(Anchor {
            name: name.to_string(),
            role,
            org_id_attr,
            cert,
            trust_anchor,
        });
        Ok(())
    }

    /// Adds a certificate used to build paths but not trusted by itself.
    pub fn add_intermediate(&mut self, cert: ParsedCert) -> Result<()> {
        if !cert.facts.is_ca {
            return Err(config_err(format!(
                "intermediate {} is not a CA certificate",
                cert.facts.subject
            )));
        }
        self.intermediates.push(CertificateDer::from(cert.der));
        Ok(())
    }

    pub fn anchors(&self) -> &[Anchor] {
        &self.anchors
    }

    pub fn anchors_for(&self, role: Role) -> impl Iterator<Item = &Anchor> {
        self.anchors.iter().filter(move |a| a.role == role)
    }

    pub(crate) fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }
}

fn read_pinned(base: &Path, file: &Path, pin: Option<&str>) -> Result<ParsedCert> {
    let path = if file.is_absolute() {
        file.to_path_buf()
    } else {
        base.join(file)
    };
    let bytes = std::fs::read(&path).map_err(|e| config_err(format!("{}: {e}", path.display())))?;
    let cert = ParsedCert::from_input(&bytes)
        .map_err(|e| config_err(format!("{}: {}", path.display(), e.detail)))?;
    if let Some(pin) = pin {
        let want: String = pin.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        if !want.eq_ignore_ascii_case(&cert.facts.sha256) {
            return Err(config_err(format!(
                "{}: SHA-256 {} does not match the pinned {pin}",
                path.display(),
                cert.facts.sha256
            )));
        }
    }
    Ok(cert)
}
