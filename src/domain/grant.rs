//! Grants (issued credentials) as records: their state and revocation, the expiry queue's
//! keys and entries, token hashes, and the digest an early revocation signs. The in-memory
//! introspection index built from them is `service::token_index`.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::clock::Timestamp;
use crate::domain::request::Requester;

/// An issued SSH certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshGrant {
    /// Certificate serial (unique, non-zero).
    pub serial: u64,
    /// Principals in the certificate.
    pub principals: Vec<String>,
    /// The certificate, OpenSSH one-line form (public: no secret in it).
    pub certificate: String,
}

/// Where a grant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Usable until its expiry.
    Active,
    /// Revocation started; some sinks have not confirmed yet.
    Revoking,
    /// Every sink confirmed.
    Revoked,
    /// Past the scope's deadline with sinks still unconfirmed: retried, alarmed.
    RevocationUnconfirmed,
}

impl GrantState {
    /// `active`, `revoking`, `revoked`, `revocation_unconfirmed`.
    pub fn name(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Revoking => "revoking",
            GrantState::Revoked => "revoked",
            GrantState::RevocationUnconfirmed => "revocation_unconfirmed",
        }
    }
}

/// Where a revocation must be confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sink", rename_all = "snake_case")]
pub enum Sink {
    /// The introspection index (confirmed in the revoking transaction).
    Internal,
    /// The SSH KRL file, re-read after writing.
    Krl,
    /// A consumer workload's acknowledgement on its own mTLS identity.
    Consumer { workload: String },
    /// The scope's revocation hook, by its exit status.
    Hook,
}

impl Sink {
    /// `internal`, `krl`, `consumer/NAME`, `hook`.
    pub fn label(&self) -> String {
        match self {
            Sink::Internal => "internal".to_owned(),
            Sink::Krl => "krl".to_owned(),
            Sink::Consumer { workload } => format!("consumer/{workload}"),
            Sink::Hook => "hook".to_owned(),
        }
    }
}

/// One sink's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Which sink.
    pub sink: Sink,
    /// When confirmed (None: not yet).
    pub confirmed_at: Option<Timestamp>,
    /// How it was confirmed (e.g. "serial in KRL", "exit 0", "certificate expired").
    pub detail: String,
    /// Attempts so far (hooks, KRL writes).
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When to try again.
    pub next_attempt_at: Timestamp,
}

/// A revocation in progress or done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Why: `expired`, `revoked by operator/NAME: …`, `relinquished by …`.
    pub reason: String,
    /// When it started.
    pub started_at: Timestamp,
    /// After this, unconfirmed sinks make it `revocation_unconfirmed`.
    pub deadline: Timestamp,
    /// When every sink had confirmed.
    pub completed_at: Option<Timestamp>,
    /// Every sink.
    pub sinks: Vec<SinkStatus>,
}

impl Revocation {
    /// Whether every sink confirmed.
    pub fn complete(&self) -> bool {
        self.sinks.iter().all(|s| s.confirmed_at.is_some())
    }
}

/// An issued credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id (also the SSH certificate's key id).
    pub id: String,
    /// The request it answers.
    pub request_id: String,
    pub scope: String,
    /// Who holds it.
    pub requester: Requester,
    /// When minted.
    pub issued_at: Timestamp,
    /// Hard expiry.
    pub expires_at: Timestamp,
    /// SHA-256 of the bearer token, hex, if one was minted.
    pub bearer_sha256: Option<String>,
    /// The SSH certificate, if one was minted.
    pub ssh: Option<SshGrant>,
    /// Stored state (see [`Grant::active_at`]).
    pub state: GrantState,
    /// The revocation, once started.
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// The bearer token sealed to the requester's delivery key, kept for collection while
    /// the grant is active and dropped when its revocation starts. Never the plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_bearer: Option<crate::credential::delivery::SealedToken>,
}

impl Grant {
    /// Whether the grant is usable at `now`: active and not past its expiry.
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.state == GrantState::Active && now < self.expires_at
    }
}

/// Key of a grant in the `grant_expiry` keyspace: expiry (ms, big-endian, order-preserving)
/// then the id, so a scan from the start yields the grants that expire first.
pub fn expiry_key(expires_at: Timestamp, id: &str) -> Vec<u8> {
    // Flip the sign bit so negative times sort before positive ones.
    let ordered = (expires_at.unix_millis() as u64) ^ (1 << 63);
    let mut key = ordered.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The expiry and id in an expiry key.
pub fn parse_expiry_key(key: &[u8]) -> Option<(Timestamp, String)> {
    let (head, id) = key.split_at_checked(8)?;
    let ordered = u64::from_be_bytes(head.try_into().ok()?) ^ (1 << 63);
    Some((
        Timestamp::from_unix_millis(ordered as i64),
        String::from_utf8(id.to_vec()).ok()?,
    ))
}

/// The value of a grant's entry in the `grant_expiry` keyspace: what the token index and the
/// start-up revocation need, so neither reads the grant itself. Entries written before this
/// existed are empty; [`ExpiryEntry::decode`] answers `None` for them and readers fall back to
/// the grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryEntry {
    /// SHA-256 of the bearer token, if one was minted.
    pub token: Option<[u8; 32]>,
    /// The grant's scope.
    pub scope: String,
}

/// Format byte of [`ExpiryEntry`]'s encoding.
const EXPIRY_ENTRY_V1: u8 = 1;

impl ExpiryEntry {
    /// The entry of `grant`.
    pub fn of(grant: &Grant) -> Self {
        Self {
            token: grant.bearer_sha256.as_deref().and_then(decode_hash),
            scope: grant.scope.clone(),
        }
    }

    /// Format byte, token flag, the token hash if present, then the scope (UTF-8).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 32 + self.scope.len());
        out.push(EXPIRY_ENTRY_V1);
        match &self.token {
            Some(hash) => {
                out.push(1);
                out.extend_from_slice(hash);
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.scope.as_bytes());
        out
    }

    /// `None` for an empty (older) or unreadable value: read the grant instead.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&[format, flag], rest) = bytes.split_first_chunk::<2>()?;
        if format != EXPIRY_ENTRY_V1 {
            return None;
        }
        let (token, scope) = match flag {
            0 => (None, rest),
            1 => {
                let (hash, scope) = rest.split_first_chunk::<32>()?;
                (Some(*hash), scope)
            }
            _ => return None,
        };
        Some(Self {
            token,
            scope: String::from_utf8(scope.to_vec()).ok()?,
        })
    }
}

/// SHA-256 of a bearer token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What introspection says about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    /// Whether it may be used now.
    pub active: bool,
    /// Grant id (empty for unknown tokens).
    pub grant_id: String,
    /// Scope (empty for unknown tokens).
    pub scope: String,
    /// Expiry (epoch for unknown tokens).
    pub expires_at: Timestamp,
}

/// The 32 bytes of a hex-encoded SHA-256 (`None` if it is not one).
pub fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

const REVOKE_TAG: &[u8] = b"latchkey.revoke.v1\n";

/// What an operator's key signs to revoke a grant early.
pub fn revoke_digest(grant_id: &str, reason: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(REVOKE_TAG);
    h.update(grant_id.as_bytes());
    h.update(b"\n");
    h.update(reason.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_digests_bind_grant_and_reason() {
        assert_ne!(revoke_digest("g1", "leak"), revoke_digest("g2", "leak"));
        assert_ne!(revoke_digest("g1", "leak"), revoke_digest("g1", "done"));
    }
}
