//! Offline verification of an exported audit log (JSON Lines), with only the audit public key:
//! hash chain, sequence continuity, checkpoint signatures, and every approval's evidence
//! against the public key enrolled earlier in the same log.

use std::collections::HashMap;
use std::io::BufRead;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use sha2::{Digest as _, Sha256};

use super::{AuditRecord, CHECKPOINT_EVENT, Evidence, ZERO_HASH, checkpoint_message, decode_hash};

/// Event that enrolls a key whose signatures later records carry. Details: `credential_id`
/// (the id evidence names), `algorithm` (`es256` or `ed25519`), `public_key` (SPKI DER, base64).
pub const ENROLLED_EVENT: &str = "authenticator.enrolled";
/// Event that removes an enrolled key (details: `credential_id`).
pub const REMOVED_EVENT: &str = "authenticator.removed";

/// The log is not what the daemon wrote: the first bad record and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq} (line {line}): {reason}")]
pub struct Tampered {
    /// Sequence number the bad record has, or should have had at that position.
    pub seq: u64,
    /// 1-based line in the export.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// A verified log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Newest checkpoint, if any.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint `(first, last)`: chained, but a truncation there
    /// cannot be told from a log that simply ended.
    pub unverified_tail: Option<(u64, u64)>,
    /// Approvals whose evidence was re-verified.
    pub evidence_verified: u64,
}

#[derive(Clone, Debug)]
enum EnrolledKey {
    Es256(p256::ecdsa::VerifyingKey),
    Es384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl EnrolledKey {
    fn from_details(details: &serde_json::Value) -> Result<(String, Self), String> {
        let field = |name: &str| {
            details
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("enrollment without {name}"))
        };
        let id = field("credential_id")?.to_owned();
        let der = B64
            .decode(field("public_key")?)
            .map_err(|e| format!("public_key: {e}"))?;
        let key = match field("algorithm")? {
            "es256" => {
                use p256::pkcs8::DecodePublicKey as _;
                Self::Es256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(&der)
                        .map_err(|e| format!("public_key: {e}"))?,
                )
            }
            "es384" => {
                use p384::pkcs8::DecodePublicKey as _;
                Self::Es384(
                    p384::ecdsa::VerifyingKey::from_public_key_der(&der)
                        .map_err(|e| format!("public_key: {e}"))?,
                )
            }
            "ed25519" => {
                use ed25519_dalek::pkcs8::DecodePublicKey as _;
                Self::Ed25519(
                    ed25519_dalek::VerifyingKey::from_public_key_der(&der)
                        .map_err(|e| format!("public_key: {e}"))?,
                )
            }
            other => return Err(format!("unsupported algorithm {other:?}")),
        };
        Ok((id, key))
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        match self {
            Self::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|e| format!("signature encoding: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|_| "signature was not made by the enrolled key".to_owned())
            }
            Self::Es384(key) => {
                use p384::ecdsa::signature::Verifier as _;
                let sig = p384::ecdsa::Signature::from_der(signature)
                    .map_err(|e| format!("signature encoding: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|_| "signature was not made by the enrolled key".to_owned())
            }
            Self::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|e| format!("signature encoding: {e}"))?;
                key.verify_strict(message, &sig)
                    .map_err(|_| "signature was not made by the enrolled key".to_owned())
            }
        }
    }
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, String> {
    B64.decode(value).map_err(|e| format!("{field}: {e}"))
}

fn verify_evidence(keys: &HashMap<String, EnrolledKey>, evidence: &Evidence) -> Result<(), String> {
    match evidence {
        Evidence::Webauthn {
            credential_id,
            challenge,
            authenticator_data,
            client_data_json,
            signature,
        } => {
            let key = keys.get(credential_id).ok_or_else(|| {
                format!("credential {credential_id} is not enrolled earlier in this log")
            })?;
            let challenge = b64("challenge", challenge)?;
            let auth_data = b64("authenticator_data", authenticator_data)?;
            let client_data = b64("client_data_json", client_data_json)?;
            let signature = b64("signature", signature)?;
            if auth_data.len() < 37 {
                return Err("authenticatorData is truncated".to_owned());
            }
            if auth_data[32] & 0x01 == 0 {
                return Err("assertion without user presence".to_owned());
            }
            let parsed: serde_json::Value =
                serde_json::from_slice(&client_data).map_err(|e| format!("clientDataJSON: {e}"))?;
            if parsed.get("type").and_then(|v| v.as_str()) != Some("webauthn.get") {
                return Err("clientDataJSON is not an assertion (type != webauthn.get)".to_owned());
            }
            if parsed.get("challenge").and_then(|v| v.as_str())
                != Some(B64URL.encode(&challenge).as_str())
            {
                return Err("clientDataJSON was signed for another challenge".to_owned());
            }
            let mut message = auth_data;
            message.extend_from_slice(&Sha256::digest(&client_data));
            key.verify(&message, &signature)
        }
        Evidence::Piv {
            key_id,
            challenge,
            signature,
        } => {
            let key = keys
                .get(key_id)
                .ok_or_else(|| format!("PIV key {key_id} is not enrolled earlier in this log"))?;
            key.verify(&b64("challenge", challenge)?, &b64("signature", signature)?)
        }
    }
}

/// What the log said so far that later evidence is checked against.
#[derive(Default)]
struct Bindings {
    /// Credential id → the operator it was enrolled for.
    owners: HashMap<String, String>,
    /// `request/ID` or `change/ID` → the digest its creation record names.
    digests: HashMap<String, [u8; 32]>,
    /// Server nonces already used by evidence: each ceremony backs one record.
    nonces: std::collections::HashSet<String>,
}

fn detail<'a>(record: &'a AuditRecord, name: &str) -> Option<&'a str> {
    record.details.get(name).and_then(|v| v.as_str())
}

fn detail_hash(record: &AuditRecord, name: &str) -> Result<[u8; 32], String> {
    detail(record, name)
        .and_then(decode_hash)
        .ok_or_else(|| format!("details.{name} is missing or not a hex SHA-256"))
}

impl Bindings {
    /// Remembers what creation and enrollment records bind later evidence to.
    fn learn(&mut self, record: &AuditRecord) {
        match record.event.as_str() {
            ENROLLED_EVENT => {
                if let (Some(id), Some(operator)) = (
                    detail(record, "credential_id"),
                    detail(record, "operator")
                        .map(str::to_owned)
                        .or_else(|| record.subject.strip_prefix("operator/").map(str::to_owned)),
                ) {
                    self.owners.insert(id.to_owned(), operator);
                }
            }
            // Newer records keep the request's digest apart from the (draft) digest the
            // requester signed; older ones have only `digest`.
            "request.created" => {
                let digest = detail(record, "request_digest")
                    .or_else(|| detail(record, "digest"))
                    .and_then(decode_hash);
                if let Some(digest) = digest {
                    self.digests.insert(record.subject.clone(), digest);
                }
            }
            "change.proposed" => {
                if let Some(digest) = detail(record, "digest").and_then(decode_hash) {
                    self.digests.insert(record.subject.clone(), digest);
                }
            }
            _ => {}
        }
    }

    /// Checks that `evidence` belongs to `record`: the key is the one the record names and was
    /// enrolled for the record's operator, and the signed challenge is the one derived from
    /// what this record is about (its target's digest and the decision, or its own digest)
    /// and its nonce. Returns an error naming the mismatch.
    fn check(&mut self, record: &AuditRecord, evidence: &Evidence) -> Result<(), String> {
        let (key_id, challenge) = match evidence {
            Evidence::Webauthn {
                credential_id,
                challenge,
                ..
            } => (credential_id, challenge),
            Evidence::Piv {
                key_id, challenge, ..
            } => (key_id, challenge),
        };
        if detail(record, "credential_id") != Some(key_id.as_str()) {
            return Err(format!(
                "the evidence's key {key_id} is not the key this record names"
            ));
        }
        let super::Actor::Operator { name } = &record.actor else {
            return Err("evidence on a record whose actor is not an operator".to_owned());
        };
        if let Some(owner) = self.owners.get(key_id)
            && owner != name
        {
            return Err(format!(
                "key {key_id} was enrolled for {owner}, not for the record's operator {name}"
            ));
        }
        let signed = detail_hash(record, "digest")?;
        let decision = match record.event.as_str() {
            "request.approved" | "change.approved" => {
                Some(crate::domain::policy::Decision::Approve)
            }
            "request.denied" | "change.denied" => Some(crate::domain::policy::Decision::Deny),
            _ => None,
        };
        if let Some(decision) = decision {
            let target = self.digests.get(&record.subject).ok_or_else(|| {
                format!("a vote on {} before its creation record", record.subject)
            })?;
            let expected = crate::domain::request::vote_digest(&record.subject, decision, target);
            if signed != expected {
                return Err(format!(
                    "the signed digest is not the vote digest of {} ({})",
                    record.subject,
                    decision.as_str()
                ));
            }
        } else if record.event == "grant.revoke_requested" {
            let grant = record.subject.strip_prefix("grant/").unwrap_or_default();
            let reason = detail(record, "reason").unwrap_or_default();
            if signed != crate::domain::grant::revoke_digest(grant, reason) {
                return Err(format!(
                    "the signed digest is not the revocation digest of {}",
                    record.subject
                ));
            }
        } else if record.event == "request.created" {
            if detail(record, "request_digest").is_none() {
                // Older records overwrote the signed (draft) digest: nothing to derive from.
                return Ok(());
            }
            if signed != draft_digest(record, name)? {
                return Err(
                    "the signed digest is not the digest of the draft this record describes"
                        .to_owned(),
                );
            }
        } else if let Some(hex_digest) = record.subject.strip_prefix("digest/")
            && decode_hash(hex_digest) != Some(signed)
        {
            return Err("the signed digest is not the one the record's subject names".to_owned());
        }
        let nonce = detail_hash(record, "nonce")?;
        let expected = crate::verify::fido2::bound_challenge(&signed, &nonce);
        if b64("challenge", challenge)? != expected {
            return Err(
                "the evidence's challenge is not derived from this record's digest and nonce"
                    .to_owned(),
            );
        }
        // One ceremony, one record: the same evidence cannot back a second one.
        if !self.nonces.insert(hex::encode(nonce)) {
            return Err("the evidence's nonce already backs an earlier record".to_owned());
        }
        Ok(())
    }
}

/// The digest an operator's key signed to submit the draft a `request.created` record
/// describes (see [`crate::domain::request::Draft::digest`]).
fn draft_digest(record: &AuditRecord, requester: &str) -> Result<[u8; 32], String> {
    let text = |name: &str| {
        detail(record, name)
            .map(str::to_owned)
            .ok_or_else(|| format!("details.{name} is missing"))
    };
    let ttl_secs = match record.details.get("draft_ttl_secs") {
        Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| "details.draft_ttl_secs is not a number".to_owned())?,
        ),
        None => return Err("details.draft_ttl_secs is missing".to_owned()),
    };
    let draft = crate::domain::request::Draft {
        scope: text("scope")?,
        reason: text("reason")?,
        ttl_secs,
        ticket: text("ticket")?,
        ssh_public_key: text("ssh_public_key")?,
        delivery_public_key: hex::decode(text("delivery_public_key")?)
            .map_err(|e| format!("details.delivery_public_key: {e}"))?,
    };
    Ok(draft.digest(requester))
}

/// Verifies an export line by line. Fails at the first record that is malformed, out of
/// sequence, unlinked, altered, badly signed or backed by evidence the enrolled key did not sign.
pub fn verify(
    reader: impl BufRead,
    audit_key: &ed25519_dalek::VerifyingKey,
) -> Result<Report, Tampered> {
    let mut expected_seq = 1u64;
    let mut prev_hash = ZERO_HASH.to_owned();
    let mut keys: HashMap<String, EnrolledKey> = HashMap::new();
    let mut bindings = Bindings::default();
    let mut last_checkpoint = None;
    let mut evidence_verified = 0;

    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let bad = |reason: String| Tampered {
            seq: expected_seq,
            line: line_no,
            reason,
        };
        let record = parse_line(line).map_err(&bad)?;
        check_link(&record, expected_seq, &prev_hash).map_err(&bad)?;
        check_checkpoint(&record, &prev_hash, audit_key).map_err(&bad)?;
        if record.checkpoint.is_some() {
            last_checkpoint = Some(record.seq);
        }
        track_keys(&mut keys, &record).map_err(&bad)?;
        bindings.learn(&record);
        if let Some(evidence) = &record.evidence {
            check_evidence(&keys, &mut bindings, &record, evidence).map_err(&bad)?;
            evidence_verified += 1;
        }
        prev_hash = record.hash;
        expected_seq += 1;
    }

    let records = expected_seq - 1;
    if records == 0 {
        return Err(Tampered {
            seq: 1,
            line: 0,
            reason: "the export holds no records".to_owned(),
        });
    }
    let covered = last_checkpoint.unwrap_or(0);
    Ok(Report {
        records,
        last_checkpoint,
        unverified_tail: (covered < records).then_some((covered + 1, records)),
        evidence_verified,
    })
}

/// One line of the export as a record: readable, not blank, valid JSON of an audit record.
fn parse_line(line: std::io::Result<String>) -> Result<AuditRecord, String> {
    let line = line.map_err(|e| format!("unreadable: {e}"))?;
    if line.trim().is_empty() {
        return Err("blank line inside the log".to_owned());
    }
    serde_json::from_str(&line).map_err(|e| format!("not a valid audit record: {e}"))
}

/// Checks that `record` is the one expected at this position: the next sequence number,
/// linked to the previous record's hash, and with content matching its own hash.
fn check_link(record: &AuditRecord, expected_seq: u64, prev_hash: &str) -> Result<(), String> {
    if record.seq > expected_seq {
        return Err(format!(
            "gap: records {expected_seq}..{} are missing",
            record.seq - 1
        ));
    }
    if record.seq < expected_seq {
        return Err(format!(
            "out of order: found record {} where {expected_seq} belongs",
            record.seq
        ));
    }
    if record.prev_hash != prev_hash {
        return Err("prev_hash does not match the previous record's hash".to_owned());
    }
    if record.compute_hash() != record.hash {
        return Err("content does not match its hash (altered)".to_owned());
    }
    Ok(())
}

/// Checks a checkpoint: it covers the record before it and its signature verifies under the
/// audit key. A checkpoint event without a signature is refused; other records pass.
fn check_checkpoint(
    record: &AuditRecord,
    prev_hash: &str,
    audit_key: &ed25519_dalek::VerifyingKey,
) -> Result<(), String> {
    let Some(cp) = &record.checkpoint else {
        if record.event == CHECKPOINT_EVENT {
            return Err("checkpoint record without a signature".to_owned());
        }
        return Ok(());
    };
    if record.event != CHECKPOINT_EVENT
        || cp.covers_seq + 1 != record.seq
        || cp.head_hash != prev_hash
    {
        return Err("checkpoint does not cover the record before it".to_owned());
    }
    let head =
        decode_hash(&cp.head_hash).ok_or_else(|| "checkpoint head hash is not hex".to_owned())?;
    let signature = B64
        .decode(&cp.signature)
        .ok()
        .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
        .ok_or_else(|| "checkpoint signature is malformed".to_owned())?;
    audit_key
        .verify_strict(
            &checkpoint_message(cp.covers_seq, &head, record.time),
            &signature,
        )
        .map_err(|_| "checkpoint signature does not verify under the audit key".to_owned())
}

/// Adds the key an enrollment record carries to `keys`, or drops the one a removal names.
fn track_keys(keys: &mut HashMap<String, EnrolledKey>, record: &AuditRecord) -> Result<(), String> {
    match record.event.as_str() {
        ENROLLED_EVENT => {
            let (id, key) = EnrolledKey::from_details(&record.details)?;
            keys.insert(id, key);
        }
        REMOVED_EVENT => {
            if let Some(id) = record.details.get("credential_id").and_then(|v| v.as_str()) {
                keys.remove(id);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks that an enrolled key signed `evidence`, then that the evidence belongs to `record`.
fn check_evidence(
    keys: &HashMap<String, EnrolledKey>,
    bindings: &mut Bindings,
    record: &AuditRecord,
    evidence: &Evidence,
) -> Result<(), String> {
    verify_evidence(keys, evidence)
        .map_err(|why| format!("forged or invalid approval evidence: {why}"))?;
    bindings
        .check(record, evidence)
        .map_err(|why| format!("evidence not bound to this record: {why}"))
}
