//! Requests: a signed draft becomes a pending request, or is refused and nothing is stored.

use super::*;
use crate::domain::request::RequestState;

#[test]
fn a_signed_draft_becomes_a_pending_request_with_no_votes() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    assert_eq!(view.state, RequestState::Pending);
    assert_eq!((view.approvals, view.denials), (0, 0));
    let stored = w.authority.request(view.request.id()).unwrap();
    assert_eq!(stored.request, view.request);
}

#[test]
fn a_bearer_request_without_a_delivery_key_is_refused_and_stores_nothing() {
    let w = World::ready();
    let draft = Draft {
        scope: "db-root".into(),
        reason: "primary database down, failover stuck".into(),
        ttl_secs: None,
        ticket: String::new(),
        ssh_public_key: String::new(),
        delivery_public_key: Vec::new(),
    };
    let before = w.snapshot();
    let refused = w
        .authority
        .begin_request(&local(), "carol", &draft)
        .unwrap_err();
    assert_eq!(refused.code(), "request.delivery_key_required");
    assert_eq!(w.snapshot(), before);
}

#[test]
fn a_request_for_an_unknown_scope_is_refused() {
    let w = World::ready();
    let draft = Draft {
        scope: "no-such-scope".into(),
        reason: "primary database down, failover stuck".into(),
        ttl_secs: None,
        ticket: String::new(),
        ssh_public_key: String::new(),
        delivery_public_key: DeliveryKey::generate().public_key().to_vec(),
    };
    let refused = w
        .authority
        .begin_request(&local(), "carol", &draft)
        .unwrap_err();
    assert_eq!(refused.code(), "scope.unknown");
}

#[test]
fn a_ttl_above_the_scope_maximum_is_refused() {
    let w = World::ready();
    let draft = Draft {
        scope: "db-root".into(),
        reason: "primary database down, failover stuck".into(),
        ttl_secs: Some(db_root().max_ttl_secs + 1),
        ticket: String::new(),
        ssh_public_key: String::new(),
        delivery_public_key: DeliveryKey::generate().public_key().to_vec(),
    };
    assert!(
        w.authority
            .begin_request(&local(), "carol", &draft)
            .is_err()
    );
}

#[test]
fn a_pending_request_expires_when_its_deadline_passes() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    w.clock.advance(Duration::from_secs(
        db_root().policy.pending_timeout_secs + 1,
    ));
    let target = VoteTarget::Request(view.request.id().to_owned());
    assert_eq!(
        w.vote("alice", &target, Decision::Approve).unwrap_err(),
        "request.expired"
    );
}

#[test]
fn a_request_that_lapses_is_written_down_as_expired_once_and_a_decided_one_is_not() {
    let mut w = World::ready();
    let (lapsing, _) = w.request("carol");
    let (decided, _) = w.request("carol");
    let target = VoteTarget::Request(decided.request.id().to_owned());
    w.vote("alice", &target, Decision::Deny).unwrap();
    // Nothing is due before the deadline.
    assert_eq!(w.authority.expire_lapsed_requests().unwrap(), 0);

    w.clock.advance(Duration::from_secs(601));
    assert_eq!(w.authority.expire_lapsed_requests().unwrap(), 1);
    let id = lapsing.request.id();
    let stored: crate::domain::request::Request =
        crate::store::read(w.store.as_ref(), id.as_bytes())
            .unwrap()
            .unwrap();
    assert!(matches!(stored.state, RequestState::Expired { .. }));
    let records = w.authority.audit().read(1, 1000).unwrap();
    let expired: Vec<_> = records
        .iter()
        .filter(|r| r.event == "request.expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].subject, format!("request/{id}"));
    // Once only, and votes on it are refused as before.
    let before = w.snapshot();
    assert_eq!(w.authority.expire_lapsed_requests().unwrap(), 0);
    assert_eq!(
        w.vote(
            "alice",
            &VoteTarget::Request(id.to_owned()),
            Decision::Approve
        )
        .unwrap_err(),
        "request.expired"
    );
    assert_eq!(w.snapshot(), before);
}
