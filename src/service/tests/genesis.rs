//! Genesis: the first operators enroll without approval until the trust-store quorum of
//! approvers exists; then every new key waits for that quorum.

use super::*;
use crate::domain::trust::Genesis;

#[test]
fn genesis_closes_when_the_trust_quorum_of_approvers_is_enrolled() {
    let mut w = World::genesis();
    w.enroll("carol", &[DBA]);
    w.enroll("alice", &[DBA, TRUST_ADMIN]);
    assert_eq!(w.authority.status().unwrap().genesis, Genesis::Open);
    assert!(w.enroll("bob", &[DBA, TRUST_ADMIN]).is_none());
    assert!(matches!(
        w.authority.status().unwrap().genesis,
        Genesis::Closed { .. }
    ));
}

#[test]
fn after_genesis_a_new_key_is_a_change_that_applies_at_trust_quorum() {
    let mut w = World::ready();
    let change = w
        .enroll("dave", &[DBA])
        .expect("after genesis enrollment is a change");
    assert!(
        w.authority.operator("dave").is_err(),
        "not enrolled before quorum"
    );
    let target = VoteTarget::Change(change.change.id.clone());
    w.vote("alice", &target, Decision::Approve).unwrap();
    assert!(
        w.authority.operator("dave").is_err(),
        "one approval is not quorum"
    );
    w.vote("bob", &target, Decision::Approve).unwrap();
    let (dave, keys) = w.authority.operator("dave").unwrap();
    assert_eq!(dave.roles, vec![DBA.to_owned()]);
    assert_eq!(keys.len(), 1);
}

#[test]
fn the_operator_whose_key_is_proposed_cannot_approve_it() {
    let mut w = World::ready();
    // alice enrolls a second key: she is the change's subject.
    let change = w.enroll("alice", &[DBA, TRUST_ADMIN]).unwrap();
    let target = VoteTarget::Change(change.change.id.clone());
    let before = w.snapshot();
    assert_eq!(
        w.vote("alice", &target, Decision::Approve).unwrap_err(),
        "approval.subject_of_change"
    );
    assert_eq!(w.snapshot(), before);
}
