//! Leadership of the singleton work (expiry, revocation sinks and hooks, KRL pruning) when
//! several latchkeyd share one store. A lease in the store: `leader` holds the node and its
//! term, `leader_until` when the lease ends. A node takes the lease when it is free or
//! expired (compare-and-set, a new term, audited as `leader.elected`) and renews its own;
//! every singleton write of the leader compares `leader` with its own term's record, so a
//! deposed leader's late writes fail as conflicts (fencing). On a store of its own a node
//! never contests: it always leads and nothing is fenced.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Event};
use crate::base::clock::Timestamp;
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{Keyspace, StoreError, Txn};

/// Key of the leader's node and term in [`Keyspace::Meta`].
const LEADER_KEY: &[u8] = b"leader";
/// Key of the lease's end (Unix ms, big-endian) in [`Keyspace::Meta`].
const LEADER_UNTIL_KEY: &[u8] = b"leader_until";
/// What a non-leader's fence expects: never a stored leader record (those are JSON).
const NOT_LEADING: &[u8] = b"\0not leading";

/// Who leads, in which term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LeaderRecord {
    node: String,
    term: u64,
}

/// This node's part in the election.
#[derive(Debug, Default)]
pub struct Leadership {
    /// Set once the daemon contests (a shared store).
    contested: std::sync::atomic::AtomicBool,
    /// While leading: the stored `leader` bytes of this term, and the lease's end.
    held: Mutex<Option<(Vec<u8>, Timestamp)>>,
}

fn corrupt(detail: &str) -> StoreError {
    StoreError::Corrupt {
        keyspace: Keyspace::Meta.name(),
        detail: detail.to_owned(),
    }
}

impl Authority {
    /// Takes part in the election from now on (a shared store): singleton work runs only
    /// while this node holds the lease.
    pub fn contest_leadership(&self) {
        self.leadership
            .contested
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this node should do the singleton work now: always on a store of its own; on a
    /// shared one while its lease lasts.
    pub fn leads(&self) -> bool {
        if !self
            .leadership
            .contested
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return true;
        }
        let held = self
            .leadership
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.as_ref()
            .is_some_and(|(_, until)| self.clock.now() < *until)
    }

    /// Adds the fence to a singleton write: it applies only while this node's term leads. A
    /// contesting node that does not lead gets a precondition that never holds.
    pub(in crate::service) fn fence(&self, txn: &mut Txn) {
        if !self
            .leadership
            .contested
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let held = self
            .leadership
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expected = held
            .as_ref()
            .map_or_else(|| NOT_LEADING.to_vec(), |(raw, _)| raw.clone());
        txn.require_equals(Keyspace::Meta, LEADER_KEY, expected);
    }

    /// One round of the election for `node`: renews its lease, or takes a free or expired
    /// one for a new term (audited). Returns whether `node` leads now.
    pub fn campaign(&self, node: &str, lease: Duration) -> Result<bool, WorkflowError> {
        let now = self.clock.now();
        let current = self.store.get(Keyspace::Meta, LEADER_KEY)?;
        let until_raw = self.store.get(Keyspace::Meta, LEADER_UNTIL_KEY)?;
        let until = match &until_raw {
            Some(raw) => i64::from_be_bytes(
                raw.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("leader_until is not 8 bytes"))?,
            ),
            None => i64::MIN,
        };
        let record = match &current {
            Some(raw) => Some(
                serde_json::from_slice::<LeaderRecord>(raw)
                    .map_err(|e| corrupt(&format!("leader: {e}")))?,
            ),
            None => None,
        };
        let ends = now.plus(lease);
        let mut txn = Txn::new();
        txn.put_raw(
            Keyspace::Meta,
            LEADER_UNTIL_KEY,
            ends.unix_millis().to_be_bytes().to_vec(),
        );
        let mine = match (&record, &current) {
            (Some(r), Some(raw)) if r.node == node => {
                // Renewal: same term, the same `leader` bytes (writes fenced on them go on).
                txn.require_equals(Keyspace::Meta, LEADER_KEY, raw.clone());
                Some(raw.clone())
            }
            (Some(_), Some(_)) if now.unix_millis() <= until => {
                self.set_held(None);
                return Ok(false);
            }
            _ => None,
        };
        let result = match mine {
            Some(raw) => self.store.commit(&txn).map(|()| raw).map_err(Into::into),
            None => {
                let term = record.as_ref().map_or(1, |r| r.term + 1);
                let raw = serde_json::to_vec(&LeaderRecord {
                    node: node.to_owned(),
                    term,
                })
                .map_err(|e| corrupt(&e.to_string()))?;
                match &current {
                    Some(old) => txn.require_equals(Keyspace::Meta, LEADER_KEY, old.clone()),
                    None => txn.require_absent(Keyspace::Meta, LEADER_KEY),
                };
                // A renewal that lands between the read and this write makes it a conflict.
                match &until_raw {
                    Some(old) => txn.require_equals(Keyspace::Meta, LEADER_UNTIL_KEY, old.clone()),
                    None => txn.require_absent(Keyspace::Meta, LEADER_UNTIL_KEY),
                };
                txn.put_raw(Keyspace::Meta, LEADER_KEY, raw.clone());
                self.audit
                    .commit(
                        txn,
                        Event {
                            event: "leader.elected",
                            actor: Actor::Daemon,
                            subject: "leader".to_owned(),
                            details: serde_json::json!({
                                "node": node,
                                "term": term,
                                "previous": record.as_ref().map(|r| r.node.clone()),
                                "lease_ms": lease.as_millis() as u64,
                            }),
                            evidence: None,
                        },
                    )
                    .map(|_| raw)
                    .map_err(WorkflowError::from)
            }
        };
        match result {
            Ok(raw) => {
                self.set_held(Some((raw, ends)));
                Ok(true)
            }
            Err(e) if e.is_conflict() => {
                self.set_held(None);
                Ok(false)
            }
            Err(e) => {
                self.set_held(None);
                Err(e)
            }
        }
    }

    fn set_held(&self, held: Option<(Vec<u8>, Timestamp)>) {
        *self
            .leadership
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = held;
    }
}
