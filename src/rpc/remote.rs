//! The remote operator port: TLS with the daemon's pinned certificate and no client
//! certificate. Nobody here holds a standing credential, so the gate decides per method:
//! health, status and the steps that carry their own fresh hardware assertion are open;
//! reads need a read session opened on the same connection (see `service::sessions`); the
//! challenges a Begin call opens are rate limited per source address and in total; everything
//! else (enrollment, proposing changes, audit, introspection, workload calls) is for the
//! bastion's socket or a workload's mutual TLS.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tonic::transport::server::Connected;

use super::status;
use crate::base::caller::{Caller, RemotePeer};
use crate::base::clock::Timestamp;
use crate::base::error::ErrorKind;
use crate::service::authority::Authority;

/// What the remote port learned about a connection.
#[derive(Clone, Copy, Debug)]
pub struct RemotePeerInfo {
    /// Remote address.
    pub remote: SocketAddr,
    /// This connection's number (unique while the daemon runs).
    pub connection: u64,
}

/// Numbers remote connections.
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A server-authenticated TLS connection on the remote port.
#[derive(Debug)]
pub struct RemoteConn {
    /// Read and written through `identity`'s delegation, as the other connections are.
    pub(super) inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: RemotePeerInfo,
    _slot: Option<super::identity::Slot>,
}

impl RemoteConn {
    /// Wraps a completed handshake.
    pub fn new(
        inner: tokio_rustls::server::TlsStream<TcpStream>,
        remote: SocketAddr,
    ) -> io::Result<Self> {
        Ok(Self {
            inner,
            info: RemotePeerInfo {
                remote,
                connection: CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
            _slot: None,
        })
    }

    /// Holds `slot` for as long as the connection is open.
    pub fn holding(mut self, slot: super::identity::Slot) -> Self {
        self._slot = Some(slot);
        self
    }
}

impl Connected for RemoteConn {
    type ConnectInfo = RemotePeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info
    }
}

/// How the remote port treats a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, status, and steps that carry their own fresh assertion.
    Open,
    /// Opens a challenge for anyone, within the rate limits (opening a session, asking).
    Begin,
    /// Opens a challenge about existing trust state: a read session, and the rate limits.
    SessionBegin,
    /// Reads trust state, or gives up the caller's own request or grant: a read session.
    Session,
    /// Not on this port: the bastion's socket or a workload's mutual TLS.
    Refused,
}

/// Every latchkey method, and how the remote port treats it (a test checks the table covers
/// every method in `proto/`).
const METHODS: &[(&str, &str, Access)] = &[
    ("SystemService", "Status", Access::Open),
    ("SystemService", "Diagnose", Access::Refused),
    ("OperatorService", "BeginSession", Access::Begin),
    ("OperatorService", "OpenSession", Access::Open),
    ("OperatorService", "ShowOperator", Access::Session),
    ("OperatorService", "BeginEnrollment", Access::Refused),
    ("OperatorService", "FinishEnrollment", Access::Refused),
    ("OperatorService", "BeginAssertion", Access::Refused),
    ("OperatorService", "FinishAssertion", Access::Refused),
    ("AccessService", "BeginRequest", Access::Begin),
    ("AccessService", "CreateRequest", Access::Open),
    ("AccessService", "BeginVote", Access::SessionBegin),
    ("AccessService", "CastVote", Access::Open),
    ("AccessService", "BeginRevoke", Access::SessionBegin),
    ("AccessService", "Revoke", Access::Open),
    ("AccessService", "ListRequests", Access::Session),
    ("AccessService", "ShowRequest", Access::Session),
    ("AccessService", "WatchRequest", Access::Session),
    ("AccessService", "CancelRequest", Access::Session),
    ("AccessService", "ShowGrant", Access::Session),
    ("AccessService", "ListGrants", Access::Session),
    ("AccessService", "Relinquish", Access::Session),
    ("AccessService", "ListDrills", Access::Session),
    ("AccessService", "Introspect", Access::Refused),
    ("AccessService", "WatchRevocations", Access::Refused),
    ("AccessService", "AcknowledgeRevocation", Access::Refused),
    ("AccessService", "RecordDrill", Access::Refused),
    ("TrustService", "ListChanges", Access::Session),
    ("TrustService", "ShowChange", Access::Session),
    ("TrustService", "ListScopes", Access::Session),
    ("TrustService", "ShowScope", Access::Session),
    ("TrustService", "ListWorkloads", Access::Session),
    ("TrustService", "ListOperators", Access::Session),
    ("TrustService", "BeginProposeChange", Access::SessionBegin),
    ("TrustService", "ProposeChange", Access::Open),
    ("AuditService", "ReadRecords", Access::Refused),
    ("AuditService", "FollowRecords", Access::Refused),
    ("AuditService", "ListCheckpoints", Access::Refused),
    ("AuditService", "WriteCheckpoint", Access::Refused),
    ("WorkloadService", "AdmitWorkload", Access::Refused),
];

/// The remote port's rule for the gRPC method at `path`.
pub fn access(path: &str) -> Access {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Access::Refused;
    };
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        _ => service
            .strip_prefix("latchkey.v1.")
            .and_then(|service| {
                METHODS
                    .iter()
                    .find(|(s, m, _)| *s == service && *m == method)
                    .map(|(_, _, access)| *access)
            })
            .unwrap_or(Access::Refused),
    }
}

/// A token bucket: `burst` at once, refilled at `per_minute`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

/// Rate limits for Begin calls from remote callers: per source address and in total.
#[derive(Debug)]
pub struct BeginLimits {
    per_source: Mutex<HashMap<IpAddr, Bucket>>,
    total: Mutex<Option<Bucket>>,
    source_burst: f64,
    source_per_minute: f64,
    total_burst: f64,
    total_per_minute: f64,
}

/// Sources remembered at once; past it, those whose bucket refilled are forgotten.
const MAX_SOURCES: usize = 10_000;

fn take(bucket: &mut Bucket, now: Timestamp, burst: f64, per_minute: f64) -> bool {
    let elapsed_ms = (now.unix_millis() - bucket.at.unix_millis()).max(0);
    #[allow(clippy::cast_precision_loss)] // milliseconds: exact far beyond any uptime
    let refill = elapsed_ms as f64 * per_minute / 60_000.0;
    bucket.tokens = (bucket.tokens + refill).min(burst);
    bucket.at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

impl BeginLimits {
    /// Limits from the constants module.
    pub fn new() -> Self {
        use crate::base::constants as c;
        Self {
            per_source: Mutex::new(HashMap::new()),
            total: Mutex::new(None),
            source_burst: f64::from(c::REMOTE_BEGIN_BURST_PER_SOURCE),
            source_per_minute: f64::from(c::REMOTE_BEGIN_PER_MINUTE_PER_SOURCE),
            total_burst: f64::from(c::REMOTE_BEGIN_BURST_TOTAL),
            total_per_minute: f64::from(c::REMOTE_BEGIN_PER_MINUTE_TOTAL),
        }
    }

    /// Whether a Begin call from `ip` at `now` is within the limits (and counts it). An IPv6
    /// source is its /64 (one host owns a whole one); the total is checked first, so a flood
    /// of sources fills no table once it is over.
    pub fn admit(&self, ip: IpAddr, now: Timestamp) -> bool {
        let source = match ip {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
            v4 @ IpAddr::V4(_) => v4,
        };
        {
            let mut total = self
                .total
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let total = total.get_or_insert(Bucket {
                tokens: self.total_burst,
                at: now,
            });
            if !take(total, now, self.total_burst, self.total_per_minute) {
                return false;
            }
        }
        let mut sources = self
            .per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            let (burst, rate) = (self.source_burst, self.source_per_minute);
            sources.retain(|_, b| {
                let mut probe = *b;
                take(&mut probe, now, burst, rate);
                probe.tokens + 1.0 < burst
            });
            if sources.len() >= MAX_SOURCES {
                // Every remembered source is still limited: a new one waits too.
                return false;
            }
        }
        let bucket = sources.entry(source).or_insert(Bucket {
            tokens: self.source_burst,
            at: now,
        });
        take(bucket, now, self.source_burst, self.source_per_minute)
    }
}

impl Default for BeginLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// The gate in front of the remote port's services (a tower layer).
#[derive(Clone, Debug)]
pub struct RemoteGateLayer {
    authority: Arc<Authority>,
    limits: Arc<BeginLimits>,
}

impl RemoteGateLayer {
    /// A gate deciding with `authority` (sessions, the clock).
    pub fn new(authority: Arc<Authority>) -> Self {
        Self {
            authority,
            limits: Arc::new(BeginLimits::new()),
        }
    }
}

impl<S> tower::Layer<S> for RemoteGateLayer {
    type Service = RemoteGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RemoteGate {
            inner,
            authority: self.authority.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// See [`RemoteGateLayer`].
#[derive(Clone, Debug)]
pub struct RemoteGate<S> {
    inner: S,
    authority: Arc<Authority>,
    limits: Arc<BeginLimits>,
}

impl<S> RemoteGate<S> {
    /// The caller for this request, or the refusal.
    fn decide<B>(&self, req: &tonic::codegen::http::Request<B>) -> Result<Caller, tonic::Status> {
        let Some(info) = req.extensions().get::<RemotePeerInfo>().copied() else {
            return Err(status(
                ErrorKind::Unauthenticated,
                "caller.unidentified",
                "no remote address",
            ));
        };
        let ip = info.remote.ip();
        let session_operator = self.authority.session_operator(info.connection);
        let rule = access(req.uri().path());
        if matches!(rule, Access::Session | Access::SessionBegin) && session_operator.is_none() {
            return Err(status(
                ErrorKind::Unauthenticated,
                "caller.session_required",
                "reading over the remote port needs a read session on this connection: open \
                 one with your key (OpenSession), or read over the bastion's socket",
            ));
        }
        match rule {
            Access::Open | Access::Session => {}
            Access::Begin | Access::SessionBegin => {
                // Half the challenge budget stays for the bastion's own callers.
                let remote_share = crate::base::constants::MAX_KEPT_CHALLENGES / 2;
                if self.authority.challenges_kept() >= remote_share
                    || !self.limits.admit(ip, self.authority.now())
                {
                    tracing::warn!(remote = %info.remote, "remote Begin call over the rate limit");
                    return Err(status(
                        ErrorKind::ResourceExhausted,
                        "caller.rate_limited",
                        "too many challenges asked from this address (or from everywhere); \
                         wait a minute and try again",
                    ));
                }
            }
            Access::Refused => {
                return Err(status(
                    ErrorKind::PermissionDenied,
                    "caller.remote_not_allowed",
                    &format!(
                        "{} is not served on the remote operator port: run it on the bastion \
                         (local socket)",
                        req.uri().path()
                    ),
                ));
            }
        }
        Ok(Caller::Remote(RemotePeer {
            addr: info.remote,
            connection: info.connection,
            session_operator,
            web: false,
        }))
    }
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for RemoteGate<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        match self.decide(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(refused) => {
                let response = refused.into_http::<tonic::body::Body>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_in_the_proto_has_a_deliberate_rule() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(crate::rpc::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in set.file {
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    let method = method.name.unwrap_or_default();
                    seen += 1;
                    assert!(
                        METHODS.iter().any(|(s, m, _)| *s == name && *m == method),
                        "{name}/{method} has no rule on the remote port"
                    );
                }
            }
        }
        assert_eq!(
            seen,
            METHODS.len(),
            "the table names a method the proto lacks"
        );
    }

    #[test]
    fn reads_need_a_session_and_bastion_only_calls_are_refused() {
        assert_eq!(access("/latchkey.v1.SystemService/Status"), Access::Open);
        assert_eq!(access("/latchkey.v1.AccessService/CastVote"), Access::Open);
        assert_eq!(
            access("/latchkey.v1.AccessService/BeginVote"),
            Access::SessionBegin
        );
        assert_eq!(
            access("/latchkey.v1.AccessService/BeginRequest"),
            Access::Begin
        );
        assert_eq!(
            access("/latchkey.v1.AccessService/ListRequests"),
            Access::Session
        );
        assert_eq!(
            access("/latchkey.v1.TrustService/ShowChange"),
            Access::Session
        );
        for refused in [
            "/latchkey.v1.OperatorService/BeginEnrollment",
            "/latchkey.v1.AuditService/ReadRecords",
            "/latchkey.v1.AccessService/Introspect",
            "/latchkey.v1.SystemService/Diagnose",
            "/latchkey.v1.OperatorService/FinishAssertion",
            "/nonsense",
        ] {
            assert_eq!(access(refused), Access::Refused, "{refused}");
        }
    }

    #[test]
    fn begin_calls_are_limited_per_source_and_refill_over_time() {
        let limits = BeginLimits::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let burst = crate::base::constants::REMOTE_BEGIN_BURST_PER_SOURCE;
        for _ in 0..burst {
            assert!(limits.admit(a, t0));
        }
        assert!(!limits.admit(a, t0), "past the burst");
        assert!(limits.admit(b, t0), "another source has its own bucket");
        let refill = 60_000 / i64::from(crate::base::constants::REMOTE_BEGIN_PER_MINUTE_PER_SOURCE);
        assert!(limits.admit(a, Timestamp::from_unix_millis(1_000_000 + refill)));
    }
}
