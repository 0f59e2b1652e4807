//! Remote operators (#24): responders on their own devices reach the remote operator port over
//! TLS (the daemon pinned by its SPKI, no client certificate); every action carries its own key
//! touch, reads need a session bound to the connection, Begin calls are rate limited, and the
//! audit log names the operator and the transport.

use latchkey::client::access::{self, Target};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::pb::trust_service_client::TrustServiceClient;
use tonic::transport::Channel;

use crate::support::grants::all_records;
use crate::support::server_cert;
use crate::support::world::{ORIGIN, World, code, db_root, delivery_key, draft, world_configured};

const REMOTE: &str = "[remote]\nlisten = \"127.0.0.1:0\"\n";

/// `db-root` that web-oncall (erin) may ask for and dba-oncall (carol, dave) approve.
async fn remote_world() -> World {
    let mut scope = db_root(600);
    scope.requester_roles = vec!["web-oncall".into()];
    world_configured(scope, REMOTE).await
}

/// A fresh connection to the remote port, the daemon pinned by its SPKI.
async fn remote(w: &World) -> Channel {
    let spki = latchkey::credential::keys::spki_sha256(&server_cert(&w.bg.dir.data)).unwrap();
    let addr = w.bg.running().remote_addr().unwrap();
    latchkey::client::connect_remote(&addr.to_string(), spki)
        .await
        .unwrap()
}

async fn session(w: &mut World, channel: &Channel, operator: &str) {
    let key = w.bg.keys.get_mut(operator).unwrap()[0].as_mut();
    let opened = latchkey::client::open_session(channel.clone(), operator, key, Some(ORIGIN))
        .await
        .unwrap();
    assert_eq!(opened.operator, operator);
}

async fn vote(w: &mut World, channel: Channel, id: &str, operator: &str) -> pb::CastVoteResponse {
    let key = w.bg.keys.get_mut(operator).unwrap()[0].as_mut();
    access::vote(
        channel,
        &Target::Request(id.to_owned()),
        operator,
        Decision::Approve,
        key,
        Some(ORIGIN),
    )
    .await
    .unwrap()
}

/// erin asks for `db-root` from her laptop (a connection of its own), signing with her key.
async fn erin_asks(w: &mut World) -> pb::RequestInfo {
    let asking = remote(w).await;
    let mut key = w.bg.keys.get_mut("erin").unwrap().remove(0);
    let asked = access::request(
        asking,
        draft(None),
        Some(("erin", key.as_mut(), Some(ORIGIN))),
    )
    .await
    .unwrap();
    w.bg.keys.get_mut("erin").unwrap().insert(0, key);
    asked
}

fn refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (tonic::Code, String) {
    let status = result.unwrap_err();
    (status.code(), code(&status))
}

#[tokio::test]
async fn a_requester_and_two_approvers_on_their_own_connections_complete_a_cycle_across_a_restart()
{
    let mut w = remote_world().await;
    // erin asks from her laptop, signing with her key.
    let asked = erin_asks(&mut w).await;

    // carol reads the card (a session on her connection) and approves, from hers.
    let carol = remote(&w).await;
    session(&mut w, &carol, "carol").await;
    assert_eq!(vote(&mut w, carol, &asked.id, "carol").await.approvals, 1);

    // The daemon restarts; dave approves from his own connection and the grant is minted.
    w.bg.restart(|_| {}).await;
    let dave = remote(&w).await;
    session(&mut w, &dave, "dave").await;
    let decided = vote(&mut w, dave, &asked.id, "dave").await;
    assert_eq!(decided.approvals, 2);

    // erin collects on a new connection (sessions end with a restart: she opens one).
    let collecting = remote(&w).await;
    session(&mut w, &collecting, "erin").await;
    let (request, credential) = access::wait(collecting, &asked.id, Some(&delivery_key()), |_| {})
        .await
        .unwrap();
    assert_eq!(request.state(), pb::RequestState::Issued);
    assert!(credential.unwrap().bearer_token.starts_with("lkbg_"));

    // The audit log names, for each action, the operator and the transport.
    let records = all_records(w.bg.local().await).await;
    let subject = format!("request/{}", asked.id);
    let via = |event: &str, who: &str| {
        let record = records
            .iter()
            .filter(|r| r.subject == subject && r.event == event)
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap())
            .find(|r| r["actor"]["name"] == who)
            .unwrap_or_else(|| panic!("no {event} by {who}"));
        record["details"]["via"].as_str().unwrap().to_owned()
    };
    assert!(via("request.created", "erin").starts_with("remote 127.0.0.1:"));
    assert!(via("request.approved", "carol").starts_with("remote 127.0.0.1:"));
    assert!(via("request.approved", "dave").starts_with("remote 127.0.0.1:"));
    let sessions = records
        .iter()
        .filter(|r| r.event == "session.opened")
        .count();
    assert_eq!(sessions, 3);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_remote_caller_without_a_session_reads_nothing_and_bastion_calls_are_refused() {
    let mut w = remote_world().await;
    let stranger = remote(&w).await;
    let mut access = AccessServiceClient::new(stranger.clone());
    let unauthenticated = (
        tonic::Code::Unauthenticated,
        "caller.session_required".to_owned(),
    );
    assert_eq!(
        refusal(
            access
                .list_requests(pb::ListRequestsRequest::default())
                .await
        ),
        unauthenticated
    );
    assert_eq!(
        refusal(
            access
                .show_request(pb::ShowRequestRequest { id: "x".into() })
                .await
        ),
        unauthenticated
    );
    assert_eq!(
        refusal(access.list_grants(pb::ListGrantsRequest::default()).await),
        unauthenticated
    );
    let mut trust = TrustServiceClient::new(stranger.clone());
    assert_eq!(
        refusal(trust.list_scopes(pb::ListScopesRequest::default()).await),
        unauthenticated
    );
    assert_eq!(
        refusal(trust.list_changes(pb::ListChangesRequest::default()).await),
        unauthenticated
    );
    let not_here = (
        tonic::Code::PermissionDenied,
        "caller.remote_not_allowed".to_owned(),
    );
    // An unsigned proposal is refused (a signed one needs a session to begin).
    assert_eq!(
        refusal(
            trust
                .propose_change(pb::ProposeChangeRequest {
                    note: "give erin dba-oncall".into(),
                    change: Some(pb::propose_change_request::Change::SetOperatorRoles(
                        pb::SetOperatorRoles {
                            operator: "erin".into(),
                            roles: vec!["dba-oncall".into()],
                        }
                    )),
                    ..Default::default()
                })
                .await
        ),
        (
            tonic::Code::PermissionDenied,
            "change.local_only".to_owned()
        )
    );
    assert_eq!(
        refusal(
            pb::operator_service_client::OperatorServiceClient::new(stranger.clone())
                .begin_enrollment(pb::BeginEnrollmentRequest {
                    operator: "mallory".into(),
                    roles: vec!["admin".into()],
                })
                .await
        ),
        not_here
    );
    assert_eq!(
        refusal(
            pb::audit_service_client::AuditServiceClient::new(stranger.clone())
                .read_records(pb::ReadRecordsRequest::default())
                .await
        ),
        not_here
    );
    // Status and the server's fingerprints stay open, and say who is calling.
    let status = pb::system_service_client::SystemServiceClient::new(stranger.clone())
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        status.caller.and_then(|c| c.identity),
        Some(pb::caller::Identity::Remote(r)) if r.session_operator.is_empty()
    ));
    assert!(!status.fingerprints.unwrap().tls_spki.is_empty());

    // A session opened on one connection reads there, and only there.
    session(&mut w, &stranger, "carol").await;
    assert!(
        access
            .list_requests(pb::ListRequestsRequest::default())
            .await
            .is_ok()
    );
    let other = remote(&w).await;
    assert_eq!(
        refusal(
            AccessServiceClient::new(other)
                .list_requests(pb::ListRequestsRequest::default())
                .await
        ),
        unauthenticated
    );
    w.bg.stop().await;
}

#[tokio::test]
async fn a_vote_signature_cannot_be_replayed_from_another_connection() {
    let mut w = remote_world().await;
    let asked = erin_asks(&mut w).await;
    let target = pb::vote_target::Target::RequestId(asked.id.clone());
    let first = remote(&w).await;
    session(&mut w, &first, "carol").await;
    let begun = AccessServiceClient::new(first.clone())
        .begin_vote(pb::BeginVoteRequest {
            target: Some(pb::VoteTarget {
                target: Some(target.clone()),
            }),
            operator: "carol".into(),
            decision: pb::Decision::Approve.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let signed = w.bg.sign(
        "carol",
        0,
        serde_json::from_str(&begun.request_options_json).unwrap(),
    );
    let counted =
        w.bg.cast(
            first,
            target.clone(),
            pb::Decision::Approve,
            &begun.ceremony_id,
            signed.clone(),
        )
        .await
        .unwrap();
    assert_eq!(counted.approvals, 1);
    let before = w.bg.snapshot();
    let replayed =
        w.bg.cast(
            remote(&w).await,
            target,
            pb::Decision::Approve,
            &begun.ceremony_id,
            signed,
        )
        .await;
    assert_eq!(code(&replayed.unwrap_err()), "assertion.challenge_reused");
    assert_eq!(w.bg.snapshot(), before);
    w.bg.stop().await;
}

#[tokio::test]
async fn a_flood_of_begin_calls_is_refused_past_the_limit_and_opens_a_bounded_number_of_challenges()
{
    let mut w = remote_world().await;
    let asked = erin_asks(&mut w).await;
    let ceremonies = |w: &World| {
        w.bg.running()
            .authority()
            .store()
            .count(latchkey::store::Keyspace::Ceremonies)
            .unwrap()
    };
    let flood = remote(&w).await;
    // Asking to vote reads the request: a session first (one more Begin from this address).
    session(&mut w, &flood, "carol").await;
    let before = ceremonies(&w);
    let mut client = AccessServiceClient::new(flood);
    let (mut admitted, mut refused) = (0u32, 0u32);
    for _ in 0..60 {
        let begun = client
            .begin_vote(pb::BeginVoteRequest {
                target: Some(pb::VoteTarget {
                    target: Some(pb::vote_target::Target::RequestId(asked.id.clone())),
                }),
                operator: "carol".into(),
                decision: pb::Decision::Approve.into(),
            })
            .await;
        match begun {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert_eq!(code(&status), "caller.rate_limited");
                refused += 1;
            }
        }
    }
    // The daemon's clock stands still in this test: exactly the burst gets through, less the
    // BeginRequest erin and the BeginSession carol made from the same address.
    let burst = latchkey::base::constants::REMOTE_BEGIN_BURST_PER_SOURCE - 2;
    assert_eq!((admitted, refused), (burst, 60 - burst));
    assert_eq!(ceremonies(&w), before + u64::from(burst));
    w.bg.stop().await;
}

#[tokio::test]
async fn a_remote_wait_opens_its_session_again_after_a_daemon_restart_and_collects() {
    // A fixed port, so the waiting client finds the restarted daemon where it was.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut scope = db_root(600);
    scope.requester_roles = vec!["web-oncall".into()];
    let mut w =
        world_configured(scope, &format!("[remote]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let mut erin = w.bg.keys.get_mut("erin").unwrap().remove(0);
    let asked = access::request(
        remote(&w).await,
        draft(None),
        Some(("erin", erin.as_mut(), Some(ORIGIN))),
    )
    .await
    .unwrap();

    // erin waits from her laptop: no session yet, so the first watch asks for one.
    let channel = remote(&w).await;
    let id = asked.id.clone();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let mut seen_tx = Some(seen_tx);
    let waiter = tokio::spawn(async move {
        let reauth = access::Reauth {
            operator: "erin",
            key: erin.as_mut(),
            origin: Some(ORIGIN),
        };
        access::wait_reauth(
            channel,
            &id,
            Some(&delivery_key()),
            move |_| {
                if let Some(tx) = seen_tx.take() {
                    let _ = tx.send(());
                }
            },
            Some(reauth),
        )
        .await
    });
    seen.await.unwrap();

    // The daemon restarts (every session ends); two approvals arrive on the bastion.
    w.bg.restart(|_| {}).await;
    for approver in ["carol", "dave"] {
        w.bg.vote(
            Target::Request(asked.id.clone()),
            approver,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    let (request, credential) = waiter.await.unwrap().unwrap();
    assert_eq!(request.state(), pb::RequestState::Issued);
    assert!(credential.unwrap().bearer_token.starts_with("lkbg_"));
    let opened = all_records(w.bg.local().await)
        .await
        .into_iter()
        .filter(|r| r.event == "session.opened")
        .count();
    assert_eq!(opened, 2, "one session before the restart, one after");
    w.bg.stop().await;
}

#[tokio::test]
async fn a_remote_watch_ends_with_the_read_session_it_started_under() {
    let mut w = remote_world().await;
    let asked = erin_asks(&mut w).await;
    let channel = remote(&w).await;
    session(&mut w, &channel, "erin").await;
    let id = asked.id.clone();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let mut seen_tx = Some(seen_tx);
    let waiter = tokio::spawn(async move {
        access::wait(channel, &id, Some(&delivery_key()), move |_| {
            if let Some(tx) = seen_tx.take() {
                let _ = tx.send(());
            }
        })
        .await
    });
    seen.await.unwrap();
    // Five minutes later the session is over; the next event about the request ends the watch.
    w.bg.clock.advance(std::time::Duration::from_secs(301));
    w.bg.vote(
        Target::Request(asked.id.clone()),
        "carol",
        Decision::Approve,
        0,
    )
    .await
    .unwrap();
    match waiter.await.unwrap() {
        Err(latchkey::client::ClientError::Refused(status)) => {
            assert_eq!(code(&status), "caller.session_required");
        }
        other => panic!("the watch outlived its session: {other:?}"),
    }
    w.bg.stop().await;
}

#[tokio::test]
async fn an_admin_proposes_a_change_from_their_laptop_signed_by_their_key() {
    let mut w = remote_world().await;
    let proposal = pb::ProposeChangeRequest {
        note: "erin joins the DBA rotation (ticket OPS-7)".into(),
        change: Some(pb::propose_change_request::Change::SetOperatorRoles(
            pb::SetOperatorRoles {
                operator: "erin".into(),
                roles: vec!["web-oncall".into(), "dba-oncall".into()],
            },
        )),
        ..Default::default()
    };
    let laptop = remote(&w).await;
    session(&mut w, &laptop, "alice").await;

    // A response signed for one proposal does not carry another.
    let begun = TrustServiceClient::new(laptop.clone())
        .begin_propose_change(pb::BeginProposeChangeRequest {
            operator: "alice".into(),
            proposal: Some(proposal.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let signed = w.bg.sign(
        "alice",
        0,
        serde_json::from_str(&begun.request_options_json).unwrap(),
    );
    let before = w.bg.snapshot();
    let swapped = TrustServiceClient::new(laptop.clone())
        .propose_change(pb::ProposeChangeRequest {
            note: "erin joins the DBA rotation (ticket OPS-8)".into(),
            ceremony_id: begun.ceremony_id.clone(),
            credential_json: signed,
            ..proposal.clone()
        })
        .await;
    assert_eq!(code(&swapped.unwrap_err()), "assertion.wrong_digest");
    assert_eq!(w.bg.snapshot(), before);

    // Signed through the client, as the CLI does over --server.
    let key = w.bg.keys.get_mut("alice").unwrap()[0].as_mut();
    let change = latchkey::client::propose_signed(laptop, proposal, "alice", key, Some(ORIGIN))
        .await
        .unwrap();
    assert_eq!(change.state(), pb::ChangeState::Pending);
    assert_eq!(change.proposer, "operator/alice");
    for admin in ["bob", "frank"] {
        w.bg.vote(
            Target::Change(change.id.clone()),
            admin,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    let records = all_records(w.bg.local().await).await;
    let signed = records
        .iter()
        .find(|r| {
            r.event == "change.proposal_signed" && r.subject == format!("change/{}", change.id)
        })
        .expect("the proposer's signature is in the audit log");
    let signed: serde_json::Value = serde_json::from_str(&signed.json).unwrap();
    assert!(
        signed["details"]["via"]
            .as_str()
            .unwrap()
            .starts_with("remote ")
    );
    assert!(signed["evidence"].is_object(), "{signed}");
    assert!(
        records
            .iter()
            .any(|r| r.event == "change.applied" && r.json.contains(&change.id))
    );
    w.bg.stop().await;
}
