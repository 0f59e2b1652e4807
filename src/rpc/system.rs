//! `latchkey.v1.SystemService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::identity::caller_of;
use super::to_status;
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::domain::trust::Genesis;
use crate::pb;
use crate::service::authority::Authority;
use crate::service::hygiene::{Finding, Level};

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

/// A protobuf timestamp for a domain timestamp.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t.to_system_time())
}

fn caller_to_pb(caller: &Caller) -> pb::Caller {
    let identity = match caller {
        Caller::Local(p) => pb::caller::Identity::Local(pb::LocalCaller {
            uid: p.uid,
            gid: p.gid,
            pid: p.pid.unwrap_or(0),
        }),
        Caller::Workload(w) => pb::caller::Identity::Workload(pb::WorkloadCaller {
            name: w.name.clone(),
            spki_sha256: w.spki_sha256.clone(),
        }),
    };
    pb::Caller {
        identity: Some(identity),
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
        let genesis = match report.genesis {
            Genesis::Open => pb::GenesisState::Open,
            Genesis::Closed { .. } => pb::GenesisState::Closed,
        };
        Ok(Response::new(pb::StatusResponse {
            version: report.version.to_owned(),
            store_schema_version: report.store_schema_version,
            genesis: genesis.into(),
            fingerprints: Some(pb::KeyFingerprints {
                audit_key: report.fingerprints.audit_key,
                ssh_user_ca: report.fingerprints.ssh_user_ca,
                tls_certificate: report.fingerprints.tls_certificate,
                tls_spki: report.fingerprints.tls_spki,
            }),
            dev_mode: report.dev_mode,
            now: Some(timestamp(report.now)),
            caller: Some(caller_to_pb(&caller)),
            audit_public_key: self.authority.audit_public_key(),
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
            findings: findings.iter().map(finding_to_pb).collect(),
        }))
    }
}

/// A finding on the wire.
pub fn finding_to_pb(f: &Finding) -> pb::Finding {
    let level = match f.level {
        Level::Pass => pb::FindingLevel::Pass,
        Level::Warn => pb::FindingLevel::Warn,
        Level::Fail => pb::FindingLevel::Fail,
    };
    pb::Finding {
        level: level.into(),
        check: f.check.clone(),
        detail: f.detail.clone(),
    }
}

/// A finding from the wire (an unknown level counts as a failure).
pub fn finding_from_pb(f: &pb::Finding) -> Finding {
    let level = match f.level() {
        pb::FindingLevel::Pass => Level::Pass,
        pb::FindingLevel::Warn => Level::Warn,
        pb::FindingLevel::Fail | pb::FindingLevel::Unspecified => Level::Fail,
    };
    Finding::new(level, &f.check, f.detail.clone())
}
