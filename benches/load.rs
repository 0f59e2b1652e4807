//! The load tool: starts a real `latchkeyd` on a temp store, drives it over its gRPC API from
//! this separate process, and prints each figure with its median and p99 over several runs and
//! its ratio to a reference measured in the same run.
//!
//! ```sh
//! cargo bench --bench load            # the figures in BENCHMARKS.md (a few minutes)
//! cargo bench --bench load -- --smoke # seconds; `cargo test --all-targets` (CI) runs this too
//! cargo bench --bench load -- approvals   # one figure: introspection, approvals, cycles, lateness, restart
//! cargo bench --bench load -- restart --restart-grants=1000000   # figure 5 at its full size
//! ```
//!
//! Reference for introspection: the daemon's own `grpc.health.v1.Health/Check`, a bare tonic
//! unary service on the same listener, transport and TLS session setup.

// A benchmark harness: a failure is a panic with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::audit::{Actor, AuditLog, CheckpointPolicy, Event};
use latchkey::base::clock::{Clock as _, SystemClock, Timestamp};
use latchkey::domain::grant::{ExpiryEntry, Grant, GrantState, expiry_key, token_hash};
use latchkey::pb;
use latchkey::store::{Keyspace, SledStore, Store, Txn};
use tonic::transport::Channel;

const DAEMON: &str = env!("CARGO_BIN_EXE_latchkeyd");

/// Callers per measurement (operators in the approval figure).
static CONCURRENCY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

fn profile_concurrency() -> usize {
    CONCURRENCY.load(std::sync::atomic::Ordering::Relaxed)
}

struct Profile {
    sizes: Vec<usize>,
    duration: Duration,
    runs: usize,
    concurrency: usize,
    restart_grants: usize,
}

struct Daemon {
    child: Child,
    /// The daemon's store and socket, deleted when the daemon is dropped (after it is killed).
    _dir: tempfile::TempDir,
    socket: PathBuf,
    tls: std::net::SocketAddr,
    ready_after: Duration,
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
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

impl Daemon {
    fn rss_mib(&self) -> f64 {
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
fn prepare(live: usize, expired: usize) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
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

fn token(i: usize) -> String {
    format!("lkbg_bench-token-{i:08}")
}

/// Writes grants (with their `grant.issued` records, in batches) as a restored store holds them.
fn seed(data: &Path, live: usize, expired: usize) {
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
fn seed_with(data: &Path, n: usize, expiry: impl Fn(usize) -> Timestamp) {
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
fn daemon_log() -> Option<PathBuf> {
    std::env::var_os("LATCHKEY_BENCH_DAEMON_LOG").map(Into::into)
}

/// Starts the daemon and waits for READY on a notify socket; times spawn → READY.
fn start(dir: tempfile::TempDir) -> Daemon {
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

struct Figures {
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `concurrency` callers for `duration`, `runs` times; medians of throughput and p99.
async fn measure<F, Fut>(profile: &Profile, make: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut throughputs = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..profile.runs {
        let deadline = Instant::now() + profile.duration;
        let mut tasks = Vec::new();
        for worker in 0..profile.concurrency {
            let make = make.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                // Call `k` of worker `w` is `w * 1_000_000 + k`: a worker can own a key.
                let mut i = worker * 1_000_000;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    make(i).await;
                    latencies.push(t0.elapsed());
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        throughputs.push(all.len() as f64 / profile.duration.as_secs_f64());
        p50s.push(all[all.len() / 2].as_secs_f64() * 1e6);
        p99s.push(all[all.len() * 99 / 100].as_secs_f64() * 1e6);
    }
    Figures {
        throughput: median(throughputs),
        p50_us: median(p50s),
        p99_us: median(p99s),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One introspection call, which must find the token active.
async fn introspect_live(channel: Channel, token: String) {
    let answer = pb::access_service_client::AccessServiceClient::new(channel)
        .introspect(pb::IntrospectRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
}

async fn introspection(profile: &Profile, live: usize) {
    let (dir, data, cert, key) = prepare(live, 0);
    let daemon = start(dir);
    let server_cert = latchkey::client::read_certificate(&data.join("tls-cert.pem")).unwrap();
    for transport in ["unix", "tls"] {
        let channel: Channel = match transport {
            "unix" => latchkey::client::connect_unix(&daemon.socket)
                .await
                .unwrap(),
            _ => latchkey::client::connect_tls(
                daemon.tls,
                server_cert.clone(),
                latchkey::client::ClientIdentity::from_pem_files(&cert, &key).unwrap(),
            )
            .await
            .unwrap(),
        };
        let echo_channel = channel.clone();
        let echo_call = move |_| {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(echo_channel.clone());
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap();
            }
        };
        let intro_channel = channel.clone();
        let intro_call = move |i| introspect_live(intro_channel.clone(), token(i % live));
        let echo = measure(profile, echo_call.clone()).await;
        let intro = measure(profile, intro_call.clone()).await;
        let row = |callers: String, intro: &Figures, echo: &Figures| {
            println!(
                "| introspection | {transport}, {callers} | {live} | {:.0}/s | {:.0} µs | {:.0} µs | echo {:.0}/s, p99 {:.0} µs | {:.2} |",
                intro.throughput,
                intro.p50_us,
                intro.p99_us,
                echo.throughput,
                echo.p99_us,
                intro.throughput / echo.throughput
            );
        };
        row(format!("{} callers", profile.concurrency), &intro, &echo);

        // Saturation is reached well before 32 callers: past the knee, more callers only
        // queue. Find the fewest callers whose introspection rate is within 10% of the best
        // (one short run each), and measure echo and introspection there.
        let mut rates = vec![(profile.concurrency, intro.throughput)];
        let mut callers = 1;
        while callers < profile.concurrency {
            let probe = Profile {
                runs: 1,
                duration: (profile.duration / 2).max(Duration::from_millis(200)),
                concurrency: callers,
                sizes: Vec::new(),
                ..*profile
            };
            rates.push((
                callers,
                measure(&probe, intro_call.clone()).await.throughput,
            ));
            callers *= 2;
        }
        let best = rates.iter().map(|r| r.1).fold(0.0, f64::max);
        let knee = rates
            .iter()
            .filter(|r| r.1 >= 0.9 * best)
            .map(|r| r.0)
            .min()
            .unwrap_or(profile.concurrency);
        let at_knee = Profile {
            concurrency: knee,
            sizes: Vec::new(),
            ..*profile
        };
        let echo = measure(&at_knee, echo_call).await;
        let intro = measure(&at_knee, intro_call).await;
        rates.sort_by_key(|r| r.0);
        let sweep = rates
            .iter()
            .map(|(c, t)| format!("{c}: {t:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ");
        row(format!("{knee} callers (saturation)"), &intro, &echo);
        println!(
            "  saturation sweep, {transport}, {live} grants (introspections/s by callers): {sweep}"
        );
    }
    drop(daemon);
}

/// Figure 6: the daemon's resident memory with `live` live grants, at READY and after serving
/// introspections of every token for one run's duration; `runs` daemons on fresh stores.
async fn memory(profile: &Profile, live: usize) {
    let (mut at_ready, mut serving) = (Vec::new(), Vec::new());
    for _ in 0..profile.runs {
        let (dir, _, _, _) = prepare(live, 0);
        let daemon = start(dir);
        at_ready.push(daemon.rss_mib());
        let channel = latchkey::client::connect_unix(&daemon.socket)
            .await
            .unwrap();
        let one_run = Profile {
            runs: 1,
            sizes: Vec::new(),
            ..*profile
        };
        measure(&one_run, move |i| {
            introspect_live(channel.clone(), token(i % live))
        })
        .await;
        serving.push(daemon.rss_mib());
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| resident memory at READY | - | {live} | {:.1} MiB | runs {} MiB | | target 150 MB | {:.2} |",
        median(at_ready.clone()),
        runs(&at_ready),
        150e6 / 1048576.0 / median(at_ready.clone())
    );
    println!(
        "| resident memory after serving introspections | - | {live} | {:.1} MiB | runs {} MiB | | target 150 MB | {:.2} |",
        median(serving.clone()),
        runs(&serving),
        150e6 / 1048576.0 / median(serving.clone())
    );
}

/// A soft FIDO2 key held in memory, for the approval figure.
struct MemKey(webauthn_authenticator_rs::softtoken::SoftToken);

impl latchkey::client::authenticator::Authenticator for MemKey {
    fn register(
        &mut self,
        origin: &webauthn_rs::prelude::Url,
        options: webauthn_rs::prelude::CreationChallengeResponse,
    ) -> Result<
        webauthn_rs::prelude::RegisterPublicKeyCredential,
        latchkey::client::authenticator::KeyError,
    > {
        use webauthn_authenticator_rs::WebauthnAuthenticator as _;
        self.0
            .do_registration(origin.clone(), options)
            .map_err(|e| latchkey::client::authenticator::KeyError::Device(format!("{e:?}")))
    }

    fn assert(
        &mut self,
        origin: &webauthn_rs::prelude::Url,
        options: webauthn_rs::prelude::RequestChallengeResponse,
    ) -> Result<webauthn_rs::prelude::PublicKeyCredential, latchkey::client::authenticator::KeyError>
    {
        use webauthn_authenticator_rs::WebauthnAuthenticator as _;
        self.0
            .do_authentication(origin.clone(), options)
            .map_err(|e| latchkey::client::authenticator::KeyError::Device(format!("{e:?}")))
    }
}

/// Turns on dev mode (soft FIDO2 keys accepted) in the config `prepare` wrote.
fn dev_mode(dir: &Path) {
    let config = dir.join("latchkeyd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("version = 1\n", "version = 1\ndev_mode = true\n", 1),
    )
    .unwrap();
}

/// Approvals end to end (begin, soft-key signature, verify and durable audit record) against
/// raw P-256 verifications of the same crate in this process.
async fn approvals(profile: &Profile) {
    let (dir, _, _, _) = prepare(0, 0);
    dev_mode(dir.path());
    let daemon = start(dir);
    let mut keys = Vec::new();
    for i in 0..profile.concurrency {
        let channel = latchkey::client::connect_unix(&daemon.socket)
            .await
            .unwrap();
        let mut key = MemKey(
            webauthn_authenticator_rs::softtoken::SoftToken::new(true)
                .unwrap()
                .0,
        );
        latchkey::client::enroll(
            channel,
            &format!("op{i}"),
            vec!["dba".into()],
            &mut key,
            None,
            "",
        )
        .await
        .unwrap();
        keys.push(Arc::new(std::sync::Mutex::new(key)));
    }
    let socket = daemon.socket.clone();
    let approvals = measure(profile, move |i| {
        // Each worker signs with its own key: one key never signs two ceremonies at once.
        let key = keys[(i / 1_000_000) % keys.len()].clone();
        let socket = socket.clone();
        async move {
            use latchkey::client::authenticator::Authenticator as _;
            let channel = latchkey::client::connect_unix(&socket).await.unwrap();
            let mut client = pb::operator_service_client::OperatorServiceClient::new(channel);
            let digest = vec![7u8; 32];
            let begun = client
                .begin_assertion(pb::BeginAssertionRequest {
                    operator: format!("op{}", (i / 1_000_000) % profile_concurrency()),
                    digest: digest.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let credential_json = key
                .lock()
                .unwrap()
                .respond(None, &begun.request_options_json, &begun.piv_challenge)
                .unwrap();
            client
                .finish_assertion(pb::FinishAssertionRequest {
                    ceremony_id: begun.ceremony_id,
                    digest,
                    credential_json,
                })
                .await
                .unwrap();
        }
    })
    .await;
    drop(daemon);
    // The daemon is gone: the in-process figures below have both cores to themselves.
    let mut raw = Vec::new();
    let mut step = Vec::new();
    for _ in 0..profile.runs {
        raw.push(raw_p256_verifications(profile.duration));
        step.push(assertion_verifications(profile.duration));
    }
    let (raw, step) = (median(raw), median(step));
    println!(
        "| approvals end to end (durable) | unix | - | {:.0}/s | {:.0} µs | {:.0} µs | raw P-256 verify {:.0}/s | {:.3} |",
        approvals.throughput,
        approvals.p50_us,
        approvals.p99_us,
        raw,
        approvals.throughput / raw
    );
    println!(
        "| approval verification step alone (Fido2::finish_assertion, 2 threads) | - | - | {step:.0}/s | | | raw P-256 verify {raw:.0}/s | {:.3} |",
        step / raw
    );
}

fn ms_of(t: Option<&prost_types::Timestamp>) -> i64 {
    let t = t.unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Soft-key approvers `op0`… with role `dba`, enrolled during genesis: two per worker, so
/// one key never signs two ceremonies at once.
async fn enroll_approvers(local: &Channel, count: usize) -> Vec<Arc<std::sync::Mutex<MemKey>>> {
    let local = local.clone();
    let mut keys = Vec::new();
    for i in 0..count {
        let mut k = MemKey(
            webauthn_authenticator_rs::softtoken::SoftToken::new(true)
                .unwrap()
                .0,
        );
        latchkey::client::enroll(
            local.clone(),
            &format!("op{i}"),
            vec!["dba".into()],
            &mut k,
            None,
            "",
        )
        .await
        .unwrap();
        keys.push(Arc::new(std::sync::Mutex::new(k)));
    }
    keys
}

/// The scope `cycle` (bearer + SSH, two `dba` approvals) and the workload `bench` that asks.
async fn put_cycle_scope(local: &Channel, cert: &Path) {
    use pb::propose_change_request::Change as C;
    let mut trust = pb::trust_service_client::TrustServiceClient::new(local.clone());
    let secs = |s| prost_types::Duration {
        seconds: s,
        nanos: 0,
    };
    for change in [
        C::PutScope(pb::Scope {
            name: "cycle".into(),
            owner: "bench".into(),
            runbook: "load tool".into(),
            bearer: true,
            ssh: Some(pb::SshSpec {
                principals: vec!["bench".into()],
                permit_port_forwarding: false,
            }),
            default_ttl: Some(secs(300)),
            max_ttl: Some(secs(3600)),
            policy: Some(pb::ApprovalPolicy {
                quorum: 2,
                approver_role: "dba".into(),
                pending_timeout: Some(secs(600)),
                denials_to_reject: 1,
                ..Default::default()
            }),
            requester_workloads: vec!["bench".into()],
            ..Default::default()
        }),
        C::PutWorkload(pb::PutWorkload {
            name: "bench".into(),
            owner: "bench".into(),
            certificate_pem: std::fs::read_to_string(cert).unwrap(),
            scopes: vec!["cycle".into()],
            introspect: true,
        }),
    ] {
        trust
            .propose_change(pb::ProposeChangeRequest {
                note: "bench".into(),
                change: Some(change),
            })
            .await
            .unwrap();
    }
}

fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

/// Both approvers vote on `target`, as the CLI's `access::vote` does minus showing the text.
async fn approve(
    local: Channel,
    target: &pb::VoteTarget,
    approvers: &[(String, Arc<std::sync::Mutex<MemKey>>)],
) {
    let mut voting = pb::access_service_client::AccessServiceClient::new(local.clone());
    for (name, key) in approvers {
        // What the CLI's `access::vote` does, minus showing the text to a person.
        let begun = voting
            .begin_vote(pb::BeginVoteRequest {
                target: Some(target.clone()),
                operator: name.clone(),
                decision: pb::Decision::Approve.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let credential_json = {
            use latchkey::client::authenticator::Authenticator as _;
            key.lock()
                .unwrap()
                .respond(None, &begun.request_options_json, &begun.piv_challenge)
                .unwrap()
        };
        voting
            .cast_vote(pb::CastVoteRequest {
                target: Some(target.clone()),
                decision: pb::Decision::Approve.into(),
                ceremony_id: begun.ceremony_id,
                credential_json,
            })
            .await
            .unwrap();
    }
}

type Waiters = std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>;

/// One cycle: request over mTLS, approvals, collection, relinquish, revoked with every sink
/// confirmed; records the KRL delay.
async fn one_cycle(
    (tls, local): (Channel, Channel),
    approvers: [(String, Arc<std::sync::Mutex<MemKey>>); 2],
    ssh_public: String,
    delays: Arc<std::sync::Mutex<Vec<i64>>>,
    waiters: Arc<std::sync::Mutex<Waiters>>,
) {
    use latchkey::client::access;
    let mut access_tls = pb::access_service_client::AccessServiceClient::new(tls.clone());
    // The workload's own delivery key: the token comes back sealed to it.
    let delivery_key = latchkey::credential::delivery::DeliveryKey::generate();
    let created = access_tls
        .create_request(pb::CreateRequestRequest {
            draft: Some(pb::RequestDraft {
                scope: "cycle".into(),
                reason: "load tool: one full break-glass cycle".into(),
                ttl: Some(secs(300)),
                ticket: String::new(),
                ssh_public_key: ssh_public,
                delivery_public_key: delivery_key.public_key().to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let target = pb::VoteTarget {
        target: Some(pb::vote_target::Target::RequestId(created.id.clone())),
    };
    approve(local.clone(), &target, &approvers).await;
    let (_, credential) = access::wait(tls.clone(), &created.id, Some(&delivery_key), |_| {})
        .await
        .unwrap();
    let credential = credential.unwrap();
    assert!(!credential.bearer_token.is_empty() && !credential.ssh_certificate.is_empty());
    let (revoked_tx, revoked) = tokio::sync::oneshot::channel();
    waiters
        .lock()
        .unwrap()
        .insert(credential.grant_id.clone(), revoked_tx);
    access_tls
        .relinquish(pb::RelinquishRequest {
            grant_id: credential.grant_id.clone(),
        })
        .await
        .unwrap();
    // The daemon's `grant.revoked` record: every sink confirmed.
    revoked.await.unwrap();
    let g = access_tls
        .show_grant(pb::ShowGrantRequest {
            id: credential.grant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(g.state(), pb::GrantState::Revoked);
    let started = ms_of(g.revocation_started_at.as_ref());
    let krl = g.sinks.iter().find(|s| s.sink == "krl").unwrap();
    delays
        .lock()
        .unwrap()
        .push(ms_of(krl.confirmed_at.as_ref()) - started);
}

/// Full break-glass cycles, durable: a workload requests (bearer + SSH), two operators approve
/// with soft keys, the workload collects the credential, relinquishes it, and the cycle ends
/// when the daemon reports the grant revoked with every sink confirmed. Also the KRL publication
/// delay of these early revocations (revocation start → KRL sink confirmed, daemon timestamps).
async fn cycles(profile: &Profile) {
    let (dir, data, cert, key) = prepare(0, 0);
    dev_mode(dir.path());
    let daemon = start(dir);
    let local = latchkey::client::connect_unix(&daemon.socket)
        .await
        .unwrap();
    let keys = enroll_approvers(&local, profile.concurrency * 2).await;
    put_cycle_scope(&local, &cert).await;
    let server_cert = latchkey::client::read_certificate(&data.join("tls-cert.pem")).unwrap();
    let tls = latchkey::client::connect_tls(
        daemon.tls,
        server_cert,
        latchkey::client::ClientIdentity::from_pem_files(&cert, &key).unwrap(),
    )
    .await
    .unwrap();
    let seed = [5u8; 32];
    let ssh_public = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed))
        .public_key()
        .to_openssh()
        .unwrap();
    let krl_delays = Arc::new(std::sync::Mutex::new(Vec::new()));
    let delays = krl_delays.clone();
    // One follower of the audit log tells each worker when its grant is revoked (no polling).
    let waiters: Arc<std::sync::Mutex<Waiters>> = Arc::default();
    let mut follow = pb::audit_service_client::AuditServiceClient::new(local.clone())
        .follow_records(pb::FollowRecordsRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let dispatch = waiters.clone();
    let follower = tokio::spawn(async move {
        while let Ok(Some(item)) = follow.message().await {
            let record = item.record.unwrap();
            if record.event == "grant.revoked"
                && let Some(id) = record.subject.strip_prefix("grant/")
                && let Some(tx) = dispatch.lock().unwrap().remove(id)
            {
                let _ = tx.send(());
            }
        }
    });
    let cpu_before = (
        cpu_seconds(daemon.child.id()),
        cpu_seconds(std::process::id()),
    );
    let figures = measure(profile, move |i| {
        let worker = i / 1_000_000;
        let approvers = [
            (format!("op{}", worker * 2), keys[worker * 2].clone()),
            (
                format!("op{}", worker * 2 + 1),
                keys[worker * 2 + 1].clone(),
            ),
        ];
        let tls = tls.clone();
        let local = local.clone();
        let ssh_public = ssh_public.clone();
        let delays = delays.clone();
        let waiters = waiters.clone();
        one_cycle((tls, local), approvers, ssh_public, delays, waiters)
    })
    .await;
    println!(
        "| full cycles (request, 2 approvals, bearer+ssh, revoked confirmed; durable) | tls+unix | - | {:.1}/s | {:.0} µs | {:.0} µs | target 500/s | {:.3} |",
        figures.throughput,
        figures.p50_us,
        figures.p99_us,
        figures.throughput / 500.0
    );
    let (daemon_cpu, tool_cpu) = (
        cpu_seconds(daemon.child.id()) - cpu_before.0,
        cpu_seconds(std::process::id()) - cpu_before.1,
    );
    follower.abort();
    let mut d = krl_delays.lock().unwrap().clone();
    d.sort_unstable();
    // Every cycle started ends (and records its KRL delay) before its run returns.
    println!(
        "| daemon CPU per cycle (user + system, over every run) | - | {} cycles | {:.2} ms | | | load tool {:.2} ms per cycle | |",
        d.len(),
        daemon_cpu * 1000.0 / d.len() as f64,
        tool_cpu * 1000.0 / d.len() as f64
    );
    println!(
        "| KRL publication delay (early revocation → KRL confirmed) | - | {} revocations | p50 {} ms | | p99 {} ms | max {} ms | |",
        d.len(),
        d[d.len() / 2],
        d[d.len() * 99 / 100],
        d[d.len() - 1]
    );
    drop(daemon);
}

/// The verification step alone: `Fido2::finish_assertion` (parse the client's JSON, check the
/// client data and authenticator data against the ceremony, verify the P-256 signature) on
/// two threads, in this process, the way the daemon calls it — no store, no RPC. Returns
/// verifications per second.
fn assertion_verifications(duration: Duration) -> f64 {
    use webauthn_authenticator_rs::WebauthnAuthenticator as _;
    use webauthn_rs::prelude::Url;
    let origin = Url::parse(latchkey::base::constants::DEFAULT_ORIGIN).unwrap();
    let rp = Arc::new(
        latchkey::verify::fido2::Fido2::new(
            latchkey::base::constants::DEFAULT_RP_ID,
            latchkey::base::constants::DEFAULT_ORIGIN,
            &[],
            &[],
            true,
        )
        .unwrap(),
    );
    let mut token = webauthn_authenticator_rs::softtoken::SoftToken::new(true)
        .unwrap()
        .0;
    let (options, state) = rp
        .start_registration(uuid::Uuid::new_v4(), "bench", vec![])
        .unwrap();
    let registration = token.do_registration(origin.clone(), options).unwrap();
    let key = rp
        .finish_registration(&serde_json::to_string(&registration).unwrap(), &state)
        .unwrap()
        .key;
    // Distinct ceremonies (each its own challenge and signature), verified round robin.
    let ceremonies: Arc<Vec<_>> = Arc::new(
        (0..64u8)
            .map(|i| {
                let (options, state) = rp
                    .start_assertion(std::slice::from_ref(&key), [i; 32], false)
                    .unwrap();
                let response = token.do_authentication(origin.clone(), options).unwrap();
                (serde_json::to_string(&response).unwrap(), state)
            })
            .collect(),
    );
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let rp = rp.clone();
            let ceremonies = ceremonies.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + duration;
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let (json, state) = &ceremonies[n % ceremonies.len()];
                    rp.finish_assertion(json, state, false).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / duration.as_secs_f64()
}

fn raw_p256_verifications(duration: Duration) -> f64 {
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    let key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let message = [3u8; 64];
    let signature: p256::ecdsa::Signature = key.sign(&message);
    let verifying = *key.verifying_key();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + duration;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    verifying.verify(&message, &signature).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / duration.as_secs_f64()
}

/// Revocation lateness: `n` live grants expiring evenly over `window`, starting `lead` after
/// seeding; the delay from each grant's expiry to the `grants.expired` record listing it (internal sink).
async fn lateness(n: usize, lead: Duration, window: Duration, runs: usize) {
    let mut figures = Vec::new();
    for _ in 0..runs {
        figures.push(lateness_once(n, lead, window).await);
    }
    let column = |k: usize| median(figures.iter().map(|f: &[f64; 3]| f[k]).collect());
    let p99s: Vec<String> = figures.iter().map(|f| format!("{}", f[1])).collect();
    println!(
        "| revocation lateness (expiry → revoked) | - | {n} over {}s | p50 {} ms | p99 {} ms (runs {} ms) | max {} ms | target p99 50 ms | {:.2} |",
        window.as_secs(),
        column(0),
        column(1),
        p99s.join(", "),
        column(2),
        50.0 / column(1).max(1.0)
    );
}

/// One lateness run: p50, p99 and max in ms.
async fn lateness_once(n: usize, lead: Duration, window: Duration) -> [f64; 3] {
    let (dir, data, _, _) = prepare(0, 0);
    let base = SystemClock.now().plus(lead);
    // Grant i expires i/n of the way through the window (several per millisecond when n is
    // larger than the window in ms: no integer step that rounds to zero).
    let window_ms = window.as_millis() as i64;
    let expiry_of = move |i: usize| base.unix_millis() + window_ms * i as i64 / n as i64;
    seed_with(&data, n, |i| Timestamp::from_unix_millis(expiry_of(i)));
    let daemon = start(dir);
    assert!(
        SystemClock.now() < base,
        "seeding took longer than the lead: raise it"
    );
    // Waiting for the expiries is the figure, not a readiness wait.
    let end = base.plus(window).plus(Duration::from_secs(2));
    let left = end.unix_millis() - SystemClock.now().unix_millis();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
    let channel = latchkey::client::connect_unix(&daemon.socket)
        .await
        .unwrap();
    let mut audit = pb::audit_service_client::AuditServiceClient::new(channel);
    let mut late = Vec::new();
    let mut from = 1;
    loop {
        let page = audit
            .read_records(pb::ReadRecordsRequest {
                from_seq: from,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let Some(last) = page.records.last() else {
            break;
        };
        from = last.seq + 1;
        // Expiries with nothing outside latchkey to confirm are audited a batch per record.
        for r in page.records.iter().filter(|r| r.event == "grants.expired") {
            let t = r.time.unwrap();
            let at = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
            let record: serde_json::Value = serde_json::from_str(&r.json).unwrap();
            for grant in record["details"]["grants"].as_array().unwrap() {
                let i: usize = grant["grant"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("bench-")
                    .parse()
                    .unwrap();
                late.push(at - expiry_of(i));
            }
        }
    }
    assert_eq!(late.len(), n, "every grant revoked");
    late.sort_unstable();
    [late[n / 2], late[n * 99 / 100], late[n - 1]].map(|ms| ms as f64)
}

/// Figure 5: spawn → READY with half the grants expired while the daemon was down, `runs`
/// times on fresh stores; median, worst, and the ratio of the target (5 s) to the median.
/// Then, from READY, until the scheduler has rewritten every expired grant (the last
/// `grants.expired` record listing one) — work done while serving, not before.
async fn restart(grants: usize, runs: usize) {
    let expired = grants / 2;
    let mut times = Vec::new();
    let (mut memory, mut memory_after) = (Vec::new(), Vec::new());
    let mut rewrites = Vec::new();
    for _ in 0..runs {
        let (dir, _, _, _) = prepare(grants - expired, expired);
        let daemon = start(dir);
        let ready = Instant::now();
        times.push(daemon.ready_after.as_secs_f64());
        memory.push(daemon.rss_mib());
        let channel = latchkey::client::connect_unix(&daemon.socket)
            .await
            .unwrap();
        // The seeded store holds more than `grants` records (one `grant.issued` per grant
        // after init's): the records from there on include everything since the restart,
        // without streaming the million before.
        let mut stream = pb::audit_service_client::AuditServiceClient::new(channel)
            .follow_records(pb::FollowRecordsRequest {
                from_seq: grants as u64,
            })
            .await
            .unwrap()
            .into_inner();
        let (mut listed, mut at_start) = (0, 0);
        while listed < expired {
            let record = stream.message().await.unwrap().unwrap().record.unwrap();
            let json: serde_json::Value = serde_json::from_str(&record.json).unwrap();
            match record.event.as_str() {
                "grants.expired_while_down" => {
                    at_start += json["details"]["grants"].as_u64().unwrap() as usize;
                }
                "grants.expired" => {
                    listed += json["details"]["grants"].as_array().unwrap().len();
                }
                _ => {}
            }
        }
        assert_eq!(listed, expired, "each expired grant rewritten once");
        assert_eq!(at_start, expired, "all revoked by the record before READY");
        rewrites.push(ready.elapsed().as_secs_f64());
        memory_after.push(daemon.rss_mib());
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    let ready = median(times);
    println!(
        "| restart: spawn → READY, {expired} expired revoked first | - | {grants} | {ready:.2} s | runs {} s | max {worst:.2} s | target 5 s | {:.2} |",
        each.join(", "),
        5.0 / ready
    );
    let each: Vec<String> = rewrites.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "| restart: READY → every expired grant rewritten (while serving) | - | {grants} | {:.2} s | runs {} s | | | |",
        median(rewrites.clone()),
        each.join(", ")
    );
    for (when, values) in [("at READY", memory), ("after the rewrites", memory_after)] {
        println!(
            "| resident memory after restart, {when} | - | {grants} | {:.1} MiB | | max {:.1} MiB | | |",
            median(values.clone()),
            values.iter().copied().fold(0.0, f64::max)
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (the test suite, CI) runs this
    // without it: then it is the smoke run, so the tool cannot rot.
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let profile = if smoke {
        Profile {
            sizes: vec![1_000],
            duration: Duration::from_millis(500),
            runs: 1,
            concurrency: 8,
            restart_grants: 2_000,
        }
    } else {
        Profile {
            sizes: vec![1_000, 100_000],
            duration: Duration::from_secs(5),
            runs: 3,
            concurrency: 32,
            restart_grants: 200_000,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| figure | transport | grants | value (median) | p50 | p99 | reference (same run) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Optional figure names after the flags run only those: introspection, memory, approvals,
    // cycles, lateness, restart.
    let only: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    if wanted("introspection") {
        for &live in &profile.sizes {
            runtime.block_on(introspection(&profile, live));
        }
    }
    if wanted("memory") {
        for &live in &profile.sizes {
            runtime.block_on(memory(&profile, live));
        }
    }
    CONCURRENCY.store(profile.concurrency, std::sync::atomic::Ordering::Relaxed);
    if wanted("approvals") {
        runtime.block_on(approvals(&profile));
    }
    if wanted("cycles") {
        runtime.block_on(cycles(&profile));
    }
    if wanted("lateness") {
        let (n, lead, window) = if smoke {
            (500, Duration::from_secs(3), Duration::from_secs(1))
        } else {
            (100_000, Duration::from_secs(120), Duration::from_secs(20))
        };
        runtime.block_on(lateness(n, lead, window, profile.runs));
    }
    if !wanted("restart") {
        return;
    }
    // `--restart-grants=N` overrides the profile's size (the issue's figure is 1,000,000).
    let grants = args
        .iter()
        .find_map(|a| a.strip_prefix("--restart-grants="))
        .map(|n| n.parse().expect("--restart-grants=N takes a number"))
        .unwrap_or(profile.restart_grants);
    runtime.block_on(restart(grants, profile.runs));
}
