//! The use cases, over one store and one audit log: ceremonies, requests and votes, minting and
//! delivery, trust-store changes, revocation, drills and reports. [`authority::Authority`] is
//! the composition root every transport calls.

pub mod apply;
pub mod authority;
pub mod ceremony;
pub mod changes;
pub mod codecs;
pub mod drill;
pub mod expiry;
pub mod hygiene;
pub mod lapses;
pub mod leadership;
pub mod metrics;
pub mod minting;
pub mod notifications;
pub mod operators;
pub mod requests;
pub mod revocation;
pub mod sessions;
pub mod sinks;
pub mod token_index;
pub mod trust_store;
pub mod votes;
pub mod workflow;
pub mod workloads;

#[cfg(test)]
mod tests;
