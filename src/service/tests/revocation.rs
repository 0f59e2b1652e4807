//! Minting, delivery, introspection and revocation.

use super::*;
use crate::domain::grant::GrantState;

#[test]
fn the_minted_token_opens_only_with_the_requesters_key_and_introspects_active() {
    let mut w = World::ready();
    let (id, grant, token) = w.granted();
    let answer = w.authority.introspect(&local(), &token).unwrap();
    assert!(answer.active);
    assert_eq!(
        (answer.grant_id.as_str(), answer.scope.as_str()),
        (grant.as_str(), "db-root")
    );
    let sealed = w
        .authority
        .collect_credential(&local(), &id)
        .unwrap()
        .sealed_bearer
        .unwrap();
    assert!(DeliveryKey::generate().open(&sealed, &grant).is_err());
}

#[test]
fn no_stored_value_holds_the_bearer_token() {
    let mut w = World::ready();
    let (_, _, token) = w.granted();
    for (ks, key, value) in w.snapshot() {
        assert!(
            !value.windows(token.len()).any(|v| v == token.as_bytes())
                && !key.windows(token.len()).any(|k| k == token.as_bytes()),
            "{ks:?} holds the token"
        );
    }
}

#[test]
fn an_unknown_token_introspects_inactive() {
    let w = World::ready();
    let answer = w
        .authority
        .introspect(&local(), "lkbg_not-a-token")
        .unwrap();
    assert!(!answer.active);
    assert!(answer.grant_id.is_empty());
}

#[test]
fn an_early_revocation_makes_the_token_inactive_at_once() {
    let mut w = World::ready();
    let (_, grant, token) = w.granted();
    let reason = "incident resolved";
    let (opened, _) = w
        .authority
        .begin_revoke(&local(), &grant, "alice", reason)
        .unwrap();
    let response = w.sign("alice", &opened);
    let revoked = w
        .authority
        .revoke(&local(), &grant, reason, &opened.ceremony_id, &response)
        .unwrap();
    assert_ne!(revoked.state, GrantState::Active);
    assert!(!w.authority.introspect(&local(), &token).unwrap().active);
    assert!(
        revoked.sealed_bearer.is_none(),
        "nobody collects a revoked credential"
    );
}

#[test]
fn a_token_is_inactive_from_its_expiry_and_the_queue_revokes_it() {
    let mut w = World::ready();
    let (_, grant, token) = w.granted();
    assert_eq!(
        w.authority.revoke_expired().unwrap(),
        0,
        "nothing is due yet"
    );
    w.clock.advance(Duration::from_secs(601));
    assert!(!w.authority.introspect(&local(), &token).unwrap().active);
    assert_eq!(w.authority.revoke_expired().unwrap(), 1);
    assert_eq!(
        w.authority.grant(&grant).unwrap().state,
        GrantState::Revoked
    );
}

#[test]
fn only_allowed_callers_introspect() {
    let mut w = World::ready();
    let (_, _, token) = w.granted();
    let stranger = Caller::Local(LocalPeer {
        uid: UID + 1,
        gid: UID + 1,
        pid: None,
    });
    let refused = w.authority.introspect(&stranger, &token).unwrap_err();
    assert_eq!(refused.code(), "introspect.not_allowed");
    // The message names both ways to allow it.
    let message = refused.to_string();
    assert!(
        message.contains("introspect_uids") && message.contains("--introspect"),
        "{message}"
    );
}
