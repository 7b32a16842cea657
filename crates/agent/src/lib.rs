//! The local card agent: the HiPKI local server protocol (`/pkcs11info`, `/sign`, `/popupForm`,
//! `/p11Image.bmp`) over PKCS#11 tokens and soft cards, answering only configured origins and
//! signing only certreg challenges, each only for the site it names.

pub mod backend;
pub mod origin;
pub mod pkcs11;
pub mod protocol;
pub mod server;
pub mod softcard;
