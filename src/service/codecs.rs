//! What every keyspace stores, checked: [`reencode`] decodes a stored value with this build's
//! record type and encodes it again. The golden-records test runs it over a fixture store
//! written by an earlier build, so a dependency upgrade that changes a stored format (serde
//! attributes, webauthn-rs's serialised key and ceremony state) fails CI, not a bastion.

use crate::store::{Keyspace, Record, SCHEMA_VERSION_KEY, StoreError, decode, encode};

fn corrupt(ks: Keyspace, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        keyspace: ks.name(),
        detail: detail.into(),
    }
}

fn record<R: Record>(value: &[u8]) -> Result<Vec<u8>, StoreError> {
    encode(&decode::<R>(value)?)
}

fn utf8(ks: Keyspace, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    std::str::from_utf8(value).map_err(|e| corrupt(ks, e.to_string()))?;
    Ok(value.to_vec())
}

fn fixed(ks: Keyspace, value: &[u8], len: usize) -> Result<Vec<u8>, StoreError> {
    if value.len() != len {
        return Err(corrupt(ks, format!("{} bytes, not {len}", value.len())));
    }
    Ok(value.to_vec())
}

/// Decodes the value stored at `key` in `ks` as this build reads it and encodes it again.
/// JSON records come back as this build would write them (compare them as JSON values);
/// binary values come back byte for byte.
pub fn reencode(ks: Keyspace, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    use crate::audit;
    use crate::domain::drill;
    use crate::domain::{change, grant, operator, request, scope, trust, workload};
    match ks {
        Keyspace::Meta if key == SCHEMA_VERSION_KEY => fixed(ks, value, 4),
        // A notification sink's cursor, a leader's lease end (big-endian u64/i64).
        Keyspace::Meta if key.starts_with(b"notify_cursor/") || key == b"leader_until" => {
            fixed(ks, value, 8)
        }
        // Who leads the singleton work on a shared store (JSON, see `service::leadership`).
        Keyspace::Meta if key == b"leader" => utf8(ks, value),
        Keyspace::Meta => record::<trust::TrustStoreMeta>(value),
        Keyspace::Workloads => record::<workload::Workload>(value),
        Keyspace::WorkloadPins | Keyspace::GrantTokens | Keyspace::GrantSerials => utf8(ks, value),
        Keyspace::Drills if key.starts_with(b"request/") => utf8(ks, value),
        Keyspace::Drills => record::<drill::DrillHistory>(value),
        Keyspace::Audit => record::<audit::AuditRecord>(value),
        Keyspace::AuditCheckpoints | Keyspace::OperatorKeys | Keyspace::RevocationsPending => {
            fixed(ks, value, 0)
        }
        Keyspace::Operators => record::<operator::Operator>(value),
        Keyspace::Authenticators => record::<operator::Authenticator>(value),
        Keyspace::Ceremonies => record::<operator::Ceremony>(value),
        Keyspace::Scopes => record::<scope::Scope>(value),
        Keyspace::Requests => record::<request::Request>(value),
        Keyspace::Changes => record::<change::Change>(value),
        Keyspace::Grants => record::<grant::Grant>(value),
        Keyspace::GrantExpiry if value.is_empty() => Ok(Vec::new()),
        Keyspace::GrantExpiry => grant::ExpiryEntry::decode(value)
            .map(|entry| entry.encode())
            .ok_or_else(|| corrupt(ks, "unreadable expiry entry")),
        Keyspace::KrlSerials => fixed(ks, value, 8),
    }
}
