//! Integration tests of the pki crate: certificate facts, the validation matrix, revoked
//! intermediates, online revocation (OCSP and distribution points), card proofs,
//! interoperability with the OpenSSL CLI, the real GPKI CA certificates, and parser robustness.

mod helpers;

mod arl;
mod caches;
mod differential;
mod facts;
mod forgery;
mod interop;
mod online;
mod proofs;
mod props;
mod real_ca;
mod validation;
