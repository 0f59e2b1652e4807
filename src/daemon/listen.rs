//! Listeners: the local Unix socket and the optional mutual-TLS port, either bound here or
//! inherited through systemd socket activation (`LISTEN_FDS`).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::DaemonError;
use crate::base::constants::{SOCKET_MODE, TLS_HANDSHAKE_TIMEOUT};
use crate::daemon::config::Config;
use crate::rpc::identity::{ConnectionSlots, LocalAccess, TlsConn, UnixConn};
use crate::rpc::remote::RemoteConn;

/// Listeners ready to accept.
#[derive(Debug)]
pub struct Bound {
    /// The local socket and, when we created the file, its path (removed at exit).
    pub unix: Option<(UnixListener, Option<PathBuf>)>,
    /// The TLS port.
    pub tls: Option<TcpListener>,
    /// The remote operator port (always bound by the daemon itself, from `[remote]`).
    pub remote: Option<TcpListener>,
    /// The approval page (always bound by the daemon itself, from `[web]`).
    pub web: Option<TcpListener>,
    /// Whether the sockets came from systemd.
    pub activated: bool,
}

impl Bound {
    /// Human-readable addresses, e.g. `unix:/run/latchkey/latchkeyd.sock`.
    pub fn addresses(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((l, _)) = &self.unix {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(unnamed)".to_owned());
            out.push(format!("unix:{path}"));
        }
        if let Some(l) = &self.tls
            && let Ok(addr) = l.local_addr()
        {
            out.push(format!("tls:{addr}"));
        }
        if let Some(l) = &self.remote
            && let Ok(addr) = l.local_addr()
        {
            out.push(format!("remote:{addr}"));
        }
        if let Some(l) = &self.web
            && let Ok(addr) = l.local_addr()
        {
            out.push(format!("web:https://{addr}/"));
        }
        out
    }

    /// [`Bound::addresses`], and the metrics listener's URL if there is one.
    pub fn addresses_with(&self, metrics: Option<SocketAddr>) -> Vec<String> {
        let mut out = self.addresses();
        if let Some(addr) = metrics {
            out.push(format!("metrics:http://{addr}/metrics"));
        }
        out
    }

    /// The bound TLS address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound remote operator address, if any.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound approval page address, if any.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Takes systemd's sockets if there are any, otherwise binds what the config names.
pub fn bind(config: &Config) -> Result<Bound, DaemonError> {
    let bound = bind_listeners(config)?;
    if let Some((listener, _)) = &bound.unix
        && let Ok(addr) = listener.local_addr()
        && let Some(path) = addr.as_pathname()
    {
        for uid in unreachable_allowed_uids(path, &config.unix.allow_uids) {
            tracing::warn!(
                socket = %path.display(),
                uid,
                "uid {uid} is in [unix] allow_uids but the socket's mode does not let it connect: add that user to the socket's group (the first of allow_groups; `latchkey` for the packaged unit)"
            );
        }
    }
    Ok(bound)
}

/// The allow-listed uids that the socket file's owner, group and mode keep out: SO_PEERCRED
/// is checked only after a caller could open the socket.
pub fn unreachable_allowed_uids(path: &Path, allow_uids: &[u32]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = meta.mode();
    if mode & 0o006 == 0o006 {
        return Vec::new();
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
        .ok()
        .flatten();
    allow_uids
        .iter()
        .copied()
        .filter(|&uid| {
            if uid == 0 || (uid == meta.uid() && mode & 0o600 == 0o600) {
                return false;
            }
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten();
            let in_group = match (&user, &group) {
                (Some(user), Some(group)) => {
                    user.gid.as_raw() == meta.gid() || group.mem.contains(&user.name)
                }
                _ => false,
            };
            !(in_group && mode & 0o060 == 0o060)
        })
        .collect()
}

fn bind_listeners(config: &Config) -> Result<Bound, DaemonError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        let mut bound = activated(&mut fds)?;
        bound.remote = bind_remote(config)?;
        bound.web = bind_web(config)?;
        return Ok(bound);
    }
    let unix = bind_unix(config)?;
    let tls = match &config.tls {
        Some(tls) => {
            let std = std::net::TcpListener::bind(tls.listen).map_err(|e| DaemonError::Listen {
                what: format!("tls {}", tls.listen),
                source: e,
            })?;
            Some(to_tokio_tcp(std, &tls.listen.to_string())?)
        }
        None => None,
    };
    Ok(Bound {
        unix: Some(unix),
        tls,
        remote: bind_remote(config)?,
        web: bind_web(config)?,
        activated: false,
    })
}

fn bind_web(config: &Config) -> Result<Option<TcpListener>, DaemonError> {
    let Some(web) = &config.web else {
        return Ok(None);
    };
    let std = std::net::TcpListener::bind(web.listen).map_err(|e| DaemonError::Listen {
        what: format!("web {}", web.listen),
        source: e,
    })?;
    Ok(Some(to_tokio_tcp(std, &web.listen.to_string())?))
}

fn bind_remote(config: &Config) -> Result<Option<TcpListener>, DaemonError> {
    let Some(addr) = config.remote else {
        return Ok(None);
    };
    let std = std::net::TcpListener::bind(addr).map_err(|e| DaemonError::Listen {
        what: format!("remote {addr}"),
        source: e,
    })?;
    Ok(Some(to_tokio_tcp(std, &addr.to_string())?))
}

fn activated(fds: &mut listenfd::ListenFd) -> Result<Bound, DaemonError> {
    let mut bound = Bound {
        unix: None,
        tls: None,
        remote: None,
        web: None,
        activated: true,
    };
    for idx in 0..fds.len() {
        let what = format!("systemd socket #{idx}");
        if let Ok(Some(l)) = fds.take_unix_listener(idx) {
            if bound.unix.is_some() {
                return Err(DaemonError::Activation(format!(
                    "{what}: more than one Unix socket passed"
                )));
            }
            l.set_nonblocking(true).map_err(|e| listen_err(&what, e))?;
            bound.unix = Some((
                UnixListener::from_std(l).map_err(|e| listen_err(&what, e))?,
                None,
            ));
        } else if let Ok(Some(l)) = fds.take_tcp_listener(idx) {
            if bound.tls.is_some() {
                return Err(DaemonError::Activation(format!(
                    "{what}: more than one TCP socket passed"
                )));
            }
            bound.tls = Some(to_tokio_tcp(l, &what)?);
        } else {
            return Err(DaemonError::Activation(format!(
                "{what} is neither a Unix nor a TCP stream listener"
            )));
        }
    }
    Ok(bound)
}

fn listen_err(what: &str, source: io::Error) -> DaemonError {
    DaemonError::Listen {
        what: what.to_owned(),
        source,
    }
}

fn to_tokio_tcp(l: std::net::TcpListener, what: &str) -> Result<TcpListener, DaemonError> {
    l.set_nonblocking(true).map_err(|e| listen_err(what, e))?;
    TcpListener::from_std(l).map_err(|e| listen_err(what, e))
}

fn bind_unix(config: &Config) -> Result<(UnixListener, Option<PathBuf>), DaemonError> {
    let path = &config.unix.path;
    let what = format!("unix {}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| listen_err(&what, e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(listen_err(
                    &what,
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another latchkeyd is listening there",
                    ),
                ));
            }
            // A socket nobody listens on is left over from a crash: replace it.
            std::fs::remove_file(path).map_err(|e| listen_err(&what, e))?;
        }
        Ok(_) => {
            return Err(listen_err(
                &what,
                io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(&what, e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| listen_err(&what, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| listen_err(&what, e))?;
    // Let the first allowed group connect through the file mode too.
    if let Some(group) = config.unix.allow_groups.first()
        && let Ok(Some(g)) = nix::unistd::Group::from_name(group)
        && let Err(e) = nix::unistd::chown(path, None, Some(g.gid))
    {
        tracing::warn!(socket = %path.display(), group, "cannot give the socket to the group: {e}");
    }
    Ok((listener, Some(path.clone())))
}

/// The stream of identified local connections. Past the connection limits (in total, per
/// calling user) a new connection is closed at once; one that sends nothing within
/// `handshake` is closed; accept errors (out of file descriptors) back off instead of
/// spinning. The accept loop ends when the server drops the stream.
pub fn unix_incoming(
    listener: UnixListener,
    access: LocalAccess,
    slots: std::sync::Arc<ConnectionSlots>,
    handshake: std::time::Duration,
) -> ReceiverStream<io::Result<UnixConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a local connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conn = match UnixConn::accept(stream, &access) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::info!("reading a local peer's credentials: {e}");
                    continue;
                }
            };
            let uid = conn.peer_uid();
            let Some(slot) = slots.take(Some(crate::rpc::identity::Source::Uid(uid))) else {
                tracing::warn!(uid, "too many local connections; closing a new one");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, conn.readable()).await {
                    Ok(Ok(())) => {
                        // The server may have shut down meanwhile; then the connection closes.
                        let _closed = tx.send(Ok(conn.holding(slot))).await;
                    }
                    Ok(Err(e)) => tracing::info!(uid, "local connection failed: {e}"),
                    Err(_) => tracing::info!(uid, "local connection sent nothing; closed"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The stream of completed mutual-TLS handshakes. Handshakes run concurrently so a slow client
/// cannot hold up others; the accept loop ends when the server drops the stream.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: std::sync::Arc<ConnectionSlots>,
) -> ReceiverStream<io::Result<TlsConn>> {
    accept_tls(listener, acceptor, slots, |tls, remote, slot| {
        TlsConn::new(tls, remote).map(|c| c.holding(slot))
    })
}

/// The stream of completed handshakes on the remote operator port (no client certificate).
pub fn remote_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: std::sync::Arc<ConnectionSlots>,
) -> ReceiverStream<io::Result<RemoteConn>> {
    accept_tls(listener, acceptor, slots, |tls, remote, slot| {
        RemoteConn::new(tls, remote).map(|c| c.holding(slot))
    })
}

/// The approval page's connections: TLS done, each holding its slot while it is open.
pub fn web_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: std::sync::Arc<ConnectionSlots>,
) -> ReceiverStream<io::Result<crate::web::WebConn>> {
    accept_tls(listener, acceptor, slots, |tls, remote, slot| {
        Ok(crate::web::WebConn::new(tls, remote, slot))
    })
}

type Wrap<C> = fn(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    SocketAddr,
    crate::rpc::identity::Slot,
) -> io::Result<C>;

fn accept_tls<C: Send + 'static>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: std::sync::Arc<ConnectionSlots>,
    wrap: Wrap<C>,
) -> ReceiverStream<io::Result<C>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accepting a TCP connection: {e}");
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = slots.take(Some(crate::rpc::identity::Source::Ip(remote.ip()))) else {
                tracing::warn!(%remote, "too many TLS connections; closing a new one");
                continue;
            };
            // Small gRPC frames must not wait for Nagle's algorithm (a 40 ms tail otherwise).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(%remote, "TCP_NODELAY: {e}");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        // The server may have shut down meanwhile; then the connection just closes.
                        let conn = wrap(tls, remote, slot);
                        let _closed = tx.send(conn).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_listed_uid_outside_the_sockets_group_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        let owner = nix::unistd::geteuid().as_raw();
        // nobody (65534) is neither the owner nor, on any sane host, in the owner's group.
        assert_eq!(
            unreachable_allowed_uids(&path, &[owner, 65534]),
            vec![65534]
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(unreachable_allowed_uids(&path, &[65534]).is_empty());
    }
}
