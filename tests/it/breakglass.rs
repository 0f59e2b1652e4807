//! Issue 5 acceptance: the break-glass workflow against one in-process daemon on a manual
//! clock, with software FIDO2 keys, driven by the tonic clients generated from the proto (a
//! workload over mutual TLS, operators over the local socket).

use std::time::Duration;

use latchkey::base::clock::Clock as _;
use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;

use crate::support::world::*;
use crate::support::{ClientCert, DaemonDir};

fn refused<T>(r: Result<T, tonic::Status>, expected: &str) {
    let err = r.err().unwrap_or_else(|| panic!("{expected}: accepted"));
    assert_eq!(code(&err), expected, "{err}");
}

#[tokio::test]
async fn a_workload_gets_a_bearer_token_after_two_approvals_and_introspection_says_active() {
    let mut w = world(600, None).await;
    let created = workload_request(&w, Some(1800)).await;
    assert_eq!(created.state(), pb::RequestState::Pending);
    assert_eq!(created.requester, "workload/vault-db");
    assert_eq!(created.scope_owner, "dba-team");
    assert!(created.scope_runbook.contains("rotate the root password"));
    assert_eq!(created.ttl.unwrap().seconds, 1800);

    // The workload waits on a stream, without polling.
    let channel = w.bg.tls(&w.vault_db).await;
    let id = created.id.clone();
    let waiter = tokio::spawn(async move {
        let mut updates = Vec::new();
        let result = access::wait(
            channel,
            &id,
            Some(&crate::support::world::delivery_key()),
            |r| updates.push((r.state(), r.approvals)),
        )
        .await;
        (result, updates)
    });

    let first =
        w.bg.vote(
            Target::Request(created.id.clone()),
            "carol",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!((first.state.as_str(), first.approvals), ("pending", 1));
    let issued_at = w.bg.clock.now();
    let second =
        w.bg.vote(
            Target::Request(created.id.clone()),
            "dave",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!(second.state, "issued");
    assert!(!second.grant_id.is_empty());

    let (result, updates) = waiter.await.unwrap();
    let (request, credential) = result.unwrap();
    let credential = credential.expect("credential delivered");
    assert_eq!(request.state(), pb::RequestState::Issued);
    assert_eq!(updates.first(), Some(&(pb::RequestState::Pending, 0)));
    assert_eq!(updates.last(), Some(&(pb::RequestState::Issued, 2)));
    assert!(
        credential.bearer_token.starts_with("lkbg_"),
        "{}",
        credential.bearer_token
    );
    assert_eq!(credential.grant_id, second.grant_id);

    let answer = introspect(&w, &credential.bearer_token).await;
    assert!(answer.active);
    assert_eq!(answer.scope, "db-root");
    assert_eq!(answer.grant_id, second.grant_id);
    let expected_expiry = issued_at.plus(Duration::from_secs(1800));
    assert_eq!(
        answer.expires_at.unwrap(),
        prost_types::Timestamp::from(expected_expiry.to_system_time())
    );

    // Only its hash is stored: the token's bytes are nowhere in the store.
    let token = credential.bearer_token.as_bytes();
    for (_, entries) in w.bg.snapshot() {
        for (k, v) in entries {
            assert!(!k.windows(token.len()).any(|x| x == token));
            assert!(!v.windows(token.len()).any(|x| x == token));
        }
    }
    // The same credential is collected again by a second watch (its token sealed to the
    // request's delivery key), and another key cannot open it.
    let (_, again) = access::wait(
        w.bg.tls(&w.vault_db).await,
        &created.id,
        Some(&delivery_key()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.unwrap(), credential);
    let stranger = latchkey::credential::delivery::DeliveryKey::generate();
    let opened = access::wait(
        w.bg.tls(&w.vault_db).await,
        &created.id,
        Some(&stranger),
        |_| {},
    )
    .await;
    assert!(
        matches!(opened, Err(latchkey::client::ClientError::Protocol(_))),
        "{opened:?}"
    );
    // An unknown token is inactive, and only introspecting workloads may ask.
    assert!(!introspect(&w, "lkbg_not-a-token").await.active);
    let err = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .introspect(pb::IntrospectRequest {
            token: credential.bearer_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "introspect.not_allowed");
    w.bg.stop().await;
}

#[tokio::test]
async fn every_rule_of_approval_refuses_with_a_stable_code_and_changes_nothing() {
    use pb::vote_target::Target as T;
    let mut w = world(60, None).await;
    let request = workload_request(&w, None).await;
    let rid = || T::RequestId(request.id.clone());

    // An operator's own request: dave asks (with his key), then tries to approve it.
    let own = operator_request(&mut w, "dave").await;
    assert_eq!(own.requester, "operator/dave");

    let before = w.bg.snapshot();

    // 1. The requester approving its own request.
    refused(
        w.bg.begin_vote(T::RequestId(own.id.clone()), "dave", pb::Decision::Approve)
            .await,
        "approval.requester",
    );
    // 2. A workload approving (over its own mTLS identity).
    let as_workload = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .begin_vote(pb::BeginVoteRequest {
            target: Some(pb::VoteTarget {
                target: Some(rid()),
            }),
            operator: "carol".into(),
            decision: pb::Decision::Approve.into(),
        })
        .await;
    refused(as_workload, "approval.workload");
    let (ceremony, options) =
        w.bg.begin_vote(rid(), "carol", pb::Decision::Approve)
            .await
            .unwrap();
    let signed = w.bg.sign("carol", 0, options);
    refused(
        w.bg.cast(
            w.bg.tls(&w.vault_db).await,
            rid(),
            pb::Decision::Approve,
            &ceremony,
            signed.clone(),
        )
        .await,
        "approval.workload",
    );
    // 3. An operator outside the approver role.
    refused(
        w.bg.begin_vote(rid(), "erin", pb::Decision::Approve).await,
        "approval.not_approver",
    );
    // 4. An approval whose assertion was made for another request: carol's signature for
    //    `request` submitted as a vote on dave's request.
    refused(
        w.bg.cast(
            w.bg.local().await,
            T::RequestId(own.id.clone()),
            pb::Decision::Approve,
            &ceremony,
            signed.clone(),
        )
        .await,
        "assertion.wrong_digest",
    );
    // ... and a signature to approve used to deny.
    refused(
        w.bg.cast(
            w.bg.local().await,
            rid(),
            pb::Decision::Deny,
            &ceremony,
            signed.clone(),
        )
        .await,
        "assertion.wrong_digest",
    );
    // 5. A TTL above the scope's maximum (3600 s).
    let too_long = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft(Some(3601))),
            ..Default::default()
        })
        .await;
    refused(too_long, "request.ttl_too_long");
    assert_eq!(w.bg.snapshot(), before, "no refusal changed the store");

    // Dave counts once, whatever keys he uses: he approves with his first key, then his
    // second key (a ceremony opened before the first vote) is refused.
    let (early, early_options) =
        w.bg.begin_vote(rid(), "dave", pb::Decision::Approve)
            .await
            .unwrap();
    let first =
        w.bg.vote(
            Target::Request(request.id.clone()),
            "dave",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!(first.approvals, 1);
    let after_first = w.bg.snapshot();
    refused(
        w.bg.begin_vote(rid(), "dave", pb::Decision::Approve).await,
        "approval.already_counted",
    );
    let with_second_key = w.bg.sign("dave", 1, early_options);
    refused(
        w.bg.cast(
            w.bg.local().await,
            rid(),
            pb::Decision::Approve,
            &early,
            with_second_key,
        )
        .await,
        "approval.already_counted",
    );
    assert_eq!(w.bg.snapshot(), after_first);

    // 6. An approval after the request expired (60 s pending; the challenge lives 120 s).
    w.bg.clock.advance(Duration::from_secs(61));
    refused(
        w.bg.cast(
            w.bg.local().await,
            rid(),
            pb::Decision::Approve,
            &ceremony,
            signed,
        )
        .await,
        "request.expired",
    );
    assert_eq!(w.bg.snapshot(), after_first);
    let shown = AccessServiceClient::new(w.bg.local().await)
        .show_request(pb::ShowRequestRequest {
            id: request.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(shown.state(), pb::RequestState::Expired);
    assert_eq!(shown.approvals, 1);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_denial_ends_a_request_and_the_requester_may_cancel_its_own() {
    let mut w = world(600, None).await;
    let denied = workload_request(&w, None).await;
    let result =
        w.bg.vote(
            Target::Request(denied.id.clone()),
            "carol",
            Decision::Deny,
            0,
        )
        .await
        .unwrap();
    assert_eq!(result.state, "denied");
    let err =
        w.bg.vote(
            Target::Request(denied.id.clone()),
            "dave",
            Decision::Approve,
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "request.closed");

    let pending = workload_request(&w, None).await;
    let err = AccessServiceClient::new(w.bg.local().await)
        .cancel_request(pb::CancelRequestRequest {
            id: pending.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "request.not_requester");
    let cancelled = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .cancel_request(pb::CancelRequestRequest {
            id: pending.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(cancelled.state(), pb::RequestState::Cancelled);
    w.bg.stop().await;
}

#[tokio::test]
async fn one_admin_alone_cannot_add_a_key_and_the_subject_of_a_change_cannot_approve_it() {
    let mut w = world(600, None).await;
    let bg = &mut w.bg;

    // A new key after genesis needs a proofing note.
    let err = bg.enroll("alice", "admin", "").await.unwrap_err();
    assert_eq!(code(&err), "change.proofing_note_required");
    bg.keys.get_mut("alice").unwrap().pop();

    // Alice proposes a second key for herself: she cannot approve it.
    let own = bg
        .enroll(
            "alice",
            "admin",
            "alice lost her key; bob called her back on her desk phone and checked her badge",
        )
        .await
        .unwrap();
    let before = bg.snapshot();
    let err = bg
        .vote(
            Target::Change(own.change_id.clone()),
            "alice",
            Decision::Approve,
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "approval.subject_of_change");
    assert_eq!(bg.snapshot(), before);

    // Alice routes a key for a new operator, gina, and approves it: one admin is not enough.
    let gina = bg
        .enroll(
            "gina",
            "dba-oncall",
            "gina joined the DBA rota; alice checked her ID on a video call with HR present",
        )
        .await
        .unwrap();
    let one = bg
        .vote(
            Target::Change(gina.change_id.clone()),
            "alice",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        (one.state.as_str(), one.approvals, one.quorum),
        ("pending", 1, 2)
    );
    let shown = latchkey::client::show_operator(bg.local().await, "gina").await;
    assert!(shown.is_err(), "gina has no key before quorum");

    // With quorum it applies: bob approves gina; bob and frank approve alice's new key.
    let applied = bg
        .vote(
            Target::Change(gina.change_id.clone()),
            "bob",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!(applied.state, "applied");
    let gina_now = latchkey::client::show_operator(bg.local().await, "gina")
        .await
        .unwrap();
    assert_eq!(gina_now.authenticators.len(), 1);
    assert_eq!(gina_now.roles, vec!["dba-oncall".to_owned()]);
    for admin in ["bob", "frank"] {
        bg.vote(
            Target::Change(own.change_id.clone()),
            admin,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    let alice = latchkey::client::show_operator(bg.local().await, "alice")
        .await
        .unwrap();
    assert_eq!(alice.authenticators.len(), 2);

    // The proofing note and every approval are in the audit log, and the log verifies
    // offline, including the evidence of votes by keys added through changes.
    let file = bg.dir.dir.path().join("audit.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    latchkey::client::export_audit(bg.local().await, &mut out)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("bob called her back on her desk phone"));
    let keys = latchkey::credential::keys::DaemonKeys::load(&bg.dir.data).unwrap();
    let audit_key = latchkey::audit::signing_key(&keys.audit)
        .unwrap()
        .verifying_key();
    let report = latchkey::audit::verify::verify(
        std::io::BufReader::new(std::fs::File::open(&file).unwrap()),
        &audit_key,
    )
    .unwrap();
    assert_eq!(report.evidence_verified, 6, "six votes, each re-verified");
    w.bg.stop().await;
}

#[tokio::test]
async fn a_token_turns_inactive_at_the_instant_of_its_expiry() {
    let mut w = world(600, None).await;
    let created = workload_request(&w, Some(600)).await;
    let channel = w.bg.tls(&w.vault_db).await;
    let id = created.id.clone();
    let waiter = tokio::spawn(async move {
        access::wait(
            channel,
            &id,
            Some(&crate::support::world::delivery_key()),
            |_| {},
        )
        .await
    });
    for op in ["carol", "dave"] {
        w.bg.vote(
            Target::Request(created.id.clone()),
            op,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    let issued = w.bg.clock.now();
    let (_, credential) = waiter.await.unwrap().unwrap();
    let token = credential.unwrap().bearer_token;
    w.bg.clock.set(issued.plus(Duration::from_millis(599_999)));
    assert!(introspect(&w, &token).await.active);
    w.bg.clock.set(issued.plus(Duration::from_secs(600)));
    assert!(!introspect(&w, &token).await.active);
    w.bg.stop().await;
}

/// The first ```toml block of docs/scopes.md: the documented example is the tested one.
fn documented_scope() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/scopes.md")).unwrap();
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[test]
fn the_cli_walks_a_request_from_scope_to_introspection() {
    let dir = DaemonDir::init();
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\ndev_mode = true\n[log]\nformat = \"json\"\n[unix]\npath = \"{}\"\n[tls]\nlisten = \"127.0.0.1:0\"\n",
        dir.data.display(),
        dir.socket.display()
    ));
    let daemon = dir.start();
    let home = dir.dir.path();
    let run = |args: &[&str]| {
        crate::support::latchkey_cli()
            .arg("--socket")
            .arg(daemon.socket_path())
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "latchkey {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = |name: &str| home.join(format!("{name}.token")).display().to_string();
    for (name, role) in [
        ("carol", "dba-oncall"),
        ("dave", "dba-oncall"),
        ("erin", "dba-oncall"),
    ] {
        ok(&[
            "key",
            "enroll",
            "--operator",
            name,
            "--role",
            role,
            "--soft-token",
            &token(name),
        ]);
    }
    let scope_file = home.join("db-root.toml");
    std::fs::write(&scope_file, documented_scope()).unwrap();
    ok(&[
        "scope",
        "put",
        "--file",
        scope_file.to_str().unwrap(),
        "--note",
        "bootstrap",
    ]);
    let plugin = ClientCert::generate(home, "vault-plugin");
    ok(&[
        "workload",
        "put",
        "--name",
        "vault-plugin",
        "--owner",
        "platform-team",
        "--cert",
        plugin.cert.to_str().unwrap(),
        "--introspect",
    ]);
    for name in ["alice", "bob"] {
        ok(&[
            "key",
            "enroll",
            "--operator",
            name,
            "--role",
            "admin",
            "--soft-token",
            &token(name),
        ]);
    }
    let listed = ok(&["scope", "list"]);
    assert!(
        listed.contains("db-root") && listed.contains("2 of dba-oncall"),
        "{listed}"
    );
    assert!(!listed.contains("WARN"), "{listed}");

    let (_, public) = crate::support::sshd::user_key(home, "id_ed25519");
    let id = ok(&[
        "request",
        "--scope",
        "db-root",
        "--operator",
        "carol",
        "--soft-token",
        &token("carol"),
        "--ttl",
        "30m",
        "--ticket",
        "INC-4711",
        "--reason",
        "primary down, replication stuck; failing over by hand",
        "--ssh-public-key",
        public.to_str().unwrap(),
        "--no-wait",
    ]);
    let id = id.trim();
    assert!(ok(&["requests", "list", "--state", "pending"]).contains(id));
    let shown = ok(&["requests", "show", id]);
    for expected in [
        "operator/carol",
        "owner: dba-team",
        "rotate the root password",
        "30m",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    let refused = run(&[
        "approve",
        id,
        "--operator",
        "carol",
        "--soft-token",
        &token("carol"),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("approval.requester"));
    let first = run(&[
        "approve",
        id,
        "--operator",
        "dave",
        "--soft-token",
        &token("dave"),
    ]);
    // The approver sees what approving mints and which SSH key it certifies.
    let card = String::from_utf8_lossy(&first.stderr);
    assert!(
        card.contains("mints     a bearer token and an SSH certificate for postgres"),
        "{card}"
    );
    assert!(card.contains("ssh key   ssh-ed25519 SHA256:"), "{card}");
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.contains("1 of 2"), "{first}");
    let second = ok(&[
        "approve",
        id,
        "--operator",
        "erin",
        "--soft-token",
        &token("erin"),
    ]);
    assert!(second.contains("issued"), "{second}");

    let delivered: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "wait",
        id,
        "--ssh-public-key",
        public.to_str().unwrap(),
    ]))
    .unwrap();
    let bearer = delivered["bearer_token"].as_str().unwrap().to_owned();
    assert!(bearer.starts_with("lkbg_"));
    let cert_file = home.join("id_ed25519-cert.pub");
    let cert = ssh_key::Certificate::read_file(&cert_file).unwrap();
    assert_eq!(cert.valid_principals(), ["postgres".to_owned()].as_slice());
    assert_eq!(cert.key_id(), delivered["grant_id"].as_str().unwrap());

    // Without --ssh-public-key the certificate lands next to the matching key in ~/.ssh,
    // where ssh finds it, not on stdout.
    let other_home = tempfile::tempdir().unwrap();
    std::fs::create_dir(other_home.path().join(".ssh")).unwrap();
    std::fs::copy(&public, other_home.path().join(".ssh/id_ed25519.pub")).unwrap();
    let again = crate::support::latchkey_cli()
        .env("HOME", other_home.path())
        // The delivery key stays where `request` kept it.
        .env("XDG_STATE_HOME", crate::support::cli_state_home())
        .arg("--socket")
        .arg(daemon.socket_path())
        .args(["wait", id])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let beside = other_home.path().join(".ssh/id_ed25519-cert.pub");
    assert_eq!(
        ssh_key::Certificate::read_file(&beside).unwrap().key_id(),
        cert.key_id()
    );
    assert!(!String::from_utf8_lossy(&again.stdout).contains("-cert-v01@openssh.com"));

    let tls = |args: &[&str]| {
        crate::support::latchkey_cli()
            .arg("--tls")
            .arg(daemon.tls_addr().to_string())
            .arg("--server-cert")
            .arg(dir.data.join("tls-cert.pem"))
            .arg("--client-cert")
            .arg(&plugin.cert)
            .arg("--client-key")
            .arg(&plugin.key)
            .args(args)
            .output()
            .unwrap()
    };
    let active = tls(&["introspect", &bearer]);
    assert!(active.status.success());
    assert!(String::from_utf8_lossy(&active.stdout).contains("active  scope db-root"));
    let unknown = tls(&["introspect", "lkbg_forged"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stdout).contains("inactive"));

    // `revoke --wait` returns once every sink (here the KRL) confirmed.
    let grant_id = delivered["grant_id"].as_str().unwrap();
    let revoked = run(&[
        "--json",
        "revoke",
        grant_id,
        "--reason",
        "incident over",
        "--operator",
        "dave",
        "--soft-token",
        &token("dave"),
        "--wait",
        "2m",
    ]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&revoked.stdout).unwrap();
    assert_eq!(shown["state"], "revoked", "{shown}");
    assert_eq!(tls(&["introspect", &bearer]).status.code(), Some(1));
}

#[tokio::test]
async fn an_approval_by_a_key_removed_since_counts_for_nothing() {
    use pb::propose_change_request::Change as C;
    let mut w = world(600, None).await;
    let request = workload_request(&w, None).await;
    let rid = Target::Request(request.id.clone());
    w.bg.vote(rid.clone(), "carol", Decision::Approve, 0)
        .await
        .unwrap();
    let carol = latchkey::client::show_operator(w.bg.local().await, "carol")
        .await
        .unwrap();
    let removal =
        w.bg.propose(
            "carol's key was left in a taxi",
            C::RemoveAuthenticator(pb::RemoveAuthenticator {
                operator: "carol".into(),
                credential_id: carol.authenticators[0].credential_id.clone(),
            }),
        )
        .await
        .unwrap();
    for admin in ["alice", "bob"] {
        w.bg.vote(
            Target::Change(removal.id.clone()),
            admin,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    let shown = AccessServiceClient::new(w.bg.local().await)
        .show_request(pb::ShowRequestRequest {
            id: request.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!((shown.votes.len(), shown.approvals), (1, 0));
    let after =
        w.bg.vote(rid.clone(), "dave", Decision::Approve, 0)
            .await
            .unwrap();
    assert_eq!((after.state.as_str(), after.approvals), ("pending", 1));
    let err =
        w.bg.vote(rid, "carol", Decision::Approve, 0)
            .await
            .unwrap_err();
    assert_eq!(code(&err), "approval.already_counted");
    w.bg.stop().await;
}

#[tokio::test]
async fn a_real_sshd_accepts_the_minted_certificate_for_its_principal_and_no_other() {
    use crate::support::sshd::{LoginOutcome, Sshd, user_key};
    let ssh = pb::SshSpec {
        principals: vec!["root".into()],
        permit_port_forwarding: false,
    };
    let mut w = world(600, Some(ssh)).await;
    let home = w.bg.dir.dir.path().to_owned();
    let (private, public) = user_key(&home, "responder");
    let credential = crate::support::grants::issue(&mut w, Some(&public), 600).await;
    let cert_file = home.join("responder-cert.pub");
    std::fs::write(&cert_file, &credential.ssh_certificate).unwrap();
    let cert = ssh_key::Certificate::from_openssh(&credential.ssh_certificate).unwrap();
    assert_ne!(cert.serial(), 0);
    assert_eq!(cert.key_id(), credential.grant_id);
    assert!(!cert.extensions().contains_key("permit-port-forwarding"));

    // The harness's manual clock started at the real time, which sshd checks against.
    let keys = latchkey::credential::keys::DaemonKeys::load(&w.bg.dir.data).unwrap();
    let ca = keys.ssh_ca.public_key().to_openssh().unwrap();
    let sshd = Sshd::start(&ca, None);
    assert_eq!(
        sshd.login("root", &private, &cert_file),
        LoginOutcome::Accepted
    );
    match sshd.login("nobody", &private, &cert_file) {
        LoginOutcome::Refused(stderr) => assert!(stderr.contains("Permission denied"), "{stderr}"),
        LoginOutcome::Accepted => panic!("logged in as a principal the certificate does not name"),
    }
    let log = sshd.log();
    assert!(
        log.contains("not a listed principal"),
        "sshd refused for the principal: {log}"
    );
    w.bg.stop().await;
}
