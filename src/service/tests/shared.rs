//! A node on a shared store that stops hearing from it.

use super::*;

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
