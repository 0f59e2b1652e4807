//! Votes on requests and changes: the ballot checked, the key's policy met, the counts
//! guarded against concurrent votes, the decision taken exactly once.

use crate::audit::{Actor, Event};
use crate::base::caller::Caller;

use crate::domain::change::Change;
use crate::domain::operator::{AuthenticatorState, Opened, Operator};
use crate::domain::policy::{self, ApprovalPolicy, Ballot, Decision, Outcome, Vote, Voter};
use crate::domain::request::{self, Request, RequestState};
use crate::service::authority::Authority;
use crate::service::operators::OperatorError;
use crate::service::workflow::*;
use crate::store::{self, Keyspace, Txn};

/// How often a vote is retried internally when another vote on the same thing committed
/// first (the loser re-reads and re-checks; its ceremony is still unused).
pub(in crate::service) const CONFLICT_RETRIES: usize = 8;

/// What a vote is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteTarget {
    /// A break-glass request.
    Request(String),
    /// A trust-store change.
    Change(String),
}

impl VoteTarget {
    /// `request/ID` or `change/ID`.
    pub fn label(&self) -> String {
        match self {
            VoteTarget::Request(id) => format!("request/{id}"),
            VoteTarget::Change(id) => format!("change/{id}"),
        }
    }
}

/// The result of a counted vote.
#[derive(Clone, Debug)]
pub struct VoteResult {
    /// State after the vote.
    pub state: &'static str,
    /// Approvals that count.
    pub approvals: u32,
    /// Denials that count.
    pub denials: u32,
    /// Approvals needed.
    pub quorum: u32,
    /// Audit record of the vote.
    pub audit_seq: u64,
    /// Grant minted by this vote.
    pub grant_id: Option<String>,
}

/// Refuses a vote whose key does not meet the policy (UV, attestation, PIV touch and PIN);
/// returns the vote's audit event with the decision in its details.
pub(in crate::service) fn key_meets_policy(
    policy: &ApprovalPolicy,
    vote: &Vote,
    mut event: Event,
    prepared: &crate::service::ceremony::PreparedAssertion,
) -> Result<Event, WorkflowError> {
    policy::check_key(
        policy,
        &vote.credential_id,
        prepared.attested,
        vote.user_verified,
    )?;
    if let Some(attested) = &prepared.piv {
        crate::verify::piv::KeyPolicy {
            touch: policy.piv_touch,
            pin: policy.piv_pin,
        }
        .check(attested)
        .map_err(OperatorError::from)?;
    }
    if let Some(map) = event.details.as_object_mut() {
        map.insert("decision".into(), vote.decision.as_str().into());
    }
    Ok(event)
}

/// A vote's target as read once per vote, with its stored bytes.
pub(in crate::service) enum Loaded {
    Request(Request, Vec<u8>),
    Change(Change, Vec<u8>),
}

impl Authority {
    /// Whether a recorded vote still counts: its key is active and its operator still holds
    /// the role. A suspended or removed key, or a removed operator, counts for nothing. A
    /// record that cannot be read or decoded is an error, never "does not count". With
    /// `guard`, the records read are compared-and-set in that transaction, so the decision
    /// commits only if none of them changed meanwhile.
    pub(in crate::service) fn vote_counts(
        &self,
        vote: &Vote,
        role: &str,
        guard: Option<&mut Txn>,
    ) -> Result<bool, WorkflowError> {
        let store = self.store.as_ref();
        let count_failed = |what: &str, e: &dyn std::fmt::Display| {
            WorkflowError::CountFailed(format!("{what} of {}'s vote: {e}", vote.operator))
        };
        let key_raw = store
            .get(Keyspace::Authenticators, vote.credential_id.as_bytes())
            .map_err(|e| count_failed("reading the key", &e))?;
        let key_active = match &key_raw {
            Some(raw) => {
                let standing: crate::domain::operator::KeyStanding = serde_json::from_slice(raw)
                    .map_err(|e| count_failed("decoding the key", &e))?;
                standing.state == AuthenticatorState::Active && standing.operator == vote.operator
            }
            None => false,
        };
        let operator_raw = store
            .get(Keyspace::Operators, vote.operator.as_bytes())
            .map_err(|e| count_failed("reading the operator", &e))?;
        let has_role = match &operator_raw {
            Some(raw) => store::decode::<Operator>(raw)
                .map_err(|e| count_failed("decoding the operator", &e))?
                .roles
                .iter()
                .any(|r| r == role),
            None => false,
        };
        if let Some(txn) = guard {
            for (ks, key, raw) in [
                (
                    Keyspace::Authenticators,
                    vote.credential_id.as_bytes(),
                    key_raw,
                ),
                (Keyspace::Operators, vote.operator.as_bytes(), operator_raw),
            ] {
                match raw {
                    Some(raw) => txn.require_equals(ks, key, raw),
                    None => txn.require_absent(ks, key),
                };
            }
        }
        Ok(key_active && has_role)
    }

    /// The tally of `votes` now (for showing).
    pub(in crate::service) fn tally(
        &self,
        policy: &ApprovalPolicy,
        votes: &[Vote],
    ) -> Result<(u32, u32, Outcome), WorkflowError> {
        policy::tally(policy, votes, |v| {
            self.vote_counts(v, &policy.approver_role, None)
        })
    }

    /// The tally that decides: every record it read is guarded in `txn`.
    pub(in crate::service) fn tally_guarded(
        &self,
        policy: &ApprovalPolicy,
        votes: &[Vote],
        txn: &mut Txn,
    ) -> Result<(u32, u32, Outcome), WorkflowError> {
        policy::tally(policy, votes, |v| {
            self.vote_counts(v, &policy.approver_role, Some(&mut *txn))
        })
    }

    // ----- requests ------------------------------------------------------------------------

    /// Reads a vote's target once: everything a vote checks and writes comes from this read,
    /// and its stored bytes guard the final write (compare-and-set), so a vote that raced
    /// another conflicts and is retried instead of counting against a stale copy.
    pub(in crate::service) fn load_target(
        &self,
        target: &VoteTarget,
    ) -> Result<Loaded, WorkflowError> {
        Ok(match target {
            VoteTarget::Request(id) => {
                let (request, raw) = self.load_request(id)?;
                Loaded::Request(request, raw)
            }
            VoteTarget::Change(id) => {
                let (change, raw) = self.load_change(id)?;
                Loaded::Change(change, raw)
            }
        })
    }

    /// The digest a vote's assertion must be bound to, and the policy that applies.
    pub(in crate::service) fn vote_subject(
        &self,
        target: &VoteTarget,
        loaded: &Loaded,
        decision: Decision,
    ) -> Result<([u8; 32], ApprovalPolicy), WorkflowError> {
        let (digest, policy) = match loaded {
            Loaded::Request(r, _) => {
                self.require_pending_request(r)?;
                (r.digest(), r.policy.clone())
            }
            Loaded::Change(c, _) => {
                self.require_pending_change(c)?;
                (c.digest(), c.policy.clone())
            }
        };
        Ok((
            request::vote_digest(&target.label(), decision, &digest),
            policy,
        ))
    }

    pub(in crate::service) fn ballot_check(
        &self,
        loaded: &Loaded,
        operator: &str,
    ) -> Result<(), WorkflowError> {
        let op = self.operator_record(operator)?;
        let voter = Voter {
            operator,
            roles: &op.roles,
        };
        match loaded {
            Loaded::Request(r, _) => {
                let ballot = Ballot {
                    requester: r.requester.operator(),
                    subjects: &[],
                    votes: &r.votes,
                };
                policy::check_voter(&r.policy, &ballot, &voter)?;
            }
            Loaded::Change(c, _) => {
                let subjects = c.kind.subjects();
                let ballot = Ballot {
                    requester: None,
                    subjects: &subjects,
                    votes: &c.votes,
                };
                policy::check_voter(&c.policy, &ballot, &voter)?;
            }
        }
        Ok(())
    }

    /// Starts a vote: checks the operator may vote, and returns assertion options bound to
    /// the vote's digest, with that digest.
    pub fn begin_vote(
        &self,
        caller: &Caller,
        target: &VoteTarget,
        operator: &str,
        decision: Decision,
    ) -> Result<(Opened, [u8; 32]), WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(WorkflowError::WorkloadCannotVote);
        }
        let loaded = self.load_target(target)?;
        let (digest, policy) = self.vote_subject(target, &loaded, decision)?;
        self.ballot_check(&loaded, operator)?;
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            policy.require_uv || self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    /// Verifies and counts a vote. At quorum, mints (requests) or applies (changes) in the
    /// same transaction as the vote and its audit records.
    pub fn cast_vote(
        &self,
        caller: &Caller,
        target: &VoteTarget,
        decision: Decision,
        ceremony_id: &str,
        credential_json: &str,
    ) -> Result<VoteResult, WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(WorkflowError::WorkloadCannotVote);
        }
        let via = caller.via();
        let mut attempt = 0;
        loop {
            let result = self.try_vote(target, decision, ceremony_id, credential_json, &via);
            match result {
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    pub(in crate::service) fn try_vote(
        &self,
        target: &VoteTarget,
        decision: Decision,
        ceremony_id: &str,
        credential_json: &str,
        via: &str,
    ) -> Result<VoteResult, WorkflowError> {
        let loaded = self.load_target(target)?;
        let (digest, _) = self.vote_subject(target, &loaded, decision)?;
        let voter = self.operators().ceremony_operator(ceremony_id)?;
        self.ballot_check(&loaded, &voter)?;
        let event_name = match (target, decision) {
            (VoteTarget::Request(_), Decision::Approve) => "request.approved",
            (VoteTarget::Request(_), Decision::Deny) => "request.denied",
            (VoteTarget::Change(_), Decision::Approve) => "change.approved",
            (VoteTarget::Change(_), Decision::Deny) => "change.denied",
        };
        let mut prepared = self.operators().prepare_assertion(
            ceremony_id,
            &digest,
            credential_json,
            event_name,
            target.label(),
        )?;
        if let Some(map) = prepared.event.details.as_object_mut() {
            map.insert("via".into(), via.into());
        }
        let vote = Vote {
            operator: prepared.verified.operator.clone(),
            credential_id: prepared.verified.credential_id.clone(),
            decision,
            user_verified: prepared.verified.user_verified,
            at: self.clock.now(),
        };
        match loaded {
            Loaded::Request(request, raw) => self.count_request_vote(request, raw, vote, prepared),
            Loaded::Change(change, raw) => self.count_change_vote(change, raw, vote, prepared),
        }
    }

    pub(in crate::service) fn count_request_vote(
        &self,
        mut request: Request,
        raw: Vec<u8>,
        vote: Vote,
        prepared: crate::service::ceremony::PreparedAssertion,
    ) -> Result<VoteResult, WorkflowError> {
        let now = self.clock.now();
        let id = request.id().to_owned();
        let id = id.as_str();
        self.require_pending_request(&request)?;
        let mut event =
            key_meets_policy(&request.policy, &vote, prepared.event.clone(), &prepared)?;
        if let Some(map) = event.details.as_object_mut() {
            map.insert(
                "request_digest".into(),
                hex::encode(request.digest()).into(),
            );
        }
        request.votes.push(vote);
        let mut txn = prepared.txn;
        let (approvals, denials, outcome) =
            self.tally_guarded(&request.policy, &request.votes, &mut txn)?;
        txn.require_equals(Keyspace::Requests, id.as_bytes(), raw);
        let mut events = vec![event];
        let mut minted = None;
        match outcome {
            Outcome::Pending => {}
            Outcome::Denied => {
                request.state = RequestState::Denied { at: now };
                events.push(Event {
                    event: "request.closed",
                    actor: Actor::Daemon,
                    subject: format!("request/{id}"),
                    details: serde_json::json!({ "outcome": "denied", "denials": denials }),
                    evidence: None,
                });
            }
            Outcome::Approved => {
                let grant = self.mint(&request, now, &mut txn)?;
                request.state = RequestState::Issued {
                    grant_id: grant.id.clone(),
                    at: now,
                };
                events.push(Event {
                    event: "grant.issued",
                    actor: Actor::Daemon,
                    subject: format!("grant/{}", grant.id),
                    details: serde_json::json!({
                        "request": id,
                        "scope": grant.scope,
                        "requester": grant.requester.label(),
                        "approvals": approvals,
                        "expires_at": grant.expires_at,
                        "bearer_sha256": grant.bearer_sha256,
                        "ssh_serial": grant.ssh.as_ref().map(|s| s.serial),
                        "ssh_principals": grant.ssh.as_ref().map(|s| s.principals.clone()),
                    }),
                    evidence: None,
                });
                minted = Some(grant);
            }
        }
        txn.put(id.as_bytes(), &request)?;
        // The grant (with its sealed token) commits with the vote; it reaches the token index
        // and any watcher only once durable.
        let records = self.audit.commit_events(txn, events)?;
        if let Some(grant) = &minted {
            self.index.insert(grant);
        }
        let grant_id = minted.map(|grant| {
            self.wake_scheduler();
            grant.id
        });
        Ok(VoteResult {
            state: request.state.name(),
            approvals,
            denials,
            quorum: request.policy.quorum,
            audit_seq: records.first().map_or(0, |r| r.seq),
            grant_id,
        })
    }
}
