//! Approver notifications (out-of-band coordination): which audit records people are told
//! about, and what they are told — the request card and the exact `latchkey approve` line. The
//! daemon delivers them to its sinks; each sink's progress is a cursor in the store, moved in
//! the same transaction as the audit record of the delivery, so a restart resumes where it
//! stopped and every attempt is in the audit log.

use serde::Serialize;

use crate::audit::{AuditRecord, Event};
use crate::base::caller::Actor;
use crate::base::clock::Timestamp;
use crate::domain::request::Canonical;
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{Keyspace, Txn};

/// Where a sink's cursor lives in [`Keyspace::Meta`].
const CURSOR_PREFIX: &str = "notify_cursor/";

/// What a sink is told, as JSON (a command reads it on stdin, a webhook gets it as the body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// `request_created`, `request_approved`, `request_denied`, `request_cancelled`,
    /// `request_expired`, `issued`, `revoked` or `revocation_unconfirmed`.
    pub event: &'static str,
    /// The audit record it comes from.
    pub audit_seq: u64,
    /// When it happened (RFC 3339).
    pub time: String,
    /// Who did it (`operator/NAME`, `workload/NAME`, `local/UID`, `daemon`).
    pub actor: String,
    /// The scope.
    pub scope: String,
    /// The request card: who, what, why, for how long, who answers for it.
    pub request: Option<RequestCard>,
    /// The grant, for `issued`, `revoked` and `revocation_unconfirmed`.
    pub grant_id: Option<String>,
    /// What approvers run (for a pending request).
    pub approve: Option<String>,
    /// The approval page's link to the request (or, for grant events, the grant), when
    /// `[web]` is set.
    pub link: Option<String>,
    /// One message for people (Slack-compatible `text`).
    pub text: String,
}

/// A request as approvers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestCard {
    /// Request id.
    pub id: String,
    /// `operator/NAME` or `workload/NAME`.
    pub requester: String,
    /// Scope owner.
    pub owner: String,
    /// What to do once it is open.
    pub runbook: String,
    /// Runbook link, if any.
    pub runbook_url: String,
    /// Why.
    pub reason: String,
    /// Ticket reference.
    pub ticket: String,
    /// Granted TTL, seconds.
    pub ttl_secs: u64,
    /// Approvals needed, and from which role.
    pub quorum: u32,
    /// The role approvers must hold.
    pub approver_role: String,
    /// When it expires unless approved (RFC 3339).
    pub pending_until: String,
}

/// How one delivery attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The sink took it: the cursor moves past it.
    Delivered,
    /// It failed and will be tried again.
    Failed(String),
    /// It failed for the last time: the cursor moves past it.
    Abandoned(String),
}

/// The line approvers run, as notifications print it (tested against the CLI's clap tree).
pub fn approve_line(request_id: &str) -> String {
    format!("latchkey approve {request_id} --operator YOU")
}

fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

fn actor_label(actor: &Actor) -> String {
    match actor {
        Actor::Daemon => "daemon".to_owned(),
        Actor::Local { uid } => format!("local/{uid}"),
        Actor::Workload { name } => format!("workload/{name}"),
        Actor::Operator { name } => format!("operator/{name}"),
        Actor::Web { addr } => format!("web/{addr}"),
    }
}

fn card(c: &Canonical) -> RequestCard {
    RequestCard {
        id: c.id.clone(),
        requester: c.requester.clone(),
        owner: c.owner.clone(),
        runbook: c.runbook.clone(),
        runbook_url: c.runbook_url.clone(),
        reason: c.reason.clone(),
        ticket: c.ticket.clone(),
        ttl_secs: c.ttl_secs,
        quorum: c.quorum,
        approver_role: c.approver_role.clone(),
        pending_until: rfc3339(c.pending_until),
    }
}

/// The message for people, with control characters of user-supplied text made visible.
fn text_for(event: &str, actor: &str, c: &Canonical, grant: Option<&str>) -> String {
    let clean = |s: &str| s.escape_debug().to_string();
    let what = format!(
        "{} for scope {} (owner {}): \"{}\", {} min",
        clean(&c.requester),
        clean(&c.scope),
        clean(&c.owner),
        clean(&c.reason),
        c.ttl_secs / 60
    );
    match event {
        "request_created" => format!(
            "break-glass request {}: {what}. Needs {} approvals of role {} by {}. Runbook: {}. \
             Approve: `{}`",
            c.id,
            c.quorum,
            clean(&c.approver_role),
            rfc3339(c.pending_until),
            clean(&c.runbook),
            approve_line(&c.id)
        ),
        "request_approved" => format!("{actor} approved break-glass request {}: {what}", c.id),
        "request_denied" => format!("{actor} denied break-glass request {}: {what}", c.id),
        "request_cancelled" => format!("break-glass request {} was cancelled: {what}", c.id),
        "request_expired" => format!(
            "break-glass request {} expired without {} approvals of role {}: {what}",
            c.id,
            c.quorum,
            clean(&c.approver_role)
        ),
        "issued" => format!(
            "break-glass access issued (grant {}) on request {}: {what}",
            grant.unwrap_or_default(),
            c.id
        ),
        "revoked" => format!(
            "break-glass grant {} revoked and confirmed (request {}: {what})",
            grant.unwrap_or_default(),
            c.id
        ),
        _ => format!(
            "ALARM: revocation of break-glass grant {} is not confirmed past its deadline \
             (request {}: {what}); see `latchkey grant show {}`",
            grant.unwrap_or_default(),
            c.id,
            grant.unwrap_or_default()
        ),
    }
}

impl Authority {
    /// What a notification sink is told about `record`, if anything.
    pub fn notification_for(
        &self,
        record: &AuditRecord,
    ) -> Result<Option<Notification>, WorkflowError> {
        let event = match record.event.as_str() {
            "request.created" => "request_created",
            "request.approved" => "request_approved",
            "request.denied" => "request_denied",
            "request.cancelled" => "request_cancelled",
            "request.expired" => "request_expired",
            "grant.issued" => "issued",
            "grant.revoked" => "revoked",
            "grant.revocation_unconfirmed" => "revocation_unconfirmed",
            _ => return Ok(None),
        };
        let (request_id, grant_id) = match record.subject.split_once('/') {
            Some(("request", id)) => (id.to_owned(), None),
            Some(("grant", id)) => (self.grant(id)?.request_id, Some(id.to_owned())),
            _ => return Ok(None),
        };
        let request = self.request(&request_id)?;
        let canonical = &request.request.canonical;
        let actor = actor_label(&record.actor);
        // The approve line only while there is something to approve.
        let pending = matches!(event, "request_created" | "request_approved")
            && request.state == crate::domain::request::RequestState::Pending;
        let link = self
            .fido2_policy
            .page_origin
            .as_ref()
            .map(|origin| match &grant_id {
                Some(grant) => format!("{origin}/grants/{grant}"),
                None => format!("{origin}/requests/{}", canonical.id),
            });
        let mut text = text_for(event, &actor, canonical, grant_id.as_deref());
        if let Some(link) = &link {
            text.push_str(if pending {
                " — or in a browser: "
            } else {
                " — "
            });
            text.push_str(link);
        }
        Ok(Some(Notification {
            event,
            audit_seq: record.seq,
            time: rfc3339(record.time),
            text,
            link,
            actor,
            scope: canonical.scope.clone(),
            request: Some(card(canonical)),
            approve: pending.then(|| approve_line(&canonical.id)),
            grant_id,
        }))
    }

    /// The last audit sequence number `sink` has dealt with, if it ever started.
    pub fn notify_cursor(&self, sink: &str) -> Result<Option<u64>, WorkflowError> {
        let key = format!("{CURSOR_PREFIX}{sink}");
        Ok(self
            .store
            .get(Keyspace::Meta, key.as_bytes())?
            .and_then(|raw| <[u8; 8]>::try_from(raw.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Starts `sink` at the audit head (it is told what happens from now on), recorded in the
    /// audit log. Returns the cursor.
    pub fn start_notify_sink(&self, sink: &str) -> Result<u64, WorkflowError> {
        let head = self.audit.head_seq();
        self.move_cursor(
            sink,
            None,
            head,
            Event {
                event: "notify.sink_started",
                actor: Actor::Daemon,
                subject: format!("notify/{sink}"),
                details: serde_json::json!({ "from_seq": head }),
                evidence: None,
            },
        )?;
        Ok(head)
    }

    /// Records one delivery attempt of the notification for audit record `seq` to `sink`
    /// (cursor `from` before it); delivered or abandoned moves the cursor to `seq`.
    pub fn record_notify_attempt(
        &self,
        sink: &str,
        from: u64,
        notification: &Notification,
        attempt: u32,
        outcome: &Attempt,
    ) -> Result<(), WorkflowError> {
        let (name, error) = match outcome {
            Attempt::Delivered => ("notify.delivered", None),
            Attempt::Failed(e) => ("notify.failed", Some(e.as_str())),
            Attempt::Abandoned(e) => ("notify.abandoned", Some(e.as_str())),
        };
        let event = Event {
            event: name,
            actor: Actor::Daemon,
            subject: format!("notify/{sink}"),
            details: serde_json::json!({
                "audit_seq": notification.audit_seq,
                "event": notification.event,
                "attempt": attempt,
                "error": error,
            }),
            evidence: None,
        };
        match outcome {
            Attempt::Failed(_) => {
                self.audit.commit(Txn::new(), event)?;
                Ok(())
            }
            Attempt::Delivered | Attempt::Abandoned(_) => {
                self.move_cursor(sink, Some(from), notification.audit_seq, event)
            }
        }
    }

    /// Moves `sink`'s cursor from `from` (None: unset) to `to`, with `event`, atomically: a
    /// second daemon or a stale worker moving the same cursor fails instead of skipping.
    fn move_cursor(
        &self,
        sink: &str,
        from: Option<u64>,
        to: u64,
        event: Event,
    ) -> Result<(), WorkflowError> {
        let key = format!("{CURSOR_PREFIX}{sink}");
        let mut txn = Txn::new();
        match from {
            Some(from) => txn.require_equals(Keyspace::Meta, key.clone(), from.to_be_bytes()),
            None => txn.require_absent(Keyspace::Meta, key.clone()),
        };
        txn.put_raw(Keyspace::Meta, key, to.to_be_bytes());
        self.audit.commit(txn, event)?;
        Ok(())
    }
}
