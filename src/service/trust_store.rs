//! The trust store as a whole: creating it (schema version, metadata, the first audit record)
//! and reading its metadata.

use crate::audit::{Actor, AuditError, AuditLog, Event};
use crate::base::clock::Timestamp;
use crate::base::constants::STORE_SCHEMA_VERSION;
use crate::base::error::{Coded, ErrorKind};
use crate::domain::trust::*;
use crate::store::{self, Keyspace, SCHEMA_VERSION_KEY, Store, StoreError, Txn};

/// Errors about the trust store as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The store could not be read or written; see the inner error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy given at `init` is unusable (quorum 0, empty role). Choose another.
    #[error("invalid trust-store policy: {0}")]
    InvalidPolicy(String),
    /// The change and its audit record could not be written; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The store already holds a trust store. Use it, or choose another data dir.
    #[error("the store is already initialised")]
    AlreadyInitialised,
}

impl Coded for TrustError {
    fn code(&self) -> &'static str {
        match self {
            TrustError::Store(e) => e.code(),
            TrustError::Audit(e) => e.code(),
            TrustError::InvalidPolicy(_) => "trust.invalid_policy",
            TrustError::AlreadyInitialised => "trust.already_initialised",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            TrustError::Store(e) => e.kind(),
            TrustError::Audit(e) => e.kind(),
            TrustError::InvalidPolicy(_) => ErrorKind::InvalidInput,
            TrustError::AlreadyInitialised => ErrorKind::AlreadyExists,
        }
    }
}

/// Writes the schema version and a fresh [`TrustStoreMeta`] into an empty store, with the
/// log's first record.
pub fn initialise(
    audit: &AuditLog,
    policy: TrustStorePolicy,
    store_id: String,
    now: Timestamp,
    actor: Actor,
) -> Result<TrustStoreMeta, TrustError> {
    if policy.quorum == 0 {
        return Err(TrustError::InvalidPolicy(
            "quorum must be at least 1".to_owned(),
        ));
    }
    if policy.approver_role.trim().is_empty() {
        return Err(TrustError::InvalidPolicy(
            "approver role must not be empty".to_owned(),
        ));
    }
    let meta = TrustStoreMeta {
        store_id,
        created_at: now,
        policy,
        genesis: Genesis::Open,
    };
    let mut txn = Txn::new();
    txn.require_absent(Keyspace::Meta, SCHEMA_VERSION_KEY)
        .put_raw(
            Keyspace::Meta,
            SCHEMA_VERSION_KEY,
            store::schema_version_bytes(STORE_SCHEMA_VERSION),
        )
        .put(META_KEY, &meta)?;
    let event = Event {
        event: "store.initialised",
        actor,
        subject: format!("store/{}", meta.store_id),
        details: serde_json::json!({
            "schema_version": STORE_SCHEMA_VERSION,
            "trust_store_quorum": meta.policy.quorum,
            "trust_store_approver_role": meta.policy.approver_role,
        }),
        evidence: None,
    };
    match audit.commit(txn, event) {
        Ok(_) => Ok(meta),
        Err(AuditError::Store(StoreError::Conflict(_))) => Err(TrustError::AlreadyInitialised),
        Err(e) => Err(e.into()),
    }
}

/// Reads the trust store's metadata, with its stored bytes (for compare-and-set).
pub fn read_meta(store: &dyn Store) -> Result<(TrustStoreMeta, Vec<u8>), TrustError> {
    let raw = store
        .get(Keyspace::Meta, META_KEY)?
        .ok_or_else(|| StoreError::Corrupt {
            keyspace: Keyspace::Meta.name(),
            detail: "trust_store metadata is missing".to_owned(),
        })?;
    Ok((store::decode(&raw)?, raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_log;

    fn policy() -> TrustStorePolicy {
        TrustStorePolicy {
            quorum: 2,
            approver_role: "admin".to_owned(),
        }
    }

    #[test]
    fn a_new_trust_store_opens_the_genesis_window_and_starts_the_log() {
        let (dir, store, audit) = test_log();
        initialise(
            &audit,
            policy(),
            "id".into(),
            Timestamp::from_unix_millis(5),
            Actor::Daemon,
        )
        .unwrap();
        let (meta, _) = read_meta(store.as_ref()).unwrap();
        assert_eq!(meta.genesis, Genesis::Open);
        assert_eq!(meta.policy, policy());
        assert_eq!(
            store::check_schema(store.as_ref(), dir.path()).unwrap(),
            STORE_SCHEMA_VERSION
        );
        let records = audit.read(1, 10).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event, "store.initialised");
    }

    #[test]
    fn initialising_twice_is_refused_and_keeps_the_first() {
        let (_dir, store, audit) = test_log();
        initialise(
            &audit,
            policy(),
            "first".into(),
            Timestamp::from_unix_millis(5),
            Actor::Daemon,
        )
        .unwrap();
        let err = initialise(
            &audit,
            policy(),
            "second".into(),
            Timestamp::from_unix_millis(6),
            Actor::Daemon,
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::AlreadyInitialised), "{err}");
        assert_eq!(read_meta(store.as_ref()).unwrap().0.store_id, "first");
        assert_eq!(audit.head_seq(), 1);
    }

    #[test]
    fn a_zero_quorum_is_refused() {
        let (_dir, store, audit) = test_log();
        let bad = TrustStorePolicy {
            quorum: 0,
            approver_role: "admin".into(),
        };
        assert!(matches!(
            initialise(
                &audit,
                bad,
                "id".into(),
                Timestamp::from_unix_millis(0),
                Actor::Daemon
            ),
            Err(TrustError::InvalidPolicy(_))
        ));
        assert_eq!(store.get(Keyspace::Meta, SCHEMA_VERSION_KEY).unwrap(), None);
        assert_eq!(audit.head_seq(), 0);
    }
}
