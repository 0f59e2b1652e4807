//! Issue 6 acceptance: revocation at expiry and early, each sink confirmed independently of
//! whoever asked, the KRL with a real sshd, consumers, hooks, and startup after downtime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use latchkey::base::clock::{Clock as _, SystemClock, Timestamp};
use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::pb::audit_service_client::AuditServiceClient;
use latchkey::store::{Keyspace, SledStore, Store, Txn};

use crate::support::DaemonDir;
use crate::support::grants::*;
use crate::support::sshd::{LoginOutcome, Sshd, krl_revokes, user_key};
use crate::support::world::{code, db_root, draft, secs, world_with};

fn ssh_root() -> Option<pb::SshSpec> {
    Some(pb::SshSpec {
        principals: vec!["root".into()],
        permit_port_forwarding: false,
    })
}

#[tokio::test]
async fn a_grant_past_its_expiry_is_revoked_with_every_sink_confirmed_in_order() {
    let hooks = tempfile::tempdir().unwrap();
    let log = hooks.path().join("hook.log");
    let hook = script(
        hooks.path(),
        "end-sessions.sh",
        &format!(
            "echo \"$LATCHKEY_GRANT_ID $LATCHKEY_SCOPE $LATCHKEY_SSH_SERIAL $LATCHKEY_REASON\" >> {}",
            log.display()
        ),
    );
    let mut scope = db_root(600);
    scope.ssh = ssh_root();
    scope.revocation_consumers = vec!["vault-plugin".into()];
    scope.revocation_hook = vec![hook.display().to_string()];
    let mut w = world_with(scope).await;

    // The consumer waits on its stream and acknowledges what it is sent, on its own identity.
    let plugin = w.bg.tls(&w.plugin).await;
    let consumer = tokio::spawn(async move {
        let mut stream = AccessServiceClient::new(plugin.clone())
            .watch_revocations(pb::WatchRevocationsRequest {})
            .await
            .unwrap()
            .into_inner();
        let grant = stream.message().await.unwrap().unwrap().grant.unwrap();
        AccessServiceClient::new(plugin)
            .acknowledge_revocation(pb::AcknowledgeRevocationRequest {
                grant_id: grant.id.clone(),
            })
            .await
            .unwrap();
        grant.id
    });

    let (_, public) = user_key(w.bg.dir.dir.path(), "responder");
    let credential = issue(&mut w, Some(&public), 600).await;
    let grant = credential.grant_id.clone();
    assert_eq!(show(&w.bg, &grant).await.state(), pb::GrantState::Active);

    w.bg.clock.advance(Duration::from_secs(601));
    let subject = format!("grant/{grant}");
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revoked" && r.subject == subject
    })
    .await;
    assert_eq!(consumer.await.unwrap(), grant);

    let shown = show(&w.bg, &grant).await;
    assert_eq!(shown.state(), pb::GrantState::Revoked);
    assert_eq!(shown.revocation_reason, "expired");
    let sinks: Vec<(&str, bool)> = shown
        .sinks
        .iter()
        .map(|s| (s.sink.as_str(), s.confirmed))
        .collect();
    assert_eq!(
        sinks,
        vec![
            ("internal", true),
            ("krl", true),
            ("consumer/vault-plugin", true),
            ("hook", true)
        ]
    );
    assert!(
        shown.sinks[1].detail.contains("valid-before"),
        "{:?}",
        shown.sinks[1]
    );
    let hook_ran = std::fs::read_to_string(&log).unwrap();
    assert!(
        hook_ran.contains(&format!("{grant} db-root {} expired", shown.ssh_serial)),
        "{hook_ran}"
    );

    // The audit log tells it in order: issued, revoking, each sink, revoked.
    let records = all_records(w.bg.local().await).await;
    let seq_of = |event: &str| {
        records
            .iter()
            .find(|r| r.event == event && r.subject == subject)
            .unwrap_or_else(|| panic!("no {event}"))
            .seq
    };
    let issued = seq_of("grant.issued");
    let revoking = seq_of("grant.revoking");
    let acknowledged = seq_of("revocation.acknowledged");
    let hook_confirmed = seq_of("revocation.sink_confirmed");
    let revoked = seq_of("grant.revoked");
    assert!(issued < revoking, "{issued} < {revoking}");
    assert!(revoking < acknowledged && revoking < hook_confirmed);
    assert!(acknowledged < revoked && hook_confirmed < revoked);
    w.bg.stop().await;
}

#[tokio::test]
async fn an_early_revocation_reaches_a_real_sshd_through_the_krl_long_before_expiry() {
    let mut scope = db_root(600);
    scope.ssh = ssh_root();
    let mut w = world_with(scope).await;
    let home = w.bg.dir.dir.path().to_owned();
    let (private, public) = user_key(&home, "responder");
    let credential = issue(&mut w, Some(&public), 3600).await;
    let cert = home.join("responder-cert.pub");
    std::fs::write(&cert, &credential.ssh_certificate).unwrap();

    let krl = w.bg.running().authority().krl_path().to_owned();
    assert!(
        krl.exists(),
        "an (empty) KRL exists from the start, for sshd"
    );
    let keys = latchkey::credential::keys::DaemonKeys::load(&w.bg.dir.data).unwrap();
    let sshd = Sshd::start(&keys.ssh_ca.public_key().to_openssh().unwrap(), Some(&krl));
    assert_eq!(sshd.login("root", &private, &cert), LoginOutcome::Accepted);

    // Any operator may revoke with a key touch; no quorum.
    let revoking = revoke_early(
        &mut w,
        &credential.grant_id,
        "responder's laptop was stolen",
    )
    .await;
    assert_ne!(revoking.state(), pb::GrantState::Active);

    match sshd.login("root", &private, &cert) {
        LoginOutcome::Refused(stderr) => assert!(stderr.contains("Permission denied"), "{stderr}"),
        LoginOutcome::Accepted => panic!("a revoked certificate still logs in"),
    }
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());
    assert!(
        krl_revokes(&krl, &cert),
        "ssh-keygen -Q finds it in the KRL"
    );

    let shown = show(&w.bg, &credential.grant_id).await;
    assert_eq!(shown.state(), pb::GrantState::Revoked);
    assert!(shown.revocation_reason.contains("operator/erin"));
    let krl_sink = shown.sinks.iter().find(|s| s.sink == "krl").unwrap();
    assert!(krl_sink.detail.contains(&shown.ssh_serial.to_string()));
    // Still long before its expiry, by the daemon's clock.
    assert!(
        w.bg.clock.now()
            < Timestamp::from_system_time(
                std::time::SystemTime::try_from(shown.expires_at.unwrap()).unwrap()
            )
    );
    w.bg.stop().await;
}

/// What `ssh-keygen -Q` says of `cert` against `krl`: whether the KRL revokes it.

#[tokio::test]
async fn each_early_revocation_stays_in_the_krl_across_restarts_until_its_certificate_expires() {
    let mut scope = db_root(600);
    scope.ssh = ssh_root();
    let mut w = world_with(scope).await;
    let home = w.bg.dir.dir.path().to_owned();
    let mut certs = Vec::new();
    for (name, ttl) in [("short", 600), ("long", 3600)] {
        let (_, public) = user_key(&home, name);
        let credential = issue(&mut w, Some(&public), ttl).await;
        let cert = home.join(format!("{name}-cert.pub"));
        std::fs::write(&cert, &credential.ssh_certificate).unwrap();
        certs.push((credential.grant_id, cert));
    }
    let krl = w.bg.running().authority().krl_path().to_owned();
    assert!(!krl_revokes(&krl, &certs[0].1) && !krl_revokes(&krl, &certs[1].1));

    // Each publication lists every revoked serial so far, not only the newest.
    revoke_early(&mut w, &certs[0].0, "first").await;
    assert!(krl_revokes(&krl, &certs[0].1));
    revoke_early(&mut w, &certs[1].0, "second").await;
    assert!(krl_revokes(&krl, &certs[0].1) && krl_revokes(&krl, &certs[1].1));

    // A restart rewrites the KRL from the store.
    std::fs::remove_file(&krl).unwrap();
    w.bg.restart(|_| {}).await;
    assert!(krl_revokes(&krl, &certs[0].1) && krl_revokes(&krl, &certs[1].1));

    // Past the short certificate's valid-before, the next publication drops it (sshd refuses
    // it as expired) and keeps the long one.
    w.bg.clock.advance(Duration::from_secs(601));
    let (_, public) = user_key(&home, "third");
    let third = issue(&mut w, Some(&public), 3600).await;
    let third_cert = home.join("third-cert.pub");
    std::fs::write(&third_cert, &third.ssh_certificate).unwrap();
    revoke_early(&mut w, &third.grant_id, "third").await;
    assert!(!krl_revokes(&krl, &certs[0].1), "expired serial pruned");
    assert!(krl_revokes(&krl, &certs[1].1) && krl_revokes(&krl, &third_cert));
    w.bg.stop().await;
}

#[tokio::test]
async fn a_store_that_lost_a_revocation_does_not_shrink_the_published_krl() {
    let mut scope = db_root(600);
    scope.ssh = ssh_root();
    let mut w = world_with(scope).await;
    let home = w.bg.dir.dir.path().to_owned();
    let (_, public) = user_key(&home, "rolled-back");
    let credential = issue(&mut w, Some(&public), 3600).await;
    let cert = home.join("rolled-back-cert.pub");
    std::fs::write(&cert, &credential.ssh_certificate).unwrap();
    revoke_early(&mut w, &credential.grant_id, "compromised laptop").await;
    let krl = w.bg.running().authority().krl_path().to_owned();
    assert!(krl_revokes(&krl, &cert));

    // The store goes back in time: its record of the revoked serial is gone.
    w.bg.restart(|dir| {
        let store = SledStore::open(&dir.data.join("store")).unwrap();
        let mut txn = Txn::new();
        for (key, _) in store
            .scan_from(Keyspace::KrlSerials, b"", usize::MAX)
            .unwrap()
        {
            txn.delete(Keyspace::KrlSerials, key);
        }
        store.commit(&txn).unwrap();
    })
    .await;
    assert!(
        krl_revokes(&krl, &cert),
        "the KRL written at start still revokes the still-valid certificate"
    );
    // ...and keeps it on later publications, until the certificate must have expired.
    let (_, public) = user_key(&home, "next");
    let next = issue(&mut w, Some(&public), 3600).await;
    revoke_early(&mut w, &next.grant_id, "second").await;
    assert!(krl_revokes(&krl, &cert));
    w.bg.clock
        .advance(latchkey::base::constants::MAX_GRANT_TTL + Duration::from_secs(1));
    let (_, public) = user_key(&home, "later");
    let later = issue(&mut w, Some(&public), 3600).await;
    revoke_early(&mut w, &later.grant_id, "third").await;
    assert!(
        !krl_revokes(&krl, &cert),
        "dropped once it must have expired"
    );
    w.bg.stop().await;
}

#[tokio::test]
async fn a_silent_consumer_leaves_the_revocation_unconfirmed_until_it_acknowledges() {
    let hooks = tempfile::tempdir().unwrap();
    let count = hooks.path().join("attempts");
    // Fails twice ("bastion unreachable"), then succeeds.
    let hook = script(
        hooks.path(),
        "flaky.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             if [ $n -le 2 ]; then echo 'bastion unreachable' >&2; exit 1; fi\nexit 0",
            c = count.display()
        ),
    );
    let mut scope = db_root(600);
    scope.revocation_consumers = vec!["vault-plugin".into()];
    scope.revocation_hook = vec![hook.display().to_string()];
    scope.revocation_deadline = Some(secs(60));
    let mut w = world_with(scope).await;
    let credential = issue(&mut w, None, 3600).await;
    let grant = credential.grant_id.clone();
    let subject = format!("grant/{grant}");

    // The holder relinquishes it; revocation starts.
    let relinquished = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .relinquish(pb::RelinquishRequest {
            grant_id: grant.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(relinquished.state(), pb::GrantState::Revoking);
    let first_failure = await_record(&w.bg, 1, |r| {
        r.event == "revocation.sink_failed" && r.subject == subject
    })
    .await;
    assert!(
        first_failure.json.contains("bastion unreachable"),
        "{}",
        first_failure.json
    );

    // Past the deadline with the consumer silent: revocation-unconfirmed, and listed so.
    w.bg.clock.advance(Duration::from_secs(61));
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revocation_unconfirmed" && r.subject == subject
    })
    .await;
    let listed = AccessServiceClient::new(w.bg.local().await)
        .list_grants(pb::ListGrantsRequest {
            state: pb::GrantState::RevocationUnconfirmed.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(
        listed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        vec![grant.as_str()]
    );
    let counts = w.bg.running().authority().revocation_counts().unwrap();
    assert_eq!((counts.revoking, counts.unconfirmed), (0, 1));

    // The hook is retried with backoff until it succeeds, each failure reported.
    await_record(&w.bg, first_failure.seq + 1, |r| {
        r.event == "revocation.sink_failed" && r.subject == subject
    })
    .await;
    w.bg.clock.advance(Duration::from_secs(5));
    await_record(&w.bg, 1, |r| {
        r.event == "revocation.sink_confirmed" && r.subject == subject
    })
    .await;
    let shown = show(&w.bg, &grant).await;
    assert_eq!(shown.state(), pb::GrantState::RevocationUnconfirmed);
    let hook_sink = shown.sinks.iter().find(|s| s.sink == "hook").unwrap();
    assert!(
        hook_sink.confirmed && hook_sink.attempts == 3,
        "{hook_sink:?}"
    );

    // Only a consumer may acknowledge; when the awaited one does, the grant is revoked.
    let err = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .acknowledge_revocation(pb::AcknowledgeRevocationRequest {
            grant_id: grant.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "revocation.not_consumer");
    let acked = AccessServiceClient::new(w.bg.tls(&w.plugin).await)
        .acknowledge_revocation(pb::AcknowledgeRevocationRequest {
            grant_id: grant.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state(), pb::GrantState::Revoked);
    assert_eq!(show(&w.bg, &grant).await.state(), pb::GrantState::Revoked);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_workload_cannot_relinquish_a_grant_it_does_not_hold() {
    let mut w = world_with(db_root(600)).await;
    let credential = issue(&mut w, None, 600).await;
    let before = w.bg.snapshot();
    let err = AccessServiceClient::new(w.bg.tls(&w.plugin).await)
        .relinquish(pb::RelinquishRequest {
            grant_id: credential.grant_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "grant.not_holder");
    assert_eq!(w.bg.snapshot(), before);
    let answer = AccessServiceClient::new(w.bg.tls(&w.plugin).await)
        .introspect(pb::IntrospectRequest {
            token: credential.bearer_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active, "still active");
    w.bg.stop().await;
}

#[tokio::test]
async fn a_grant_past_its_expiry_is_neither_counted_active_nor_given_up_before_the_scheduler_revokes_it()
 {
    let mut w = world_with(db_root(600)).await;
    let credential = issue(&mut w, None, 600).await;
    let grant = credential.grant_id.clone();
    let from = w.bg.running().authority().audit().head_seq() + 1;
    // Past its expiry on the daemon's clock; the scheduler notices within its next round.
    w.bg.clock.advance(Duration::from_secs(601));

    // Whether or not that round has run yet, the grant is no longer active: not in the
    // metrics, and not the holder's to relinquish (it is the expiry's to revoke).
    let metrics = w.bg.running().authority().metrics_snapshot().unwrap();
    assert_eq!(metrics.grants_active, 0);
    assert_eq!(metrics.revoking + metrics.revoked, 1, "{metrics:?}");
    let err = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .relinquish(pb::RelinquishRequest {
            grant_id: grant.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), "grant.not_active");

    // The scheduler revokes it for its expiry, not as relinquished.
    let expired = await_record(&w.bg, from, |r| r.event == "grants.expired").await;
    assert_eq!(listed_as_expired(&[expired]), vec![grant.clone()]);
    let shown = show(&w.bg, &grant).await;
    assert_eq!(shown.state(), pb::GrantState::Revoked);
    assert_eq!(shown.revocation_reason, "expired");
    let metrics = w.bg.running().authority().metrics_snapshot().unwrap();
    assert_eq!((metrics.grants_active, metrics.revoked), (0, 1));
    w.bg.stop().await;
}

/// How seeded grants' expiry-queue entries are written.
#[derive(Clone, Copy, PartialEq)]
enum QueueEntries {
    /// With the grant's token hash and scope, as latchkey writes them now.
    Current,
    /// Empty, as versions before the entries held them wrote them.
    Empty,
}

/// Writes `expired` grants of `scope` that expired a minute before `now` and `live` ones that
/// expire an hour after it, straight into a stopped daemon's store, with their `grant.issued`
/// records (as a restored backup would hold them). Ids are `{prefix}-NNNNNN`.
fn seed_grants(
    data: &Path,
    now: Timestamp,
    (prefix, scope): (&str, &str),
    (expired, live): (usize, usize),
    entries: QueueEntries,
) {
    use latchkey::audit::{Actor, AuditLog, CheckpointPolicy, Event};
    use latchkey::domain::grant::{ExpiryEntry, Grant, GrantState, expiry_key, token_hash};
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
    let ids: Vec<usize> = (0..expired + live).collect();
    for chunk in ids.chunks(500) {
        let mut txn = Txn::new();
        let mut events = Vec::new();
        for &i in chunk {
            let id = format!("{prefix}-{i:06}");
            let expires_at = if i < expired {
                Timestamp::from_unix_millis(now.unix_millis() - 60_000)
            } else {
                now.plus(Duration::from_secs(3600))
            };
            let hash = hex::encode(token_hash(&format!("lkbg_{prefix}-{i}")));
            let grant = Grant {
                id: id.clone(),
                request_id: format!("{prefix}-request-{i}"),
                scope: scope.into(),
                requester: latchkey::domain::request::Requester::Workload {
                    name: "vault-db".into(),
                },
                issued_at: Timestamp::from_unix_millis(now.unix_millis() - 3_600_000),
                expires_at,
                bearer_sha256: Some(hash.clone()),
                ssh: None,
                state: GrantState::Active,
                revocation: None,
                sealed_bearer: None,
            };
            let entry = match entries {
                QueueEntries::Current => ExpiryEntry::of(&grant).encode(),
                QueueEntries::Empty => Vec::new(),
            };
            txn.put(id.as_bytes(), &grant)
                .unwrap()
                .put_raw(Keyspace::GrantExpiry, expiry_key(expires_at, &id), entry)
                .put_raw(Keyspace::GrantTokens, hash.as_bytes(), id.as_bytes());
            events.push(Event {
                event: "grant.issued",
                actor: Actor::Daemon,
                subject: format!("grant/{id}"),
                details: serde_json::json!({ "scope": scope, "expires_at": expires_at }),
                evidence: None,
            });
        }
        audit.commit_events(txn, events).unwrap();
    }
    store.flush().unwrap();
}

/// The grants listed by `grants.expired` records, in the order listed.
fn listed_as_expired(records: &[pb::AuditRecord]) -> Vec<String> {
    let mut listed = Vec::new();
    for record in records.iter().filter(|r| r.event == "grants.expired") {
        let record: serde_json::Value = serde_json::from_str(&record.json).unwrap();
        assert_eq!(record["details"]["reason"], "expired");
        for grant in record["details"]["grants"].as_array().unwrap() {
            listed.push(grant["grant"].as_str().unwrap().to_owned());
        }
    }
    listed
}

#[tokio::test]
async fn after_downtime_every_expired_grant_is_revoked_before_the_first_call_is_served() {
    let dir = DaemonDir::init();
    dir.write_config("");
    seed_grants(
        &dir.data,
        SystemClock.now(),
        ("seeded", "db-root"),
        (10_000, 100),
        QueueEntries::Current,
    );
    let daemon = dir.start();

    // The very first call writes a record (a scope, applied at once during genesis): it must
    // come after the record that revoked all 10,000.
    let first =
        latchkey::pb::trust_service_client::TrustServiceClient::new(daemon.unix_channel().await)
            .propose_change(pb::ProposeChangeRequest {
                note: "first call after the restart".into(),
                change: Some(pb::propose_change_request::Change::PutScope(db_root(600))),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .change
            .unwrap();
    let records = all_records(daemon.unix_channel().await).await;
    let first_seq = records
        .iter()
        .find(|r| r.event == "change.proposed" && r.subject == format!("change/{}", first.id))
        .unwrap()
        .seq;
    // Nothing outside latchkey confirms these (no consumer, no hook): one record revokes
    // them all before serving, and the grants are rewritten after.
    let at_start: Vec<&pb::AuditRecord> = records
        .iter()
        .filter(|r| r.event == "grants.expired_while_down")
        .collect();
    assert_eq!(at_start.len(), 1);
    assert!(at_start[0].seq < first_seq);
    let record: serde_json::Value = serde_json::from_str(&at_start[0].json).unwrap();
    assert_eq!(record["details"]["reason"], "expired");
    assert_eq!(record["details"]["grants"], 10_000);
    for id in ["seeded-000000", "seeded-009999"] {
        let shown = show_via(daemon.unix_channel().await, id).await;
        assert!(
            matches!(
                shown.state(),
                pb::GrantState::Revoking | pb::GrantState::Revoked
            ),
            "{id}: {:?}",
            shown.state()
        );
    }

    // The scheduler rewrites each grant, in `grants.expired` batches; wait for the last one
    // on the audit stream.
    let mut stream = AuditServiceClient::new(daemon.unix_channel().await)
        .follow_records(pb::FollowRecordsRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut listed = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while listed < 10_000 {
            let record = stream.message().await.unwrap().unwrap().record.unwrap();
            listed += listed_as_expired(std::slice::from_ref(&record)).len();
            seen.push(record);
        }
    })
    .await
    .expect("every expired grant rewritten within a minute of real time");
    let mut revoked = listed_as_expired(&seen);
    revoked.sort();
    let expected: Vec<String> = (0..10_000).map(|i| format!("seeded-{i:06}")).collect();
    assert_eq!(
        revoked, expected,
        "each expired grant is listed exactly once"
    );
    assert!(!seen.iter().any(|r| r.event == "grant.revoked"));
    for id in ["seeded-000000", "seeded-004321", "seeded-009999"] {
        let shown = show_via(daemon.unix_channel().await, id).await;
        assert_eq!(shown.state(), pb::GrantState::Revoked, "{id}");
        assert_eq!(shown.revocation_reason, "expired", "{id}");
    }
    let active = AccessServiceClient::new(daemon.unix_channel().await)
        .list_grants(pb::ListGrantsRequest {
            state: pb::GrantState::Active.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(active.len(), 100, "the live ones are untouched");
    assert!(active.iter().all(|g| g.id.as_str() >= "seeded-010000"));
    assert!(
        daemon.log_text().contains("\"expired\":10000"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test]
async fn after_downtime_grants_a_consumer_must_confirm_and_older_queue_entries_are_revoked_one_by_one_before_serving()
 {
    let mut scope = db_root(600);
    scope.revocation_consumers = vec!["vault-plugin".into()];
    let mut w = world_with(scope).await;
    let credential = issue(&mut w, None, 60).await;
    let grant = credential.grant_id.clone();

    // Down for two minutes; meanwhile a restored backup adds grants whose queue entries were
    // written by an older latchkey (empty: no scope to tell whether a consumer must confirm).
    let clock = w.bg.clock.clone();
    w.bg.restart(|dir| {
        clock.advance(Duration::from_secs(120));
        seed_grants(
            &dir.data,
            clock.now(),
            ("older", "elsewhere"),
            (30, 5),
            QueueEntries::Empty,
        )
    })
    .await;

    // Before any call: the consumer's grant is revoking, its consumer not yet told; the
    // older entries are revoked, audited in a batch; nothing was left for after the start.
    let records = all_records(w.bg.local().await).await;
    let subject = format!("grant/{grant}");
    assert!(
        records
            .iter()
            .any(|r| r.event == "grant.revoking" && r.subject == subject)
    );
    assert!(
        !records
            .iter()
            .any(|r| r.event == "grants.expired_while_down")
    );
    let mut older = listed_as_expired(&records);
    older.sort();
    let expected: Vec<String> = (0..30).map(|i| format!("older-{i:06}")).collect();
    assert_eq!(older, expected);
    let shown = show(&w.bg, &grant).await;
    assert_eq!(shown.state(), pb::GrantState::Revoking);
    assert_eq!(shown.revocation_reason, "expired");
    assert_eq!(
        show(&w.bg, "older-000000").await.state(),
        pb::GrantState::Revoked
    );
    assert_eq!(
        show(&w.bg, "older-000030").await.state(),
        pb::GrantState::Active
    );

    // The live older grants' tokens were indexed from their grants: introspection knows them.
    let plugin = w.bg.tls(&w.plugin).await;
    let live = AccessServiceClient::new(plugin.clone())
        .introspect(pb::IntrospectRequest {
            token: "lkbg_older-30".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(live.active);
    assert_eq!(live.grant_id, "older-000030");

    // The consumer is told once it connects, and its acknowledgement completes it.
    let mut stream = AccessServiceClient::new(plugin.clone())
        .watch_revocations(pb::WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let told = stream.message().await.unwrap().unwrap().grant.unwrap();
    assert_eq!(told.id, grant);
    AccessServiceClient::new(plugin)
        .acknowledge_revocation(pb::AcknowledgeRevocationRequest {
            grant_id: grant.clone(),
        })
        .await
        .unwrap();
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revoked" && r.subject == subject
    })
    .await;
    assert_eq!(show(&w.bg, &grant).await.state(), pb::GrantState::Revoked);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_credential_revoked_before_its_requester_collected_it_is_never_delivered() {
    let mut w = world_with(db_root(600)).await;
    let created = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft(None)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let mut grant = String::new();
    for op in ["carol", "dave"] {
        grant =
            w.bg.vote(
                Target::Request(created.id.clone()),
                op,
                Decision::Approve,
                0,
            )
            .await
            .unwrap()
            .grant_id;
    }
    AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .relinquish(pb::RelinquishRequest { grant_id: grant })
        .await
        .unwrap();
    match access::wait(
        w.bg.tls(&w.vault_db).await,
        &created.id,
        Some(&crate::support::world::delivery_key()),
        |_| {},
    )
    .await
    {
        Err(latchkey::client::ClientError::Refused(s)) => {
            assert_eq!(code(&s), "grant.credential_gone");
        }
        other => panic!("{other:?}"),
    }
    w.bg.stop().await;
}
