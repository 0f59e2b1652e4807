//! Wiring: config, keys, store, listeners, background tasks, signals, systemd notification.

pub mod backup;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod listen;
pub mod logging;
pub mod metrics_http;
pub mod notify;
mod process_metrics;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::audit::{Actor, AuditError, AuditLog, CheckpointPolicy};
use crate::base::clock::{Clock, SystemClock};
use crate::base::constants::{SHUTDOWN_GRACE, STORE_DIR};
use crate::base::fsperm::{self, FsPermError};
use crate::credential::keys::{DaemonKeys, Fingerprints, KeyError};
use crate::daemon::config::{AuditConfig, Config, ConfigError};
use crate::domain::trust::TrustStorePolicy;
use crate::domain::workload::Workload;
use crate::rpc::identity::{ConnectionSlots, LocalAccess, local_interceptor, tls_interceptor};
use crate::rpc::{Api, FILE_DESCRIPTOR_SET};
use crate::service::authority::{Authority, AuthorityError};
use crate::service::trust_store::{self, TrustError};
use crate::service::workloads::{self, WorkloadError};
use crate::store::{SledStore, Store, StoreError};

/// Errors that stop `latchkeyd` from starting or initialising. Each message names the problem
/// and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key or directory has loose permissions or is missing.
    #[error(transparent)]
    Permissions(#[from] FsPermError),
    /// A daemon key is missing or unreadable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The store cannot be opened or is of an unsupported schema.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The trust-store metadata is unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The authority could not start on this store.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The audit log could not be written (the change did not happen).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Bootstrap admission of a workload failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Revoking what expired while the daemon was down failed: nothing is served until it
    /// succeeds. See the inner error.
    #[error("revoking expired grants at start: {0}")]
    Revocation(#[from] crate::service::workflow::WorkflowError),
    /// A listener could not be bound. Free the address or fix the path.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// Which listener.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// systemd passed sockets latchkeyd cannot use. Fix the .socket unit.
    #[error("socket activation: {0}")]
    Activation(String),
    /// The approval page's certificate or key file is unusable. Fix `[web]` (a private key
    /// file must be 0600, owned by the daemon's user).
    #[error("approval page: {0}")]
    Web(String),
    /// TLS could not be set up with the daemon's key. Check the TLS files in the data dir.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// `init` was pointed at a data dir that already holds a store.
    #[error("{0} already holds a trust store; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    /// A file the command writes exists already or cannot be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Installing signal handlers or the runtime failed.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// A listener stopped with an error.
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A notification sink cannot be used (its secret files). Fix it, or remove the sink.
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    /// `store copy` cannot run as asked (same store, a target that is not empty, no etcd
    /// table). The message says what to change.
    #[error("store copy: {0}")]
    StoreCopy(String),
}

/// What `latchkeyd init` should create.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The data directory (created 0700 if missing).
    pub data_dir: PathBuf,
    /// Trust-store approval policy.
    pub policy: TrustStorePolicy,
    /// DNS names and IP addresses in the TLS certificate.
    pub tls_names: Vec<String>,
    /// Where to write a matching config file, if anywhere.
    pub write_config: Option<PathBuf>,
    /// Socket path for the written config.
    pub socket: PathBuf,
    /// Dev mode in the written config.
    pub dev_mode: bool,
}

/// Creates the store and the daemon's keys. Refuses a data dir that already holds a store.
pub fn init(opts: &InitOptions, clock: &Arc<dyn Clock>) -> Result<Fingerprints, DaemonError> {
    fsperm::restrict_umask();
    let store_path = opts.data_dir.join(STORE_DIR);
    if store_path.exists() {
        return Err(DaemonError::AlreadyInitialised(opts.data_dir.clone()));
    }
    if let Some(config_path) = &opts.write_config
        && config_path.exists()
    {
        return Err(DaemonError::Write {
            path: config_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "refusing to overwrite"),
        });
    }
    fsperm::create_private_dir(&opts.data_dir)?;
    let keys = DaemonKeys::generate(&opts.data_dir, &opts.tls_names, clock.now())?;
    let store: Arc<dyn Store> = Arc::new(SledStore::create(&store_path)?);
    let audit = offline_audit_log(store.clone(), clock.clone(), &keys)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| DaemonError::Runtime(std::io::Error::other(e.to_string())))?;
    trust_store::initialise(
        &audit,
        opts.policy.clone(),
        hex::encode(id),
        clock.now(),
        local_actor(),
    )?;
    // The first record is covered at once: a fresh store verifies with no unverified tail.
    audit.checkpoint()?;
    store.flush()?;
    if let Some(config_path) = &opts.write_config {
        let text = Config::example(&opts.data_dir, &opts.socket, opts.dev_mode);
        fsperm::write_private_file(config_path, text.as_bytes())?;
    }
    Ok(keys.fingerprints().clone())
}

/// Admits a workload directly into a stopped daemon's store while genesis is open.
pub fn admit_workload_at_genesis(data_dir: &Path, workload: &Workload) -> Result<(), DaemonError> {
    fsperm::restrict_umask();
    fsperm::check_private(data_dir)?;
    let store_path = data_dir.join(STORE_DIR);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&store_path)?);
    crate::store::check_schema(store.as_ref(), &store_path)?;
    let keys = DaemonKeys::load(data_dir)?;
    let audit = offline_audit_log(store.clone(), Arc::new(SystemClock), &keys)?;
    workloads::admit_at_genesis(store.as_ref(), &audit, workload, local_actor())?;
    store.flush()?;
    Ok(())
}

/// `latchkeyd accept-rollback`: with the daemon stopped, anchors the store's current audit
/// head, so a store that went back in time is served. Records the acceptance in the audit log
/// (`store.rollback_accepted`: what was anchored, what is served) and returns both.
pub fn accept_rollback(
    config: &Config,
) -> Result<
    (
        Option<crate::audit::anchor::Anchored>,
        crate::audit::anchor::Anchored,
    ),
    DaemonError,
> {
    fsperm::restrict_umask();
    fsperm::check_private(&config.data_dir)?;
    let (store, store_path) = open_store(config, config::StoreChoice::Configured)?;
    crate::store::check_schema(store.as_ref(), &store_path)?;
    let keys = DaemonKeys::load(&config.data_dir)?;
    let anchor = crate::audit::anchor::Anchor::new(
        config.data_dir.join(crate::base::constants::ANCHOR_FILE),
    );
    // An unreadable anchor is what is being replaced: report it as none.
    let before = anchor.read().ok().flatten();
    let audit = offline_audit_log(store.clone(), Arc::new(SystemClock), &keys)?;
    audit.commit(
        crate::store::Txn::new(),
        crate::audit::Event {
            event: "store.rollback_accepted",
            actor: local_actor(),
            subject: "store".to_owned(),
            details: serde_json::json!({
                "anchored_seq": before.as_ref().map(|a| a.seq),
                "anchored_hash": before.as_ref().map(|a| a.hash.clone()),
                "store_seq": audit.head_seq(),
            }),
            evidence: None,
        },
    )?;
    store.flush()?;
    let (_, now) = anchor.reset(store.as_ref()).map_err(AuthorityError::from)?;
    Ok((before, now))
}

/// The actor of an offline command: the local user running it.
fn local_actor() -> Actor {
    Actor::Local {
        uid: nix::unistd::getuid().as_raw(),
    }
}

fn offline_audit_log(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: &DaemonKeys,
) -> Result<AuditLog, DaemonError> {
    let signer = crate::audit::signing_key(&keys.audit).ok_or(AuthorityError::AuditKey)?;
    let policy = CheckpointPolicy {
        every_records: AuditConfig::default().checkpoint_every_records,
    };
    Ok(AuditLog::open(store, clock, signer, policy)?)
}

/// A daemon that is serving. Dropping it does not stop it; call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    addresses: Vec<String>,
    tls_addr: Option<std::net::SocketAddr>,
    remote_addr: Option<std::net::SocketAddr>,
    web_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    socket_file: Option<PathBuf>,
    authority: Arc<Authority>,
    health: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
    servers: JoinSet<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Where the daemon listens, e.g. `unix:/run/latchkey/latchkeyd.sock`, `tls:127.0.0.1:7443`.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The authority being served (tests inspect its store).
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// The TLS listener's bound address (useful with port 0).
    pub fn tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.tls_addr
    }

    /// The bound remote operator address, if `[remote]` is set.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.remote_addr
    }

    /// The bound approval page address, if `[web]` is set.
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.web_addr
    }

    /// The metrics listener's bound address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, lets in-flight calls finish (up to a grace period), flushes the store
    /// and removes the socket file this process created.
    pub async fn shutdown(mut self) -> Result<(), DaemonError> {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Receivers live in the server tasks; if they are gone the servers have ended already.
        let _already_stopped = self.stop.send(true);
        let mut result = Ok(());
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = self.servers.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = Err(DaemonError::Serve(e)),
                    Err(e) => tracing::error!("server task failed: {e}"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight calls did not finish in time; closing them");
            self.servers.abort_all();
        }
        self.authority.flush()?;
        // The store stays open (and locked) until the last holder of the authority lets go —
        // a call's task finishing after its connection closed. Wait for it, so whoever opens
        // the store next (a restart in the same process) finds it free.
        let mut released = self.authority.on_release();
        drop(self.authority);
        if tokio::time::timeout(SHUTDOWN_GRACE, released.changed())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "the store is still held after shutdown");
        }
        if let Some(path) = &self.socket_file
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(socket = %path.display(), "removing socket file: {e}");
        }
        tracing::info!("latchkeyd stopped");
        result
    }
}

/// Wraps the opened store before the authority uses it: a seam for fault-injection tests (a
/// held or failing flush) that the real disk cannot be made to produce on demand.
pub type StoreLayer = Arc<dyn Fn(Arc<dyn Store>) -> Arc<dyn Store> + Send + Sync>;

/// Opens a trust store of `config`: the embedded one in `data_dir`, or etcd's (`[store.etcd]`).
/// Returns it with where it is, for messages.
pub fn open_store(
    config: &Config,
    choice: config::StoreChoice,
) -> Result<(Arc<dyn Store>, PathBuf), DaemonError> {
    let backend = match choice {
        config::StoreChoice::Configured => &config.store,
        config::StoreChoice::Sled => &config::StoreConfig::Sled,
        config::StoreChoice::Etcd => match &config.store {
            etcd @ config::StoreConfig::Etcd(_) => etcd,
            config::StoreConfig::Sled => {
                return Err(DaemonError::StoreCopy(
                    "the config has no [store.etcd] table to reach etcd with".to_owned(),
                ));
            }
        },
    };
    Ok(match backend {
        config::StoreConfig::Sled => {
            let path = config.data_dir.join(STORE_DIR);
            (Arc::new(SledStore::open(&path)?), path)
        }
        config::StoreConfig::Etcd(etcd) => {
            let store = crate::store::EtcdStore::connect(etcd)?;
            let location = format!("etcd {} under {}", etcd.endpoints.join(","), etcd.prefix);
            (Arc::new(store), PathBuf::from(location))
        }
    })
}

/// `latchkeyd store copy`: every record of one backend into the other, which must be empty
/// (daemons stopped). Returns how many records were copied.
pub fn copy_store(
    config: &Config,
    from: config::StoreChoice,
    to: config::StoreChoice,
) -> Result<u64, DaemonError> {
    fsperm::restrict_umask();
    fsperm::check_private(&config.data_dir)?;
    if from == to {
        return Err(DaemonError::StoreCopy(
            "--from and --to name the same store".to_owned(),
        ));
    }
    let (source, source_path) = open_store(config, from)?;
    crate::store::check_schema(source.as_ref(), &source_path)?;
    let target = match to {
        config::StoreChoice::Sled => {
            let path = config.data_dir.join(STORE_DIR);
            if path.exists() {
                return Err(DaemonError::StoreCopy(format!(
                    "{} exists: move it away first (the copy never overwrites a store)",
                    path.display()
                )));
            }
            Arc::new(SledStore::create(&path)?) as Arc<dyn Store>
        }
        other => open_store(config, other)?.0,
    };
    Ok(crate::store::copy_all(source.as_ref(), target.as_ref())?)
}

/// Checks permissions, loads the keys and opens the store (taking its lock).
pub fn open_authority(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<Authority>, Arc<DaemonKeys>), DaemonError> {
    open_layered_authority(config, clock, None)
}

fn open_layered_authority(
    config: &Config,
    clock: Arc<dyn Clock>,
    layer: Option<&StoreLayer>,
) -> Result<(Arc<Authority>, Arc<DaemonKeys>), DaemonError> {
    fsperm::check_private(&config.data_dir)?;
    let keys = Arc::new(DaemonKeys::load(&config.data_dir)?);
    let opening = std::time::Instant::now();
    let (mut store, store_path) = open_store(config, config::StoreChoice::Configured)?;
    if let Some(layer) = layer {
        store = layer(store);
    }
    let opened_ms = opening.elapsed().as_millis() as u64;
    let loading = std::time::Instant::now();
    let authority = Arc::new(Authority::new(
        store,
        &store_path,
        clock,
        keys.clone(),
        crate::service::authority::Settings {
            dev_mode: config.dev_mode,
            checkpoints: CheckpointPolicy {
                every_records: config.audit.checkpoint_every_records,
            },
            fido2: &config.fido2,
            krl_path: config.revocation.krl_path.clone(),
            piv: &config.piv,
            introspect_uids: config.unix.introspect_uids.clone(),
            drill_max_age: config.drill_max_age,
            anchor: Some(config.data_dir.join(crate::base::constants::ANCHOR_FILE)),
        },
    )?);
    // Logged once it all worked: a refused store gets its one error line and nothing else.
    tracing::info!(
        store_open_ms = opened_ms,
        load_ms = loading.elapsed().as_millis() as u64,
        "store opened; trust store, audit head and token index loaded"
    );
    Ok((authority, keys))
}

/// A gRPC server bounded as `[limits]` says: concurrent calls per connection, and HTTP/2
/// keepalive pings that close connections whose peer stopped answering.
fn server_builder(limits: &crate::daemon::config::LimitsConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(Some(limits.streams_per_connection))
        .http2_keepalive_interval(Some(crate::base::constants::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::base::constants::KEEPALIVE_TIMEOUT))
}

/// Revokes what expired while the daemon was down and writes the KRL, before any listener
/// accepts a call.
fn revoke_expired_before_serving(authority: &Authority) -> Result<(), DaemonError> {
    // Everything that expired while the daemon was down is revoked before any listener
    // accepts a call: one by one where a sink outside latchkey must confirm, by one audit
    // record for the rest (the scheduler rewrites those grants once serving).
    let revoking = std::time::Instant::now();
    let expired = authority.revoke_expired_at_start()?;
    if expired != crate::service::expiry::StartRevocations::default() {
        tracing::info!(
            expired = expired.revoked + expired.deferred,
            revoked_one_by_one = expired.revoked,
            rewritten_after_start = expired.deferred,
            elapsed_ms = revoking.elapsed().as_millis() as u64,
            "revoked grants that expired while latchkeyd was down"
        );
    }
    let listed = authority.publish_krl_now()?;
    tracing::info!(krl = %authority.krl_path().display(), revoked_serials = listed, "KRL written");
    Ok(())
}

/// The optional metrics listener and its bound address (useful with port 0).
async fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<
    (
        Option<tokio::net::TcpListener>,
        Option<std::net::SocketAddr>,
    ),
    DaemonError,
> {
    let metrics_listener = match addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Listen {
                    what: format!("metrics {addr}"),
                    source: e,
                })?;
            Some(l)
        }
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|e| DaemonError::Listen {
            what: "metrics".to_owned(),
            source: e,
        })?),
        None => None,
    };
    Ok((metrics_listener, metrics_addr))
}

/// The daemon's own tasks beside the gRPC servers: the notification sinks, the metrics
/// listener, the revocation scheduler, the checkpoint timer and the challenge sweeper. Fails
/// (before any runs) if a sink's secrets are unusable.
fn spawn_tasks(
    servers: &mut JoinSet<Result<(), tonic::transport::Error>>,
    authority: &Arc<Authority>,
    metrics_listener: Option<tokio::net::TcpListener>,
    config: &Config,
    stop: &watch::Sender<bool>,
) -> Result<(), DaemonError> {
    // Before any singleton task starts: on a shared store nothing runs unled.
    if matches!(config.store, config::StoreConfig::Etcd(_)) {
        authority.contest_leadership();
    }
    let notify_health = notify::Health::default();
    notify::spawn(servers, authority, (&config.notify, &notify_health), stop)?;
    if let Some(listener) = metrics_listener {
        servers.spawn(metrics_http::serve(
            listener,
            (authority.clone(), notify_health.clone()),
            stopped(stop),
        ));
    }
    servers.spawn(revocation_scheduler(authority.clone(), stopped(stop)));
    servers.spawn(checkpoint_timer(
        authority.clone(),
        config.audit.checkpoint_interval,
        stopped(stop),
    ));
    servers.spawn(challenge_sweeper(authority.clone(), stopped(stop)));
    if matches!(config.store, config::StoreConfig::Etcd(_)) {
        servers.spawn(shared_store_follower(authority.clone(), stopped(stop)));
        servers.spawn(leader_campaign(authority.clone(), stopped(stop)));
    }
    Ok(())
}

/// Runs `round` on the blocking pool at once and then every `interval` (a slow round delays
/// the next rather than piling up), handing each result to `after`, until `stop`.
async fn every<T, R, A>(
    interval: std::time::Duration,
    stop: impl Future<Output = ()>,
    round: R,
    mut after: A,
) -> Result<(), tonic::transport::Error>
where
    T: Send + 'static,
    R: Fn() -> T + Send + Sync + 'static,
    A: FnMut(T),
{
    let round = Arc::new(round);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticks.tick() => {
                let round = round.clone();
                match tokio::task::spawn_blocking(move || round()).await {
                    Ok(out) => after(out),
                    Err(e) => tracing::error!("background task: {e}"),
                }
            }
        }
    }
}

/// On a shared store: takes part in electing the node that does the singleton work, a round
/// every third of [`LEADER_LEASE`], and wakes the scheduler when this node starts leading.
///
/// [`LEADER_LEASE`]: crate::base::constants::LEADER_LEASE
async fn leader_campaign(
    authority: Arc<Authority>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use crate::base::constants::LEADER_LEASE;
    let node = match crate::base::names::random_id::<8>() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("no node id for the leader election: {e}; not contesting");
            return Ok(());
        }
    };
    tracing::info!(node, "contesting the leadership of the singleton work");
    let (worker, me) = (authority.clone(), node.clone());
    let mut leading = false;
    every(
        LEADER_LEASE / 3,
        stop,
        move || worker.campaign(&me, LEADER_LEASE),
        move |round| {
            let now_leading = round.unwrap_or_else(|e| {
                tracing::warn!("leader election: {e}");
                false
            });
            if now_leading != leading {
                tracing::info!(node, leading = now_leading, "leadership changed");
                if now_leading {
                    authority.wake_scheduler();
                }
            }
            leading = now_leading;
        },
    )
    .await
}

/// On a shared store (etcd): every [`SHARED_STORE_FOLLOW_INTERVAL`], takes in what other
/// latchkeyd nodes wrote (audit records for tails and watches, grants for introspection).
///
/// [`SHARED_STORE_FOLLOW_INTERVAL`]: crate::base::constants::SHARED_STORE_FOLLOW_INTERVAL
async fn shared_store_follower(
    authority: Arc<Authority>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    every(
        crate::base::constants::SHARED_STORE_FOLLOW_INTERVAL,
        stop,
        move || authority.follow_shared_store(),
        |followed| {
            if let Err(e) = followed {
                tracing::warn!("following the shared store: {e}");
            }
        },
    )
    .await
}

/// Resolves once `stop` says so, or once it is gone.
fn stopped(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + use<> {
    let mut rx = stop.subscribe();
    async move {
        // Either a `true` arrives or the sender is gone: stop in both cases.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The one line that says the daemon is up, where, and with which keys.
fn log_serving(addresses: &[String], activated: bool, dev_mode: bool, fingerprints: &Fingerprints) {
    tracing::info!(
        listen = %addresses.join(" "),
        socket_activated = activated,
        dev_mode = dev_mode,
        audit_key = %fingerprints.audit_key,
        ssh_user_ca = %fingerprints.ssh_user_ca,
        tls_certificate = %fingerprints.tls_certificate,
        "latchkeyd serving"
    );
}

/// The standard health service, with latchkey's system service serving.
async fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::pb::system_service_server::SystemServiceServer<crate::rpc::SystemApi>>()
        .await;
    (health, service)
}

/// Server reflection, v1 and v1alpha, over latchkey's and health's descriptors.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    DaemonError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let failed =
        |e: tonic_reflection::server::Error| DaemonError::Activation(format!("reflection: {e}"));
    Ok((
        builder().build_v1().map_err(failed)?,
        builder().build_v1alpha().map_err(failed)?,
    ))
}

/// Opens the store and keys, binds the listeners and starts serving.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, DaemonError> {
    start_layered(config, clock, None).await
}

/// [`start`], with the store wrapped by `layer` (fault-injection tests only).
pub async fn start_layered(
    config: &Config,
    clock: Arc<dyn Clock>,
    layer: Option<StoreLayer>,
) -> Result<Running, DaemonError> {
    fsperm::restrict_umask();
    let (authority, keys) = open_layered_authority(config, clock, layer.as_ref())?;
    revoke_expired_before_serving(&authority)?;
    let (stop, _) = watch::channel(false);
    let api = Api::new(authority.clone(), stop.subscribe(), config.limits.streams);

    let bound = listen::bind(config)?;
    let (metrics_listener, metrics_addr) = bind_metrics(config.metrics).await?;
    let addresses = bound.addresses_with(metrics_addr);
    let (tls_addr, remote_addr, web_addr) =
        (bound.tls_addr(), bound.remote_addr(), bound.web_addr());
    let (health, health_service) = health().await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let mut servers = JoinSet::new();
    let mut socket_file = None;

    if let Some((listener, created)) = bound.unix {
        socket_file = created;
        let access = LocalAccess {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            allow_uids: config.unix.allow_uids.clone(),
            allow_groups: config.unix.allow_groups.clone(),
        };
        let router = server_builder(&config.limits)
            .layer(InterceptorLayer::new(local_interceptor()))
            .add_service(api.system())
            .add_service(api.audit())
            .add_service(api.workload())
            .add_service(api.operator())
            .add_service(api.access())
            .add_service(api.trust())
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone());
        let incoming = listen::unix_incoming(
            listener,
            access,
            ConnectionSlots::new(config.limits.connections, config.limits.connections_per_uid),
            config.limits.handshake,
        );
        servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped(&stop)));
    }
    if let Some(listener) = bound.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&keys)?));
        let router = server_builder(&config.limits)
            .layer(InterceptorLayer::new(tls_interceptor(authority.clone())))
            .add_service(api.system())
            .add_service(api.audit())
            .add_service(api.workload())
            .add_service(api.operator())
            .add_service(api.access())
            .add_service(api.trust())
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone());
        let incoming = listen::tls_incoming(
            listener,
            acceptor,
            ConnectionSlots::new(config.limits.connections, config.limits.connections),
        );
        servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped(&stop)));
    }

    if let Some(listener) = bound.remote {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::remote_server_config(&keys)?));
        let router = server_builder(&config.limits)
            .layer(crate::rpc::remote::RemoteGateLayer::new(authority.clone()))
            .add_service(api.system())
            .add_service(api.operator())
            .add_service(api.access())
            .add_service(api.trust())
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let incoming = listen::remote_incoming(
            listener,
            acceptor,
            // One address may hold as many remote connections as one local user may.
            ConnectionSlots::new(config.limits.connections, config.limits.connections_per_uid),
        );
        servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped(&stop)));
    }
    spawn_web(&mut servers, bound.web, config, (&keys, &authority), &stop)?;

    spawn_tasks(&mut servers, &authority, metrics_listener, config, &stop)?;

    log_serving(
        &addresses,
        bound.activated,
        config.dev_mode,
        keys.fingerprints(),
    );
    Ok(Running {
        addresses,
        tls_addr,
        remote_addr,
        web_addr,
        metrics_addr,
        socket_file,
        authority,
        health,
        stop,
        servers,
    })
}

/// Serves the approval page on `listener` (bound when `[web]` is set) until `stop`.
fn spawn_web(
    servers: &mut JoinSet<Result<(), tonic::transport::Error>>,
    listener: Option<tokio::net::TcpListener>,
    config: &Config,
    (keys, authority): (&DaemonKeys, &Arc<Authority>),
    stop: &watch::Sender<bool>,
) -> Result<(), DaemonError> {
    let (Some(listener), Some(web)) = (listener, &config.web) else {
        return Ok(());
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::web_server_config(
        keys,
        web.certificate.as_ref(),
    )?));
    let incoming = listen::web_incoming(
        listener,
        acceptor,
        // Browsers open a few connections each; an address holds as many as a local user.
        ConnectionSlots::new(config.limits.connections, config.limits.connections_per_uid),
    );
    servers.spawn(crate::web::serve(
        incoming,
        authority.clone(),
        web.origin.clone(),
        stopped(stop),
    ));
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT (or `until` completes), then shuts down cleanly.
/// Tells systemd READY once serving and STOPPING on the way out.
pub async fn serve_until(
    config: &Config,
    until: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let running = start(config, Arc::new(SystemClock)).await?;
    let listening = format!("listening on {}", running.addresses().join(" "));
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&listening),
    ]);
    // Printed (not logged) so a person or script starting the daemon sees where it listens.
    // Not `println!`: on a full or closed stdout that panics; a daemon must not die of it.
    {
        use std::io::Write as _;
        let _unwritable = writeln!(std::io::stdout(), "latchkeyd {listening}");
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        () = until => tracing::info!("shutting down"),
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    running.shutdown().await
}

/// Revokes grants at their expiry and drives every revocation's sinks to confirmation, until
/// `stop`. It sleeps until the next expiry or retry (at most `SCHEDULER_MAX_SLEEP`, so a moved
/// clock is noticed), and wakes at once when a grant is minted or revoked.
async fn revocation_scheduler(
    authority: Arc<Authority>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use crate::base::constants::SCHEDULER_MAX_SLEEP;
    tokio::pin!(stop);
    loop {
        let worker = authority.clone();
        let round = tokio::task::spawn_blocking(move || {
            // On a shared store only the leader does this (its writes are fenced).
            if !worker.leads() {
                return Ok((crate::service::sinks::DriveOutcome::default(), None));
            }
            worker.revoke_expired()?;
            let outcome = worker.drive_revocations()?;
            let next_expiry = worker.next_expiry()?;
            Ok::<_, crate::service::workflow::WorkflowError>((outcome, next_expiry))
        })
        .await;
        let mut wait = SCHEDULER_MAX_SLEEP;
        match round {
            Ok(Ok((outcome, next_expiry))) => {
                let ran_hooks = !outcome.hooks.is_empty();
                for job in outcome.hooks {
                    let result = crate::service::revocation::run_hook(&job).await;
                    let worker = authority.clone();
                    match tokio::task::spawn_blocking(move || {
                        worker.hook_finished(&job, result.as_ref().copied().map_err(String::as_str))
                    })
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!("recording a hook result: {e}"),
                        Err(e) => tracing::error!("hook result task: {e}"),
                    }
                }
                if ran_hooks {
                    continue;
                }
                let now = authority.now();
                for due in [outcome.next_due, next_expiry].into_iter().flatten() {
                    let ms = u64::try_from(due.unix_millis().saturating_sub(now.unix_millis()))
                        .unwrap_or(0);
                    wait = wait.min(std::time::Duration::from_millis(ms));
                }
            }
            Ok(Err(e)) => tracing::error!("revocation scheduler: {e}"),
            Err(e) => tracing::error!("revocation scheduler task: {e}"),
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(wait) => {}
            () = authority.scheduler_woken() => {}
        }
    }
}

/// Covers records with a signed checkpoint at least every `interval` (the leader's, on a
/// shared store), until `stop`.
async fn checkpoint_timer(
    authority: Arc<Authority>,
    interval: std::time::Duration,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    every(
        interval,
        stop,
        move || authority.leads().then(|| authority.audit().checkpoint()),
        |written| {
            if let Some(Err(e)) = written {
                tracing::error!("audit checkpoint: {e}");
            }
        },
    )
    .await
}

/// Deletes expired challenges and records lapsed requests, at start and every
/// [`CHALLENGE_SWEEP_INTERVAL`], until `stop`.
///
/// [`CHALLENGE_SWEEP_INTERVAL`]: crate::base::constants::CHALLENGE_SWEEP_INTERVAL
async fn challenge_sweeper(
    authority: Arc<Authority>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    every(
        crate::base::constants::CHALLENGE_SWEEP_INTERVAL,
        stop,
        move || {
            (
                authority.sweep_challenges(),
                authority.expire_lapsed_requests(),
            )
        },
        |(challenges, requests)| {
            match challenges {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "expired challenges swept"),
                Err(e) => tracing::error!("challenge sweep: {e}"),
            }
            if let Err(e) = requests {
                tracing::error!("recording lapsed requests: {e}");
            }
        },
    )
    .await
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("sd_notify: {e}");
    }
}
