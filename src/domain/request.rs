//! Break-glass requests: who asks for which scope, why and for how long, and the digest that
//! every signature about the request is bound to.
//!
//! The digest covers a canonical JSON text that is stored with the request and shown to
//! approvers as is, so what an approver reads is exactly what their key signs.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::clock::Timestamp;
use crate::base::constants::{MAX_REASON_LEN, MAX_TICKET_LEN, MIN_REASON_LEN};
use crate::base::error::{Coded, ErrorKind};
use crate::domain::policy::{ApprovalPolicy, Decision, Vote};

/// Domain tag of request digests.
const REQUEST_TAG: &[u8] = b"latchkey.request.v1\n";
/// Domain tag of vote digests.
const VOTE_TAG: &[u8] = b"latchkey.vote.v1\n";

/// A request that cannot be made as asked. Nothing is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DraftError {
    /// The reason is missing, too short or too long. Say what is broken and why you need in.
    #[error("a reason of {MIN_REASON_LEN} to {MAX_REASON_LEN} characters is required")]
    Reason,
    /// The ticket reference is too long or has control characters.
    #[error("the ticket reference must be at most {MAX_TICKET_LEN} printable characters")]
    Ticket,
    /// The TTL is above the scope's maximum. Ask for less.
    #[error("TTL {asked} s is above scope {scope}'s maximum of {max} s")]
    TtlTooLong {
        scope: String,
        /// Asked for.
        asked: u64,
        /// Allowed.
        max: u64,
    },
    /// A TTL of zero. Leave it out for the scope's default.
    #[error("TTL must be positive")]
    TtlZero,
    /// The scope mints SSH certificates and no public key was given, or a key was given to a
    /// scope that mints none.
    #[error("{0}")]
    SshKey(String),
}

impl Coded for DraftError {
    fn code(&self) -> &'static str {
        match self {
            DraftError::Reason => "request.invalid_reason",
            DraftError::Ticket => "request.invalid_ticket",
            DraftError::TtlTooLong { .. } => "request.ttl_too_long",
            DraftError::TtlZero => "request.invalid_ttl",
            DraftError::SshKey(_) => "request.ssh_key",
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requester {
    /// An operator, with a hardware assertion, from a local user or from their own device.
    Operator {
        /// Operator name.
        name: String,
        /// Local user who submitted it: only they may watch it and collect the credential.
        /// Unused when `remote` is set.
        uid: u32,
        /// Set when the operator asked over the remote port (the address, for the record):
        /// then only a read session of this operator may watch it and collect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
    /// A workload over mutual TLS.
    Workload {
        /// Workload name.
        name: String,
    },
}

impl Requester {
    /// `operator/NAME` or `workload/NAME`.
    pub fn label(&self) -> String {
        match self {
            Requester::Operator { name, .. } => format!("operator/{name}"),
            Requester::Workload { name } => format!("workload/{name}"),
        }
    }

    /// Whether `caller` is who asked: the same workload; for an operator's request, the same
    /// local user, or (asked remotely) a read session of the same operator.
    pub fn is(&self, caller: &crate::base::caller::Caller) -> bool {
        use crate::base::caller::Caller;
        match (self, caller) {
            (Requester::Workload { name }, Caller::Workload(w)) => *name == w.name,
            (
                Requester::Operator {
                    uid, remote: None, ..
                },
                Caller::Local(peer),
            ) => *uid == peer.uid,
            (
                Requester::Operator {
                    name,
                    remote: Some(_),
                    ..
                },
                Caller::Remote(peer),
            ) => peer.session_operator.as_deref() == Some(name.as_str()),
            _ => false,
        }
    }

    /// The operator's name, if an operator asked.
    pub fn operator(&self) -> Option<&str> {
        match self {
            Requester::Operator { name, .. } => Some(name),
            Requester::Workload { .. } => None,
        }
    }
}

/// What the requester asks for (before the daemon assigns id and times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Scope name.
    pub scope: String,
    /// Why.
    pub reason: String,
    /// Seconds; `None` for the scope's default.
    pub ttl_secs: Option<u64>,
    /// Ticket reference.
    pub ticket: String,
    /// OpenSSH public key to certify, for SSH scopes.
    pub ssh_public_key: String,
    /// X25519 public key the bearer token is sealed to ([`crate::credential::delivery`]); empty if none.
    pub delivery_public_key: Vec<u8>,
}

impl Draft {
    /// Checks the free-text fields.
    pub fn check_text(&self) -> Result<(), DraftError> {
        let reason = self.reason.trim();
        if reason.chars().count() < MIN_REASON_LEN || self.reason.len() > MAX_REASON_LEN {
            return Err(DraftError::Reason);
        }
        if self.ticket.len() > MAX_TICKET_LEN || self.ticket.chars().any(char::is_control) {
            return Err(DraftError::Ticket);
        }
        if self.reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(DraftError::Reason);
        }
        Ok(())
    }

    /// The TTL granted: the asked one if within the maximum, else the scope default.
    pub fn ttl(&self, scope: &str, default: u64, max: u64) -> Result<u64, DraftError> {
        match self.ttl_secs {
            None => Ok(default),
            Some(0) => Err(DraftError::TtlZero),
            Some(asked) if asked > max => Err(DraftError::TtlTooLong {
                scope: scope.to_owned(),
                asked,
                max,
            }),
            Some(asked) => Ok(asked),
        }
    }

    /// The digest an operator-requester's key signs to submit this draft.
    pub fn digest(&self, requester: &str) -> [u8; 32] {
        let mut fields = serde_json::json!({
            "requester": requester,
            "scope": self.scope,
            "reason": self.reason,
            "ttl_secs": self.ttl_secs,
            "ticket": self.ticket,
            "ssh_public_key": self.ssh_public_key,
        });
        // Only when present, so drafts without one keep the digest they always had.
        if !self.delivery_public_key.is_empty()
            && let Some(map) = fields.as_object_mut()
        {
            map.insert(
                "delivery_public_key".into(),
                hex::encode(&self.delivery_public_key).into(),
            );
        }
        let text = fields.to_string();
        let mut h = Sha256::new();
        h.update(b"latchkey.request-draft.v1\n");
        h.update(text.as_bytes());
        h.finalize().into()
    }
}

/// The fields a request's digest covers, in canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canonical {
    /// Request id.
    pub id: String,
    /// Scope name.
    pub scope: String,
    /// Scope owner at request time.
    pub owner: String,
    /// Runbook at request time.
    pub runbook: String,
    /// Runbook URL at request time.
    pub runbook_url: String,
    /// `operator/NAME` or `workload/NAME`.
    pub requester: String,
    /// Why.
    pub reason: String,
    /// Granted TTL, seconds.
    pub ttl_secs: u64,
    /// Ticket reference.
    pub ticket: String,
    /// Public key to certify.
    pub ssh_public_key: String,
    /// The X25519 key the bearer token is sealed to, hex (absent in requests without one, so
    /// their canonical text and digest are what they always were).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delivery_public_key: String,
    /// When made.
    pub created_at: Timestamp,
    pub pending_until: Timestamp,
    /// Approvals needed.
    pub quorum: u32,
    /// From this role.
    pub approver_role: String,
}

impl Canonical {
    /// The stored text the digest covers.
    pub fn text(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// SHA-256 over the domain tag and the canonical text.
pub fn digest_of(canonical_text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(REQUEST_TAG);
    h.update(canonical_text.as_bytes());
    h.finalize().into()
}

/// What a voter's key signs: the decision and the digest of what is decided on. A signature
/// to approve one request can be used for nothing else.
pub fn vote_digest(target: &str, decision: Decision, target_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(VOTE_TAG);
    h.update(target.as_bytes());
    h.update(b"\n");
    h.update(decision.as_str().as_bytes());
    h.update(b"\n");
    h.update(target_digest);
    h.finalize().into()
}

/// Where a request is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for votes.
    Pending,
    /// Approved and minted.
    Issued {
        /// The grant.
        grant_id: String,
        /// When.
        at: Timestamp,
    },
    /// Ended by denials.
    Denied {
        /// When.
        at: Timestamp,
    },
    /// Withdrawn by the requester.
    Cancelled {
        /// When.
        at: Timestamp,
    },
    /// Quorum not met in time.
    Expired {
        /// When.
        at: Timestamp,
    },
}

impl RequestState {
    /// `pending`, `issued`, …
    pub fn name(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Issued { .. } => "issued",
            RequestState::Denied { .. } => "denied",
            RequestState::Cancelled { .. } => "cancelled",
            RequestState::Expired { .. } => "expired",
        }
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What the digest covers, parsed.
    pub canonical: Canonical,
    /// Exactly the text the digest covers.
    pub canonical_text: String,
    /// Who asked.
    pub requester: Requester,
    /// Policy at request time.
    pub policy: ApprovalPolicy,
    /// Votes so far.
    pub votes: Vec<Vote>,
    /// Stored state (see [`Request::state_at`]).
    pub state: RequestState,
}

impl Request {
    pub fn id(&self) -> &str {
        &self.canonical.id
    }

    /// The digest every signature about this request is bound to.
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.canonical_text)
    }

    /// The state at `now`: a pending request past its deadline is expired at that instant,
    /// whether or not anything has written that down yet.
    pub fn state_at(&self, now: Timestamp) -> RequestState {
        match self.state {
            RequestState::Pending if now >= self.canonical.pending_until => RequestState::Expired {
                at: self.canonical.pending_until,
            },
            ref other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            scope: "db-root".into(),
            reason: "primary is down, failover stuck".into(),
            ttl_secs: Some(600),
            ticket: "INC-1".into(),
            ssh_public_key: String::new(),
            delivery_public_key: Vec::new(),
        }
    }

    #[test]
    fn a_ttl_above_the_maximum_is_refused_and_none_takes_the_default() {
        assert!(matches!(
            draft().ttl("db-root", 300, 500),
            Err(DraftError::TtlTooLong { .. })
        ));
        let no_ttl = Draft {
            ttl_secs: None,
            ..draft()
        };
        assert_eq!(no_ttl.ttl("db-root", 300, 500), Ok(300));
    }

    #[test]
    fn reasons_must_say_something_and_stay_bounded() {
        for reason in ["", "short", &"x".repeat(MAX_REASON_LEN + 1)] {
            let d = Draft {
                reason: reason.to_owned(),
                ..draft()
            };
            assert_eq!(d.check_text(), Err(DraftError::Reason), "{reason:?}");
        }
        assert_eq!(draft().check_text(), Ok(()));
    }

    #[test]
    fn vote_digests_differ_by_decision_and_target() {
        let d = [7u8; 32];
        let approve = vote_digest("request/a", Decision::Approve, &d);
        assert_ne!(approve, vote_digest("request/a", Decision::Deny, &d));
        assert_ne!(approve, vote_digest("request/b", Decision::Approve, &d));
        assert_ne!(
            approve,
            vote_digest("request/a", Decision::Approve, &[8u8; 32])
        );
    }

    #[test]
    fn draft_digests_bind_the_requester_and_every_field() {
        let base = draft().digest("alice");
        assert_ne!(base, draft().digest("bob"));
        let other = Draft {
            ttl_secs: Some(601),
            ..draft()
        };
        assert_ne!(base, other.digest("alice"));
        let keyed = Draft {
            delivery_public_key: vec![9; 32],
            ..draft()
        };
        assert_ne!(base, keyed.digest("alice"));
    }
}
