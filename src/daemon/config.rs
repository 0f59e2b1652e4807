//! `latchkeyd.toml`: versioned, strict (unknown fields are errors), parsed into a validated
//! [`Config`]. Defaults live in [`crate::base::constants`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::time::Duration;

use crate::base::constants::{
    CONFIG_VERSION, DEFAULT_CHALLENGE_TTL, DEFAULT_CHECKPOINT_EVERY_RECORDS,
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_DATA_DIR, DEFAULT_DRILL_MAX_AGE_DAYS, DEFAULT_ORIGIN,
    DEFAULT_RP_ID, DEFAULT_SOCKET_PATH,
};
pub use crate::verify::fido2::Fido2Config;
pub use crate::verify::piv::PivConfig;

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read. Check the path given to `--config`.
    #[error("config {path}: {source}")]
    Read {
        /// Config path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (syntax, unknown field, wrong type). Fix the
    /// named line.
    #[error("config {path}: line {line}: {message}")]
    Parse {
        /// Config path.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value parses but makes no sense (wrong version, unknown group, bad address). Fix it.
    #[error("config {path}: {message}")]
    Invalid {
        /// Config path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    /// Always human-readable.
    Human,
    /// Always one JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    dev_mode: bool,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    unix: RawUnix,
    tls: Option<RawTls>,
    remote: Option<RawTls>,
    web: Option<RawWeb>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    fido2: RawFido2,
    #[serde(default)]
    revocation: RawRevocation,
    #[serde(default)]
    piv: RawPiv,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    drill: RawDrill,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    notify: super::notify::RawNotify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    etcd: Option<RawEtcd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
}

/// Which store a command means: the configured one, or one backend by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// `[store] backend`.
    Configured,
    /// The embedded store in `data_dir`.
    Sled,
    /// The `[store.etcd]` cluster.
    Etcd,
}

/// Which backend holds the trust store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded store in `data_dir` (the default).
    Sled,
    /// An etcd cluster shared by several bastions.
    Etcd(crate::store::EtcdConfig),
}

/// `[store]`: sled unless `backend = "etcd"`, which needs `[store.etcd]` endpoints and, for any
/// member off this host, client TLS files.
fn store_config(raw: RawStore) -> Result<StoreConfig, String> {
    match (raw.backend.as_deref().unwrap_or("sled"), raw.etcd) {
        ("sled", _) => Ok(StoreConfig::Sled),
        ("etcd", None) => {
            Err("store.backend = \"etcd\" needs a [store.etcd] table with endpoints".to_owned())
        }
        ("etcd", Some(etcd)) => {
            if etcd.endpoints.is_empty() {
                return Err("store.etcd.endpoints is empty".to_owned());
            }
            let mut remote_plain = Vec::new();
            for endpoint in &etcd.endpoints {
                let url = url::Url::parse(endpoint)
                    .map_err(|e| format!("store.etcd.endpoints {endpoint:?}: {e}"))?;
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                match url.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    "http" => remote_plain.push(endpoint.clone()),
                    other => {
                        return Err(format!(
                            "store.etcd.endpoints {endpoint:?}: scheme {other} (use https://HOST:2379)"
                        ));
                    }
                }
            }
            if !remote_plain.is_empty() {
                return Err(format!(
                    "store.etcd.endpoints {remote_plain:?} are plain HTTP off this host: the trust store must travel over TLS (https:// with ca, certificate, private_key)"
                ));
            }
            let tls = match (etcd.ca, etcd.certificate, etcd.private_key) {
                (None, None, None) => None,
                (Some(ca), Some(certificate), Some(private_key))
                    if ca.is_absolute()
                        && certificate.is_absolute()
                        && private_key.is_absolute() =>
                {
                    Some(crate::store::EtcdTls {
                        ca,
                        certificate,
                        private_key,
                    })
                }
                _ => {
                    return Err(
                        "store.etcd.ca, certificate and private_key go together, as absolute paths"
                            .to_owned(),
                    );
                }
            };
            if tls.is_none() && etcd.endpoints.iter().any(|e| e.starts_with("https://")) {
                return Err(
                    "https etcd endpoints need store.etcd.ca, certificate and private_key"
                        .to_owned(),
                );
            }
            let prefix = etcd.prefix.unwrap_or_else(|| "latchkey/".to_owned());
            if prefix.is_empty() || !prefix.ends_with('/') {
                return Err(format!("store.etcd.prefix {prefix:?} must end with '/'"));
            }
            Ok(StoreConfig::Etcd(crate::store::EtcdConfig {
                endpoints: etcd.endpoints,
                prefix,
                tls,
            }))
        }
        (other, _) => Err(format!("store.backend {other:?}: use \"sled\" or \"etcd\"")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: String,
    origin: String,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
}

/// The approval page (`[web]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// Where it listens (HTTPS).
    pub listen: SocketAddr,
    /// The origin browsers show for it (`https://HOST[:PORT]`), accepted by WebAuthn.
    pub origin: String,
    /// Certificate chain and private key (PEM files) to serve it with; None: the daemon's
    /// own TLS certificate.
    pub certificate: Option<(PathBuf, PathBuf)>,
}

/// `[web]`: the origin must be HTTPS, without a path, on the relying-party id or below it.
fn web_config(raw: &RawWeb, rp_id: &str) -> Result<WebConfig, String> {
    let listen = raw
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("web.listen {:?}: {e}", raw.listen))?;
    let url =
        url::Url::parse(&raw.origin).map_err(|e| format!("web.origin {:?}: {e}", raw.origin))?;
    let host = url.host_str().unwrap_or_default();
    if url.scheme() != "https" || !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(format!(
            "web.origin {:?} must be https://HOST[:PORT], without a path: browsers offer WebAuthn only to secure origins",
            raw.origin
        ));
    }
    if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
        return Err(format!(
            "web.origin {:?}: its host must be fido2.rp_id ({rp_id}) or a name under it, or browsers refuse every key",
            raw.origin
        ));
    }
    let certificate = match (&raw.certificate, &raw.private_key) {
        (None, None) => None,
        (Some(c), Some(k)) if c.is_absolute() && k.is_absolute() => Some((c.clone(), k.clone())),
        (Some(_), Some(_)) => {
            return Err("web.certificate and web.private_key must be absolute paths".to_owned());
        }
        _ => {
            return Err(
                "web.certificate and web.private_key go together (or neither: the daemon's own certificate)"
                    .to_owned(),
            );
        }
    };
    Ok(WebConfig {
        listen,
        origin: url.origin().ascii_serialization(),
        certificate,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections: Option<usize>,
    connections_per_uid: Option<usize>,
    streams: Option<usize>,
    streams_per_connection: Option<u32>,
    handshake_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    max_age_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPiv {
    require_touch: Option<crate::verify::piv::TouchPolicy>,
    require_pin: Option<crate::verify::piv::PinPolicy>,
    intermediates: Option<PathBuf>,
    #[serde(default)]
    dev_roots: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    krl_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFido2 {
    rp_id: Option<String>,
    origin: Option<String>,
    #[serde(default)]
    require_user_verification: bool,
    challenge_ttl_seconds: Option<u64>,
    #[serde(default)]
    attestation_cas: Vec<PathBuf>,
    #[serde(default)]
    allowed_aaguids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_every_records: Option<u64>,
    checkpoint_every_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnix {
    #[serde(default = "default_socket")]
    path: PathBuf,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_groups: Vec<String>,
    #[serde(default)]
    introspect_uids: Vec<u32>,
}

impl Default for RawUnix {
    fn default() -> Self {
        Self {
            path: default_socket(),
            allow_uids: Vec::new(),
            allow_groups: Vec::new(),
            introspect_uids: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: String,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET_PATH)
}

/// The validated runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the store and keys live.
    pub data_dir: PathBuf,
    /// Trust software authenticators (tests, demos, drills). Never on a production bastion.
    pub dev_mode: bool,
    /// Log output format.
    pub log_format: LogFormat,
    /// `tracing` filter directive (e.g. `info`, `latchkey=debug`); `RUST_LOG` overrides it.
    pub log_filter: String,
    /// The local socket.
    pub unix: UnixConfig,
    /// The optional mutual-TLS listener.
    pub tls: Option<TlsConfig>,
    /// The optional remote operator port (TLS without client certificates).
    pub remote: Option<SocketAddr>,
    /// The optional approval page.
    pub web: Option<WebConfig>,
    /// Which backend holds the trust store.
    pub store: StoreConfig,
    /// When audit checkpoints are written.
    pub audit: AuditConfig,
    /// FIDO2 relying party and policy.
    pub fido2: Fido2Config,
    /// Revocation sinks.
    pub revocation: RevocationConfig,
    /// PIV keys.
    pub piv: PivConfig,
    /// The optional Prometheus listener (loopback only).
    pub metrics: Option<SocketAddr>,
    /// How old a scope's last successful drill may be before `doctor` warns.
    pub drill_max_age: Duration,
    /// Connection and stream bounds.
    pub limits: LimitsConfig,
    /// Who is told about requests and grants.
    pub notify: super::notify::NotifyConfig,
}

/// Revocation sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationConfig {
    /// Where the OpenSSH KRL is written (point sshd's `RevokedKeys` here).
    pub krl_path: PathBuf,
}

/// Audit checkpoint schedule: whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// After this many records without a checkpoint.
    pub checkpoint_every_records: u64,
    /// After this long with records not yet covered.
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_records: DEFAULT_CHECKPOINT_EVERY_RECORDS,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

/// The local Unix socket and who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixConfig {
    /// Socket path (ignored under systemd socket activation).
    pub path: PathBuf,
    /// Users allowed besides the daemon's own user.
    pub allow_uids: Vec<u32>,
    /// Groups whose members (primary or supplementary) are allowed.
    pub allow_groups: Vec<String>,
    /// Local users (e.g. a vault plugin on the bastion) that may introspect bearer tokens.
    pub introspect_uids: Vec<u32>,
}

/// Bounds on what callers can hold open (defaults in [`crate::base::constants`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Open connections per listener; more are closed at once.
    pub connections: usize,
    /// Local connections of one calling user; more are closed at once.
    pub connections_per_uid: usize,
    /// Live watch and follow streams in total; more are refused (`rpc.too_many_streams`).
    pub streams: usize,
    /// Concurrent calls on one connection (HTTP/2 max concurrent streams).
    pub streams_per_connection: u32,
    /// A local connection that sends nothing for this long after connecting is closed.
    pub handshake: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use crate::base::constants as c;
        Self {
            connections: c::MAX_CONNECTIONS,
            connections_per_uid: c::MAX_CONNECTIONS_PER_UID,
            streams: c::MAX_LIVE_STREAMS,
            streams_per_connection: c::MAX_STREAMS_PER_CONNECTION,
            handshake: c::LOCAL_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The mutual-TLS TCP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Address to bind (ignored under systemd socket activation).
    pub listen: SocketAddr,
}

impl Config {
    /// Reads and validates `path`.
    /// [`Config::load`] for the daemon that will serve it: also refuses a config file that
    /// group or others may write (they could point the daemon at keys or hooks of theirs).
    pub fn load_for_serving(path: &Path) -> Result<Self, ConfigError> {
        crate::base::fsperm::check_not_writable_by_others(path).map_err(|e| {
            ConfigError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        Self::load(path)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().replace('\n', " "),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if raw.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "version {} is not supported; this latchkeyd reads version {CONFIG_VERSION}",
                raw.version
            )));
        }
        if !raw.data_dir.is_absolute() {
            return Err(invalid(format!(
                "data_dir {} must be an absolute path",
                raw.data_dir.display()
            )));
        }
        check_groups_exist(&raw.unix.allow_groups).map_err(&invalid)?;
        let tls = raw
            .tls
            .as_ref()
            .map(tls_config)
            .transpose()
            .map_err(&invalid)?;
        let remote = raw
            .remote
            .as_ref()
            .map(|r| {
                r.listen
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("remote.listen {:?}: {e}", r.listen))
            })
            .transpose()
            .map_err(&invalid)?;
        let audit = audit_config(&raw.audit).map_err(&invalid)?;
        let mut fido2 = fido2_config(raw.fido2).map_err(&invalid)?;
        let web = raw
            .web
            .as_ref()
            .map(|w| web_config(w, &fido2.rp_id))
            .transpose()
            .map_err(&invalid)?;
        fido2.page_origin = web.as_ref().map(|w| w.origin.clone());
        let revocation = revocation_config(raw.revocation, &raw.data_dir).map_err(&invalid)?;
        let metrics = raw
            .metrics
            .listen
            .as_deref()
            .map(metrics_addr)
            .transpose()
            .map_err(&invalid)?;
        let drill_max_age = max_drill_age(&raw.drill).map_err(&invalid)?;
        if !raw.piv.dev_roots.is_empty() && !raw.dev_mode {
            return Err(invalid(
                "piv.dev_roots trusts software PIV keys and is refused outside dev_mode".to_owned(),
            ));
        }
        let limits = limits_config(&raw.limits).map_err(&invalid)?;
        let notify = super::notify::notify_config(raw.notify).map_err(&invalid)?;
        let store = store_config(raw.store).map_err(&invalid)?;
        Ok(Self {
            limits,
            notify,
            remote,
            web,
            store,
            piv: PivConfig {
                require_touch: raw.piv.require_touch,
                require_pin: raw.piv.require_pin,
                intermediates: raw.piv.intermediates,
                dev_roots: raw.piv.dev_roots,
            },
            revocation,
            metrics,
            drill_max_age,
            fido2,
            audit,
            data_dir: raw.data_dir,
            dev_mode: raw.dev_mode,
            log_format: raw.log.format,
            log_filter: raw.log.filter.unwrap_or_else(|| "info".to_owned()),
            unix: UnixConfig {
                path: raw.unix.path,
                allow_uids: raw.unix.allow_uids,
                allow_groups: raw.unix.allow_groups,
                introspect_uids: raw.unix.introspect_uids,
            },
            tls,
        })
    }

    /// A commented config for a data dir and socket, as `init --write-config` writes it.
    // One template: the commented config, top to bottom, reads best as one piece of text.
    #[allow(clippy::too_many_lines)]
    pub fn example(data_dir: &Path, socket: &Path, dev_mode: bool) -> String {
        format!(
            r#"# latchkeyd configuration. Unknown keys are errors.
version = {CONFIG_VERSION}

# Trust store and the daemon's keys (directory 0700, files 0600).
data_dir = "{data_dir}"

# Dev mode trusts software authenticators: tests, demos and drills only.
dev_mode = {dev_mode}

[log]
# auto: human-readable on a terminal, JSON lines otherwise. Also: human, json.
format = "auto"
filter = "info"

[unix]
# Ignored under systemd socket activation (the .socket unit sets it).
path = "{socket}"
# The daemon's own user is always allowed. Add users and groups that may run `latchkey`.
allow_uids = []
allow_groups = []
# Local users (e.g. a vault plugin on this host) that may introspect bearer tokens.
introspect_uids = []

# Mutual TLS for workloads (vault plugins, automation). Callers are identified by the SHA-256
# of their certificate's SubjectPublicKeyInfo, pinned in the trust store.
# [tls]
# listen = "127.0.0.1:7443"

# The remote operator port: operators' own laptops, TLS with this daemon's certificate (they
# pin its SPKI, `latchkey status` shows it), no client certificate. Every action carries a
# fresh key touch; reads need a five-minute session. docs/remote.md.
# [remote]
# listen = "0.0.0.0:7444"

# The approval page: approvers without the CLI approve, deny and revoke in a browser with their
# security key (each action signs its own digest; no cookies, no session). The origin is what
# the browser shows; its host must be fido2.rp_id or a name under it. Without certificate and
# private_key the daemon's own certificate serves it (operators pin it); any CA's works too.
# docs/web.md.
# [web]
# listen = "0.0.0.0:8443"
# origin = "https://{rp_id}:8443"
# certificate = "/etc/latchkey/web.crt"
# private_key = "/etc/latchkey/web.key"

# The trust store: sled in data_dir (the default), or an etcd cluster several bastions share
# (move a store there with `latchkeyd store copy --from sled --to etcd`). docs/install.md.
# [store]
# backend = "etcd"
# [store.etcd]
# endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
# prefix = "latchkey/"
# ca = "/etc/latchkey/etcd-ca.pem"
# certificate = "/etc/latchkey/etcd-client.pem"
# private_key = "/etc/latchkey/etcd-client.key"

[audit]
# A checkpoint signed by the audit key after this many records, or this many seconds with
# records not yet covered, whichever comes first.
checkpoint_every_records = {records}
checkpoint_every_seconds = {seconds}

[fido2]
# WebAuthn relying party: the name clients see and sign for.
rp_id = "{rp_id}"
origin = "{origin}"
# Require PIN or biometric on every approval.
require_user_verification = false
challenge_ttl_seconds = {ttl}
# Extra FIDO attestation CA certificates (PEM) besides the bundled Yubico root.
attestation_cas = []
# If not empty, only these authenticator models (AAGUIDs) may enroll.
allowed_aaguids = []

[revocation]
# The OpenSSH KRL of revoked break-glass certificates; point sshd's RevokedKeys here.
krl_path = "{krl}"

# Prometheus text metrics (requests, votes, grants, revocations, audit head, drill age) on a
# loopback address; anything else is refused. Off unless set.
# [metrics]
# listen = "127.0.0.1:9847"

[drill]
# `latchkeyd doctor` warns when a scope's last passed drill (`latchkey drill`) is older.
max_age_days = {drill_days}

# PIV keys (YubiKey PIV applet): the least touch and PIN policy an enrolled key must have,
# Yubico's intermediates for firmware >= 5.7.4 (pinned by fingerprint), and software roots
# (dev mode only).
# [piv]
# require_touch = "always"   # always | cached | never
# require_pin = "once"       # always | once | never
# intermediates = "/etc/latchkey/yubico-intermediates.pem"
# dev_roots = []

# What callers can hold open; past a limit a new connection is closed or a stream refused
# (rpc.too_many_streams). Defaults shown.
# [limits]
# connections = 512
# connections_per_uid = 64
# streams = 1024
# streams_per_connection = 64
# handshake_seconds = 10

# Who is told when a request is made, approved, denied, issued, revoked (docs/operations.md).
# A command gets the event JSON on stdin; a webhook gets it POSTed (its URL file is a secret:
# mode 0600). Failed attempts are retried with backoff; every attempt is audited.
# [notify]
# retry_initial_ms = 2000   # doubles up to 5 minutes
# max_attempts = 8
# timeout_secs = 10
# [[notify.sink]]
# name = "dba-pager"
# command = ["/usr/local/bin/page-dba"]
# scopes = ["db-root"]                      # default: every scope
# events = ["request_created"]              # default: every event
# [[notify.sink]]
# name = "chat"
# webhook_url_file = "/etc/latchkey/chat-webhook"
"#,
            drill_days = crate::base::constants::DEFAULT_DRILL_MAX_AGE_DAYS,
            krl = data_dir
                .join(crate::base::constants::DEFAULT_KRL_FILE)
                .display(),
            rp_id = DEFAULT_RP_ID,
            origin = DEFAULT_ORIGIN,
            ttl = DEFAULT_CHALLENGE_TTL.as_secs(),
            records = DEFAULT_CHECKPOINT_EVERY_RECORDS,
            seconds = DEFAULT_CHECKPOINT_INTERVAL.as_secs(),
            data_dir = data_dir.display(),
            socket = socket.display(),
        )
    }
}

/// Refuses a group name in `unix.allow_groups` that does not exist on this host.
fn check_groups_exist(groups: &[String]) -> Result<(), String> {
    for group in groups {
        if nix::unistd::Group::from_name(group)
            .map_err(|e| format!("looking up group {group}: {e}"))?
            .is_none()
        {
            return Err(format!(
                "unix.allow_groups names group {group:?}, which does not exist on this host"
            ));
        }
    }
    Ok(())
}

/// `[tls]`: the listen address parsed.
fn tls_config(raw: &RawTls) -> Result<TlsConfig, String> {
    raw.listen
        .parse()
        .map(|listen| TlsConfig { listen })
        .map_err(|e| format!("tls.listen {:?}: {e}", raw.listen))
}

/// `[audit]`: the checkpoint schedule, defaults filled in, neither bound zero.
fn audit_config(raw: &RawAudit) -> Result<AuditConfig, String> {
    let records = raw
        .checkpoint_every_records
        .unwrap_or(DEFAULT_CHECKPOINT_EVERY_RECORDS);
    let seconds = raw
        .checkpoint_every_seconds
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL.as_secs());
    if records == 0 || seconds == 0 {
        return Err(
            "audit.checkpoint_every_records and audit.checkpoint_every_seconds must be at least 1"
                .to_owned(),
        );
    }
    Ok(AuditConfig {
        checkpoint_every_records: records,
        checkpoint_interval: Duration::from_secs(seconds),
    })
}

/// `[fido2]`: defaults filled in, a bounded challenge lifetime, the AAGUIDs parsed.
fn fido2_config(raw: RawFido2) -> Result<Fido2Config, String> {
    let ttl = raw
        .challenge_ttl_seconds
        .unwrap_or(DEFAULT_CHALLENGE_TTL.as_secs());
    use crate::base::constants::MAX_CHALLENGE_TTL_SECS;
    if ttl == 0 || ttl > MAX_CHALLENGE_TTL_SECS {
        return Err(format!(
            "fido2.challenge_ttl_seconds must be 1 to {MAX_CHALLENGE_TTL_SECS} (a touch takes \
             seconds; a long-lived challenge only holds the challenge budget)"
        ));
    }
    Ok(Fido2Config {
        rp_id: raw.rp_id.unwrap_or_else(|| DEFAULT_RP_ID.to_owned()),
        origin: raw.origin.unwrap_or_else(|| DEFAULT_ORIGIN.to_owned()),
        page_origin: None,
        require_user_verification: raw.require_user_verification,
        challenge_ttl: Duration::from_secs(ttl),
        attestation_cas: raw.attestation_cas,
        allowed_aaguids: raw
            .allowed_aaguids
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| format!("fido2.allowed_aaguids {a:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// `[revocation]`: the KRL path (by default in `data_dir`), which must be absolute.
fn revocation_config(raw: RawRevocation, data_dir: &Path) -> Result<RevocationConfig, String> {
    let krl_path = raw
        .krl_path
        .unwrap_or_else(|| data_dir.join(crate::base::constants::DEFAULT_KRL_FILE));
    if !krl_path.is_absolute() {
        return Err(format!(
            "revocation.krl_path must be absolute, not {}",
            krl_path.display()
        ));
    }
    Ok(RevocationConfig { krl_path })
}

/// `metrics.listen` parsed; only a loopback address is accepted.
fn metrics_addr(listen: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("metrics.listen {listen:?}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "metrics.listen {addr} is not a loopback address: metrics are unauthenticated and stay on this host"
        ));
    }
    Ok(addr)
}

/// `drill.max_age_days` (default in [`crate::base::constants`]) as a duration; at least a day.
fn max_drill_age(raw: &RawDrill) -> Result<Duration, String> {
    let drill_days = raw.max_age_days.unwrap_or(DEFAULT_DRILL_MAX_AGE_DAYS);
    if drill_days == 0 {
        return Err("drill.max_age_days must be at least 1".to_owned());
    }
    Ok(Duration::from_secs(drill_days.saturating_mul(86_400)))
}

/// `[limits]`: defaults filled in, none of them zero.
fn limits_config(raw: &RawLimits) -> Result<LimitsConfig, String> {
    let defaults = LimitsConfig::default();
    let limits = LimitsConfig {
        connections: raw.connections.unwrap_or(defaults.connections),
        connections_per_uid: raw
            .connections_per_uid
            .unwrap_or(defaults.connections_per_uid),
        streams: raw.streams.unwrap_or(defaults.streams),
        streams_per_connection: raw
            .streams_per_connection
            .unwrap_or(defaults.streams_per_connection),
        handshake: raw
            .handshake_seconds
            .map_or(defaults.handshake, Duration::from_secs),
    };
    if limits.connections == 0
        || limits.connections_per_uid == 0
        || limits.streams == 0
        || limits.streams_per_connection == 0
        || limits.handshake.is_zero()
    {
        return Err(
            "every [limits] value must be at least 1 (leave one out for its default)".to_owned(),
        );
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_config_text_never_panics_the_parser() {
        let valid = vec![
            Config::example(
                Path::new("/var/lib/latchkey"),
                Path::new("/run/l.sock"),
                false,
            )
            .into_bytes(),
            b"version = 1\n[limits]\nstreams = 2\n[unix]\nallow_uids = [1000]\n".to_vec(),
        ];
        crate::base::fuzzing::run("config", &valid, |input| {
            if let Ok(text) = std::str::from_utf8(input) {
                let _ = Config::parse(text, Path::new("fuzz.toml"));
            }
        });
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/latchkey/latchkeyd.toml"))
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let config = parse("version = 1\n").unwrap();
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.unix.path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert!(!config.dev_mode);
        assert_eq!(config.tls, None);
    }

    #[test]
    fn unknown_field_is_an_error_naming_field_and_line() {
        let err = parse("version = 1\n\n[unix]\nallow_users = [1]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("allow_users"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn a_newer_config_version_is_refused() {
        let err = parse("version = 2\n").unwrap_err();
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn missing_version_is_refused() {
        assert!(parse("dev_mode = true\n").is_err());
    }

    #[test]
    fn metrics_listen_only_on_loopback() {
        let err = parse("version = 1\n[metrics]\nlisten = \"0.0.0.0:9847\"\n").unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        let ok = parse("version = 1\n[metrics]\nlisten = \"[::1]:9847\"\n").unwrap();
        assert_eq!(ok.metrics, Some("[::1]:9847".parse().unwrap()));
        assert_eq!(parse("version = 1\n").unwrap().metrics, None);
    }

    #[test]
    fn drill_age_defaults_to_thirty_days_and_cannot_be_zero() {
        let config = parse("version = 1\n").unwrap();
        assert_eq!(config.drill_max_age, Duration::from_secs(30 * 86_400));
        assert!(parse("version = 1\n[drill]\nmax_age_days = 0\n").is_err());
    }

    #[test]
    fn the_page_origin_must_be_https_on_the_relying_party_and_joins_the_webauthn_origins() {
        let web = |origin: &str, extra: &str| {
            parse(&format!(
                "version = 1\n[fido2]\nrp_id = \"example.net\"\n[web]\nlisten = \"0.0.0.0:8443\"\norigin = \"{origin}\"\n{extra}"
            ))
        };
        let ok = web("https://latchkey.example.net:8443/", "").unwrap();
        let page = ok.web.unwrap();
        assert_eq!(page.origin, "https://latchkey.example.net:8443");
        assert_eq!(page.certificate, None);
        assert_eq!(
            ok.fido2.page_origin.as_deref(),
            Some("https://latchkey.example.net:8443")
        );
        assert_eq!(ok.fido2.origin, DEFAULT_ORIGIN, "the CLI's origin stays");
        for (origin, extra, why) in [
            ("http://latchkey.example.net", "", "https://HOST"),
            ("https://latchkey.example.net/approve", "", "without a path"),
            ("https://example.org", "", "fido2.rp_id"),
            ("https://notexample.net", "", "fido2.rp_id"),
            (
                "https://example.net",
                "certificate = \"/etc/latchkey/web.crt\"\n",
                "go together",
            ),
            (
                "https://example.net",
                "certificate = \"web.crt\"\nprivate_key = \"web.key\"\n",
                "absolute",
            ),
        ] {
            let err = web(origin, extra).unwrap_err().to_string();
            assert!(err.contains(why), "{origin} {extra}: {err}");
        }
        assert_eq!(parse("version = 1\n").unwrap().fido2.page_origin, None);
    }

    #[test]
    fn bad_tls_address_is_refused() {
        let err = parse("version = 1\n[tls]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("tls.listen"), "{err}");
    }

    #[test]
    fn unknown_group_is_refused() {
        let err = parse("version = 1\n[unix]\nallow_groups = [\"no-such-group-latchkey\"]\n")
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = Config::example(
            Path::new("/var/lib/latchkey"),
            Path::new("/run/latchkey/latchkeyd.sock"),
            false,
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/latchkey"));
    }

    /// The configuration block README.md shows.
    fn readme_config() -> &'static str {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\nversion = ").unwrap() + "```toml\n".len();
        let end = readme[start..].find("```").unwrap();
        &readme[start..start + end]
    }

    #[test]
    fn the_readme_configuration_parses_with_this_parser() {
        // The `latchkey` group exists once the package is installed; this host may lack it.
        let text = readme_config().replace(r#"["latchkey"]"#, r#"["root"]"#);
        let config = Config::parse(&text, Path::new("README.md")).unwrap();
        assert!(config.piv.require_touch.is_some());
        assert!(config.metrics.is_some());
    }

    #[test]
    fn the_example_config_shows_every_section_and_key_the_readme_shows() {
        let example = Config::example(
            Path::new("/var/lib/latchkey"),
            Path::new("/run/latchkey/latchkeyd.sock"),
            false,
        );
        for line in readme_config().lines() {
            let Some(name) = line
                .split('#')
                .next()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.split('=').next().unwrap_or(l).trim())
            else {
                continue;
            };
            assert!(
                example.contains(name),
                "README's config shows {name}, `init --write-config` does not"
            );
        }
    }
}
