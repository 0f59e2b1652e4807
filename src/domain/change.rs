//! Trust-store changes: proposed mutations of operators, keys, scopes, workloads and the
//! trust-store policy, approved by quorum against the built-in `trust-store` scope exactly like
//! a request. The operators a change is about never vote on it.

use serde::{Deserialize, Serialize};

use crate::base::caller::Actor;
use crate::base::clock::Timestamp;
use crate::domain::operator::Authenticator;
use crate::domain::policy::{ApprovalPolicy, Vote};
use crate::domain::scope::Scope;
use crate::domain::trust::TrustStorePolicy;
use crate::domain::workload::Workload;

/// Domain tag of change digests.
const CHANGE_TAG: &[u8] = b"latchkey.change.v1\n";

/// A proposed mutation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ChangeKind {
    /// Add a key to an operator; creates the operator with `new_operator_roles` if new.
    AddAuthenticator {
        operator: String,
        /// Roles, when the operator is new.
        new_operator_roles: Option<Vec<String>>,
        /// The key, from a completed registration ceremony.
        authenticator: Box<Authenticator>,
    },
    /// Remove one key for good.
    RemoveAuthenticator {
        operator: String,
        credential_id: String,
    },
    /// Make a suspended key count again.
    ReinstateAuthenticator {
        operator: String,
        credential_id: String,
    },
    /// Remove an operator and all their keys.
    RemoveOperator { operator: String },
    /// Replace an operator's roles.
    SetOperatorRoles {
        operator: String,
        /// New roles.
        roles: Vec<String>,
    },
    /// Create or replace a scope.
    PutScope {
        /// The new definition.
        scope: Box<Scope>,
    },
    /// Remove a scope.
    RemoveScope { name: String },
    /// Admit (or re-admit with new settings) a workload.
    PutWorkload {
        /// The workload.
        workload: Workload,
    },
    /// Remove a workload and its pin.
    RemoveWorkload { name: String },
    /// Change who approves trust-store changes.
    SetTrustPolicy {
        /// New policy.
        policy: TrustStorePolicy,
    },
}

impl ChangeKind {
    /// Short name: `add_authenticator`, …
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::AddAuthenticator { .. } => "add_authenticator",
            ChangeKind::RemoveAuthenticator { .. } => "remove_authenticator",
            ChangeKind::ReinstateAuthenticator { .. } => "reinstate_authenticator",
            ChangeKind::RemoveOperator { .. } => "remove_operator",
            ChangeKind::SetOperatorRoles { .. } => "set_operator_roles",
            ChangeKind::PutScope { .. } => "put_scope",
            ChangeKind::RemoveScope { .. } => "remove_scope",
            ChangeKind::PutWorkload { .. } => "put_workload",
            ChangeKind::RemoveWorkload { .. } => "remove_workload",
            ChangeKind::SetTrustPolicy { .. } => "set_trust_policy",
        }
    }

    /// Operators this change is about: they cannot vote on it.
    pub fn subjects(&self) -> Vec<String> {
        match self {
            ChangeKind::AddAuthenticator { operator, .. }
            | ChangeKind::RemoveAuthenticator { operator, .. }
            | ChangeKind::ReinstateAuthenticator { operator, .. }
            | ChangeKind::RemoveOperator { operator }
            | ChangeKind::SetOperatorRoles { operator, .. } => vec![operator.clone()],
            _ => Vec::new(),
        }
    }

    /// The audit subject: `operator/NAME`, `scope/NAME`, …
    pub fn subject(&self) -> String {
        match self {
            ChangeKind::AddAuthenticator { operator, .. }
            | ChangeKind::RemoveAuthenticator { operator, .. }
            | ChangeKind::ReinstateAuthenticator { operator, .. }
            | ChangeKind::RemoveOperator { operator }
            | ChangeKind::SetOperatorRoles { operator, .. } => format!("operator/{operator}"),
            ChangeKind::PutScope { scope } => format!("scope/{}", scope.name),
            ChangeKind::RemoveScope { name } => format!("scope/{name}"),
            ChangeKind::PutWorkload { workload } => format!("workload/{}", workload.name),
            ChangeKind::RemoveWorkload { name } => format!("workload/{name}"),
            ChangeKind::SetTrustPolicy { .. } => "trust-store/policy".to_owned(),
        }
    }

    /// What a person approving it reads (and what the digest covers), without key internals.
    pub fn summary(&self) -> serde_json::Value {
        match self {
            ChangeKind::AddAuthenticator {
                operator,
                new_operator_roles,
                authenticator,
            } => serde_json::json!({
                "change": self.name(),
                "operator": operator,
                "new_operator_roles": new_operator_roles,
                "credential_id": authenticator.credential_id,
                "algorithm": authenticator.algorithm,
                "public_key": authenticator.public_key,
                "aaguid": authenticator.aaguid.map(|u| u.to_string()),
                "attested": authenticator.attested,
            }),
            other => {
                let mut value = serde_json::to_value(other).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.insert("change".into(), other.name().into());
                }
                value
            }
        }
    }
}

/// Where a change is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChangeState {
    /// Waiting for votes.
    Pending,
    /// Approved and applied.
    Applied {
        /// When.
        at: Timestamp,
    },
    /// Ended by a denial.
    Denied {
        /// When.
        at: Timestamp,
    },
    /// Quorum not met in time.
    Expired {
        /// When.
        at: Timestamp,
    },
}

impl ChangeState {
    /// `pending`, `applied`, …
    pub fn name(&self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Applied { .. } => "applied",
            ChangeState::Denied { .. } => "denied",
            ChangeState::Expired { .. } => "expired",
        }
    }
}

/// A proposed change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    /// What.
    pub kind: ChangeKind,
    /// Who routed it (a local user, or the daemon at genesis).
    pub proposer: Actor,
    /// Free text: why, and for a new key, who checked whose identity how.
    pub note: String,
    /// When proposed.
    pub created_at: Timestamp,
    pub pending_until: Timestamp,
    /// The text the digest covers (summary, note, proposer, times).
    pub canonical_text: String,
    /// Trust-store policy at proposal time.
    pub policy: ApprovalPolicy,
    /// Votes so far.
    pub votes: Vec<Vote>,
    /// Stored state (see [`Change::state_at`]).
    pub state: ChangeState,
}

/// The canonical text of a change.
pub fn canonical_text(
    id: &str,
    kind: &ChangeKind,
    proposer: &Actor,
    note: &str,
    created_at: Timestamp,
    pending_until: Timestamp,
) -> String {
    serde_json::json!({
        "id": id,
        "kind": kind.summary(),
        "proposer": proposer,
        "note": note,
        "created_at": created_at,
        "pending_until": pending_until,
    })
    .to_string()
}

/// SHA-256 over the domain tag and the canonical text.
pub fn digest_of(canonical_text: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(CHANGE_TAG);
    h.update(canonical_text.as_bytes());
    h.finalize().into()
}

impl Change {
    /// The digest every vote on this change is bound to.
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.canonical_text)
    }

    /// The state at `now` (a pending change past its deadline is expired).
    pub fn state_at(&self, now: Timestamp) -> ChangeState {
        match self.state {
            ChangeState::Pending if now >= self.pending_until => ChangeState::Expired {
                at: self.pending_until,
            },
            ref other => other.clone(),
        }
    }
}
