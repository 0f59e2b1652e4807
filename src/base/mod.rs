//! What every layer shares: the injected clock, stable error codes, the caller's identity,
//! defaults and limits, and private files.

pub mod caller;
pub mod clock;
pub mod constants;
pub mod error;
pub mod fsperm;
#[cfg(test)]
pub(crate) mod fuzzing;
pub mod names;
