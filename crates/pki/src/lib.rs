//! Taiwan GPKI knowledge, pure: certificate facts, chain validation against role-tagged anchors,
//! CRL/OCSP status, CMS/PKCS#1/ECDSA proof verification, the challenge format, and the checksums
//! of national IDs, resident numbers and 統一編號. Time is always an argument; network access goes
//! through the [`ocsp::OcspTransport`] trait.

pub mod error;
pub mod ocsp;
pub mod oid;
pub mod sig;

pub use error::{ErrorCode, PkiError};
