//! `latchkey.v1.WorkloadService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::identity::caller_of;
use super::{status, to_status};
use crate::base::error::ErrorKind;
use crate::pb;
use crate::service::authority::Authority;

/// Serves `WorkloadService`.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    authority: Arc<Authority>,
}

impl WorkloadApi {
    /// The service over `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl pb::workload_service_server::WorkloadService for WorkloadApi {
    async fn admit_workload(
        &self,
        request: Request<pb::AdmitWorkloadRequest>,
    ) -> Result<Response<pb::AdmitWorkloadResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let admitted = tokio::task::spawn_blocking(move || {
            authority.admit_workload_at_genesis(
                &caller,
                req.name,
                req.owner,
                req.certificate_pem.as_bytes(),
                req.scopes,
                req.introspect,
            )
        })
        .await
        .map_err(|e| status(ErrorKind::Internal, "workload.task_failed", &e.to_string()))?
        .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::AdmitWorkloadResponse {
            name: admitted.name,
            spki_sha256: admitted.spki_sha256,
        }))
    }
}
