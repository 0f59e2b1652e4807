//! `latchkey.v1.OperatorService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::identity::caller_of;
use super::{blocking, convert, to_status};
use crate::pb;
use crate::service::authority::Authority;

/// Serves `OperatorService`.
#[derive(Debug, Clone)]
pub struct OperatorApi {
    authority: Arc<Authority>,
}

impl OperatorApi {
    /// The service over `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl pb::operator_service_server::OperatorService for OperatorApi {
    async fn begin_enrollment(
        &self,
        request: Request<pb::BeginEnrollmentRequest>,
    ) -> Result<Response<pb::BeginEnrollmentResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let opened = blocking(move || {
            authority
                .begin_enrollment(&caller, &req.operator, &req.roles)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginEnrollmentResponse {
            ceremony_id: opened.ceremony_id,
            creation_options_json: opened.options_json,
            piv_challenge: opened.piv_challenge.to_vec(),
        }))
    }

    async fn finish_enrollment(
        &self,
        request: Request<pb::FinishEnrollmentRequest>,
    ) -> Result<Response<pb::FinishEnrollmentResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let (authenticator, genesis, change) = blocking(move || {
            authority
                .finish_enrollment(&caller, &req.ceremony_id, &req.credential_json, &req.note)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::FinishEnrollmentResponse {
            operator: authenticator.operator,
            credential_id: authenticator.credential_id,
            aaguid: authenticator
                .aaguid
                .map(|u| u.to_string())
                .unwrap_or_default(),
            genesis: convert::genesis_to_pb(genesis).into(),
            change_id: change.map(|c| c.change.id).unwrap_or_default(),
        }))
    }

    async fn begin_assertion(
        &self,
        request: Request<pb::BeginAssertionRequest>,
    ) -> Result<Response<pb::BeginAssertionResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let digest = convert::digest_from_pb(&req.digest)?;
        let authority = self.authority.clone();
        let opened = blocking(move || {
            authority
                .begin_assertion(&caller, &req.operator, &digest)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginAssertionResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            piv_challenge: opened.piv_challenge.to_vec(),
        }))
    }

    async fn begin_session(
        &self,
        request: Request<pb::BeginSessionRequest>,
    ) -> Result<Response<pb::BeginSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let (opened, digest) = blocking(move || {
            authority
                .begin_session(&caller, &req.operator)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::BeginSessionResponse {
            ceremony_id: opened.ceremony_id,
            request_options_json: opened.options_json,
            piv_challenge: opened.piv_challenge.to_vec(),
            digest: digest.to_vec(),
        }))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let session = blocking(move || {
            authority
                .open_session(&caller, &req.ceremony_id, &req.credential_json)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::OpenSessionResponse {
            operator: session.operator,
            expires_at: Some(convert::timestamp_to_pb(session.expires_at)),
        }))
    }

    async fn finish_assertion(
        &self,
        request: Request<pb::FinishAssertionRequest>,
    ) -> Result<Response<pb::FinishAssertionResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let digest = convert::digest_from_pb(&req.digest)?;
        let authority = self.authority.clone();
        let verified = blocking(move || {
            authority
                .finish_assertion(&caller, &req.ceremony_id, &digest, &req.credential_json)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::FinishAssertionResponse {
            operator: verified.operator,
            credential_id: verified.credential_id,
            user_verified: verified.user_verified,
            counter: verified.counter,
            audit_seq: verified.audit_seq,
        }))
    }

    async fn show_operator(
        &self,
        request: Request<pb::ShowOperatorRequest>,
    ) -> Result<Response<pb::ShowOperatorResponse>, Status> {
        caller_of(&request)?;
        let (operator, keys) = self
            .authority
            .operator(&request.into_inner().name)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ShowOperatorResponse {
            name: operator.name,
            roles: operator.roles,
            authenticators: keys.into_iter().map(convert::authenticator_to_pb).collect(),
        }))
    }
}
