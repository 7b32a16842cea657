//! The local card agent: the HiPKI local server protocol (`/pkcs11info`, `/sign`, `/popupForm`)
//! over PKCS#11 tokens and soft cards, answering only configured origins and signing only
//! certreg challenges.

pub mod backend;
pub mod pkcs11;
pub mod protocol;
pub mod server;
pub mod softcard;
