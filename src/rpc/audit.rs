//! `latchkey.v1.AuditService`.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::identity::caller_of;
use super::{blocking, status, to_status};
use crate::base::caller::Caller;
use crate::base::constants::MAX_AUDIT_PAGE;
use crate::base::error::ErrorKind;
use crate::pb;
use crate::service::authority::Authority;

/// Serves `AuditService`.
#[derive(Debug, Clone)]
pub struct AuditApi {
    authority: Arc<Authority>,
    shutdown: watch::Receiver<bool>,
    streams: super::StreamLimit,
}

impl AuditApi {
    /// The service over `authority`; follow streams end when `shutdown` turns true.
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

fn require_local<T>(request: &Request<T>) -> Result<(), Status> {
    match caller_of(request)? {
        Caller::Local(_) => Ok(()),
        Caller::Workload(_) | Caller::Remote(_) => Err(status(
            ErrorKind::PermissionDenied,
            "audit.local_only",
            "the audit log is read over the local socket",
        )),
    }
}

fn page_size(limit: u32) -> usize {
    match usize::try_from(limit) {
        Ok(0) | Err(_) => MAX_AUDIT_PAGE,
        Ok(n) => n.min(MAX_AUDIT_PAGE),
    }
}

type FollowItem = Result<pb::FollowRecordsResponse, Status>;

/// Sends stored records from `*next` on until the store has no more. False if the client left.
async fn send_backlog(
    authority: &Arc<Authority>,
    next: &mut u64,
    tx: &mpsc::Sender<FollowItem>,
) -> bool {
    loop {
        let (reader, from) = (authority.clone(), *next);
        let read = blocking(move || {
            reader
                .audit()
                .read(from, MAX_AUDIT_PAGE)
                .map_err(|e| to_status(&e))
        })
        .await;
        let page = match read {
            Ok(page) => page,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return false;
            }
        };
        if page.is_empty() {
            return true;
        }
        for record in page {
            *next = record.seq + 1;
            let item = pb::FollowRecordsResponse {
                record: Some(convert::record_to_pb(&record)),
            };
            if tx.send(Ok(item)).await.is_err() {
                return false;
            }
        }
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn read_records(
        &self,
        request: Request<pb::ReadRecordsRequest>,
    ) -> Result<Response<pb::ReadRecordsResponse>, Status> {
        require_local(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let records = blocking(move || {
            authority
                .audit()
                .read(req.from_seq.max(1), page_size(req.limit))
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::ReadRecordsResponse {
            records: records.iter().map(convert::record_to_pb).collect(),
            head_seq: self.authority.audit().head_seq(),
        }))
    }

    type FollowRecordsStream = ReceiverStream<FollowItem>;

    async fn follow_records(
        &self,
        request: Request<pb::FollowRecordsRequest>,
    ) -> Result<Response<Self::FollowRecordsStream>, Status> {
        require_local(&request)?;
        let permit = self.streams.take()?;
        let mut next = request.into_inner().from_seq.max(1);
        let authority = self.authority.clone();
        // Subscribe before reading the backlog so no record falls between the two.
        let mut live = authority.audit().subscribe();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _held = permit;
            if !send_backlog(&authority, &mut next, &tx).await {
                return;
            }
            loop {
                tokio::select! {
                    () = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
                    () = tx.closed() => return,
                    received = live.recv() => match received {
                        Ok(record) if record.seq < next => {}
                        Ok(record) if record.seq == next => {
                            next += 1;
                            let item = pb::FollowRecordsResponse {
                                record: Some(convert::record_to_pb(&record)),
                            };
                            if tx.send(Ok(item)).await.is_err() {
                                return;
                            }
                        }
                        // Missed some (lagged, or a gap): the store has them all, in order.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if !send_backlog(&authority, &mut next, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        require_local(&request)?;
        let req = request.into_inner();
        let authority = self.authority.clone();
        let checkpoints = blocking(move || {
            authority
                .audit()
                .checkpoints(req.from_seq.max(1), page_size(req.limit))
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: checkpoints.iter().map(convert::record_to_pb).collect(),
        }))
    }

    async fn write_checkpoint(
        &self,
        request: Request<pb::WriteCheckpointRequest>,
    ) -> Result<Response<pb::WriteCheckpointResponse>, Status> {
        require_local(&request)?;
        let authority = self.authority.clone();
        let (written, checkpoint_seq) = blocking(move || {
            authority
                .audit()
                .checkpoint_through()
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::WriteCheckpointResponse {
            checkpoint: written.as_ref().map(convert::record_to_pb),
            head_seq: self.authority.audit().head_seq(),
            checkpoint_seq,
        }))
    }
}
