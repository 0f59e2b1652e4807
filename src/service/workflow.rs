//! The break-glass workflow's errors and what its steps share: actors, scopes, operators, the
//! trust-store policy, listings. The steps are [`super::requests`], [`super::votes`],
//! [`super::minting`] and [`super::changes`]. Every state change is one transaction with its
//! audit records; every refusal writes nothing.

use crate::audit::{Actor, AuditError};
use crate::base::caller::Caller;
use crate::base::constants::{
    CHANGE_PENDING_TIMEOUT, MAX_TEXT_LEN, MIN_PROOFING_NOTE_LEN, TRUST_STORE_SCOPE,
};
use crate::base::error::{Coded, ErrorKind};
use crate::credential::mint::MintError;
use crate::domain::operator::{Authenticator, Operator};
use crate::domain::policy::{ApprovalPolicy, PolicyError};
use crate::domain::request::DraftError;
use crate::domain::scope::{Scope, ScopeError};
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::operators::{self as operator, OperatorError};
use crate::service::trust_store::{self, TrustError};
use crate::service::workloads::{self, WorkloadError};
use crate::store::{self, Store, StoreError};

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
        scope: String,
    },
    /// Workloads request and route; they never approve or deny.
    #[error("workloads cannot vote; an operator must approve with a hardware key")]
    WorkloadCannotVote,
    /// An operator request needs the operator's hardware assertion (BeginRequest first).
    #[error(
        "a request over the local socket must be signed by the requesting operator's key \
         (`latchkey request --operator NAME` does this; API clients call BeginRequest, sign, \
         then CreateRequest with the assertion)"
    )]
    AssertionRequired,
    /// The request waited longer than its policy allows. Make a new request.
    #[error("request {0} expired before reaching quorum")]
    RequestExpired(String),
    /// The request is no longer pending.
    #[error("request {id} is {state}, not pending")]
    RequestClosed {
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
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// Only the requester may watch, collect or cancel a request.
    #[error("only the requester may do this with request {0}")]
    NotRequester(String),
    /// The caller may not introspect tokens. Admit the workload with `introspect`.
    #[error(
        "this caller may not introspect tokens: a local user needs its uid in `[unix] \
         introspect_uids` of latchkeyd.toml; a workload needs `latchkey workload put NAME \
         --introspect` (a trust-store change)"
    )]
    IntrospectionNotAllowed,
    /// Trust-store changes are proposed from the bastion's local socket, or (after genesis)
    /// signed by the proposer's key on the remote port.
    #[error(
        "trust-store changes are proposed over the local socket, or after genesis signed by the \
         proposer's key (BeginProposeChange; `latchkey --server … --as YOU`)"
    )]
    LocalOnly,
    /// Read sessions are for the remote operator port; on the bastion's socket reads need none.
    #[error("read sessions are opened on the remote operator port; the local socket needs none")]
    SessionRemoteOnly,
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
    GrantNotActive { id: String, state: &'static str },
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
            WorkflowError::SessionRemoteOnly => "session.remote_only",
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
            WorkflowError::SessionRemoteOnly => ErrorKind::FailedPrecondition,
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

/// A fresh request or change id: 12 random bytes, hex.
pub(in crate::service) fn new_id() -> Result<String, WorkflowError> {
    crate::base::names::random_id::<12>()
        .map_err(|e| MintError::Randomness(e.detail().to_owned()).into())
}

pub(in crate::service) fn scan_all<R: store::Record>(
    store: &dyn Store,
) -> Result<Vec<R>, StoreError> {
    store
        .scan_from(R::KEYSPACE, b"", usize::MAX)?
        .into_iter()
        .map(|(_, v)| store::decode(&v))
        .collect()
}

impl Authority {
    pub(in crate::service) fn local_actor(caller: &Caller) -> Result<Actor, WorkflowError> {
        match caller {
            Caller::Local(peer) => Ok(Actor::Local { uid: peer.uid }),
            Caller::Workload(_) | Caller::Remote(_) => Err(WorkflowError::LocalOnly),
        }
    }

    pub(in crate::service) fn scope(&self, name: &str) -> Result<Scope, WorkflowError> {
        store::read::<Scope>(self.store.as_ref(), name.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownScope(name.to_owned()))
    }

    pub(in crate::service) fn operator_record(
        &self,
        name: &str,
    ) -> Result<Operator, WorkflowError> {
        store::read::<Operator>(self.store.as_ref(), name.as_bytes())?
            .ok_or_else(|| OperatorError::UnknownOperator(name.to_owned()).into())
    }

    /// The approval policy of trust-store changes.
    pub(in crate::service) fn trust_policy(&self) -> Result<ApprovalPolicy, WorkflowError> {
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

    /// Hands out what a read saw only once it is durable: group commit applies a change
    /// before its flush, and a client must never be told of a state a crash could undo.
    pub(crate) fn settled<T>(&self, value: T) -> Result<T, WorkflowError> {
        self.audit.await_durable()?;
        Ok(value)
    }

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
