//! A node on a shared store that stops hearing from it.

use super::*;
use crate::store::Txn;

#[test]
fn introspection_is_refused_once_the_shared_store_went_quiet_for_too_long() {
    use std::sync::atomic::Ordering;
    let mut w = World::ready();
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    for approver in ["alice", "bob"] {
        w.vote(approver, &target, Decision::Approve).unwrap();
    }
    let local = local();
    // On a store of its own nothing is ever followed: always answered.
    assert!(w.authority.introspect(&local, "lkbg_x").is_ok());
    w.authority.follow_shared_store().unwrap();
    assert!(w.authority.introspect(&local, "lkbg_x").is_ok());
    w.clock
        .advance(crate::base::constants::SHARED_STORE_STALE_AFTER + Duration::from_secs(1));
    let stale = w.authority.introspect(&local, "lkbg_x").unwrap_err();
    assert_eq!(stale.code(), "store.backend");
    assert!(stale.to_string().contains("shared store"), "{stale}");
    w.authority.follow_shared_store().unwrap();
    assert!(w.authority.introspect(&local, "lkbg_x").is_ok());
    assert_ne!(w.authority.followed_at.load(Ordering::Relaxed), i64::MIN);
}

#[test]
fn a_deposed_leader_cannot_revoke_and_a_lease_is_taken_only_when_free_or_run_out() {
    let mut w = World::ready();
    let lease = crate::base::constants::LEADER_LEASE;
    let (view, _) = w.request("carol");
    let target = VoteTarget::Request(view.request.id().to_owned());
    let mut grant = None;
    for approver in ["alice", "bob"] {
        grant = w
            .vote(approver, &target, Decision::Approve)
            .unwrap()
            .grant_id;
    }
    let grant = grant.unwrap();

    // On a store of its own a node leads without contest.
    assert!(w.authority.leads());
    w.authority.contest_leadership();
    assert!(!w.authority.leads(), "contesting: not before winning");
    assert!(w.authority.campaign("n1", lease).unwrap());
    assert!(w.authority.leads());
    assert!(w.authority.campaign("n1", lease).unwrap(), "renewed");
    let elections = || {
        w.authority
            .audit()
            .read(1, 10_000)
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "leader.elected")
            .count()
    };
    assert_eq!(elections(), 1, "a renewal is not an election");

    // Another node takes over behind n1's back (its lease ran out there, say).
    let mut takeover = Txn::new();
    takeover.put_raw(
        Keyspace::Meta,
        b"leader".to_vec(),
        br#"{"node":"n2","term":2}"#.to_vec(),
    );
    w.store.commit(&takeover).unwrap();
    // n1 still believes it leads; its write is fenced off.
    w.clock.advance(Duration::from_secs(3600));
    let fenced = w.authority.revoke_expired().unwrap_err();
    assert_eq!(fenced.code(), "store.conflict");
    let stored: crate::domain::grant::Grant =
        crate::store::read(w.store.as_ref(), grant.as_bytes())
            .unwrap()
            .unwrap();
    assert_eq!(stored.state, crate::domain::grant::GrantState::Active);
    // n2's lease (n1's old end) has run out by now: n1 takes it back for a new term.
    assert!(w.authority.campaign("n1", lease).unwrap());
    assert_eq!(elections(), 2);
    assert_eq!(w.authority.revoke_expired().unwrap(), 1);
}
