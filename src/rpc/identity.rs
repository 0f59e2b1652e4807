//! Caller identity: what each transport learned about a connection, and the interceptors that
//! turn it into a [`Caller`] on every request (or refuse the request).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use super::{status, to_status};
use crate::base::caller::{Caller, LocalPeer};
use crate::base::error::ErrorKind;
use crate::service::authority::Authority;

/// Who may connect to the local socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAccess {
    /// The daemon's own user: always allowed.
    pub daemon_uid: u32,
    /// Further allowed users.
    pub allow_uids: Vec<u32>,
    /// Groups whose members (primary or supplementary) are allowed.
    pub allow_groups: Vec<String>,
}

impl LocalAccess {
    /// Whether `peer` may use the socket. Group membership is read at each connection, so a
    /// change to `/etc/group` applies without a restart.
    pub fn allows(&self, peer: &LocalPeer) -> bool {
        if peer.uid == self.daemon_uid || self.allow_uids.contains(&peer.uid) {
            return true;
        }
        if self.allow_groups.is_empty() {
            return false;
        }
        let user = nix::unistd::User::from_uid(peer.uid.into()).ok().flatten();
        self.allow_groups
            .iter()
            .any(|name| match nix::unistd::Group::from_name(name) {
                Ok(Some(group)) => {
                    group.gid.as_raw() == peer.gid
                        || user.as_ref().is_some_and(|u| group.mem.contains(&u.name))
                }
                _ => false,
            })
    }
}

/// What the Unix listener learned about a connection.
#[derive(Clone, Copy, Debug)]
pub struct UnixPeerInfo {
    /// Kernel-reported peer credentials.
    pub peer: LocalPeer,
    /// Whether [`LocalAccess`] allowed this peer when it connected.
    pub allowed: bool,
}

/// What the TLS listener learned about a connection.
#[derive(Clone, Copy, Debug)]
pub struct TlsPeerInfo {
    /// SHA-256 of the client certificate's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// Remote address.
    pub remote: SocketAddr,
}

/// A local socket connection with its peer credentials.
#[derive(Debug)]
pub struct UnixConn {
    inner: UnixStream,
    info: UnixPeerInfo,
    /// Rewrites what the client sends so any `:authority` is accepted.
    rewriter: super::authority_fix::Rewriter,
    /// Held while the connection is open (see [`ConnectionSlots`]).
    _slot: Option<Slot>,
}

/// Counts open connections, in total and per source (a local user, a remote address), and
/// refuses past the limits.
#[derive(Debug)]
pub struct ConnectionSlots {
    total: usize,
    per_uid: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<Source, usize>)>,
}

/// Whose connection it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A local user.
    Uid(u32),
    /// A TCP peer's address.
    Ip(std::net::IpAddr),
}

/// One open connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    uid: Option<Source>,
}

impl ConnectionSlots {
    /// At most `total` connections, and `per_uid` of one source.
    pub fn new(total: usize, per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_uid,
            open: std::sync::Mutex::new((0, std::collections::HashMap::new())),
        })
    }

    /// A place for a connection from `uid` (None: counted in the total only), or None past a
    /// limit.
    pub fn take(self: &Arc<Self>, uid: Option<Source>) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.0 >= self.total {
            return None;
        }
        if let Some(uid) = uid {
            let mine = open.1.entry(uid).or_default();
            if *mine >= self.per_uid {
                return None;
            }
            *mine += 1;
        }
        open.0 += 1;
        Some(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(uid) = self.uid
            && let Some(mine) = open.1.get_mut(&uid)
        {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.1.remove(&uid);
            }
        }
    }
}

impl UnixConn {
    /// The peer's uid, from its credentials.
    pub fn peer_uid(&self) -> u32 {
        self.info.peer.uid
    }

    /// Holds `slot` for as long as the connection is open.
    pub fn holding(mut self, slot: Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Waits until the peer has sent something (or closed). Readiness alone can be a false
    /// positive, so the socket is peeked at without consuming anything.
    pub async fn readable(&self) -> io::Result<()> {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsFd as _;
        loop {
            self.inner.readable().await?;
            let peeked = self.inner.try_io(tokio::io::Interest::READABLE, || {
                let mut byte = [0u8; 1];
                let fd = std::os::fd::AsRawFd::as_raw_fd(&self.inner.as_fd());
                recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)
            });
            match peeked {
                // Data, or an orderly close (0): either way the server may take it now.
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the peer's credentials and checks them against `access`.
    pub fn accept(inner: UnixStream, access: &LocalAccess) -> io::Result<Self> {
        let cred = inner.peer_cred()?;
        let peer = LocalPeer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        let allowed = access.allows(&peer);
        if !allowed {
            tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "local peer not in allow-list");
        }
        Ok(Self {
            inner,
            info: UnixPeerInfo { peer, allowed },
            rewriter: super::authority_fix::Rewriter::default(),
            _slot: None,
        })
    }
}

/// A mutual-TLS connection with the client key's SPKI hash.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsPeerInfo,
    /// Held while the connection is open (see [`ConnectionSlots`]).
    _slot: Option<Slot>,
}

impl TlsConn {
    /// Holds `slot` for as long as the connection is open.
    pub fn holding(mut self, slot: Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Wraps a completed handshake. Fails if the client presented no certificate.
    pub fn new(
        inner: tokio_rustls::server::TlsStream<TcpStream>,
        remote: SocketAddr,
    ) -> io::Result<Self> {
        let cert = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate")
            })?;
        let spki_sha256 = crate::credential::keys::spki_sha256(cert)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Self {
            inner,
            info: TlsPeerInfo {
                spki_sha256,
                remote,
            },
            _slot: None,
        })
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_read(cx, buf)
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

/// Reads what the client sent through the rewriter (see `rpc::authority_fix`).
impl AsyncRead for UnixConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let ready = self.rewriter.ready();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                self.rewriter.consume(n);
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut self.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = raw_buf.filled();
                    if filled.is_empty() {
                        return Poll::Ready(Ok(())); // end of stream
                    }
                    let filled = filled.to_vec();
                    self.rewriter.feed(&filled)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

delegate_write!(UnixConn);
delegate_read!(TlsConn);
delegate_write!(TlsConn);
delegate_read!(super::remote::RemoteConn);
delegate_write!(super::remote::RemoteConn);

impl Connected for UnixConn {
    type ConnectInfo = UnixPeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TlsPeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info
    }
}

/// Identifies local callers; refuses peers outside the allow-list.
pub fn local_interceptor()
-> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    |mut req: Request<()>| {
        let info = req
            .extensions()
            .get::<UnixPeerInfo>()
            .copied()
            .ok_or_else(|| {
                status(
                    ErrorKind::Unauthenticated,
                    "caller.unidentified",
                    "no peer credentials",
                )
            })?;
        if !info.allowed {
            return Err(status(
                ErrorKind::PermissionDenied,
                "caller.local_not_allowed",
                &format!(
                    "uid {} is not allowed on this socket; add it to [unix] allow_uids or allow_groups",
                    info.peer.uid
                ),
            ));
        }
        req.extensions_mut().insert(Caller::Local(info.peer));
        Ok(req)
    }
}

/// Identifies TLS callers by their pinned SPKI; refuses keys not pinned in the trust store.
pub fn tls_interceptor(
    authority: Arc<Authority>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |mut req: Request<()>| {
        let info = req
            .extensions()
            .get::<TlsPeerInfo>()
            .copied()
            .ok_or_else(|| {
                status(
                    ErrorKind::Unauthenticated,
                    "caller.unidentified",
                    "no client certificate",
                )
            })?;
        let workload = authority
            .identify_workload(&info.spki_sha256)
            .map_err(|e| to_status(&e))?
            .ok_or_else(|| {
                status(
                    ErrorKind::Unauthenticated,
                    "caller.not_pinned",
                    &format!(
                        "client certificate key (SPKI SHA-256 {}) is not pinned in the trust store",
                        hex::encode(info.spki_sha256)
                    ),
                )
            })?;
        req.extensions_mut().insert(Caller::Workload(workload));
        Ok(req)
    }
}

/// The caller the interceptor established for this request.
pub fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        status(
            ErrorKind::Unauthenticated,
            "caller.unidentified",
            "caller not identified",
        )
    })
}
