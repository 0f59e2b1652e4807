//! The Yubico extensions of a PIV attestation certificate (firmware, serial, PIN and touch
//! policy, form factor) and the slot its subject names.

use x509_cert::Certificate;

use super::{PinPolicy, PivError, TouchPolicy};

const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

/// What the Yubico extensions of an attestation certificate say about the key.
pub(super) struct YubicoExtensions {
    /// YubiKey serial number.
    pub(super) serial: u32,
    /// Firmware version.
    pub(super) firmware: (u8, u8, u8),
    pub(super) pin_policy: PinPolicy,
    pub(super) touch_policy: TouchPolicy,
    /// Form factor byte, when present.
    pub(super) form_factor: Option<u8>,
}

impl YubicoExtensions {
    /// Reads them from `attestation`: firmware, serial and policy must be present and well
    /// formed; the form factor is optional.
    pub(super) fn read(attestation: &Certificate) -> Result<Self, PivError> {
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
        Ok(Self {
            serial,
            firmware: (major, minor, patch),
            pin_policy,
            touch_policy,
            form_factor,
        })
    }
}

/// The slot, from the attestation certificate's subject (e.g. `9a`).
pub(super) fn slot_of(attestation: &Certificate) -> String {
    attestation
        .tbs_certificate()
        .subject()
        .to_string()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
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
