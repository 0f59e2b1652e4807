//! The break-glass workflow over one trust store: requests, votes, minting at quorum,
//! trust-store changes, introspection. Every state change is one transaction with its audit
//! records; every refusal writes nothing.

use std::collections::HashMap;

use crate::audit::{Actor, AuditError, Event};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::base::constants::{
    CHANGE_PENDING_TIMEOUT, MAX_LIST, MAX_TEXT_LEN, MIN_PROOFING_NOTE_LEN, TRUST_STORE_SCOPE,
};
use crate::base::error::{Coded, ErrorKind};
use crate::credential::mint::{self, MintError, SshRequest};
use crate::domain::change::{self, Change, ChangeKind, ChangeState};
use crate::domain::grant::{Grant, GrantState, Introspection, SshGrant, token_hash};
use crate::domain::operator::{Authenticator, AuthenticatorState, Opened, Operator};
use crate::domain::policy::{
    self, ApprovalPolicy, Ballot, Decision, Outcome, PolicyError, Vote, Voter,
};
use crate::domain::request::{
    self, Canonical, Draft, DraftError, Request, RequestState, Requester,
};
use crate::domain::scope::{Scope, ScopeError};
use crate::domain::trust;
use crate::domain::trust::{Genesis, META_KEY};
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::ceremony::Enrollment;
use crate::service::operators::{self as operator, OperatorError};
use crate::service::trust_store::{self, TrustError};
use crate::service::workloads::{self, WorkloadError};
use crate::store::{self, Keyspace, Store, StoreError, Txn};

/// How often a vote is retried internally when another vote on the same thing committed
/// first (the loser re-reads and re-checks; its ceremony is still unused).
const CONFLICT_RETRIES: usize = 8;

/// Errors of the workflow. Each has a stable code; none leaves a partial change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// No such scope. Check `latchkey scope list`.
    #[error("no scope {0}")]
    UnknownScope(String),
    /// No such request.
    #[error("no request {0}")]
    UnknownRequest(String),
    /// No such change.
    #[error("no change {0}")]
    UnknownChange(String),
    /// No such grant.
    #[error("no grant {0}")]
    UnknownGrant(String),
    /// The requester is not allowed to ask for this scope. Ask the scope's owner.
    #[error("{requester} may not request scope {scope}")]
    RequesterNotAllowed {
        /// Who asked.
        requester: String,
        /// Scope.
        scope: String,
    },
    /// Workloads request and route; they never approve or deny.
    #[error("workloads cannot vote; an operator must approve with a hardware key")]
    WorkloadCannotVote,
    /// An operator request needs the operator's hardware assertion (BeginRequest first).
    #[error("an operator request needs a hardware assertion: call BeginRequest and sign")]
    AssertionRequired,
    /// The request waited longer than its policy allows. Make a new request.
    #[error("request {0} expired before reaching quorum")]
    RequestExpired(String),
    /// The request is no longer pending.
    #[error("request {id} is {state}, not pending")]
    RequestClosed {
        /// Id.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The change waited longer than allowed. Propose it again.
    #[error("change {0} expired before reaching quorum")]
    ChangeExpired(String),
    /// The change is no longer pending.
    #[error("change {id} is {state}, not pending")]
    ChangeClosed {
        /// Id.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// Only the requester may watch, collect or cancel a request.
    #[error("only the requester may do this with request {0}")]
    NotRequester(String),
    /// The caller may not introspect tokens. Admit the workload with `introspect`.
    #[error("this caller may not introspect tokens")]
    IntrospectionNotAllowed,
    /// Trust-store changes are proposed from the bastion's local socket.
    #[error("trust-store changes can only be proposed over the local socket")]
    LocalOnly,
    /// A new key after genesis needs a proofing note: who checked whose identity, how.
    #[error(
        "a proofing note of at least {MIN_PROOFING_NOTE_LEN} characters is required: who checked the operator's identity, how and on which channel"
    )]
    ProofingNoteRequired,
    /// The note is too long.
    #[error("the note is longer than {MAX_TEXT_LEN} bytes")]
    NoteTooLong,
    /// The change cannot apply to the trust store as it is; the message says why.
    #[error("change refused: {0}")]
    ChangeInvalid(String),
    /// The request's grant is no longer active (revoked or expired), so its credential is not
    /// handed out any more. Request again if access is still needed.
    #[error("the credential of request {0} is no longer available: its grant is not active")]
    CredentialGone(String),
    /// The scope mints a bearer token and the draft names no delivery key to seal it to. Send
    /// a fresh X25519 public key in `delivery_public_key` (the CLI does).
    #[error(
        "scope {0} mints a bearer token: the request needs a delivery_public_key (32-byte X25519) to seal it to"
    )]
    DeliveryKeyRequired(String),
    /// The delivery key is unusable, or sealing to it failed.
    #[error(transparent)]
    Delivery(#[from] crate::credential::delivery::DeliveryError),
    /// A vote could not be counted because a record it depends on could not be read. Nothing
    /// changed; retry, and alert an operator if it persists.
    #[error("the vote could not be counted: {0}")]
    CountFailed(String),
    /// A vote rule refused it.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The draft is not acceptable.
    #[error(transparent)]
    Draft(#[from] DraftError),
    /// The scope definition is not acceptable.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// A revocation sink failed (KRL not writable, …); it is retried with backoff.
    #[error("revocation sink: {0}")]
    Sink(String),
    /// The caller is not a consumer that must acknowledge this grant's revocation.
    #[error("this caller is not a consumer awaited for grant {0}'s revocation")]
    NotConsumer(String),
    /// The grant is not active (already revoking, revoked or expired).
    #[error("grant {id} is {state}, not active")]
    GrantNotActive {
        /// Id.
        id: String,
        /// State.
        state: &'static str,
    },
    /// Only the holder (the requester) may relinquish a grant.
    #[error("only the holder of grant {0} may relinquish it")]
    NotHolder(String),
    /// A revocation needs a reason (3-1000 characters).
    #[error("say why the grant is revoked (3 to 1000 characters)")]
    RevokeReason,
    /// Operator or assertion refused.
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// Workload refused.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Minting failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Trust-store metadata unreadable.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl Coded for WorkflowError {
    fn code(&self) -> &'static str {
        match self {
            WorkflowError::UnknownScope(_) => "scope.unknown",
            WorkflowError::UnknownRequest(_) => "request.unknown",
            WorkflowError::UnknownChange(_) => "change.unknown",
            WorkflowError::UnknownGrant(_) => "grant.unknown",
            WorkflowError::RequesterNotAllowed { .. } => "request.requester_not_allowed",
            WorkflowError::WorkloadCannotVote => "approval.workload",
            WorkflowError::AssertionRequired => "request.assertion_required",
            WorkflowError::RequestExpired(_) => "request.expired",
            WorkflowError::RequestClosed { .. } => "request.closed",
            WorkflowError::ChangeExpired(_) => "change.expired",
            WorkflowError::ChangeClosed { .. } => "change.closed",
            WorkflowError::NotRequester(_) => "request.not_requester",
            WorkflowError::IntrospectionNotAllowed => "introspect.not_allowed",
            WorkflowError::LocalOnly => "change.local_only",
            WorkflowError::ProofingNoteRequired => "change.proofing_note_required",
            WorkflowError::NoteTooLong => "change.note_too_long",
            WorkflowError::ChangeInvalid(_) => "change.invalid",
            WorkflowError::CredentialGone(_) => "grant.credential_gone",
            WorkflowError::DeliveryKeyRequired(_) => "request.delivery_key_required",
            WorkflowError::Delivery(e) => e.code(),
            WorkflowError::CountFailed(_) => "approval.count_failed",
            WorkflowError::Sink(_) => "revocation.sink_failed",
            WorkflowError::NotConsumer(_) => "revocation.not_consumer",
            WorkflowError::GrantNotActive { .. } => "grant.not_active",
            WorkflowError::NotHolder(_) => "grant.not_holder",
            WorkflowError::RevokeReason => "grant.invalid_reason",
            WorkflowError::Policy(e) => e.code(),
            WorkflowError::Draft(e) => e.code(),
            WorkflowError::Scope(e) => e.code(),
            WorkflowError::Operator(e) => e.code(),
            WorkflowError::Workload(e) => e.code(),
            WorkflowError::Mint(e) => e.code(),
            WorkflowError::Store(e) => e.code(),
            WorkflowError::Audit(e) => e.code(),
            WorkflowError::Trust(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            WorkflowError::UnknownScope(_)
            | WorkflowError::UnknownRequest(_)
            | WorkflowError::UnknownChange(_)
            | WorkflowError::UnknownGrant(_) => ErrorKind::NotFound,
            WorkflowError::RequesterNotAllowed { .. }
            | WorkflowError::WorkloadCannotVote
            | WorkflowError::NotRequester(_)
            | WorkflowError::IntrospectionNotAllowed
            | WorkflowError::NotConsumer(_)
            | WorkflowError::NotHolder(_)
            | WorkflowError::LocalOnly => ErrorKind::PermissionDenied,
            WorkflowError::Sink(_) => ErrorKind::Unavailable,
            WorkflowError::RevokeReason | WorkflowError::DeliveryKeyRequired(_) => {
                ErrorKind::InvalidInput
            }
            WorkflowError::Delivery(e) => e.kind(),
            WorkflowError::CountFailed(_) => ErrorKind::Unavailable,
            WorkflowError::GrantNotActive { .. } => ErrorKind::FailedPrecondition,
            WorkflowError::AssertionRequired
            | WorkflowError::ProofingNoteRequired
            | WorkflowError::NoteTooLong => ErrorKind::InvalidInput,
            WorkflowError::RequestExpired(_)
            | WorkflowError::RequestClosed { .. }
            | WorkflowError::ChangeExpired(_)
            | WorkflowError::ChangeClosed { .. }
            | WorkflowError::ChangeInvalid(_)
            | WorkflowError::CredentialGone(_) => ErrorKind::FailedPrecondition,
            WorkflowError::Policy(e) => e.kind(),
            WorkflowError::Draft(e) => e.kind(),
            WorkflowError::Scope(e) => e.kind(),
            WorkflowError::Operator(e) => e.kind(),
            WorkflowError::Workload(e) => e.kind(),
            WorkflowError::Mint(e) => e.kind(),
            WorkflowError::Store(e) => e.kind(),
            WorkflowError::Audit(e) => e.kind(),
            WorkflowError::Trust(e) => e.kind(),
        }
    }
}

impl WorkflowError {
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self,
            WorkflowError::Store(StoreError::Conflict(_))
                | WorkflowError::Audit(AuditError::Store(StoreError::Conflict(_)))
                | WorkflowError::Operator(OperatorError::Store(StoreError::Conflict(_)))
                | WorkflowError::Operator(OperatorError::Audit(AuditError::Store(
                    StoreError::Conflict(_)
                )))
        )
    }
}

/// A credential as its requester collects it: read from the durable grant. The bearer token
/// is only ever sealed to the request's delivery key ([`crate::credential::delivery`]).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Grant.
    pub grant_id: String,
    /// Scope.
    pub scope: String,
    /// The bearer token sealed to the requester's delivery key, if one was minted.
    pub sealed_bearer: Option<crate::credential::delivery::SealedToken>,
    /// The SSH certificate, if minted (not a secret: useless without its private key).
    pub ssh_certificate: Option<String>,
    /// Expiry.
    pub expires_at: Timestamp,
}

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

/// A request with its state and counts at one instant.
#[derive(Clone, Debug)]
pub struct RequestView {
    /// The stored request.
    pub request: Request,
    /// State now.
    pub state: RequestState,
    /// Approvals that count now.
    pub approvals: u32,
    /// Denials that count now.
    pub denials: u32,
}

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

/// A trust-store change as proposed by a caller (keys come from enrollment instead).
#[derive(Clone, Debug)]
pub enum Proposal {
    /// See [`ChangeKind::RemoveAuthenticator`].
    RemoveAuthenticator {
        /// Operator.
        operator: String,
        /// Credential id.
        credential_id: String,
    },
    /// See [`ChangeKind::ReinstateAuthenticator`].
    ReinstateAuthenticator {
        /// Operator.
        operator: String,
        /// Credential id.
        credential_id: String,
    },
    /// See [`ChangeKind::RemoveOperator`].
    RemoveOperator {
        /// Operator.
        operator: String,
    },
    /// See [`ChangeKind::SetOperatorRoles`].
    SetOperatorRoles {
        /// Operator.
        operator: String,
        /// Roles.
        roles: Vec<String>,
    },
    /// See [`ChangeKind::PutScope`].
    PutScope(Box<Scope>),
    /// See [`ChangeKind::RemoveScope`].
    RemoveScope(String),
    /// Admit a workload, or change an admitted one's settings (`certificate_pem` empty).
    PutWorkload {
        /// Name.
        name: String,
        /// Owner.
        owner: String,
        /// Client certificate PEM; empty keeps the current pin.
        certificate_pem: String,
        /// Scopes it may request.
        scopes: Vec<String>,
        /// Whether it may introspect.
        introspect: bool,
    },
    /// See [`ChangeKind::RemoveWorkload`].
    RemoveWorkload(String),
    /// See [`ChangeKind::SetTrustPolicy`].
    SetTrustPolicy(trust::TrustStorePolicy),
}

/// Refuses a vote whose key does not meet the policy (UV, attestation, PIV touch and PIN);
/// returns the vote's audit event with the decision in its details.
fn key_meets_policy(
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

/// The delivery key a request names, to seal its bearer token to.
fn delivery_key(request: &Request) -> Result<[u8; 32], WorkflowError> {
    let hex_key = &request.canonical.delivery_public_key;
    if hex_key.is_empty() {
        // A request made before delivery keys existed; its requester must ask again.
        return Err(WorkflowError::DeliveryKeyRequired(
            request.canonical.scope.clone(),
        ));
    }
    let bytes = hex::decode(hex_key).map_err(|_| {
        WorkflowError::Delivery(crate::credential::delivery::DeliveryError::BadPublicKey(
            hex_key.len() / 2,
        ))
    })?;
    Ok(crate::credential::delivery::check_public_key(&bytes)?)
}

fn new_id() -> Result<String, WorkflowError> {
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|e| MintError::Randomness(e.to_string()))?;
    Ok(hex::encode(id))
}

fn scan_all<R: store::Record>(store: &dyn Store) -> Result<Vec<R>, StoreError> {
    store
        .scan_from(R::KEYSPACE, b"", usize::MAX)?
        .into_iter()
        .map(|(_, v)| store::decode(&v))
        .collect()
}

impl Authority {
    fn local_actor(caller: &Caller) -> Result<Actor, WorkflowError> {
        match caller {
            Caller::Local(peer) => Ok(Actor::Local { uid: peer.uid }),
            Caller::Workload(_) => Err(WorkflowError::LocalOnly),
        }
    }

    fn scope(&self, name: &str) -> Result<Scope, WorkflowError> {
        store::read::<Scope>(self.store.as_ref(), name.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownScope(name.to_owned()))
    }

    fn operator_record(&self, name: &str) -> Result<Operator, WorkflowError> {
        store::read::<Operator>(self.store.as_ref(), name.as_bytes())?
            .ok_or_else(|| OperatorError::UnknownOperator(name.to_owned()).into())
    }

    /// The approval policy of trust-store changes.
    fn trust_policy(&self) -> Result<ApprovalPolicy, WorkflowError> {
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        Ok(ApprovalPolicy {
            quorum: meta.policy.quorum,
            approver_role: meta.policy.approver_role,
            require_uv: self.fido2_policy.require_user_verification,
            require_attested: false,
            pending_timeout_secs: CHANGE_PENDING_TIMEOUT.as_secs(),
            denials_to_reject: 1,
            piv_touch: None,
            piv_pin: None,
        })
    }

    /// Whether a recorded vote still counts: its key is active and its operator still holds
    /// the role. A suspended or removed key, or a removed operator, counts for nothing. A
    /// record that cannot be read or decoded is an error, never "does not count". With
    /// `guard`, the records read are compared-and-set in that transaction, so the decision
    /// commits only if none of them changed meanwhile.
    fn vote_counts(
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
    fn tally(
        &self,
        policy: &ApprovalPolicy,
        votes: &[Vote],
    ) -> Result<(u32, u32, Outcome), WorkflowError> {
        policy::tally(policy, votes, |v| {
            self.vote_counts(v, &policy.approver_role, None)
        })
    }

    /// The tally that decides: every record it read is guarded in `txn`.
    fn tally_guarded(
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

    /// Checks a draft against its scope and requester; returns the scope and granted TTL.
    fn check_draft(
        &self,
        draft: &Draft,
        requester: &Requester,
    ) -> Result<(Scope, u64), WorkflowError> {
        draft.check_text()?;
        let scope = self.scope(&draft.scope)?;
        let allowed = match requester {
            Requester::Operator { name, .. } => {
                let op = self.operator_record(name)?;
                op.roles.iter().any(|r| scope.requesters.roles.contains(r))
            }
            Requester::Workload { name } => {
                let w = store::read::<Workload>(self.store.as_ref(), name.as_bytes())?;
                scope.requesters.workloads.contains(name)
                    && w.is_some_and(|w| w.scopes.contains(&scope.name))
            }
        };
        if !allowed {
            return Err(WorkflowError::RequesterNotAllowed {
                requester: requester.label(),
                scope: scope.name,
            });
        }
        let ttl = draft.ttl(&scope.name, scope.default_ttl_secs, scope.max_ttl_secs)?;
        match (&scope.ssh, draft.ssh_public_key.trim().is_empty()) {
            (Some(_), true) => {
                return Err(DraftError::SshKey(format!(
                    "scope {} mints SSH certificates: give the public key to certify",
                    scope.name
                ))
                .into());
            }
            (Some(_), false) => {
                crate::credential::sshcert::parse_user_public_key(draft.ssh_public_key.trim())
                    .map_err(MintError::from)?;
            }
            (None, false) => {
                return Err(DraftError::SshKey(format!(
                    "scope {} mints no SSH certificates: leave the public key out",
                    scope.name
                ))
                .into());
            }
            (None, true) => {}
        }
        if draft.delivery_public_key.is_empty() {
            if scope.bearer {
                return Err(WorkflowError::DeliveryKeyRequired(scope.name));
            }
        } else {
            crate::credential::delivery::check_public_key(&draft.delivery_public_key)?;
        }
        Ok((scope, ttl))
    }

    /// Starts an operator's request: checks the draft and returns the assertion options whose
    /// challenge is bound to it, with the digest.
    pub fn begin_request(
        &self,
        caller: &Caller,
        operator: &str,
        draft: &Draft,
    ) -> Result<(Opened, [u8; 32]), WorkflowError> {
        let Caller::Local(peer) = caller else {
            return Err(WorkflowError::LocalOnly);
        };
        let requester = Requester::Operator {
            name: operator.to_owned(),
            uid: peer.uid,
        };
        let (scope, _) = self.check_draft(draft, &requester)?;
        let digest = draft.digest(operator);
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            scope.policy.require_uv || self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    /// Creates a request: from a workload (mTLS), or from an operator with the assertion from
    /// [`Authority::begin_request`].
    pub fn create_request(
        &self,
        caller: &Caller,
        draft: &Draft,
        assertion: Option<(&str, &str)>,
    ) -> Result<RequestView, WorkflowError> {
        let now = self.clock.now();
        let (requester, prepared) = match caller {
            Caller::Workload(w) => (
                Requester::Workload {
                    name: w.name.clone(),
                },
                None,
            ),
            Caller::Local(peer) => {
                let Some((ceremony_id, credential_json)) = assertion else {
                    return Err(WorkflowError::AssertionRequired);
                };
                let operators = self.operators();
                let operator = operators.ceremony_operator(ceremony_id)?;
                let requester = Requester::Operator {
                    name: operator.clone(),
                    uid: peer.uid,
                };
                self.check_draft(draft, &requester)?;
                let prepared = operators.prepare_assertion(
                    ceremony_id,
                    &draft.digest(&operator),
                    credential_json,
                    "request.created",
                    String::new(),
                )?;
                (requester, Some(prepared))
            }
        };
        let (scope, ttl) = self.check_draft(draft, &requester)?;
        if let Some(p) = &prepared {
            policy::check_key(
                &scope.policy,
                &p.verified.credential_id,
                p.attested,
                p.verified.user_verified,
            )?;
        }
        let id = new_id()?;
        let canonical = Canonical {
            id: id.clone(),
            scope: scope.name.clone(),
            owner: scope.owner.clone(),
            runbook: scope.runbook.clone(),
            runbook_url: scope.runbook_url.clone(),
            requester: requester.label(),
            reason: draft.reason.clone(),
            ttl_secs: ttl,
            ticket: draft.ticket.clone(),
            ssh_public_key: draft.ssh_public_key.trim().to_owned(),
            delivery_public_key: hex::encode(&draft.delivery_public_key),
            created_at: now,
            pending_until: now.plus(std::time::Duration::from_secs(
                scope.policy.pending_timeout_secs,
            )),
            quorum: scope.policy.quorum,
            approver_role: scope.policy.approver_role.clone(),
        };
        let canonical_text = canonical.text();
        let request = Request {
            canonical,
            canonical_text,
            requester: requester.clone(),
            policy: scope.policy.clone(),
            votes: Vec::new(),
            state: RequestState::Pending,
        };
        let details = serde_json::json!({
            "scope": scope.name,
            "requester": requester.label(),
            "reason": draft.reason,
            "ttl_secs": ttl,
            "ticket": draft.ticket,
            "digest": hex::encode(request.digest()),
            "request_digest": hex::encode(request.digest()),
            "pending_until": request.canonical.pending_until,
            // The draft as signed, so `audit verify` can recompute the digest the
            // requester's key signed.
            "draft_ttl_secs": draft.ttl_secs,
            "ssh_public_key": draft.ssh_public_key,
            "delivery_public_key": hex::encode(&draft.delivery_public_key),
        });
        let (mut txn, event) = match prepared {
            Some(p) => {
                let mut event = p.event;
                event.subject = format!("request/{id}");
                if let (Some(map), Some(extra)) =
                    (event.details.as_object_mut(), details.as_object())
                {
                    // `digest` stays the one the requester's key signed (the draft's).
                    map.extend(
                        extra
                            .iter()
                            .filter(|(k, _)| k.as_str() != "digest")
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                (p.txn, event)
            }
            None => (
                Txn::new(),
                Event {
                    event: "request.created",
                    actor: match &requester {
                        Requester::Workload { name } => Actor::Workload { name: name.clone() },
                        Requester::Operator { name, .. } => Actor::Operator { name: name.clone() },
                    },
                    subject: format!("request/{id}"),
                    details,
                    evidence: None,
                },
            ),
        };
        txn.require_absent(Keyspace::Requests, id.as_bytes())
            .put(id.as_bytes(), &request)?;
        self.audit.commit(txn, event)?;
        Ok(RequestView {
            state: request.state.clone(),
            request,
            approvals: 0,
            denials: 0,
        })
    }

    pub(crate) fn load_request(&self, id: &str) -> Result<(Request, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Requests, id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownRequest(id.to_owned()))?;
        Ok((store::decode(&raw)?, raw))
    }

    fn view(&self, request: Request) -> Result<RequestView, WorkflowError> {
        let (approvals, denials, _) = self.tally(&request.policy, &request.votes)?;
        Ok(RequestView {
            state: request.state_at(self.clock.now()),
            request,
            approvals,
            denials,
        })
    }

    /// Hands out what a read saw only once it is durable: group commit applies a change
    /// before its flush, and a client must never be told of a state a crash could undo.
    pub(crate) fn settled<T>(&self, value: T) -> Result<T, WorkflowError> {
        self.audit.await_durable()?;
        Ok(value)
    }

    /// One request.
    pub fn request(&self, id: &str) -> Result<RequestView, WorkflowError> {
        let view = self.view(self.load_request(id)?.0)?;
        self.settled(view)
    }

    /// Requests (optionally only those in `state`, by name), newest first.
    pub fn requests(&self, state: Option<&str>) -> Result<Vec<RequestView>, WorkflowError> {
        let mut all: Vec<RequestView> = scan_all::<Request>(self.store.as_ref())?
            .into_iter()
            .map(|r| self.view(r))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|v| state.is_none_or(|s| v.state.name() == s))
            .collect();
        all.sort_by(|a, b| {
            b.request
                .canonical
                .created_at
                .cmp(&a.request.canonical.created_at)
        });
        all.truncate(MAX_LIST);
        self.settled(all)
    }

    fn require_pending_request(&self, request: &Request) -> Result<(), WorkflowError> {
        match request.state_at(self.clock.now()) {
            RequestState::Pending => Ok(()),
            RequestState::Expired { .. } => {
                Err(WorkflowError::RequestExpired(request.id().to_owned()))
            }
            other => Err(WorkflowError::RequestClosed {
                id: request.id().to_owned(),
                state: other.name(),
            }),
        }
    }

    pub(crate) fn require_requester(
        &self,
        caller: &Caller,
        request: &Request,
    ) -> Result<(), WorkflowError> {
        let mine = match (&request.requester, caller) {
            (Requester::Workload { name }, Caller::Workload(w)) => *name == w.name,
            (Requester::Operator { uid, .. }, Caller::Local(peer)) => *uid == peer.uid,
            _ => false,
        };
        if mine {
            Ok(())
        } else {
            Err(WorkflowError::NotRequester(request.id().to_owned()))
        }
    }

    /// Withdraws a pending request (its requester only).
    pub fn cancel_request(&self, caller: &Caller, id: &str) -> Result<RequestView, WorkflowError> {
        let (mut request, raw) = self.load_request(id)?;
        self.require_requester(caller, &request)?;
        self.require_pending_request(&request)?;
        request.state = RequestState::Cancelled {
            at: self.clock.now(),
        };
        let mut txn = Txn::new();
        txn.require_equals(Keyspace::Requests, id.as_bytes(), raw)
            .put(id.as_bytes(), &request)?;
        self.audit.commit(
            txn,
            Event {
                event: "request.cancelled",
                actor: match &request.requester {
                    Requester::Workload { name } => Actor::Workload { name: name.clone() },
                    Requester::Operator { uid, .. } => Actor::Local { uid: *uid },
                },
                subject: format!("request/{id}"),
                details: serde_json::json!({ "scope": request.canonical.scope }),
                evidence: None,
            },
        )?;
        self.view(request)
    }

    /// The request, if `caller` is its requester (for watching).
    pub fn watch_request(&self, caller: &Caller, id: &str) -> Result<RequestView, WorkflowError> {
        let (request, _) = self.load_request(id)?;
        self.require_requester(caller, &request)?;
        let view = self.view(request)?;
        self.settled(view)
    }

    /// The requester's credential, from the durable grant of its issued request: the SSH
    /// certificate and the bearer token sealed to the request's delivery key. Collected as
    /// often as asked while the grant is active; gone once it is revoked or expired.
    pub fn collect_credential(&self, caller: &Caller, id: &str) -> Result<Delivery, WorkflowError> {
        let (request, _) = self.load_request(id)?;
        self.require_requester(caller, &request)?;
        let RequestState::Issued { grant_id, .. } = &request.state else {
            return Err(WorkflowError::CredentialGone(id.to_owned()));
        };
        let grant = self.grant(grant_id)?;
        if !grant.active_at(self.clock.now()) {
            return Err(WorkflowError::CredentialGone(id.to_owned()));
        }
        // Only what is durable leaves the daemon (group commit applies before it flushes).
        self.settled(Delivery {
            grant_id: grant.id,
            scope: grant.scope,
            sealed_bearer: grant.sealed_bearer,
            ssh_certificate: grant.ssh.map(|s| s.certificate),
            expires_at: grant.expires_at,
        })
    }

    /// A grant.
    pub fn grant(&self, id: &str) -> Result<Grant, WorkflowError> {
        let grant = store::read::<Grant>(self.store.as_ref(), id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownGrant(id.to_owned()))?;
        self.settled(grant)
    }

    /// Introspects a bearer token (workloads admitted with `introspect` only).
    pub fn introspect(&self, caller: &Caller, token: &str) -> Result<Introspection, WorkflowError> {
        let allowed = match caller {
            Caller::Local(peer) => self.introspect_uids.contains(&peer.uid),
            Caller::Workload(w) => store::read::<Workload>(self.store.as_ref(), w.name.as_bytes())?
                .is_some_and(|w| w.introspect),
        };
        if !allowed {
            return Err(WorkflowError::IntrospectionNotAllowed);
        }
        Ok(self.index.introspect(token, self.clock.now()))
    }

    // ----- votes ---------------------------------------------------------------------------

    /// Reads a vote's target once: everything a vote checks and writes comes from this read,
    /// and its stored bytes guard the final write (compare-and-set), so a vote that raced
    /// another conflicts and is retried instead of counting against a stale copy.
    fn load_target(&self, target: &VoteTarget) -> Result<Loaded, WorkflowError> {
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
    fn vote_subject(
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

    fn ballot_check(&self, loaded: &Loaded, operator: &str) -> Result<(), WorkflowError> {
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
        if !matches!(caller, Caller::Local(_)) {
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
        if !matches!(caller, Caller::Local(_)) {
            return Err(WorkflowError::WorkloadCannotVote);
        }
        let mut attempt = 0;
        loop {
            let result = self.try_vote(target, decision, ceremony_id, credential_json);
            match result {
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    fn try_vote(
        &self,
        target: &VoteTarget,
        decision: Decision,
        ceremony_id: &str,
        credential_json: &str,
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
        let prepared = self.operators().prepare_assertion(
            ceremony_id,
            &digest,
            credential_json,
            event_name,
            target.label(),
        )?;
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

    fn count_request_vote(
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
            self.revocation_wake.notify_one();
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

    /// Mints the grant of an approved request into `txn`. The bearer token is sealed to the
    /// request's delivery key and dropped: only its hash and the sealed box are stored.
    fn mint(
        &self,
        request: &Request,
        now: Timestamp,
        txn: &mut Txn,
    ) -> Result<Grant, WorkflowError> {
        let scope = self.scope(&request.canonical.scope)?;
        let id = new_id()?;
        let expires_at = now.plus(std::time::Duration::from_secs(request.canonical.ttl_secs));
        let bearer_token = if scope.bearer {
            Some(mint::bearer_token()?)
        } else {
            None
        };
        let bearer_sha256 = bearer_token.as_deref().map(|t| hex::encode(token_hash(t)));
        let sealed_bearer = match &bearer_token {
            Some(token) => Some(crate::credential::delivery::seal(
                &delivery_key(request)?,
                &id,
                token,
            )?),
            None => None,
        };
        let ssh = match &scope.ssh {
            Some(spec) => {
                let serial = mint::serial()?;
                let certificate = mint::ssh_certificate(
                    &self.keys.ssh_ca,
                    &SshRequest {
                        public_key: &request.canonical.ssh_public_key,
                        serial,
                        grant_id: &id,
                        principals: &spec.principals,
                        issued_at: now,
                        expires_at,
                        permit_port_forwarding: spec.permit_port_forwarding,
                    },
                )?;
                Some(SshGrant {
                    serial,
                    principals: spec.principals.clone(),
                    certificate,
                })
            }
            None => None,
        };
        let grant = Grant {
            id: id.clone(),
            request_id: request.id().to_owned(),
            scope: scope.name.clone(),
            requester: request.requester.clone(),
            issued_at: now,
            expires_at,
            bearer_sha256: bearer_sha256.clone(),
            ssh: ssh.clone(),
            state: GrantState::Active,
            revocation: None,
            sealed_bearer,
        };
        txn.require_absent(Keyspace::Grants, id.as_bytes())
            .put(id.as_bytes(), &grant)?
            .put_raw(
                Keyspace::GrantExpiry,
                crate::domain::grant::expiry_key(expires_at, &id),
                crate::domain::grant::ExpiryEntry::of(&grant).encode(),
            );
        if let Some(hash) = &bearer_sha256 {
            txn.require_absent(Keyspace::GrantTokens, hash.as_bytes())
                .put_raw(Keyspace::GrantTokens, hash.as_bytes(), id.as_bytes());
        }
        if let Some(ssh) = &ssh {
            let key = ssh.serial.to_be_bytes();
            txn.require_absent(Keyspace::GrantSerials, key).put_raw(
                Keyspace::GrantSerials,
                key,
                id.as_bytes(),
            );
        }
        Ok(grant)
    }

    // ----- changes -------------------------------------------------------------------------

    fn load_change(&self, id: &str) -> Result<(Change, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Changes, id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownChange(id.to_owned()))?;
        Ok((store::decode(&raw)?, raw))
    }

    fn require_pending_change(&self, change: &Change) -> Result<(), WorkflowError> {
        match change.state_at(self.clock.now()) {
            ChangeState::Pending => Ok(()),
            ChangeState::Expired { .. } => Err(WorkflowError::ChangeExpired(change.id.clone())),
            other => Err(WorkflowError::ChangeClosed {
                id: change.id.clone(),
                state: other.name(),
            }),
        }
    }

    fn change_view(&self, change: Change) -> Result<ChangeView, WorkflowError> {
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

    fn check_note(note: &str) -> Result<(), WorkflowError> {
        if note.len() > MAX_TEXT_LEN {
            return Err(WorkflowError::NoteTooLong);
        }
        Ok(())
    }

    /// Turns a caller's proposal into a change kind, checking it against the store as it is.
    fn change_kind(&self, proposal: Proposal) -> Result<ChangeKind, WorkflowError> {
        let kind = match proposal {
            Proposal::RemoveAuthenticator {
                operator,
                credential_id,
            } => ChangeKind::RemoveAuthenticator {
                operator,
                credential_id,
            },
            Proposal::ReinstateAuthenticator {
                operator,
                credential_id,
            } => ChangeKind::ReinstateAuthenticator {
                operator,
                credential_id,
            },
            Proposal::RemoveOperator { operator } => ChangeKind::RemoveOperator { operator },
            Proposal::SetOperatorRoles { operator, roles } => {
                ChangeKind::SetOperatorRoles { operator, roles }
            }
            Proposal::PutScope(scope) => ChangeKind::PutScope { scope },
            Proposal::RemoveScope(name) => ChangeKind::RemoveScope { name },
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
            Proposal::RemoveWorkload(name) => ChangeKind::RemoveWorkload { name },
            Proposal::SetTrustPolicy(policy) => ChangeKind::SetTrustPolicy { policy },
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
        self.record_change(actor, kind, note, Txn::new())
    }

    /// Records a change (and applies it at once during genesis), committing `txn` with it.
    fn record_change(
        &self,
        proposer: Actor,
        kind: ChangeKind,
        note: &str,
        mut txn: Txn,
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
        let mut events = vec![Event {
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
        }];
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
                let kind = ChangeKind::AddAuthenticator {
                    operator: authenticator.operator.clone(),
                    new_operator_roles,
                    authenticator: authenticator.clone(),
                };
                let mut scratch = Txn::new();
                let mut extra = Vec::new();
                self.apply_change(&kind, "dry-run", &mut scratch, &mut extra)?;
                let view = self.record_change(actor, kind, note, txn)?;
                Ok((*authenticator, meta.genesis, Some(view)))
            }
        }
    }

    fn count_change_vote(
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

    /// Adds the writes of `kind` to `txn` (guarded by compare-and-set on everything read) and
    /// the audit events that describe them to `events`. Refuses what cannot apply now.
    fn apply_change(
        &self,
        kind: &ChangeKind,
        change_id: &str,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let store = self.store.as_ref();
        let invalid = |m: String| WorkflowError::ChangeInvalid(m);
        let now = self.clock.now();
        let read_key = |operator: &str,
                        credential_id: &str|
         -> Result<(Authenticator, Vec<u8>), WorkflowError> {
            let raw = store
                .get(Keyspace::Authenticators, credential_id.as_bytes())?
                .ok_or_else(|| invalid(format!("no key {credential_id}")))?;
            let key: Authenticator = store::decode(&raw)?;
            if key.operator != operator {
                return Err(invalid(format!("key {credential_id} is not {operator}'s")));
            }
            Ok((key, raw))
        };
        let read_operator = |name: &str| -> Result<(Operator, Vec<u8>), WorkflowError> {
            let raw = store
                .get(Keyspace::Operators, name.as_bytes())?
                .ok_or_else(|| OperatorError::UnknownOperator(name.to_owned()))?;
            Ok((store::decode(&raw)?, raw))
        };
        let daemon_event =
            |event: &'static str, subject: String, details: serde_json::Value| Event {
                event,
                actor: Actor::Daemon,
                subject,
                details,
                evidence: None,
            };
        match kind {
            ChangeKind::AddAuthenticator {
                operator,
                new_operator_roles,
                authenticator,
            } => {
                if let Some(existing) =
                    store::read::<Authenticator>(store, authenticator.credential_id.as_bytes())?
                {
                    return Err(OperatorError::CredentialTaken(existing.operator).into());
                }
                let roles = match (read_operator(operator), new_operator_roles) {
                    (Ok((op, raw)), _) => {
                        txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw);
                        op.roles
                    }
                    (Err(_), Some(roles)) => {
                        for role in roles {
                            operator::check_name("role", role)?;
                        }
                        let op = Operator {
                            name: operator.clone(),
                            roles: roles.clone(),
                            user_id: webauthn_rs::prelude::Uuid::new_v4(),
                            enrolled_at: now,
                        };
                        txn.require_absent(Keyspace::Operators, operator.as_bytes())
                            .put(operator.as_bytes(), &op)?;
                        roles.clone()
                    }
                    (Err(e), None) => return Err(e),
                };
                let mut key = (**authenticator).clone();
                key.enrolled_at = now;
                operator::enrol_key(txn, &key)?;
                events.push(daemon_event(
                    crate::audit::verify::ENROLLED_EVENT,
                    format!("operator/{operator}"),
                    serde_json::json!({
                        "operator": operator,
                        "roles": roles,
                        "credential_id": key.credential_id,
                        "algorithm": key.algorithm,
                        "public_key": key.public_key,
                        "aaguid": key.aaguid.map(|u| u.to_string()),
                        "attested": key.attested,
                        "path": format!("change/{change_id}"),
                    }),
                ));
            }
            ChangeKind::RemoveAuthenticator {
                operator,
                credential_id,
            } => {
                let (mut key, raw) = read_key(operator, credential_id)?;
                if matches!(key.state, AuthenticatorState::Removed { .. }) {
                    return Err(invalid(format!("key {credential_id} is already removed")));
                }
                key.state = AuthenticatorState::Removed { at: now };
                txn.require_equals(Keyspace::Authenticators, credential_id.as_bytes(), raw)
                    .put(credential_id.as_bytes(), &key)?;
                self.check_trust_quorum_after(
                    After {
                        removed_key: Some(credential_id),
                        ..After::default()
                    },
                    txn,
                )?;
                events.push(daemon_event(
                    crate::audit::verify::REMOVED_EVENT,
                    format!("operator/{operator}"),
                    serde_json::json!({ "credential_id": credential_id, "path": format!("change/{change_id}") }),
                ));
            }
            ChangeKind::ReinstateAuthenticator {
                operator,
                credential_id,
            } => {
                let (mut key, raw) = read_key(operator, credential_id)?;
                if !matches!(key.state, AuthenticatorState::Suspended { .. }) {
                    return Err(invalid(format!("key {credential_id} is not suspended")));
                }
                key.state = AuthenticatorState::Active;
                txn.require_equals(Keyspace::Authenticators, credential_id.as_bytes(), raw)
                    .put(credential_id.as_bytes(), &key)?;
                events.push(daemon_event(
                    "authenticator.reinstated",
                    format!("operator/{operator}"),
                    serde_json::json!({ "credential_id": credential_id }),
                ));
            }
            ChangeKind::RemoveOperator { operator } => {
                let (_, raw) = read_operator(operator)?;
                txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw)
                    .delete(Keyspace::Operators, operator.as_bytes());
                for key in operator::keys_of(store, operator)? {
                    if matches!(key.state, AuthenticatorState::Removed { .. }) {
                        continue;
                    }
                    let raw = store::encode(&key)?;
                    let mut removed = key.clone();
                    removed.state = AuthenticatorState::Removed { at: now };
                    txn.require_equals(Keyspace::Authenticators, key.credential_id.as_bytes(), raw)
                        .put(key.credential_id.as_bytes(), &removed)?;
                    events.push(daemon_event(
                        crate::audit::verify::REMOVED_EVENT,
                        format!("operator/{operator}"),
                        serde_json::json!({ "credential_id": key.credential_id }),
                    ));
                }
                self.check_trust_quorum_after(
                    After {
                        operator: Some(operator),
                        ..After::default()
                    },
                    txn,
                )?;
            }
            ChangeKind::SetOperatorRoles { operator, roles } => {
                for role in roles {
                    operator::check_name("role", role)?;
                }
                let (mut op, raw) = read_operator(operator)?;
                op.roles = roles.clone();
                txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw)
                    .put(operator.as_bytes(), &op)?;
                self.check_trust_quorum_after(
                    After {
                        operator: Some(operator),
                        roles: Some(roles),
                        removed_key: None,
                    },
                    txn,
                )?;
            }
            ChangeKind::PutScope { scope } => {
                scope.validate()?;
                match store.get(Keyspace::Scopes, scope.name.as_bytes())? {
                    Some(raw) => txn.require_equals(Keyspace::Scopes, scope.name.as_bytes(), raw),
                    None => txn.require_absent(Keyspace::Scopes, scope.name.as_bytes()),
                };
                txn.put(scope.name.as_bytes(), &**scope)?;
            }
            ChangeKind::RemoveScope { name } => {
                let raw = store
                    .get(Keyspace::Scopes, name.as_bytes())?
                    .ok_or_else(|| WorkflowError::UnknownScope(name.clone()))?;
                txn.require_equals(Keyspace::Scopes, name.as_bytes(), raw)
                    .delete(Keyspace::Scopes, name.as_bytes());
            }
            ChangeKind::PutWorkload { workload } => {
                workloads::validate(workload)?;
                if let Some(owner) =
                    store.get(Keyspace::WorkloadPins, workload.spki_sha256.as_bytes())?
                    && owner != workload.name.as_bytes()
                {
                    return Err(WorkloadError::PinTaken(
                        String::from_utf8_lossy(&owner).into_owned(),
                    )
                    .into());
                }
                match store.get(Keyspace::Workloads, workload.name.as_bytes())? {
                    Some(raw) => {
                        let old: Workload = store::decode(&raw)?;
                        txn.require_equals(Keyspace::Workloads, workload.name.as_bytes(), raw)
                            .delete(Keyspace::WorkloadPins, old.spki_sha256.as_bytes());
                    }
                    None => {
                        txn.require_absent(Keyspace::Workloads, workload.name.as_bytes());
                    }
                }
                txn.put(workload.name.as_bytes(), workload)?.put_raw(
                    Keyspace::WorkloadPins,
                    workload.spki_sha256.as_bytes(),
                    workload.name.as_bytes(),
                );
            }
            ChangeKind::RemoveWorkload { name } => {
                let raw = store
                    .get(Keyspace::Workloads, name.as_bytes())?
                    .ok_or_else(|| invalid(format!("no workload {name}")))?;
                let old: Workload = store::decode(&raw)?;
                txn.require_equals(Keyspace::Workloads, name.as_bytes(), raw)
                    .delete(Keyspace::Workloads, name.as_bytes())
                    .delete(Keyspace::WorkloadPins, old.spki_sha256.as_bytes());
            }
            ChangeKind::SetTrustPolicy { policy } => {
                if policy.quorum == 0 || policy.quorum > crate::base::constants::MAX_QUORUM {
                    return Err(invalid("quorum must be between 1 and 32".into()));
                }
                operator::check_name("role", &policy.approver_role)?;
                let eligible =
                    self.eligible_approvers(&policy.approver_role, After::default(), txn)?;
                if eligible < policy.quorum {
                    return Err(invalid(format!(
                        "only {eligible} operators with an active key hold role {}: a quorum of {} could never be met",
                        policy.approver_role, policy.quorum
                    )));
                }
                let (mut meta, raw) = trust_store::read_meta(store)?;
                meta.policy = policy.clone();
                txn.require_equals(Keyspace::Meta, META_KEY, raw)
                    .put(META_KEY, &meta)?;
            }
        }
        Ok(())
    }

    /// How many operators could approve with `role` once a change is applied: each needs an
    /// active key (not `after.removed_key`) and the role (`after.roles` for `after.operator`;
    /// none if that operator is removed). Every record the count rests on (active keys, counted
    /// operators) is compared-and-set in `guard`, so two changes that each pass alone cannot
    /// both commit when together they would lock the trust store out (write skew).
    fn eligible_approvers(
        &self,
        role: &str,
        after: After<'_>,
        guard: &mut Txn,
    ) -> Result<u32, WorkflowError> {
        let store = self.store.as_ref();
        let mut with_key: HashMap<String, bool> = HashMap::new();
        for (id, raw) in store.scan_from(Keyspace::Authenticators, b"", usize::MAX)? {
            let standing: crate::domain::operator::KeyStanding = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::Corrupt {
                    keyspace: Keyspace::Authenticators.name(),
                    detail: e.to_string(),
                })?;
            if standing.state != AuthenticatorState::Active
                || after.removed_key == Some(String::from_utf8_lossy(&id).as_ref())
            {
                continue;
            }
            with_key.insert(standing.operator, true);
            guard.require_equals(Keyspace::Authenticators, id, raw);
        }
        let mut count = 0u32;
        for (name, raw) in store.scan_from(Keyspace::Operators, b"", usize::MAX)? {
            let op: Operator = store::decode(&raw)?;
            if !with_key.contains_key(&op.name) {
                continue;
            }
            let holds = if after.operator == Some(op.name.as_str()) {
                after.roles.is_some_and(|r| r.iter().any(|x| x == role))
            } else {
                op.roles.iter().any(|x| x == role)
            };
            if holds {
                count += 1;
                guard.require_equals(Keyspace::Operators, name, raw);
            }
        }
        Ok(count)
    }

    /// Refuses a change that would leave the trust store unable to reach its own quorum. The
    /// records the decision rests on (metadata, keys, operators) are guarded in `txn`.
    fn check_trust_quorum_after(
        &self,
        after: After<'_>,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        let (meta, meta_raw) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis == Genesis::Open {
            return Ok(());
        }
        txn.require_equals(Keyspace::Meta, META_KEY, meta_raw);
        let eligible = self.eligible_approvers(&meta.policy.approver_role, after, txn)?;
        if eligible < meta.policy.quorum {
            return Err(WorkflowError::ChangeInvalid(format!(
                "after this change only {eligible} operators could approve trust-store changes (quorum {}): the trust store would lock itself out",
                meta.policy.quorum
            )));
        }
        Ok(())
    }

    // ----- listings ------------------------------------------------------------------------

    /// All scopes.
    pub fn scopes(&self) -> Result<Vec<Scope>, WorkflowError> {
        let scopes = scan_all(self.store.as_ref())?;
        self.settled(scopes)
    }

    /// One scope.
    pub fn scope_named(&self, name: &str) -> Result<Scope, WorkflowError> {
        if name == TRUST_STORE_SCOPE {
            let policy = self.trust_policy()?;
            return Ok(Scope {
                name: TRUST_STORE_SCOPE.to_owned(),
                owner: "trust-store approvers".to_owned(),
                runbook: "Built in: every trust-store change is approved against this scope."
                    .to_owned(),
                runbook_url: String::new(),
                bearer: false,
                ssh: None,
                default_ttl_secs: 0,
                max_ttl_secs: 0,
                policy,
                requesters: crate::domain::scope::Requesters::default(),
                revocation: crate::domain::scope::RevocationSpec::default(),
            });
        }
        let scope = self.scope(name)?;
        self.settled(scope)
    }

    /// All workloads.
    pub fn workloads(&self) -> Result<Vec<Workload>, WorkflowError> {
        let workloads = workloads::list(self.store.as_ref())?;
        self.settled(workloads)
    }

    /// All operators with their keys.
    pub fn operators_list(&self) -> Result<Vec<(Operator, Vec<Authenticator>)>, WorkflowError> {
        let store = self.store.as_ref();
        let keys = operator::authenticators(store)?;
        let operators = scan_all::<Operator>(store)?
            .into_iter()
            .map(|op| {
                let mine = keys
                    .iter()
                    .filter(|k| k.operator == op.name)
                    .cloned()
                    .collect();
                (op, mine)
            })
            .collect::<Vec<_>>();
        self.settled(operators)
    }
}

/// A trust-store change as the lock-out guard imagines it applied.
#[derive(Clone, Copy, Debug, Default)]
struct After<'a> {
    /// The operator whose roles change (or who is removed: `roles` None).
    operator: Option<&'a str>,
    /// That operator's roles afterwards.
    roles: Option<&'a [String]>,
    /// A key removed by the change.
    removed_key: Option<&'a str>,
}

/// A vote's target as read once per vote, with its stored bytes.
enum Loaded {
    Request(Request, Vec<u8>),
    Change(Change, Vec<u8>),
}
