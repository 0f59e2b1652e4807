//! What the approval page asks of the service: one-touch reads that keep no session, and new
//! keys proposed by whoever holds them, decided by admins.

use super::*;
use crate::base::caller::RemotePeer;
use crate::domain::change::ChangeState;

/// A browser on the approval page.
fn page() -> Caller {
    Caller::Remote(RemotePeer {
        addr: "192.0.2.7:51000".parse().unwrap(),
        connection: 7,
        session_operator: None,
        web: true,
    })
}

fn key_count(w: &World, operator: &str) -> usize {
    w.authority
        .operators_list()
        .unwrap()
        .into_iter()
        .find(|(o, _)| o.name == operator)
        .map_or(0, |(_, keys)| keys.len())
}

#[test]
fn a_page_read_is_one_audited_touch_and_leaves_no_session_behind() {
    let mut w = World::ready();
    let (opened, _) = w.authority.begin_session(&page(), "carol").unwrap();
    let response = w.sign("carol", &opened);
    let reader = w
        .authority
        .prove_reader(&page(), &opened.ceremony_id, &response)
        .unwrap();
    assert_eq!(reader, "carol");
    assert_eq!(w.authority.session_operator(7), None, "nothing is kept");
    let replayed = w
        .authority
        .prove_reader(&page(), &opened.ceremony_id, &response)
        .unwrap_err();
    assert_eq!(replayed.code(), "assertion.challenge_reused");
    let local = w
        .authority
        .prove_reader(&local(), &opened.ceremony_id, &response)
        .unwrap_err();
    assert_eq!(local.code(), "session.remote_only");
}

#[test]
fn a_key_registered_on_the_page_counts_only_once_admins_approve_it() {
    let mut w = World::ready();
    let opened = w.authority.begin_key_proposal(&page(), "carol").unwrap();
    let laptop = w.dir.path().join("carol-laptop.softtoken");
    let response = SoftTokenKey::open_or_create(&laptop)
        .unwrap()
        .enroll(None, &opened.options_json, &opened.piv_challenge)
        .unwrap();
    let (key, change) = w
        .authority
        .propose_key(&page(), &opened.ceremony_id, &response, NOTE)
        .unwrap();
    assert_eq!(key.operator, "carol");
    assert_eq!(change.state, ChangeState::Pending);
    assert_eq!(
        change.change.proposer,
        Actor::Web {
            addr: "192.0.2.7:51000".into()
        }
    );
    assert_eq!(key_count(&w, "carol"), 1, "nothing counts before approval");
    let target = VoteTarget::Change(change.change.id.clone());
    for admin in ["alice", "bob"] {
        w.vote(admin, &target, Decision::Approve).unwrap();
    }
    assert_eq!(key_count(&w, "carol"), 2);
}

#[test]
fn the_page_proposes_keys_only_for_known_operators_after_genesis_with_a_proofing_note() {
    let genesis = World::genesis();
    let refused = genesis
        .authority
        .begin_key_proposal(&page(), "carol")
        .unwrap_err();
    assert_eq!(refused.code(), "change.local_only");

    let w = World::ready();
    let code = |r: Result<crate::domain::operator::Opened, _>| {
        r.map(|_| ())
            .map_err(|e: crate::service::workflow::WorkflowError| e.code())
    };
    assert_eq!(
        code(w.authority.begin_key_proposal(&page(), "mallory")),
        Err("operator.unknown")
    );
    assert_eq!(
        code(w.authority.begin_key_proposal(&local(), "carol")),
        Err("session.remote_only")
    );
    let opened = w.authority.begin_key_proposal(&page(), "carol").unwrap();
    let response = SoftTokenKey::open_or_create(&w.dir.path().join("spare.softtoken"))
        .unwrap()
        .enroll(None, &opened.options_json, &opened.piv_challenge)
        .unwrap();
    let changes = w.authority.changes(None).unwrap().len();
    let short = w
        .authority
        .propose_key(&page(), &opened.ceremony_id, &response, "trust me")
        .unwrap_err();
    assert_eq!(short.code(), "change.proofing_note_required");
    assert_eq!(w.authority.changes(None).unwrap().len(), changes);
    assert_eq!(key_count(&w, "carol"), 1);
}

#[test]
fn one_key_proposal_from_the_page_per_operator_waits_at_a_time_and_lists_only_their_keys() {
    let mut w = World::ready();
    let opened = w.authority.begin_key_proposal(&page(), "carol").unwrap();
    // The creation options exclude carol's key only, not everyone's.
    let options: serde_json::Value = serde_json::from_str(&opened.options_json).unwrap();
    let excluded = options["publicKey"]["excludeCredentials"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(excluded, 1, "{options}");
    let response = SoftTokenKey::open_or_create(&w.dir.path().join("spare.softtoken"))
        .unwrap()
        .enroll(None, &opened.options_json, &opened.piv_challenge)
        .unwrap();
    let (_, change) = w
        .authority
        .propose_key(&page(), &opened.ceremony_id, &response, NOTE)
        .unwrap();
    let again = w
        .authority
        .begin_key_proposal(&page(), "carol")
        .unwrap_err();
    assert_eq!(again.code(), "change.invalid");
    assert!(again.to_string().contains(&change.change.id), "{again}");
    // Another operator may still propose; once admins decide, carol may again.
    w.authority.begin_key_proposal(&page(), "alice").unwrap();
    let target = VoteTarget::Change(change.change.id.clone());
    for admin in ["alice", "bob"] {
        w.vote(admin, &target, Decision::Deny).ok();
    }
    assert!(w.authority.begin_key_proposal(&page(), "carol").is_ok());
}
