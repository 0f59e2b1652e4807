//! Audit records: the record, event and evidence types, the record hash and the checkpoint
//! message, and the keys records are stored under.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::caller::Actor;
use crate::base::clock::Timestamp;
use crate::store::{Keyspace, Record};

/// Domain separation for record hashes.
const RECORD_HASH_DOMAIN: &[u8] = b"latchkey.audit.v1\n";
/// Domain separation for checkpoint signatures.
const CHECKPOINT_DOMAIN: &[u8] = b"latchkey.audit.checkpoint.v1\n";
/// The `prev_hash` of the first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Event name of checkpoint records.
pub const CHECKPOINT_EVENT: &str = "audit.checkpoint";

/// Raw signed material behind an approval, kept so an auditor can re-verify it offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// A WebAuthn/CTAP2 assertion. Fields are standard base64.
    Webauthn {
        /// Credential id of the enrolled authenticator.
        credential_id: String,
        /// The challenge the daemon issued (bytes, base64).
        challenge: String,
        /// authenticatorData.
        authenticator_data: String,
        /// clientDataJSON.
        client_data_json: String,
        /// Signature over authenticatorData || SHA-256(clientDataJSON).
        signature: String,
    },
    /// A PIV signature over the challenge.
    Piv {
        /// Key id of the enrolled PIV key (as recorded at enrollment).
        key_id: String,
        /// The challenge bytes, base64.
        challenge: String,
        /// DER ECDSA signature over the challenge, base64.
        signature: String,
    },
}

/// The signed part of a checkpoint record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the last record this checkpoint covers.
    pub covers_seq: u64,
    /// Hash of that record (hex).
    pub head_hash: String,
    /// Ed25519 signature (base64) by the audit key.
    pub signature: String,
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
    pub time: Timestamp,
    /// Hash of the previous record (hex); zeros for the first.
    pub prev_hash: String,
    /// Event type, e.g. `workload.admitted`.
    pub event: String,
    /// Who caused it.
    pub actor: Actor,
    /// What it is about, e.g. `workload/vault-plugin`.
    pub subject: String,
    /// Event-specific details.
    pub details: serde_json::Value,
    /// Signed evidence (approvals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Checkpoint signature (checkpoint records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// This record's hash (hex).
    pub hash: String,
}

impl Record for AuditRecord {
    const KEYSPACE: Keyspace = Keyspace::Audit;
}

#[derive(Serialize)]
struct HashedPart<'a> {
    seq: u64,
    time: Timestamp,
    prev_hash: &'a str,
    event: &'a str,
    actor: &'a Actor,
    subject: &'a str,
    details: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: &'a Option<Evidence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: &'a Option<Checkpoint>,
}

impl AuditRecord {
    /// The hash this record should have, computed from its other fields.
    pub fn compute_hash(&self) -> String {
        let part = HashedPart {
            seq: self.seq,
            time: self.time,
            prev_hash: &self.prev_hash,
            event: &self.event,
            actor: &self.actor,
            subject: &self.subject,
            details: &self.details,
            evidence: &self.evidence,
            checkpoint: &self.checkpoint,
        };
        // Serialising plain data to a Vec cannot fail; an empty body would still be hashed.
        let body = serde_json::to_vec(&part).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(RECORD_HASH_DOMAIN);
        h.update(&body);
        hex::encode(h.finalize())
    }
}

/// The message a checkpoint signs.
pub fn checkpoint_message(covers_seq: u64, head_hash: &[u8; 32], time: Timestamp) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&covers_seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    m.extend_from_slice(&time.unix_millis().to_be_bytes());
    m
}

/// A new event to record.
#[derive(Clone, Debug)]
pub struct Event {
    /// Event type.
    pub event: &'static str,
    /// Who caused it.
    pub actor: Actor,
    /// What it is about.
    pub subject: String,
    pub details: serde_json::Value,
    /// Signed evidence, for approvals.
    pub evidence: Option<Evidence>,
}

/// Key of a record in [`Keyspace::Audit`].
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a hex SHA-256.
pub fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}
