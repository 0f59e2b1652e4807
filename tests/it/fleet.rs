//! Several bastions, one trust store: three latchkeyd on a real three-member etcd cluster on
//! loopback. The store is moved from sled to etcd with `latchkeyd store copy`; the nodes share
//! the daemon's keys (one audit chain, one SSH CA) and nothing else.

use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;

use crate::support::etcd::EtcdCluster;
use crate::support::sshd::{krl_revokes, user_key};
use crate::support::world::{Bg, ORIGIN, db_root, delivery_key, draft, world_on_daemon};
use crate::support::{DaemonDir, latchkeyd, server_cert};

/// A node's directory made with `latchkeyd init` on sled, its config pointed at `store` (the
/// etcd tables) and its store moved there with `latchkeyd store copy`.
fn first_node_on(store: &str) -> DaemonDir {
    let dir = DaemonDir::init();
    std::fs::write(
        &dir.config,
        std::fs::read_to_string(&dir.config).unwrap() + store,
    )
    .unwrap();
    let copied = copy_into_etcd(&dir);
    assert!(copied.status.success(), "{copied:?}");
    assert!(String::from_utf8_lossy(&copied.stdout).contains("copied"));
    dir
}

fn copy_into_etcd(dir: &DaemonDir) -> std::process::Output {
    latchkeyd()
        .args([
            "store", "copy", "--from", "sled", "--to", "etcd", "--config",
        ])
        .arg(&dir.config)
        .output()
        .unwrap()
}

/// A second node's directory: its own socket and store dir, the first node's keys.
fn node_like(first: &DaemonDir) -> DaemonDir {
    let dir = DaemonDir::init();
    for entry in std::fs::read_dir(&first.data).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file()
            && entry.file_name() != latchkey::base::constants::ANCHOR_FILE
        {
            std::fs::copy(entry.path(), dir.data.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Has `node` take in what the other nodes wrote now (its follower does it every 250 ms;
/// the test does not wait for that).
async fn follow(node: &Bg) {
    let authority = node.running().authority().clone();
    tokio::task::spawn_blocking(move || authority.follow_shared_store())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_on_one_bastion_is_approved_on_two_others_and_its_token_introspects_everywhere()
 {
    let etcd = EtcdCluster::start(3);
    let store = etcd.store_config("latchkey/");

    // Node A: made with `latchkeyd init` on sled, copied into etcd.
    let a_dir = first_node_on(&store);
    let again = copy_into_etcd(&a_dir);
    assert!(
        !again.status.success(),
        "a copy into a store that is not empty is refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{again:?}"
    );

    let (b_dir, c_dir) = (node_like(&a_dir), node_like(&a_dir));
    let a = Bg::start_with(a_dir, &store).await;
    let mut scope = db_root(600);
    scope.ssh = Some(pb::SshSpec {
        principals: vec!["root".into()],
        permit_port_forwarding: false,
    });
    let mut w = world_on_daemon(a, scope).await;
    let b = Bg::start_with(b_dir, &store).await;
    let c = Bg::start_with(c_dir, &store).await;

    // A workload asks on A and waits there; carol approves on B, dave on C.
    let home = w.bg.dir.dir.path().to_owned();
    let (_, public) = user_key(&home, "responder");
    let asked = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(pb::RequestDraft {
                ssh_public_key: std::fs::read_to_string(&public).unwrap(),
                ..draft(None)
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let channel = w.bg.tls(&w.vault_db).await;
    let id = asked.id.clone();
    let waiter =
        tokio::spawn(
            async move { access::wait(channel, &id, Some(&delivery_key()), |_| {}).await },
        );
    for (node, operator) in [(&b, "carol"), (&c, "dave")] {
        let key = w.bg.keys.get_mut(operator).unwrap()[0].as_mut();
        access::vote(
            node.local().await,
            &Target::Request(asked.id.clone()),
            operator,
            Decision::Approve,
            key,
            Some(ORIGIN),
        )
        .await
        .unwrap();
    }
    let (info, collected) = waiter.await.unwrap().unwrap();
    assert_eq!(info.state(), pb::RequestState::Issued);
    let collected = collected.unwrap();
    let token = collected.bearer_token.clone();
    assert!(token.starts_with("lkbg_"));
    let cert = home.join("responder-cert.pub");
    std::fs::write(&cert, &collected.ssh_certificate).unwrap();

    // Minted on C (the deciding vote), collected on A (its watch followed B's and C's
    // records); the token introspects on every node once it took the grant in.
    for node in [&w.bg, &b, &c] {
        follow(node).await;
        let answer = AccessServiceClient::new(
            latchkey::client::connect_tls(
                node.running().tls_addr().unwrap(),
                server_cert(&node.dir.data),
                w.plugin.identity(),
            )
            .await
            .unwrap(),
        )
        .introspect(pb::IntrospectRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
        assert!(answer.active, "inactive on {:?}", node.dir.socket);
    }

    // erin revokes on C; every bastion's own KRL lists the certificate once it followed.
    let begun = AccessServiceClient::new(c.local().await)
        .begin_revoke(pb::BeginRevokeRequest {
            grant_id: collected.grant_id.clone(),
            operator: "erin".into(),
            reason: "incident closed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let signed = w.bg.sign(
        "erin",
        0,
        serde_json::from_str(&begun.request_options_json).unwrap(),
    );
    AccessServiceClient::new(c.local().await)
        .revoke(pb::RevokeRequest {
            grant_id: collected.grant_id.clone(),
            reason: "incident closed".into(),
            ceremony_id: begun.ceremony_id,
            credential_json: signed,
        })
        .await
        .unwrap();
    for node in [&w.bg, &b, &c] {
        follow(node).await;
        let krl = node.running().authority().krl_path().to_owned();
        assert!(
            krl_revokes(&krl, &cert),
            "{} does not list it",
            krl.display()
        );
    }

    // One audit chain: B's export (records from all three nodes) verifies offline.
    crate::support::export_verifies(&b.dir).await;
    for node in [b, c] {
        node.stop().await;
    }
    w.bg.stop().await;
}

/// A workload's request for `db-root` on `w`'s node: its status on refusal.
async fn workload_asks(w: &crate::support::world::World) -> Result<pb::RequestInfo, tonic::Status> {
    AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft(None)),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().request.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_etcd_quorum_changes_are_refused_whole_and_service_resumes_with_it() {
    let mut etcd = EtcdCluster::start(3);
    let store = etcd.store_config("latchkey/");
    let dir = first_node_on(&store);
    let mut w = world_on_daemon(Bg::start_with(dir, &store).await, db_root(600)).await;

    // One member down: a majority remains, and a whole cycle goes through.
    etcd.kill(2);
    let first = workload_asks(&w).await.unwrap();
    for operator in ["carol", "dave"] {
        w.bg.vote(
            Target::Request(first.id.clone()),
            operator,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }

    // Two down: no quorum. A new request is refused with a clear code, and nothing of it
    // exists once the quorum is back.
    etcd.kill(1);
    let refused = workload_asks(&w).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("etcd"), "{refused:?}");
    // Introspection is unavailable too (the caller's pin is read from the store), never a
    // possibly stale answer.
    let introspect = |w: &crate::support::world::World| {
        let (addr, cert, plugin) = (
            w.bg.running().tls_addr().unwrap(),
            server_cert(&w.bg.dir.data),
            w.plugin.identity(),
        );
        async move {
            AccessServiceClient::new(
                latchkey::client::connect_tls(addr, cert, plugin)
                    .await
                    .unwrap(),
            )
            .introspect(pb::IntrospectRequest {
                token: "lkbg_not-a-token".into(),
            })
            .await
        }
    };
    let stale = introspect(&w).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Unavailable, "{stale:?}");
    etcd.restart(1);
    follow(&w.bg).await;
    assert!(!introspect(&w).await.unwrap().into_inner().active);
    let requests = AccessServiceClient::new(w.bg.local().await)
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(
        requests.len(),
        1,
        "only the first request exists: {requests:?}"
    );

    // Quorum back: service resumes, on the same audit chain.
    let second = workload_asks(&w).await.unwrap();
    assert_ne!(second.id, first.id);
    crate::support::export_verifies(&w.bg.dir).await;
    w.bg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_goes_down_another_node_takes_over_and_revokes_each_expiry_once() {
    let etcd = EtcdCluster::start(3);
    let store = etcd.store_config("latchkey/");
    let a_dir = first_node_on(&store);
    let (b_dir, c_dir) = (node_like(&a_dir), node_like(&a_dir));
    // A starts first and takes the lease at once; B and C find it held.
    let mut w = world_on_daemon(Bg::start_with(a_dir, &store).await, db_root(600)).await;
    let b = Bg::start_with(b_dir, &store).await;
    let c = Bg::start_with(c_dir, &store).await;

    // Three grants that expire five seconds on.
    let mut grants = Vec::new();
    for _ in 0..3 {
        let asked = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
            .create_request(pb::CreateRequestRequest {
                draft: Some(draft(Some(5))),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        for operator in ["carol", "dave"] {
            let voted =
                w.bg.vote(
                    Target::Request(asked.id.clone()),
                    operator,
                    Decision::Approve,
                    0,
                )
                .await
                .unwrap();
            if let Some(grant) = Some(voted.grant_id).filter(|g| !g.is_empty()) {
                grants.push(grant);
            }
        }
    }
    assert_eq!(grants.len(), 3);

    // The leader goes down; for B and C its lease and the grants run out.
    let mut tail = b.running().authority().audit().subscribe();
    w.bg.halt().await;
    for node in [&b, &c] {
        node.clock
            .advance(latchkey::base::constants::LEADER_LEASE + std::time::Duration::from_secs(1));
    }
    let mut revoked = std::collections::BTreeSet::new();
    let mut elected = None;
    while elected.is_none() || revoked.len() < grants.len() {
        let record = match tail.recv().await {
            Ok(r) => r,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("B's audit tail: {e}"),
        };
        match record.event.as_str() {
            "leader.elected" => elected = Some(record.details.clone()),
            "grants.expired" => {
                for g in record.details["grants"].as_array().unwrap() {
                    revoked.insert(g["grant"].as_str().unwrap().to_owned());
                }
            }
            _ => {}
        }
    }
    let elected = elected.unwrap();
    assert!(!elected["previous"].is_null(), "a takeover: {elected}");
    assert_ne!(elected["previous"], elected["node"]);
    assert_eq!(revoked, grants.iter().cloned().collect());

    // From C: every grant expired exactly once, on one chain that verifies.
    let export = crate::support::export_verifies(&c.dir).await;
    for grant in &grants {
        let times = export
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["event"] == "grants.expired")
            .flat_map(|r| {
                r["details"]["grants"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|g| g["grant"] == grant.as_str())
            .count();
        assert_eq!(times, 1, "grant {grant} expired {times} times");
    }
    for node in [b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_a_node_serves_restores_into_sled_and_a_tampered_one_is_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let etcd = EtcdCluster::start(3);
    let store = etcd.store_config("latchkey/");
    let a_dir = first_node_on(&store);
    let spare = node_like(&a_dir);
    let mut w = world_on_daemon(Bg::start_with(a_dir, &store).await, db_root(600)).await;
    let asked = workload_asks(&w).await.unwrap();
    for operator in ["carol", "dave"] {
        w.bg.vote(
            Target::Request(asked.id.clone()),
            operator,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }

    // Taken from etcd while A serves.
    let file = w.bg.dir.dir.path().join("latchkey.backup");
    let (config, out) = (w.bg.dir.config.clone(), file.clone());
    let taken = tokio::task::spawn_blocking(move || {
        latchkeyd()
            .args(["backup", "--config"])
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(taken.status.success(), "{taken:?}");
    assert!(String::from_utf8_lossy(&taken.stdout).contains("chain verified"));

    // A backup whose audit record was altered is refused, and restores nothing.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = lines
        .iter()
        .rposition(|l| l.contains("\"keyspace\":\"audit\""))
        .unwrap();
    let mut entry: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    let mut record: serde_json::Value =
        serde_json::from_slice(&b64.decode(entry["value"].as_str().unwrap()).unwrap()).unwrap();
    record["subject"] = "request/forged".into();
    entry["value"] = b64.encode(record.to_string()).into();
    lines[at] = entry.to_string();
    let tampered = spare.dir.path().join("tampered.backup");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    std::fs::remove_dir_all(spare.data.join("store")).unwrap();
    let restore = |input: &std::path::Path| {
        latchkeyd()
            .args(["restore", "--to", "sled", "--config"])
            .arg(&spare.config)
            .arg("--input")
            .arg(input)
            .output()
            .unwrap()
    };
    let refused = restore(&tampered);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not verify"),
        "{refused:?}"
    );
    assert!(!spare.data.join("store").exists(), "nothing restored");

    // The untouched one restores into sled; a daemon on it has the issued request.
    let restored = restore(&file);
    assert!(restored.status.success(), "{restored:?}");
    let spare_node = Bg::start_with(spare, "").await;
    let shown = AccessServiceClient::new(spare_node.local().await)
        .show_request(pb::ShowRequestRequest {
            id: asked.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(shown.state(), pb::RequestState::Issued);
    spare_node.stop().await;
    w.bg.stop().await;
}
