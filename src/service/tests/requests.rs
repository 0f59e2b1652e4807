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
