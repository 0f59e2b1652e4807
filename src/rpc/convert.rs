//! Proto ↔ domain conversion for every service: generated [`crate::pb`] messages to domain and
//! service types and back. A field the caller got wrong becomes an `INVALID_ARGUMENT` status
//! here; the adapters build only their own response envelopes.

use tonic::Status;

use super::{status, to_status};
use crate::audit::AuditRecord;
use crate::base::caller::{Actor, Caller};
use crate::base::clock::Timestamp;
use crate::base::error::ErrorKind;
use crate::credential::keys::Fingerprints;
use crate::domain::change::ChangeKind;
use crate::domain::change::ChangeState;
use crate::domain::drill::{DrillHistory, DrillRecord, DrillStep, StepOutcome};
use crate::domain::grant::{Grant, GrantState};
use crate::domain::operator::{Authenticator, AuthenticatorState, Operator};
use crate::domain::policy::{ApprovalPolicy, Decision};
use crate::domain::request::{Draft, RequestState};
use crate::domain::scope::{Requesters, RevocationSpec, Scope, SshSpec};
use crate::domain::trust::{Genesis, TrustStorePolicy};
use crate::domain::workload::Workload;
use crate::pb;
use crate::service::changes::{ChangeView, Proposal};
use crate::service::hygiene::{Finding, Level};
use crate::service::minting::Delivery;
use crate::service::requests::RequestView;
use crate::service::revocation::effective_state;
use crate::service::votes::VoteTarget;

// Time and durations.

/// A protobuf timestamp for a domain timestamp.
pub(super) fn timestamp_to_pb(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t.to_system_time())
}

/// A whole number of seconds as a protobuf duration.
fn seconds_to_pb(s: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(s).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

// The daemon and its callers.

/// A genesis window as the API shows it.
pub(super) fn genesis_to_pb(genesis: Genesis) -> pb::GenesisState {
    match genesis {
        Genesis::Open => pb::GenesisState::Open,
        Genesis::Closed { .. } => pb::GenesisState::Closed,
    }
}

/// The daemon's key fingerprints on the wire.
pub(super) fn fingerprints_to_pb(f: Fingerprints) -> pb::KeyFingerprints {
    pb::KeyFingerprints {
        audit_key: f.audit_key,
        ssh_user_ca: f.ssh_user_ca,
        tls_certificate: f.tls_certificate,
        tls_spki: f.tls_spki,
    }
}

/// A caller as the API shows it.
pub(super) fn caller_to_pb(caller: &Caller) -> pb::Caller {
    let identity = match caller {
        Caller::Local(p) => pb::caller::Identity::Local(pb::LocalCaller {
            uid: p.uid,
            gid: p.gid,
            pid: p.pid.unwrap_or(0),
        }),
        Caller::Workload(w) => pb::caller::Identity::Workload(pb::WorkloadCaller {
            name: w.name.clone(),
            spki_sha256: w.spki_sha256.clone(),
        }),
        Caller::Remote(r) => pb::caller::Identity::Remote(pb::RemoteCaller {
            address: r.addr.to_string(),
            session_operator: r.session_operator.clone().unwrap_or_default(),
        }),
    };
    pb::Caller {
        identity: Some(identity),
    }
}

/// A finding on the wire.
pub(super) fn finding_to_pb(f: &Finding) -> pb::Finding {
    let level = match f.level {
        Level::Pass => pb::FindingLevel::Pass,
        Level::Warn => pb::FindingLevel::Warn,
        Level::Fail => pb::FindingLevel::Fail,
    };
    pb::Finding {
        level: level.into(),
        check: f.check.clone(),
        detail: f.detail.clone(),
    }
}

/// A finding from the wire (an unknown level counts as a failure).
pub fn finding_from_pb(f: &pb::Finding) -> Finding {
    let level = match f.level() {
        pb::FindingLevel::Pass => Level::Pass,
        pb::FindingLevel::Warn => Level::Warn,
        pb::FindingLevel::Fail | pb::FindingLevel::Unspecified => Level::Fail,
    };
    Finding::new(level, &f.check, f.detail.clone())
}

// Operators and their keys.

/// The SHA-256 digest an assertion signs, from its wire bytes.
pub(super) fn digest_from_pb(bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| {
        status(
            ErrorKind::InvalidInput,
            "assertion.invalid_digest",
            &format!("digest must be 32 bytes (SHA-256), got {}", bytes.len()),
        )
    })
}

/// An operator's key as the API shows it.
pub(super) fn authenticator_to_pb(a: Authenticator) -> pb::AuthenticatorInfo {
    let piv = a.piv().cloned();
    let (state, reason) = match a.state {
        AuthenticatorState::Active => (pb::AuthenticatorState::Active, String::new()),
        AuthenticatorState::Suspended { reason, .. } => (pb::AuthenticatorState::Suspended, reason),
        AuthenticatorState::Removed { .. } => (pb::AuthenticatorState::Removed, String::new()),
    };
    pb::AuthenticatorInfo {
        kind: if piv.is_some() { "piv" } else { "fido2" }.to_owned(),
        piv_serial: piv.as_ref().map_or(0, |p| p.serial),
        piv_slot: piv.as_ref().map(|p| p.slot.clone()).unwrap_or_default(),
        piv_firmware: piv
            .as_ref()
            .map(|p| format!("{}.{}.{}", p.firmware.0, p.firmware.1, p.firmware.2))
            .unwrap_or_default(),
        piv_pin_policy: piv
            .as_ref()
            .map(|p| p.pin_policy.to_string())
            .unwrap_or_default(),
        piv_touch_policy: piv
            .as_ref()
            .map(|p| p.touch_policy.to_string())
            .unwrap_or_default(),
        credential_id: a.credential_id,
        algorithm: a.algorithm,
        aaguid: a.aaguid.map(|u| u.to_string()).unwrap_or_default(),
        counter: a.counter,
        state: state.into(),
        suspended_reason: reason,
        attested: a.attested,
    }
}

/// An operator with the number of its active and suspended keys.
pub(super) fn operator_summary_to_pb(op: Operator, keys: &[Authenticator]) -> pb::OperatorSummary {
    let count = |f: fn(&AuthenticatorState) -> bool| {
        u32::try_from(keys.iter().filter(|k| f(&k.state)).count()).unwrap_or(0)
    };
    pb::OperatorSummary {
        name: op.name,
        roles: op.roles,
        active_keys: count(|s| matches!(s, AuthenticatorState::Active)),
        suspended_keys: count(|s| matches!(s, AuthenticatorState::Suspended { .. })),
    }
}

// Requests and votes.

/// A request draft from the wire; the TTL, if given, in whole seconds.
pub(super) fn draft_from_pb(d: Option<pb::RequestDraft>) -> Result<Draft, Status> {
    let d = d.ok_or_else(|| {
        status(
            ErrorKind::InvalidInput,
            "request.missing_draft",
            "the request draft is missing",
        )
    })?;
    let ttl_secs = match d.ttl {
        None => None,
        Some(t) if t.seconds < 0 || t.nanos != 0 => {
            return Err(status(
                ErrorKind::InvalidInput,
                "request.invalid_ttl",
                "TTL must be a whole, positive number of seconds",
            ));
        }
        Some(t) => Some(u64::try_from(t.seconds).unwrap_or(0)),
    };
    Ok(Draft {
        scope: d.scope,
        reason: d.reason,
        ttl_secs,
        ticket: d.ticket,
        ssh_public_key: d.ssh_public_key,
        delivery_public_key: d.delivery_public_key,
    })
}

/// A vote's decision from the wire: approve or deny, nothing else.
pub(super) fn decision_from_pb(value: i32) -> Result<Decision, Status> {
    match pb::Decision::try_from(value) {
        Ok(pb::Decision::Approve) => Ok(Decision::Approve),
        Ok(pb::Decision::Deny) => Ok(Decision::Deny),
        _ => Err(status(
            ErrorKind::InvalidInput,
            "approval.invalid_decision",
            "decision must be APPROVE or DENY",
        )),
    }
}

fn decision_to_pb(d: Decision) -> pb::Decision {
    match d {
        Decision::Approve => pb::Decision::Approve,
        Decision::Deny => pb::Decision::Deny,
    }
}

/// What a vote is on: a request or a trust-store change.
pub(super) fn vote_target_from_pb(t: Option<pb::VoteTarget>) -> Result<VoteTarget, Status> {
    match t.and_then(|t| t.target) {
        Some(pb::vote_target::Target::RequestId(id)) => Ok(VoteTarget::Request(id)),
        Some(pb::vote_target::Target::ChangeId(id)) => Ok(VoteTarget::Change(id)),
        None => Err(status(
            ErrorKind::InvalidInput,
            "approval.missing_target",
            "say which request or change the vote is on",
        )),
    }
}

/// A request's state on the wire.
pub(super) fn request_state_to_pb(state: &RequestState) -> pb::RequestState {
    match state {
        RequestState::Pending => pb::RequestState::Pending,
        RequestState::Issued { .. } => pb::RequestState::Issued,
        RequestState::Denied { .. } => pb::RequestState::Denied,
        RequestState::Cancelled { .. } => pb::RequestState::Cancelled,
        RequestState::Expired { .. } => pb::RequestState::Expired,
    }
}

/// The request state a listing asks for, by name (`None`: every state).
pub(super) fn request_state_filter(value: i32) -> Option<&'static str> {
    match pb::RequestState::try_from(value) {
        Ok(pb::RequestState::Pending) => Some("pending"),
        Ok(pb::RequestState::Issued) => Some("issued"),
        Ok(pb::RequestState::Denied) => Some("denied"),
        Ok(pb::RequestState::Cancelled) => Some("cancelled"),
        Ok(pb::RequestState::Expired) => Some("expired"),
        _ => None,
    }
}

/// A request as the API shows it.
pub fn request_to_pb(view: &RequestView) -> pb::RequestInfo {
    let r = &view.request;
    let c = &r.canonical;
    pb::RequestInfo {
        id: c.id.clone(),
        scope: c.scope.clone(),
        requester: c.requester.clone(),
        reason: c.reason.clone(),
        ttl: Some(seconds_to_pb(c.ttl_secs)),
        ticket: c.ticket.clone(),
        ssh_public_key: c.ssh_public_key.clone(),
        scope_owner: c.owner.clone(),
        scope_runbook: c.runbook.clone(),
        scope_runbook_url: c.runbook_url.clone(),
        quorum: c.quorum,
        approver_role: c.approver_role.clone(),
        created_at: Some(timestamp_to_pb(c.created_at)),
        pending_until: Some(timestamp_to_pb(c.pending_until)),
        state: request_state_to_pb(&view.state).into(),
        votes: r
            .votes
            .iter()
            .map(|v| pb::VoteInfo {
                operator: v.operator.clone(),
                credential_id: v.credential_id.clone(),
                decision: decision_to_pb(v.decision).into(),
                user_verified: v.user_verified,
                at: Some(timestamp_to_pb(v.at)),
            })
            .collect(),
        approvals: view.approvals,
        denials: view.denials,
        grant_id: match &view.state {
            RequestState::Issued { grant_id, .. } => grant_id.clone(),
            _ => String::new(),
        },
        canonical_json: r.canonical_text.clone(),
        digest: r.digest().to_vec(),
    }
}

// Credentials and grants.

/// A minted credential as delivered to its requester (the bearer token only sealed).
pub(super) fn credential_to_pb(d: Delivery) -> Result<pb::Credential, Status> {
    let sealed_bearer_token = match d.sealed_bearer {
        Some(sealed) => Some(pb::SealedToken {
            encapsulated_key: sealed.encapsulated_key_bytes().map_err(|e| to_status(&e))?,
            ciphertext: sealed.ciphertext_bytes().map_err(|e| to_status(&e))?,
        }),
        None => None,
    };
    #[allow(deprecated)] // the plaintext field stays in the proto, always empty
    Ok(pb::Credential {
        grant_id: d.grant_id,
        bearer_token: String::new(),
        ssh_certificate: d.ssh_certificate.unwrap_or_default(),
        expires_at: Some(timestamp_to_pb(d.expires_at)),
        scope: d.scope,
        sealed_bearer_token,
    })
}

/// A grant's state on the wire.
pub(super) fn grant_state_to_pb(state: GrantState) -> pb::GrantState {
    match state {
        GrantState::Active => pb::GrantState::Active,
        GrantState::Revoking => pb::GrantState::Revoking,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::RevocationUnconfirmed => pb::GrantState::RevocationUnconfirmed,
    }
}

/// The grant state a listing asks for (`None`: every state).
pub(super) fn grant_state_filter(value: i32) -> Option<GrantState> {
    match pb::GrantState::try_from(value) {
        Ok(pb::GrantState::Active) => Some(GrantState::Active),
        Ok(pb::GrantState::Revoking) => Some(GrantState::Revoking),
        Ok(pb::GrantState::Revoked) => Some(GrantState::Revoked),
        Ok(pb::GrantState::RevocationUnconfirmed) => Some(GrantState::RevocationUnconfirmed),
        _ => None,
    }
}

/// A grant as the API shows it, in its state at `now`.
pub(super) fn grant_to_pb(grant: &Grant, now: Timestamp) -> pb::GrantInfo {
    let revocation = grant.revocation.as_ref();
    pb::GrantInfo {
        id: grant.id.clone(),
        request_id: grant.request_id.clone(),
        scope: grant.scope.clone(),
        requester: grant.requester.label(),
        issued_at: Some(timestamp_to_pb(grant.issued_at)),
        expires_at: Some(timestamp_to_pb(grant.expires_at)),
        state: grant_state_to_pb(effective_state(grant, now)).into(),
        bearer: grant.bearer_sha256.is_some(),
        ssh_serial: grant.ssh.as_ref().map_or(0, |s| s.serial),
        ssh_principals: grant
            .ssh
            .as_ref()
            .map(|s| s.principals.clone())
            .unwrap_or_default(),
        ssh_certificate: grant
            .ssh
            .as_ref()
            .map(|s| s.certificate.clone())
            .unwrap_or_default(),
        revocation_reason: revocation.map(|r| r.reason.clone()).unwrap_or_default(),
        revocation_started_at: revocation.map(|r| timestamp_to_pb(r.started_at)),
        revocation_deadline: revocation.map(|r| timestamp_to_pb(r.deadline)),
        revoked_at: revocation.and_then(|r| r.completed_at).map(timestamp_to_pb),
        sinks: revocation
            .map(|r| {
                r.sinks
                    .iter()
                    .map(|s| pb::SinkInfo {
                        sink: s.sink.label(),
                        confirmed: s.confirmed_at.is_some(),
                        confirmed_at: s.confirmed_at.map(timestamp_to_pb),
                        detail: s.detail.clone(),
                        attempts: s.attempts,
                        last_error: s.last_error.clone().unwrap_or_default(),
                        next_attempt_at: s
                            .confirmed_at
                            .is_none()
                            .then(|| timestamp_to_pb(s.next_attempt_at)),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

// Drills.

/// A drill step from the wire: it must have an outcome and may not take negative time.
pub(super) fn drill_step_from_pb(s: &pb::DrillStep) -> Result<DrillStep, Status> {
    let outcome = match s.outcome() {
        pb::DrillStepOutcome::Passed => StepOutcome::Passed,
        pb::DrillStepOutcome::Failed => StepOutcome::Failed,
        pb::DrillStepOutcome::Skipped => StepOutcome::Skipped,
        pb::DrillStepOutcome::Unspecified => {
            return Err(status(
                ErrorKind::InvalidInput,
                "drill.malformed",
                &format!("step {:?} has no outcome", s.name),
            ));
        }
    };
    let millis = match &s.took {
        Some(d) if d.seconds >= 0 && d.nanos >= 0 => u64::try_from(d.seconds)
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::try_from(d.nanos / 1_000_000).unwrap_or(0)),
        Some(_) => {
            return Err(status(
                ErrorKind::InvalidInput,
                "drill.malformed",
                &format!("step {:?} took a negative time", s.name),
            ));
        }
        None => 0,
    };
    Ok(DrillStep {
        name: s.name.clone(),
        outcome,
        millis,
        detail: s.detail.clone(),
    })
}

/// A drill step on the wire.
pub fn drill_step_to_pb(s: &DrillStep) -> pb::DrillStep {
    let outcome = match s.outcome {
        StepOutcome::Passed => pb::DrillStepOutcome::Passed,
        StepOutcome::Failed => pb::DrillStepOutcome::Failed,
        StepOutcome::Skipped => pb::DrillStepOutcome::Skipped,
    };
    pb::DrillStep {
        name: s.name.clone(),
        outcome: outcome.into(),
        took: Some(prost_types::Duration {
            seconds: i64::try_from(s.millis / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((s.millis % 1000) * 1_000_000).unwrap_or(0),
        }),
        detail: s.detail.clone(),
    }
}

/// A recorded drill on the wire.
pub(super) fn drill_to_pb(d: &DrillRecord) -> pb::DrillRecord {
    pb::DrillRecord {
        scope: d.scope.clone(),
        request_id: d.request_id.clone(),
        grant_id: d.grant_id.clone().unwrap_or_default(),
        by: d.by.clone(),
        recorded_at: Some(timestamp_to_pb(d.recorded_at)),
        passed: d.passed,
        steps: d.steps.iter().map(drill_step_to_pb).collect(),
    }
}

/// A scope's drills on the wire: the latest, and the latest that passed.
pub(super) fn scope_drills_to_pb(h: &DrillHistory) -> pb::ScopeDrills {
    pb::ScopeDrills {
        scope: h.scope.clone(),
        last: Some(drill_to_pb(&h.last)),
        last_passed: h.last_passed.as_ref().map(drill_to_pb),
    }
}

// Scopes, workloads and trust-store changes.

/// A scope duration from the wire: whole, positive seconds (`what` names it in the error).
fn scope_seconds_from_pb(d: Option<prost_types::Duration>, what: &str) -> Result<u64, Status> {
    match d {
        Some(d) if d.seconds > 0 && d.nanos == 0 => Ok(u64::try_from(d.seconds).unwrap_or(0)),
        _ => Err(status(
            ErrorKind::InvalidInput,
            "scope.invalid",
            &format!("{what} must be a whole, positive number of seconds"),
        )),
    }
}

fn bad_policy(field: &str, value: &str) -> Status {
    status(
        ErrorKind::InvalidInput,
        "scope.invalid",
        &format!("{field} {value:?}: expected never, once/cached or always"),
    )
}

/// A scope from its API form.
pub fn scope_from_pb(s: pb::Scope) -> Result<Scope, Status> {
    let policy = s.policy.ok_or_else(|| {
        status(
            ErrorKind::InvalidInput,
            "scope.invalid",
            "a scope needs an approval policy",
        )
    })?;
    Ok(Scope {
        name: s.name,
        owner: s.owner,
        runbook: s.runbook,
        runbook_url: s.runbook_url,
        bearer: s.bearer,
        ssh: s.ssh.map(|ssh| SshSpec {
            principals: ssh.principals,
            permit_port_forwarding: ssh.permit_port_forwarding,
        }),
        default_ttl_secs: scope_seconds_from_pb(s.default_ttl, "default TTL")?,
        max_ttl_secs: scope_seconds_from_pb(s.max_ttl, "maximum TTL")?,
        policy: ApprovalPolicy {
            quorum: policy.quorum,
            approver_role: policy.approver_role,
            require_uv: policy.require_user_verification,
            require_attested: policy.require_attested_hardware,
            pending_timeout_secs: scope_seconds_from_pb(policy.pending_timeout, "pending timeout")?,
            denials_to_reject: policy.denials_to_reject.max(1),
            piv_touch: match policy.piv_touch_policy.as_str() {
                "" => None,
                "never" => Some(crate::verify::piv::TouchPolicy::Never),
                "cached" => Some(crate::verify::piv::TouchPolicy::Cached),
                "always" => Some(crate::verify::piv::TouchPolicy::Always),
                other => return Err(bad_policy("piv_touch_policy", other)),
            },
            piv_pin: match policy.piv_pin_policy.as_str() {
                "" => None,
                "never" => Some(crate::verify::piv::PinPolicy::Never),
                "once" => Some(crate::verify::piv::PinPolicy::Once),
                "always" => Some(crate::verify::piv::PinPolicy::Always),
                other => return Err(bad_policy("piv_pin_policy", other)),
            },
        },
        requesters: Requesters {
            roles: s.requester_roles,
            workloads: s.requester_workloads,
        },
        revocation: RevocationSpec {
            consumers: s.revocation_consumers,
            hook: s.revocation_hook,
            hook_timeout_secs: match s.revocation_hook_timeout {
                None => RevocationSpec::default().hook_timeout_secs,
                t => scope_seconds_from_pb(t, "hook timeout")?,
            },
            confirm_within_secs: match s.revocation_deadline {
                None => RevocationSpec::default().confirm_within_secs,
                t => scope_seconds_from_pb(t, "revocation deadline")?,
            },
        },
    })
}

/// A scope in its API form.
pub fn scope_to_pb(s: &Scope) -> pb::Scope {
    pb::Scope {
        name: s.name.clone(),
        owner: s.owner.clone(),
        runbook: s.runbook.clone(),
        runbook_url: s.runbook_url.clone(),
        bearer: s.bearer,
        ssh: s.ssh.as_ref().map(|ssh| pb::SshSpec {
            principals: ssh.principals.clone(),
            permit_port_forwarding: ssh.permit_port_forwarding,
        }),
        default_ttl: Some(seconds_to_pb(s.default_ttl_secs)),
        max_ttl: Some(seconds_to_pb(s.max_ttl_secs)),
        policy: Some(pb::ApprovalPolicy {
            quorum: s.policy.quorum,
            approver_role: s.policy.approver_role.clone(),
            require_user_verification: s.policy.require_uv,
            require_attested_hardware: s.policy.require_attested,
            pending_timeout: Some(seconds_to_pb(s.policy.pending_timeout_secs)),
            denials_to_reject: s.policy.denials_to_reject,
            piv_touch_policy: s
                .policy
                .piv_touch
                .map(|t| t.to_string())
                .unwrap_or_default(),
            piv_pin_policy: s.policy.piv_pin.map(|p| p.to_string()).unwrap_or_default(),
        }),
        requester_roles: s.requesters.roles.clone(),
        requester_workloads: s.requesters.workloads.clone(),
        revocation_consumers: s.revocation.consumers.clone(),
        revocation_hook: s.revocation.hook.clone(),
        revocation_hook_timeout: Some(seconds_to_pb(s.revocation.hook_timeout_secs)),
        revocation_deadline: Some(seconds_to_pb(s.revocation.confirm_within_secs)),
    }
}

/// A scope with what hygiene finds wrong with it.
pub(super) fn scope_info_to_pb(s: &Scope) -> pb::ScopeInfo {
    pb::ScopeInfo {
        scope: Some(scope_to_pb(s)),
        findings: s.findings(),
    }
}

/// An admitted workload as the API shows it.
pub(super) fn workload_to_pb(w: &Workload) -> pb::Workload {
    pb::Workload {
        name: w.name.clone(),
        owner: w.owner.clone(),
        spki_sha256: w.spki_sha256.clone(),
        scopes: w.scopes.clone(),
        introspect: w.introspect,
    }
}

fn actor_label(actor: &Actor) -> String {
    match actor {
        Actor::Daemon => "latchkeyd".to_owned(),
        Actor::Local { uid } => format!("local/{uid}"),
        Actor::Workload { name } => format!("workload/{name}"),
        Actor::Operator { name } => format!("operator/{name}"),
        Actor::Web { addr } => format!("web/{addr}"),
    }
}

fn change_state_to_pb(state: &ChangeState) -> pb::ChangeState {
    match state {
        ChangeState::Pending => pb::ChangeState::Pending,
        ChangeState::Applied { .. } => pb::ChangeState::Applied,
        ChangeState::Denied { .. } => pb::ChangeState::Denied,
        ChangeState::Expired { .. } => pb::ChangeState::Expired,
    }
}

/// The change state a listing asks for, by name (`None`: every state).
pub(super) fn change_state_filter(value: i32) -> Option<&'static str> {
    match pb::ChangeState::try_from(value) {
        Ok(pb::ChangeState::Pending) => Some("pending"),
        Ok(pb::ChangeState::Applied) => Some("applied"),
        Ok(pb::ChangeState::Denied) => Some("denied"),
        Ok(pb::ChangeState::Expired) => Some("expired"),
        _ => None,
    }
}

/// A change as the API shows it.
pub fn change_to_pb(view: &ChangeView) -> pb::ChangeInfo {
    let c = &view.change;
    pb::ChangeInfo {
        id: c.id.clone(),
        kind: c.kind.name().to_owned(),
        subject: c.kind.subject(),
        note: c.note.clone(),
        proposer: actor_label(&c.proposer),
        created_at: Some(timestamp_to_pb(c.created_at)),
        pending_until: Some(timestamp_to_pb(c.pending_until)),
        state: change_state_to_pb(&view.state).into(),
        quorum: c.policy.quorum,
        approver_role: c.policy.approver_role.clone(),
        votes: c
            .votes
            .iter()
            .map(|v| pb::ChangeVote {
                operator: v.operator.clone(),
                credential_id: v.credential_id.clone(),
                decision: v.decision.as_str().to_owned(),
                at: Some(timestamp_to_pb(v.at)),
            })
            .collect(),
        approvals: view.approvals,
        denials: view.denials,
        subjects: c.kind.subjects(),
        canonical_json: c.canonical_text.clone(),
        digest: c.digest().to_vec(),
    }
}

/// A proposed trust-store change from the wire.
pub(super) fn proposal_from_pb(
    change: Option<pb::propose_change_request::Change>,
) -> Result<Proposal, Status> {
    use pb::propose_change_request::Change as C;
    Ok(match change {
        None => {
            return Err(status(
                ErrorKind::InvalidInput,
                "change.missing",
                "say what to change",
            ));
        }
        Some(C::RemoveAuthenticator(c)) => Proposal::Change(ChangeKind::RemoveAuthenticator {
            operator: c.operator,
            credential_id: c.credential_id,
        }),
        Some(C::ReinstateAuthenticator(c)) => {
            Proposal::Change(ChangeKind::ReinstateAuthenticator {
                operator: c.operator,
                credential_id: c.credential_id,
            })
        }
        Some(C::RemoveOperator(c)) => Proposal::Change(ChangeKind::RemoveOperator {
            operator: c.operator,
        }),
        Some(C::SetOperatorRoles(c)) => Proposal::Change(ChangeKind::SetOperatorRoles {
            operator: c.operator,
            roles: c.roles,
        }),
        Some(C::PutScope(s)) => Proposal::Change(ChangeKind::PutScope {
            scope: Box::new(scope_from_pb(s)?),
        }),
        Some(C::RemoveScope(c)) => Proposal::Change(ChangeKind::RemoveScope { name: c.name }),
        Some(C::PutWorkload(w)) => Proposal::PutWorkload {
            name: w.name,
            owner: w.owner,
            certificate_pem: w.certificate_pem,
            scopes: w.scopes,
            introspect: w.introspect,
        },
        Some(C::RemoveWorkload(c)) => Proposal::Change(ChangeKind::RemoveWorkload { name: c.name }),
        Some(C::SetTrustPolicy(p)) => Proposal::Change(ChangeKind::SetTrustPolicy {
            policy: TrustStorePolicy {
                quorum: p.quorum,
                approver_role: p.approver_role,
            },
        }),
    })
}

// The audit log.

/// A record as the API carries it: summary fields plus the exact hashed JSON.
pub fn record_to_pb(record: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: record.seq,
        time: Some(timestamp_to_pb(record.time)),
        event: record.event.clone(),
        subject: record.subject.clone(),
        hash: record.hash.clone(),
        checkpoint: record.checkpoint.is_some(),
        json: serde_json::to_string(record).unwrap_or_default(),
    }
}
