//! PIV (YubiKey) attestation: the slot's attestation certificate, signed by the device's slot-f9
//! certificate, chained to Yubico's roots bundled in this binary and pinned by SHA-256; the
//! Yubico extensions (firmware, serial, PIN and touch policy, form factor); and the policy a key
//! must meet to be enrolled.
//!
//! `trust` builds and walks the chain to a pinned root, `extensions` reads what the attestation
//! certificate says about the key, `signatures` checks certificate and PIV signatures.

mod extensions;
mod signatures;
mod trust;

use der::Decode as _;
use x509_cert::Certificate;

use crate::base::error::{Coded, ErrorKind};

pub use signatures::verify_signature;
pub use trust::{PivTrust, check_bundled};

/// Why a PIV attestation or key is refused. Nothing is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PivError {
    /// A certificate is not DER/PEM X.509. Re-read it from the key.
    #[error("malformed certificate ({what}): {detail}")]
    Malformed {
        /// Which certificate.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The chain does not end at a pinned Yubico root (or a configured dev root). The key is
    /// not a genuine YubiKey, or its intermediates are missing from `[piv] intermediates`.
    #[error("the attestation does not chain to a trusted root: {0}")]
    UntrustedChain(String),
    /// A signature in the chain does not verify: the certificate was altered.
    #[error("attestation signature does not verify ({0}): the certificate was altered")]
    BadSignature(String),
    /// The attested key is not the key being enrolled.
    #[error("the attestation is for another public key than the one being enrolled")]
    KeyMismatch,
    /// A Yubico extension is missing or malformed.
    #[error("attestation extension {0} is missing or malformed")]
    Extension(&'static str),
    /// The key's touch policy does not meet the policy. Generate the key again with
    /// `--touch-policy always` (or cached where allowed).
    #[error("touch policy {found} does not meet the required {required}")]
    TouchPolicy {
        /// The key's.
        found: TouchPolicy,
        /// The policy's.
        required: TouchPolicy,
    },
    /// The key's PIN policy does not meet the policy.
    #[error("PIN policy {found} does not meet the required {required}")]
    PinPolicy {
        /// The key's.
        found: PinPolicy,
        /// The policy's.
        required: PinPolicy,
    },
    /// The key has no attestation (it was imported, not generated on the device). Generate the
    /// key on the device.
    #[error(
        "the key has no attestation (imported keys cannot prove they never left a device): generate it on the device"
    )]
    NotAttested,
    /// An algorithm this build does not verify.
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    /// A bundled root or a supplied intermediate does not match its pinned fingerprint.
    #[error("{name} does not match its pinned SHA-256 {pinned}: refusing to trust it")]
    Pin {
        /// Certificate.
        name: String,
        /// Expected fingerprint.
        pinned: String,
    },
}

impl Coded for PivError {
    fn code(&self) -> &'static str {
        match self {
            PivError::Malformed { .. } => "piv.malformed",
            PivError::UntrustedChain(_) => "piv.untrusted_chain",
            PivError::BadSignature(_) => "piv.bad_signature",
            PivError::KeyMismatch => "piv.key_mismatch",
            PivError::Extension(_) => "piv.bad_extension",
            PivError::TouchPolicy { .. } => "piv.touch_policy",
            PivError::PinPolicy { .. } => "piv.pin_policy",
            PivError::NotAttested => "piv.not_attested",
            PivError::Algorithm(_) => "piv.unsupported_algorithm",
            PivError::Pin { .. } => "piv.pin_mismatch",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            PivError::Malformed { .. } | PivError::Extension(_) | PivError::Algorithm(_) => {
                ErrorKind::InvalidInput
            }
            PivError::Pin { .. } => ErrorKind::Internal,
            _ => ErrorKind::PermissionDenied,
        }
    }
}

/// When the key asks for its PIN.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PinPolicy {
    Never,
    /// Once per session.
    Once,
    /// Before every signature.
    Always,
}

/// When the key asks for a touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchPolicy {
    Never,
    /// For every signature.
    Always,
    /// Once, then cached for 15 seconds.
    Cached,
}

impl TouchPolicy {
    /// How strict (never < cached < always).
    fn rank(self) -> u8 {
        match self {
            TouchPolicy::Never => 0,
            TouchPolicy::Cached => 1,
            TouchPolicy::Always => 2,
        }
    }
}

impl std::fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinPolicy::Never => "never",
            PinPolicy::Once => "once",
            PinPolicy::Always => "always",
        })
    }
}

impl std::fmt::Display for TouchPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TouchPolicy::Never => "never",
            TouchPolicy::Always => "always",
            TouchPolicy::Cached => "cached",
        })
    }
}

/// What an attestation proves about a key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attested {
    /// YubiKey serial number.
    pub serial: u32,
    /// Firmware version.
    pub firmware: (u8, u8, u8),
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    /// Form factor byte (e.g. 4 = USB-C nano), when present.
    pub form_factor: Option<u8>,
    /// Slot, from the attestation certificate's subject (e.g. `9a`).
    pub slot: String,
    /// The attested public key, SPKI DER.
    pub public_key_spki: Vec<u8>,
    /// `es256` (P-256) or `es384` (P-384).
    pub algorithm: String,
    /// Subject of the root the chain ends at.
    pub root: String,
    /// Whether that root is a dev-mode root (the software PIV signer's), not Yubico's.
    #[serde(default)]
    pub dev_root: bool,
}

/// What an enrolled PIV key must meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyPolicy {
    /// Least touch policy (None: any).
    pub touch: Option<TouchPolicy>,
    /// Least PIN policy (None: any).
    pub pin: Option<PinPolicy>,
}

impl KeyPolicy {
    /// Refuses a key that does not meet the policy, saying why.
    pub fn check(&self, attested: &Attested) -> Result<(), PivError> {
        if let Some(required) = self.touch
            && attested.touch_policy.rank() < required.rank()
        {
            return Err(PivError::TouchPolicy {
                found: attested.touch_policy,
                required,
            });
        }
        if let Some(required) = self.pin
            && attested.pin_policy < required
        {
            return Err(PivError::PinPolicy {
                found: attested.pin_policy,
                required,
            });
        }
        Ok(())
    }
}

/// Parses one PEM or DER certificate.
pub fn parse_certificate(what: &'static str, bytes: &[u8]) -> Result<Certificate, PivError> {
    let malformed = |detail: String| PivError::Malformed { what, detail };
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(e.to_string()))?;
        let (_, der) =
            der::pem::decode_vec(text.as_bytes()).map_err(|e| malformed(e.to_string()))?;
        Certificate::from_der(&der).map_err(|e| malformed(e.to_string()))
    } else {
        Certificate::from_der(bytes).map_err(|e| malformed(e.to_string()))
    }
}

/// Every PEM certificate in a bundle.
pub fn parse_bundle(what: &'static str, pem: &[u8]) -> Result<Vec<Certificate>, PivError> {
    let text = std::str::from_utf8(pem).map_err(|e| PivError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    let mut certs = Vec::new();
    for block in text.split_inclusive("-----END CERTIFICATE-----") {
        if let Some(start) = block.find("-----BEGIN CERTIFICATE-----") {
            certs.push(parse_certificate(what, block[start..].trim().as_bytes())?);
        }
    }
    Ok(certs)
}

/// PIV keys: the policy enrolled keys must meet and extra trust material.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PivConfig {
    /// Least touch policy of an enrolled PIV key.
    pub require_touch: Option<TouchPolicy>,
    /// Least PIN policy of an enrolled PIV key.
    pub require_pin: Option<PinPolicy>,
    /// Yubico intermediates (PEM bundle, each pinned by its published fingerprint), for
    /// firmware >= 5.7.4.
    pub intermediates: Option<std::path::PathBuf>,
    /// Extra roots for software PIV signers: accepted only in dev mode.
    pub dev_roots: Vec<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    /// A YubiKey 4-shaped chain: a U2F-style root; a device certificate signed by it, with
    /// basicConstraints only if `device_is_ca`; a slot attestation (firmware 4.3.5).
    fn yubikey4_chain(device_is_ca: bool) -> (Certificate, Certificate, Certificate) {
        use rcgen::{
            BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
            PKCS_ECDSA_P256_SHA256,
        };
        let parse = |pem: String| parse_certificate("fixture", pem.as_bytes()).unwrap();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.distinguished_name.push(
            DnType::CommonName,
            "Yubico U2F Root CA Serial 457200631 (test)",
        );
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
        device
            .distinguished_name
            .push(DnType::CommonName, "Yubico PIV Attestation");
        device.is_ca = if device_is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::NoCa
        };
        let device_cert = device.signed_by(&device_key, &root_issuer).unwrap();
        let device_issuer = Issuer::new(device, device_key);
        let slot_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut att = CertificateParams::new(Vec::<String>::new()).unwrap();
        att.distinguished_name
            .push(DnType::CommonName, "YubiKey PIV Attestation 9a");
        att.custom_extensions = vec![
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 41482, 3, 3], vec![4, 3, 5]),
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 41482, 3, 7],
                vec![0x02, 0x04, 0x00, 0x4c, 0x4b, 0x40],
            ),
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 41482, 3, 8], vec![2, 2]),
        ];
        let att_cert = att.signed_by(&slot_key, &device_issuer).unwrap();
        (
            parse(root_cert.pem()),
            parse(device_cert.pem()),
            parse(att_cert.pem()),
        )
    }

    #[test]
    fn a_yubikey_4_device_certificate_under_the_u2f_root_is_accepted() {
        let (root, device, attestation) = yubikey4_chain(false);
        let trust = PivTrust::yubico(&[]).unwrap().with_u2f_root(root);
        let attested = trust.verify(&attestation, &device, None).unwrap();
        assert_eq!(attested.firmware, (4, 3, 5));
        assert!(
            attested.root.contains("Yubico U2F Root CA"),
            "{}",
            attested.root
        );
    }

    #[test]
    fn the_u2f_root_vouches_for_nothing_but_yubikey_4_device_certificates() {
        // Same root, but a device certificate with basicConstraints: not that shape.
        let (root, device, attestation) = yubikey4_chain(true);
        let trust = PivTrust::yubico(&[]).unwrap().with_u2f_root(root);
        assert!(matches!(
            trust.verify(&attestation, &device, None),
            Err(PivError::UntrustedChain(_))
        ));
        // And the real one is pinned: without the test root the chain is untrusted.
        let (_, device, attestation) = yubikey4_chain(false);
        assert!(
            PivTrust::yubico(&[])
                .unwrap()
                .verify(&attestation, &device, None)
                .is_err()
        );
    }

    #[test]
    fn fuzz_attestation_certificates_never_panic_parsing_or_chain_checks() {
        let der = |pem: &[u8]| parse_certificate("fixture", pem).unwrap().to_der().unwrap();
        let valid = vec![der(DEVICE), der(SLOT_9A)];
        let trust = PivTrust::yubico(&[]).unwrap();
        let (attestation, device) = fixture();
        crate::base::fuzzing::run("piv", &valid, |input| {
            if let Ok(cert) = Certificate::from_der(input) {
                let _ = trust.verify(&cert, &device, None);
                let _ = trust.verify(&attestation, &cert, None);
            }
            let _ = parse_certificate("fuzzed", input);
        });
    }

    use super::*;
    use der::Encode as _;

    const DEVICE: &[u8] = include_bytes!("../../../trust/fixtures/yubikey-5.4.3-f9-device.pem");
    const SLOT_9A: &[u8] =
        include_bytes!("../../../trust/fixtures/yubikey-5.4.3-slot9a-attestation.pem");

    fn fixture() -> (Certificate, Certificate) {
        (
            parse_certificate("attestation", SLOT_9A).unwrap(),
            parse_certificate("device", DEVICE).unwrap(),
        )
    }

    #[test]
    fn the_bundled_roots_match_their_pinned_fingerprints() {
        check_bundled().unwrap();
    }

    #[test]
    fn a_real_yubikey_attestation_verifies_to_the_pinned_root_with_the_published_values() {
        let (attestation, device) = fixture();
        let trust = PivTrust::yubico(&[]).unwrap();
        let attested = trust.verify(&attestation, &device, None).unwrap();
        assert_eq!(attested.root, "CN=Yubico PIV Root CA Serial 263751");
        assert_eq!(attested.firmware, (5, 4, 3));
        assert_eq!(attested.serial, 15_732_500);
        assert_eq!(attested.pin_policy, PinPolicy::Once);
        assert_eq!(attested.touch_policy, TouchPolicy::Never);
        assert_eq!(attested.form_factor, Some(4));
        assert_eq!(attested.algorithm, "es256");
        assert_eq!(attested.slot, "9a");
    }

    #[test]
    fn a_policy_requiring_touch_refuses_the_real_key_whose_touch_policy_is_never() {
        let (attestation, device) = fixture();
        let attested = PivTrust::yubico(&[])
            .unwrap()
            .verify(&attestation, &device, None)
            .unwrap();
        let policy = KeyPolicy {
            touch: Some(TouchPolicy::Always),
            pin: None,
        };
        assert_eq!(
            policy.check(&attested),
            Err(PivError::TouchPolicy {
                found: TouchPolicy::Never,
                required: TouchPolicy::Always
            })
        );
        assert_eq!(KeyPolicy::default().check(&attested), Ok(()));
    }

    #[test]
    fn the_real_attestation_for_another_key_is_a_mismatch() {
        let (attestation, device) = fixture();
        let err = PivTrust::yubico(&[])
            .unwrap()
            .verify(&attestation, &device, Some(b"another key"))
            .unwrap_err();
        assert_eq!(err, PivError::KeyMismatch);
    }

    #[test]
    fn an_intermediate_not_published_by_yubico_is_refused() {
        let (_, device) = fixture();
        let err = PivTrust::yubico(&[device]).unwrap_err();
        assert_eq!(err.code(), "piv.pin_mismatch");
    }
}
