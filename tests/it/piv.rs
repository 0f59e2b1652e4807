//! Issue 9 acceptance: PIV operators with the software PIV signer (a synthetic attestation
//! hierarchy carrying Yubico's extensions, trusted through `[piv] dev_roots` in dev mode), the
//! real YubiKey attestation pair through the daemon, and one quorum for FIDO2 and PIV keys.

use base64::Engine as _;
use latchkey::client::access::Target;
use latchkey::client::authenticator::Authenticator;
use latchkey::client::piv_card::{SoftPiv, SoftPivSpec};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::operator_service_client::OperatorServiceClient;
use latchkey::verify::piv::{PinPolicy, TouchPolicy};

use crate::support::DaemonDir;
use crate::support::world::{Bg, code, db_root};

fn soft(serial: u32, touch: TouchPolicy, attested: bool) -> SoftPiv {
    SoftPiv::generate(&SoftPivSpec {
        serial,
        touch,
        pin: PinPolicy::Once,
        attested,
        ..SoftPivSpec::default()
    })
    .unwrap()
}

/// A daemon whose `[piv]` trusts the roots of `trusted` (dev mode) and requires `touch`.
async fn daemon(trusted: &[&SoftPiv], touch: Option<&str>) -> Bg {
    let dir = DaemonDir::init();
    let roots = dir.dir.path().join("dev-roots.pem");
    let bundle: String = trusted.iter().map(|k| k.state.root_pem.clone()).collect();
    std::fs::write(&roots, bundle).unwrap();
    let touch = touch.map_or_else(String::new, |t| format!("require_touch = \"{t}\"\n"));
    let extra = format!("[piv]\n{touch}dev_roots = [\"{}\"]\n", roots.display());
    Bg::start_with(dir, &extra).await
}

/// Begins an enrollment for `operator` and returns the ceremony and the PIV challenge.
async fn begin(bg: &Bg, operator: &str) -> (String, Vec<u8>) {
    let begun = OperatorServiceClient::new(bg.local().await)
        .begin_enrollment(pb::BeginEnrollmentRequest {
            operator: operator.into(),
            roles: vec!["admin".into()],
        })
        .await
        .unwrap()
        .into_inner();
    (begun.ceremony_id, begun.piv_challenge)
}

async fn finish(
    bg: &Bg,
    ceremony: &str,
    json: String,
) -> Result<pb::FinishEnrollmentResponse, tonic::Status> {
    OperatorServiceClient::new(bg.local().await)
        .finish_enrollment(pb::FinishEnrollmentRequest {
            ceremony_id: ceremony.into(),
            credential_json: json,
            note: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_soft_piv_key_enrolls_and_approves_and_every_bad_attestation_is_refused_distinctly() {
    let mut good = soft(30_000_001, TouchPolicy::Always, true);
    let mut tampered = soft(30_000_002, TouchPolicy::Always, true);
    let mut never = soft(30_000_003, TouchPolicy::Never, true);
    let mut imported = soft(30_000_004, TouchPolicy::Always, false);
    let mut stranger = soft(30_000_005, TouchPolicy::Always, true);
    let other = soft(30_000_006, TouchPolicy::Always, true);
    let bg = daemon(
        &[&good, &tampered, &never, &imported, &other],
        Some("always"),
    )
    .await;
    let before = bg.snapshot();
    let mut seen = std::collections::BTreeSet::new();
    let mut refused = |result: Result<pb::FinishEnrollmentResponse, tonic::Status>,
                       expected: &str| {
        let err = result.unwrap_err();
        assert_eq!(code(&err), expected, "{err}");
        assert!(seen.insert(expected.to_owned()), "{expected} twice");
    };

    // A chain to a root the daemon does not trust.
    let (id, challenge) = begin(&bg, "pat").await;
    refused(
        finish(&bg, &id, stranger.enroll(None, "", &challenge).unwrap()).await,
        "piv.untrusted_chain",
    );
    // A tampered extension: the touch policy byte flipped from always to never.
    let (id, challenge) = begin(&bg, "pat").await;
    let mut json: serde_json::Value =
        serde_json::from_str(&tampered.enroll(None, "", &challenge).unwrap()).unwrap();
    let pem = json["attestation"].as_str().unwrap().to_owned();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let policy_oid = [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xc4, 0x0a, 0x03, 0x08];
    let at = der
        .windows(policy_oid.len())
        .position(|w| w == policy_oid)
        .unwrap();
    // OID, then OCTET STRING (04 02) holding PIN and touch policy.
    let touch_byte = at + policy_oid.len() + 3;
    assert_eq!(der[touch_byte], 2, "touch policy always");
    der[touch_byte] = 1;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let b64 = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    json["attestation"] =
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").into();
    refused(
        finish(&bg, &id, json.to_string()).await,
        "piv.bad_signature",
    );
    // An attestation for another public key: `good`'s certificates, `other`'s key.
    let (id, challenge) = begin(&bg, "pat").await;
    let mut json: serde_json::Value =
        serde_json::from_str(&good.enroll(None, "", &challenge).unwrap()).unwrap();
    json["public_key"] = base64::engine::general_purpose::STANDARD
        .encode(other.public_key_spki().unwrap())
        .into();
    json["signature"] = base64::engine::general_purpose::STANDARD
        .encode(other.sign(&challenge).unwrap())
        .into();
    refused(finish(&bg, &id, json.to_string()).await, "piv.key_mismatch");
    // Touch policy never where always is required.
    let (id, challenge) = begin(&bg, "pat").await;
    refused(
        finish(&bg, &id, never.enroll(None, "", &challenge).unwrap()).await,
        "piv.touch_policy",
    );
    // An imported key: nothing attests that it was generated on the device.
    let (id, challenge) = begin(&bg, "pat").await;
    refused(
        finish(&bg, &id, imported.enroll(None, "", &challenge).unwrap()).await,
        "piv.not_attested",
    );
    // A signature by another key over the challenge: no proof of possession.
    let (id, challenge) = begin(&bg, "pat").await;
    let mut json: serde_json::Value =
        serde_json::from_str(&good.enroll(None, "", &challenge).unwrap()).unwrap();
    json["signature"] = base64::engine::general_purpose::STANDARD
        .encode(other.sign(&challenge).unwrap())
        .into();
    refused(finish(&bg, &id, json.to_string()).await, "piv.bad_response");
    assert_eq!(bg.snapshot(), before, "no refusal changed the store");

    // The good key enrolls, with what its attestation says.
    let (id, challenge) = begin(&bg, "pat").await;
    let enrolled = finish(&bg, &id, good.enroll(None, "", &challenge).unwrap())
        .await
        .unwrap();
    assert_eq!(enrolled.credential_id, "piv-30000001-9a");
    let shown = latchkey::client::show_operator(bg.local().await, "pat")
        .await
        .unwrap();
    let key = &shown.authenticators[0];
    assert_eq!(
        (
            key.kind.as_str(),
            key.piv_serial,
            key.piv_slot.as_str(),
            key.piv_touch_policy.as_str()
        ),
        ("piv", 30_000_001, "9a", "always")
    );
    assert!(!key.attested, "a dev-mode root is not Yubico's attestation");

    // One device, one operator: the same YubiKey serial cannot be enrolled to someone else.
    let (id, challenge) = begin(&bg, "sam").await;
    let err = finish(&bg, &id, good.enroll(None, "", &challenge).unwrap())
        .await
        .unwrap_err();
    assert_eq!(code(&err), "operator.device_taken");

    // Approval: the PIV key signs the challenge bound to a digest; the evidence verifies
    // offline.
    let digest: [u8; 32] = sha2::Sha256::digest(b"approve r1").into();
    let signed = latchkey::client::sign_digest(bg.local().await, "pat", digest, &mut good, None)
        .await
        .unwrap();
    assert_eq!(signed.credential_id, "piv-30000001-9a");
    assert!(signed.user_verified, "PIN policy once verifies the user");
    let file = bg.dir.dir.path().join("audit.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    latchkey::client::export_audit(bg.local().await, &mut out)
        .await
        .unwrap();
    let keys = latchkey::credential::keys::DaemonKeys::load(&bg.dir.data).unwrap();
    let report = latchkey::audit::verify::verify(
        std::io::BufReader::new(std::fs::File::open(&file).unwrap()),
        &latchkey::audit::signing_key(&keys.audit)
            .unwrap()
            .verifying_key(),
    )
    .unwrap();
    assert_eq!(report.evidence_verified, 1);
    bg.stop().await;
}

use sha2::Digest as _;

#[tokio::test]
async fn the_real_yubikey_attestation_verifies_in_the_daemon_and_is_refused_for_its_touch_policy() {
    let attestation =
        include_str!("../../trust/fixtures/yubikey-5.4.3-slot9a-attestation.pem").to_owned();
    let device = include_str!("../../trust/fixtures/yubikey-5.4.3-f9-device.pem").to_owned();
    let cert = latchkey::verify::piv::parse_certificate("fixture", attestation.as_bytes()).unwrap();
    use der::Encode as _;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    let json = serde_json::json!({
        "type": "piv",
        "attestation": attestation,
        "device": device,
        "public_key": base64::engine::general_purpose::STANDARD.encode(&spki),
        "signature": base64::engine::general_purpose::STANDARD.encode([0x30, 0x00]),
    })
    .to_string();

    // Touch required: refused because the key's touch policy is never.
    let strict = daemon(&[], Some("always")).await;
    let (id, _) = begin(&strict, "pat").await;
    let err = finish(&strict, &id, json.clone()).await.unwrap_err();
    assert_eq!(code(&err), "piv.touch_policy", "{err}");
    assert!(err.message().contains("touch policy never"), "{err}");
    strict.stop().await;

    // No touch policy: the chain to the pinned Yubico root and the extensions pass; only the
    // proof of possession (we hold no private key for this public fixture) is missing.
    let lenient = daemon(&[], None).await;
    let (id, _) = begin(&lenient, "pat").await;
    let err = finish(&lenient, &id, json).await.unwrap_err();
    assert_eq!(code(&err), "piv.bad_response", "{err}");
    assert!(err.message().contains("proof of possession"), "{err}");
    lenient.stop().await;
}

#[tokio::test]
async fn fido2_and_piv_approvals_count_toward_one_quorum_and_one_operator_counts_once() {
    use pb::propose_change_request::Change as C;
    let carol_piv = soft(40_000_001, TouchPolicy::Always, true);
    let quinn_piv = soft(40_000_002, TouchPolicy::Always, true);
    let rita_piv = soft(40_000_003, TouchPolicy::Cached, true);
    let mut bg = daemon(&[&carol_piv, &quinn_piv, &rita_piv], None).await;
    bg.enroll("carol", "dba-oncall", "").await.unwrap();
    bg.enroll_key("carol", "dba-oncall", "", Box::new(carol_piv))
        .await
        .unwrap();
    bg.enroll_key("quinn", "dba-oncall", "", Box::new(quinn_piv))
        .await
        .unwrap();
    bg.enroll_key("rita", "dba-oncall", "", Box::new(rita_piv))
        .await
        .unwrap();
    let mut scope = db_root(600);
    scope.requester_roles = vec!["requesters".into()];
    // This scope wants PIV approvals from keys that ask for a touch every time.
    scope.policy.as_mut().unwrap().piv_touch_policy = "always".into();
    bg.propose("bootstrap", C::PutScope(scope)).await.unwrap();
    let vault = crate::support::ClientCert::generate(bg.dir.dir.path(), "vault-db");
    bg.propose(
        "bootstrap",
        C::PutWorkload(pb::PutWorkload {
            name: "vault-db".into(),
            owner: "platform-team".into(),
            certificate_pem: std::fs::read_to_string(&vault.cert).unwrap(),
            scopes: vec!["db-root".into()],
            introspect: false,
        }),
    )
    .await
    .unwrap();
    let request = pb::access_service_client::AccessServiceClient::new(bg.tls(&vault).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(crate::support::world::draft(None)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let target = Target::Request(request.id.clone());

    // Carol approves with her FIDO2 key; her PIV key then counts for nothing more.
    let first = bg
        .vote(target.clone(), "carol", Decision::Approve, 0)
        .await
        .unwrap();
    assert_eq!((first.state.as_str(), first.approvals), ("pending", 1));
    let err = bg
        .vote(target.clone(), "carol", Decision::Approve, 1)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "approval.already_counted");
    // Rita's PIV key caches touches: the scope refuses it, and nothing changes.
    let before = bg.snapshot();
    let err = bg
        .vote(target.clone(), "rita", Decision::Approve, 0)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "piv.touch_policy", "{err}");
    assert_eq!(bg.snapshot(), before);
    // Quinn's PIV approval completes the same quorum.
    let second = bg
        .vote(target, "quinn", Decision::Approve, 0)
        .await
        .unwrap();
    assert_eq!((second.state.as_str(), second.approvals), ("issued", 2));
    bg.stop().await;
}

/// Needs a real YubiKey with a generated (attested) key in slot 9a, pcscd running, the PIN and
/// maybe a touch; see docs/hardware.md.
/// `cargo test --test it a_real_piv_key -- --ignored --nocapture`
#[tokio::test]
#[ignore = "needs a physical YubiKey (PIV), pcscd, its PIN and a person to touch it"]
async fn a_real_piv_key_enrolls_with_yubico_attestation_and_approves() {
    let dir = DaemonDir::init();
    dir.write_config("");
    let daemon = dir.start();
    let pin = std::env::var("LATCHKEY_PIV_PIN").ok();
    let mut key = latchkey::client::piv_card::UsbPiv::open("9a", pin).unwrap();
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
    eprintln!("enrolled {}", enrolled.credential_id);
    let digest: [u8; 32] = sha2::Sha256::digest(b"hardware test").into();
    let signed = latchkey::client::sign_digest(channel, "hardware-test", digest, &mut key, None)
        .await
        .unwrap();
    assert_eq!(signed.credential_id, enrolled.credential_id);
}
