//! Issue 21 acceptance, items 5 and 7: decisions that read several records are guarded by
//! their transaction, and an export ends at the checkpoint it asked for. Both force an
//! interleaving with a store layer that runs a hook on a scan.

use std::sync::{Arc, Mutex, OnceLock};

use latchkey::audit::{Actor, Event};
use latchkey::client::access::Target;
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::pb::trust_service_client::TrustServiceClient;
use latchkey::service::authority::Authority;
use latchkey::store::{Entry, Keyspace, Store, StoreError, Txn};

use crate::support::world::{db_root, world_layered};

type Hook = Box<dyn FnOnce() + Send>;

/// Runs a hook once, right after the next scan of a keyspace has read its entries.
#[derive(Default)]
struct Hooks {
    on_scan: Mutex<Option<(Keyspace, Hook)>>,
}

impl Hooks {
    fn on_next_scan(&self, ks: Keyspace, hook: impl FnOnce() + Send + 'static) {
        *self.on_scan.lock().unwrap() = Some((ks, Box::new(hook)));
    }
}

struct Hooked {
    inner: Arc<dyn Store>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooked")
    }
}

impl Store for Hooked {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(ks, key)
    }
    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let hook = {
            let mut slot = self.hooks.on_scan.lock().unwrap();
            match slot.take() {
                Some((on, hook)) if on == ks => Some(hook),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        let read = self.inner.scan_from(ks, start, limit);
        if let Some(hook) = hook {
            hook();
        }
        read
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
        self.inner.commit(txn)
    }
    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        self.inner.apply(txn)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

fn hooked() -> (Arc<Hooks>, latchkey::daemon::StoreLayer) {
    let hooks = Arc::new(Hooks::default());
    let layer_hooks = hooks.clone();
    let layer: latchkey::daemon::StoreLayer = Arc::new(move |inner| {
        Arc::new(Hooked {
            inner,
            hooks: layer_hooks.clone(),
        }) as Arc<dyn Store>
    });
    (hooks, layer)
}

fn strip_admin(operator: &str) -> pb::propose_change_request::Change {
    pb::propose_change_request::Change::SetOperatorRoles(pb::SetOperatorRoles {
        operator: operator.into(),
        roles: vec![],
    })
}

#[tokio::test]
async fn two_changes_that_each_keep_the_quorum_cannot_both_apply_when_together_they_lock_it_out() {
    let (hooks, layer) = hooked();
    let mut w = world_layered(db_root(600), Some(layer)).await;
    // Admins alice, bob, frank; trust-store quorum 2 of admin. Either change alone leaves two
    // admins; both together leave one.
    let a =
        w.bg.propose("alice steps down", strip_admin("alice"))
            .await
            .unwrap();
    let b =
        w.bg.propose("bob steps down", strip_admin("bob"))
            .await
            .unwrap();
    w.bg.vote(Target::Change(a.id.clone()), "bob", Decision::Approve, 0)
        .await
        .unwrap();
    w.bg.vote(Target::Change(b.id.clone()), "frank", Decision::Approve, 0)
        .await
        .unwrap();

    // alice's deciding vote on B stops right after it has read the operators for the
    // lock-out check; meanwhile frank's deciding vote on A commits; then B goes on.
    let (blocked_tx, blocked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (ceremony, options) =
        w.bg.begin_vote(
            pb::vote_target::Target::ChangeId(b.id.clone()),
            "alice",
            pb::Decision::Approve,
        )
        .await
        .unwrap();
    let json = w.bg.sign("alice", 0, options);
    hooks.on_next_scan(Keyspace::Operators, move || {
        blocked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    let deciding_b = {
        let mut client = AccessServiceClient::new(w.bg.local().await);
        let id = b.id.clone();
        tokio::spawn(async move {
            client
                .cast_vote(pb::CastVoteRequest {
                    target: Some(pb::VoteTarget {
                        target: Some(pb::vote_target::Target::ChangeId(id)),
                    }),
                    decision: pb::Decision::Approve.into(),
                    ceremony_id: ceremony,
                    credential_json: json,
                })
                .await
        })
    };
    tokio::task::spawn_blocking(move || blocked_rx.recv().unwrap())
        .await
        .unwrap();
    let a_result =
        w.bg.vote(Target::Change(a.id.clone()), "frank", Decision::Approve, 0)
            .await
            .unwrap();
    release_tx.send(()).unwrap();
    let b_result = deciding_b.await.unwrap();
    assert_eq!(a_result.state, "applied");
    match b_result {
        Ok(r) => panic!(
            "both changes applied ({}): the trust store is locked out",
            r.into_inner().state
        ),
        Err(s) => assert!(
            ["change.invalid", "approval.not_approver"]
                .contains(&crate::support::world::code(&s).as_str()),
            "{s:?}"
        ),
    }
    let admins = TrustServiceClient::new(w.bg.local().await)
        .list_operators(pb::ListOperatorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .operators
        .into_iter()
        .filter(|o| o.roles.iter().any(|r| r == "admin"))
        .count();
    assert_eq!(
        admins, 2,
        "bob and frank can still approve trust-store changes"
    );
    w.bg.stop().await;
}

#[tokio::test]
async fn an_export_ends_at_its_checkpoint_even_when_records_follow_it() {
    let (hooks, layer) = hooked();
    let w = world_layered(db_root(600), Some(layer)).await;
    let authority: Arc<Authority> = w.bg.running().authority().clone();
    let for_hook: Arc<OnceLock<Arc<Authority>>> = Arc::new(OnceLock::new());
    for_hook.set(authority.clone()).unwrap();
    // When the export starts reading, the daemon writes one more record (as the revocation
    // scheduler does at any moment).
    hooks.on_next_scan(Keyspace::Audit, move || {
        let authority = for_hook.get().unwrap();
        authority
            .audit()
            .commit(
                Txn::new(),
                Event {
                    event: "test.after_checkpoint",
                    actor: Actor::Daemon,
                    subject: "test".into(),
                    details: serde_json::json!({}),
                    evidence: None,
                },
            )
            .unwrap();
    });
    let mut out = Vec::new();
    let written = latchkey::client::export_audit(w.bg.local().await, &mut out)
        .await
        .unwrap();
    assert!(written > 0);
    let report = latchkey::audit::verify::verify(
        std::io::BufReader::new(out.as_slice()),
        &authority.audit().public_key(),
    )
    .unwrap();
    assert_eq!(report.unverified_tail, None, "{report:?}");
    assert_eq!(report.last_checkpoint, Some(report.records));
    assert!(
        authority.audit().head_seq() > report.records,
        "the record after the checkpoint exists and was left out"
    );
    drop(authority);
    w.bg.stop().await;
}

/// A `ShowRequestRequest` whose `id` (field 1, a string) carries raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawShowRequest {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
}

#[tokio::test]
async fn an_undecodable_message_is_invalid_argument_with_a_stable_code() {
    let bg = crate::support::world::Bg::start().await;
    let mut grpc = tonic::client::Grpc::new(bg.local().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/latchkey.v1.AccessService/ShowRequest",
    );
    let codec = tonic_prost::ProstCodec::<RawShowRequest, pb::ShowRequestResponse>::default();
    let status = grpc
        .unary(
            tonic::Request::new(RawShowRequest {
                id: vec![0xff, 0xfe, b'x'],
            }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        crate::support::world::code(&status),
        "rpc.malformed_message"
    );
    bg.stop().await;
}

/// A daemon with small `[limits]`.
async fn limited() -> crate::support::world::Bg {
    crate::support::world::Bg::start_with(
        crate::support::DaemonDir::init(),
        "[limits]\nstreams = 2\nconnections_per_uid = 3\nhandshake_seconds = 1\n",
    )
    .await
}

#[tokio::test]
async fn live_streams_past_the_limit_are_refused_with_a_stable_code() {
    let bg = limited().await;
    let mut client = pb::audit_service_client::AuditServiceClient::new(bg.local().await);
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            client
                .follow_records(pb::FollowRecordsRequest { from_seq: 1 })
                .await
                .unwrap(),
        );
    }
    let err = AccessServiceClient::new(bg.local().await)
        .watch_request(pb::WatchRequestRequest { id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(crate::support::world::code(&err), "rpc.too_many_streams");
    drop(open);
    bg.stop().await;
}

#[tokio::test]
async fn one_user_cannot_hold_more_local_connections_than_allowed() {
    let bg = limited().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let channel = bg.local().await;
        let mut system = pb::system_service_client::SystemServiceClient::new(channel);
        system.status(pb::StatusRequest {}).await.unwrap();
        held.push(system);
    }
    // The fourth is closed as soon as it is accepted: its first call cannot succeed.
    let refused = match latchkey::client::connect_unix(&bg.dir.socket).await {
        Ok(channel) => pb::system_service_client::SystemServiceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a fourth connection of the same user was served");
    // The three held ones still work.
    for system in &mut held {
        system.status(pb::StatusRequest {}).await.unwrap();
    }
    drop(held);
    bg.stop().await;
}

#[tokio::test]
async fn a_local_connection_that_never_speaks_is_closed() {
    use std::io::Read as _;
    let bg = limited().await;
    let socket = bg.dir.socket.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut raw = std::os::unix::net::UnixStream::connect(socket).unwrap();
        // A hang guard, not a timing assertion: the daemon closes it after 1 s.
        raw.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 16];
        raw.read(&mut buf)
    })
    .await
    .unwrap();
    assert_eq!(read.unwrap(), 0, "the daemon closed the idle connection");
    bg.stop().await;
}
