//! Golden records: a store written by an earlier build (`tests/fixtures/golden-store.jsonl`,
//! a few entries of every keyspace, webauthn-rs key and ceremony state included) must decode
//! with this build and encode back to the same thing. A dependency upgrade that changes a
//! stored format fails here instead of on a bastion. Regenerate only on purpose, with
//! `cargo test --test it -- --ignored write_golden_records` (and say why in the commit).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::store::{Keyspace, SledStore, Store as _};

use crate::support::grants::{issue, start_revocation};
use crate::support::world::{World, db_root, world_with};

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-store.jsonl")
}

#[test]
fn golden_records_of_every_keyspace_still_decode_and_encode_the_same() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = entry["keyspace"].as_str().unwrap();
        let ks = *Keyspace::ALL
            .iter()
            .find(|ks| ks.name() == name)
            .unwrap_or_else(|| panic!("fixture names an unknown keyspace {name}"));
        let key = B64.decode(entry["key"].as_str().unwrap()).unwrap();
        let value = B64.decode(entry["value"].as_str().unwrap()).unwrap();
        let again = latchkey::service::codecs::reencode(ks, &key, &value)
            .unwrap_or_else(|e| panic!("{name}/{}: {e}", String::from_utf8_lossy(&key)));
        if value.first() == Some(&b'{') {
            let before: serde_json::Value = serde_json::from_slice(&value).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&again).unwrap();
            assert_eq!(before, after, "{name}/{}", String::from_utf8_lossy(&key));
        } else {
            assert_eq!(value, again, "{name}/{}", String::from_utf8_lossy(&key));
        }
        seen.insert(name.to_owned());
    }
    let all: std::collections::BTreeSet<String> = Keyspace::ALL
        .iter()
        .map(|ks| ks.name().to_owned())
        .collect();
    assert_eq!(
        seen, all,
        "every keyspace has golden records (a new keyspace needs them too)"
    );
}

/// A store with something in every keyspace: operators and keys, scopes, workloads, a pending
/// request and change and ceremony, an active grant, an early revocation a consumer has not
/// acknowledged (KRL serial), a recorded drill.
async fn every_kind_of_record() -> World {
    let mut scope = db_root(3600);
    scope.ssh = Some(pb::SshSpec {
        principals: vec!["root".into()],
        permit_port_forwarding: false,
    });
    scope.revocation_consumers = vec!["vault-plugin".into()];
    let mut w = world_with(scope).await;
    let home = w.bg.dir.dir.path().to_owned();
    let (_, public) = crate::support::sshd::user_key(&home, "golden");
    let revoked = issue(&mut w, Some(&public), 3600).await;
    start_revocation(&mut w, &revoked.grant_id, "golden records").await;
    let (_, public) = crate::support::sshd::user_key(&home, "golden-active");
    let active = issue(&mut w, Some(&public), 3600).await;
    let grant = AccessServiceClient::new(w.bg.local().await)
        .show_grant(pb::ShowGrantRequest {
            id: active.grant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .record_drill(pb::RecordDrillRequest {
            request_id: grant.request_id,
            steps: vec![pb::DrillStep {
                name: "ssh-login".into(),
                outcome: pb::DrillStepOutcome::Failed.into(),
                took: None,
                detail: "golden records".into(),
            }],
        })
        .await
        .unwrap();
    // Pending: a request, a change, a vote ceremony.
    let (_, public) = crate::support::sshd::user_key(&home, "golden-pending");
    let pending = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(pb::RequestDraft {
                ssh_public_key: std::fs::read_to_string(public).unwrap(),
                ..crate::support::world::draft(None)
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    w.bg.propose(
        "golden records",
        pb::propose_change_request::Change::RemoveScope(pb::RemoveScope {
            name: "db-root".into(),
        }),
    )
    .await
    .unwrap();
    w.bg.begin_vote(
        pb::vote_target::Target::RequestId(pending.id),
        "carol",
        pb::Decision::Approve,
    )
    .await
    .unwrap();
    w
}

#[tokio::test]
#[ignore = "writes tests/fixtures/golden-store.jsonl: run on purpose only"]
async fn write_golden_records() {
    let w = every_kind_of_record().await;
    let data = w.bg.dir.data.clone();
    let World { mut bg, .. } = w;
    bg.running.take().unwrap().shutdown().await.unwrap();
    let store = loop {
        match SledStore::open(&data.join("store")) {
            Ok(store) => break store,
            Err(e) if e.to_string().contains("could not acquire lock") => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    let mut out = String::new();
    for ks in Keyspace::ALL {
        let entries = store.scan_from(*ks, b"", usize::MAX).unwrap();
        // A few of each, and every Meta and Drills entry (two kinds of value each).
        let take = if matches!(ks, Keyspace::Meta | Keyspace::Drills) {
            usize::MAX
        } else {
            3
        };
        for (key, value) in entries.into_iter().take(take) {
            out.push_str(
                &serde_json::json!({
                    "keyspace": ks.name(),
                    "key": B64.encode(&key),
                    "value": B64.encode(&value),
                })
                .to_string(),
            );
            out.push('\n');
        }
    }
    std::fs::write(fixture(), out).unwrap();
    drop(bg);
}
