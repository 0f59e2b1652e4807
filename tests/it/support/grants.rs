//! Grants in integration tests: issuing one through the whole flow, revoking it early,
//! waiting for an audit record, hook scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::pb::audit_service_client::AuditServiceClient;

use crate::support::world::{Bg, World, draft};

/// Waits (on the audit log's live stream, no polling) for the first record from `from` on
/// that `matches`.
pub(crate) async fn await_record(
    bg: &Bg,
    from: u64,
    matches: impl Fn(&pb::AuditRecord) -> bool,
) -> pb::AuditRecord {
    let mut stream = AuditServiceClient::new(bg.local().await)
        .follow_records(pb::FollowRecordsRequest { from_seq: from })
        .await
        .unwrap()
        .into_inner();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(item) = stream.message().await.unwrap() {
            let record = item.record.unwrap();
            if matches(&record) {
                return record;
            }
        }
        panic!("the audit stream ended");
    })
    .await;
    found.expect("the awaited audit record never came (a minute of real time)")
}

pub(crate) async fn all_records(channel: tonic::transport::Channel) -> Vec<pb::AuditRecord> {
    let mut client = AuditServiceClient::new(channel);
    let mut out = Vec::new();
    loop {
        let page = client
            .read_records(pb::ReadRecordsRequest {
                from_seq: out.len() as u64 + 1,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if page.records.is_empty() {
            return out;
        }
        out.extend(page.records);
    }
}

pub(crate) async fn show(bg: &Bg, id: &str) -> pb::GrantInfo {
    show_via(bg.local().await, id).await
}

/// `ShowGrant` over `channel`.
pub(crate) async fn show_via(channel: tonic::transport::Channel, id: &str) -> pb::GrantInfo {
    AccessServiceClient::new(channel)
        .show_grant(pb::ShowGrantRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

/// vault-db asks, carol and dave approve; returns the grant id and the credential.
pub(crate) async fn issue(
    w: &mut World,
    ssh_public_key: Option<&Path>,
    ttl: i64,
) -> access::Collected {
    let created = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(pb::RequestDraft {
                ssh_public_key: ssh_public_key
                    .map(|p| std::fs::read_to_string(p).unwrap())
                    .unwrap_or_default(),
                ..draft(Some(ttl))
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
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
    waiter.await.unwrap().unwrap().1.unwrap()
}

/// An executable shell script in `dir`.
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// erin revokes `grant_id` with a key touch; returns once the revocation is complete.
pub(crate) async fn revoke_early(w: &mut World, grant_id: &str, reason: &str) -> pb::GrantInfo {
    let revoking = start_revocation(w, grant_id, reason).await;
    let subject = format!("grant/{grant_id}");
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revoked" && r.subject == subject
    })
    .await;
    revoking
}

/// erin revokes `grant_id` early; returns as soon as the revocation has started.
pub(crate) async fn start_revocation(w: &mut World, grant_id: &str, reason: &str) -> pb::GrantInfo {
    let begun = AccessServiceClient::new(w.bg.local().await)
        .begin_revoke(pb::BeginRevokeRequest {
            grant_id: grant_id.into(),
            operator: "erin".into(),
            reason: reason.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let signed = w.bg.sign(
        "erin",
        0,
        serde_json::from_str(&begun.request_options_json).unwrap(),
    );
    AccessServiceClient::new(w.bg.local().await)
        .revoke(pb::RevokeRequest {
            grant_id: grant_id.into(),
            reason: reason.into(),
            ceremony_id: begun.ceremony_id,
            credential_json: signed,
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}
