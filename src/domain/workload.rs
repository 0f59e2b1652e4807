//! Workloads: non-human callers (vault plugins, automation, agents) identified by the pinned
//! SHA-256 of their TLS client certificate's SubjectPublicKeyInfo.

use serde::{Deserialize, Serialize};

use crate::base::caller::WorkloadId;
use crate::base::clock::Timestamp;

/// A workload admitted to the trust store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Unique name.
    pub name: String,
    /// Who answers for it (a person or team).
    pub owner: String,
    /// SHA-256 of its TLS client certificate's SubjectPublicKeyInfo, lowercase hex.
    pub spki_sha256: String,
    /// When it was admitted.
    pub admitted_at: Timestamp,
    /// Scopes it may request (each scope must also name it as a requester).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether it may introspect bearer tokens.
    #[serde(default)]
    pub introspect: bool,
}

impl Workload {
    /// Its identity as a caller.
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            name: self.name.clone(),
            spki_sha256: self.spki_sha256.clone(),
        }
    }
}
