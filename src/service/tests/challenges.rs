//! Challenges: bounded, and swept once expired (a flood of Begin calls cannot grow the store).

use super::*;
use crate::base::constants::{DEFAULT_CHALLENGE_TTL, MAX_KEPT_CHALLENGES};

fn kept_in_store(w: &World) -> u64 {
    w.store.count(Keyspace::Ceremonies).unwrap()
}

#[test]
fn expired_challenges_are_swept_and_a_used_ones_replay_stays_refused() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    // One challenge answered (its tombstone stays), one never answered.
    let (ceremony, response) = w.signed_vote("alice", &target, Decision::Approve);
    w.cast(&target, Decision::Approve, &ceremony, &response)
        .unwrap();
    w.authority
        .begin_vote(&local(), &target, "bob", Decision::Approve)
        .unwrap();
    let kept = kept_in_store(&w);
    assert!(kept >= 2, "{kept}");
    assert_eq!(w.authority.challenges_kept(), kept);

    // Within a challenge lifetime past expiry nothing goes: replays still read "reused".
    w.clock.advance(DEFAULT_CHALLENGE_TTL);
    assert_eq!(w.authority.sweep_challenges().unwrap(), 0);
    assert_eq!(
        w.cast(&target, Decision::Approve, &ceremony, &response)
            .unwrap_err(),
        "assertion.challenge_reused"
    );

    w.clock
        .advance(DEFAULT_CHALLENGE_TTL + Duration::from_secs(1));
    assert_eq!(w.authority.sweep_challenges().unwrap(), kept);
    assert_eq!(kept_in_store(&w), 0);
    assert_eq!(w.authority.challenges_kept(), 0);
    // The replay is refused all the same, and changes nothing.
    let before = w.snapshot();
    assert_eq!(
        w.cast(&target, Decision::Approve, &ceremony, &response)
            .unwrap_err(),
        "assertion.challenge_unknown"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn begin_calls_past_the_challenge_limit_are_refused_and_write_nothing() {
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let refused = loop {
        match w
            .authority
            .begin_vote(&local(), &target, "alice", Decision::Approve)
        {
            Ok(_) => assert!(kept_in_store(&w) <= MAX_KEPT_CHALLENGES),
            Err(e) => break e.code(),
        }
    };
    assert_eq!(refused, "assertion.too_many_challenges");
    assert_eq!(kept_in_store(&w), MAX_KEPT_CHALLENGES);
    let before = w.snapshot();
    assert_eq!(
        w.authority
            .begin_vote(&local(), &target, "bob", Decision::Approve)
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("assertion.too_many_challenges")
    );
    assert_eq!(w.snapshot(), before);

    // Once the flood's challenges expire and are swept, approvers can act again.
    w.clock
        .advance(2 * DEFAULT_CHALLENGE_TTL + Duration::from_secs(1));
    assert_eq!(w.authority.sweep_challenges().unwrap(), MAX_KEPT_CHALLENGES);
    w.vote("alice", &target, Decision::Approve).unwrap();
}
