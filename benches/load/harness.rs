//! The load tool's harness: a data dir seeded through the store, a real latchkeyd in its own
//! process, its CPU time.

use super::*;

pub(crate) const DAEMON: &str = env!("CARGO_BIN_EXE_latchkeyd");

pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// The daemon's store and socket, deleted when the daemon is dropped (after it is killed).
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) tls: std::net::SocketAddr,
    pub(crate) ready_after: Duration,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, every thread, living or exited) of process `pid` so far, in
/// seconds. `/proc/PID/stat` counts in USER_HZ, which Linux fixes at 100 on every architecture
/// the project builds for.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

impl Daemon {
    pub(crate) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

/// `latchkeyd init`, a config with a Unix socket and a TLS listener, a pinned workload that may
/// introspect, and `live` + `expired` grants written straight into the store.
pub(crate) fn prepare(
    live: usize,
    expired: usize,
) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(DAEMON)
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("bench.crt");
    let key_path = dir.path().join("bench.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let out = Command::new(DAEMON)
        .args([
            "admit-workload",
            "--name",
            "bench",
            "--owner",
            "bench",
            "--introspect",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--cert")
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    seed(&data, live, expired);
    let socket = dir.path().join("latchkeyd.sock");
    let uid = nix::unistd::geteuid().as_raw();
    std::fs::write(
        dir.path().join("latchkeyd.toml"),
        format!(
            "version = 1\ndata_dir = \"{}\"\n[log]\nformat = \"json\"\nfilter = \"{filter}\"\n[unix]\npath = \"{}\"\nintrospect_uids = [{uid}]\n[tls]\nlisten = \"127.0.0.1:0\"\n",
            data.display(),
            socket.display(),
            filter = if daemon_log().is_some() {
                "info,latchkey::audit=warn"
            } else {
                "warn"
            },
        ),
    )
    .unwrap();
    (dir, data, cert_path, key_path)
}

pub(crate) fn token(i: usize) -> String {
    format!("lkbg_bench-token-{i:08}")
}

/// Writes grants (with their `grant.issued` records, in batches) as a restored store holds them.
pub(crate) fn seed(data: &Path, live: usize, expired: usize) {
    let now = SystemClock.now();
    seed_with(data, live + expired, |i| {
        if i < live {
            now.plus(Duration::from_secs(24 * 3600))
        } else {
            Timestamp::from_unix_millis(now.unix_millis() - 60_000)
        }
    });
}

/// Writes `n` grants, grant `i` expiring at `expiry(i)`.
pub(crate) fn seed_with(data: &Path, n: usize, expiry: impl Fn(usize) -> Timestamp) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let keys = latchkey::credential::keys::DaemonKeys::load(data).unwrap();
    let audit = AuditLog::open(
        store.clone(),
        Arc::new(SystemClock),
        latchkey::audit::signing_key(&keys.audit).unwrap(),
        CheckpointPolicy {
            every_records: u64::MAX,
        },
    )
    .unwrap();
    let now = SystemClock.now();
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(1000) {
        let mut txn = Txn::new();
        let mut events = Vec::new();
        for &i in chunk {
            let id = format!("bench-{i:08}");
            let expires_at = expiry(i);
            let hash = hex::encode(token_hash(&token(i)));
            let grant = Grant {
                id: id.clone(),
                request_id: format!("bench-request-{i}"),
                scope: "bench".into(),
                requester: latchkey::domain::request::Requester::Workload {
                    name: "bench".into(),
                },
                issued_at: now,
                expires_at,
                bearer_sha256: Some(hash.clone()),
                ssh: None,
                state: GrantState::Active,
                revocation: None,
                sealed_bearer: None,
            };
            txn.put(id.as_bytes(), &grant)
                .unwrap()
                .put_raw(
                    Keyspace::GrantExpiry,
                    expiry_key(expires_at, &id),
                    ExpiryEntry::of(&grant).encode(),
                )
                .put_raw(Keyspace::GrantTokens, hash.as_bytes(), id.as_bytes());
            events.push(Event {
                event: "grant.issued",
                actor: Actor::Daemon,
                subject: format!("grant/{id}"),
                details: serde_json::json!({ "scope": "bench" }),
                evidence: None,
            });
        }
        audit.commit_events(txn, events).unwrap();
    }
    store.flush().unwrap();
}

/// `LATCHKEY_BENCH_DAEMON_LOG=FILE`: the daemons log at `info` (audit records excepted) to FILE (JSON lines; e.g. the
/// restart's phases with their elapsed times) instead of `warn` to nowhere.
pub(crate) fn daemon_log() -> Option<PathBuf> {
    std::env::var_os("LATCHKEY_BENCH_DAEMON_LOG").map(Into::into)
}

/// Starts the daemon and waits for READY on a notify socket; times spawn → READY.
pub(crate) fn start(dir: tempfile::TempDir) -> Daemon {
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let started = Instant::now();
    let child = Command::new(DAEMON)
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("latchkeyd.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(match daemon_log() {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    // Blocks until the daemon says READY (it sends nothing else first).
    let n = notify.recv(&mut buf).unwrap();
    let ready_after = started.elapsed();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.contains("READY=1"), "{text}");
    let tls = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls:"))
        .unwrap()
        .parse()
        .unwrap();
    let socket = dir.path().join("latchkeyd.sock");
    Daemon {
        child,
        _dir: dir,
        socket,
        tls,
        ready_after,
    }
}

/// Turns on dev mode (soft FIDO2 keys accepted) in the config `prepare` wrote.
pub(crate) fn dev_mode(dir: &Path) {
    let config = dir.join("latchkeyd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("version = 1\n", "version = 1\ndev_mode = true\n", 1),
    )
    .unwrap();
}
