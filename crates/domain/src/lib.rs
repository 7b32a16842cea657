//! certreg's rules as code that pages and the API both call: agencies, registrations,
//! administrators, operators and their grants, review applications, receipts, audit events,
//! the business calendar, and the flows of the manual (F1–F6) as server-side state machines.
//! Storage and clock are traits; no web framework or database driver lives here.

pub mod calendar;
pub mod clock;
pub mod error;
pub mod expiry;
pub mod flow;
pub mod import;
pub mod model;
pub mod notices;
pub mod service;
pub mod store;
mod text;
pub mod types;

pub use error::{DomainError, Result};
