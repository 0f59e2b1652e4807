//! Issue 21 acceptance: credentials are delivered exactly once per grant, only when durable,
//! and survive restarts without a usable secret at rest.

use std::sync::{Arc, Condvar, Mutex};

use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::store::{Entry, Keyspace, Store, StoreError, Txn};

use crate::support::world::{
    World, code, db_root, delivery_key, introspect, workload_request, world, world_layered,
};

/// Enrolls gina (dba-oncall) by the admins' quorum: the third approver of `db-root`.
async fn add_third_approver(w: &mut World) {
    let proposed =
        w.bg.enroll(
            "gina",
            "dba-oncall",
            "gina showed her badge to alice and bob in person",
        )
        .await
        .unwrap();
    for admin in ["alice", "bob"] {
        w.bg.vote(
            Target::Change(proposed.change_id.clone()),
            admin,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
}

/// Opens vote ceremonies for `voters` and signs them, so the votes can be cast at once.
async fn signed_votes(w: &mut World, request_id: &str, voters: &[&str]) -> Vec<(String, String)> {
    let mut signed = Vec::new();
    for voter in voters {
        let (ceremony, options) =
            w.bg.begin_vote(
                pb::vote_target::Target::RequestId(request_id.into()),
                voter,
                pb::Decision::Approve,
            )
            .await
            .unwrap();
        signed.push((ceremony, w.bg.sign(voter, 0, options)));
    }
    signed
}

fn cast(
    channel: tonic::transport::Channel,
    request_id: &str,
    (ceremony, json): (String, String),
) -> impl std::future::Future<Output = Result<pb::CastVoteResponse, tonic::Status>> + use<> {
    let request_id = request_id.to_owned();
    let mut client = AccessServiceClient::new(channel);
    async move {
        client
            .cast_vote(pb::CastVoteRequest {
                target: Some(pb::VoteTarget {
                    target: Some(pb::vote_target::Target::RequestId(request_id)),
                }),
                decision: pb::Decision::Approve.into(),
                ceremony_id: ceremony,
                credential_json: json,
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::test]
async fn three_votes_racing_on_a_two_of_three_request_deliver_the_one_grant_minted() {
    let mut w = world(
        600,
        Some(pb::SshSpec {
            principals: vec!["root".into()],
            permit_port_forwarding: false,
        }),
    )
    .await;
    add_third_approver(&mut w).await;
    let (_, ssh_public) = crate::support::sshd::user_key(w.bg.dir.dir.path(), "responder");
    let ssh_public = std::fs::read_to_string(ssh_public).unwrap();
    for round in 0..12 {
        let created = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
            .create_request(pb::CreateRequestRequest {
                draft: Some(pb::RequestDraft {
                    ssh_public_key: ssh_public.clone(),
                    ..crate::support::world::draft(None)
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        let votes = signed_votes(&mut w, &created.id, &["carol", "dave", "gina"]).await;
        // Half the rounds watch before the votes, half after.
        let early = if round % 2 == 0 {
            let (id, channel) = (created.id.clone(), w.bg.tls(&w.vault_db).await);
            Some(tokio::spawn(async move {
                access::wait(channel, &id, Some(&delivery_key()), |_| {}).await
            }))
        } else {
            None
        };
        let mut casts = Vec::new();
        for vote in votes {
            casts.push(tokio::spawn(cast(w.bg.local().await, &created.id, vote)));
        }
        let mut minted = Vec::new();
        for c in casts {
            match c.await.unwrap() {
                Ok(r) if !r.grant_id.is_empty() => minted.push(r.grant_id),
                Ok(r) => assert_eq!(r.state, "pending", "round {round}"),
                // The vote after quorum finds the request issued.
                Err(s) => assert_eq!(code(&s), "request.closed", "round {round}: {s:?}"),
            }
        }
        assert_eq!(minted.len(), 1, "round {round}: exactly one grant");
        let waited = match early {
            Some(waiter) => waiter.await.unwrap(),
            None => {
                access::wait(
                    w.bg.tls(&w.vault_db).await,
                    &created.id,
                    Some(&delivery_key()),
                    |_| {},
                )
                .await
            }
        };
        let (_, credential) = waited.unwrap_or_else(|e| panic!("round {round}: {e}"));
        let credential = credential.expect("credential delivered");
        assert_eq!(credential.grant_id, minted[0], "round {round}");
        let answer = introspect(&w, &credential.bearer_token).await;
        assert!(answer.active, "round {round}");
        assert_eq!(answer.grant_id, minted[0], "round {round}");
        let grant = AccessServiceClient::new(w.bg.local().await)
            .show_grant(pb::ShowGrantRequest {
                id: minted[0].clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        let certificate = ssh_key::Certificate::from_openssh(&credential.ssh_certificate).unwrap();
        assert_eq!(certificate.serial(), grant.ssh_serial, "round {round}");
        assert_eq!(certificate.key_id(), minted[0], "round {round}");
    }
    w.bg.stop().await;
}

/// A store whose next flush after a grant was applied is held until the test releases it
/// (with success, or with the failure a crash in that window amounts to).
#[derive(Debug)]
struct HeldFlush {
    inner: Arc<dyn Store>,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum GateState {
    #[default]
    Open,
    /// The next flush after a grant is applied will be held.
    Armed,
    /// A grant was applied; the next flush holds.
    GrantApplied,
    /// A flush is held; requests read meanwhile are counted.
    Held { request_reads: u32 },
    /// Let the held flush go: succeed, or fail as a dead disk would.
    Release { ok: bool },
}

impl Gate {
    fn set(&self, to: GateState) {
        *self.state.lock().unwrap() = to;
        self.changed.notify_all();
    }

    fn wait_for(&self, ready: impl Fn(GateState) -> bool) {
        let mut state = self.state.lock().unwrap();
        while !ready(*state) {
            state = self.changed.wait(state).unwrap();
        }
    }
}

impl Store for HeldFlush {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if ks == Keyspace::Requests {
            let mut state = self.gate.state.lock().unwrap();
            if let GateState::Held { request_reads } = &mut *state {
                *request_reads += 1;
                self.gate.changed.notify_all();
            }
        }
        self.inner.get(ks, key)
    }
    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_from(ks, start, limit)
    }
    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
        self.inner.last(ks)
    }
    fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
        self.inner.count(ks)
    }
    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
        self.inner.count_below(ks, end)
    }
    fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
        self.apply(txn)?;
        self.flush()
    }
    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        self.inner.apply(txn)?;
        let grant = txn
            .writes()
            .iter()
            .any(|w| matches!(w, latchkey::store::Write::Put(Keyspace::Grants, _, _)));
        let mut state = self.gate.state.lock().unwrap();
        if grant && *state == GateState::Armed {
            *state = GateState::GrantApplied;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        {
            let mut state = self.gate.state.lock().unwrap();
            if *state == GateState::GrantApplied {
                *state = GateState::Held { request_reads: 0 };
                self.gate.changed.notify_all();
                while !matches!(*state, GateState::Release { .. }) {
                    state = self.gate.changed.wait(state).unwrap();
                }
                let GateState::Release { ok } = *state else {
                    unreachable!()
                };
                *state = GateState::Open;
                if !ok {
                    return Err(StoreError::Backend(
                        "injected: the disk never came back".into(),
                    ));
                }
            }
        }
        self.inner.flush()
    }
}

/// Waits (off the async workers) until the gate's state satisfies `ready`.
async fn gate_reaches(gate: &Arc<Gate>, ready: fn(GateState) -> bool) {
    let gate = gate.clone();
    tokio::task::spawn_blocking(move || gate.wait_for(ready))
        .await
        .unwrap();
}

/// A fresh request with one approval counted; the deciding approval is cast with the gate
/// armed and runs until its flush is held. Returns the request and the deciding vote's task.
async fn decide_with_flush_held(
    w: &mut World,
    gate: &Arc<Gate>,
) -> (
    pb::RequestInfo,
    tokio::task::JoinHandle<Result<pb::CastVoteResponse, tonic::Status>>,
) {
    let created = workload_request(w, None).await;
    let mut votes = signed_votes(w, &created.id, &["carol", "dave"]).await;
    let last = votes.pop().unwrap();
    cast(w.bg.local().await, &created.id, votes.pop().unwrap())
        .await
        .unwrap();
    gate.set(GateState::Armed);
    let deciding = tokio::spawn(cast(w.bg.local().await, &created.id, last));
    gate_reaches(gate, |s| matches!(s, GateState::Held { .. })).await;
    (created, deciding)
}

#[tokio::test]
async fn no_credential_state_or_grant_id_leaves_the_daemon_before_its_flush() {
    let gate = Arc::new(Gate::default());
    let layer_gate = gate.clone();
    let layer: latchkey::daemon::StoreLayer = Arc::new(move |inner| {
        Arc::new(HeldFlush {
            inner,
            gate: layer_gate.clone(),
        }) as Arc<dyn Store>
    });
    let mut w = world_layered(db_root(600), Some(layer)).await;
    // The quorum-completing vote applies its grant; its flush is held.
    let (created, deciding) = decide_with_flush_held(&mut w, &gate).await;
    let applied: latchkey::domain::request::Request = latchkey::store::decode(
        &w.bg
            .running()
            .authority()
            .store()
            .get(Keyspace::Requests, created.id.as_bytes())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        applied.state.name(),
        "issued",
        "the grant is applied, not durable"
    );

    // Every way a client could learn of it reads the applied state, then waits.
    let watcher = {
        let (id, channel) = (created.id.clone(), w.bg.tls(&w.vault_db).await);
        tokio::spawn(async move { access::wait(channel, &id, Some(&delivery_key()), |_| {}).await })
    };
    let shown = {
        let (id, channel) = (created.id.clone(), w.bg.local().await);
        tokio::spawn(async move {
            AccessServiceClient::new(channel)
                .show_request(pb::ShowRequestRequest { id })
                .await
        })
    };
    gate_reaches(
        &gate,
        |s| matches!(s, GateState::Held { request_reads } if request_reads >= 2),
    )
    .await;
    // The disk never comes back: a crash in this window.
    gate.set(GateState::Release { ok: false });

    let vote = deciding.await.unwrap();
    assert!(
        vote.is_err(),
        "the deciding vote must not report success: {vote:?}"
    );
    match watcher.await.unwrap() {
        Ok((request, credential)) => panic!(
            "a watcher learned {:?} with {credential:?} before it was durable",
            request.state()
        ),
        Err(e) => assert!(!e.to_string().contains("lkbg_"), "{e}"),
    }
    match shown.await.unwrap() {
        Ok(r) => panic!("ShowRequest answered before durable: {:?}", r.into_inner()),
        Err(s) => assert_ne!(code(&s), ""),
    }

    // After a restart the store holds the grant durably or not at all; no client holds its
    // credential either way, and if it survived, its requester collects it.
    w.bg.restart(|_| {}).await;
    let shown = AccessServiceClient::new(w.bg.local().await)
        .show_request(pb::ShowRequestRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    match shown.state() {
        pb::RequestState::Pending => assert!(shown.grant_id.is_empty()),
        pb::RequestState::Issued => {
            let (_, credential) = access::wait(
                w.bg.tls(&w.vault_db).await,
                &created.id,
                Some(&delivery_key()),
                |_| {},
            )
            .await
            .unwrap();
            assert_eq!(credential.unwrap().grant_id, shown.grant_id);
        }
        other => panic!("unexpected state after restart: {other:?}"),
    }

    // A held flush that completes: the watcher gets the credential, after it.
    let (created, deciding) = decide_with_flush_held(&mut w, &gate).await;
    let watcher = {
        let (id, channel) = (created.id.clone(), w.bg.tls(&w.vault_db).await);
        tokio::spawn(async move { access::wait(channel, &id, Some(&delivery_key()), |_| {}).await })
    };
    gate_reaches(
        &gate,
        |s| matches!(s, GateState::Held { request_reads } if request_reads >= 1),
    )
    .await;
    gate.set(GateState::Release { ok: true });
    let grant_id = deciding.await.unwrap().unwrap().grant_id;
    let (_, credential) = watcher.await.unwrap().unwrap();
    let credential = credential.unwrap();
    assert_eq!(credential.grant_id, grant_id);
    assert!(introspect(&w, &credential.bearer_token).await.active);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_credential_minted_before_a_restart_is_collected_after_it_and_never_rests_in_clear() {
    let mut w = world(600, None).await;
    let created = workload_request(&w, Some(900)).await;
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
    // Nobody collected it; the daemon restarts.
    w.bg.restart(|_| {}).await;
    let (request, credential) = access::wait(
        w.bg.tls(&w.vault_db).await,
        &created.id,
        Some(&delivery_key()),
        |_| {},
    )
    .await
    .unwrap();
    let credential = credential.expect("collected after the restart");
    assert_eq!(credential.grant_id, request.grant_id);
    let answer = introspect(&w, &credential.bearer_token).await;
    assert!(answer.active);
    assert_eq!(answer.grant_id, request.grant_id);

    // Nothing at rest lets anyone else use the token: not its bytes, and the sealed box the
    // grant keeps opens only with the requester's private key.
    let data = w.bg.dir.data.clone();
    let World { bg, .. } = w;
    let dir = {
        let mut bg = bg;
        if let Some(running) = bg.running.take() {
            running.shutdown().await.unwrap();
        }
        bg.dir
    };
    let token = credential.bearer_token.as_bytes();
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|x| x == token),
            "{} holds the token in clear",
            entry.display()
        );
    }
    let store = open_store_after_release(&data.join("store")).await;
    let grant: latchkey::domain::grant::Grant =
        latchkey::store::read(&store, request.grant_id.as_bytes())
            .unwrap()
            .unwrap();
    let sealed = grant
        .sealed_bearer
        .expect("the sealed box is kept with the grant");
    assert_eq!(
        delivery_key().open(&sealed, &grant.id).unwrap(),
        credential.bearer_token
    );
    let stranger = latchkey::credential::delivery::DeliveryKey::generate();
    assert!(stranger.open(&sealed, &grant.id).is_err());
    drop(dir);
}

#[tokio::test]
async fn a_bearer_scope_refuses_a_request_without_a_delivery_key_and_stores_nothing() {
    let w = world(600, None).await;
    let before = w.bg.snapshot();
    for (key, expected) in [
        (Vec::new(), "request.delivery_key_required"),
        (vec![1u8; 31], "delivery.bad_public_key"),
    ] {
        let err = AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
            .create_request(pb::CreateRequestRequest {
                draft: Some(pb::RequestDraft {
                    delivery_public_key: key,
                    ..crate::support::world::draft(None)
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), expected);
    }
    assert_eq!(w.bg.snapshot(), before);
    w.bg.stop().await;
}

/// Opens a store a stopped in-process daemon held (sled releases its lock from its own
/// threads a moment after the last handle is dropped).
async fn open_store_after_release(path: &std::path::Path) -> latchkey::store::SledStore {
    for _ in 0..500 {
        match latchkey::store::SledStore::open(path) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the store's lock was not released within 5 s");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
