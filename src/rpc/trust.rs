//! `latchkey.v1.TrustService`: trust-store changes and listings.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::identity::caller_of;
use super::{blocking, convert, to_status};
use crate::pb;
use crate::service::authority::Authority;

/// Serves `TrustService`.
#[derive(Debug, Clone)]
pub struct TrustApi {
    authority: Arc<Authority>,
}

impl TrustApi {
    /// The service over `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl pb::trust_service_server::TrustService for TrustApi {
    async fn propose_change(
        &self,
        request: Request<pb::ProposeChangeRequest>,
    ) -> Result<Response<pb::ProposeChangeResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let proposal = convert::proposal_from_pb(req.change)?;
        let authority = self.authority.clone();
        let view = blocking(move || {
            if req.ceremony_id.is_empty() {
                authority.propose_change(&caller, proposal, &req.note)
            } else {
                authority.propose_signed_change(
                    &caller,
                    proposal,
                    &req.note,
                    (&req.ceremony_id, &req.credential_json),
                )
            }
            .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::ProposeChangeResponse {
            change: Some(convert::change_to_pb(&view)),
        }))
    }

    async fn begin_propose_change(
        &self,
        request: Request<pb::BeginProposeChangeRequest>,
    ) -> Result<Response<pb::BeginProposeChangeResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let proposal = req.proposal.unwrap_or_default();
        let change = convert::proposal_from_pb(proposal.change)?;
        let authority = self.authority.clone();
        let (opened, digest) = blocking(move || {
            authority
                .begin_propose(&caller, &req.operator, change, &proposal.note)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginProposeChangeResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            piv_challenge: opened.piv_challenge.to_vec(),
            digest: digest.to_vec(),
        }))
    }

    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        caller_of(&request)?;
        let state = convert::change_state_filter(request.into_inner().state);
        let authority = self.authority.clone();
        let views = blocking(move || authority.changes(state).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListChangesResponse {
            changes: views.iter().map(convert::change_to_pb).collect(),
        }))
    }

    async fn show_change(
        &self,
        request: Request<pb::ShowChangeRequest>,
    ) -> Result<Response<pb::ShowChangeResponse>, Status> {
        caller_of(&request)?;
        let id = request.into_inner().id;
        let authority = self.authority.clone();
        let view = blocking(move || authority.change(&id).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowChangeResponse {
            change: Some(convert::change_to_pb(&view)),
        }))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let scopes = blocking(move || authority.scopes().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListScopesResponse {
            scopes: scopes.iter().map(convert::scope_info_to_pb).collect(),
        }))
    }

    async fn show_scope(
        &self,
        request: Request<pb::ShowScopeRequest>,
    ) -> Result<Response<pb::ShowScopeResponse>, Status> {
        caller_of(&request)?;
        let name = request.into_inner().name;
        let authority = self.authority.clone();
        let scope =
            blocking(move || authority.scope_named(&name).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowScopeResponse {
            scope: Some(convert::scope_info_to_pb(&scope)),
        }))
    }

    async fn list_workloads(
        &self,
        request: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let workloads = blocking(move || authority.workloads().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads: workloads.iter().map(convert::workload_to_pb).collect(),
        }))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let operators =
            blocking(move || authority.operators_list().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: operators
                .into_iter()
                .map(|(op, keys)| convert::operator_summary_to_pb(op, &keys))
                .collect(),
        }))
    }
}
