//! PKCS#11 backend tests: real SoftHSM2 tokens (`softhsm`, each in a child process, see
//! `harness`) and a fake token for the paths SoftHSM cannot produce (`fake`).

mod fake;
mod harness;
mod softhsm;
