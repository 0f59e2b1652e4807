//! PIV keys for the CLI: a YubiKey's PIV applet over PC/SC (the yubikey crate), and a software
//! PIV signer with a synthetic attestation hierarchy carrying Yubico's extensions (tests, demos
//! and drills: latchkeyd trusts its root only in dev mode, through `[piv] dev_roots`).
//!
//! Both answer enrollment with `{"type":"piv","attestation","device","public_key","signature"}`
//! and assertions with `{"type":"piv","id","signature"}`: ECDSA (SHA-256 for P-256, SHA-384 for
//! P-384) over the daemon's 32-byte challenge, DER-encoded.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url,
};

use super::authenticator::{Authenticator, KeyError};
use crate::verify::piv::{PinPolicy, TouchPolicy};

fn not_webauthn() -> KeyError {
    KeyError::Options("a PIV key answers with its own response, not WebAuthn".into())
}

fn piv_enrollment(
    attestation_pem: &str,
    device_pem: &str,
    public_key_spki: &[u8],
    signature: &[u8],
) -> Result<String, KeyError> {
    serde_json::to_string(&serde_json::json!({
        "type": "piv",
        "attestation": attestation_pem,
        "device": device_pem,
        "public_key": B64.encode(public_key_spki),
        "signature": B64.encode(signature),
    }))
    .map_err(|e| KeyError::Options(e.to_string()))
}

fn piv_assertion(credential_id: &str, signature: &[u8]) -> Result<String, KeyError> {
    serde_json::to_string(&serde_json::json!({
        "type": "piv",
        "id": credential_id,
        "signature": B64.encode(signature),
    }))
    .map_err(|e| KeyError::Options(e.to_string()))
}

/// How to build a software PIV key (tests pick the bad cases the daemon must refuse).
#[derive(Clone, Debug)]
pub struct SoftPivSpec {
    /// Device serial in the attestation.
    pub serial: u32,
    /// Slot (`9a`, `9c`).
    pub slot: String,
    /// PIN policy in the attestation.
    pub pin: PinPolicy,
    /// Touch policy in the attestation.
    pub touch: TouchPolicy,
    /// False models an imported key: no attestation to show.
    pub attested: bool,
}

impl Default for SoftPivSpec {
    fn default() -> Self {
        Self {
            serial: 20_000_001,
            slot: "9a".into(),
            pin: PinPolicy::Once,
            touch: TouchPolicy::Always,
            attested: true,
        }
    }
}

/// A software PIV key and its synthetic attestation hierarchy, all PEM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoftPivState {
    /// The synthetic root (configure it in `[piv] dev_roots`).
    pub root_pem: String,
    /// The "slot f9" device certificate, signed by the root.
    pub device_pem: String,
    /// The slot's attestation certificate, signed by the device key (empty: imported key).
    pub attestation_pem: String,
    /// The slot key, PKCS#8 PEM.
    pub slot_key_pem: String,
    pub serial: u32,
    pub slot: String,
}

/// A software PIV signer.
#[derive(Debug)]
pub struct SoftPiv {
    /// Its state (public for tests that tamper with it).
    pub state: SoftPivState,
    path: Option<PathBuf>,
}

fn gen_error(e: impl std::fmt::Display) -> KeyError {
    KeyError::Device(format!("soft PIV: {e}"))
}

impl SoftPiv {
    /// A new key with its own synthetic root.
    pub fn generate(spec: &SoftPivSpec) -> Result<Self, KeyError> {
        use rcgen::{
            BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
            PKCS_ECDSA_P256_SHA256,
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_error)?;
        let mut root = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
        root.distinguished_name.push(
            DnType::CommonName,
            format!("latchkey soft PIV root {} (dev mode only)", spec.serial),
        );
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).map_err(gen_error)?;
        let root_issuer = Issuer::new(root, root_key);

        let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_error)?;
        let mut device = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
        device.distinguished_name.push(
            DnType::CommonName,
            format!("Soft PIV Attestation {}", spec.serial),
        );
        device.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let device_cert = device
            .signed_by(&device_key, &root_issuer)
            .map_err(gen_error)?;
        let device_issuer = Issuer::new(device, device_key);

        let slot_key = loop {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(gen_error)?;
            // A random 32-byte string is a valid scalar except with negligible probability.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&secret) {
                break key;
            }
        };
        let slot_pem = slot_key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map_err(gen_error)?
            .to_string();
        let slot_pair = KeyPair::from_pem(&slot_pem).map_err(gen_error)?;
        let attestation_pem = if spec.attested {
            let mut att = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
            att.distinguished_name.push(
                DnType::CommonName,
                format!("YubiKey PIV Attestation {}", spec.slot),
            );
            let pin = match spec.pin {
                PinPolicy::Never => 1,
                PinPolicy::Once => 2,
                PinPolicy::Always => 3,
            };
            let touch = match spec.touch {
                TouchPolicy::Never => 1,
                TouchPolicy::Always => 2,
                TouchPolicy::Cached => 3,
            };
            let mut serial = vec![0x02, 0x05, 0x00];
            serial.extend_from_slice(&spec.serial.to_be_bytes());
            att.custom_extensions = vec![
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 41482, 3, 3], vec![5, 7, 4]),
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 41482, 3, 7], serial),
                CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 41482, 3, 8],
                    vec![pin, touch],
                ),
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 41482, 3, 9], vec![1]),
            ];
            att.signed_by(&slot_pair, &device_issuer)
                .map_err(gen_error)?
                .pem()
        } else {
            String::new()
        };
        Ok(Self {
            state: SoftPivState {
                root_pem: root_cert.pem(),
                device_pem: device_cert.pem(),
                attestation_pem,
                slot_key_pem: slot_pem,
                serial: spec.serial,
                slot: spec.slot.clone(),
            },
            path: None,
        })
    }

    /// Opens the key kept in `path`, creating it (0600) with the default spec if missing.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let file_error = |detail: String| KeyError::SoftToken {
            path: path.to_path_buf(),
            detail,
        };
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            let state = serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))?;
            return Ok(Self {
                state,
                path: Some(path.to_path_buf()),
            });
        }
        let mut serial = [0u8; 3];
        getrandom::fill(&mut serial).map_err(gen_error)?;
        let spec = SoftPivSpec {
            serial: 10_000_000 + u32::from_be_bytes([0, serial[0], serial[1], serial[2]]),
            ..SoftPivSpec::default()
        };
        let key = Self::generate(&spec)?;
        let text =
            serde_json::to_string_pretty(&key.state).map_err(|e| file_error(e.to_string()))?;
        crate::base::fsperm::write_private_file(path, text.as_bytes())
            .map_err(|e| file_error(e.to_string()))?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            ..key
        })
    }

    /// Where it is kept, if in a file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credential id the daemon gives this key.
    pub fn credential_id(&self) -> String {
        format!("piv-{}-{}", self.state.serial, self.state.slot)
    }

    fn signing_key(&self) -> Result<p256::ecdsa::SigningKey, KeyError> {
        p256::ecdsa::SigningKey::from_pkcs8_pem(&self.state.slot_key_pem).map_err(gen_error)
    }

    /// The slot's public key, SPKI DER.
    pub fn public_key_spki(&self) -> Result<Vec<u8>, KeyError> {
        use p256::pkcs8::EncodePublicKey as _;
        Ok(self
            .signing_key()?
            .verifying_key()
            .to_public_key_der()
            .map_err(gen_error)?
            .into_vec())
    }

    /// ECDSA P-256 / SHA-256 over `message`, DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        use p256::ecdsa::signature::Signer as _;
        let signature: p256::ecdsa::Signature = self.signing_key()?.sign(message);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

impl Authenticator for SoftPiv {
    fn register(
        &mut self,
        _origin: &Url,
        _options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError> {
        Err(not_webauthn())
    }

    fn assert(
        &mut self,
        _origin: &Url,
        _options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError> {
        Err(not_webauthn())
    }

    fn enroll(
        &mut self,
        _origin: Option<&str>,
        _options_json: &str,
        piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        piv_enrollment(
            &self.state.attestation_pem,
            &self.state.device_pem,
            &self.public_key_spki()?,
            &self.sign(piv_challenge)?,
        )
    }

    fn respond(
        &mut self,
        _origin: Option<&str>,
        _options_json: &str,
        piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        piv_assertion(&self.credential_id(), &self.sign(piv_challenge)?)
    }
}

/// A YubiKey's PIV applet over PC/SC.
pub struct UsbPiv {
    yubikey: yubikey::YubiKey,
    slot: yubikey::piv::SlotId,
    algorithm: yubikey::piv::AlgorithmId,
    pin: Option<zeroize_string::Secret>,
}

mod zeroize_string {
    /// A PIN held only as long as needed.
    pub(super) struct Secret(pub String);
    impl Drop for Secret {
        fn drop(&mut self) {
            // Overwrite before the allocation is freed.
            let len = self.0.len();
            self.0.clear();
            self.0.extend(std::iter::repeat_n('\0', len));
        }
    }
}

impl std::fmt::Debug for UsbPiv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbPiv")
            .field("serial", &self.yubikey.serial())
            .field("slot", &self.slot)
            .finish()
    }
}

fn yk_error(e: yubikey::Error) -> KeyError {
    match e {
        yubikey::Error::PcscError { .. } => KeyError::Device(
            "cannot talk to PC/SC: is pcscd running? (`systemctl start pcscd`; Debian package pcscd)"
                .into(),
        ),
        yubikey::Error::NotFound => KeyError::Device("no YubiKey (PIV) found: plug one in".into()),
        yubikey::Error::WrongPin { tries } => KeyError::Device(format!(
            "wrong PIN: {tries} tries left before the PIV PIN is blocked"
        )),
        other => KeyError::Device(format!("YubiKey PIV: {other}")),
    }
}

/// Parses `9a`, `9c`, `9d`, `9e`.
pub fn slot_id(slot: &str) -> Result<yubikey::piv::SlotId, KeyError> {
    use yubikey::piv::SlotId;
    match slot {
        "9a" => Ok(SlotId::Authentication),
        "9c" => Ok(SlotId::Signature),
        "9d" => Ok(SlotId::KeyManagement),
        "9e" => Ok(SlotId::CardAuthentication),
        other => Err(KeyError::Options(format!(
            "PIV slot {other:?}: use 9a (authentication) or 9c (signature)"
        ))),
    }
}

impl UsbPiv {
    /// Opens the (single) YubiKey and reads which algorithm the slot holds. The PIN, if given,
    /// is verified before the first signature.
    pub fn open(slot: &str, pin: Option<String>) -> Result<Self, KeyError> {
        let mut yubikey = yubikey::YubiKey::open().map_err(yk_error)?;
        let slot = slot_id(slot)?;
        let algorithm = yubikey::piv::metadata(&mut yubikey, slot)
            .map_err(yk_error)?
            .algorithm;
        let yubikey::piv::SlotAlgorithmId::Asymmetric(algorithm) = algorithm else {
            return Err(KeyError::Device(
                "the slot holds no asymmetric key: generate one with --generate".into(),
            ));
        };
        Ok(Self {
            yubikey,
            slot,
            algorithm,
            pin: pin.map(zeroize_string::Secret),
        })
    }

    /// Generates a new P-256 key in the slot, on the device, with the given policies (needs
    /// the default management key).
    pub fn generate(
        slot: &str,
        pin_policy: PinPolicy,
        touch_policy: TouchPolicy,
        pin: Option<String>,
    ) -> Result<Self, KeyError> {
        let mut yubikey = yubikey::YubiKey::open().map_err(yk_error)?;
        let slot_id = slot_id(slot)?;
        let mgm = yubikey::MgmKey::get_default(&yubikey).map_err(yk_error)?;
        yubikey.authenticate(&mgm).map_err(|e| {
            KeyError::Device(format!(
                "the management key is not the default ({e}): generate the key with ykman instead"
            ))
        })?;
        yubikey::piv::generate(
            &mut yubikey,
            slot_id,
            yubikey::piv::AlgorithmId::EccP256,
            match pin_policy {
                PinPolicy::Never => yubikey::PinPolicy::Never,
                PinPolicy::Once => yubikey::PinPolicy::Once,
                PinPolicy::Always => yubikey::PinPolicy::Always,
            },
            match touch_policy {
                TouchPolicy::Never => yubikey::TouchPolicy::Never,
                TouchPolicy::Always => yubikey::TouchPolicy::Always,
                TouchPolicy::Cached => yubikey::TouchPolicy::Cached,
            },
        )
        .map_err(yk_error)?;
        Ok(Self {
            yubikey,
            slot: slot_id,
            algorithm: yubikey::piv::AlgorithmId::EccP256,
            pin: pin.map(zeroize_string::Secret),
        })
    }

    fn sign(&mut self, challenge: &[u8]) -> Result<Vec<u8>, KeyError> {
        use sha2::Digest as _;
        if let Some(pin) = &self.pin {
            self.yubikey
                .verify_pin(pin.0.as_bytes())
                .map_err(yk_error)?;
        }
        let digest = match self.algorithm {
            yubikey::piv::AlgorithmId::EccP256 => sha2::Sha256::digest(challenge).to_vec(),
            yubikey::piv::AlgorithmId::EccP384 => sha2::Sha384::digest(challenge).to_vec(),
            other => {
                return Err(KeyError::Device(format!(
                    "slot algorithm {other:?}: latchkey approves with ECDSA P-256 or P-384 keys"
                )));
            }
        };
        eprintln!("touch your YubiKey if it blinks");
        let signature =
            yubikey::piv::sign_data(&mut self.yubikey, &digest, self.algorithm, self.slot)
                .map_err(yk_error)?;
        Ok(signature.to_vec())
    }

    fn certificates(&mut self) -> Result<(String, String, Vec<u8>), KeyError> {
        use der::{Decode as _, Encode as _, EncodePem as _};
        let attestation = yubikey::piv::attest(&mut self.yubikey, self.slot).map_err(|e| {
            KeyError::Device(format!(
                "the slot has no attestation ({e}): an imported key cannot be enrolled; generate the key on the device"
            ))
        })?;
        let attestation = x509_cert::Certificate::from_der(&attestation).map_err(gen_error)?;
        let device = yubikey::certificate::Certificate::read(
            &mut self.yubikey,
            yubikey::piv::SlotId::Attestation,
        )
        .map_err(yk_error)?
        .cert;
        let spki = attestation
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(gen_error)?;
        let pem =
            |c: &x509_cert::Certificate| c.to_pem(der::pem::LineEnding::LF).map_err(gen_error);
        Ok((pem(&attestation)?, pem(&device)?, spki))
    }

    fn credential_id(&self) -> String {
        let slot = match self.slot {
            yubikey::piv::SlotId::Authentication => "9a",
            yubikey::piv::SlotId::Signature => "9c",
            yubikey::piv::SlotId::KeyManagement => "9d",
            _ => "9e",
        };
        format!("piv-{}-{slot}", u32::from(self.yubikey.serial()))
    }
}

impl Authenticator for UsbPiv {
    fn register(
        &mut self,
        _origin: &Url,
        _options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError> {
        Err(not_webauthn())
    }

    fn assert(
        &mut self,
        _origin: &Url,
        _options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError> {
        Err(not_webauthn())
    }

    fn enroll(
        &mut self,
        _origin: Option<&str>,
        _options_json: &str,
        piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        let (attestation, device, spki) = self.certificates()?;
        let signature = self.sign(piv_challenge)?;
        piv_enrollment(&attestation, &device, &spki, &signature)
    }

    fn respond(
        &mut self,
        _origin: Option<&str>,
        _options_json: &str,
        piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        let signature = self.sign(piv_challenge)?;
        piv_assertion(&self.credential_id(), &signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_piv_attestation_verifies_to_its_own_root_with_the_chosen_values() {
        let key = SoftPiv::generate(&SoftPivSpec {
            serial: 4242,
            touch: TouchPolicy::Cached,
            pin: PinPolicy::Always,
            ..SoftPivSpec::default()
        })
        .unwrap();
        let root =
            crate::verify::piv::parse_certificate("root", key.state.root_pem.as_bytes()).unwrap();
        let trust = crate::verify::piv::PivTrust::yubico(&[])
            .unwrap()
            .with_dev_root(root);
        let att = crate::verify::piv::parse_certificate("a", key.state.attestation_pem.as_bytes())
            .unwrap();
        let dev =
            crate::verify::piv::parse_certificate("d", key.state.device_pem.as_bytes()).unwrap();
        let attested = trust
            .verify(&att, &dev, Some(&key.public_key_spki().unwrap()))
            .unwrap();
        assert_eq!(attested.serial, 4242);
        assert_eq!(attested.touch_policy, TouchPolicy::Cached);
        assert_eq!(attested.pin_policy, PinPolicy::Always);
        assert_eq!(attested.slot, "9a");
        assert!(attested.dev_root);
        let sig = key.sign(b"challenge").unwrap();
        crate::verify::piv::verify_signature(
            "es256",
            &attested.public_key_spki,
            b"challenge",
            &sig,
        )
        .unwrap();
    }
}
