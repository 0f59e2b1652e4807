//! Workloads as the service checks and stores them: names and pins validated, admission at
//! genesis, lookup by pinned key.

use crate::audit::{Actor, AuditError, AuditLog, Event};
use crate::base::constants::MAX_NAME_LEN;
use crate::base::error::{Coded, ErrorKind};
use crate::domain::trust::{Genesis, META_KEY};
use crate::domain::workload::*;
use crate::service::trust_store::{self as trust, TrustError};
use crate::store::{self, Keyspace, Store, StoreError, Txn};

/// Errors about workloads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The name is empty, too long or has characters outside `[a-z0-9._-]`. Pick another.
    #[error("invalid workload name {0:?}: use 1-64 characters from a-z, 0-9, '.', '_' and '-'")]
    InvalidName(String),
    /// The pin is not 64 lowercase hex characters. Pass the SHA-256 of the SPKI in hex.
    #[error("invalid SPKI pin {0:?}: expected 64 lowercase hex characters")]
    InvalidPin(String),
    /// The owner is empty or too long. Name the person or team who answers for the workload.
    #[error("invalid workload owner {0:?}: 1-64 characters")]
    InvalidOwner(String),
    /// A workload of that name exists already. Remove it first or choose another name.
    #[error("workload {0} already exists")]
    NameTaken(String),
    /// That certificate key is pinned to another workload. One key identifies one workload.
    #[error("that SPKI is already pinned to workload {0}")]
    PinTaken(String),
    /// The certificate is not a PEM X.509 certificate. Pass the workload's client certificate.
    #[error("invalid client certificate: {0}")]
    InvalidCertificate(String),
    /// Only a local caller may bootstrap workloads. Ask an administrator on the host.
    #[error("workloads can only be admitted over the local socket")]
    LocalOnly,
    /// Genesis is closed: admitting a workload now needs a quorum-approved change.
    #[error(
        "the trust store is past genesis; admitting a workload now needs a quorum-approved change"
    )]
    GenesisClosed,
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admission and its audit record could not be written; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Reading the trust-store metadata failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl Coded for WorkloadError {
    fn code(&self) -> &'static str {
        match self {
            WorkloadError::InvalidName(_) => "workload.invalid_name",
            WorkloadError::InvalidPin(_) => "workload.invalid_pin",
            WorkloadError::InvalidOwner(_) => "workload.invalid_owner",
            WorkloadError::NameTaken(_) => "workload.name_taken",
            WorkloadError::PinTaken(_) => "workload.pin_taken",
            WorkloadError::GenesisClosed => "workload.genesis_closed",
            WorkloadError::LocalOnly => "workload.local_only",
            WorkloadError::InvalidCertificate(_) => "workload.invalid_certificate",
            WorkloadError::Store(e) => e.code(),
            WorkloadError::Audit(e) => e.code(),
            WorkloadError::Trust(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            WorkloadError::InvalidName(_)
            | WorkloadError::InvalidPin(_)
            | WorkloadError::InvalidOwner(_)
            | WorkloadError::InvalidCertificate(_) => ErrorKind::InvalidInput,
            WorkloadError::NameTaken(_) | WorkloadError::PinTaken(_) => ErrorKind::AlreadyExists,
            WorkloadError::GenesisClosed => ErrorKind::FailedPrecondition,
            WorkloadError::LocalOnly => ErrorKind::PermissionDenied,
            WorkloadError::Store(e) => e.kind(),
            WorkloadError::Audit(e) => e.kind(),
            WorkloadError::Trust(e) => e.kind(),
        }
    }
}

/// Checks name, pin, owner and scope names.
pub fn validate(workload: &Workload) -> Result<(), WorkloadError> {
    check_name(&workload.name)?;
    check_pin(&workload.spki_sha256)?;
    if workload.owner.trim().is_empty() || workload.owner.len() > MAX_NAME_LEN {
        return Err(WorkloadError::InvalidOwner(workload.owner.clone()));
    }
    for scope in &workload.scopes {
        check_name(scope)?;
    }
    Ok(())
}

/// All workloads.
pub fn list(store: &dyn Store) -> Result<Vec<Workload>, StoreError> {
    store
        .scan_from(Keyspace::Workloads, b"", usize::MAX)?
        .into_iter()
        .map(|(_, v)| store::decode(&v))
        .collect()
}

fn check_name(name: &str) -> Result<(), WorkloadError> {
    if crate::base::names::is_valid_name(name) {
        Ok(())
    } else {
        Err(WorkloadError::InvalidName(name.to_owned()))
    }
}

fn check_pin(pin: &str) -> Result<(), WorkloadError> {
    let ok = pin.len() == 64
        && pin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(WorkloadError::InvalidPin(pin.to_owned()))
    }
}

/// Admits a workload while the genesis window is open (bootstrap, local only). Atomic: the
/// name, the pin and the still-open genesis are checked in the same transaction that writes the
/// workload and its audit record.
pub fn admit_at_genesis(
    store: &dyn Store,
    audit: &AuditLog,
    workload: &Workload,
    actor: Actor,
) -> Result<(), WorkloadError> {
    validate(workload)?;
    let (meta, meta_bytes) = trust::read_meta(store)?;
    if meta.genesis != Genesis::Open {
        return Err(WorkloadError::GenesisClosed);
    }
    if let Some(existing) = store.get(Keyspace::WorkloadPins, workload.spki_sha256.as_bytes())? {
        return Err(WorkloadError::PinTaken(
            String::from_utf8_lossy(&existing).into_owned(),
        ));
    }
    if store
        .get(Keyspace::Workloads, workload.name.as_bytes())?
        .is_some()
    {
        return Err(WorkloadError::NameTaken(workload.name.clone()));
    }
    let mut txn = Txn::new();
    txn.require_equals(Keyspace::Meta, META_KEY, meta_bytes)
        .require_absent(Keyspace::Workloads, workload.name.as_bytes())
        .require_absent(Keyspace::WorkloadPins, workload.spki_sha256.as_bytes())
        .put(workload.name.as_bytes(), workload)?
        .put_raw(
            Keyspace::WorkloadPins,
            workload.spki_sha256.as_bytes(),
            workload.name.as_bytes(),
        );
    let event = Event {
        event: "workload.admitted",
        actor,
        subject: format!("workload/{}", workload.name),
        details: serde_json::json!({
            "owner": workload.owner,
            "spki_sha256": workload.spki_sha256,
            "scopes": workload.scopes,
            "introspect": workload.introspect,
            "path": "genesis",
        }),
        evidence: None,
    };
    audit.commit(txn, event)?;
    Ok(())
}

/// The workload pinned to this SPKI hash, if any.
pub fn by_pin(store: &dyn Store, spki_sha256: &[u8; 32]) -> Result<Option<Workload>, StoreError> {
    let pin = hex::encode(spki_sha256);
    let Some(name) = store.get(Keyspace::WorkloadPins, pin.as_bytes())? else {
        return Ok(None);
    };
    let workload: Option<Workload> = store::read(store, &name)?;
    // An index entry without its record, or pointing at a record with another pin, is damage.
    match workload {
        Some(w) if w.spki_sha256 == pin => Ok(Some(w)),
        _ => Err(StoreError::Corrupt {
            keyspace: Keyspace::WorkloadPins.name(),
            detail: format!("pin {pin} points at a missing or mismatched workload"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_log;
    use crate::base::clock::Timestamp;
    use crate::domain::trust::TrustStorePolicy;

    fn fresh() -> (tempfile::TempDir, std::sync::Arc<dyn Store>, AuditLog) {
        let (dir, store, audit) = test_log();
        let policy = TrustStorePolicy {
            quorum: 2,
            approver_role: "admin".into(),
        };
        trust::initialise(
            &audit,
            policy,
            "id".into(),
            Timestamp::from_unix_millis(0),
            Actor::Daemon,
        )
        .unwrap();
        (dir, store, audit)
    }

    fn workload(name: &str, pin_byte: u8) -> Workload {
        Workload {
            name: name.into(),
            owner: "platform-team".into(),
            spki_sha256: hex::encode([pin_byte; 32]),
            admitted_at: Timestamp::from_unix_millis(1),
            scopes: Vec::new(),
            introspect: false,
        }
    }

    fn admit(store: &dyn Store, audit: &AuditLog, w: &Workload) -> Result<(), WorkloadError> {
        admit_at_genesis(store, audit, w, Actor::Local { uid: 0 })
    }

    #[test]
    fn an_admitted_workload_is_found_by_its_pin_and_audited() {
        let (_dir, store, audit) = fresh();
        admit(store.as_ref(), &audit, &workload("vault-plugin", 7)).unwrap();
        assert_eq!(
            by_pin(store.as_ref(), &[7; 32]).unwrap().unwrap().name,
            "vault-plugin"
        );
        assert_eq!(by_pin(store.as_ref(), &[8; 32]).unwrap(), None);
        let last = audit.read(audit.head_seq(), 1).unwrap().remove(0);
        assert_eq!(last.event, "workload.admitted");
        assert_eq!(last.subject, "workload/vault-plugin");
    }

    #[test]
    fn a_pin_cannot_identify_two_workloads() {
        let (_dir, store, audit) = fresh();
        admit(store.as_ref(), &audit, &workload("a", 7)).unwrap();
        let head = audit.head_seq();
        let err = admit(store.as_ref(), &audit, &workload("b", 7)).unwrap_err();
        assert!(
            matches!(err, WorkloadError::PinTaken(ref n) if n == "a"),
            "{err}"
        );
        assert_eq!(store.get(Keyspace::Workloads, b"b").unwrap(), None);
        assert_eq!(audit.head_seq(), head, "a refused change writes no record");
    }

    #[test]
    fn bad_names_owners_and_pins_are_refused_before_any_write() {
        let (_dir, store, audit) = fresh();
        let head = audit.head_seq();
        assert!(matches!(
            admit(store.as_ref(), &audit, &workload("Bad Name", 1)),
            Err(WorkloadError::InvalidName(_))
        ));
        let mut w = workload("ok", 1);
        w.spki_sha256 = "xyz".into();
        assert!(matches!(
            admit(store.as_ref(), &audit, &w),
            Err(WorkloadError::InvalidPin(_))
        ));
        let mut w = workload("ok", 1);
        w.owner = " ".into();
        assert!(matches!(
            admit(store.as_ref(), &audit, &w),
            Err(WorkloadError::InvalidOwner(_))
        ));
        assert!(
            store
                .scan_from(Keyspace::Workloads, b"", 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(audit.head_seq(), head);
    }

    #[test]
    fn admission_without_quorum_is_refused_after_genesis() {
        let (_dir, store, audit) = fresh();
        let (mut meta, _) = trust::read_meta(store.as_ref()).unwrap();
        meta.genesis = Genesis::Closed {
            at: Timestamp::from_unix_millis(2),
        };
        let mut txn = Txn::new();
        txn.put(META_KEY, &meta).unwrap();
        store.commit(&txn).unwrap();
        let err = admit(store.as_ref(), &audit, &workload("late", 3)).unwrap_err();
        assert!(matches!(err, WorkloadError::GenesisClosed));
        assert_eq!(by_pin(store.as_ref(), &[3; 32]).unwrap(), None);
    }
}
