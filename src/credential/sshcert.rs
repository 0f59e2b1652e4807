//! OpenSSH user certificates, made with the ssh-key crate: what `sshd` with
//! `TrustedUserCAKeys` accepts (PROTOCOL.certkeys).

use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, Certificate, PrivateKey, PublicKey};

use crate::base::error::{Coded, ErrorKind};

/// Smallest RSA modulus accepted for a subject key.
const MIN_RSA_BITS: usize = 2048;

/// A certificate could not be made. Nothing was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshCertError {
    /// The public key to certify is not an OpenSSH public key line, or is of a refused type
    /// (DSA, short RSA, a certificate). Give the `.pub` file of an Ed25519 or ECDSA key.
    #[error("invalid SSH public key: {0}")]
    InvalidPublicKey(String),
    /// The certificate's fields are unusable (serial 0, no principals, empty window). A bug
    /// in the caller; report it.
    #[error("invalid certificate request: {0}")]
    InvalidSpec(String),
    /// Signing or encoding failed (the CA key is unusable). Alert an operator.
    #[error("signing the certificate failed: {0}")]
    Signing(String),
}

impl Coded for SshCertError {
    fn code(&self) -> &'static str {
        match self {
            SshCertError::InvalidPublicKey(_) => "ssh.invalid_public_key",
            SshCertError::InvalidSpec(_) => "ssh.invalid_spec",
            SshCertError::Signing(_) => "ssh.signing_failed",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            SshCertError::InvalidPublicKey(_) => ErrorKind::InvalidInput,
            SshCertError::InvalidSpec(_) | SshCertError::Signing(_) => ErrorKind::Internal,
        }
    }
}

/// What a user certificate says.
#[derive(Clone, Debug)]
pub struct UserCertSpec<'a> {
    /// Unique, non-zero serial (what a KRL revokes).
    pub serial: u64,
    /// Key id (the grant id), logged by sshd.
    pub key_id: &'a str,
    /// Principals the certificate is valid for.
    pub principals: &'a [String],
    /// Valid from (Unix seconds).
    pub valid_after_unix: u64,
    /// Valid until (Unix seconds, exclusive in sshd's check).
    pub valid_before_unix: u64,
    /// Whether to add `permit-port-forwarding`.
    pub permit_port_forwarding: bool,
}

/// How approvers are shown an OpenSSH public key: `ALGORITHM SHA256:…`, or why it is
/// unreadable (the CLI's card and the approval page print the same line).
pub fn key_fingerprint(openssh: &str) -> String {
    PublicKey::from_openssh(openssh.trim()).map_or_else(
        |e| format!("unreadable ({e})"),
        |k| {
            format!(
                "{} {}",
                k.algorithm().as_str(),
                k.fingerprint(ssh_key::HashAlg::Sha256)
            )
        },
    )
}

/// Parses the requester's OpenSSH public key (`ssh-ed25519 AAAA… comment`).
pub fn parse_user_public_key(openssh: &str) -> Result<PublicKey, SshCertError> {
    let bad = |why: String| SshCertError::InvalidPublicKey(why);
    let text = openssh.trim();
    if text.contains("PRIVATE KEY") {
        return Err(bad(
            "that is a private key: give the .pub file, never the private key".into(),
        ));
    }
    if text.contains("-cert-v01@openssh.com") {
        return Err(bad("that is a certificate, not a public key".into()));
    }
    let key = PublicKey::from_openssh(text).map_err(|e| bad(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Dsa => Err(bad("DSA keys are refused".into())),
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .map(|k| k.n().as_positive_bytes().map_or(0, |b| b.len() * 8))
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                Err(bad(format!(
                    "RSA keys need at least {MIN_RSA_BITS} bits (this one has {bits})"
                )))
            } else {
                Ok(key)
            }
        }
        Algorithm::Ed25519
        | Algorithm::Ecdsa { .. }
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256 => Ok(key),
        other => Err(bad(format!("key type {other} is not supported"))),
    }
}

/// Signs a user certificate for `subject` with the CA key.
pub fn sign_user_certificate(
    ca: &PrivateKey,
    subject: &PublicKey,
    spec: &UserCertSpec<'_>,
) -> Result<Certificate, SshCertError> {
    let invalid = |why: &str| SshCertError::InvalidSpec(why.to_owned());
    if spec.serial == 0 {
        return Err(invalid("serial must not be 0"));
    }
    if spec.principals.is_empty() {
        return Err(invalid(
            "a certificate without principals would be valid for every user",
        ));
    }
    if spec.valid_before_unix <= spec.valid_after_unix {
        return Err(invalid("the validity window is empty"));
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| SshCertError::Signing(format!("randomness: {e}")))?;
    let signing = |e: ssh_key::Error| SshCertError::Signing(e.to_string());
    let mut builder = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        spec.valid_after_unix,
        spec.valid_before_unix,
    )
    .map_err(signing)?;
    builder
        .serial(spec.serial)
        .map_err(signing)?
        .key_id(spec.key_id)
        .map_err(signing)?
        .cert_type(CertType::User)
        .map_err(signing)?;
    for principal in spec.principals {
        builder
            .valid_principal(principal.clone())
            .map_err(signing)?;
    }
    builder.extension("permit-pty", "").map_err(signing)?;
    if spec.permit_port_forwarding {
        builder
            .extension("permit-port-forwarding", "")
            .map_err(signing)?;
    }
    builder.sign(ca).map_err(signing)
}

/// The one-line OpenSSH form (`ssh-ed25519-cert-v01@openssh.com AAAA…`).
pub fn certificate_openssh(cert: &Certificate) -> Result<String, SshCertError> {
    cert.to_openssh()
        .map_err(|e| SshCertError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::HashAlg;

    fn key() -> PrivateKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed))
    }

    fn spec(principals: &[String]) -> UserCertSpec<'_> {
        UserCertSpec {
            serial: 42,
            key_id: "grant-1",
            principals,
            valid_after_unix: 1_000,
            valid_before_unix: 2_000,
            permit_port_forwarding: false,
        }
    }

    #[test]
    fn a_signed_certificate_carries_exactly_the_requested_fields_and_verifies() {
        let (ca, user) = (key(), key());
        let principals = vec!["postgres".to_owned(), "dba".to_owned()];
        let cert = sign_user_certificate(&ca, user.public_key(), &spec(&principals)).unwrap();
        let ca_fp = ca.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(1_500, [&ca_fp]).unwrap();
        assert!(
            cert.validate_at(2_000, [&ca_fp]).is_err(),
            "expired at valid_before"
        );
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.key_id(), "grant-1");
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.valid_principals(), principals.as_slice());
        assert!(cert.critical_options().is_empty());
        let extensions: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(extensions, vec!["permit-pty"]);
        assert_eq!(cert.public_key(), user.public_key().key_data());
        let line = certificate_openssh(&cert).unwrap();
        assert!(line.starts_with("ssh-ed25519-cert-v01@openssh.com "));
    }

    #[test]
    fn port_forwarding_is_permitted_only_when_asked() {
        let (ca, user) = (key(), key());
        let principals = vec!["root".to_owned()];
        let cert = sign_user_certificate(
            &ca,
            user.public_key(),
            &UserCertSpec {
                permit_port_forwarding: true,
                ..spec(&principals)
            },
        )
        .unwrap();
        assert!(cert.extensions().contains_key("permit-port-forwarding"));
    }

    #[test]
    fn a_zero_serial_no_principals_or_an_empty_window_are_refused() {
        let (ca, user) = (key(), key());
        let principals = vec!["root".to_owned()];
        for bad in [
            UserCertSpec {
                serial: 0,
                ..spec(&principals)
            },
            spec(&[]),
            UserCertSpec {
                valid_before_unix: 1_000,
                ..spec(&principals)
            },
        ] {
            let err = sign_user_certificate(&ca, user.public_key(), &bad).unwrap_err();
            assert_eq!(err.code(), "ssh.invalid_spec", "{bad:?}");
        }
    }

    #[test]
    fn garbage_private_keys_and_certificates_are_not_public_keys() {
        let (ca, user) = (key(), key());
        let private = user.to_openssh(ssh_key::LineEnding::LF).unwrap();
        let principals = vec!["root".to_owned()];
        let cert = sign_user_certificate(&ca, user.public_key(), &spec(&principals)).unwrap();
        for bad in [
            "not a key".to_owned(),
            private.to_string(),
            certificate_openssh(&cert).unwrap(),
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP".to_owned(),
        ] {
            let err = parse_user_public_key(&bad).unwrap_err();
            assert_eq!(err.code(), "ssh.invalid_public_key", "{bad}");
        }
        let good = user.public_key().to_openssh().unwrap();
        assert_eq!(
            parse_user_public_key(&format!("{good} alice@laptop\n"))
                .unwrap()
                .key_data(),
            user.public_key().key_data()
        );
    }
}
