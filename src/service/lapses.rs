//! Requests that lapse: a pending request whose quorum did not come in time is expired from
//! its deadline on (reads compute it), and this writes it down — the state and a
//! `request.expired` audit record, which notification sinks announce. Deadlines of pending
//! requests are kept in memory, filled once from the store (in the background, after serving
//! starts) and by every new request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::audit::Event;
use crate::base::caller::Actor;
use crate::base::clock::Timestamp;
use crate::domain::request::{Request, RequestState};
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, Txn};

/// Deadlines of pending requests, soonest first.
#[derive(Debug, Default)]
pub struct PendingDeadlines {
    heap: Mutex<BinaryHeap<Reverse<(Timestamp, String)>>>,
    loaded: AtomicBool,
}

impl PendingDeadlines {
    fn push(&self, until: Timestamp, id: String) {
        self.heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Reverse((until, id)));
    }

    /// The next request whose deadline is at or before `now`, taken off the heap.
    fn pop_due(&self, now: Timestamp) -> Option<String> {
        let mut heap = self
            .heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match heap.peek() {
            Some(Reverse((until, _))) if *until <= now => heap.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }
}

impl Authority {
    /// Notes a new pending request's deadline.
    pub(in crate::service) fn note_pending(&self, request: &Request) {
        self.lapses
            .push(request.canonical.pending_until, request.id().to_owned());
    }

    /// Writes down every pending request past its deadline: state `expired` and a
    /// `request.expired` record each. Returns how many. The first call reads the pending
    /// requests from the store.
    pub fn expire_lapsed_requests(&self) -> Result<u64, WorkflowError> {
        if !self.lapses.loaded.swap(true, Ordering::AcqRel) {
            for (key, raw) in self.store.scan_from(Keyspace::Requests, b"", usize::MAX)? {
                // A record that does not decode is the store's damage to report (doctor,
                // reads); it must not stop every other request from lapsing.
                let Ok(request) = store::decode::<Request>(&raw) else {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), "undecodable request skipped");
                    continue;
                };
                if request.state == RequestState::Pending {
                    self.note_pending(&request);
                }
            }
        }
        let mut expired = 0;
        while let Some(id) = self.lapses.pop_due(self.clock.now()) {
            let Some(raw) = self.store.get(Keyspace::Requests, id.as_bytes())? else {
                continue;
            };
            let Ok(mut request) = store::decode::<Request>(&raw) else {
                continue;
            };
            let now = self.clock.now();
            // Decided meanwhile (or not yet due after all): nothing to write.
            if request.state != RequestState::Pending || now < request.canonical.pending_until {
                continue;
            }
            request.state = request.state_at(now);
            let mut txn = Txn::new();
            txn.require_equals(Keyspace::Requests, id.as_bytes(), raw)
                .put(id.as_bytes(), &request)?;
            let event = Event {
                event: "request.expired",
                actor: Actor::Daemon,
                subject: format!("request/{id}"),
                details: serde_json::json!({
                    "scope": request.canonical.scope,
                    "requester": request.canonical.requester,
                    "pending_until": request.canonical.pending_until,
                    "votes": request.votes.len(),
                    "quorum": request.canonical.quorum,
                }),
                evidence: None,
            };
            match self.audit.commit(txn, event).map_err(WorkflowError::from) {
                Ok(_) => expired += 1,
                // A vote or a cancel landed first: it decided the request.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }
}
