//! Hardware-key verification: an assertion or attestation and the enrolled key in, a verified
//! fact out. FIDO2 through webauthn-rs, PIV through X.509 attestation chains.

pub mod fido2;
pub mod piv;
