//! Issue 3 acceptance: exports verify; tampering is named; forged approvals are caught; the
//! log survives kill -9 with every change matched by its record.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use latchkey::audit::verify::{self, ENROLLED_EVENT, Tampered};
use latchkey::audit::{Actor, AuditLog, AuditRecord, CheckpointPolicy, Event, Evidence};
use latchkey::base::clock::{ManualClock, Timestamp};
use latchkey::pb;
use latchkey::store::{Keyspace, SledStore, Store, Txn};
use p256::ecdsa::signature::Signer as _;
use sha2::{Digest as _, Sha256};

use crate::support::{ClientCert, Daemon, DaemonDir, latchkey_cli};

async fn admit(daemon: &Daemon, dir: &DaemonDir, name: &str) -> Result<(), tonic::Status> {
    let cert = ClientCert::generate(dir.dir.path(), name);
    let pem = std::fs::read_to_string(&cert.cert).unwrap();
    pb::workload_service_client::WorkloadServiceClient::new(daemon.unix_channel().await)
        .admit_workload(pb::AdmitWorkloadRequest {
            name: name.to_owned(),
            owner: "platform-team".to_owned(),
            certificate_pem: pem,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn audit_public_key(daemon: &Daemon) -> String {
    pb::system_service_client::SystemServiceClient::new(daemon.unix_channel().await)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .audit_public_key
}

fn cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .args(args)
        .output()
        .unwrap()
}

fn verify_cli(file: &Path, key: &str) -> std::process::Output {
    latchkey_cli()
        .args(["audit", "verify"])
        .arg(file)
        .args(["--audit-key", key])
        .output()
        .unwrap()
}

fn key_of(openssh: &str) -> ed25519_dalek::VerifyingKey {
    latchkey::client::audit_key(openssh).unwrap()
}

fn verify_text(text: &str, key: &ed25519_dalek::VerifyingKey) -> Result<verify::Report, Tampered> {
    verify::verify(std::io::Cursor::new(text.as_bytes()), key)
}

/// A daemon after a few state changes, with an export taken through the CLI.
async fn exported_log() -> (DaemonDir, Daemon, String, String) {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    for name in ["vault-plugin", "bastion-script", "agent-7"] {
        admit(&daemon, &dir, name).await.unwrap();
    }
    let file = dir.dir.path().join("audit.jsonl");
    let out = cli(
        &daemon,
        &["audit", "export", "--output", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = audit_public_key(&daemon).await;
    let text = std::fs::read_to_string(&file).unwrap();
    (dir, daemon, text, key)
}

#[tokio::test]
async fn an_export_after_state_changes_verifies_offline() {
    let (dir, daemon, text, key) = exported_log().await;
    drop(daemon); // offline: no daemon needed
    let events: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().event)
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("store.initialised")
    );
    assert_eq!(
        events.iter().filter(|e| *e == "workload.admitted").count(),
        3
    );
    assert_eq!(events.last().map(String::as_str), Some("audit.checkpoint"));

    let out = verify_cli(&dir.dir.path().join("audit.jsonl"), &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("verified {} records", events.len())),
        "{stdout}"
    );

    // The key can also come from a file.
    let key_file = dir.dir.path().join("audit.pub");
    std::fs::write(&key_file, &key).unwrap();
    assert!(
        verify_cli(
            &dir.dir.path().join("audit.jsonl"),
            key_file.to_str().unwrap()
        )
        .status
        .success()
    );
}

#[tokio::test]
async fn flipping_any_byte_of_a_record_is_named_by_its_sequence_number() {
    let (_dir, _daemon, text, key) = exported_log().await;
    let key = key_of(&key);
    let lines: Vec<&str> = text.lines().collect();
    let mut flips = 0;
    for (i, line) in lines.iter().enumerate() {
        let seq = i as u64 + 1;
        for pos in (0..line.len()).step_by(3) {
            let mut bytes = line.as_bytes().to_vec();
            bytes[pos] ^= 0x01;
            let flipped = String::from_utf8_lossy(&bytes).into_owned();
            let mut tampered = lines.clone();
            tampered[i] = &flipped;
            let err = verify_text(&(tampered.join("\n") + "\n"), &key).expect_err(&format!(
                "flip at byte {pos} of record {seq} went unnoticed"
            ));
            assert_eq!(err.seq, seq, "flip at byte {pos} of record {seq}: {err}");
            flips += 1;
        }
    }
    assert!(flips > 100, "only {flips} flips tried");
}

#[tokio::test]
async fn verify_asks_the_daemon_for_the_key_when_none_is_given_and_speaks_json() {
    let (dir, daemon, _, _) = exported_log().await;
    let file = dir.dir.path().join("audit.jsonl");
    let out = cli(
        &daemon,
        &["--json", "audit", "verify", file.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["records"].as_u64().unwrap() >= 4, "{report}");
    // Tampered, in JSON: verified false, exit 1.
    let text = std::fs::read_to_string(&file).unwrap();
    let bad = dir.dir.path().join("bad.jsonl");
    std::fs::write(&bad, text.replacen("vault-plugin", "vault-plugjn", 1)).unwrap();
    let out = cli(
        &daemon,
        &["--json", "audit", "verify", bad.to_str().unwrap()],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report["verified"], false, "{report}");
}

#[tokio::test]
async fn a_deleted_record_is_reported_as_a_gap() {
    let (dir, _daemon, text, key) = exported_log().await;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2); // record 3
    let file = dir.dir.path().join("deleted.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = verify_cli(&file, &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TAMPERED: record 3"), "{stdout}");
    assert!(stdout.contains("gap: records 3..3 are missing"), "{stdout}");
}

#[tokio::test]
async fn reordered_records_are_refused() {
    let (_dir, _daemon, text, key) = exported_log().await;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(2, 3);
    let err = verify_text(&(lines.join("\n") + "\n"), &key_of(&key)).unwrap_err();
    assert_eq!(err.seq, 3, "{err}");
}

#[tokio::test]
async fn a_truncated_tail_after_the_last_checkpoint_is_an_unverified_tail_not_tampering() {
    let (dir, daemon, _text, key) = exported_log().await;
    // More changes after the export's checkpoint, then an export whose end is cut off.
    admit(&daemon, &dir, "late-1").await.unwrap();
    admit(&daemon, &dir, "late-2").await.unwrap();
    let file = dir.dir.path().join("second.jsonl");
    assert!(
        cli(&daemon, &["audit", "export", "-o", file.to_str().unwrap()])
            .status
            .success()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Drop the final checkpoint and the last change: what is left ends past the last checkpoint.
    let kept = &lines[..lines.len() - 2];
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();

    let out = verify_cli(&file, &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("unverified tail"), "{stdout}");
    assert!(!stdout.contains("TAMPERED"), "{stdout}");
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused() {
    let (_dir, _daemon, text, _key) = exported_log().await;
    let other = ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key();
    let err = verify_text(&text, &other).unwrap_err();
    assert!(err.reason.contains("checkpoint signature"), "{err}");
}

/// Builds a log with an enrolled P-256 key and an approval signed by it, the way a FIDO2
/// authenticator signs: over authenticatorData || SHA-256(clientDataJSON).
struct EvidenceLog {
    _dir: tempfile::TempDir,
    log: AuditLog,
    operator_key: p256::ecdsa::SigningKey,
    audit_key: ed25519_dalek::VerifyingKey,
}

impl EvidenceLog {
    fn new() -> Self {
        use p256::pkcs8::EncodePublicKey as _;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::create(&dir.path().join("s")).unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
            1_763_856_000_000,
        )));
        let signer = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let audit_key = signer.verifying_key();
        let log = AuditLog::open(
            store,
            clock,
            signer,
            CheckpointPolicy {
                every_records: 1000,
            },
        )
        .unwrap();
        let operator_key = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let spki = operator_key.verifying_key().to_public_key_der().unwrap();
        log.commit(
            Txn::new(),
            Event {
                event: ENROLLED_EVENT,
                actor: Actor::Local { uid: 0 },
                subject: "operator/alice".into(),
                details: serde_json::json!({
                    "operator": "alice",
                    "credential_id": "cred-alice",
                    "algorithm": "es256",
                    "public_key": B64.encode(spki.as_bytes()),
                }),
                evidence: None,
            },
        )
        .unwrap();
        let this = Self {
            _dir: dir,
            log,
            operator_key,
            audit_key,
        };
        this.create_request("r1");
        this
    }

    /// A workload's `request.created` record for `request/ID`; returns its digest.
    fn create_request(&self, id: &str) -> [u8; 32] {
        let digest: [u8; 32] = Sha256::digest(format!("request {id}")).into();
        self.log
            .commit(
                Txn::new(),
                Event {
                    event: "request.created",
                    actor: Actor::Workload {
                        name: "vault-db".into(),
                    },
                    subject: format!("request/{id}"),
                    details: serde_json::json!({
                        "reason": "primary down",
                        "digest": hex::encode(digest),
                        "request_digest": hex::encode(digest),
                    }),
                    evidence: None,
                },
            )
            .unwrap();
        digest
    }

    /// alice's approval of `request/r1`, bound as the daemon binds it: the vote digest over
    /// the request's digest, and the challenge derived from it and a nonce.
    fn approve(&self, signing_key: &p256::ecdsa::SigningKey) {
        let request_digest: [u8; 32] = Sha256::digest("request r1").into();
        let digest = latchkey::domain::request::vote_digest(
            "request/r1",
            latchkey::domain::policy::Decision::Approve,
            &request_digest,
        );
        let nonce = [5u8; 32];
        self.log
            .commit(
                Txn::new(),
                Event {
                    event: "request.approved",
                    actor: Actor::Operator {
                        name: "alice".into(),
                    },
                    subject: "request/r1".into(),
                    details: serde_json::json!({
                        "digest": hex::encode(digest),
                        "nonce": hex::encode(nonce),
                        "credential_id": "cred-alice",
                        "request_digest": hex::encode(request_digest),
                    }),
                    evidence: Some(webauthn_evidence(signing_key, &digest, &nonce)),
                },
            )
            .unwrap();
    }

    /// alice's own request `request/ID` for `scope`, signed as the CLI signs a draft.
    fn request_by_alice(&self, id: &str, scope: &str) {
        let draft = latchkey::domain::request::Draft {
            scope: scope.into(),
            reason: "primary down, failing over".into(),
            ttl_secs: Some(600),
            ticket: "INC-1".into(),
            ssh_public_key: String::new(),
            delivery_public_key: vec![9; 32],
        };
        let digest = draft.digest("alice");
        let mut nonce = [0u8; 32];
        nonce[..id.len()].copy_from_slice(id.as_bytes());
        self.log
            .commit(
                Txn::new(),
                Event {
                    event: "request.created",
                    actor: Actor::Operator {
                        name: "alice".into(),
                    },
                    subject: format!("request/{id}"),
                    details: serde_json::json!({
                        "digest": hex::encode(digest),
                        "nonce": hex::encode(nonce),
                        "credential_id": "cred-alice",
                        "scope": scope,
                        "reason": draft.reason,
                        "ticket": draft.ticket,
                        "request_digest": hex::encode(Sha256::digest(id)),
                        "draft_ttl_secs": draft.ttl_secs,
                        "ssh_public_key": draft.ssh_public_key,
                        "delivery_public_key": hex::encode(&draft.delivery_public_key),
                    }),
                    evidence: Some(webauthn_evidence(&self.operator_key, &digest, &nonce)),
                },
            )
            .unwrap();
    }

    fn export(&self) -> Vec<AuditRecord> {
        self.log.read(1, 1000).unwrap()
    }
}

/// A WebAuthn assertion by `signing_key` over the challenge bound to `digest` and `nonce`.
fn webauthn_evidence(
    signing_key: &p256::ecdsa::SigningKey,
    digest: &[u8; 32],
    nonce: &[u8; 32],
) -> Evidence {
    let challenge = latchkey::verify::fido2::bound_challenge(digest, nonce).to_vec();
    let client_data = serde_json::json!({
        "type": "webauthn.get",
        "challenge": B64URL.encode(&challenge),
        "origin": "https://latchkey.invalid",
    })
    .to_string();
    let mut auth_data = Sha256::digest(b"latchkey.invalid").to_vec();
    auth_data.push(0x05); // user present + user verified
    auth_data.extend_from_slice(&7u32.to_be_bytes());
    let mut message = auth_data.clone();
    message.extend_from_slice(&Sha256::digest(client_data.as_bytes()));
    let signature: p256::ecdsa::Signature = signing_key.sign(&message);
    Evidence::Webauthn {
        credential_id: "cred-alice".into(),
        challenge: B64.encode(&challenge),
        authenticator_data: B64.encode(&auth_data),
        client_data_json: B64.encode(client_data.as_bytes()),
        signature: B64.encode(signature.to_der().as_bytes()),
    }
}

fn to_text(records: &[AuditRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

#[test]
fn an_approval_signed_by_the_enrolled_key_is_re_verified_offline() {
    let log = EvidenceLog::new();
    log.approve(&log.operator_key);
    log.log.checkpoint().unwrap();
    let report = verify_text(&to_text(&log.export()), &log.audit_key).unwrap();
    assert_eq!(report.evidence_verified, 1);
    assert_eq!(report.unverified_tail, None);
}

#[test]
fn evidence_copied_into_another_requests_approval_is_refused_with_that_records_sequence() {
    let log = EvidenceLog::new();
    log.create_request("r2");
    log.approve(&log.operator_key);
    let mut records = log.export();
    // The attacker copies alice's approval of r1 into an approval of r2, recomputes the
    // chain, and ends the export before any checkpoint.
    let mut forged = records.last().unwrap().clone();
    forged.seq += 1;
    forged.subject = "request/r2".into();
    forged.prev_hash = records.last().unwrap().hash.clone();
    forged.hash = forged.compute_hash();
    records.push(forged.clone());
    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert_eq!(err.seq, forged.seq);
    assert!(err.reason.contains("not bound to this record"), "{err}");

    // Also its `request_digest` and `digest` rewritten to r2's: the challenge gives it away.
    let r2: [u8; 32] = Sha256::digest("request r2").into();
    let vote = latchkey::domain::request::vote_digest(
        "request/r2",
        latchkey::domain::policy::Decision::Approve,
        &r2,
    );
    let mut forged = records[records.len() - 2].clone();
    forged.seq += 1;
    forged.subject = "request/r2".into();
    forged.details["digest"] = hex::encode(vote).into();
    forged.details["request_digest"] = hex::encode(r2).into();
    forged.prev_hash = records[records.len() - 2].hash.clone();
    forged.hash = forged.compute_hash();
    records.pop();
    records.push(forged.clone());
    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert_eq!(err.seq, forged.seq);
    assert!(err.reason.contains("challenge"), "{err}");

    // And as another operator: the key was enrolled for alice.
    let mut forged = records[records.len() - 2].clone();
    forged.seq += 1;
    forged.actor = Actor::Operator {
        name: "mallory".into(),
    };
    forged.prev_hash = records[records.len() - 2].hash.clone();
    forged.hash = forged.compute_hash();
    records.pop();
    records.push(forged.clone());
    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert!(err.reason.contains("enrolled for alice"), "{err}");
}

#[test]
fn a_requests_signed_draft_cannot_back_another_request_and_a_nonce_backs_one_record() {
    let log = EvidenceLog::new();
    log.request_by_alice("r7", "db-root");
    let records = log.export();
    assert_eq!(
        verify_text(&to_text(&records), &log.audit_key)
            .unwrap()
            .evidence_verified,
        1
    );
    let append = |records: &[AuditRecord], mut forged: AuditRecord| {
        let mut out = records.to_vec();
        let last = out.last().unwrap();
        forged.seq = last.seq + 1;
        forged.prev_hash = last.hash.clone();
        forged.hash = forged.compute_hash();
        out.push(forged);
        out
    };
    // alice's signed draft for db-root, copied into a request for another scope.
    let mut other = records.last().unwrap().clone();
    other.subject = "request/r8".into();
    other.details["scope"] = "prod-root".into();
    let forged = append(&records, other);
    let err = verify_text(&to_text(&forged), &log.audit_key).unwrap_err();
    assert_eq!(err.seq, forged.last().unwrap().seq);
    assert!(err.reason.contains("draft"), "{err}");
    // The same evidence again, for the same draft under a new request id.
    let mut again = records.last().unwrap().clone();
    again.subject = "request/r8".into();
    let forged = append(&records, again);
    let err = verify_text(&to_text(&forged), &log.audit_key).unwrap_err();
    assert!(err.reason.contains("nonce already backs"), "{err}");
}

#[test]
fn a_forged_approval_with_a_recomputed_chain_is_caught() {
    let log = EvidenceLog::new();
    log.log.checkpoint().unwrap();
    log.approve(&log.operator_key);
    let mut records = log.export();
    let approval = records.len() - 1;

    // The attacker re-signs the approval with their own key and recomputes the chain after the
    // last checkpoint, so every hash and link is valid again.
    let attacker = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let Some(Evidence::Webauthn {
        authenticator_data,
        client_data_json,
        signature,
        ..
    }) = &mut records[approval].evidence
    else {
        panic!("no evidence");
    };
    let mut message = B64.decode(&*authenticator_data).unwrap();
    message.extend_from_slice(&Sha256::digest(B64.decode(&*client_data_json).unwrap()));
    let forged: p256::ecdsa::Signature = attacker.sign(&message);
    *signature = B64.encode(forged.to_der().as_bytes());
    records[approval].hash = records[approval].compute_hash();

    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert_eq!(err.seq, records[approval].seq, "{err}");
    assert!(
        err.reason.contains("forged or invalid approval evidence"),
        "{err}"
    );
    assert!(err.reason.contains("not made by the enrolled key"), "{err}");
}

#[test]
fn an_approval_by_a_key_never_enrolled_is_caught() {
    let log = EvidenceLog::new();
    log.approve(&log.operator_key);
    let mut records = log.export();
    let last = records.len() - 1;
    if let Some(Evidence::Webauthn { credential_id, .. }) = &mut records[last].evidence {
        *credential_id = "cred-mallory".into();
    }
    records[last].hash = records[last].compute_hash();
    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert!(
        err.reason.contains("not enrolled earlier in this log"),
        "{err}"
    );
}

#[test]
fn rewriting_history_under_a_checkpoint_breaks_its_signature() {
    let log = EvidenceLog::new();
    log.approve(&log.operator_key);
    log.log.checkpoint().unwrap();
    let mut records = log.export();
    // Change the request's reason and recompute every hash and link after it.
    records[1].details["reason"] = "nothing happened".into();
    for i in 1..records.len() {
        if i > 1 {
            records[i].prev_hash = records[i - 1].hash.clone();
        }
        let prev = records[i - 1].hash.clone();
        if let Some(cp) = &mut records[i].checkpoint {
            cp.head_hash = prev;
        }
        records[i].hash = records[i].compute_hash();
    }
    let err = verify_text(&to_text(&records), &log.audit_key).unwrap_err();
    assert!(
        err.reason.contains("checkpoint signature does not verify"),
        "{err}"
    );
}

type AuditClient = pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>;

/// An audit client, the current head, and a stream of every record written after it.
async fn follow_new_records(
    daemon: &Daemon,
) -> (
    AuditClient,
    u64,
    tonic::Streaming<pb::FollowRecordsResponse>,
) {
    let mut audit = AuditClient::new(daemon.unix_channel().await);
    let head = audit
        .read_records(pb::ReadRecordsRequest {
            from_seq: 1,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .head_seq;
    let follow = audit
        .follow_records(pb::FollowRecordsRequest { from_seq: head + 1 })
        .await
        .unwrap()
        .into_inner();
    (audit, head, follow)
}

#[tokio::test]
async fn records_can_be_read_by_range_followed_live_and_checkpoints_listed() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let (mut audit, head, mut follow) = follow_new_records(&daemon).await;
    admit(&daemon, &dir, "followed").await.unwrap();
    let live = follow.message().await.unwrap().unwrap().record.unwrap();
    assert_eq!(live.seq, head + 1);
    assert_eq!(live.event, "workload.admitted");
    assert_eq!(live.subject, "workload/followed");
    let parsed: AuditRecord = serde_json::from_str(&live.json).unwrap();
    assert_eq!(parsed.hash, live.hash);

    let page = audit
        .read_records(pb::ReadRecordsRequest {
            from_seq: 2,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].seq, 2);

    let checkpoints = audit
        .list_checkpoints(pb::ListCheckpointsRequest {
            from_seq: 1,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert!(!checkpoints.is_empty());
    assert!(
        checkpoints
            .iter()
            .all(|c| c.checkpoint && c.event == "audit.checkpoint")
    );

    // A follower does not hold up shutdown; its stream ends.
    assert!(daemon.terminate().success());
    assert!(follow.message().await.map(|m| m.is_none()).unwrap_or(true));
}

#[tokio::test]
async fn every_record_is_also_a_structured_log_event() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    admit(&daemon, &dir, "logged").await.unwrap();
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("\"audit_event\":\"workload.admitted\""))
        .unwrap_or_else(|| panic!("no audit event in the daemon log:\n{log}"));
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(event["audit_subject"], "workload/logged");
    assert!(event["audit_seq"].as_u64().unwrap() > 1);
}

#[tokio::test]
async fn a_workload_cannot_read_the_audit_log() {
    let dir = DaemonDir::init();
    let cert = ClientCert::generate(dir.dir.path(), "w");
    cert.admit(&dir.data, "w");
    let daemon = dir.start();
    let channel = crate::support::tls_channel(&daemon, &dir.data, &cert).await;
    let err = pb::audit_service_client::AuditServiceClient::new(channel)
        .read_records(pb::ReadRecordsRequest {
            from_seq: 1,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
}

#[tokio::test]
async fn kill_9_during_a_burst_leaves_every_change_with_its_record() {
    let dir = DaemonDir::init();
    let mut daemon = dir.start();
    let socket = daemon.socket_path();

    // Four writers admit workloads as fast as they can; kill -9 once 40 have been acknowledged.
    let acknowledged = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Arc::new(std::sync::Mutex::new(Some(enough_tx)));
    let mut writers = Vec::new();
    for w in 0..4 {
        let socket = socket.clone();
        let acknowledged = acknowledged.clone();
        let enough_tx = enough_tx.clone();
        let cert_dir = dir.dir.path().to_path_buf();
        writers.push(tokio::spawn(async move {
            let Ok(channel) = latchkey::client::connect_unix(&socket).await else {
                return;
            };
            let mut client = pb::workload_service_client::WorkloadServiceClient::new(channel);
            for i in 0..1000 {
                let name = format!("burst-{w}-{i}");
                let cert = ClientCert::generate(&cert_dir, &name);
                let request = pb::AdmitWorkloadRequest {
                    name: name.clone(),
                    owner: "load".into(),
                    certificate_pem: std::fs::read_to_string(&cert.cert).unwrap(),
                    ..Default::default()
                };
                if client.admit_workload(request).await.is_err() {
                    return; // the daemon is gone
                }
                let mut acked = acknowledged.lock().unwrap();
                acked.insert(name);
                if acked.len() >= 40
                    && let Some(tx) = enough_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
            }
        }));
    }
    enough_rx.await.unwrap();
    daemon.kill9();
    for w in writers {
        w.await.unwrap();
    }
    drop(daemon);

    // Restart: the chain verifies, and the store and the log agree exactly.
    let restarted = dir.start();
    let file = dir.dir.path().join("after-crash.jsonl");
    let out = cli(
        &restarted,
        &["audit", "export", "-o", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = audit_public_key(&restarted).await;
    let verified = verify_cli(&file, &key);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(restarted.terminate().success());

    let recorded: BTreeSet<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
        .filter(|r| r.event == "workload.admitted")
        .map(|r| r.subject.trim_start_matches("workload/").to_owned())
        .collect();
    let store = SledStore::open(&dir.data.join("store")).unwrap();
    let stored: BTreeSet<String> = store
        .scan_from(Keyspace::Workloads, b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(
        stored, recorded,
        "store and audit log disagree after kill -9"
    );
    let acked = acknowledged.lock().unwrap().clone();
    assert!(acked.is_subset(&stored), "an acknowledged change was lost");
}

#[tokio::test]
async fn a_checkpoint_is_written_after_the_configured_interval_without_more_records() {
    let dir = DaemonDir::init();
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\n[log]\nformat = \"json\"\n[unix]\npath = \"{}\"\n[audit]\ncheckpoint_every_records = 1000\ncheckpoint_every_seconds = 1\n",
        dir.data.display(),
        dir.socket.display()
    ));
    let daemon = dir.start();
    let (_audit, _head, mut follow) = follow_new_records(&daemon).await;
    admit(&daemon, &dir, "timed").await.unwrap();
    let admitted = follow.message().await.unwrap().unwrap().record.unwrap();
    assert_eq!(admitted.event, "workload.admitted");
    // Far fewer than 1000 records: only the timer can write the next one.
    let next = follow.message().await.unwrap().unwrap().record.unwrap();
    assert!(
        next.checkpoint,
        "expected a timed checkpoint, got {}",
        next.event
    );
    let record: AuditRecord = serde_json::from_str(&next.json).unwrap();
    assert_eq!(record.checkpoint.unwrap().covers_seq, admitted.seq);
}
