//! Trust-store changes: proposed, voted on like requests, and applied at quorum
//! ([`super::apply`]).

use crate::audit::{Actor, Event};
use crate::base::caller::Caller;
use crate::base::constants::{MAX_LIST, MAX_TEXT_LEN, MIN_PROOFING_NOTE_LEN};

use crate::domain::change::{self, Change, ChangeKind, ChangeState};
use crate::domain::operator::Authenticator;
use crate::domain::policy::{Outcome, Vote};
use crate::domain::trust::{Genesis, META_KEY};
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::ceremony::Enrollment;
use crate::service::operators::OperatorError;
use crate::service::trust_store::{self};
use crate::service::workloads::WorkloadError;
use crate::service::{votes::*, workflow::*};
use crate::store::{self, Keyspace, Txn};

/// A change with its state and counts at one instant.
#[derive(Clone, Debug)]
pub struct ChangeView {
    /// The stored change.
    pub change: Change,
    /// State now.
    pub state: ChangeState,
    /// Approvals that count now.
    pub approvals: u32,
    /// Denials that count now.
    pub denials: u32,
}

/// A trust-store change as a caller proposes it. Keys are never proposed directly (they come
/// from an enrollment ceremony), and a workload is proposed by its certificate, not its pin.
#[derive(Clone, Debug)]
pub enum Proposal {
    /// Any other change, exactly as it will apply.
    Change(ChangeKind),
    /// Admit a workload, or change an admitted one's settings (`certificate_pem` empty).
    PutWorkload {
        name: String,
        owner: String,
        /// Client certificate PEM; empty keeps the current pin.
        certificate_pem: String,
        /// Scopes it may request.
        scopes: Vec<String>,
        /// Whether it may introspect.
        introspect: bool,
    },
}

/// Domain tag of a signed proposal's digest.
const PROPOSAL_TAG: &[u8] = b"latchkey.proposal.v1\n";

/// The digest an operator's key signs to propose `kind` with `note`: SHA-256 over the tag,
/// the operator, the note and the change as canonical JSON (newline-separated).
pub fn proposal_digest(operator: &str, kind: &ChangeKind, note: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(PROPOSAL_TAG);
    h.update(operator.as_bytes());
    h.update(b"\n");
    h.update(note.as_bytes());
    h.update(b"\n");
    // Serialising a change (strings, numbers, lists) cannot fail.
    h.update(serde_json::to_string(kind).unwrap_or_default().as_bytes());
    h.finalize().into()
}

impl Authority {
    pub(in crate::service) fn load_change(
        &self,
        id: &str,
    ) -> Result<(Change, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Changes, id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownChange(id.to_owned()))?;
        Ok((store::decode(&raw)?, raw))
    }

    pub(in crate::service) fn require_pending_change(
        &self,
        change: &Change,
    ) -> Result<(), WorkflowError> {
        match change.state_at(self.clock.now()) {
            ChangeState::Pending => Ok(()),
            ChangeState::Expired { .. } => Err(WorkflowError::ChangeExpired(change.id.clone())),
            other => Err(WorkflowError::ChangeClosed {
                id: change.id.clone(),
                state: other.name(),
            }),
        }
    }

    pub(in crate::service) fn change_view(
        &self,
        change: Change,
    ) -> Result<ChangeView, WorkflowError> {
        let (approvals, denials, _) = self.tally(&change.policy, &change.votes)?;
        Ok(ChangeView {
            state: change.state_at(self.clock.now()),
            change,
            approvals,
            denials,
        })
    }

    /// One change.
    pub fn change(&self, id: &str) -> Result<ChangeView, WorkflowError> {
        let view = self.change_view(self.load_change(id)?.0)?;
        self.settled(view)
    }

    /// Changes (optionally only in `state`), newest first.
    pub fn changes(&self, state: Option<&str>) -> Result<Vec<ChangeView>, WorkflowError> {
        let mut all: Vec<ChangeView> = scan_all::<Change>(self.store.as_ref())?
            .into_iter()
            .map(|c| self.change_view(c))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|v| state.is_none_or(|s| v.state.name() == s))
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.change.created_at));
        all.truncate(MAX_LIST);
        self.settled(all)
    }

    pub(in crate::service) fn check_note(note: &str) -> Result<(), WorkflowError> {
        if note.len() > MAX_TEXT_LEN {
            return Err(WorkflowError::NoteTooLong);
        }
        Ok(())
    }

    /// Turns a caller's proposal into a change kind, checking it against the store as it is.
    pub(in crate::service) fn change_kind(
        &self,
        proposal: Proposal,
    ) -> Result<ChangeKind, WorkflowError> {
        let kind = match proposal {
            Proposal::Change(
                ChangeKind::AddAuthenticator { .. } | ChangeKind::PutWorkload { .. },
            ) => {
                return Err(WorkflowError::ChangeInvalid(
                    "keys are added by enrollment and workloads by their certificate".into(),
                ));
            }
            Proposal::Change(kind) => kind,
            Proposal::PutWorkload {
                name,
                owner,
                certificate_pem,
                scopes,
                introspect,
            } => {
                let existing = store::read::<Workload>(self.store.as_ref(), name.as_bytes())?;
                let spki_sha256 = if certificate_pem.trim().is_empty() {
                    match &existing {
                        Some(w) => w.spki_sha256.clone(),
                        None => {
                            return Err(WorkloadError::InvalidCertificate(
                                "a new workload needs its client certificate".into(),
                            )
                            .into());
                        }
                    }
                } else {
                    hex::encode(
                        crate::credential::keys::spki_sha256_of_pem(certificate_pem.as_bytes())
                            .map_err(WorkloadError::InvalidCertificate)?,
                    )
                };
                ChangeKind::PutWorkload {
                    workload: Workload {
                        name,
                        owner,
                        spki_sha256,
                        admitted_at: existing.map_or_else(|| self.clock.now(), |w| w.admitted_at),
                        scopes,
                        introspect,
                    },
                }
            }
        };
        // Dry run: refuse now what could not apply.
        let mut scratch = Txn::new();
        let mut extra = Vec::new();
        self.apply_change(&kind, "dry-run", &mut scratch, &mut extra)?;
        Ok(kind)
    }

    /// Proposes a trust-store change (local callers). While genesis is open it applies at once.
    pub fn propose_change(
        &self,
        caller: &Caller,
        proposal: Proposal,
        note: &str,
    ) -> Result<ChangeView, WorkflowError> {
        let actor = Self::local_actor(caller)?;
        Self::check_note(note)?;
        let kind = self.change_kind(proposal)?;
        self.record_change(actor, kind, note, Txn::new(), None)
    }

    /// Starts a proposal an operator signs (the remote operator port): a challenge bound to
    /// [`proposal_digest`]. Returns it with the digest.
    pub fn begin_propose(
        &self,
        caller: &Caller,
        operator: &str,
        proposal: Proposal,
        note: &str,
    ) -> Result<(crate::domain::operator::Opened, [u8; 32]), WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(WorkflowError::LocalOnly);
        }
        Self::check_note(note)?;
        let kind = self.change_kind(proposal)?;
        let digest = proposal_digest(operator, &kind, note);
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    /// Records a proposal signed by an operator's key (from [`Authority::begin_propose`]): the
    /// proposer is the operator whose key signed, the evidence goes in the audit log. Not
    /// during genesis (bootstrap changes are made on the bastion).
    pub fn propose_signed_change(
        &self,
        caller: &Caller,
        proposal: Proposal,
        note: &str,
        (ceremony_id, credential_json): (&str, &str),
    ) -> Result<ChangeView, WorkflowError> {
        if matches!(caller, Caller::Workload(_)) {
            return Err(WorkflowError::LocalOnly);
        }
        Self::check_note(note)?;
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis == Genesis::Open {
            return Err(WorkflowError::LocalOnly);
        }
        let kind = self.change_kind(proposal)?;
        let operators = self.operators();
        let operator = operators.ceremony_operator(ceremony_id)?;
        let mut prepared = operators.prepare_assertion(
            ceremony_id,
            &proposal_digest(&operator, &kind, note),
            credential_json,
            "change.proposal_signed",
            String::new(),
        )?;
        if let Some(map) = prepared.event.details.as_object_mut() {
            map.insert("via".into(), caller.via().into());
        }
        self.record_change(
            Actor::Operator { name: operator },
            kind,
            note,
            prepared.txn,
            Some(prepared.event),
        )
    }

    /// Starts registering a key that an existing operator proposes from the approval page (a
    /// browser, after genesis): WebAuthn creation options for that operator.
    pub fn begin_key_proposal(
        &self,
        caller: &Caller,
        operator: &str,
    ) -> Result<crate::domain::operator::Opened, WorkflowError> {
        let Caller::Remote(_) = caller else {
            return Err(WorkflowError::SessionRemoteOnly);
        };
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis == Genesis::Open {
            return Err(WorkflowError::LocalOnly);
        }
        self.operator_record(operator)?;
        self.no_page_proposal_pending(operator)?;
        Ok(self
            .operators()
            .begin_enrollment(true, operator, &[], true)?)
    }

    /// Records the key registered on the approval page as a proposed `add_authenticator`
    /// change, which admins approve as any other. The proposer is recorded as the page's
    /// caller (`Actor::Web`): nothing proves who they are, so the proofing note says who
    /// checked it, and the change's card shows the key for comparison.
    pub fn propose_key(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        response_json: &str,
        note: &str,
    ) -> Result<(Authenticator, ChangeView), WorkflowError> {
        let Caller::Remote(peer) = caller else {
            return Err(WorkflowError::SessionRemoteOnly);
        };
        Self::check_note(note)?;
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis == Genesis::Open {
            return Err(WorkflowError::LocalOnly);
        }
        if note.trim().chars().count() < MIN_PROOFING_NOTE_LEN {
            return Err(WorkflowError::ProofingNoteRequired);
        }
        let actor = Actor::Web {
            addr: peer.addr.to_string(),
        };
        let operator = self.operators().ceremony_operator(ceremony_id)?;
        self.no_page_proposal_pending(&operator)?;
        // Genesis never reopens, so a finished registration here is always a proposal.
        match self
            .operators()
            .finish_enrollment(true, actor.clone(), ceremony_id, response_json)?
        {
            Enrollment::Enrolled(_) => Err(WorkflowError::LocalOnly),
            Enrollment::Proposed {
                authenticator,
                new_operator_roles,
                txn,
            } => {
                let view =
                    self.propose_enrolled(actor, &authenticator, new_operator_roles, txn, note)?;
                Ok((*authenticator, view))
            }
        }
    }

    /// Refuses a second key proposal from the page for `operator` while one is pending: the
    /// page is open to anyone who reaches it, and admins decide one at a time.
    fn no_page_proposal_pending(&self, operator: &str) -> Result<(), WorkflowError> {
        let pending = self.changes(Some("pending"))?.into_iter().find(|c| {
            matches!(c.change.proposer, Actor::Web { .. })
                && matches!(&c.change.kind, ChangeKind::AddAuthenticator { operator: o, .. } if o == operator)
        });
        match pending {
            Some(c) => Err(WorkflowError::ChangeInvalid(format!(
                "a key proposed from the approval page for {operator} is pending already (change {}): admins decide on it first",
                c.change.id
            ))),
            None => Ok(()),
        }
    }

    /// Records a verified new key as a proposed `add_authenticator` change (checked by a dry
    /// run first), committing the ceremony's `txn` with it.
    fn propose_enrolled(
        &self,
        proposer: Actor,
        authenticator: &Authenticator,
        new_operator_roles: Option<Vec<String>>,
        txn: Txn,
        note: &str,
    ) -> Result<ChangeView, WorkflowError> {
        let kind = ChangeKind::AddAuthenticator {
            operator: authenticator.operator.clone(),
            new_operator_roles,
            authenticator: Box::new(authenticator.clone()),
        };
        let mut scratch = Txn::new();
        let mut extra = Vec::new();
        self.apply_change(&kind, "dry-run", &mut scratch, &mut extra)?;
        self.record_change(proposer, kind, note, txn, None)
    }

    /// Records a change (and applies it at once during genesis), committing `txn` with it.
    pub(in crate::service) fn record_change(
        &self,
        proposer: Actor,
        kind: ChangeKind,
        note: &str,
        mut txn: Txn,
        signed: Option<Event>,
    ) -> Result<ChangeView, WorkflowError> {
        let now = self.clock.now();
        let (meta, meta_bytes) = trust_store::read_meta(self.store.as_ref())?;
        let policy = self.trust_policy()?;
        let id = new_id()?;
        let pending_until = now.plus(std::time::Duration::from_secs(policy.pending_timeout_secs));
        let canonical_text =
            change::canonical_text(&id, &kind, &proposer, note, now, pending_until);
        let mut change = Change {
            id: id.clone(),
            kind,
            proposer: proposer.clone(),
            note: note.to_owned(),
            created_at: now,
            pending_until,
            canonical_text,
            policy,
            votes: Vec::new(),
            state: ChangeState::Pending,
        };
        // The proposer's signed assertion (remote proposals), then the proposal.
        let mut events: Vec<Event> = signed
            .into_iter()
            .map(|mut e| {
                e.subject = format!("change/{id}");
                e
            })
            .collect();
        events.push(Event {
            event: "change.proposed",
            actor: proposer.clone(),
            subject: format!("change/{id}"),
            details: serde_json::json!({
                "change": change.kind.summary(),
                "target": change.kind.subject(),
                "note": note,
                "digest": hex::encode(change.digest()),
            }),
            evidence: None,
        });
        if meta.genesis == Genesis::Open {
            // Bootstrap: the local administrator is trusted until genesis closes.
            txn.require_equals(Keyspace::Meta, META_KEY, meta_bytes);
            let mut applied = Vec::new();
            self.apply_change(&change.kind, &id, &mut txn, &mut applied)?;
            change.state = ChangeState::Applied { at: now };
            events.push(Event {
                event: "change.applied",
                actor: proposer,
                subject: change.kind.subject(),
                details: serde_json::json!({ "change": id, "path": "genesis" }),
                evidence: None,
            });
            events.extend(applied);
        }
        txn.require_absent(Keyspace::Changes, id.as_bytes())
            .put(id.as_bytes(), &change)?;
        self.audit.commit_events(txn, events)?;
        self.change_view(change)
    }

    /// Finishes a key registration: enrolled at once during genesis; afterwards recorded as a
    /// proposed change carrying the proofing note. Returns the key and the change, if any.
    pub fn finish_enrollment(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        response_json: &str,
        note: &str,
    ) -> Result<(Authenticator, Genesis, Option<ChangeView>), WorkflowError> {
        let Caller::Local(peer) = caller else {
            return Err(OperatorError::LocalOnly.into());
        };
        let actor = Actor::Local { uid: peer.uid };
        Self::check_note(note)?;
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis != Genesis::Open && note.trim().chars().count() < MIN_PROOFING_NOTE_LEN {
            return Err(WorkflowError::ProofingNoteRequired);
        }
        match self
            .operators()
            .finish_enrollment(true, actor.clone(), ceremony_id, response_json)?
        {
            Enrollment::Enrolled(authenticator) => {
                let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
                Ok((*authenticator, meta.genesis, None))
            }
            Enrollment::Proposed {
                authenticator,
                new_operator_roles,
                txn,
            } => {
                let view =
                    self.propose_enrolled(actor, &authenticator, new_operator_roles, txn, note)?;
                Ok((*authenticator, meta.genesis, Some(view)))
            }
        }
    }

    pub(in crate::service) fn count_change_vote(
        &self,
        mut change: Change,
        raw: Vec<u8>,
        vote: Vote,
        prepared: crate::service::ceremony::PreparedAssertion,
    ) -> Result<VoteResult, WorkflowError> {
        let now = self.clock.now();
        let id = change.id.clone();
        let id = id.as_str();
        self.require_pending_change(&change)?;
        let mut event = key_meets_policy(&change.policy, &vote, prepared.event.clone(), &prepared)?;
        if let Some(map) = event.details.as_object_mut() {
            map.insert("change_digest".into(), hex::encode(change.digest()).into());
        }
        change.votes.push(vote);
        let mut txn = prepared.txn;
        let (approvals, denials, outcome) =
            self.tally_guarded(&change.policy, &change.votes, &mut txn)?;
        txn.require_equals(Keyspace::Changes, id.as_bytes(), raw);
        let mut events = vec![event];
        match outcome {
            Outcome::Pending => {}
            Outcome::Denied => {
                change.state = ChangeState::Denied { at: now };
                events.push(Event {
                    event: "change.closed",
                    actor: Actor::Daemon,
                    subject: format!("change/{id}"),
                    details: serde_json::json!({ "outcome": "denied" }),
                    evidence: None,
                });
            }
            Outcome::Approved => {
                let mut applied = Vec::new();
                self.apply_change(&change.kind, id, &mut txn, &mut applied)?;
                change.state = ChangeState::Applied { at: now };
                events.push(Event {
                    event: "change.applied",
                    actor: Actor::Daemon,
                    subject: change.kind.subject(),
                    details: serde_json::json!({
                        "change": id,
                        "approvals": approvals,
                        "quorum": change.policy.quorum,
                    }),
                    evidence: None,
                });
                events.extend(applied);
            }
        }
        txn.put(id.as_bytes(), &change)?;
        let records = self.audit.commit_events(txn, events)?;
        Ok(VoteResult {
            state: change.state.name(),
            approvals,
            denials,
            quorum: change.policy.quorum,
            audit_seq: records.first().map_or(0, |r| r.seq),
            grant_id: None,
        })
    }
}
