//! The daemon's own key material: Ed25519 audit-signing key, Ed25519 SSH user CA, and the
//! self-signed TLS server certificate. Created once by `init`, loaded (with permission checks)
//! by `serve`.

use std::path::{Path, PathBuf};

use getrandom::SysRng;
use getrandom::rand_core::UnwrapErr;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

use crate::base::clock::Timestamp;
use crate::base::constants::{
    AUDIT_KEY_FILE, SSH_CA_KEY_FILE, TLS_CERT_FILE, TLS_CERT_VALIDITY_DAYS, TLS_KEY_FILE,
};
use crate::base::fsperm::{self, FsPermError};

/// Errors about the daemon's keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key file is missing, unreadable or too open. Fix what the message names.
    #[error(transparent)]
    File(#[from] FsPermError),
    /// A key file exists but does not parse. Restore it from backup; never regenerate keys of
    /// a store that is in use (issued certificates and the audit log depend on them).
    #[error("{path}: not a valid {what}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Parser message.
        detail: String,
    },
    /// Key generation failed (no entropy, library error). Nothing usable was written.
    #[error("generating {what}: {detail}")]
    Generate {
        /// Which key.
        what: &'static str,
        /// Library message.
        detail: String,
    },
}

/// Fingerprints of the daemon's keys, as administrators compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// `SHA256:...` of the audit-signing public key (OpenSSH style).
    pub audit_key: String,
    /// `SHA256:...` of the SSH user CA public key (as `ssh-keygen -lf` prints it).
    pub ssh_user_ca: String,
    /// SHA-256 of the TLS certificate DER, lowercase hex.
    pub tls_certificate: String,
    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo, lowercase hex.
    pub tls_spki: String,
}

/// Everything the daemon signs with.
pub struct DaemonKeys {
    /// Signs audit checkpoints.
    pub audit: PrivateKey,
    /// Signs SSH user certificates.
    pub ssh_ca: PrivateKey,
    /// TLS server certificate chain (one self-signed certificate).
    pub tls_cert: CertificateDer<'static>,
    /// TLS server private key.
    pub tls_key: PrivateKeyDer<'static>,
    fingerprints: Fingerprints,
}

impl std::fmt::Debug for DaemonKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonKeys")
            .field("fingerprints", &self.fingerprints)
            .finish_non_exhaustive()
    }
}

impl DaemonKeys {
    /// Generates all keys into `data_dir` (files 0600). Refuses to overwrite any of them.
    pub fn generate(
        data_dir: &Path,
        tls_names: &[String],
        now: Timestamp,
    ) -> Result<Self, KeyError> {
        let mut rng = UnwrapErr(SysRng);
        for (file, what) in [
            (AUDIT_KEY_FILE, "audit key"),
            (SSH_CA_KEY_FILE, "SSH user CA"),
        ] {
            let key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|e| {
                KeyError::Generate {
                    what,
                    detail: e.to_string(),
                }
            })?;
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| KeyError::Generate {
                    what,
                    detail: e.to_string(),
                })?;
            fsperm::write_private_file(&data_dir.join(file), pem.as_bytes())?;
        }

        let generate = |detail: rcgen::Error| KeyError::Generate {
            what: "TLS certificate",
            detail: detail.to_string(),
        };
        let key_pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = rcgen::CertificateParams::new(tls_names.to_vec()).map_err(generate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "latchkeyd");
        let secs = now.unix_millis() / 1000;
        params.not_before = time::OffsetDateTime::from_unix_timestamp(secs - 300).map_err(|e| {
            KeyError::Generate {
                what: "TLS certificate",
                detail: e.to_string(),
            }
        })?;
        params.not_after =
            params.not_before + time::Duration::days(i64::from(TLS_CERT_VALIDITY_DAYS));
        let cert = params.self_signed(&key_pair).map_err(generate)?;
        fsperm::write_private_file(
            &data_dir.join(TLS_KEY_FILE),
            key_pair.serialize_pem().as_bytes(),
        )?;
        fsperm::write_private_file(&data_dir.join(TLS_CERT_FILE), cert.pem().as_bytes())?;

        Self::load(data_dir)
    }

    /// Loads all keys from `data_dir`, refusing any file that others can read.
    pub fn load(data_dir: &Path) -> Result<Self, KeyError> {
        let audit = load_ssh_key(&data_dir.join(AUDIT_KEY_FILE), "audit key")?;
        let ssh_ca = load_ssh_key(&data_dir.join(SSH_CA_KEY_FILE), "SSH user CA")?;

        let cert_path = data_dir.join(TLS_CERT_FILE);
        let cert_pem = fsperm::read_private_file(&cert_path)?;
        let tls_cert =
            CertificateDer::from_pem_slice(&cert_pem).map_err(|e| KeyError::Malformed {
                path: cert_path.clone(),
                what: "PEM certificate",
                detail: e.to_string(),
            })?;
        let key_path = data_dir.join(TLS_KEY_FILE);
        let key_pem = fsperm::read_private_file(&key_path)?;
        let tls_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| KeyError::Malformed {
            path: key_path,
            what: "PEM private key",
            detail: e.to_string(),
        })?;
        let tls_spki = spki_sha256(&tls_cert).map_err(|detail| KeyError::Malformed {
            path: cert_path,
            what: "X.509 certificate",
            detail,
        })?;

        let fingerprints = Fingerprints {
            audit_key: audit.fingerprint(HashAlg::Sha256).to_string(),
            ssh_user_ca: ssh_ca.fingerprint(HashAlg::Sha256).to_string(),
            tls_certificate: hex::encode(Sha256::digest(tls_cert.as_ref())),
            tls_spki: hex::encode(tls_spki),
        };
        Ok(Self {
            audit,
            ssh_ca,
            tls_cert,
            tls_key,
            fingerprints,
        })
    }

    /// The keys' fingerprints.
    pub fn fingerprints(&self) -> &Fingerprints {
        &self.fingerprints
    }
}

fn load_ssh_key(path: &Path, what: &'static str) -> Result<PrivateKey, KeyError> {
    let pem = fsperm::read_private_file(path)?;
    let key = PrivateKey::from_openssh(&pem).map_err(|e| KeyError::Malformed {
        path: path.to_path_buf(),
        what,
        detail: e.to_string(),
    })?;
    if key.algorithm() != Algorithm::Ed25519 || key.is_encrypted() {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            what,
            detail: "expected an unencrypted Ed25519 key".to_owned(),
        });
    }
    Ok(key)
}

/// SHA-256 of a certificate's DER-encoded SubjectPublicKeyInfo: the TLS identity latchkey pins.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], String> {
    use x509_cert::der::{Decode as _, Encode as _};
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let spki = parsed
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(Sha256::digest(&spki).into())
}

/// SHA-256 of the SPKI of the first certificate in a PEM file.
pub fn spki_sha256_of_pem(pem: &[u8]) -> Result<[u8; 32], String> {
    let cert = CertificateDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    spki_sha256(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_with_the_same_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = DaemonKeys::generate(
            dir.path(),
            &names,
            Timestamp::from_unix_millis(1_763_856_000_000),
        )
        .unwrap();
        let loaded = DaemonKeys::load(dir.path()).unwrap();
        assert_eq!(made.fingerprints(), loaded.fingerprints());
        assert!(loaded.fingerprints().audit_key.starts_with("SHA256:"));
        assert_ne!(
            loaded.fingerprints().audit_key,
            loaded.fingerprints().ssh_user_ca
        );
    }

    #[test]
    fn generate_refuses_to_overwrite_existing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let now = Timestamp::from_unix_millis(1_763_856_000_000);
        let first = DaemonKeys::generate(dir.path(), &names, now).unwrap();
        assert!(DaemonKeys::generate(dir.path(), &names, now).is_err());
        assert_eq!(
            DaemonKeys::load(dir.path()).unwrap().fingerprints(),
            first.fingerprints()
        );
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        DaemonKeys::generate(
            dir.path(),
            &names,
            Timestamp::from_unix_millis(1_763_856_000_000),
        )
        .unwrap();
        let path = dir.path().join(AUDIT_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = DaemonKeys::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
