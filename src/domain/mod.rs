//! The rules of break-glass as data and pure functions: records of the trust store and what
//! may happen to them. No store backend, no async runtime, no transport.

pub mod change;
pub mod drill;
pub mod grant;
pub mod operator;
pub mod policy;
pub mod request;
pub mod scope;
pub mod trust;
pub mod workload;
