//! Revocation sinks: the KRL published (atomically, keeping every serial it listed), hooks
//! run and retried with backoff, acknowledgements, each revocation confirmed per sink.

use std::path::Path;
use std::time::Duration;

use crate::audit::{Actor, Event};
use crate::base::clock::Timestamp;
use crate::base::constants::{SINK_RETRY_INITIAL, SINK_RETRY_MAX};
use crate::credential::krl;
use crate::domain::grant::{Grant, GrantState, Revocation, Sink, SinkStatus};
use crate::service::authority::Authority;
use crate::service::revocation::*;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, StoreError, Txn};

/// The KRL sink's state: where the KRL is written, and what `krl_serials` holds (serial →
/// valid-before, ms), read whole at the first publication and then kept by the scheduler
/// (`None` until then). Only the sinks touch it.
#[derive(Debug)]
pub(in crate::service) struct KrlSink {
    path: std::path::PathBuf,
    listed: std::sync::Mutex<Option<std::collections::BTreeMap<u64, i64>>>,
}

impl KrlSink {
    /// A sink writing the KRL to `path`; nothing is read until the first publication.
    pub(in crate::service) fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            listed: std::sync::Mutex::new(None),
        }
    }
}

/// A hook to run for one grant.
#[derive(Clone, Debug)]
pub struct HookJob {
    /// The grant.
    pub grant_id: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Kill after.
    pub timeout: Duration,
    /// Environment: `LATCHKEY_GRANT_ID`, `LATCHKEY_SCOPE`, … (nothing else is inherited).
    pub env: Vec<(String, String)>,
}

/// What the scheduler should do next.
#[derive(Clone, Debug, Default)]
pub struct DriveOutcome {
    /// Hooks due now.
    pub hooks: Vec<HookJob>,
    /// The earliest time something else falls due (a retry, a deadline).
    pub next_due: Option<Timestamp>,
}

pub(in crate::service) fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.min(16);
    SINK_RETRY_INITIAL
        .saturating_mul(factor)
        .min(SINK_RETRY_MAX)
}

pub(in crate::service) fn pending(sink: Sink, now: Timestamp) -> SinkStatus {
    SinkStatus {
        sink,
        confirmed_at: None,
        detail: String::new(),
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
    }
}

pub(in crate::service) fn confirmed(sink: Sink, now: Timestamp, detail: &str) -> SinkStatus {
    SinkStatus {
        sink,
        confirmed_at: Some(now),
        detail: detail.to_owned(),
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
    }
}

pub(in crate::service) fn sink_summary(r: &Revocation) -> serde_json::Value {
    serde_json::Value::Array(
        r.sinks
            .iter()
            .map(|s| {
                serde_json::json!({
                    "sink": s.sink.label(),
                    "confirmed_at": s.confirmed_at,
                    "detail": s.detail,
                    "attempts": s.attempts,
                    "last_error": s.last_error,
                })
            })
            .collect(),
    )
}

pub(in crate::service) fn next_due(grant: &Grant, r: &Revocation) -> Option<Timestamp> {
    let retries = r
        .sinks
        .iter()
        .filter(|s| s.confirmed_at.is_none() && !matches!(s.sink, Sink::Consumer { .. }))
        .map(|s| s.next_attempt_at);
    let deadline = (grant.state == GrantState::Revoking).then_some(r.deadline);
    retries.chain(deadline).min()
}

pub(in crate::service) fn hook_env(grant: &Grant, reason: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("LATCHKEY_GRANT_ID".to_owned(), grant.id.clone()),
        ("LATCHKEY_REQUEST_ID".to_owned(), grant.request_id.clone()),
        ("LATCHKEY_SCOPE".to_owned(), grant.scope.clone()),
        ("LATCHKEY_REQUESTER".to_owned(), grant.requester.label()),
        (
            "LATCHKEY_EXPIRES_AT".to_owned(),
            grant.expires_at.to_string(),
        ),
        ("LATCHKEY_REASON".to_owned(), reason.to_owned()),
    ];
    if let Some(ssh) = &grant.ssh {
        env.push(("LATCHKEY_SSH_SERIAL".to_owned(), ssh.serial.to_string()));
        env.push((
            "LATCHKEY_SSH_PRINCIPALS".to_owned(),
            ssh.principals.join(","),
        ));
    }
    env
}

impl Authority {
    /// Writes the KRL from the revoked, not yet expired serials (pruning expired ones), reads
    /// it back, and returns the serials it holds.
    ///
    /// `krl_serials` is read whole once; after that the KRL is kept from `revoking`, the
    /// serials of the grants still waiting for the KRL: `krl_serials` gains an entry only in
    /// the transaction that starts such a grant's revocation, and the grant waits (in
    /// `revocations_pending`) until a publication read its serial back.
    pub(in crate::service) fn publish_krl(
        &self,
        now: Timestamp,
        revoking: &[(u64, i64)],
    ) -> Result<Vec<u64>, WorkflowError> {
        let mut listed = self
            .krl
            .listed
            .lock()
            .map_err(|_| WorkflowError::Sink("KRL state poisoned by a panic".into()))?;
        let listed =
            match &mut *listed {
                Some(listed) => {
                    // An expired one was pruned from `krl_serials` already, or is now.
                    listed.extend(revoking.iter().copied().filter(|(_, valid_before)| {
                        Timestamp::from_unix_millis(*valid_before) > now
                    }));
                    listed
                }
                None => {
                    let mut stored = self.stored_krl_serials()?;
                    self.keep_published_serials(&mut stored, now)?;
                    listed.insert(stored)
                }
            };
        let mut prune = Txn::new();
        self.fence(&mut prune);
        let mut serials = Vec::with_capacity(listed.len());
        for (&serial, &valid_before) in listed.iter() {
            if Timestamp::from_unix_millis(valid_before) <= now {
                prune
                    .require_equals(
                        Keyspace::KrlSerials,
                        serial.to_be_bytes(),
                        valid_before.to_be_bytes(),
                    )
                    .delete(Keyspace::KrlSerials, serial.to_be_bytes());
            } else {
                serials.push(serial);
            }
        }
        let blob = self.ca_key_blob()?;
        let version = u64::try_from(now.unix_millis()).unwrap_or(0);
        let bytes = krl::encode(&blob, &serials, version, version / 1000);
        krl::write_atomically(&self.krl.path, &bytes)
            .map_err(|e| WorkflowError::Sink(e.to_string()))?;
        // Pruning is the leader's (on a shared store the others only write their own KRL).
        if !prune.writes().is_empty() && self.leads() {
            self.store.commit(&prune)?;
            listed.retain(|_, valid_before| Timestamp::from_unix_millis(*valid_before) > now);
        }
        krl::read_serials(&self.krl.path, &blob).map_err(|e| WorkflowError::Sink(e.to_string()))
    }

    /// The KRL never shrinks before a certificate expires: serials the published KRL lists but
    /// `krl_serials` does not (a store rolled back, restored or damaged) are kept, stored with
    /// the latest valid-before such a certificate could have (the KRL's generation time plus
    /// the longest TTL any grant may have), and dropped once that has passed.
    pub(in crate::service) fn keep_published_serials(
        &self,
        stored: &mut std::collections::BTreeMap<u64, i64>,
        now: Timestamp,
    ) -> Result<(), WorkflowError> {
        let blob = self.ca_key_blob()?;
        let Some((version, serials)) = krl::read_published(&self.krl.path, &blob)
            .map_err(|e| WorkflowError::Sink(e.to_string()))?
        else {
            return Ok(());
        };
        let generated = i64::try_from(version).unwrap_or(i64::MAX);
        let max_ttl = i64::try_from(crate::base::constants::MAX_GRANT_TTL.as_millis()).unwrap_or(0);
        let valid_before = generated.saturating_add(max_ttl);
        if Timestamp::from_unix_millis(valid_before) <= now {
            return Ok(());
        }
        let mut txn = Txn::new();
        let mut kept = 0usize;
        for serial in serials {
            if stored.contains_key(&serial) {
                continue;
            }
            txn.require_absent(Keyspace::KrlSerials, serial.to_be_bytes())
                .put_raw(
                    Keyspace::KrlSerials,
                    serial.to_be_bytes(),
                    valid_before.to_be_bytes(),
                );
            stored.insert(serial, valid_before);
            kept += 1;
        }
        if kept > 0 {
            self.store.commit(&txn)?;
            tracing::warn!(
                serials = kept,
                krl = %self.krl.path.display(),
                "the published KRL revokes serials the trust store does not know (rolled back or damaged?): kept in the KRL until their certificates must have expired"
            );
        }
        Ok(())
    }

    /// Every entry of `krl_serials`: serial → valid-before (ms).
    pub(in crate::service) fn stored_krl_serials(
        &self,
    ) -> Result<std::collections::BTreeMap<u64, i64>, WorkflowError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            keyspace: Keyspace::KrlSerials.name(),
            detail: detail.into(),
        };
        let mut listed = std::collections::BTreeMap::new();
        for (key, value) in self
            .store
            .scan_from(Keyspace::KrlSerials, b"", usize::MAX)?
        {
            let serial = u64::from_be_bytes(
                key.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("serial length"))?,
            );
            let valid_before = i64::from_be_bytes(
                value
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("time length"))?,
            );
            listed.insert(serial, valid_before);
        }
        Ok(listed)
    }

    /// Writes the KRL now (at start, so sshd's `RevokedKeys` file always exists).
    pub fn publish_krl_now(&self) -> Result<usize, WorkflowError> {
        Ok(self.publish_krl(self.clock.now(), &[])?.len())
    }

    pub(in crate::service) fn ca_key_blob(&self) -> Result<Vec<u8>, WorkflowError> {
        self.keys
            .ssh_ca
            .public_key()
            .to_bytes()
            .map_err(|e| WorkflowError::Sink(format!("SSH CA public key: {e}")))
    }

    /// The KRL path sshd's `RevokedKeys` should name.
    pub fn krl_path(&self) -> &Path {
        &self.krl.path
    }

    /// Works the revocation queue: publishes the KRL if a grant waits for it, marks what is
    /// confirmed, completes or flags unconfirmed revocations. Returns the hooks to run now and
    /// when to come back.
    pub fn drive_revocations(&self) -> Result<DriveOutcome, WorkflowError> {
        let now = self.clock.now();
        let grants = self.pending_revocations()?;
        let published = self.publish_krl_if_due(&grants, now);
        let mut outcome = DriveOutcome::default();
        // Each grant's update is its own transaction; they are applied after the loop and made
        // durable by one flush for the whole round (group commit).
        let mut writes: Vec<(Txn, Vec<Event>)> = Vec::new();
        for (grant, raw) in grants {
            if let Some(write) =
                self.drive_grant(grant, raw, published.as_ref(), now, &mut outcome)?
            {
                writes.push(write);
            }
        }
        self.apply_round(writes)?;
        Ok(outcome)
    }

    /// The grants whose revocation is not complete, with their stored bytes.
    fn pending_revocations(&self) -> Result<Vec<(Grant, Vec<u8>)>, WorkflowError> {
        let ids: Vec<String> = self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        let mut grants = Vec::new();
        for id in ids {
            if let Some(raw) = self.store.get(Keyspace::Grants, id.as_bytes())? {
                grants.push((store::decode::<Grant>(&raw)?, raw));
            }
        }
        Ok(grants)
    }

    /// Publishes the KRL if a grant waits for it now: the serials it read back, or why not.
    fn publish_krl_if_due(
        &self,
        grants: &[(Grant, Vec<u8>)],
        now: Timestamp,
    ) -> Option<Result<Vec<u64>, WorkflowError>> {
        let waits_for_krl = |g: &Grant, due: bool| {
            g.revocation.as_ref().is_some_and(|r| {
                r.sinks.iter().any(|s| {
                    s.sink == Sink::Krl
                        && s.confirmed_at.is_none()
                        && (!due || s.next_attempt_at <= now)
                })
            })
        };
        if !grants.iter().any(|(g, _)| waits_for_krl(g, true)) {
            return None;
        }
        let revoking: Vec<(u64, i64)> = grants
            .iter()
            .filter(|(g, _)| waits_for_krl(g, false))
            .filter_map(|(g, _)| {
                g.ssh
                    .as_ref()
                    .map(|ssh| (ssh.serial, g.expires_at.unix_millis()))
            })
            .collect();
        Some(self.publish_krl(now, &revoking))
    }

    /// Works the due sinks of one grant; returns its update and audit events if it changed.
    fn drive_grant(
        &self,
        mut grant: Grant,
        raw: Vec<u8>,
        published: Option<&Result<Vec<u64>, WorkflowError>>,
        now: Timestamp,
        outcome: &mut DriveOutcome,
    ) -> Result<Option<(Txn, Vec<Event>)>, WorkflowError> {
        let Some(mut revocation) = grant.revocation.take() else {
            return Ok(None);
        };
        let before = revocation.clone();
        let before_state = grant.state;
        let mut events = Vec::new();
        for sink in &mut revocation.sinks {
            if sink.confirmed_at.is_some() || sink.next_attempt_at > now {
                continue;
            }
            match (&sink.sink, &published, &grant.ssh) {
                (Sink::Krl, Some(Ok(serials)), Some(ssh)) => {
                    if serials.contains(&ssh.serial) {
                        sink.confirmed_at = Some(now);
                        sink.detail = format!(
                            "serial {} read back from {}",
                            ssh.serial,
                            self.krl.path.display()
                        );
                        events.push(("krl", None));
                    } else {
                        sink.attempts += 1;
                        sink.last_error = Some("serial missing after re-reading".into());
                        sink.next_attempt_at = now.plus(backoff(sink.attempts));
                    }
                }
                (Sink::Krl, Some(Err(e)), _) => {
                    sink.attempts += 1;
                    sink.last_error = Some(e.to_string());
                    sink.next_attempt_at = now.plus(backoff(sink.attempts));
                    events.push(("krl", Some(e.to_string())));
                }
                (Sink::Hook, _, _) => {
                    let spec = self.scope_revocation(&grant.scope)?;
                    outcome.hooks.push(HookJob {
                        grant_id: grant.id.clone(),
                        command: spec.hook,
                        timeout: Duration::from_secs(spec.hook_timeout_secs),
                        env: hook_env(&grant, &revocation_reason(&before)),
                    });
                    // Not due again until this attempt reports (or times out).
                    sink.next_attempt_at =
                        now.plus(Duration::from_secs(spec.hook_timeout_secs + 1));
                }
                _ => {}
            }
        }
        let mut names = Vec::new();
        for (sink, error) in events {
            names.push(match error {
                None => Event {
                    event: "revocation.sink_confirmed",
                    actor: Actor::Daemon,
                    subject: format!("grant/{}", grant.id),
                    details: serde_json::json!({ "sink": sink }),
                    evidence: None,
                },
                Some(error) => Event {
                    event: "revocation.sink_failed",
                    actor: Actor::Daemon,
                    subject: format!("grant/{}", grant.id),
                    details: serde_json::json!({ "sink": sink, "error": error }),
                    evidence: None,
                },
            });
        }
        self.settle(&mut grant, &mut revocation, now, &mut names);
        if let Some(next) = next_due(&grant, &revocation) {
            outcome.next_due = Some(outcome.next_due.map_or(next, |n: Timestamp| n.min(next)));
        }
        if revocation == before && grant.state == before_state {
            return Ok(None);
        }
        let id = grant.id.clone();
        let complete = grant.state == GrantState::Revoked;
        grant.revocation = Some(revocation);
        let mut txn = Txn::new();
        self.fence(&mut txn);
        txn.require_equals(Keyspace::Grants, id.as_bytes(), raw)
            .put(id.as_bytes(), &grant)?;
        if complete {
            txn.delete(Keyspace::RevocationsPending, id.as_bytes());
        }
        Ok(Some((txn, names)))
    }

    /// Applies one round's updates, makes what was applied durable and published even if a
    /// later one failed, and reports the first failure.
    fn apply_round(&self, writes: Vec<(Txn, Vec<Event>)>) -> Result<(), WorkflowError> {
        let mut applied = Vec::new();
        let mut plain = false;
        let mut failed = None;
        for (txn, names) in writes {
            let result = if names.is_empty() {
                plain = true;
                self.store.apply(&txn).map_err(WorkflowError::from)
            } else {
                self.audit
                    .apply_events(txn, names)
                    .map(|a| applied.push(a))
                    .map_err(WorkflowError::from)
            };
            if let Err(e) = result {
                failed = Some(e);
                break;
            }
        }
        // What was applied is made durable and published even if a later write failed.
        self.audit.settle_all(applied)?;
        if plain {
            self.store.flush()?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Completes the revocation if every sink confirmed, or flags it past its deadline.
    pub(in crate::service) fn settle(
        &self,
        grant: &mut Grant,
        revocation: &mut Revocation,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) {
        if revocation.complete() {
            revocation.completed_at = Some(now);
            grant.state = GrantState::Revoked;
            events.push(Event {
                event: "grant.revoked",
                actor: Actor::Daemon,
                subject: format!("grant/{}", grant.id),
                details: serde_json::json!({
                    "reason": revocation.reason,
                    "sinks": sink_summary(revocation),
                }),
                evidence: None,
            });
        } else if now >= revocation.deadline && grant.state == GrantState::Revoking {
            grant.state = GrantState::RevocationUnconfirmed;
            let missing: Vec<String> = revocation
                .sinks
                .iter()
                .filter(|s| s.confirmed_at.is_none())
                .map(|s| s.sink.label())
                .collect();
            tracing::error!(
                grant = %grant.id,
                scope = %grant.scope,
                missing = ?missing,
                "revocation unconfirmed past its deadline; still retrying"
            );
            events.push(Event {
                event: "grant.revocation_unconfirmed",
                actor: Actor::Daemon,
                subject: format!("grant/{}", grant.id),
                details: serde_json::json!({
                    "deadline": revocation.deadline,
                    "unconfirmed": missing,
                    "sinks": sink_summary(revocation),
                }),
                evidence: None,
            });
        }
    }

    /// Records a hook's result for a grant.
    pub fn hook_finished(
        &self,
        job: &HookJob,
        result: Result<(), &str>,
    ) -> Result<(), WorkflowError> {
        self.update_sink(&job.grant_id, |sink, now| {
            if sink.sink != Sink::Hook || sink.confirmed_at.is_some() {
                return None;
            }
            sink.attempts += 1;
            Some(match &result {
                Ok(()) => {
                    sink.confirmed_at = Some(now);
                    sink.detail = "hook exited 0".into();
                    sink.last_error = None;
                    Event {
                        event: "revocation.sink_confirmed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", job.grant_id),
                        details: serde_json::json!({ "sink": "hook", "attempts": sink.attempts }),
                        evidence: None,
                    }
                }
                Err(error) => {
                    tracing::warn!(grant = %job.grant_id, attempt = sink.attempts, "revocation hook failed: {error}");
                    sink.last_error = Some((*error).to_owned());
                    sink.next_attempt_at = now.plus(backoff(sink.attempts));
                    Event {
                        event: "revocation.sink_failed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", job.grant_id),
                        details: serde_json::json!({
                            "sink": "hook",
                            "attempt": sink.attempts,
                            "error": error,
                            "next_attempt_at": sink.next_attempt_at,
                        }),
                        evidence: None,
                    }
                }
            })
        })
        .map(|_| ())
    }

    /// Applies `change` to the first matching sink of a grant being revoked, with its event,
    /// then settles the revocation. Returns the grant's state afterwards.
    pub(in crate::service) fn update_sink(
        &self,
        grant_id: &str,
        mut change: impl FnMut(&mut SinkStatus, Timestamp) -> Option<Event>,
    ) -> Result<Option<GrantState>, WorkflowError> {
        for _attempt in 0..8 {
            let now = self.clock.now();
            let raw = self
                .store
                .get(Keyspace::Grants, grant_id.as_bytes())?
                .ok_or_else(|| WorkflowError::UnknownGrant(grant_id.to_owned()))?;
            let mut grant: Grant = store::decode(&raw)?;
            let Some(mut revocation) = grant.revocation.take() else {
                return Ok(None);
            };
            let Some(event) = revocation.sinks.iter_mut().find_map(|s| change(s, now)) else {
                return Ok(None);
            };
            let mut events = vec![event];
            self.settle(&mut grant, &mut revocation, now, &mut events);
            let complete = grant.state == GrantState::Revoked;
            grant.revocation = Some(revocation);
            let mut txn = Txn::new();
            self.fence(&mut txn);
            txn.require_equals(Keyspace::Grants, grant_id.as_bytes(), raw)
                .put(grant_id.as_bytes(), &grant)?;
            if complete {
                txn.delete(Keyspace::RevocationsPending, grant_id.as_bytes());
            }
            match self.audit.commit_events(txn, events) {
                Ok(_) => return Ok(Some(grant.state)),
                Err(e) => {
                    let e = WorkflowError::from(e);
                    if !e.is_conflict() {
                        return Err(e);
                    }
                }
            }
        }
        Err(StoreError::Conflict(format!("grant {grant_id} kept changing")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::constants::{SINK_RETRY_INITIAL, SINK_RETRY_MAX};

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        assert_eq!(backoff(0), SINK_RETRY_INITIAL);
        assert_eq!(backoff(1), SINK_RETRY_INITIAL * 2);
        assert_eq!(backoff(30), SINK_RETRY_MAX);
    }
}
