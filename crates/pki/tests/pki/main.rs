//! Integration tests of the pki crate.
