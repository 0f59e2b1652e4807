//! `latchkey.v1.AccessService`: requests, votes, the requester's wait, introspection.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::identity::caller_of;
use super::{blocking, to_status};
use crate::base::caller::Caller;
use crate::domain::request::RequestState;
use crate::pb;
use crate::service::authority::Authority;

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
        // A remote watch lives no longer than the read session it started under.
        if let Caller::Remote(peer) = &caller
            && authority.session_operator(peer.connection) != peer.session_operator
        {
            let _ = tx
                .send(Err(super::status(
                    crate::base::error::ErrorKind::Unauthenticated,
                    "caller.session_required",
                    "the read session of this watch ended: open another and watch again",
                )))
                .await;
            return;
        }
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
                    Some(convert::credential_to_pb(delivery)?)
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
        let now_state = (
            convert::request_state_to_pb(&view.state),
            view.request.votes.len(),
        );
        if last != Some(now_state) {
            last = Some(now_state);
            let item = pb::WatchRequestResponse {
                request: Some(convert::request_to_pb(&view)),
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
        let draft = convert::draft_from_pb(req.draft)?;
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
        let draft = convert::draft_from_pb(req.draft)?;
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
            request: Some(convert::request_to_pb(&view)),
        }))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        caller_of(&request)?;
        let state = convert::request_state_filter(request.into_inner().state);
        let authority = self.authority.clone();
        let views = blocking(move || authority.requests(state).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: views.iter().map(convert::request_to_pb).collect(),
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
            request: Some(convert::request_to_pb(&view)),
        }))
    }

    async fn begin_vote(
        &self,
        request: Request<pb::BeginVoteRequest>,
    ) -> Result<Response<pb::BeginVoteResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let target = convert::vote_target_from_pb(req.target)?;
        let decision = convert::decision_from_pb(req.decision)?;
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
        let target = convert::vote_target_from_pb(req.target)?;
        let decision = convert::decision_from_pb(req.decision)?;
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
            request: Some(convert::request_to_pb(&view)),
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
            expires_at: Some(convert::timestamp_to_pb(answer.expires_at)),
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
            grant: Some(convert::grant_to_pb(&grant, self.authority.now())),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        caller_of(&request)?;
        let state = convert::grant_state_filter(request.into_inner().state);
        let authority = self.authority.clone();
        let grants = blocking(move || authority.grants(state).map_err(|e| to_status(&e))).await?;
        let now = self.authority.now();
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants
                .iter()
                .map(|g| convert::grant_to_pb(g, now))
                .collect(),
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
            grant: Some(convert::grant_to_pb(&grant, self.authority.now())),
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
            grant: Some(convert::grant_to_pb(&grant, self.authority.now())),
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
            .map(convert::drill_step_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let authority = self.authority.clone();
        let record = blocking(move || {
            authority
                .record_drill(&caller, &r.request_id, steps)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::RecordDrillResponse {
            drill: Some(convert::drill_to_pb(&record)),
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
            scopes: drills.iter().map(convert::scope_drills_to_pb).collect(),
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
            state: convert::grant_state_to_pb(state).into(),
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
                    grant: Some(convert::grant_to_pb(&grant, now)),
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
