//! The expiry queue: grants revoked when they expire, by the scheduler and once at start.

use std::collections::HashMap;
use std::time::Duration;

use crate::audit::{Actor, Applied, Event};
use crate::base::clock::Timestamp;
use crate::base::constants::{
    REVOCATION_BATCH, REVOCATION_BATCHES_PER_FLUSH, REVOCATION_ROUND_BATCHES, REVOCATION_SCAN_PAGE,
};
use crate::domain::grant::{ExpiryEntry, Grant, GrantState, expiry_key, parse_expiry_key};
use crate::domain::scope::RevocationSpec;
use crate::service::authority::Authority;
use crate::service::revocation::*;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, Txn};

/// What [`Authority::revoke_expired_at_start`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartRevocations {
    /// Grants revoked one by one before serving (a sink outside latchkey, or an older entry).
    pub revoked: usize,
    /// Grants revoked by the `grants.expired_while_down` record, rewritten after serving starts.
    pub deferred: usize,
}

impl Authority {
    /// The earliest expiry still queued.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>, WorkflowError> {
        Ok(self
            .store
            .scan_from(Keyspace::GrantExpiry, b"", 1)?
            .first()
            .and_then(|(k, _)| parse_expiry_key(k))
            .map(|(t, _)| t))
    }

    /// Revokes active grants whose expiry has passed, oldest first, in batches of one
    /// transaction each (never the whole queue in memory): up to
    /// [`REVOCATION_ROUND_BATCHES`] batches, so the scheduler's round also drives the other
    /// revocations' sinks when a great many are due (after a restart). Every
    /// [`REVOCATION_BATCHES_PER_FLUSH`] batches are made durable by one flush. Returns how many.
    pub fn revoke_expired(&self) -> Result<usize, WorkflowError> {
        let mut applied = Vec::new();
        let result = self.revoke_expired_into(&mut applied);
        // What was applied is made durable and published even if a later batch failed.
        self.audit.settle_all(applied)?;
        result
    }

    pub(in crate::service) fn revoke_expired_into(
        &self,
        applied: &mut Vec<Applied>,
    ) -> Result<usize, WorkflowError> {
        let mut total = 0;
        // Scopes' revocation settings, read once per call rather than once per grant.
        let mut specs: HashMap<String, RevocationSpec> = HashMap::new();
        // Each page starts after the last key of the one before: the queue's head is deleted
        // as it goes, and this does not read those keys again.
        let mut from = Vec::new();
        for _ in 0..REVOCATION_ROUND_BATCHES {
            let now = self.clock.now();
            let page = self
                .store
                .scan_from(Keyspace::GrantExpiry, &from, REVOCATION_BATCH)?;
            let due: Vec<(Vec<u8>, String)> = page
                .iter()
                .filter_map(|(k, _)| {
                    let (t, id) = parse_expiry_key(k)?;
                    (t <= now).then(|| (k.clone(), id))
                })
                .collect();
            if due.is_empty() {
                return Ok(total);
            }
            total += self.revoke_due(&due, now, &mut specs, applied)?;
            if due.len() < page.len() {
                return Ok(total);
            }
            if let Some((last, _)) = due.last() {
                from = last.clone();
                from.push(0);
            }
            if applied.len() >= REVOCATION_BATCHES_PER_FLUSH {
                self.audit.settle_all(std::mem::take(applied))?;
            }
        }
        Ok(total)
    }

    /// Revokes the expired grants `due` (expiry-queue key and grant id) in one transaction,
    /// applied into `applied` (not yet durable). Queue entries of grants no longer active are
    /// dropped. Returns how many grants it revoked.
    pub(in crate::service) fn revoke_due(
        &self,
        due: &[(Vec<u8>, String)],
        now: Timestamp,
        specs: &mut HashMap<String, RevocationSpec>,
        applied: &mut Vec<Applied>,
    ) -> Result<usize, WorkflowError> {
        let mut conflicts = 0;
        loop {
            let mut txn = Txn::new();
            self.fence(&mut txn);
            let mut events = Vec::new();
            let mut expired = Vec::new();
            let mut tokens = Vec::new();
            let mut requests = Vec::new();
            for (key, id) in due {
                let raw = self.store.get(Keyspace::Grants, id.as_bytes())?;
                let Some(raw) = raw else {
                    txn.delete(Keyspace::GrantExpiry, key.clone());
                    continue;
                };
                let grant: Grant = store::decode(&raw)?;
                if grant.state != GrantState::Active {
                    txn.delete(Keyspace::GrantExpiry, key.clone());
                    continue;
                }
                if let Some(hash) = &grant.bearer_sha256 {
                    tokens.push(hash.clone());
                }
                requests.push(grant.request_id.clone());
                let spec = match specs.get(&grant.scope) {
                    Some(spec) => spec,
                    None => {
                        let spec = self.scope_revocation(&grant.scope)?;
                        specs.entry(grant.scope.clone()).or_insert(spec)
                    }
                };
                let updated =
                    self.start_revocation((grant, raw), "expired".to_owned(), spec, now, &mut txn)?;
                if updated.state == GrantState::Revoked {
                    // Complete at once (nothing outside latchkey to confirm): one record for
                    // the batch, not one per grant.
                    expired.push(serde_json::json!({
                        "grant": updated.id,
                        "scope": updated.scope,
                        "ssh_serial": updated.ssh.as_ref().map(|s| s.serial),
                    }));
                } else {
                    events.push(revocation_event(&updated, spec, Actor::Daemon));
                }
            }
            if !expired.is_empty() {
                events.push(Event {
                    event: "grants.expired",
                    actor: Actor::Daemon,
                    subject: "grants".to_owned(),
                    details: serde_json::json!({
                        "reason": "expired",
                        "grants": expired,
                    }),
                    evidence: None,
                });
            }
            match self.audit.apply_events(txn, events) {
                Ok(batch) => applied.push(batch),
                Err(e) => {
                    let e = WorkflowError::from(e);
                    // An early revocation of one of these grants committed first: re-read.
                    if e.is_conflict() && conflicts < 8 {
                        conflicts += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
            for hash in tokens {
                self.index.remove(&hash);
            }
            return Ok(requests.len());
        }
    }

    /// After downtime, before anything is served: starts the revocation of every grant that
    /// expired while the daemon was down. Those whose revocation needs confirming outside
    /// latchkey (a consumer to tell, a hook to run), and those whose queue entry predates
    /// [`ExpiryEntry`], are revoked one by one now, as the scheduler would. The others need
    /// nothing but latchkey's own state, and introspection already answers inactive for them:
    /// one audit record, `grants.expired_while_down` (reason, `through`, count), revokes them
    /// all, and the scheduler rewrites each grant after serving starts (shown as revoking
    /// until then), auditing them in its usual `grants.expired` batches.
    pub fn revoke_expired_at_start(&self) -> Result<StartRevocations, WorkflowError> {
        let now = self.clock.now();
        let end = expiry_key(now.plus(Duration::from_millis(1)), "");
        let mut specs: HashMap<String, RevocationSpec> = HashMap::new();
        let mut outside = HashMap::<String, bool>::new();
        let mut one_by_one = Vec::new();
        let mut deferred = 0usize;
        let mut from = Vec::new();
        'scan: loop {
            let page = self
                .store
                .scan_from(Keyspace::GrantExpiry, &from, REVOCATION_SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (key, value) in page {
                if key >= end {
                    break 'scan;
                }
                let confirmed_outside = match ExpiryEntry::decode(&value) {
                    None => true,
                    Some(entry) => match outside.get(&entry.scope) {
                        Some(&yes) => yes,
                        None => {
                            let spec = self.scope_revocation(&entry.scope)?;
                            let yes = !spec.consumers.is_empty() || !spec.hook.is_empty();
                            specs.insert(entry.scope.clone(), spec);
                            outside.insert(entry.scope, yes);
                            yes
                        }
                    },
                };
                if confirmed_outside {
                    if let Some((_, id)) = parse_expiry_key(&key) {
                        one_by_one.push((key, id));
                    }
                } else {
                    deferred += 1;
                }
            }
            from = next;
        }
        let mut revoked = 0;
        let mut applied = Vec::new();
        let result =
            one_by_one
                .chunks(REVOCATION_BATCH)
                .try_for_each(|due| -> Result<(), WorkflowError> {
                    revoked += self.revoke_due(due, now, &mut specs, &mut applied)?;
                    if applied.len() >= REVOCATION_BATCHES_PER_FLUSH {
                        self.audit.settle_all(std::mem::take(&mut applied))?;
                    }
                    Ok(())
                });
        self.audit.settle_all(applied)?;
        result?;
        if deferred > 0 {
            self.audit.commit_events(
                Txn::new(),
                vec![Event {
                    event: "grants.expired_while_down",
                    actor: Actor::Daemon,
                    subject: "grants".to_owned(),
                    details: serde_json::json!({
                        "reason": "expired",
                        "through": now,
                        "grants": deferred,
                    }),
                    evidence: None,
                }],
            )?;
        }
        Ok(StartRevocations { revoked, deferred })
    }
}
