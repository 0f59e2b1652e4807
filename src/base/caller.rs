//! Who is calling: a local user on the Unix socket, a workload over mutual TLS, or an operator
//! from their own device over the remote (server-authenticated) TLS port.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity of the caller of one RPC, established by the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A process on this host, by its socket peer credentials.
    Local(LocalPeer),
    /// A workload whose TLS client key is pinned in the trust store.
    Workload(WorkloadId),
    /// A caller on the remote operator port: no standing credential; each action carries a
    /// fresh hardware assertion, and reads need a session one opened.
    Remote(RemotePeer),
}

/// A connection to the remote operator port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePeer {
    /// Where it comes from.
    pub addr: std::net::SocketAddr,
    /// The daemon's number for this connection (sessions are bound to it).
    pub connection: u64,
    /// The operator whose read session is open on this connection, if any.
    pub session_operator: Option<String>,
    /// Whether it came through the approval page (`[web]`) rather than the gRPC port.
    pub web: bool,
}

/// Peer credentials of a local socket connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPeer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id, where the kernel reports it.
    pub pid: Option<i32>,
}

/// A pinned workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadId {
    /// Workload name in the trust store.
    pub name: String,
    /// SHA-256 of its certificate's SubjectPublicKeyInfo, lowercase hex.
    pub spki_sha256: String,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local(p) => write!(f, "local uid={} gid={}", p.uid, p.gid),
            Caller::Workload(w) => write!(f, "workload {}", w.name),
            Caller::Remote(r) => match &r.session_operator {
                Some(op) => write!(f, "remote {} (session of operator {op})", r.addr),
                None => write!(f, "remote {}", r.addr),
            },
        }
    }
}

impl Caller {
    /// The transport, as the audit log names it: `local uid=N`, `remote ADDR`, `workload N`.
    pub fn via(&self) -> String {
        match self {
            Caller::Local(p) => format!("local uid={}", p.uid),
            Caller::Workload(w) => format!("workload {}", w.name),
            Caller::Remote(r) if r.web => format!("web {}", r.addr),
            Caller::Remote(r) => format!("remote {}", r.addr),
        }
    }
}

/// Who caused an event, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// latchkeyd itself (expiry, checkpoints).
    Daemon,
    /// A local user on the socket or running an offline command.
    Local {
        /// User id.
        uid: u32,
    },
    /// A pinned workload.
    Workload {
        /// Workload name.
        name: String,
    },
    /// An enrolled operator.
    Operator {
        /// Operator name.
        name: String,
    },
    /// Someone on the approval page who has not proven to be an operator (they may only
    /// propose a new key for one, which admins then decide on).
    Web {
        /// Where the page was used from.
        addr: String,
    },
}
