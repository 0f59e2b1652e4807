//! What latchkey issues and how: bearer tokens, OpenSSH user certificates, the KRL, the sealed
//! delivery of a token to its requester, and the daemon's own signing keys.

pub mod delivery;
pub mod keys;
pub mod krl;
pub mod mint;
pub mod sshcert;
pub mod tls;
