//! The audit log of one store: appends under one lock, group commit (one flush makes many
//! changes durable), checkpoints, and the live tail that followers read.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{
    AuditError, AuditRecord, CHECKPOINT_EVENT, Checkpoint, Event, ZERO_HASH, anchor,
    checkpoint_message, decode_hash, seq_key,
};
use crate::base::caller::Actor;
use crate::base::clock::{Clock, Timestamp};
use crate::store::{self, Keyspace, Store, StoreError, Txn};

/// When to write checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many records without one.
    pub every_records: u64,
}

#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
    last_checkpoint: u64,
}

/// A change applied with its records, not yet durable (see [`AuditLog::apply_events`]).
#[derive(Debug)]
#[must_use = "settle it with AuditLog::settle_all, or later records are never published"]
pub struct Applied {
    seq: u64,
    /// The change's records, then any checkpoint written after them.
    records: Vec<AuditRecord>,
    /// How many of `records` describe the change.
    described: usize,
}

/// Records made durable but not yet published, so the live tail stays in sequence order.
#[derive(Debug)]
struct Published {
    next: u64,
    waiting: std::collections::BTreeMap<u64, AuditRecord>,
}

/// The audit log of one store. All appends go through one lock, so the log has one writer
/// per process; across processes (a shared backend) the `require_absent` on the next sequence
/// number turns a race into a conflict rather than a fork.
///
/// Group commit: a change and its records are applied under the lock, then made durable by a
/// flush outside it, which covers every change applied meanwhile; a caller hears of success,
/// and followers see the records, only after the flush that covers them. A failed flush
/// poisons the log: memory may be ahead of the disk, so every later change is refused until
/// the daemon restarts.
pub struct AuditLog {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signer: ed25519_dalek::SigningKey,
    policy: CheckpointPolicy,
    head: Mutex<Head>,
    /// Highest sequence number known durable; held while flushing (one flusher at a time).
    durable: Mutex<u64>,
    published: Mutex<Published>,
    poisoned: std::sync::atomic::AtomicBool,
    tail: tokio::sync::broadcast::Sender<AuditRecord>,
    /// Rewritten after every flush with the newest durable record, if set.
    anchor: Option<anchor::Anchor>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log in `store`, reading its head.
    pub fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        signer: ed25519_dalek::SigningKey,
        policy: CheckpointPolicy,
    ) -> Result<Self, AuditError> {
        let head = read_head(store.as_ref())?;
        let (tail, _) = tokio::sync::broadcast::channel(1024);
        Ok(Self {
            store,
            clock,
            signer,
            policy,
            durable: Mutex::new(head.seq),
            published: Mutex::new(Published {
                next: head.seq + 1,
                waiting: std::collections::BTreeMap::new(),
            }),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            head: Mutex::new(head),
            tail,
            anchor: None,
        })
    }

    /// Keeps `anchor` current: after every flush it names the newest durable record.
    pub fn with_anchor(mut self, anchor: anchor::Anchor) -> Self {
        self.anchor = Some(anchor);
        self
    }

    fn refuse_if_poisoned(&self) -> Result<(), AuditError> {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::Store(StoreError::Backend(
                "an earlier flush of the store failed; restart latchkeyd".to_owned(),
            )));
        }
        Ok(())
    }

    /// Makes every record up to `seq` durable: returns at once if a flush already covered it,
    /// else flushes everything applied so far (one flush for all waiting writers).
    fn make_durable(&self, seq: u64) -> Result<(), AuditError> {
        // Everything up to the head is applied; the flush below covers it all. Read before
        // taking `durable`: `head` is always taken first (a writer holding it may need
        // `durable` when it follows another node's appends).
        let (target, hash) = {
            let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            (head.seq, head.hash.clone())
        };
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        if *durable >= seq {
            return Ok(());
        }
        self.refuse_if_poisoned()?;
        if let Err(e) = self.store.flush() {
            self.poisoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::error!("flushing the store failed; refusing further changes: {e}");
            return Err(e.into());
        }
        if let Some(anchor) = &self.anchor
            && let Err(e) = anchor.write(&anchor::Anchored { seq: target, hash })
        {
            // What was flushed is durable; but a rollback past it could no longer be told,
            // so no further change is accepted until a restart.
            self.poisoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::error!("writing the rollback anchor failed; refusing further changes: {e}");
        }
        *durable = (*durable).max(target);
        Ok(())
    }

    /// Publishes durable records (log events, live tail) in sequence order.
    fn publish(&self, records: Vec<AuditRecord>) {
        let mut p = self.published.lock().unwrap_or_else(|p| p.into_inner());
        for r in records {
            // Published already (followed from the store before its writer settled it).
            if r.seq >= p.next {
                p.waiting.insert(r.seq, r);
            }
        }
        loop {
            let next = p.next;
            let Some(record) = p.waiting.remove(&next) else {
                break;
            };
            emit(&record);
            // Nobody following the log is fine.
            let _ = self.tail.send(record);
            p.next += 1;
        }
    }

    /// Makes `records` (and everything before them) durable, then publishes them.
    fn settle(&self, seq: u64, records: Vec<AuditRecord>) -> Result<(), AuditError> {
        self.make_durable(seq)?;
        self.publish(records);
        Ok(())
    }

    /// Waits until everything applied so far is durable (flushing if no flush covers it yet).
    /// A read that will act on what it saw, or show it to a client, calls this after reading:
    /// group commit makes a change visible in the store before its flush, and a crash in that
    /// window loses it. Fails if a flush failed (the log is poisoned until restart).
    pub fn await_durable(&self) -> Result<(), AuditError> {
        let applied = self.head_seq();
        self.make_durable(applied)
    }

    /// Sequence number of the newest durable record.
    pub fn durable_seq(&self) -> u64 {
        *self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `txn` together with the record of `event`, atomically: both or neither. Writes a
    /// checkpoint afterwards when the policy says so (a failed checkpoint is logged, not fatal:
    /// the change and its record are already durable).
    // Owned, like `apply_events`: the caller hands its change over.
    #[allow(clippy::needless_pass_by_value)]
    pub fn commit(&self, txn: Txn, event: Event) -> Result<AuditRecord, AuditError> {
        let mut written = Vec::with_capacity(2);
        let seq = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            self.refuse_if_poisoned()?;
            let now = self.clock.now();
            written.push(self.append_locked(&mut head, &txn, &event, now)?);
            if head.seq - head.last_checkpoint >= self.policy.every_records {
                match self.checkpoint_locked(&mut head) {
                    Ok(cp) => written.push(cp),
                    Err(e) => tracing::error!("writing audit checkpoint: {e}"),
                }
            }
            head.seq
        };
        let record = written[0].clone();
        self.settle(seq, written)?;
        Ok(record)
    }

    /// Like [`AuditLog::commit`], for a change that several records describe (e.g. the
    /// enrollment that also closes genesis): all records and the change commit together.
    pub fn commit_events(
        &self,
        txn: Txn,
        events: Vec<Event>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let applied = self.apply_events(txn, events)?;
        let records = applied.records[..applied.described].to_vec();
        self.settle_all(vec![applied])?;
        Ok(records)
    }

    /// Makes applied changes durable (one flush for all) and publishes their records. Every
    /// [`Applied`] must be settled, or later records wait unpublished.
    pub fn settle_all(&self, applied: Vec<Applied>) -> Result<(), AuditError> {
        let Some(seq) = applied.iter().map(|a| a.seq).max() else {
            return Ok(());
        };
        let records: Vec<AuditRecord> = applied.into_iter().flat_map(|a| a.records).collect();
        self.settle(seq, records)
    }

    /// Like [`AuditLog::commit_events`] but not yet durable: the change and its records are
    /// applied (visible to readers of the store); pass the result to [`AuditLog::settle_all`],
    /// which makes it durable and publishes its records. For a writer with many changes in a
    /// row (the revocation scheduler): one flush for all of them.
    // Owned: the caller hands its change over. Kept whole (and cloned per attempt) so the
    // records can be built again after another node's append on a shared store.
    #[allow(clippy::needless_pass_by_value)]
    pub fn apply_events(&self, txn: Txn, events: Vec<Event>) -> Result<Applied, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        self.refuse_if_poisoned()?;
        let now = self.clock.now();
        let mut records = loop {
            let mut attempt = txn.clone();
            let mut records = Vec::with_capacity(events.len());
            let (mut seq, mut prev) = (head.seq, head.hash.clone());
            for event in &events {
                let mut record = AuditRecord {
                    seq: seq + 1,
                    time: now,
                    prev_hash: prev,
                    event: event.event.to_owned(),
                    actor: event.actor.clone(),
                    subject: event.subject.clone(),
                    details: event.details.clone(),
                    evidence: event.evidence.clone(),
                    checkpoint: None,
                    hash: String::new(),
                };
                record.hash = record.compute_hash();
                attempt
                    .require_absent(Keyspace::Audit, seq_key(record.seq))
                    .put(seq_key(record.seq), &record)?;
                seq = record.seq;
                prev = record.hash.clone();
                records.push(record);
            }
            match self.store.apply(&attempt) {
                Ok(()) => break records,
                // A retried write that had applied the first time finds its own records.
                Err(StoreError::Conflict(_))
                    if records.first().map_or(Ok(false), |r| self.stored_is(r))? =>
                {
                    self.adopt_newer_head(&mut head)?;
                    break records;
                }
                Err(StoreError::Conflict(why)) if !self.adopt_newer_head(&mut head)? => {
                    return Err(StoreError::Conflict(why).into());
                }
                // Another node appended first: build the records again after its.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        };
        // (Unless the head moved past them already, following other nodes after a retry.)
        if let Some(last) = records.last()
            && last.seq > head.seq
        {
            head.seq = last.seq;
            head.hash = last.hash.clone();
        }
        let described = records.len();
        if head.seq - head.last_checkpoint >= self.policy.every_records {
            match self.checkpoint_locked(&mut head) {
                Ok(cp) => records.push(cp),
                Err(e) => tracing::error!("writing audit checkpoint: {e}"),
            }
        }
        Ok(Applied {
            seq: head.seq,
            records,
            described,
        })
    }

    /// Writes a checkpoint now if any record is not yet covered by one. Returns it, if written.
    pub fn checkpoint(&self) -> Result<Option<AuditRecord>, AuditError> {
        let (record, seq) = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            self.refuse_if_poisoned()?;
            if head.seq == head.last_checkpoint {
                return Ok(None);
            }
            let record = self.checkpoint_locked(&mut head)?;
            (record, head.seq)
        };
        self.settle(seq, vec![record.clone()])?;
        Ok(Some(record))
    }

    /// Like [`AuditLog::checkpoint`], and also returns the sequence number of the newest
    /// checkpoint record once durable (the one written, or the last record if it already is
    /// one; 0 for a log without checkpoints). An export that ends there verifies to its end.
    pub fn checkpoint_through(&self) -> Result<(Option<AuditRecord>, u64), AuditError> {
        let covered = {
            let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            self.refuse_if_poisoned()?;
            (head.seq == head.last_checkpoint).then_some(head.last_checkpoint)
        };
        if let Some(seq) = covered {
            self.make_durable(seq)?;
            return Ok((None, seq));
        }
        let written = self.checkpoint()?;
        let seq = written
            .as_ref()
            .map_or_else(|| self.last_checkpoint_seq(), |r| r.seq);
        // Another writer may have added the checkpoint meanwhile: wait until it is durable.
        self.make_durable(seq)?;
        Ok((written, seq))
    }

    fn last_checkpoint_seq(&self) -> u64 {
        self.head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_checkpoint
    }

    fn checkpoint_locked(&self, head: &mut Head) -> Result<AuditRecord, AuditError> {
        use ed25519_dalek::Signer as _;
        let event = Event {
            event: CHECKPOINT_EVENT,
            actor: Actor::Daemon,
            subject: "audit".to_owned(),
            details: serde_json::json!({}),
            evidence: None,
        };
        loop {
            let now = self.clock.now();
            let head_hash = decode_hash(&head.hash)
                .ok_or_else(|| AuditError::Damaged(format!("head hash {:?}", head.hash)))?;
            let signature = self
                .signer
                .sign(&checkpoint_message(head.seq, &head_hash, now));
            let checkpoint = Checkpoint {
                covers_seq: head.seq,
                head_hash: head.hash.clone(),
                signature: B64.encode(signature.to_bytes()),
            };
            let mut txn = Txn::new();
            txn.put_raw(
                Keyspace::AuditCheckpoints,
                seq_key(head.seq + 1),
                Vec::new(),
            );
            // Signed over the head it follows: if another node appended first, sign again.
            if let Some(record) = self.try_append(head, &txn, &event, now, Some(checkpoint))? {
                head.last_checkpoint = record.seq;
                return Ok(record);
            }
        }
    }

    fn append_locked(
        &self,
        head: &mut Head,
        txn: &Txn,
        event: &Event,
        time: Timestamp,
    ) -> Result<AuditRecord, AuditError> {
        loop {
            if let Some(record) = self.try_append(head, txn, event, time, None)? {
                return Ok(record);
            }
        }
    }

    /// Appends the record of `event` with `txn` after `head`. None: another node appended
    /// first (a shared backend) and `head` now follows it; build again on it.
    fn try_append(
        &self,
        head: &mut Head,
        txn: &Txn,
        event: &Event,
        time: Timestamp,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Option<AuditRecord>, AuditError> {
        let mut record = AuditRecord {
            seq: head.seq + 1,
            time,
            prev_hash: head.hash.clone(),
            event: event.event.to_owned(),
            actor: event.actor.clone(),
            subject: event.subject.clone(),
            details: event.details.clone(),
            evidence: event.evidence.clone(),
            checkpoint,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        let mut attempt = txn.clone();
        attempt
            .require_absent(Keyspace::Audit, seq_key(record.seq))
            .put(seq_key(record.seq), &record)?;
        match self.store.apply(&attempt) {
            Ok(()) => {
                head.seq = record.seq;
                head.hash = record.hash.clone();
                Ok(Some(record))
            }
            // A retried write that had applied the first time finds its own record.
            Err(StoreError::Conflict(_)) if self.stored_is(&record)? => {
                self.adopt_newer_head(head)?;
                Ok(Some(record))
            }
            Err(StoreError::Conflict(_)) if self.adopt_newer_head(head)? => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the store holds exactly `record` at its sequence number (a write whose answer
    /// was lost, then retried by the backend, did apply).
    fn stored_is(&self, record: &AuditRecord) -> Result<bool, AuditError> {
        Ok(self
            .store
            .get(Keyspace::Audit, &seq_key(record.seq))?
            .map(|raw| store::decode::<AuditRecord>(&raw))
            .transpose()?
            .is_some_and(|stored| stored.hash == record.hash))
    }

    /// After a conflict: if the store's log is ahead of `head` (another latchkeyd on the same
    /// backend appended), takes its head, publishes the records this node did not write (they
    /// are durable: only a shared backend has other writers) and returns true. False: the
    /// conflict was the caller's own precondition.
    fn adopt_newer_head(&self, head: &mut Head) -> Result<bool, AuditError> {
        let stored = read_head(self.store.as_ref())?;
        if stored.seq <= head.seq {
            return Ok(false);
        }
        let missing = read_range(
            self.store.as_ref(),
            head.seq + 1,
            usize::try_from(stored.seq - head.seq).unwrap_or(usize::MAX),
        )?;
        let mut prev = (head.seq, head.hash.clone());
        for r in &missing {
            if r.seq != prev.0 + 1 || r.prev_hash != prev.1 || r.compute_hash() != r.hash {
                return Err(AuditError::Damaged(format!(
                    "record {} does not continue record {}",
                    prev.0 + 1,
                    prev.0
                )));
            }
            prev = (r.seq, r.hash.clone());
        }
        if prev.0 != stored.seq {
            return Err(AuditError::Damaged(format!(
                "records {} to {} could not all be read",
                head.seq + 1,
                stored.seq
            )));
        }
        *head = stored;
        {
            // Durable: only a shared backend (which commits durably) has other writers.
            let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
            *durable = (*durable).max(head.seq);
        }
        self.publish(missing);
        Ok(true)
    }

    /// Follows records other latchkeyd nodes appended to a shared store: takes the store's
    /// head if it is ahead and publishes what it missed (live tails, watches). Returns whether
    /// anything was new. A node on its own store never has anything to catch up.
    pub fn catch_up(&self) -> Result<bool, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        self.adopt_newer_head(&mut head)
    }

    /// Durable records with `from <= seq`, at most `limit`.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let durable = self.durable_seq();
        let mut records = read_range(self.store.as_ref(), from, limit)?;
        records.retain(|r| r.seq <= durable);
        Ok(records)
    }

    /// Checkpoint records with `from <= seq`, at most `limit`.
    pub fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let durable = self.durable_seq();
        let mut checkpoints = read_checkpoints(self.store.as_ref(), from, limit)?;
        checkpoints.retain(|r| r.seq <= durable);
        Ok(checkpoints)
    }

    /// Every record appended from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.tail.subscribe()
    }

    /// Sequence number of the newest record.
    pub fn head_seq(&self) -> u64 {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// The audit public key (verifies checkpoints).
    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signer.verifying_key()
    }
}

/// Checkpoint records with `from <= seq`, at most `limit`.
pub fn read_checkpoints(
    store: &dyn Store,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    for (key, _) in store.scan_from(Keyspace::AuditCheckpoints, &seq_key(from), limit)? {
        let Some(raw) = store.get(Keyspace::Audit, &key)? else {
            return Err(AuditError::Damaged(
                "checkpoint index points at a missing record".to_owned(),
            ));
        };
        out.push(store::decode(&raw)?);
    }
    Ok(out)
}

/// Reads up to `limit` records from `from`.
pub fn read_range(
    store: &dyn Store,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    store
        .scan_from(Keyspace::Audit, &seq_key(from), limit)?
        .into_iter()
        .map(|(_, v)| store::decode::<AuditRecord>(&v).map_err(AuditError::from))
        .collect()
}

fn read_head(store: &dyn Store) -> Result<Head, AuditError> {
    let Some((_, last)) = store.last(Keyspace::Audit)? else {
        return Ok(Head {
            seq: 0,
            hash: ZERO_HASH.to_owned(),
            last_checkpoint: 0,
        });
    };
    let last: AuditRecord = store::decode(&last)?;
    if last.compute_hash() != last.hash {
        return Err(AuditError::Damaged(format!(
            "record {} does not match its hash",
            last.seq
        )));
    }
    let last_checkpoint = match store.last(Keyspace::AuditCheckpoints)? {
        Some((key, _)) => u64::from_be_bytes(
            key.as_slice()
                .try_into()
                .map_err(|_| AuditError::Damaged("checkpoint index key".to_owned()))?,
        ),
        None => 0,
    };
    Ok(Head {
        seq: last.seq,
        hash: last.hash,
        last_checkpoint,
    })
}

/// Emits the record as a structured `tracing` event (journald keeps it under systemd).
fn emit(record: &AuditRecord) {
    tracing::info!(
        target: "latchkey::audit",
        audit_seq = record.seq,
        audit_event = %record.event,
        audit_actor = ?record.actor,
        audit_subject = %record.subject,
        audit_details = %record.details,
        audit_hash = %record.hash,
        "audit"
    );
}

/// The signing key for checkpoints, from the daemon's OpenSSH Ed25519 audit key.
pub fn signing_key(audit_key: &ssh_key::PrivateKey) -> Option<ed25519_dalek::SigningKey> {
    audit_key
        .key_data()
        .ed25519()
        .map(|kp| ed25519_dalek::SigningKey::from(&kp.private))
}

/// A log over a fresh temporary sled store, for tests.
#[cfg(test)]
pub fn test_log() -> (tempfile::TempDir, Arc<dyn Store>, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(crate::store::SledStore::create(&dir.path().join("s")).unwrap());
    let clock = Arc::new(crate::base::clock::ManualClock::new(
        Timestamp::from_unix_millis(1_763_856_000_000),
    ));
    let signer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let log = AuditLog::open(
        store.clone(),
        clock,
        signer,
        CheckpointPolicy { every_records: 4 },
    )
    .unwrap();
    (dir, store, log)
}
