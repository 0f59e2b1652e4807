//! `latchkey.v1.AccessService`: requests, votes, the requester's wait, introspection.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::identity::caller_of;
use super::system::timestamp;
use super::{blocking, status, to_status};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::base::error::ErrorKind;
use crate::domain::drill::{DrillRecord, DrillStep, StepOutcome};
use crate::domain::grant::{Grant, GrantState};
use crate::domain::policy::Decision;
use crate::domain::request::{Draft, RequestState};
use crate::pb;
use crate::service::authority::Authority;
use crate::service::minting::Delivery;
use crate::service::requests::RequestView;
use crate::service::revocation::effective_state;
use crate::service::votes::VoteTarget;

/// Serves `AccessService`.
#[derive(Debug, Clone)]
pub struct AccessApi {
    authority: Arc<Authority>,
    shutdown: watch::Receiver<bool>,
    streams: super::StreamLimit,
}

impl AccessApi {
    /// The service over `authority`; watch streams end when `shutdown` turns true.
    pub fn new(
        authority: Arc<Authority>,
        shutdown: watch::Receiver<bool>,
        streams: super::StreamLimit,
    ) -> Self {
        Self {
            authority,
            shutdown,
            streams,
        }
    }
}

fn draft(d: Option<pb::RequestDraft>) -> Result<Draft, Status> {
    let d = d.ok_or_else(|| {
        status(
            ErrorKind::InvalidInput,
            "request.missing_draft",
            "the request draft is missing",
        )
    })?;
    let ttl_secs = match d.ttl {
        None => None,
        Some(t) if t.seconds < 0 || t.nanos != 0 => {
            return Err(status(
                ErrorKind::InvalidInput,
                "request.invalid_ttl",
                "TTL must be a whole, positive number of seconds",
            ));
        }
        Some(t) => Some(u64::try_from(t.seconds).unwrap_or(0)),
    };
    Ok(Draft {
        scope: d.scope,
        reason: d.reason,
        ttl_secs,
        ticket: d.ticket,
        ssh_public_key: d.ssh_public_key,
        delivery_public_key: d.delivery_public_key,
    })
}

pub(super) fn decision(value: i32) -> Result<Decision, Status> {
    match pb::Decision::try_from(value) {
        Ok(pb::Decision::Approve) => Ok(Decision::Approve),
        Ok(pb::Decision::Deny) => Ok(Decision::Deny),
        _ => Err(status(
            ErrorKind::InvalidInput,
            "approval.invalid_decision",
            "decision must be APPROVE or DENY",
        )),
    }
}

fn decision_to_pb(d: Decision) -> pb::Decision {
    match d {
        Decision::Approve => pb::Decision::Approve,
        Decision::Deny => pb::Decision::Deny,
    }
}

fn target(t: Option<pb::VoteTarget>) -> Result<VoteTarget, Status> {
    match t.and_then(|t| t.target) {
        Some(pb::vote_target::Target::RequestId(id)) => Ok(VoteTarget::Request(id)),
        Some(pb::vote_target::Target::ChangeId(id)) => Ok(VoteTarget::Change(id)),
        None => Err(status(
            ErrorKind::InvalidInput,
            "approval.missing_target",
            "say which request or change the vote is on",
        )),
    }
}

fn secs(s: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(s).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn state_to_pb(state: &RequestState) -> pb::RequestState {
    match state {
        RequestState::Pending => pb::RequestState::Pending,
        RequestState::Issued { .. } => pb::RequestState::Issued,
        RequestState::Denied { .. } => pb::RequestState::Denied,
        RequestState::Cancelled { .. } => pb::RequestState::Cancelled,
        RequestState::Expired { .. } => pb::RequestState::Expired,
    }
}

/// A request as the API shows it.
pub fn request_to_pb(view: &RequestView) -> pb::RequestInfo {
    let r = &view.request;
    let c = &r.canonical;
    pb::RequestInfo {
        id: c.id.clone(),
        scope: c.scope.clone(),
        requester: c.requester.clone(),
        reason: c.reason.clone(),
        ttl: Some(secs(c.ttl_secs)),
        ticket: c.ticket.clone(),
        ssh_public_key: c.ssh_public_key.clone(),
        scope_owner: c.owner.clone(),
        scope_runbook: c.runbook.clone(),
        scope_runbook_url: c.runbook_url.clone(),
        quorum: c.quorum,
        approver_role: c.approver_role.clone(),
        created_at: Some(timestamp(c.created_at)),
        pending_until: Some(timestamp(c.pending_until)),
        state: state_to_pb(&view.state).into(),
        votes: r
            .votes
            .iter()
            .map(|v| pb::VoteInfo {
                operator: v.operator.clone(),
                credential_id: v.credential_id.clone(),
                decision: decision_to_pb(v.decision).into(),
                user_verified: v.user_verified,
                at: Some(timestamp(v.at)),
            })
            .collect(),
        approvals: view.approvals,
        denials: view.denials,
        grant_id: match &view.state {
            RequestState::Issued { grant_id, .. } => grant_id.clone(),
            _ => String::new(),
        },
        canonical_json: r.canonical_text.clone(),
        digest: r.digest().to_vec(),
    }
}

fn credential_to_pb(d: Delivery) -> Result<pb::Credential, Status> {
    let sealed_bearer_token = match d.sealed_bearer {
        Some(sealed) => Some(pb::SealedToken {
            encapsulated_key: sealed.encapsulated_key_bytes().map_err(|e| to_status(&e))?,
            ciphertext: sealed.ciphertext_bytes().map_err(|e| to_status(&e))?,
        }),
        None => None,
    };
    #[allow(deprecated)] // the plaintext field stays in the proto, always empty
    Ok(pb::Credential {
        grant_id: d.grant_id,
        bearer_token: String::new(),
        ssh_certificate: d.ssh_certificate.unwrap_or_default(),
        expires_at: Some(timestamp(d.expires_at)),
        scope: d.scope,
        sealed_bearer_token,
    })
}

type WatchItem = Result<pb::WatchRequestResponse, Status>;

/// Streams a request's progress until it ends, its requester leaves or the daemon stops.
async fn watch_loop(
    authority: Arc<Authority>,
    caller: Caller,
    id: String,
    mut records: broadcast::Receiver<crate::audit::AuditRecord>,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<WatchItem>,
) {
    let subject = format!("request/{id}");
    let mut last: Option<(pb::RequestState, usize)> = None;
    loop {
        let read = {
            let (authority, caller, id) = (authority.clone(), caller.clone(), id.clone());
            // Store reads (and the wait for durability) run off the async workers.
            blocking(move || {
                let view = authority
                    .watch_request(&caller, &id)
                    .map_err(|e| to_status(&e))?;
                let credential = if matches!(view.state, RequestState::Issued { .. }) {
                    let delivery = authority
                        .collect_credential(&caller, &id)
                        .map_err(|e| to_status(&e))?;
                    Some(credential_to_pb(delivery)?)
                } else {
                    None
                };
                Ok((view, credential))
            })
            .await
        };
        let (view, credential) = match read {
            Ok(read) => read,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let now_state = (state_to_pb(&view.state), view.request.votes.len());
        if last != Some(now_state) {
            last = Some(now_state);
            let item = pb::WatchRequestResponse {
                request: Some(request_to_pb(&view)),
                credential,
            };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        if !matches!(view.state, RequestState::Pending) {
            return;
        }
        // Wake for the next record about this request, or at its deadline.
        let remaining_ms = view
            .request
            .canonical
            .pending_until
            .unix_millis()
            .saturating_sub(authority.now().unix_millis());
        let deadline = tokio::time::sleep(Duration::from_millis(
            u64::try_from(remaining_ms.max(0)).unwrap_or(0),
        ));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                record = records.recv() => match record {
                    Ok(r) if r.subject == subject => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = &mut deadline => break,
                _ = shutdown.changed() => return,
                () = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for AccessApi {
    async fn begin_request(
        &self,
        request: Request<pb::BeginRequestRequest>,
    ) -> Result<Response<pb::BeginRequestResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let draft = draft(req.draft)?;
        let authority = self.authority.clone();
        let (opened, digest) = blocking(move || {
            authority
                .begin_request(&caller, &req.operator, &draft)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginRequestResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            digest: digest.to_vec(),
            piv_challenge: opened.piv_challenge.to_vec(),
        }))
    }

    async fn create_request(
        &self,
        request: Request<pb::CreateRequestRequest>,
    ) -> Result<Response<pb::CreateRequestResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let draft = draft(req.draft)?;
        let authority = self.authority.clone();
        let view = blocking(move || {
            let assertion = (!req.ceremony_id.is_empty())
                .then_some((req.ceremony_id.as_str(), req.credential_json.as_str()));
            authority
                .create_request(&caller, &draft, assertion)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::CreateRequestResponse {
            request: Some(request_to_pb(&view)),
        }))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        caller_of(&request)?;
        let state = match pb::RequestState::try_from(request.into_inner().state) {
            Ok(pb::RequestState::Pending) => Some("pending"),
            Ok(pb::RequestState::Issued) => Some("issued"),
            Ok(pb::RequestState::Denied) => Some("denied"),
            Ok(pb::RequestState::Cancelled) => Some("cancelled"),
            Ok(pb::RequestState::Expired) => Some("expired"),
            _ => None,
        };
        let authority = self.authority.clone();
        let views = blocking(move || authority.requests(state).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: views.iter().map(request_to_pb).collect(),
        }))
    }

    async fn show_request(
        &self,
        request: Request<pb::ShowRequestRequest>,
    ) -> Result<Response<pb::ShowRequestResponse>, Status> {
        caller_of(&request)?;
        let id = request.into_inner().id;
        let authority = self.authority.clone();
        let view = blocking(move || authority.request(&id).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowRequestResponse {
            request: Some(request_to_pb(&view)),
        }))
    }

    async fn begin_vote(
        &self,
        request: Request<pb::BeginVoteRequest>,
    ) -> Result<Response<pb::BeginVoteResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let target = target(req.target)?;
        let decision = decision(req.decision)?;
        let authority = self.authority.clone();
        let (opened, digest) = blocking(move || {
            authority
                .begin_vote(&caller, &target, &req.operator, decision)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginVoteResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            vote_digest: digest.to_vec(),
            piv_challenge: opened.piv_challenge.to_vec(),
        }))
    }

    async fn cast_vote(
        &self,
        request: Request<pb::CastVoteRequest>,
    ) -> Result<Response<pb::CastVoteResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let target = target(req.target)?;
        let decision = decision(req.decision)?;
        let authority = self.authority.clone();
        let result = blocking(move || {
            authority
                .cast_vote(
                    &caller,
                    &target,
                    decision,
                    &req.ceremony_id,
                    &req.credential_json,
                )
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::CastVoteResponse {
            state: result.state.to_owned(),
            approvals: result.approvals,
            denials: result.denials,
            quorum: result.quorum,
            audit_seq: result.audit_seq,
            grant_id: result.grant_id.unwrap_or_default(),
        }))
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Result<Response<pb::CancelRequestResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().id;
        let authority = self.authority.clone();
        let view = blocking(move || {
            authority
                .cancel_request(&caller, &id)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::CancelRequestResponse {
            request: Some(request_to_pb(&view)),
        }))
    }

    type WatchRequestStream = Pin<Box<dyn tokio_stream::Stream<Item = WatchItem> + Send + 'static>>;

    async fn watch_request(
        &self,
        request: Request<pb::WatchRequestRequest>,
    ) -> Result<Response<Self::WatchRequestStream>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().id;
        let permit = self.streams.take()?;
        // Subscribe before the first read, so nothing committed in between is missed.
        let records = self.authority.audit().subscribe();
        {
            let (authority, caller, id) = (self.authority.clone(), caller.clone(), id.clone());
            blocking(move || {
                authority
                    .watch_request(&caller, &id)
                    .map_err(|e| to_status(&e))
            })
            .await?;
        }
        let (tx, rx) = mpsc::channel(16);
        let watching = watch_loop(
            self.authority.clone(),
            caller,
            id,
            records,
            self.shutdown.clone(),
            tx,
        );
        tokio::spawn(async move {
            let _held = permit;
            watching.await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let caller = caller_of(&request)?;
        let answer = self
            .authority
            .introspect(&caller, &request.into_inner().token)
            .map_err(|e| to_status(&e))?;
        // As RFC 7662: an inactive token gets `active: false` and nothing else.
        if !answer.active {
            return Ok(Response::new(pb::IntrospectResponse::default()));
        }
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            scope: answer.scope,
            grant_id: answer.grant_id,
            expires_at: Some(timestamp(answer.expires_at)),
        }))
    }

    async fn show_grant(
        &self,
        request: Request<pb::ShowGrantRequest>,
    ) -> Result<Response<pb::ShowGrantResponse>, Status> {
        caller_of(&request)?;
        let id = request.into_inner().id;
        let authority = self.authority.clone();
        let grant = blocking(move || authority.grant(&id).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowGrantResponse {
            grant: Some(grant_to_pb(&grant, self.authority.now())),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        caller_of(&request)?;
        let state = match pb::GrantState::try_from(request.into_inner().state) {
            Ok(pb::GrantState::Active) => Some(GrantState::Active),
            Ok(pb::GrantState::Revoking) => Some(GrantState::Revoking),
            Ok(pb::GrantState::Revoked) => Some(GrantState::Revoked),
            Ok(pb::GrantState::RevocationUnconfirmed) => Some(GrantState::RevocationUnconfirmed),
            _ => None,
        };
        let authority = self.authority.clone();
        let grants = blocking(move || authority.grants(state).map_err(|e| to_status(&e))).await?;
        let now = self.authority.now();
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(|g| grant_to_pb(g, now)).collect(),
        }))
    }

    async fn begin_revoke(
        &self,
        request: Request<pb::BeginRevokeRequest>,
    ) -> Result<Response<pb::BeginRevokeResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let (opened, digest) = blocking(move || {
            authority
                .begin_revoke(&caller, &req.grant_id, &req.operator, &req.reason)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginRevokeResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            digest: digest.to_vec(),
            piv_challenge: opened.piv_challenge.to_vec(),
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let grant = blocking(move || {
            authority
                .revoke(
                    &caller,
                    &req.grant_id,
                    &req.reason,
                    &req.ceremony_id,
                    &req.credential_json,
                )
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::RevokeResponse {
            grant: Some(grant_to_pb(&grant, self.authority.now())),
        }))
    }

    async fn relinquish(
        &self,
        request: Request<pb::RelinquishRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().grant_id;
        let authority = self.authority.clone();
        let grant = blocking(move || {
            authority
                .relinquish(&caller, &id)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::RevokeResponse {
            grant: Some(grant_to_pb(&grant, self.authority.now())),
        }))
    }

    async fn record_drill(
        &self,
        request: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::RecordDrillResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let steps = r
            .steps
            .iter()
            .map(drill_step_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let authority = self.authority.clone();
        let record = blocking(move || {
            authority
                .record_drill(&caller, &r.request_id, steps)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::RecordDrillResponse {
            drill: Some(drill_to_pb(&record)),
        }))
    }

    async fn list_drills(
        &self,
        request: Request<pb::ListDrillsRequest>,
    ) -> Result<Response<pb::ListDrillsResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let drills = blocking(move || {
            let drills = authority.drills().map_err(|e| to_status(&e))?;
            // Shown only once durable, like every read a client sees.
            authority
                .audit()
                .await_durable()
                .map_err(|e| to_status(&e))?;
            Ok(drills)
        })
        .await?;
        Ok(Response::new(pb::ListDrillsResponse {
            scopes: drills
                .iter()
                .map(|h| pb::ScopeDrills {
                    scope: h.scope.clone(),
                    last: Some(drill_to_pb(&h.last)),
                    last_passed: h.last_passed.as_ref().map(drill_to_pb),
                })
                .collect(),
        }))
    }

    type WatchRevocationsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = RevocationItem> + Send + 'static>>;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let caller = caller_of(&request)?;
        let permit = self.streams.take()?;
        // Subscribe before the backlog, so a revocation starting in between is not missed.
        let records = self.authority.audit().subscribe();
        {
            let (authority, caller) = (self.authority.clone(), caller.clone());
            blocking(move || {
                authority
                    .revocations_for(&caller)
                    .map_err(|e| to_status(&e))
            })
            .await?;
        }
        let (tx, rx) = mpsc::channel(64);
        let watching = revocation_loop(
            self.authority.clone(),
            caller,
            records,
            self.shutdown.clone(),
            tx,
        );
        tokio::spawn(async move {
            let _held = permit;
            watching.await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge_revocation(
        &self,
        request: Request<pb::AcknowledgeRevocationRequest>,
    ) -> Result<Response<pb::AcknowledgeRevocationResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().grant_id;
        let authority = self.authority.clone();
        let state = blocking(move || {
            authority
                .acknowledge_revocation(&caller, &id)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::AcknowledgeRevocationResponse {
            state: grant_state_to_pb(state).into(),
        }))
    }
}

type RevocationItem = Result<pb::WatchRevocationsResponse, Status>;

/// Sends a consumer every revocation it must acknowledge, once each, until it leaves.
async fn revocation_loop(
    authority: Arc<Authority>,
    caller: Caller,
    mut records: broadcast::Receiver<crate::audit::AuditRecord>,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<RevocationItem>,
) {
    let mut sent = std::collections::HashSet::new();
    loop {
        let read = {
            let (authority, caller) = (authority.clone(), caller.clone());
            blocking(move || {
                authority
                    .revocations_for(&caller)
                    .map_err(|e| to_status(&e))
            })
            .await
        };
        let waiting = match read {
            Ok(w) => w,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let now = authority.now();
        for grant in waiting {
            if sent.insert(grant.id.clone()) {
                let item = pb::WatchRevocationsResponse {
                    grant: Some(grant_to_pb(&grant, now)),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                record = records.recv() => match record {
                    Ok(r) if r.event == "grant.revoking" => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
                () = tx.closed() => return,
            }
        }
    }
}

fn grant_state_to_pb(state: GrantState) -> pb::GrantState {
    match state {
        GrantState::Active => pb::GrantState::Active,
        GrantState::Revoking => pb::GrantState::Revoking,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::RevocationUnconfirmed => pb::GrantState::RevocationUnconfirmed,
    }
}

/// A grant as the API shows it, in its state at `now`.
pub fn grant_to_pb(grant: &Grant, now: Timestamp) -> pb::GrantInfo {
    let revocation = grant.revocation.as_ref();
    pb::GrantInfo {
        id: grant.id.clone(),
        request_id: grant.request_id.clone(),
        scope: grant.scope.clone(),
        requester: grant.requester.label(),
        issued_at: Some(timestamp(grant.issued_at)),
        expires_at: Some(timestamp(grant.expires_at)),
        state: grant_state_to_pb(effective_state(grant, now)).into(),
        bearer: grant.bearer_sha256.is_some(),
        ssh_serial: grant.ssh.as_ref().map_or(0, |s| s.serial),
        ssh_principals: grant
            .ssh
            .as_ref()
            .map(|s| s.principals.clone())
            .unwrap_or_default(),
        ssh_certificate: grant
            .ssh
            .as_ref()
            .map(|s| s.certificate.clone())
            .unwrap_or_default(),
        revocation_reason: revocation.map(|r| r.reason.clone()).unwrap_or_default(),
        revocation_started_at: revocation.map(|r| timestamp(r.started_at)),
        revocation_deadline: revocation.map(|r| timestamp(r.deadline)),
        revoked_at: revocation.and_then(|r| r.completed_at).map(timestamp),
        sinks: revocation
            .map(|r| {
                r.sinks
                    .iter()
                    .map(|s| pb::SinkInfo {
                        sink: s.sink.label(),
                        confirmed: s.confirmed_at.is_some(),
                        confirmed_at: s.confirmed_at.map(timestamp),
                        detail: s.detail.clone(),
                        attempts: s.attempts,
                        last_error: s.last_error.clone().unwrap_or_default(),
                        next_attempt_at: s
                            .confirmed_at
                            .is_none()
                            .then(|| timestamp(s.next_attempt_at)),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn drill_step_from_pb(s: &pb::DrillStep) -> Result<DrillStep, Status> {
    let outcome = match s.outcome() {
        pb::DrillStepOutcome::Passed => StepOutcome::Passed,
        pb::DrillStepOutcome::Failed => StepOutcome::Failed,
        pb::DrillStepOutcome::Skipped => StepOutcome::Skipped,
        pb::DrillStepOutcome::Unspecified => {
            return Err(status(
                ErrorKind::InvalidInput,
                "drill.malformed",
                &format!("step {:?} has no outcome", s.name),
            ));
        }
    };
    let millis = match &s.took {
        Some(d) if d.seconds >= 0 && d.nanos >= 0 => u64::try_from(d.seconds)
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::try_from(d.nanos / 1_000_000).unwrap_or(0)),
        Some(_) => {
            return Err(status(
                ErrorKind::InvalidInput,
                "drill.malformed",
                &format!("step {:?} took a negative time", s.name),
            ));
        }
        None => 0,
    };
    Ok(DrillStep {
        name: s.name.clone(),
        outcome,
        millis,
        detail: s.detail.clone(),
    })
}

/// A drill step on the wire.
pub fn drill_step_to_pb(s: &DrillStep) -> pb::DrillStep {
    let outcome = match s.outcome {
        StepOutcome::Passed => pb::DrillStepOutcome::Passed,
        StepOutcome::Failed => pb::DrillStepOutcome::Failed,
        StepOutcome::Skipped => pb::DrillStepOutcome::Skipped,
    };
    pb::DrillStep {
        name: s.name.clone(),
        outcome: outcome.into(),
        took: Some(prost_types::Duration {
            seconds: i64::try_from(s.millis / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((s.millis % 1000) * 1_000_000).unwrap_or(0),
        }),
        detail: s.detail.clone(),
    }
}

fn drill_to_pb(d: &DrillRecord) -> pb::DrillRecord {
    pb::DrillRecord {
        scope: d.scope.clone(),
        request_id: d.request_id.clone(),
        grant_id: d.grant_id.clone().unwrap_or_default(),
        by: d.by.clone(),
        recorded_at: Some(timestamp(d.recorded_at)),
        passed: d.passed,
        steps: d.steps.iter().map(drill_step_to_pb).collect(),
    }
}
