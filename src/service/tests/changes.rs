//! Trust-store changes: applied at trust quorum, never when they would lock the store out.

use super::*;

fn propose_roles(w: &World, operator: &str, roles: &[&str]) -> ChangeView {
    w.authority
        .propose_change(
            &local(),
            Proposal::Change(ChangeKind::SetOperatorRoles {
                operator: operator.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            }),
            NOTE,
        )
        .unwrap()
}

#[test]
fn a_role_change_applies_only_at_trust_quorum() {
    let mut w = World::ready();
    let change = propose_roles(&w, "carol", &[DBA, "auditor"]);
    let target = VoteTarget::Change(change.change.id.clone());
    w.vote("alice", &target, Decision::Approve).unwrap();
    assert_eq!(
        w.authority.operator("carol").unwrap().0.roles,
        vec![DBA.to_owned()]
    );
    w.vote("bob", &target, Decision::Approve).unwrap();
    assert_eq!(
        w.authority.operator("carol").unwrap().0.roles,
        vec![DBA.to_owned(), "auditor".to_owned()]
    );
}

#[test]
fn a_trust_quorum_above_the_approvers_enrolled_is_refused_and_stores_nothing() {
    let w = World::ready();
    let before = w.snapshot();
    let refused = w
        .authority
        .propose_change(
            &local(),
            Proposal::Change(ChangeKind::SetTrustPolicy {
                policy: TrustStorePolicy {
                    quorum: 3,
                    approver_role: TRUST_ADMIN.into(),
                },
            }),
            NOTE,
        )
        .unwrap_err();
    assert_eq!(refused.code(), "change.invalid");
    assert_eq!(w.snapshot(), before);
}

#[test]
fn removing_a_trust_admin_that_the_quorum_needs_is_refused_and_stores_nothing() {
    let w = World::ready();
    let before = w.snapshot();
    let refused = w
        .authority
        .propose_change(
            &local(),
            Proposal::Change(ChangeKind::SetOperatorRoles {
                operator: "bob".into(),
                roles: vec![DBA.into()],
            }),
            NOTE,
        )
        .unwrap_err();
    assert_eq!(refused.code(), "change.invalid");
    assert!(refused.to_string().contains("lock itself out"), "{refused}");
    assert_eq!(w.snapshot(), before);
}

#[test]
fn during_genesis_a_scope_applies_at_once() {
    let w = World::genesis();
    let view = w
        .authority
        .propose_change(
            &local(),
            Proposal::Change(ChangeKind::PutScope {
                scope: Box::new(db_root()),
            }),
            NOTE,
        )
        .unwrap();
    assert_eq!(w.authority.scope_named("db-root").unwrap(), db_root());
    assert_eq!(view.approvals, 0);
}

#[test]
fn a_key_or_a_pinned_workload_cannot_be_proposed_directly() {
    let w = World::ready();
    let (_, keys) = w.authority.operator("carol").unwrap();
    let before = w.snapshot();
    let key = Proposal::Change(ChangeKind::AddAuthenticator {
        operator: "mallory".into(),
        new_operator_roles: Some(vec![TRUST_ADMIN.into()]),
        authenticator: Box::new(keys[0].clone()),
    });
    assert_eq!(
        w.authority
            .propose_change(&local(), key, NOTE)
            .unwrap_err()
            .code(),
        "change.invalid"
    );
    assert_eq!(w.snapshot(), before);
}
