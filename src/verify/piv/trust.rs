//! The trust PIV attestations chain to: Yubico's roots bundled in this binary and pinned by
//! SHA-256, the intermediates Yubico publishes, the U2F root YubiKey 4 device certificates sit
//! under, and dev-mode roots; and the walk from an attestation up to one of them.

use der::Encode as _;
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;

use super::extensions::{YubicoExtensions, slot_of};
use super::signatures::{key_algorithm, verify_signed_by};
use super::{Attested, PivError, parse_certificate};

/// Yubico PIV Root CA Serial 263751 (firmware < 5.7.4).
const PIV_ROOT_263751: &[u8] = include_bytes!("../../../trust/yubico-piv-root-ca-263751.pem");
/// Yubico Attestation Root 1 (firmware >= 5.7.4).
const ATTESTATION_ROOT_1: &[u8] = include_bytes!("../../../trust/yubico-attestation-root-1.pem");
/// Yubico Attestation Intermediate B 1 (signed by Root 1).
const INTERMEDIATE_B_1: &[u8] =
    include_bytes!("../../../trust/yubico-attestation-intermediate-b-1.pem");

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

/// Longest chain from the attestation certificate to a root.
const MAX_CHAIN: usize = 5;

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
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
    pub(super) fn with_u2f_root(mut self, root: Certificate) -> Self {
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
        let (root, dev_root) = self.chain_root(attestation, device)?;
        if let Some(expected) = expected_spki
            && expected != attested_spki.as_slice()
        {
            return Err(PivError::KeyMismatch);
        }
        let extensions = YubicoExtensions::read(attestation)?;
        let slot = slot_of(attestation);
        let algorithm = key_algorithm(attestation.tbs_certificate().subject_public_key_info())?;
        Ok(Attested {
            serial: extensions.serial,
            firmware: extensions.firmware,
            pin_policy: extensions.pin_policy,
            touch_policy: extensions.touch_policy,
            form_factor: extensions.form_factor,
            slot,
            public_key_spki: attested_spki,
            algorithm,
            root,
            dev_root,
        })
    }

    /// Checks that `device` signed `attestation`, then walks from `device` up to a trusted
    /// root: that root's subject, and whether it is a dev-mode root.
    fn chain_root(
        &self,
        attestation: &Certificate,
        device: &Certificate,
    ) -> Result<(String, bool), PivError> {
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
        root.ok_or_else(|| PivError::UntrustedChain("chain too long".into()))
    }
}

/// Checks the bundled roots against their pins (at start).
pub fn check_bundled() -> Result<(), PivError> {
    PivTrust::yubico(&[]).map(|_| ())
}
