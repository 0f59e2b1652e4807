//! latchkey: an independent break-glass authority. See `ARCHITECTURE.md` for the module map.
//!
//! The layers, lowest first; a layer uses only those before it:
//! [`base`] · [`domain`] · [`verify`] · [`credential`] · [`store`] · [`audit`] · [`service`] ·
//! [`rpc`] · [`daemon`] · [`client`] (the CLI's side, which talks to the daemon only over gRPC).

#![forbid(unsafe_code)]

pub mod audit;
pub mod base;
pub mod client;
pub mod credential;
pub mod daemon;
pub mod domain;
pub mod rpc;
pub mod service;
pub mod store;
pub mod verify;
pub mod web;

/// Types generated from `proto/latchkey/v1`. Only [`rpc`] and [`client`] use them.
#[allow(clippy::all, clippy::pedantic, missing_docs)] // generated code
pub mod pb {
    tonic::include_proto!("latchkey.v1");
}
