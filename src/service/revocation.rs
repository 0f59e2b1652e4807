//! Revocation: early revocation and relinquishing, the start of every revocation, and what a
//! sink or a holder sees of it. The expiry queue is [`super::expiry`]; the sinks that must
//! confirm each revocation are [`super::sinks`].

use std::time::Duration;

use crate::audit::{Actor, Event};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::domain::grant::revoke_digest;
use crate::domain::grant::{Grant, GrantState, Revocation, Sink, expiry_key};
use crate::domain::scope::{RevocationSpec, Scope};
use crate::service::authority::Authority;
use crate::service::operators::OperatorError;
use crate::service::sinks::*;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, Txn};

/// Counts for metrics and `doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevocationCounts {
    /// Revocations with sinks still to confirm, within their deadline.
    pub revoking: u64,
    /// Past their deadline.
    pub unconfirmed: u64,
}

/// The audit event of a revocation just started on `grant`: `grant.revoked` if it completed at
/// once, else `grant.revoking`.
pub(in crate::service) fn revocation_event(
    grant: &Grant,
    spec: &RevocationSpec,
    actor: Actor,
) -> Event {
    let revocation = grant.revocation.as_ref();
    Event {
        event: if grant.state == GrantState::Revoked {
            "grant.revoked"
        } else {
            "grant.revoking"
        },
        actor,
        subject: format!("grant/{}", grant.id),
        details: serde_json::json!({
            "reason": revocation.map(|r| r.reason.as_str()),
            "scope": grant.scope,
            "ssh_serial": grant.ssh.as_ref().map(|s| s.serial),
            "consumers": spec.consumers,
            "deadline": revocation.map(|r| r.deadline),
            "sinks": revocation.map(sink_summary),
        }),
        evidence: None,
    }
}

/// Runs a hook with its environment, killing it at the timeout. `Ok` means exit status 0.
pub async fn run_hook(job: &HookJob) -> Result<(), String> {
    let Some((program, args)) = job.command.split_first() else {
        return Err("empty hook command".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(job.timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("timed out after {:?} (killed)", job.timeout)),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or_default();
            Err(format!(
                "{} {}",
                out.status,
                last.chars().take(200).collect::<String>()
            ))
        }
    }
}

/// A grant's state at `now`: an active grant past its expiry is shown as revoking until the
/// scheduler has revoked it (it is already inactive).
pub fn effective_state(grant: &Grant, now: Timestamp) -> GrantState {
    if grant.state == GrantState::Active && now >= grant.expires_at {
        GrantState::Revoking
    } else {
        grant.state
    }
}

pub(in crate::service) fn holds(caller: &Caller, grant: &Grant) -> bool {
    grant.requester.is(caller)
}

pub(in crate::service) fn check_reason(reason: &str) -> Result<(), WorkflowError> {
    if reason.trim().chars().count() < 3 || reason.len() > crate::base::constants::MAX_REASON_LEN {
        return Err(WorkflowError::RevokeReason);
    }
    Ok(())
}

pub(in crate::service) fn revocation_reason(r: &Revocation) -> String {
    r.reason.clone()
}

/// Wakes the revocation scheduler (a grant was minted or revoked). Only
/// [`Authority::wake_scheduler`] and [`Authority::scheduler_woken`] touch it.
#[derive(Debug, Default)]
pub(in crate::service) struct SchedulerWake(tokio::sync::Notify);

impl Authority {
    pub(in crate::service) fn scope_revocation(
        &self,
        scope: &str,
    ) -> Result<RevocationSpec, WorkflowError> {
        Ok(store::read::<Scope>(self.store.as_ref(), scope.as_bytes())?
            .map(|s| s.revocation)
            .unwrap_or_default())
    }

    /// Starts revoking `grant` (stored as `raw`) into `txn`: the sinks it needs, the queue
    /// entries. Returns the updated grant; [`revocation_event`] is its audit event.
    pub(in crate::service) fn start_revocation(
        &self,
        (mut grant, raw): (Grant, Vec<u8>),
        reason: String,
        spec: &RevocationSpec,
        now: Timestamp,
        txn: &mut Txn,
    ) -> Result<Grant, WorkflowError> {
        let mut sinks = vec![confirmed(
            Sink::Internal,
            now,
            "introspection answers inactive",
        )];
        if let Some(ssh) = &grant.ssh {
            if now < grant.expires_at {
                sinks.push(pending(Sink::Krl, now));
                txn.put_raw(
                    Keyspace::KrlSerials,
                    ssh.serial.to_be_bytes(),
                    grant.expires_at.unix_millis().to_be_bytes(),
                );
            } else {
                sinks.push(confirmed(
                    Sink::Krl,
                    now,
                    "certificate past its valid-before: sshd refuses it",
                ));
            }
        }
        for workload in &spec.consumers {
            sinks.push(pending(
                Sink::Consumer {
                    workload: workload.clone(),
                },
                now,
            ));
        }
        if !spec.hook.is_empty() {
            sinks.push(pending(Sink::Hook, now));
        }
        let mut revocation = Revocation {
            reason,
            started_at: now,
            deadline: now.plus(Duration::from_secs(spec.confirm_within_secs)),
            completed_at: None,
            sinks,
        };
        let id = grant.id.clone();
        txn.require_equals(Keyspace::Grants, id.as_bytes(), raw)
            .delete(Keyspace::GrantExpiry, expiry_key(grant.expires_at, &id));
        if revocation.complete() {
            revocation.completed_at = Some(now);
            grant.state = GrantState::Revoked;
        } else {
            grant.state = GrantState::Revoking;
            txn.put_raw(Keyspace::RevocationsPending, id.as_bytes(), b"".to_vec());
        }
        grant.revocation = Some(revocation);
        // Nobody may collect a credential that is being revoked.
        grant.sealed_bearer = None;
        txn.put(id.as_bytes(), &grant)?;
        Ok(grant)
    }

    /// A consumer workload acknowledges that it acted on a revocation.
    pub fn acknowledge_revocation(
        &self,
        caller: &Caller,
        grant_id: &str,
    ) -> Result<GrantState, WorkflowError> {
        let Caller::Workload(w) = caller else {
            return Err(WorkflowError::NotConsumer(grant_id.to_owned()));
        };
        let name = w.name.clone();
        let mut already = false;
        let state = self.update_sink(grant_id, |sink, now| {
            match &sink.sink {
                Sink::Consumer { workload } if *workload == name => {}
                _ => return None,
            }
            if sink.confirmed_at.is_some() {
                already = true;
                return None;
            }
            sink.attempts += 1;
            sink.confirmed_at = Some(now);
            sink.detail = format!("acknowledged by workload/{name}");
            Some(Event {
                event: "revocation.acknowledged",
                actor: Actor::Workload { name: name.clone() },
                subject: format!("grant/{grant_id}"),
                details: serde_json::json!({ "sink": format!("consumer/{name}") }),
                evidence: None,
            })
        })?;
        match state {
            Some(state) => Ok(state),
            None if already => Ok(self.grant(grant_id)?.state),
            None => Err(WorkflowError::NotConsumer(grant_id.to_owned())),
        }
    }

    /// Grants whose revocation `workload` must still acknowledge.
    pub fn revocations_for(&self, caller: &Caller) -> Result<Vec<Grant>, WorkflowError> {
        let Caller::Workload(w) = caller else {
            return Err(WorkflowError::NotConsumer(String::new()));
        };
        let mut out = Vec::new();
        for (key, _) in self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
        {
            let Some(grant) = store::read::<Grant>(self.store.as_ref(), &key)? else {
                continue;
            };
            let waiting = grant.revocation.as_ref().is_some_and(|r| {
                r.sinks.iter().any(|s| {
                    s.confirmed_at.is_none()
                        && matches!(&s.sink, Sink::Consumer { workload } if *workload == w.name)
                })
            });
            if waiting {
                out.push(grant);
            }
        }
        self.settled(out)
    }

    /// Starts an early revocation by an operator: returns assertion options bound to the grant
    /// and the reason. Any operator with an active key may revoke: revoking is always safe.
    pub fn begin_revoke(
        &self,
        caller: &Caller,
        grant_id: &str,
        operator: &str,
        reason: &str,
    ) -> Result<(crate::domain::operator::Opened, [u8; 32]), WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(OperatorError::LocalOnly.into());
        }
        self.revocable(grant_id)?;
        check_reason(reason)?;
        let digest = revoke_digest(grant_id, reason);
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    pub(in crate::service) fn revocable(
        &self,
        grant_id: &str,
    ) -> Result<(Grant, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Grants, grant_id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownGrant(grant_id.to_owned()))?;
        let grant: Grant = store::decode(&raw)?;
        // An expired grant is revoking from its expiry on, even before the scheduler (or,
        // after a restart, the background rewrite) has written that down: it is the expiry's
        // to revoke, not an operator's or its holder's.
        let state = effective_state(&grant, self.clock.now());
        if state != GrantState::Active {
            return Err(WorkflowError::GrantNotActive {
                id: grant_id.to_owned(),
                state: state.name(),
            });
        }
        Ok((grant, raw))
    }

    /// Revokes a grant early with an operator's assertion.
    pub fn revoke(
        &self,
        caller: &Caller,
        grant_id: &str,
        reason: &str,
        ceremony_id: &str,
        credential_json: &str,
    ) -> Result<Grant, WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(OperatorError::LocalOnly.into());
        }
        check_reason(reason)?;
        let (grant, raw) = self.revocable(grant_id)?;
        let prepared = self.operators().prepare_assertion(
            ceremony_id,
            &revoke_digest(grant_id, reason),
            credential_json,
            "grant.revoke_requested",
            format!("grant/{grant_id}"),
        )?;
        let operator = prepared.verified.operator.clone();
        let mut event = prepared.event;
        if let Some(map) = event.details.as_object_mut() {
            map.insert("reason".into(), reason.into());
            map.insert("via".into(), caller.via().into());
        }
        let mut txn = prepared.txn;
        let mut events = vec![event];
        self.finish_early(
            grant,
            raw,
            format!("revoked by operator/{operator}: {reason}"),
            Actor::Operator { name: operator },
            &mut txn,
            &mut events,
        )
    }

    /// The holder gives a grant up (a workload over mTLS, or the operator's local user).
    pub fn relinquish(&self, caller: &Caller, grant_id: &str) -> Result<Grant, WorkflowError> {
        let (grant, raw) = match self.revocable(grant_id) {
            Ok(found) => found,
            // Do not tell a stranger whether the grant exists or is active.
            Err(e) => {
                if let Ok(g) = self.grant(grant_id)
                    && !holds(caller, &g)
                {
                    return Err(WorkflowError::NotHolder(grant_id.to_owned()));
                }
                return Err(e);
            }
        };
        if !holds(caller, &grant) {
            return Err(WorkflowError::NotHolder(grant_id.to_owned()));
        }
        let actor = match caller {
            Caller::Workload(w) => Actor::Workload {
                name: w.name.clone(),
            },
            Caller::Local(peer) => Actor::Local { uid: peer.uid },
            // `holds` let it through: the session's operator, who asked.
            Caller::Remote(peer) => Actor::Operator {
                name: peer.session_operator.clone().unwrap_or_default(),
            },
        };
        let label = grant.requester.label();
        let mut txn = Txn::new();
        let mut events = Vec::new();
        self.finish_early(
            grant,
            raw,
            format!("relinquished by {label}"),
            actor,
            &mut txn,
            &mut events,
        )
    }

    pub(in crate::service) fn finish_early(
        &self,
        grant: Grant,
        raw: Vec<u8>,
        reason: String,
        actor: Actor,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<Grant, WorkflowError> {
        let now = self.clock.now();
        // Inactive for introspection from this instant; restored if the commit fails.
        if let Some(hash) = &grant.bearer_sha256 {
            self.index.remove(hash);
        }
        let original = grant.clone();
        let result = self
            .scope_revocation(&grant.scope)
            .and_then(|spec| {
                let updated = self.start_revocation((grant, raw), reason, &spec, now, txn)?;
                events.push(revocation_event(&updated, &spec, actor));
                Ok(updated)
            })
            .and_then(|updated| {
                self.audit
                    .commit_events(std::mem::take(txn), std::mem::take(events))?;
                Ok(updated)
            });
        match result {
            Ok(updated) => {
                self.wake.0.notify_one();
                Ok(updated)
            }
            Err(e) => {
                self.index.insert(&original);
                Err(e)
            }
        }
    }

    /// How many revocations are in flight and how many are past their deadline.
    pub fn revocation_counts(&self) -> Result<RevocationCounts, WorkflowError> {
        let mut counts = RevocationCounts::default();
        for (key, _) in self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
        {
            match store::read::<Grant>(self.store.as_ref(), &key)?.map(|g| g.state) {
                Some(GrantState::Revoking) => counts.revoking += 1,
                Some(GrantState::RevocationUnconfirmed) => counts.unconfirmed += 1,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Grants, newest first, optionally only in `state`.
    pub fn grants(&self, state: Option<GrantState>) -> Result<Vec<Grant>, WorkflowError> {
        let now = self.clock.now();
        let mut all: Vec<Grant> = self
            .store
            .scan_from(Keyspace::Grants, b"", usize::MAX)?
            .into_iter()
            .map(|(_, v)| store::decode::<Grant>(&v))
            .collect::<Result<_, _>>()?;
        all.retain(|g| state.is_none_or(|s| effective_state(g, now) == s));
        all.sort_by_key(|g| std::cmp::Reverse(g.issued_at));
        all.truncate(crate::base::constants::MAX_LIST);
        self.settled(all)
    }

    /// Wakes the scheduler (a grant was minted or revoked).
    pub fn wake_scheduler(&self) {
        self.wake.0.notify_one();
    }

    /// Resolves when something asks the scheduler to look again.
    pub async fn scheduler_woken(&self) {
        self.wake.0.notified().await;
    }
}
