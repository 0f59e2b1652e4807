//! `latchkey.v1.SystemService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::identity::caller_of;
use super::to_status;
use crate::base::caller::Caller;
use crate::pb;
use crate::service::authority::Authority;

/// Serves `SystemService` from an [`Authority`].
#[derive(Debug, Clone)]
pub struct SystemApi {
    authority: Arc<Authority>,
}

impl SystemApi {
    /// The service over `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl pb::system_service_server::SystemService for SystemApi {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = caller_of(&request)?;
        let authority = self.authority.clone();
        let report = super::blocking(move || authority.status().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::StatusResponse {
            version: report.version.to_owned(),
            store_schema_version: report.store_schema_version,
            genesis: convert::genesis_to_pb(report.genesis).into(),
            fingerprints: Some(convert::fingerprints_to_pb(report.fingerprints)),
            dev_mode: report.dev_mode,
            now: Some(convert::timestamp_to_pb(report.now)),
            caller: Some(convert::caller_to_pb(&caller)),
            audit_public_key: self.authority.audit_public_key(),
            ssh_user_ca_public_key: self.authority.ssh_user_ca_public_key(),
        }))
    }

    async fn diagnose(
        &self,
        request: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<pb::DiagnoseResponse>, Status> {
        let caller = caller_of(&request)?;
        if !matches!(caller, Caller::Local(_)) {
            return Err(super::status(
                crate::base::error::ErrorKind::PermissionDenied,
                "doctor.local_only",
                "diagnosis is for the bastion's local socket",
            ));
        }
        let authority = self.authority.clone();
        let findings = super::blocking(move || {
            authority
                .diagnose(authority.drill_max_age())
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::DiagnoseResponse {
            findings: findings.iter().map(convert::finding_to_pb).collect(),
        }))
    }
}
