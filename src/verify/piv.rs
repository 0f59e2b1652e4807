//! PIV (YubiKey) attestation: the slot's attestation certificate, signed by the device's slot-f9
//! certificate, chained to Yubico's roots bundled in this binary and pinned by SHA-256; the
//! Yubico extensions (firmware, serial, PIN and touch policy, form factor); and the policy a key
//! must meet to be enrolled.

use der::{Decode as _, Encode as _};
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;

use crate::base::error::{Coded, ErrorKind};

/// Yubico PIV Root CA Serial 263751 (firmware < 5.7.4).
const PIV_ROOT_263751: &[u8] = include_bytes!("../../trust/yubico-piv-root-ca-263751.pem");
/// Yubico Attestation Root 1 (firmware >= 5.7.4).
const ATTESTATION_ROOT_1: &[u8] = include_bytes!("../../trust/yubico-attestation-root-1.pem");
/// Yubico Attestation Intermediate B 1 (signed by Root 1).
const INTERMEDIATE_B_1: &[u8] =
    include_bytes!("../../trust/yubico-attestation-intermediate-b-1.pem");

/// The bundled roots and their pinned SHA-256 (of the DER), checked at start.
const BUNDLED_ROOTS: &[(&str, &[u8], &str)] = &[
    (
        "Yubico PIV Root CA Serial 263751",
        PIV_ROOT_263751,
        "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546",
    ),
    (
        "Yubico Attestation Root 1",
        ATTESTATION_ROOT_1,
        "62760c6a6ef91679f454c8902b80fd009825b3f25da90f1fbace2ec6586cd5a8",
    ),
];

/// Intermediates Yubico publishes (firmware >= 5.7.4), accepted only with these fingerprints.
const PUBLISHED_INTERMEDIATES: &[(&str, &str)] = &[
    (
        "Yubico Attestation Intermediate B 1",
        "d4cc3f456fdaf4e7812a21aab1dfe9d8e27d24e2fd2d6f21c9940109f0daa754",
    ),
    (
        "Yubico Attestation Intermediate A 1",
        "4698a1d3389c3ec60016c216250f1d0439922832d65142327436376dc2942b55",
    ),
    (
        "Yubico PIV Attestation A 1",
        "6de693f05376f5d8ca29069261e1c8626c75d503bd2edbfd75354cad1f722870",
    ),
    (
        "Yubico PIV Attestation B 1",
        "2d55b7998f4e42569d6d8fa382b6dc77d1dacf07358b19701163892922b17052",
    ),
    (
        "Yubico PIV Attestation B2 1",
        "0c90b7d184a36edf50a35f9be935f0c5689bfdcfe5bdd073366cafb49061a440",
    ),
];

const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

/// Longest chain from the attestation certificate to a root.
const MAX_CHAIN: usize = 5;

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
    /// Never.
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
    /// Never.
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
    /// PIN policy.
    pub pin_policy: PinPolicy,
    /// Touch policy.
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

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
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

fn der_of(cert: &Certificate) -> Vec<u8> {
    cert.to_der().unwrap_or_default()
}

/// The roots and intermediates attestations chain to.
#[derive(Clone, Debug)]
pub struct PivTrust {
    roots: Vec<Certificate>,
    intermediates: Vec<Certificate>,
    dev_roots: Vec<Certificate>,
    /// Yubico's U2F root (pinned as for FIDO2): YubiKey 4 signs its slot-f9 device
    /// certificate with it, without basicConstraints. Trusted for device certificates of
    /// exactly that shape, directly under it, and nothing else.
    u2f_root: Certificate,
}

impl PivTrust {
    /// Yubico's bundled roots (each checked against its pinned fingerprint), the bundled
    /// Intermediate B 1, and operator-supplied intermediates, each of which must match one of
    /// the fingerprints Yubico publishes.
    pub fn yubico(extra_intermediates: &[Certificate]) -> Result<Self, PivError> {
        let mut roots = Vec::new();
        for (name, pem, pinned) in BUNDLED_ROOTS {
            let cert = parse_certificate("bundled root", pem)?;
            if sha256_hex(&der_of(&cert)) != *pinned {
                return Err(PivError::Pin {
                    name: (*name).to_owned(),
                    pinned: (*pinned).to_owned(),
                });
            }
            roots.push(cert);
        }
        let mut intermediates = vec![parse_certificate("bundled intermediate", INTERMEDIATE_B_1)?];
        intermediates.extend(extra_intermediates.iter().cloned());
        for cert in &intermediates {
            let fingerprint = sha256_hex(&der_of(cert));
            if !PUBLISHED_INTERMEDIATES
                .iter()
                .any(|(_, f)| *f == fingerprint)
            {
                return Err(PivError::Pin {
                    name: cert.tbs_certificate().subject().to_string(),
                    pinned: "one of Yubico's published intermediate fingerprints".to_owned(),
                });
            }
        }
        let u2f_root = parse_certificate(
            "bundled U2F root",
            crate::verify::fido2::YUBICO_FIDO_ROOT_PEM,
        )?;
        if sha256_hex(&der_of(&u2f_root)) != crate::verify::fido2::YUBICO_FIDO_ROOT_SHA256 {
            return Err(PivError::Pin {
                name: "Yubico U2F Root CA Serial 457200631".to_owned(),
                pinned: crate::verify::fido2::YUBICO_FIDO_ROOT_SHA256.to_owned(),
            });
        }
        Ok(Self {
            roots,
            intermediates,
            dev_roots: Vec::new(),
            u2f_root,
        })
    }

    /// The U2F root in place of Yubico's (tests build YubiKey 4-shaped chains under it).
    #[cfg(test)]
    fn with_u2f_root(mut self, root: Certificate) -> Self {
        self.u2f_root = root;
        self
    }

    /// A YubiKey 4 device certificate: issued by the U2F root, signed by it, and without
    /// basicConstraints (as that series issues them).
    fn is_yubikey4_device(&self, device: &Certificate) -> bool {
        const BASIC_CONSTRAINTS: &str = "2.5.29.19";
        let no_basic_constraints = !device
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
            .any(|e| e.extn_id.to_string() == BASIC_CONSTRAINTS);
        device.tbs_certificate().issuer() == self.u2f_root.tbs_certificate().subject()
            && no_basic_constraints
            && verify_signed_by(device, &self.u2f_root, "device by U2F root").is_ok()
    }

    /// Adds a root trusted only in dev mode (the software PIV signer's synthetic hierarchy).
    /// The caller must refuse this outside dev mode.
    pub fn with_dev_root(mut self, root: Certificate) -> Self {
        self.roots.push(root.clone());
        self.dev_roots.push(root);
        self
    }

    /// Verifies `attestation` (the slot's certificate) signed by `device` (slot f9) up to a
    /// root, and reads the Yubico extensions. `expected_spki`, if given, must be the attested
    /// key.
    pub fn verify(
        &self,
        attestation: &Certificate,
        device: &Certificate,
        expected_spki: Option<&[u8]>,
    ) -> Result<Attested, PivError> {
        let attested_spki = attestation
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| PivError::Malformed {
                what: "attestation",
                detail: e.to_string(),
            })?;
        // The chain first: a tampered certificate fails here, whatever else it says.
        verify_signed_by(attestation, device, "attestation by device certificate")?;
        let mut current = device.clone();
        let mut root = None;
        if self.is_yubikey4_device(device) {
            root = Some((self.u2f_root.tbs_certificate().subject().to_string(), false));
        }
        for _ in 0..MAX_CHAIN {
            if root.is_some() {
                break;
            }
            let here = der_of(&current);
            if let Some(found) = self.roots.iter().find(|r| der_of(r) == here) {
                let dev = self.dev_roots.iter().any(|r| der_of(r) == here);
                root = Some((found.tbs_certificate().subject().to_string(), dev));
                break;
            }
            let issuer = current.tbs_certificate().issuer().clone();
            // Several trusted certificates may share a name (re-issued roots): the issuer is
            // the one whose key verifies the signature.
            let candidates: Vec<&Certificate> = self
                .roots
                .iter()
                .chain(&self.intermediates)
                .filter(|c| *c.tbs_certificate().subject() == issuer)
                .collect();
            if candidates.is_empty() {
                return Err(PivError::UntrustedChain(format!(
                    "no trusted issuer {issuer}"
                )));
            }
            let parent = candidates
                .iter()
                .find(|c| verify_signed_by(&current, c, "chain").is_ok())
                .ok_or_else(|| PivError::BadSignature("chain".to_owned()))?;
            current = (*parent).clone();
        }
        let (root, dev_root) =
            root.ok_or_else(|| PivError::UntrustedChain("chain too long".into()))?;
        if let Some(expected) = expected_spki
            && expected != attested_spki.as_slice()
        {
            return Err(PivError::KeyMismatch);
        }
        let ext = |oid: &'static str| -> Result<Option<Vec<u8>>, PivError> {
            Ok(attestation
                .tbs_certificate()
                .extensions()
                .into_iter()
                .flatten()
                .find(|e| e.extn_id.to_string() == oid)
                .map(|e| e.extn_value.as_bytes().to_vec()))
        };
        let firmware = ext(OID_FIRMWARE)?.ok_or(PivError::Extension("firmware"))?;
        let [major, minor, patch] = firmware[..] else {
            return Err(PivError::Extension("firmware"));
        };
        let serial = ext(OID_SERIAL)?.ok_or(PivError::Extension("serial"))?;
        let serial = parse_der_uint(&serial).ok_or(PivError::Extension("serial"))?;
        let policy = ext(OID_POLICY)?.ok_or(PivError::Extension("policy"))?;
        let [pin, touch] = policy[..] else {
            return Err(PivError::Extension("policy"));
        };
        let pin_policy = match pin {
            1 => PinPolicy::Never,
            2 => PinPolicy::Once,
            3 => PinPolicy::Always,
            _ => return Err(PivError::Extension("policy")),
        };
        let touch_policy = match touch {
            1 => TouchPolicy::Never,
            2 => TouchPolicy::Always,
            3 => TouchPolicy::Cached,
            _ => return Err(PivError::Extension("policy")),
        };
        let form_factor = ext(OID_FORM_FACTOR)?.and_then(|v| v.first().copied());
        let slot = attestation
            .tbs_certificate()
            .subject()
            .to_string()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let algorithm = key_algorithm(attestation.tbs_certificate().subject_public_key_info())?;
        Ok(Attested {
            serial,
            firmware: (major, minor, patch),
            pin_policy,
            touch_policy,
            form_factor,
            slot,
            public_key_spki: attested_spki,
            algorithm,
            root,
            dev_root,
        })
    }
}

/// Checks the bundled roots against their pins (at start).
pub fn check_bundled() -> Result<(), PivError> {
    PivTrust::yubico(&[]).map(|_| ())
}

fn parse_der_uint(bytes: &[u8]) -> Option<u32> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, value) = rest.split_first()?;
    if tag != 0x02 || usize::from(len) != value.len() || value.is_empty() || value.len() > 5 {
        return None;
    }
    let mut n: u64 = 0;
    for b in value {
        n = (n << 8) | u64::from(*b);
    }
    u32::try_from(n).ok()
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

fn key_algorithm(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Result<String, PivError> {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    match (spki.algorithm.oid.to_string().as_str(), curve.as_deref()) {
        (OID_EC, Some(OID_P256)) => Ok("es256".into()),
        (OID_EC, Some(OID_P384)) => Ok("es384".into()),
        (oid, curve) => Err(PivError::Algorithm(format!(
            "slot key {oid} {}",
            curve.unwrap_or("")
        ))),
    }
}

/// Verifies that `issuer`'s key signed `cert`.
fn verify_signed_by(cert: &Certificate, issuer: &Certificate, what: &str) -> Result<(), PivError> {
    use p256::ecdsa::signature::Verifier as _;
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| PivError::Malformed {
            what: "certificate",
            detail: e.to_string(),
        })?;
    let signature = cert.signature().raw_bytes();
    let spki = issuer.tbs_certificate().subject_public_key_info();
    let spki_der = spki.to_der().map_err(|e| PivError::Malformed {
        what: "issuer key",
        detail: e.to_string(),
    })?;
    let bad = || PivError::BadSignature(what.to_owned());
    let alg = cert.signature_algorithm().oid.to_string();
    match (alg.as_str(), spki.algorithm.oid.to_string().as_str()) {
        (
            hash @ ("1.2.840.113549.1.1.11" | "1.2.840.113549.1.1.12" | "1.2.840.113549.1.1.13"),
            OID_RSA,
        ) => {
            use rsa::pkcs8::DecodePublicKey as _;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("RSA issuer key: {e}")))?;
            let sig = rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| bad())?;
            let ok = match hash {
                "1.2.840.113549.1.1.11" => {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key).verify(&tbs, &sig)
                }
                "1.2.840.113549.1.1.12" => {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key).verify(&tbs, &sig)
                }
                _ => rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(key).verify(&tbs, &sig),
            };
            ok.map_err(|_| bad())
        }
        ("1.2.840.10045.4.3.2", OID_EC) => {
            use p256::pkcs8::DecodePublicKey as _;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("P-256 issuer key: {e}")))?;
            let sig = p256::ecdsa::Signature::from_der(signature).map_err(|_| bad())?;
            key.verify(&tbs, &sig).map_err(|_| bad())
        }
        ("1.2.840.10045.4.3.3", OID_EC) => {
            use p384::pkcs8::DecodePublicKey as _;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("P-384 issuer key: {e}")))?;
            let sig = p384::ecdsa::Signature::from_der(signature).map_err(|_| bad())?;
            key.verify(&tbs, &sig).map_err(|_| bad())
        }
        (sig, key) => Err(PivError::Algorithm(format!(
            "signature {sig} with issuer key {key}"
        ))),
    }
}

/// Verifies a PIV signature over `message` by the key `spki` (`es256`: ECDSA P-256 with
/// SHA-256; `es384`: P-384 with SHA-384). Signatures are DER.
pub fn verify_signature(
    algorithm: &str,
    spki: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier as _;
    match algorithm {
        "es256" => {
            use p256::pkcs8::DecodePublicKey as _;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|e| format!("key: {e}"))?;
            let sig = p256::ecdsa::Signature::from_der(signature)
                .map_err(|e| format!("signature encoding: {e}"))?;
            key.verify(message, &sig)
                .map_err(|_| "signature was not made by the enrolled key".to_owned())
        }
        "es384" => {
            use p384::pkcs8::DecodePublicKey as _;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|e| format!("key: {e}"))?;
            let sig = p384::ecdsa::Signature::from_der(signature)
                .map_err(|e| format!("signature encoding: {e}"))?;
            key.verify(message, &sig)
                .map_err(|_| "signature was not made by the enrolled key".to_owned())
        }
        other => Err(format!("unsupported algorithm {other}")),
    }
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

    const DEVICE: &[u8] = include_bytes!("../../trust/fixtures/yubikey-5.4.3-f9-device.pem");
    const SLOT_9A: &[u8] =
        include_bytes!("../../trust/fixtures/yubikey-5.4.3-slot9a-attestation.pem");

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
