//! Operators and their authenticators as records: who may act, which hardware keys they hold
//! and in what state, and the pending ceremonies. The ceremonies themselves (enrollment,
//! assertions) are `service::ceremony`.

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration, Uuid};

use crate::base::clock::Timestamp;
use crate::verify::fido2::credential_id_text;

/// A human who may act in an emergency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Unique name.
    pub name: String,
    /// Roles, e.g. `admin`, `dba-oncall`.
    pub roles: Vec<String>,
    /// WebAuthn user handle.
    pub user_id: Uuid,
    /// When first enrolled.
    pub enrolled_at: Timestamp,
}

/// Lifecycle of an authenticator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuthenticatorState {
    /// Counts for approvals.
    Active,
    /// Approves nothing until reinstated by an approved change.
    Suspended {
        /// Why.
        reason: String,
        /// Since when.
        at: Timestamp,
    },
    /// Removed for good by an approved change; kept so the credential cannot return.
    Removed {
        /// Since when.
        at: Timestamp,
    },
}

/// What kind of key an authenticator is, with what verifying it needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeyMaterial {
    /// A FIDO2 security key.
    Fido2 {
        /// webauthn-rs credential.
        key: SecurityKey,
    },
    /// A PIV slot key (YubiKey), with what its attestation proved.
    Piv {
        /// Serial, firmware, policies, slot, public key.
        attested: crate::verify::piv::Attested,
    },
}

/// An enrolled hardware key: a FIDO2 credential or a PIV slot key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Authenticator {
    /// Credential id: base64url for FIDO2, `piv-SERIAL-SLOT` for PIV.
    pub credential_id: String,
    /// Owner.
    pub operator: String,
    /// The key.
    pub key: KeyMaterial,
    /// `es256`, `es384` or `ed25519`.
    pub algorithm: String,
    /// SPKI DER, base64.
    pub public_key: String,
    /// Authenticator model.
    pub aaguid: Option<Uuid>,
    /// Last signature counter seen.
    pub counter: u32,
    /// Active, suspended or removed.
    pub state: AuthenticatorState,
    /// When enrolled.
    pub enrolled_at: Timestamp,
    /// Whether its attestation chained to a trusted CA at enrollment.
    #[serde(default)]
    pub attested: bool,
}

/// Who holds a stored key and its state, read without decoding the key material (the costly
/// part of an [`Authenticator`]).
#[derive(Debug, Deserialize)]
pub struct KeyStanding {
    /// Owner.
    pub operator: String,
    /// Active, suspended or removed.
    pub state: AuthenticatorState,
}

impl Authenticator {
    /// The FIDO2 credential, if this is a FIDO2 key.
    pub fn fido2(&self) -> Option<&SecurityKey> {
        match &self.key {
            KeyMaterial::Fido2 { key } => Some(key),
            KeyMaterial::Piv { .. } => None,
        }
    }

    /// What the PIV attestation proved, if this is a PIV key.
    pub fn piv(&self) -> Option<&crate::verify::piv::Attested> {
        match &self.key {
            KeyMaterial::Piv { attested } => Some(attested),
            KeyMaterial::Fido2 { .. } => None,
        }
    }
}

/// A pending challenge: single-use, expiring.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceremony {
    /// Who it is for.
    pub operator: String,
    /// Expiry.
    pub expires_at: Timestamp,
    /// What it is.
    pub kind: CeremonyKind,
}

/// The two ceremonies, and the tombstone of a used one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CeremonyKind {
    /// Registering a key during genesis.
    Enrollment {
        /// Roles the operator gets.
        roles: Vec<String>,
        /// webauthn-rs state.
        state: SecurityKeyRegistration,
        /// What a PIV key signs to prove it holds the attested key (hex).
        #[serde(default)]
        piv_challenge: String,
    },
    /// Asserting over a digest.
    Assertion {
        /// What is being approved (hex).
        digest: String,
        /// Server nonce (hex).
        nonce: String,
        /// Whether user verification is required.
        require_uv: bool,
        /// webauthn-rs state (None when the operator has no FIDO2 key).
        state: Option<SecurityKeyAuthentication>,
    },
    /// Answered once already.
    Used {
        /// When.
        at: Timestamp,
    },
}

/// A verified assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// Who.
    pub operator: String,
    /// With which key.
    pub credential_id: String,
    /// Whether PIN/biometric was verified.
    pub user_verified: bool,
    /// New signature counter.
    pub counter: u32,
    /// The audit record holding the evidence.
    pub audit_seq: u64,
}

/// A ceremony just opened: its id, the WebAuthn options (W3C JSON; empty when the operator has
/// no FIDO2 key) and the challenge a PIV key signs (ECDSA over these 32 bytes).
#[derive(Clone, Debug)]
pub struct Opened {
    pub ceremony_id: String,
    /// WebAuthn options JSON.
    pub options_json: String,
    /// The challenge for PIV keys.
    pub piv_challenge: [u8; 32],
}

/// PIV trust and the trust-store's key policy for enrolling PIV keys.
#[derive(Clone, Debug)]
pub struct PivSettings {
    /// Roots and intermediates.
    pub trust: crate::verify::piv::PivTrust,
    /// What an enrolled key must meet.
    pub policy: crate::verify::piv::KeyPolicy,
    /// Whether unattested (imported) keys are refused. Always true outside dev mode.
    pub require_attestation: bool,
}

/// The challenge a PIV key signs to enroll: bound to the ceremony's nonce and the operator.
pub fn piv_enroll_challenge(nonce: &[u8; 32], operator: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"latchkey.piv.enroll.v1\n");
    h.update(nonce);
    h.update(operator.as_bytes());
    h.finalize().into()
}

/// What a client sends to enroll a PIV slot key (in `credential_json`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PivEnrollment {
    /// `"piv"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The slot's attestation certificate, PEM (empty for an imported key).
    #[serde(default)]
    pub attestation: String,
    /// The slot-f9 device certificate, PEM.
    #[serde(default)]
    pub device: String,
    /// The slot's public key, SPKI DER, base64.
    pub public_key: String,
    /// DER ECDSA signature over the enrollment challenge, base64.
    pub signature: String,
}

/// Whether a response is a PIV one (`{"type":"piv",…}`) rather than a WebAuthn credential.
pub fn is_piv_response(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(|t| t == "piv"))
        .unwrap_or(false)
}

/// The `operator_keys` entry of one key. Operator names cannot hold `/`
/// (`service::operators::check_name`), so one operator's entries never run into another's.
pub fn key_index_entry(operator: &str, credential_id: &str) -> Vec<u8> {
    format!("{operator}/{credential_id}").into_bytes()
}

/// Shown credential id of raw bytes.
pub fn credential_id(raw: &[u8]) -> String {
    credential_id_text(raw)
}
