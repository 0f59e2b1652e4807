//! Full break-glass cycles and approval verification: soft-key approvers, the cycle scope, one
//! durable cycle end to end.

use super::*;

/// A soft FIDO2 key held in memory, for the approval figure.
pub(crate) struct MemKey(webauthn_authenticator_rs::softtoken::SoftToken);

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

/// Approvals end to end (begin, soft-key signature, verify and durable audit record) against
/// raw P-256 verifications of the same crate in this process.
pub(crate) async fn approvals(profile: &Profile) {
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

pub(crate) fn ms_of(t: Option<&prost_types::Timestamp>) -> i64 {
    let t = t.unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Soft-key approvers `op0`… with role `dba`, enrolled during genesis: two per worker, so
/// one key never signs two ceremonies at once.
pub(crate) async fn enroll_approvers(
    local: &Channel,
    count: usize,
) -> Vec<Arc<std::sync::Mutex<MemKey>>> {
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
pub(crate) async fn put_cycle_scope(local: &Channel, cert: &Path) {
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
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub(crate) fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

/// Both approvers vote on `target`, as the CLI's `access::vote` does minus showing the text.
pub(crate) async fn approve(
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

pub(crate) type Waiters = std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>;

/// One cycle: request over mTLS, approvals, collection, relinquish, revoked with every sink
/// confirmed; records the KRL delay.
pub(crate) async fn one_cycle(
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
pub(crate) async fn cycles(profile: &Profile) {
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
pub(crate) fn assertion_verifications(duration: Duration) -> f64 {
    use webauthn_authenticator_rs::WebauthnAuthenticator as _;
    use webauthn_rs::prelude::Url;
    let origin = Url::parse(latchkey::base::constants::DEFAULT_ORIGIN).unwrap();
    let rp = Arc::new(
        latchkey::verify::fido2::Fido2::new(
            latchkey::base::constants::DEFAULT_RP_ID,
            &[latchkey::base::constants::DEFAULT_ORIGIN],
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
        .start_registration(uuid::Uuid::new_v4(), "bench", vec![], false)
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

pub(crate) fn raw_p256_verifications(duration: Duration) -> f64 {
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
