//! Tamper-evident audit log: a hash chain of records, each written in the same store
//! transaction as the state change it describes (fail closed), with checkpoints signed by the
//! daemon's Ed25519 audit key, and offline verification ([`verify`]).
//!
//! Record hash: `SHA-256("latchkey.audit.v1\n" || JSON of the record without its hash)`, the
//! JSON being this module's serialisation (fields in declared order, object keys sorted).
//! Checkpoint signature: Ed25519 over
//! `"latchkey.audit.checkpoint.v1\n" || covers_seq (u64 BE) || head hash (32 bytes) || time ms (i64 BE)`.

pub mod anchor;
mod log;
mod record;
pub mod verify;

pub use crate::base::caller::Actor;
#[cfg(test)]
pub use log::test_log;
pub use log::{Applied, AuditLog, CheckpointPolicy, read_checkpoints, read_range, signing_key};
pub use record::{
    AuditRecord, CHECKPOINT_EVENT, Checkpoint, Event, Evidence, ZERO_HASH, checkpoint_message,
    decode_hash, seq_key,
};

use crate::base::error::{Coded, ErrorKind};
use crate::store::StoreError;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The record (and so the change it describes) could not be written. Nothing changed;
    /// the caller gets an error and may retry once the store is healthy.
    #[error("audit record not written, change refused: {0}")]
    Store(#[from] StoreError),
    /// The log in the store does not continue as expected (missing head, broken link). Stop
    /// writing and investigate: the store was modified outside latchkeyd.
    #[error("audit log damaged: {0}")]
    Damaged(String),
}

impl Coded for AuditError {
    fn code(&self) -> &'static str {
        match self {
            AuditError::Store(StoreError::Conflict(_)) => "store.conflict",
            AuditError::Store(_) => "audit.write_failed",
            AuditError::Damaged(_) => "audit.damaged",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            AuditError::Store(e) => e.kind(),
            AuditError::Damaged(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::base::clock::Timestamp;
    use crate::store::{Entry, Keyspace, Store, Txn, Write};

    fn note(n: u32) -> (Txn, Event) {
        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Workloads, format!("w{n}"), "x");
        let event = Event {
            event: "test.note",
            actor: Actor::Local { uid: 0 },
            subject: format!("workload/w{n}"),
            details: serde_json::json!({ "n": n }),
            evidence: None,
        };
        (txn, event)
    }

    #[test]
    fn fuzz_audit_exports_never_panic_the_verifier() {
        let (_dir, _store, log) = test_log();
        for n in 0..6 {
            let (txn, event) = note(n);
            log.commit(txn, event).unwrap();
        }
        log.checkpoint().unwrap();
        let export: String = log
            .read(1, 100)
            .unwrap()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        let key = log.public_key();
        assert!(verify::verify(export.as_bytes(), &key).is_ok());
        crate::base::fuzzing::run("audit-export", &[export.into_bytes()], |input| {
            let _ = verify::verify(input, &key);
        });
    }

    #[test]
    fn records_chain_and_checkpoints_follow_the_policy() {
        let (_dir, _store, log) = test_log();
        for n in 0..9 {
            let (txn, event) = note(n);
            log.commit(txn, event).unwrap();
        }
        let records = log.read(1, 100).unwrap();
        // 9 records plus a checkpoint after every 4 records: after 4 and after 4 more (+cp).
        assert_eq!(records.len(), 11);
        let mut prev = ZERO_HASH.to_owned();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.prev_hash, prev);
            assert_eq!(r.compute_hash(), r.hash);
            prev = r.hash.clone();
        }
        let checkpoints: Vec<u64> = records
            .iter()
            .filter(|r| r.checkpoint.is_some())
            .map(|r| r.seq)
            .collect();
        assert_eq!(checkpoints, vec![5, 10]);
        let report = verify::verify(
            std::io::Cursor::new(
                records
                    .iter()
                    .map(|r| serde_json::to_string(r).unwrap() + "\n")
                    .collect::<String>(),
            ),
            &log.public_key(),
        )
        .unwrap();
        assert_eq!(report.unverified_tail, Some((11, 11)));
    }

    #[test]
    fn a_reopened_log_continues_the_chain_and_knows_its_last_checkpoint() {
        let (_dir, store, log) = test_log();
        for n in 0..5 {
            let (txn, event) = note(n);
            log.commit(txn, event).unwrap();
        }
        let head = log.head_seq();
        drop(log);
        let clock = Arc::new(crate::base::clock::ManualClock::new(
            Timestamp::from_unix_millis(0),
        ));
        let reopened = AuditLog::open(
            store,
            clock,
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            CheckpointPolicy { every_records: 4 },
        )
        .unwrap();
        assert_eq!(reopened.head_seq(), head);
        let (txn, event) = note(99);
        let record = reopened.commit(txn, event).unwrap();
        assert_eq!(record.seq, head + 1);
        // One record since the checkpoint at 5: none due yet; an explicit one covers it.
        assert_eq!(
            reopened
                .checkpoint()
                .unwrap()
                .unwrap()
                .checkpoint
                .unwrap()
                .covers_seq,
            head + 1
        );
        assert!(
            reopened.checkpoint().unwrap().is_none(),
            "nothing new to cover"
        );
    }

    /// A store whose commits fail: the disk is full, the backend is gone.
    #[derive(Debug)]
    struct FailingStore(Arc<dyn Store>);

    impl Store for FailingStore {
        fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(ks, key)
        }
        fn scan_from(
            &self,
            ks: Keyspace,
            start: &[u8],
            limit: usize,
        ) -> Result<Vec<Entry>, StoreError> {
            self.0.scan_from(ks, start, limit)
        }
        fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
            self.0.last(ks)
        }
        fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
            self.0.count(ks)
        }
        fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
            self.0.count_below(ks, end)
        }
        fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
            self.commit(txn)
        }
        fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
            // Only a transaction that carries its audit record may even be attempted.
            assert!(
                txn.writes()
                    .iter()
                    .any(|w| matches!(w, Write::Put(Keyspace::Audit, _, _)))
            );
            Err(StoreError::Backend("no space left on device".to_owned()))
        }
        fn flush(&self) -> Result<(), StoreError> {
            Err(StoreError::Backend("no space left on device".to_owned()))
        }
    }

    /// A store whose writes apply but whose flushes fail: the disk went away under sled.
    #[derive(Debug)]
    struct UnflushableStore(Arc<dyn Store>);

    impl Store for UnflushableStore {
        fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(ks, key)
        }
        fn scan_from(
            &self,
            ks: Keyspace,
            start: &[u8],
            limit: usize,
        ) -> Result<Vec<Entry>, StoreError> {
            self.0.scan_from(ks, start, limit)
        }
        fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
            self.0.last(ks)
        }
        fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
            self.0.count(ks)
        }
        fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
            self.0.count_below(ks, end)
        }
        fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
            self.0.apply(txn)
        }
        fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
            self.0.apply(txn)?;
            self.flush()
        }
        fn flush(&self) -> Result<(), StoreError> {
            Err(StoreError::Backend("I/O error".to_owned()))
        }
    }

    #[test]
    fn concurrent_commits_are_durable_and_published_in_sequence_order() {
        let (_dir, _store, log) = test_log();
        let log = Arc::new(log);
        let mut tail = log.subscribe();
        let writers: Vec<_> = (0..8u32)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let (txn, event) = note(w * 100 + i);
                        let record = log.commit(txn, event).unwrap();
                        // Success is reported only once the record is durable.
                        assert!(log.durable_seq() >= record.seq);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let head = log.head_seq();
        assert_eq!(log.durable_seq(), head);
        let mut seen = Vec::new();
        while let Ok(r) = tail.try_recv() {
            seen.push(r.seq);
        }
        assert_eq!(
            seen,
            (1..=head).collect::<Vec<_>>(),
            "in order, none missing"
        );
        assert!(head >= 200, "200 notes and their checkpoints");
    }

    #[test]
    fn a_failed_flush_refuses_every_later_change() {
        let (_dir, store, log) = test_log();
        drop(log);
        let unflushable: Arc<dyn Store> = Arc::new(UnflushableStore(store));
        let log = AuditLog::open(
            unflushable,
            Arc::new(crate::base::clock::ManualClock::new(
                Timestamp::from_unix_millis(0),
            )),
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            CheckpointPolicy { every_records: 100 },
        )
        .unwrap();
        let mut tail = log.subscribe();
        let (txn, event) = note(1);
        let err = log.commit(txn, event).unwrap_err();
        assert!(err.to_string().contains("I/O error"), "{err}");
        let (txn, event) = note(2);
        let err = log.commit(txn, event).unwrap_err();
        assert!(err.to_string().contains("restart latchkeyd"), "{err}");
        assert!(tail.try_recv().is_err(), "nothing undurable was published");
        assert_eq!(log.durable_seq(), 0);
        assert!(
            log.read(1, 10).unwrap().is_empty(),
            "readers see only durable records"
        );
    }

    #[test]
    fn when_the_audit_record_cannot_be_written_the_change_does_not_happen() {
        use crate::domain::trust::TrustStorePolicy;
        use crate::domain::workload::Workload;
        use crate::service::trust_store::{self};
        use crate::service::workloads::{self, WorkloadError};

        let (_dir, store, log) = test_log();
        let policy = TrustStorePolicy {
            quorum: 2,
            approver_role: "admin".into(),
        };
        trust_store::initialise(
            &log,
            policy,
            "id".into(),
            Timestamp::from_unix_millis(0),
            Actor::Daemon,
        )
        .unwrap();
        drop(log);

        let failing: Arc<dyn Store> = Arc::new(FailingStore(store.clone()));
        let clock = Arc::new(crate::base::clock::ManualClock::new(
            Timestamp::from_unix_millis(0),
        ));
        let log = AuditLog::open(
            failing.clone(),
            clock,
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            CheckpointPolicy { every_records: 4 },
        )
        .unwrap();
        let w = Workload {
            name: "vault-plugin".into(),
            owner: "platform".into(),
            spki_sha256: hex::encode([9; 32]),
            admitted_at: Timestamp::from_unix_millis(0),
            scopes: Vec::new(),
            introspect: false,
        };
        let err = workloads::admit_at_genesis(failing.as_ref(), &log, &w, Actor::Local { uid: 0 })
            .unwrap_err();
        assert!(
            matches!(
                err,
                WorkloadError::Audit(AuditError::Store(StoreError::Backend(_)))
            ),
            "{err}"
        );
        assert_eq!(crate::base::error::Coded::code(&err), "audit.write_failed");
        assert_eq!(workloads::by_pin(store.as_ref(), &[9; 32]).unwrap(), None);
        assert_eq!(log.head_seq(), 1, "the head did not move");
        assert_eq!(read_range(store.as_ref(), 1, 10).unwrap().len(), 1);
    }
}
