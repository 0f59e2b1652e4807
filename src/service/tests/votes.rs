//! Votes: who may vote, quorum, denial, and refusals that change nothing.

use super::*;
use crate::domain::request::RequestState;

#[test]
fn requester_cannot_approve_own_request() {
    let mut w = World::ready();
    // carol holds the scope's approver role, but she asked.
    let (view, _) = w.request("carol");
    let before = w.snapshot();
    let target = VoteTarget::Request(view.request.id().to_owned());
    assert_eq!(
        w.vote("carol", &target, Decision::Approve).unwrap_err(),
        "approval.requester"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn one_approval_is_not_quorum_and_the_second_mints_one_grant() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let first = w.vote("alice", &target, Decision::Approve).unwrap();
    assert_eq!(
        (first.approvals, first.quorum, first.grant_id),
        (1, 2, None)
    );
    let second = w.vote("bob", &target, Decision::Approve).unwrap();
    let grant = second.grant_id.expect("quorum mints");
    assert!(matches!(
        w.authority.request(view.request.id()).unwrap().state,
        RequestState::Issued { grant_id, .. } if grant_id == grant
    ));
}

#[test]
fn an_operator_counts_once() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    w.vote("alice", &target, Decision::Approve).unwrap();
    let before = w.snapshot();
    assert_eq!(
        w.vote("alice", &target, Decision::Approve).unwrap_err(),
        "approval.already_counted"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn a_denial_ends_the_request_and_later_votes_are_refused() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let denied = w.vote("alice", &target, Decision::Deny).unwrap();
    assert_eq!(denied.grant_id, None);
    assert!(matches!(
        w.authority.request(view.request.id()).unwrap().state,
        RequestState::Denied { .. }
    ));
    assert_eq!(
        w.vote("bob", &target, Decision::Approve).unwrap_err(),
        "request.closed"
    );
}

#[test]
fn a_replayed_assertion_is_refused_and_changes_nothing() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let (ceremony, response) = w.signed_vote("alice", &target, Decision::Approve);
    w.cast(&target, Decision::Approve, &ceremony, &response)
        .unwrap();
    let before = w.snapshot();
    assert_eq!(
        w.cast(&target, Decision::Approve, &ceremony, &response)
            .unwrap_err(),
        "assertion.challenge_reused"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn an_assertion_for_one_decision_cannot_cast_the_other() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let (ceremony, response) = w.signed_vote("alice", &target, Decision::Deny);
    let before = w.snapshot();
    assert_eq!(
        w.cast(&target, Decision::Approve, &ceremony, &response)
            .unwrap_err(),
        "assertion.wrong_digest"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn an_assertion_answered_after_its_challenge_expired_is_refused_and_changes_nothing() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let (ceremony, response) = w.signed_vote("alice", &target, Decision::Approve);
    w.clock
        .advance(crate::base::constants::DEFAULT_CHALLENGE_TTL + Duration::from_secs(1));
    let before = w.snapshot();
    assert_eq!(
        w.cast(&target, Decision::Approve, &ceremony, &response)
            .unwrap_err(),
        "assertion.challenge_expired"
    );
    assert_eq!(w.snapshot(), before);
}
