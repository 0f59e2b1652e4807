//! Trust-store metadata: identity of the store, the trust-store approval policy, and the
//! genesis window.

use serde::{Deserialize, Serialize};

use crate::base::clock::Timestamp;

/// Key of [`TrustStoreMeta`] in the `meta` keyspace.
pub const META_KEY: &[u8] = b"trust_store";

/// Who must approve changes to the trust store itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStorePolicy {
    /// Number of distinct operators whose approval is needed.
    pub quorum: u32,
    /// Role those operators must hold.
    pub approver_role: String,
}

/// Whether bootstrap enrollments without quorum are still accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Genesis {
    /// The first operators may be enrolled over the local socket without approval.
    Open,
    /// Closed for good at the given time: every change needs quorum.
    Closed {
        /// When the window closed.
        at: Timestamp,
    },
}

/// The trust store's own metadata record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStoreMeta {
    /// Random identifier of this store, to tell stores (and their backups) apart.
    pub store_id: String,
    /// When `init` created it.
    pub created_at: Timestamp,
    /// Who approves trust-store changes.
    pub policy: TrustStorePolicy,
    /// The genesis window.
    pub genesis: Genesis,
}
