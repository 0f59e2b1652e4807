//! Notifications: what a sink is told of a request, its cursor, and doctor's view of it.

use super::*;
use crate::service::hygiene::Level;
use crate::service::notifications::Attempt;

#[test]
fn a_new_request_tells_sinks_the_card_and_a_failing_sink_shows_in_doctor_until_it_delivers() {
    let mut w = World::ready();
    // The sink starts before the request: it is told of what comes after its cursor.
    let from = w.authority.start_notify_sink("pager").unwrap();
    let (view, _) = w.request("carol");
    let id = view.request.id().to_owned();
    let records = w.authority.audit().read(1, 1000).unwrap();
    let created = records
        .iter()
        .find(|r| r.event == "request.created")
        .unwrap();
    let told = w.authority.notification_for(created).unwrap().unwrap();
    assert_eq!(told.event, "request_created");
    assert_eq!(
        told.approve.as_deref(),
        Some(format!("latchkey approve {id} --operator YOU").as_str())
    );
    let card = told.request.as_ref().unwrap();
    assert_eq!(card.requester, "operator/carol");
    assert!(told.text.contains(&id) && told.text.contains("db-root"));

    let failing = |w: &World| {
        w.authority
            .diagnose(Duration::from_secs(30 * 86400))
            .unwrap()
            .into_iter()
            .find(|f| f.check == "notify.failing")
            .unwrap()
    };
    assert!(told.audit_seq > from);
    assert_eq!(failing(&w).level, Level::Pass);
    w.authority
        .record_notify_attempt("pager", from, &told, 1, &Attempt::Failed("boom".into()))
        .unwrap();
    let finding = failing(&w);
    assert_eq!(finding.level, Level::Warn);
    assert!(
        finding.detail.contains("pager (notify.failed"),
        "{}",
        finding.detail
    );
    // A failed attempt does not move the cursor; the delivery does.
    assert_eq!(w.authority.notify_cursor("pager").unwrap(), Some(from));
    w.authority
        .record_notify_attempt("pager", from, &told, 2, &Attempt::Delivered)
        .unwrap();
    assert_eq!(failing(&w).level, Level::Pass);
    assert_eq!(
        w.authority.notify_cursor("pager").unwrap(),
        Some(told.audit_seq)
    );
    // A stale worker moving the cursor from where it no longer is fails instead of skipping.
    assert!(
        w.authority
            .record_notify_attempt("pager", from, &told, 3, &Attempt::Delivered)
            .is_err()
    );
}
