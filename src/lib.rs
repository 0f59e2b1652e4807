//! latchkey: an independent break-glass authority. See `ARCHITECTURE.md` for the module map.

#![forbid(unsafe_code)]

pub mod audit;
pub mod authority;
pub mod caller;
pub mod change;
pub mod client;
pub mod clock;
pub mod config;
pub mod constants;
pub mod daemon;
pub mod delivery;
pub mod doctor;
pub mod drill;
pub mod error;
pub mod fido2;
pub mod fsperm;
#[cfg(test)]
mod fuzzing;
pub mod grant;
pub mod keys;
pub mod krl;
pub mod logging;
pub mod metrics;
pub mod mint;
pub mod operator;
pub mod piv;
pub mod policy;
pub mod request;
pub mod revocation;
pub mod rpc;
pub mod scope;
pub mod sshcert;
pub mod store;
pub mod trust;
pub mod workflow;
pub mod workload;

/// Types generated from `proto/latchkey/v1`. Only [`rpc`] and [`client`] use them.
#[allow(clippy::all, clippy::pedantic, missing_docs)] // generated code
pub mod pb {
    tonic::include_proto!("latchkey.v1");
}
