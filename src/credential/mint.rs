//! Minting: bearer tokens (random, shown once, stored only as a hash) and OpenSSH user
//! certificates signed by the daemon's CA.

use base64::Engine as _;

use crate::base::clock::Timestamp;
use crate::base::constants::{BEARER_TOKEN_PREFIX, SSH_CLOCK_SKEW};
use crate::base::error::{Coded, ErrorKind};
use crate::credential::sshcert::{self, SshCertError, UserCertSpec};

/// Minting failed; nothing was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The system has no randomness to offer. Alert an operator; retry later.
    #[error("no randomness: {0}")]
    Randomness(String),
    /// The SSH certificate could not be made (see the inner error).
    #[error(transparent)]
    Ssh(#[from] SshCertError),
}

impl Coded for MintError {
    fn code(&self) -> &'static str {
        match self {
            MintError::Randomness(_) => "mint.no_randomness",
            MintError::Ssh(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            MintError::Randomness(_) => ErrorKind::Unavailable,
            MintError::Ssh(e) => e.kind(),
        }
    }
}

/// A new bearer token: the prefix and 256 random bits, base64url.
pub fn bearer_token() -> Result<String, MintError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| MintError::Randomness(e.to_string()))?;
    Ok(format!(
        "{BEARER_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random, non-zero certificate serial.
pub fn serial() -> Result<u64, MintError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| MintError::Randomness(e.to_string()))?;
        let serial = u64::from_be_bytes(bytes);
        if serial != 0 {
            return Ok(serial);
        }
    }
}

/// What an SSH grant certifies.
#[derive(Debug)]
pub struct SshRequest<'a> {
    /// The requester's OpenSSH public key.
    pub public_key: &'a str,
    /// Unique serial.
    pub serial: u64,
    /// Grant id (the certificate's key id).
    pub grant_id: &'a str,
    pub principals: &'a [String],
    /// Issue time.
    pub issued_at: Timestamp,
    /// The grant's expiry.
    pub expires_at: Timestamp,
    /// Whether to allow port forwarding.
    pub permit_port_forwarding: bool,
}

/// Signs an OpenSSH user certificate valid from shortly before `issued_at` (clock skew
/// between hosts) to the grant's expiry. Returns the one-line OpenSSH form.
pub fn ssh_certificate(
    ca: &ssh_key::PrivateKey,
    req: &SshRequest<'_>,
) -> Result<String, MintError> {
    let subject = sshcert::parse_user_public_key(req.public_key)?;
    let secs = |t: Timestamp| u64::try_from(t.unix_millis() / 1000).unwrap_or(0);
    let valid_after = secs(req.issued_at).saturating_sub(SSH_CLOCK_SKEW.as_secs());
    let spec = UserCertSpec {
        serial: req.serial,
        key_id: req.grant_id,
        principals: req.principals,
        valid_after_unix: valid_after,
        valid_before_unix: secs(req.expires_at),
        permit_port_forwarding: req.permit_port_forwarding,
    };
    let cert = sshcert::sign_user_certificate(ca, &subject, &spec)?;
    Ok(sshcert::certificate_openssh(&cert)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_prefixed_and_never_repeat() {
        let a = bearer_token().unwrap();
        let b = bearer_token().unwrap();
        assert!(a.starts_with(BEARER_TOKEN_PREFIX));
        assert_eq!(a.len(), BEARER_TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
    }
}
