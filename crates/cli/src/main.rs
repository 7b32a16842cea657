//! The certreg command.
fn main() {}
