//! Break-glass requests: a draft checked and signed, created, watched, cancelled.

use crate::audit::{Actor, Event};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::base::constants::MAX_LIST;
use crate::credential::mint::MintError;
use crate::domain::operator::Opened;
use crate::domain::policy::{self};
use crate::domain::request::{Canonical, Draft, DraftError, Request, RequestState, Requester};
use crate::domain::scope::Scope;
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::ceremony::PreparedAssertion;
use crate::service::workflow::*;
use crate::store::{self, Keyspace, Txn};

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

/// The requester an operator's request from `caller` records: the local user, or the remote
/// address (then the operator's read sessions, from anywhere, may watch and collect).
fn operator_requester(caller: &Caller, operator: &str) -> Result<Requester, WorkflowError> {
    match caller {
        Caller::Local(peer) => Ok(Requester::Operator {
            name: operator.to_owned(),
            uid: peer.uid,
            remote: None,
        }),
        Caller::Remote(peer) => Ok(Requester::Operator {
            name: operator.to_owned(),
            // (uid_t)-1 is never a user; `remote` decides who may collect.
            uid: u32::MAX,
            remote: Some(peer.addr.to_string()),
        }),
        Caller::Workload(_) => Err(WorkflowError::LocalOnly),
    }
}

impl Authority {
    /// Checks a draft against its scope and requester; returns the scope and granted TTL.
    pub(in crate::service) fn check_draft(
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
        let requester = operator_requester(caller, operator)?;
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
        let (requester, prepared) = self.requester_of(caller, draft, assertion)?;
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
        let request = new_request(&id, &scope, requester, draft, ttl, now);
        let (mut txn, event) = creation_event(&request, draft, prepared, &caller.via());
        txn.require_absent(Keyspace::Requests, id.as_bytes())
            .put(id.as_bytes(), &request)?;
        self.audit.commit(txn, event)?;
        self.note_pending(&request);
        Ok(RequestView {
            state: request.state.clone(),
            request,
            approvals: 0,
            denials: 0,
        })
    }

    /// Who asks: the workload calling, or the operator whose key signed the draft (the
    /// assertion prepared, not yet committed).
    fn requester_of(
        &self,
        caller: &Caller,
        draft: &Draft,
        assertion: Option<(&str, &str)>,
    ) -> Result<(Requester, Option<PreparedAssertion>), WorkflowError> {
        match caller {
            Caller::Workload(w) => Ok((
                Requester::Workload {
                    name: w.name.clone(),
                },
                None,
            )),
            Caller::Local(_) | Caller::Remote(_) => {
                let Some((ceremony_id, credential_json)) = assertion else {
                    return Err(WorkflowError::AssertionRequired);
                };
                let operators = self.operators();
                let operator = operators.ceremony_operator(ceremony_id)?;
                let requester = operator_requester(caller, &operator)?;
                self.check_draft(draft, &requester)?;
                let prepared = operators.prepare_assertion(
                    ceremony_id,
                    &draft.digest(&operator),
                    credential_json,
                    "request.created",
                    String::new(),
                )?;
                Ok((requester, Some(prepared)))
            }
        }
    }

    pub(crate) fn load_request(&self, id: &str) -> Result<(Request, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Requests, id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownRequest(id.to_owned()))?;
        Ok((store::decode(&raw)?, raw))
    }

    pub(in crate::service) fn view(&self, request: Request) -> Result<RequestView, WorkflowError> {
        let (approvals, denials, _) = self.tally(&request.policy, &request.votes)?;
        Ok(RequestView {
            state: request.state_at(self.clock.now()),
            request,
            approvals,
            denials,
        })
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

    pub(in crate::service) fn require_pending_request(
        &self,
        request: &Request,
    ) -> Result<(), WorkflowError> {
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
        if request.requester.is(caller) {
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
}

/// A pending request with its canonical text, as `draft` asks it of `scope`.
fn new_request(
    id: &str,
    scope: &Scope,
    requester: Requester,
    draft: &Draft,
    ttl: u64,
    now: Timestamp,
) -> Request {
    let canonical = Canonical {
        id: id.to_owned(),
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
    Request {
        canonical,
        canonical_text,
        requester,
        policy: scope.policy.clone(),
        votes: Vec::new(),
        state: RequestState::Pending,
    }
}

/// The transaction and `request.created` event of a new request: the operator's prepared
/// assertion (its evidence, the digest their key signed) or a workload's plain event.
fn creation_event(
    request: &Request,
    draft: &Draft,
    prepared: Option<PreparedAssertion>,
    via: &str,
) -> (Txn, Event) {
    let id = request.id();
    let details = serde_json::json!({
        "via": via,
        "scope": request.canonical.scope,
        "requester": request.requester.label(),
        "reason": draft.reason,
        "ttl_secs": request.canonical.ttl_secs,
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
    match prepared {
        Some(p) => {
            let mut event = p.event;
            event.subject = format!("request/{id}");
            if let (Some(map), Some(extra)) = (event.details.as_object_mut(), details.as_object()) {
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
                actor: match &request.requester {
                    Requester::Workload { name } => Actor::Workload { name: name.clone() },
                    Requester::Operator { name, .. } => Actor::Operator { name: name.clone() },
                },
                subject: format!("request/{id}"),
                details,
                evidence: None,
            },
        ),
    }
}
