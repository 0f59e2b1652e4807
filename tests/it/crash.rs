//! Crash consistency: writers run whole break-glass cycles (request, two approvals, the
//! credential collected) against a daemon process that is `kill -9`ed at a random moment,
//! round after round. After each restart every credential a client received belongs to a
//! stored grant of its own request, no request has two grants, and the audit export verifies.
//! `LATCHKEY_CRASH_ROUNDS` (default 3) sets the rounds; RELIABILITY.md has a longer run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use latchkey::client::access::{self, Target};
use latchkey::client::authenticator::Authenticator;
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use tokio::sync::Mutex;

use crate::support::world::{MemKey, ORIGIN, db_root, delivery_key, draft};
use crate::support::{ClientCert, Daemon, DaemonDir, tls_channel};

type Key = Arc<Mutex<Box<dyn Authenticator + Send>>>;

/// What a client was handed: request → (grant, token).
type Received = Arc<std::sync::Mutex<BTreeMap<String, (String, String)>>>;

fn rounds() -> usize {
    std::env::var("LATCHKEY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A dev-mode daemon whose local user may introspect, with carol and dave (dba-oncall), the
/// db-root scope and the vault-db workload (genesis stays open: no admins needed).
async fn setup() -> (DaemonDir, Daemon, Vec<(String, Key)>, ClientCert) {
    let dir = DaemonDir::init();
    let uid = nix::unistd::geteuid().as_raw();
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\ndev_mode = true\n[log]\nformat = \"json\"\n[unix]\npath = \"{}\"\nintrospect_uids = [{uid}]\n[tls]\nlisten = \"127.0.0.1:0\"\n[fido2]\nrequire_user_verification = false\n",
        dir.data.display(),
        dir.socket.display()
    ));
    let daemon = dir.start();
    let mut keys = Vec::new();
    for name in ["carol", "dave"] {
        let mut key: Box<dyn Authenticator + Send> = Box::new(MemKey::new());
        latchkey::client::enroll(
            daemon.unix_channel().await,
            name,
            vec!["dba-oncall".into()],
            key.as_mut(),
            Some(ORIGIN),
            "",
        )
        .await
        .unwrap();
        keys.push((name.to_owned(), Arc::new(Mutex::new(key))));
    }
    let propose = |change| async {
        pb::trust_service_client::TrustServiceClient::new(daemon.unix_channel().await)
            .propose_change(pb::ProposeChangeRequest {
                note: "bootstrap".into(),
                change: Some(change),
                ..Default::default()
            })
            .await
            .unwrap();
    };
    propose(pb::propose_change_request::Change::PutScope(db_root(600))).await;
    let vault_db = ClientCert::generate(dir.dir.path(), "vault-db");
    propose(pb::propose_change_request::Change::PutWorkload(
        pb::PutWorkload {
            name: "vault-db".into(),
            owner: "platform-team".into(),
            certificate_pem: std::fs::read_to_string(&vault_db.cert).unwrap(),
            scopes: vec!["db-root".into()],
            introspect: false,
        },
    ))
    .await;
    (dir, daemon, keys, vault_db)
}

/// One cycle; Err once the daemon is gone.
async fn cycle(
    daemon_tls: tonic::transport::Channel,
    local: tonic::transport::Channel,
    keys: &[(String, Key)],
    received: &Received,
) -> Result<(), String> {
    let created = AccessServiceClient::new(daemon_tls.clone())
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft(None)),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .request
        .ok_or("no request")?;
    for (name, key) in keys {
        // One vote at a time per key: a soft key's counter must reach the daemon in order.
        let mut key = key.lock().await;
        access::vote(
            local.clone(),
            &Target::Request(created.id.clone()),
            name,
            Decision::Approve,
            key.as_mut(),
            Some(ORIGIN),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let (_, credential) = access::wait(daemon_tls, &created.id, Some(&delivery_key()), |_| {})
        .await
        .map_err(|e| e.to_string())?;
    let credential = credential.ok_or("no credential")?;
    received
        .lock()
        .unwrap()
        .insert(created.id, (credential.grant_id, credential.bearer_token));
    Ok(())
}

/// What must hold after a crash, for everything any client ever received.
async fn check(dir: &DaemonDir, daemon: &Daemon, received: &Received) {
    let local = daemon.unix_channel().await;
    let received = received.lock().unwrap().clone();
    for (request, (grant_id, token)) in &received {
        let grant = AccessServiceClient::new(local.clone())
            .show_grant(pb::ShowGrantRequest {
                id: grant_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("a client holds grant {grant_id}, the store does not: {e}"))
            .into_inner()
            .grant
            .unwrap();
        assert_eq!(&grant.request_id, request);
        let answer = AccessServiceClient::new(local.clone())
            .introspect(pb::IntrospectRequest {
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.active, "the token of {grant_id} is not active");
        assert_eq!(&answer.grant_id, grant_id);
    }
    let grants = AccessServiceClient::new(local.clone())
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants;
    let requests: BTreeSet<&String> = grants.iter().map(|g| &g.request_id).collect();
    assert_eq!(requests.len(), grants.len(), "a request has two grants");
    let mut export = Vec::new();
    latchkey::client::export_audit(local.clone(), &mut export)
        .await
        .unwrap();
    let key = latchkey::client::status(local)
        .await
        .unwrap()
        .audit_public_key;
    let key = latchkey::client::audit_key(&key).unwrap();
    let report = latchkey::audit::verify::verify(export.as_slice(), &key)
        .unwrap_or_else(|e| panic!("the export does not verify after a crash: {e}"));
    assert_eq!(report.unverified_tail, None);
    let _ = dir;
}

#[tokio::test]
async fn kill_9_during_full_cycles_loses_no_credential_and_mints_nothing_twice() {
    let (dir, mut daemon, keys, vault_db) = setup().await;
    let received: Received = Arc::default();
    let mut rng = 0x5eed_u64 ^ u64::from(std::process::id());
    for round in 0..rounds() {
        // Kill once this many more credentials were received: a random moment in the flow.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = received.lock().unwrap().len() + 2 + (rng % 5) as usize;
        let (enough_tx, mut enough) = tokio::sync::watch::channel(false);
        let mut channels = Vec::new();
        for _ in 0..3 {
            channels.push((
                tls_channel(&daemon, &dir.data, &vault_db).await,
                daemon.unix_channel().await,
            ));
        }
        // Three writers in this task (the soft keys are not Send), and the killer.
        let writer = |(tls, local): (tonic::transport::Channel, tonic::transport::Channel)| {
            let (keys, received, enough_tx) = (&keys, &received, &enough_tx);
            async move {
                while cycle(tls.clone(), local.clone(), keys, received)
                    .await
                    .is_ok()
                {
                    if received.lock().unwrap().len() >= target {
                        let _ = enough_tx.send(true);
                    }
                }
            }
        };
        let mut channels = channels.into_iter();
        let (a, b, c) = (
            channels.next().unwrap(),
            channels.next().unwrap(),
            channels.next().unwrap(),
        );
        let killer = async {
            enough.wait_for(|done| *done).await.unwrap();
            daemon.kill9();
        };
        tokio::join!(writer(a), writer(b), writer(c), killer);
        drop(daemon);
        daemon = dir.start();
        check(&dir, &daemon, &received).await;
        assert!(
            received.lock().unwrap().len() >= target,
            "round {round}: the writers stopped early"
        );
    }
    eprintln!(
        "crash consistency: {} rounds of kill -9, {} credentials received, all checked",
        rounds(),
        received.lock().unwrap().len()
    );
    assert!(daemon.terminate().success());
}
