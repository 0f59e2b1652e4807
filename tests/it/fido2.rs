//! Issue 4 acceptance with software authenticators (webauthn-authenticator-rs SoftToken)
//! against an in-process daemon on a manual clock, over its Unix socket.

use std::sync::Arc;
use std::time::Duration;

use latchkey::base::clock::{ManualClock, Timestamp};
use latchkey::daemon::config::Config;
use latchkey::daemon::{self, Running};
use latchkey::pb;
use latchkey::pb::operator_service_client::OperatorServiceClient;
use latchkey::rpc::ERROR_CODE_METADATA;
use latchkey::store::{self, Keyspace, SledStore, Store as _, Txn};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::support::DaemonDir;

const ORIGIN: &str = "https://latchkey.local";

struct Harness {
    dir: DaemonDir,
    config: Config,
    clock: ManualClock,
    running: Option<Running>,
}

impl Harness {
    async fn start(dev_mode: bool, require_uv: bool) -> Self {
        Self::start_with(dev_mode, require_uv, "").await
    }

    async fn start_with(dev_mode: bool, require_uv: bool, fido2_extra: &str) -> Self {
        let dir = DaemonDir::init();
        let text = format!(
            "version = 1\ndata_dir = \"{}\"\ndev_mode = {dev_mode}\n[unix]\npath = \"{}\"\n[fido2]\nrequire_user_verification = {require_uv}\nchallenge_ttl_seconds = 120\n{fido2_extra}\n",
            dir.data.display(),
            dir.socket.display()
        );
        let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let clock = ManualClock::new(Timestamp::from_unix_millis(1_795_000_000_000));
        let running = daemon::start(&config, Arc::new(clock.clone()))
            .await
            .unwrap();
        Self {
            dir,
            config,
            clock,
            running: Some(running),
        }
    }

    /// Stops the daemon, lets `offline` work on its stopped store, and starts it again.
    async fn restart_after(&mut self, offline: impl FnOnce(&SledStore)) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
        {
            let store = SledStore::open(&self.dir.data.join("store")).unwrap();
            offline(&store);
        }
        self.running = Some(
            daemon::start(&self.config, Arc::new(self.clock.clone()))
                .await
                .unwrap(),
        );
    }

    async fn client(&self) -> OperatorServiceClient<Channel> {
        OperatorServiceClient::new(
            latchkey::client::connect_unix(&self.dir.socket)
                .await
                .unwrap(),
        )
    }

    async fn audit_head(&self) -> u64 {
        pb::audit_service_client::AuditServiceClient::new(
            latchkey::client::connect_unix(&self.dir.socket)
                .await
                .unwrap(),
        )
        .read_records(pb::ReadRecordsRequest {
            from_seq: 1,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .head_seq
    }

    async fn audit_events(&self) -> Vec<String> {
        let mut audit = pb::audit_service_client::AuditServiceClient::new(
            latchkey::client::connect_unix(&self.dir.socket)
                .await
                .unwrap(),
        );
        audit
            .read_records(pb::ReadRecordsRequest {
                from_seq: 1,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .map(|r| r.event)
            .collect()
    }

    async fn enroll(
        &self,
        token: &mut SoftToken,
        operator: &str,
        role: &str,
    ) -> Result<pb::FinishEnrollmentResponse, tonic::Status> {
        let mut client = self.client().await;
        let begun = client
            .begin_enrollment(pb::BeginEnrollmentRequest {
                operator: operator.into(),
                roles: vec![role.into()],
            })
            .await?
            .into_inner();
        let options: CreationChallengeResponse =
            serde_json::from_str(&begun.creation_options_json).unwrap();
        let credential = token
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        Ok(client
            .finish_enrollment(pb::FinishEnrollmentRequest {
                ceremony_id: begun.ceremony_id,
                credential_json: serde_json::to_string(&credential).unwrap(),
                note: String::new(),
            })
            .await?
            .into_inner())
    }

    async fn begin(&self, operator: &str, digest: [u8; 32]) -> (String, RequestChallengeResponse) {
        let begun = self
            .client()
            .await
            .begin_assertion(pb::BeginAssertionRequest {
                operator: operator.into(),
                digest: digest.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        (
            begun.ceremony_id,
            serde_json::from_str(&begun.request_options_json).unwrap(),
        )
    }

    async fn finish(
        &self,
        ceremony_id: &str,
        digest: [u8; 32],
        credential_json: String,
    ) -> Result<pb::FinishAssertionResponse, tonic::Status> {
        self.client()
            .await
            .finish_assertion(pb::FinishAssertionRequest {
                ceremony_id: ceremony_id.into(),
                digest: digest.to_vec(),
                credential_json,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn show(&self, name: &str) -> pb::ShowOperatorResponse {
        self.client()
            .await
            .show_operator(pb::ShowOperatorRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }
}

fn token(uv: bool) -> SoftToken {
    SoftToken::new(uv).unwrap().0
}

fn sign(token: &mut SoftToken, options: RequestChallengeResponse) -> String {
    serde_json::to_string(
        &token
            .do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .unwrap(),
    )
    .unwrap()
}

fn digest(what: &str) -> [u8; 32] {
    Sha256::digest(what.as_bytes()).into()
}

fn code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| format!("(no code) {status}"))
}

/// Two admins enrolled (genesis closes at quorum 2); returns their tokens.
async fn genesis(h: &Harness) -> (SoftToken, SoftToken) {
    let mut alice = token(true);
    let mut bob = token(true);
    let first = h.enroll(&mut alice, "alice", "admin").await.unwrap();
    assert_eq!(first.genesis(), pb::GenesisState::Open);
    let second = h.enroll(&mut bob, "bob", "admin").await.unwrap();
    assert_eq!(second.genesis(), pb::GenesisState::Closed);
    (alice, bob)
}

#[tokio::test]
async fn genesis_enrolls_two_operators_then_closes_for_good() {
    let h = Harness::start(true, false).await;
    let _tokens = genesis(&h).await;
    let mut carol = token(true);
    // After genesis a key is a proposed change, and needs a proofing note.
    let err = h.enroll(&mut carol, "carol", "admin").await.unwrap_err();
    assert_eq!(code(&err), "change.proofing_note_required", "{err}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let events = h.audit_events().await;
    let enrolled = events
        .iter()
        .filter(|e| *e == "authenticator.enrolled")
        .count();
    assert_eq!(enrolled, 2);
    assert!(events.contains(&"genesis.closed".to_owned()), "{events:?}");
    assert_eq!(h.show("alice").await.roles, vec!["admin".to_owned()]);
    h.stop().await;
}

#[tokio::test]
async fn one_physical_key_belongs_to_one_operator() {
    let h = Harness::start(true, false).await;
    let mut shared = token(true);
    let alice = h.enroll(&mut shared, "alice", "admin").await.unwrap();
    let head = h.audit_head().await;

    // A second operator's enrollment excludes every enrolled credential, so the key that holds
    // one refuses to register again.
    let begun = h
        .client()
        .await
        .begin_enrollment(pb::BeginEnrollmentRequest {
            operator: "mallory".into(),
            roles: vec!["admin".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let options: CreationChallengeResponse =
        serde_json::from_str(&begun.creation_options_json).unwrap();
    let excluded: Vec<String> = options
        .public_key
        .exclude_credentials
        .iter()
        .flatten()
        .map(|c| latchkey::verify::fido2::credential_id_text(c.id.as_ref()))
        .collect();
    assert_eq!(excluded, vec![alice.credential_id.clone()]);
    // A real key holding an excluded credential refuses to register (CTAP2 excludeList).
    // The soft token does not implement the exclude list; a client that sends alice's
    // credential id anyway is told whose it is, not "a credential alg that was not allowed".
    let mut response = serde_json::to_value(
        shared
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap(),
    )
    .unwrap();
    response["id"] = alice.credential_id.clone().into();
    response["rawId"] = alice.credential_id.clone().into();
    let err = h
        .client()
        .await
        .finish_enrollment(pb::FinishEnrollmentRequest {
            ceremony_id: begun.ceremony_id,
            credential_json: response.to_string(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "operator.credential_taken");
    assert!(err.message().contains("alice"), "{err:?}");
    assert_eq!(h.audit_head().await, head, "nothing recorded");
    assert_eq!(h.show("alice").await.authenticators.len(), 1);
    h.stop().await;
}

fn index_entries(store: &SledStore) -> Vec<String> {
    store::scan_prefix(store, Keyspace::OperatorKeys, b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

#[tokio::test]
async fn a_schema_1_store_is_upgraded_at_start_and_its_operators_still_sign() {
    let mut h = Harness::start(true, false).await;
    let (mut alice, _bob) = genesis(&h).await;
    let alice_key = h.show("alice").await.authenticators[0]
        .credential_id
        .clone();
    let bob_key = h.show("bob").await.authenticators[0].credential_id.clone();
    let mut expected = vec![format!("alice/{alice_key}"), format!("bob/{bob_key}")];
    expected.sort();

    // Turn the store into what a schema-1 build left: no index of keys by operator.
    h.restart_after(|store| {
        assert_eq!(index_entries(store), expected, "enrolment indexes each key");
        let mut txn = Txn::new();
        for entry in index_entries(store) {
            txn.delete(Keyspace::OperatorKeys, entry.into_bytes());
        }
        txn.put_raw(
            Keyspace::Meta,
            store::SCHEMA_VERSION_KEY,
            store::schema_version_bytes(1),
        );
        store.commit(&txn).unwrap();
    })
    .await;

    let shown = h.show("alice").await;
    assert_eq!(shown.authenticators.len(), 1);
    assert_eq!(shown.authenticators[0].credential_id, alice_key);
    let d = digest("approve request r1");
    let (id, options) = h.begin("alice", d).await;
    let verified = h.finish(&id, d, sign(&mut alice, options)).await.unwrap();
    assert_eq!(verified.operator, "alice");

    h.restart_after(|store| {
        assert_eq!(
            index_entries(store),
            expected,
            "the upgrade indexed every key"
        );
        assert_eq!(
            store::check_schema(store, std::path::Path::new("store")).unwrap(),
            latchkey::base::constants::STORE_SCHEMA_VERSION
        );
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_valid_assertion_over_the_right_challenge_verifies_and_is_audited_with_evidence() {
    let h = Harness::start(true, false).await;
    let (mut alice, _bob) = genesis(&h).await;
    let d = digest("approve request r1");
    let (id, options) = h.begin("alice", d).await;
    let verified = h.finish(&id, d, sign(&mut alice, options)).await.unwrap();
    assert_eq!(verified.operator, "alice");
    assert!(verified.counter > 0);

    // The evidence re-verifies offline against the enrolled key.
    let file = h.dir.dir.path().join("audit.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    latchkey::client::export_audit(
        latchkey::client::connect_unix(&h.dir.socket).await.unwrap(),
        &mut out,
    )
    .await
    .unwrap();
    let keys = latchkey::credential::keys::DaemonKeys::load(&h.dir.data).unwrap();
    let audit_key = latchkey::audit::signing_key(&keys.audit)
        .unwrap()
        .verifying_key();
    let report = latchkey::audit::verify::verify(
        std::io::BufReader::new(std::fs::File::open(&file).unwrap()),
        &audit_key,
    )
    .unwrap();
    assert_eq!(report.evidence_verified, 1);
    h.stop().await;
}

#[tokio::test]
async fn each_bad_assertion_is_refused_with_its_own_code_and_changes_nothing() {
    let h = Harness::start(true, false).await;
    let (mut alice, mut bob) = genesis(&h).await;
    let d = digest("approve request r1");
    let mut seen = std::collections::BTreeSet::new();
    let mut refuse = |err: tonic::Status, expected: &str| {
        assert_eq!(code(&err), expected, "{err}");
        assert!(
            seen.insert(expected.to_owned()),
            "code {expected} used twice"
        );
    };

    // Wrong origin / RP id: the key signs for another relying party.
    let (id, mut options) = h.begin("alice", d).await;
    options.public_key.rp_id = "evil.example".into();
    let response = serde_json::to_string(
        &alice
            .do_authentication(Url::parse("https://evil.example").unwrap(), options)
            .unwrap(),
    )
    .unwrap();
    let head = h.audit_head().await;
    refuse(
        h.finish(&id, d, response).await.unwrap_err(),
        "fido2.wrong_origin",
    );

    // A challenge issued for one digest, answered for another.
    let (id, options) = h.begin("alice", d).await;
    let response = sign(&mut alice, options);
    refuse(
        h.finish(&id, digest("something else"), response.clone())
            .await
            .unwrap_err(),
        "assertion.wrong_digest",
    );

    // Reused challenge: the first answer counts, the second is refused.
    h.finish(&id, d, response.clone()).await.unwrap();
    let head_after_valid = h.audit_head().await;
    assert!(head_after_valid > head);
    refuse(
        h.finish(&id, d, response).await.unwrap_err(),
        "assertion.challenge_reused",
    );

    // Expired challenge.
    let (id, options) = h.begin("alice", d).await;
    let response = sign(&mut alice, options);
    h.clock.advance(Duration::from_secs(121));
    refuse(
        h.finish(&id, d, response).await.unwrap_err(),
        "assertion.challenge_expired",
    );

    // Unknown challenge id.
    refuse(
        h.finish("00ff", d, "{}".into()).await.unwrap_err(),
        "assertion.challenge_unknown",
    );

    // Unknown credential: a key never enrolled.
    let (id, options) = h.begin("alice", d).await;
    let mut stranger = token(true);
    let mut stranger_options = options.clone();
    stranger_options.public_key.allow_credentials.clear();
    let err = stranger.do_authentication(Url::parse(ORIGIN).unwrap(), stranger_options);
    // A soft token without a matching credential cannot answer at all; forge the id instead.
    assert!(err.is_err());
    let mut forged: serde_json::Value = serde_json::from_str(&sign(&mut alice, options)).unwrap();
    forged["id"] = "c3RyYW5nZXI".into();
    forged["rawId"] = "c3RyYW5nZXI".into();
    refuse(
        h.finish(&id, d, forged.to_string()).await.unwrap_err(),
        "fido2.unknown_credential",
    );

    // Signature by another key: bob's key answers, presented as alice's credential.
    let (id, options) = h.begin("alice", d).await;
    let alice_view: serde_json::Value =
        serde_json::from_str(&sign(&mut alice, options.clone())).unwrap();
    let (bob_id, bob_options) = h.begin("bob", d).await;
    let _ = bob_id;
    let mut by_bob: serde_json::Value = serde_json::from_str(&sign(&mut bob, bob_options)).unwrap();
    by_bob["id"] = alice_view["id"].clone();
    by_bob["rawId"] = alice_view["rawId"].clone();
    by_bob["response"]["clientDataJSON"] = alice_view["response"]["clientDataJSON"].clone();
    by_bob["response"]["authenticatorData"] = alice_view["response"]["authenticatorData"].clone();
    refuse(
        h.finish(&id, d, by_bob.to_string()).await.unwrap_err(),
        "fido2.bad_signature",
    );

    // Malformed JSON, and truncated authenticatorData.
    let (id, options) = h.begin("alice", d).await;
    let good: serde_json::Value = serde_json::from_str(&sign(&mut alice, options)).unwrap();
    refuse(
        h.finish(&id, d, "{not json".into()).await.unwrap_err(),
        "fido2.malformed",
    );
    let mut truncated = good.clone();
    truncated["response"]["authenticatorData"] =
        "SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MF".into();
    refuse(
        h.finish(&id, d, truncated.to_string()).await.unwrap_err(),
        "fido2.truncated_authenticator_data",
    );

    // None of the refusals wrote anything: only the one valid assertion did.
    assert_eq!(h.audit_head().await, head_after_valid);
    let alice_keys = h.show("alice").await.authenticators;
    assert!(
        alice_keys
            .iter()
            .all(|k| k.state() == pb::AuthenticatorState::Active)
    );
    h.stop().await;
}

#[tokio::test]
async fn an_assertion_without_user_verification_is_refused_where_policy_requires_it() {
    let h = Harness::start(true, true).await;
    let mut alice = token(true);
    h.enroll(&mut alice, "alice", "admin").await.unwrap();
    let mut no_pin = token(false);
    h.enroll(&mut no_pin, "dave", "admin").await.unwrap();
    let d = digest("approve");

    let (id, options) = h.begin("alice", d).await;
    let ok = h.finish(&id, d, sign(&mut alice, options)).await.unwrap();
    assert!(ok.user_verified);

    let (id, mut options) = h.begin("dave", d).await;
    // This key cannot do UV: ask it without (as a client that ignores the policy would).
    options.public_key.user_verification = webauthn_rs_proto::UserVerificationPolicy::Preferred;
    let head = h.audit_head().await;
    let err = h
        .finish(&id, d, sign(&mut no_pin, options))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "fido2.user_verification_required", "{err}");
    assert_eq!(h.audit_head().await, head);
    h.stop().await;
}

#[tokio::test]
async fn a_counter_regression_suspends_the_authenticator_visibly() {
    let h = Harness::start(true, false).await;
    let (mut alice, _bob) = genesis(&h).await;
    let clone = alice.to_cbor().unwrap();
    let d = digest("approve");
    let (id, options) = h.begin("alice", d).await;
    h.finish(&id, d, sign(&mut alice, options)).await.unwrap();

    // A clone of the key, taken before that approval, signs with an old counter.
    let mut cloned = SoftToken::from_cbor(&clone).unwrap();
    let (id, options) = h.begin("alice", d).await;
    let err = h
        .finish(&id, d, sign(&mut cloned, options))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "fido2.counter_regressed", "{err}");

    let shown = h.show("alice").await;
    let key = &shown.authenticators[0];
    assert_eq!(key.state(), pb::AuthenticatorState::Suspended);
    assert!(
        key.suspended_reason.contains("counter"),
        "{}",
        key.suspended_reason
    );
    assert!(
        h.audit_events()
            .await
            .contains(&"authenticator.suspended".to_owned())
    );

    // A suspended key approves nothing, even the genuine one: no challenge is issued.
    let err = h
        .client()
        .await
        .begin_assertion(pb::BeginAssertionRequest {
            operator: "alice".into(),
            digest: d.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "assertion.no_active_authenticator", "{err}");
    h.stop().await;
}

#[tokio::test]
async fn a_soft_token_is_refused_by_a_daemon_not_in_dev_mode() {
    let h = Harness::start(false, false).await;
    let mut soft = token(true);
    let head = h.audit_head().await;
    let err = h.enroll(&mut soft, "alice", "admin").await.unwrap_err();
    assert_eq!(code(&err), "fido2.attestation_untrusted", "{err}");
    assert!(err.message().contains("AAGUID"), "{err}");
    assert_eq!(h.audit_head().await, head);
    let status = pb::system_service_client::SystemServiceClient::new(
        latchkey::client::connect_unix(&h.dir.socket).await.unwrap(),
    )
    .status(pb::StatusRequest {})
    .await
    .unwrap()
    .into_inner();
    assert_eq!(status.genesis(), pb::GenesisState::Open);
    h.stop().await;
}

#[tokio::test]
async fn an_authenticator_model_outside_the_aaguid_allow_list_is_refused_by_name() {
    let h = Harness::start_with(
        true,
        false,
        "allowed_aaguids = [\"ee882879-721c-4913-9775-3dfcce97072a\"]",
    )
    .await;
    let mut soft = token(true);
    let head = h.audit_head().await;
    let err = h.enroll(&mut soft, "alice", "admin").await.unwrap_err();
    assert_eq!(code(&err), "fido2.attestation_untrusted", "{err}");
    assert!(err.message().contains("AAGUID 0fb9bcbc-"), "{err}");
    assert!(err.message().contains("allowed_aaguids"), "{err}");
    assert_eq!(h.audit_head().await, head);
    h.stop().await;
}

/// A dev-mode daemon process for CLI tests.
fn dev_daemon() -> (DaemonDir, crate::support::Daemon) {
    let dir = DaemonDir::init();
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\ndev_mode = true\n[log]\nformat = \"json\"\n[unix]\npath = \"{}\"\n",
        dir.data.display(),
        dir.socket.display()
    ));
    let daemon = dir.start();
    (dir, daemon)
}

fn cli(daemon: &crate::support::Daemon, args: &[&str]) -> std::process::Output {
    crate::support::latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_enrolls_and_signs_with_a_soft_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, daemon) = dev_daemon();
    let alice = dir.dir.path().join("alice.token");
    let bob = dir.dir.path().join("bob.token");
    let a = alice.to_str().unwrap();
    let b = bob.to_str().unwrap();
    let first = ok(&cli(
        &daemon,
        &[
            "key",
            "enroll",
            "--operator",
            "alice",
            "--role",
            "admin",
            "--soft-token",
            a,
        ],
    ));
    assert!(first.contains("genesis open"), "{first}");
    let second = ok(&cli(
        &daemon,
        &[
            "key",
            "enroll",
            "--operator",
            "bob",
            "--role",
            "admin",
            "--soft-token",
            b,
        ],
    ));
    assert!(second.contains("genesis closed"), "{second}");
    assert_eq!(
        std::fs::metadata(&alice).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let d = hex::encode(digest("approve request r1"));
    let signed = ok(&cli(
        &daemon,
        &[
            "key",
            "sign",
            "--operator",
            "alice",
            "--digest",
            &d,
            "--soft-token",
            a,
        ],
    ));
    assert!(signed.contains("verified: alice"), "{signed}");
    let shown = ok(&cli(&daemon, &["operator", "show", "alice"]));
    assert!(shown.contains("active"), "{shown}");
    assert!(shown.contains("roles: admin"), "{shown}");

    // After genesis, a third enrollment needs a proofing note and becomes a change that the
    // admins approve with their keys.
    let carol = dir.dir.path().join("carol.token");
    let enroll_carol = |note: &str| {
        cli(
            &daemon,
            &[
                "key",
                "enroll",
                "--operator",
                "carol",
                "--role",
                "admin",
                "--note",
                note,
                "--soft-token",
                carol.to_str().unwrap(),
            ],
        )
    };
    let out = enroll_carol("");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("change.proofing_note_required"));
    let proposed = ok(&enroll_carol(
        "carol is the new admin; alice checked her passport in person",
    ));
    let change_id = proposed
        .split_whitespace()
        .skip_while(|w| *w != "change")
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let listed = ok(&cli(&daemon, &["change", "list", "--state", "pending"]));
    assert!(listed.contains(&change_id), "{listed}");
    for (who, token) in [("alice", a), ("bob", b)] {
        let out = cli(
            &daemon,
            &[
                "change",
                "approve",
                &change_id,
                "--operator",
                who,
                "--soft-token",
                token,
            ],
        );
        // The approver reads a card (fields, RFC 3339 times), not JSON.
        let card = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(card.contains(&format!("change {change_id}")), "{card}");
        assert!(card.contains("pending until"), "{card}");
        assert!(
            !card.contains("{\""),
            "raw JSON shown to the approver: {card}"
        );
        let voted = ok(&out);
        assert!(voted.contains("approve"), "{voted}");
    }
    let shown = ok(&cli(&daemon, &["operator", "show", "carol"]));
    assert!(shown.contains("roles: admin"), "{shown}");
}

#[tokio::test]
async fn a_cloned_key_is_suspended_and_shown_as_such_by_operator_show() {
    let (dir, daemon) = dev_daemon();
    let token = dir.dir.path().join("alice.token");
    let t = token.to_str().unwrap();
    ok(&cli(
        &daemon,
        &[
            "key",
            "enroll",
            "--operator",
            "alice",
            "--role",
            "admin",
            "--soft-token",
            t,
        ],
    ));
    let clone = dir.dir.path().join("clone.token");
    std::fs::copy(&token, &clone).unwrap();
    let d = hex::encode(digest("approve"));
    ok(&cli(
        &daemon,
        &[
            "key",
            "sign",
            "--operator",
            "alice",
            "--digest",
            &d,
            "--soft-token",
            t,
        ],
    ));

    let out = cli(
        &daemon,
        &[
            "key",
            "sign",
            "--operator",
            "alice",
            "--digest",
            &d,
            "--soft-token",
            clone.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fido2.counter_regressed"));
    let shown = ok(&cli(&daemon, &["--json", "operator", "show", "alice"]));
    let view: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        view["authenticators"][0]["state"],
        "AUTHENTICATOR_STATE_SUSPENDED"
    );
    assert!(
        view["authenticators"][0]["suspended_reason"]
            .as_str()
            .unwrap()
            .contains("counter")
    );
}

#[tokio::test]
async fn the_usb_path_is_compiled_in_and_fails_cleanly_without_a_key() {
    assert!(
        latchkey::client::authenticator::usb_devices().is_empty(),
        "unplug FIDO2 security keys to run this test (it checks the no-key path)"
    );
    let (_dir, daemon) = dev_daemon();
    let out = cli(
        &daemon,
        &["key", "enroll", "--operator", "alice", "--role", "admin"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no FIDO2 security key found"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let devices = crate::support::latchkey_cli()
        .args(["key", "devices"])
        .output()
        .unwrap();
    assert!(!devices.status.success());
    assert!(String::from_utf8_lossy(&devices.stderr).contains("no FIDO2 security key found"));
}

/// Needs a real FIDO2 key (YubiKey, SoloKey) plugged in and two touches; see docs/hardware.md.
/// `cargo test --test it real_security_key -- --ignored --nocapture`
#[tokio::test]
#[ignore = "needs a physical FIDO2 security key and a person to touch it"]
async fn a_real_security_key_enrolls_with_attestation_and_signs() {
    let dir = DaemonDir::init();
    dir.write_config("");
    let daemon = dir.start();
    let mut key = latchkey::client::authenticator::UsbKey::open(None).unwrap();
    let channel = latchkey::client::connect_unix(&daemon.socket_path())
        .await
        .unwrap();
    let enrolled = latchkey::client::enroll(
        channel.clone(),
        "hardware-test",
        vec!["admin".into()],
        &mut key,
        None,
        "",
    )
    .await
    .unwrap();
    eprintln!(
        "enrolled {} (AAGUID {})",
        enrolled.credential_id, enrolled.aaguid
    );
    let signed = latchkey::client::sign_digest(
        channel,
        "hardware-test",
        digest("hardware test"),
        &mut key,
        None,
    )
    .await
    .unwrap();
    assert_eq!(signed.operator, "hardware-test");
    assert!(signed.counter > 0 || signed.credential_id == enrolled.credential_id);
}
