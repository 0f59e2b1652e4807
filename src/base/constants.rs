//! Every default and fixed limit in one place.

use std::time::Duration;

/// Trust-store schema this build reads and writes. Version 2 added the index of keys by
/// operator (`operator_keys`); a version-1 store is upgraded when the daemon opens it.
pub const STORE_SCHEMA_VERSION: u32 = 2;

/// Config file format this build understands (`version = 1`).
pub const CONFIG_VERSION: u32 = 1;

/// Default config file of a system install.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/latchkey/latchkeyd.toml";
/// Default state directory of a system install.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/latchkey";
/// Default local socket of a system install.
pub const DEFAULT_SOCKET_PATH: &str = "/run/latchkey/latchkeyd.sock";
/// Environment variable the CLI reads for the socket path.
pub const SOCKET_ENV: &str = "LATCHKEY_SOCKET";

/// Mode of the local socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of the data directory and of every directory inside it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the daemon writes into its data directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Name of the sled store inside the data directory.
pub const STORE_DIR: &str = "store";
/// The rollback anchor in the data dir: the newest durable audit record (see `audit::anchor`).
pub const ANCHOR_FILE: &str = "audit.anchor";
/// Upper bound of sled's page cache (its default is 1 GiB, which a large store fills).
pub const STORE_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// Ed25519 audit-signing key (OpenSSH private key format).
pub const AUDIT_KEY_FILE: &str = "audit-key";
/// Ed25519 SSH user CA (OpenSSH private key format).
pub const SSH_CA_KEY_FILE: &str = "ssh-user-ca";
/// TLS server private key (PKCS#8 PEM).
pub const TLS_KEY_FILE: &str = "tls-key.pem";
/// Self-signed TLS server certificate (PEM).
pub const TLS_CERT_FILE: &str = "tls-cert.pem";

/// Default trust-store quorum set at `init`: two approvals...
pub const DEFAULT_TRUST_STORE_QUORUM: u32 = 2;
/// ...from operators holding this role.
pub const DEFAULT_ADMIN_ROLE: &str = "admin";

/// Validity of the self-signed TLS server certificate.
pub const TLS_CERT_VALIDITY_DAYS: u32 = 3650;
/// A TLS handshake that takes longer than this is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[limits] connections`: open connections per listener.
pub const MAX_CONNECTIONS: usize = 512;
/// Default `[limits] connections_per_uid`: local connections of one calling user.
pub const MAX_CONNECTIONS_PER_UID: usize = 64;
/// Default `[limits] streams`: live watch and follow streams, all listeners together.
pub const MAX_LIVE_STREAMS: usize = 1024;
/// Default `[limits] streams_per_connection`: concurrent calls on one HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Default `[limits] handshake_seconds`: a local connection must start speaking within this.
pub const LOCAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive: a ping after this much silence…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// …and the connection is closed if the ping is not answered within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After SIGTERM, in-flight calls get this long to finish before the daemon exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Longest workload name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Default: write an audit checkpoint after this many records without one...
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 64;
/// ...or after this long with uncovered records.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Most records one `ReadRecords` call returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Default WebAuthn relying-party id (set `[fido2] rp_id` to your bastion's name).
pub const DEFAULT_RP_ID: &str = "latchkey.local";
/// Default WebAuthn origin matching [`DEFAULT_RP_ID`].
pub const DEFAULT_ORIGIN: &str = "https://latchkey.local";
/// How long an enrollment or assertion challenge stays valid.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// The longest challenge lifetime a config may set (a touch takes seconds).
pub const MAX_CHALLENGE_TTL_SECS: u64 = 600;
/// Challenges kept at once (pending or used, until swept): beyond it Begin calls are refused.
/// A bastion's responders open a handful; a flood stops here instead of growing the store.
pub const MAX_KEPT_CHALLENGES: u64 = 4096;
/// Begin calls (each opens a challenge) one remote address may make at once, and per minute
/// after that; and all remote addresses together.
pub const REMOTE_BEGIN_BURST_PER_SOURCE: u32 = 10;
/// See [`REMOTE_BEGIN_BURST_PER_SOURCE`].
pub const REMOTE_BEGIN_PER_MINUTE_PER_SOURCE: u32 = 10;
/// See [`REMOTE_BEGIN_BURST_PER_SOURCE`].
pub const REMOTE_BEGIN_BURST_TOTAL: u32 = 200;
/// See [`REMOTE_BEGIN_BURST_PER_SOURCE`].
pub const REMOTE_BEGIN_PER_MINUTE_TOTAL: u32 = 600;
/// How often expired challenges are swept.
pub const CHALLENGE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Most approvals any policy may demand.
pub const MAX_QUORUM: u32 = 32;
/// Longest a request or change may wait for quorum.
pub const MAX_PENDING_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a proposed trust-store change waits for quorum.
pub const CHANGE_PENDING_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest grant any scope may allow.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest grant any scope may allow.
pub const MIN_GRANT_TTL: Duration = Duration::from_secs(60);
/// A request's reason: at least this many characters...
pub const MIN_REASON_LEN: usize = 10;
/// ...and at most this many bytes.
pub const MAX_REASON_LEN: usize = 1000;
/// Longest ticket reference.
pub const MAX_TICKET_LEN: usize = 128;
/// Longest runbook text, scope owner or change note.
pub const MAX_TEXT_LEN: usize = 4000;
/// A proofing note for a new key after genesis: at least this many characters.
pub const MIN_PROOFING_NOTE_LEN: usize = 20;
/// Most principals in one SSH scope.
pub const MAX_PRINCIPALS: usize = 32;
/// SSH certificates are valid from this long before issue, for clock skew between hosts.
pub const SSH_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Prefix of every bearer token, so scanners and people recognise one.
pub const BEARER_TOKEN_PREFIX: &str = "lkbg_";
/// Name of the built-in scope that trust-store changes are approved against.
pub const TRUST_STORE_SCOPE: &str = "trust-store";
/// Most requests or changes one list call returns.
pub const MAX_LIST: usize = 1000;
/// A revocation hook is killed after this long unless the scope says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Sinks not confirmed this long after a revocation started make it "unconfirmed".
pub const DEFAULT_REVOCATION_DEADLINE: Duration = Duration::from_secs(300);
/// First retry of a failed sink...
pub const SINK_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// ...doubling up to this.
pub const SINK_RETRY_MAX: Duration = Duration::from_secs(300);
/// Grants revoked per transaction when many expire at once.
pub const REVOCATION_BATCH: usize = 512;
/// Batches of expired grants applied before one flush makes them durable.
pub const REVOCATION_BATCHES_PER_FLUSH: usize = 8;
/// Batches of expired grants one scheduler round revokes before it drives the other
/// revocations' sinks (the next round follows at once while more are due).
pub const REVOCATION_ROUND_BATCHES: usize = 4 * REVOCATION_BATCHES_PER_FLUSH;
/// Expiry-queue entries read per page by the start-up revocation's scan.
pub const REVOCATION_SCAN_PAGE: usize = 4096;
/// The revocation scheduler looks at the clock at least this often.
pub const SCHEDULER_MAX_SLEEP: Duration = Duration::from_millis(500);
/// Default KRL file name in the data directory.
pub const DEFAULT_KRL_FILE: &str = "revoked-keys.krl";
/// `doctor` warns when a scope's last successful drill is older than this many days.
pub const DEFAULT_DRILL_MAX_AGE_DAYS: u64 = 30;
/// Longest detail text of one drill step.
pub const MAX_DRILL_DETAIL_LEN: usize = 500;
/// Most steps one drill may report.
pub const MAX_DRILL_STEPS: usize = 16;

/// How often a latchkeyd on a shared store (etcd) takes in what the other nodes wrote: audit
/// records (live tails, watches) and grants (introspection).
pub const SHARED_STORE_FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a node on a shared store may go without hearing from it before it refuses to
/// introspect (another node may have revoked a grant meanwhile).
pub const SHARED_STORE_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The lease of the node that does the singleton work on a shared store (expiry, revocation
/// sinks, checkpoints by time): renewed every third of it; another node takes over once it
/// lapses.
pub const LEADER_LEASE: std::time::Duration = std::time::Duration::from_secs(6);
