//! Taiwan GPKI knowledge, pure: certificate facts, chain validation against role-tagged anchors,
//! CRL/OCSP status, CMS/PKCS#1/ECDSA proof verification, the challenge format, and the checksums
//! of national IDs, resident numbers and 統一編號. Time is always an argument; network access goes
//! through the [`ocsp::OcspTransport`] and [`online::CrlFetch`] traits.

pub mod anchors;
pub mod ber;
pub mod certcache;
pub mod challenge;
pub mod cms;
pub mod error;
pub mod facts;
pub mod ids;
pub mod ocsp;
pub mod oid;
pub mod online;
pub mod pkcs12;
pub mod proof;
pub mod revocation;
pub mod serial;
pub mod sig;
mod sigmemo;
pub mod validate;

pub use error::{ErrorCode, PkiError};
