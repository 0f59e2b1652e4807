//! Credential delivery: the bearer token sealed to the requester's own key.
//!
//! A request names a delivery public key (X25519, 32 bytes) in its signed draft. At minting the
//! daemon seals the bearer token to it with HPKE (RFC 9180, base mode) and keeps only the sealed
//! box, with the grant, until the grant ends. The box is useless to anyone without the
//! requester's private key, so it may be stored, fetched again after a restart or a dropped
//! connection, and fetched from anywhere; the plaintext token never rests on disk.
//!
//! Suite: DHKEM(X25519, HKDF-SHA256) · HKDF-SHA256 · AES-128-GCM (ids 0x0020, 0x0001, 0x0001).
//! `info` = `"latchkey.delivery.v1"`, `aad` = the grant id.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use serde::{Deserialize, Serialize};

use crate::base::error::{Coded, ErrorKind};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm128;

/// HPKE `info` of every delivery.
pub const DELIVERY_INFO: &[u8] = b"latchkey.delivery.v1";
/// Human name of the suite, as the proto documents it.
pub const DELIVERY_SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM";
/// Length of a delivery public key (X25519).
pub const DELIVERY_KEY_LEN: usize = 32;

/// Errors of sealing and opening deliveries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The delivery public key is not 32 bytes of X25519. Send the raw public key.
    #[error("the delivery public key must be {DELIVERY_KEY_LEN} bytes of X25519, got {0} bytes")]
    BadPublicKey(usize),
    /// The delivery public key is a low-order X25519 point nothing can be sealed to. Send a
    /// key made by a real key generator.
    #[error("the delivery public key is a low-order X25519 point; generate a real key pair")]
    LowOrderPublicKey,
    /// Sealing failed. Make a fresh key pair and request again.
    #[error("sealing the credential to the delivery key failed: {0}")]
    Seal(String),
    /// The box does not open with this key (another key, or altered). Use the key the request
    /// was made with.
    #[error("the sealed credential does not open with this delivery key: {0}")]
    Open(String),
    /// A key file could not be read or written. Check the path and its permissions.
    #[error("delivery key file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

impl Coded for DeliveryError {
    fn code(&self) -> &'static str {
        match self {
            DeliveryError::BadPublicKey(_) | DeliveryError::LowOrderPublicKey => {
                "delivery.bad_public_key"
            }
            DeliveryError::Seal(_) => "delivery.seal_failed",
            DeliveryError::Open(_) => "delivery.open_failed",
            DeliveryError::File { .. } => "delivery.key_file",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            DeliveryError::BadPublicKey(_)
            | DeliveryError::LowOrderPublicKey
            | DeliveryError::Seal(_) => ErrorKind::InvalidInput,
            DeliveryError::Open(_) | DeliveryError::File { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// A bearer token sealed to a delivery key: the HPKE encapsulated key and the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedToken {
    /// HPKE `enc` (32 bytes for X25519), base64.
    pub encapsulated_key: String,
    /// AES-128-GCM ciphertext with its tag, base64.
    pub ciphertext: String,
}

impl SealedToken {
    /// From the raw bytes a client received.
    pub fn from_bytes(encapsulated_key: &[u8], ciphertext: &[u8]) -> Self {
        Self {
            encapsulated_key: B64.encode(encapsulated_key),
            ciphertext: B64.encode(ciphertext),
        }
    }

    /// The encapsulated key's bytes.
    pub fn encapsulated_key_bytes(&self) -> Result<Vec<u8>, DeliveryError> {
        B64.decode(&self.encapsulated_key)
            .map_err(|e| DeliveryError::Open(format!("encapsulated key: {e}")))
    }

    /// The ciphertext's bytes.
    pub fn ciphertext_bytes(&self) -> Result<Vec<u8>, DeliveryError> {
        B64.decode(&self.ciphertext)
            .map_err(|e| DeliveryError::Open(format!("ciphertext: {e}")))
    }
}

/// Checks that `bytes` is a usable delivery public key.
pub fn check_public_key(bytes: &[u8]) -> Result<[u8; DELIVERY_KEY_LEN], DeliveryError> {
    let key: [u8; DELIVERY_KEY_LEN] = bytes
        .try_into()
        .map_err(|_| DeliveryError::BadPublicKey(bytes.len()))?;
    // Parsing accepts any 32 bytes; a low-order point fails only at encapsulation. Try it
    // now, so such a key is refused with the request instead of failing the deciding vote.
    seal(&key, "", "").map_err(|_| DeliveryError::LowOrderPublicKey)?;
    Ok(key)
}

/// Seals `token` for the holder of `public_key`, bound to `grant_id`.
pub fn seal(
    public_key: &[u8; DELIVERY_KEY_LEN],
    grant_id: &str,
    token: &str,
) -> Result<SealedToken, DeliveryError> {
    let recipient = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
        .map_err(|e| DeliveryError::Seal(e.to_string()))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &recipient,
        DELIVERY_INFO,
        token.as_bytes(),
        grant_id.as_bytes(),
    )
    .map_err(|e| DeliveryError::Seal(e.to_string()))?;
    Ok(SealedToken::from_bytes(&enc.to_bytes(), &ciphertext))
}

/// The requester's side: an X25519 key pair made for one request (or a workload's own).
pub struct DeliveryKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: [u8; DELIVERY_KEY_LEN],
}

impl std::fmt::Debug for DeliveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryKey")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl DeliveryKey {
    /// A fresh key pair from the system's random source.
    pub fn generate() -> Self {
        let (secret, public) = Kem::gen_keypair();
        Self::from_pair(secret, &public)
    }

    fn from_pair(
        secret: <Kem as hpke::Kem>::PrivateKey,
        public: &<Kem as hpke::Kem>::PublicKey,
    ) -> Self {
        let mut bytes = [0u8; DELIVERY_KEY_LEN];
        bytes.copy_from_slice(&public.to_bytes());
        Self {
            secret,
            public: bytes,
        }
    }

    /// The key pair of a 32-byte X25519 secret (e.g. read from a workload's key file).
    pub fn from_secret(secret: &[u8; DELIVERY_KEY_LEN]) -> Result<Self, DeliveryError> {
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
            .map_err(|e| DeliveryError::Open(format!("private key: {e}")))?;
        let public = Kem::sk_to_pk(&secret);
        Ok(Self::from_pair(secret, &public))
    }

    /// The 32-byte secret, to keep in a private file.
    pub fn secret_bytes(&self) -> [u8; DELIVERY_KEY_LEN] {
        let mut out = [0u8; DELIVERY_KEY_LEN];
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The public key a request carries.
    pub fn public_key(&self) -> [u8; DELIVERY_KEY_LEN] {
        self.public
    }

    /// Opens a token sealed for this key and `grant_id`.
    pub fn open(&self, sealed: &SealedToken, grant_id: &str) -> Result<String, DeliveryError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapsulated_key_bytes()?)
            .map_err(|e| DeliveryError::Open(format!("encapsulated key: {e}")))?;
        let plain = hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &self.secret,
            &enc,
            DELIVERY_INFO,
            &sealed.ciphertext_bytes()?,
            grant_id.as_bytes(),
        )
        .map_err(|e| DeliveryError::Open(e.to_string()))?;
        String::from_utf8(plain).map_err(|e| DeliveryError::Open(e.to_string()))
    }

    /// Reads a key file: the 32-byte secret, hex, one line (mode 0600, owned by this user).
    pub fn read_file(path: &std::path::Path) -> Result<Self, DeliveryError> {
        let file_error = |detail: String| DeliveryError::File {
            path: path.display().to_string(),
            detail,
        };
        let raw =
            crate::base::fsperm::read_private_file(path).map_err(|e| file_error(e.to_string()))?;
        let text = String::from_utf8(raw).map_err(|e| file_error(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|e| file_error(e.to_string()))?;
        let secret: [u8; DELIVERY_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| file_error("not a 32-byte hex secret".to_owned()))?;
        Self::from_secret(&secret)
    }

    /// Writes the secret to a new private file (0600), refusing to overwrite one.
    pub fn write_file(&self, path: &std::path::Path) -> Result<(), DeliveryError> {
        let text = format!("{}\n", hex::encode(self.secret_bytes()));
        crate::base::fsperm::write_private_file(path, text.as_bytes()).map_err(|e| {
            DeliveryError::File {
                path: path.display().to_string(),
                detail: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_token_opens_only_with_its_key_and_grant() {
        let key = DeliveryKey::generate();
        let sealed = seal(&key.public_key(), "g1", "lkbg_secret").unwrap();
        assert_eq!(key.open(&sealed, "g1").unwrap(), "lkbg_secret");
        assert!(matches!(
            key.open(&sealed, "g2"),
            Err(DeliveryError::Open(_))
        ));
        let other = DeliveryKey::generate();
        assert!(matches!(
            other.open(&sealed, "g1"),
            Err(DeliveryError::Open(_))
        ));
        assert!(!sealed.ciphertext.contains("lkbg_secret"));
    }

    #[test]
    fn a_key_survives_its_secret_bytes() {
        let key = DeliveryKey::generate();
        let again = DeliveryKey::from_secret(&key.secret_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
    }

    #[test]
    fn public_keys_of_the_wrong_length_are_refused() {
        assert!(matches!(
            check_public_key(&[1u8; 31]),
            Err(DeliveryError::BadPublicKey(31))
        ));
        assert!(check_public_key(&DeliveryKey::generate().public_key()).is_ok());
        // Low-order points parse as keys but nothing can be sealed to them.
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one] {
            assert!(matches!(
                check_public_key(&low),
                Err(DeliveryError::LowOrderPublicKey)
            ));
        }
    }

    #[test]
    fn a_low_order_public_key_cannot_be_sealed_to() {
        // The all-zero point: X25519 with it yields zero, which HPKE refuses.
        assert!(seal(&[0u8; 32], "g1", "lkbg_x").is_err());
    }
}
