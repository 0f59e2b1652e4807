//! gRPC adapters: proto ↔ domain, caller identity, and the one place where domain errors
//! become `tonic::Status`. Generated types stay in this module and in [`crate::pb`].

mod access;
mod audit;
mod authority_fix;
pub mod codec;
mod convert;
pub mod identity;
mod operator;
pub mod remote;
mod system;
mod trust;
mod workload;

use std::sync::Arc;

use tonic::Status;
use tonic::metadata::MetadataValue;

pub use access::AccessApi;
pub use audit::AuditApi;
pub use convert::{
    change_to_pb, drill_step_to_pb, finding_from_pb, record_to_pb, request_to_pb, scope_from_pb,
    scope_to_pb,
};
pub use operator::OperatorApi;
pub use system::SystemApi;
pub use trust::TrustApi;
pub use workload::WorkloadApi;

use crate::base::error::{Coded, ErrorKind};
use crate::pb;
use crate::service::authority::Authority;

/// Metadata key carrying the stable error code on every error response.
pub const ERROR_CODE_METADATA: &str = "latchkey-error-code";

/// The encoded file descriptor set of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/latchkey_v1_descriptor.bin"));

/// Maps a stable error kind to its gRPC code. The only such mapping in the crate.
pub fn grpc_code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidInput => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::Conflict => tonic::Code::Aborted,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Internal => tonic::Code::Internal,
        #[allow(unreachable_patterns)] // ErrorKind is non_exhaustive for other crates only
        _ => tonic::Code::Internal,
    }
}

/// Converts a coded error into a `Status`: the message is `code: description`, and the code
/// is also in the `latchkey-error-code` metadata for programs.
pub fn to_status<E: Coded>(err: &E) -> Status {
    status(err.kind(), err.code(), &err.to_string())
}

/// Builds a status from parts (for errors raised in this layer).
/// Runs store work (reads that may wait for a flush, writes that fsync) on the blocking pool,
/// so a slow disk never stalls the async workers that serve every other connection.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| status(ErrorKind::Internal, "rpc.task_failed", &e.to_string()))?
}

/// The digest `operator`'s key signs to propose `proposal` (what BeginProposeChange answers),
/// computed by a client from what it sends; None for a workload, whose pin the daemon derives
/// from its certificate (and from the stored workload).
pub fn proposal_digest_of(
    operator: &str,
    proposal: &crate::pb::ProposeChangeRequest,
) -> Result<Option<[u8; 32]>, Status> {
    match convert::proposal_from_pb(proposal.change.clone())? {
        crate::service::changes::Proposal::Change(kind) => Ok(Some(
            crate::service::changes::proposal_digest(operator, &kind, &proposal.note),
        )),
        crate::service::changes::Proposal::PutWorkload { .. } => Ok(None),
    }
}

/// The `google.rpc.ErrorInfo` domain of every latchkey error.
pub const ERROR_DOMAIN: &str = "latchkey";

/// A status whose message starts with the stable `code`, which is also in the
/// `latchkey-error-code` metadata and in a `google.rpc.ErrorInfo` detail (`reason` = code,
/// `domain` = `latchkey`) for clients that read standard error details.
pub fn status(kind: ErrorKind, code: &'static str, message: &str) -> Status {
    use tonic_types::StatusExt as _;
    let details = tonic_types::ErrorDetails::with_error_info(
        code,
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    let mut status =
        Status::with_error_details(grpc_code(kind), format!("{code}: {message}"), details);
    status
        .metadata_mut()
        .insert(ERROR_CODE_METADATA, MetadataValue::from_static(code));
    if matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable) {
        tracing::error!(code, message, "request failed");
    }
    status
}

/// Bounds the live watch and follow streams of all listeners together.
#[derive(Debug, Clone)]
pub struct StreamLimit(Arc<tokio::sync::Semaphore>);

impl StreamLimit {
    /// At most `streams` at once.
    pub fn new(streams: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(streams)))
    }

    /// A place for one more stream, held until the stream ends; refused past the limit.
    pub(crate) fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            status(
                ErrorKind::ResourceExhausted,
                "rpc.too_many_streams",
                "too many watch and follow streams are open; close some and retry",
            )
        })
    }
}

/// The services every listener serves, sharing one authority.
#[derive(Debug, Clone)]
pub struct Api {
    authority: Arc<Authority>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    streams: StreamLimit,
}

impl Api {
    /// Services over `authority`; long-lived streams end when `shutdown` turns true, and at
    /// most `streams` are open at once.
    pub fn new(
        authority: Arc<Authority>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        streams: usize,
    ) -> Self {
        Self {
            authority,
            shutdown,
            streams: StreamLimit::new(streams),
        }
    }

    /// The authority behind the services.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// `latchkey.v1.SystemService`.
    pub fn system(&self) -> pb::system_service_server::SystemServiceServer<SystemApi> {
        pb::system_service_server::SystemServiceServer::new(SystemApi::new(self.authority.clone()))
    }

    /// `latchkey.v1.AuditService`.
    pub fn audit(&self) -> pb::audit_service_server::AuditServiceServer<AuditApi> {
        pb::audit_service_server::AuditServiceServer::new(AuditApi::new(
            self.authority.clone(),
            self.shutdown.clone(),
            self.streams.clone(),
        ))
    }

    /// `latchkey.v1.OperatorService`.
    pub fn operator(&self) -> pb::operator_service_server::OperatorServiceServer<OperatorApi> {
        pb::operator_service_server::OperatorServiceServer::new(OperatorApi::new(
            self.authority.clone(),
        ))
    }

    /// `latchkey.v1.AccessService`.
    pub fn access(&self) -> pb::access_service_server::AccessServiceServer<AccessApi> {
        pb::access_service_server::AccessServiceServer::new(AccessApi::new(
            self.authority.clone(),
            self.shutdown.clone(),
            self.streams.clone(),
        ))
    }

    /// `latchkey.v1.TrustService`.
    pub fn trust(&self) -> pb::trust_service_server::TrustServiceServer<TrustApi> {
        pb::trust_service_server::TrustServiceServer::new(TrustApi::new(self.authority.clone()))
    }

    /// `latchkey.v1.WorkloadService`.
    pub fn workload(&self) -> pb::workload_service_server::WorkloadServiceServer<WorkloadApi> {
        pb::workload_service_server::WorkloadServiceServer::new(WorkloadApi::new(
            self.authority.clone(),
        ))
    }
}
