//! `latchkey.v1.TrustService`: trust-store changes and listings.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::blocking;
use super::identity::caller_of;
use super::system::timestamp;
use super::{status, to_status};
use crate::audit::Actor;
use crate::base::error::ErrorKind;
use crate::domain::change::ChangeState;
use crate::domain::operator::AuthenticatorState;
use crate::domain::policy::ApprovalPolicy;
use crate::domain::scope::{Requesters, RevocationSpec, Scope, SshSpec};
use crate::domain::trust::TrustStorePolicy;
use crate::domain::workload::Workload;
use crate::pb;
use crate::service::authority::Authority;
use crate::service::changes::{ChangeView, Proposal};

/// Serves `TrustService`.
#[derive(Debug, Clone)]
pub struct TrustApi {
    authority: Arc<Authority>,
}

impl TrustApi {
    /// The service over `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

fn duration_secs(d: Option<prost_types::Duration>, what: &str) -> Result<u64, Status> {
    match d {
        Some(d) if d.seconds > 0 && d.nanos == 0 => Ok(u64::try_from(d.seconds).unwrap_or(0)),
        _ => Err(status(
            ErrorKind::InvalidInput,
            "scope.invalid",
            &format!("{what} must be a whole, positive number of seconds"),
        )),
    }
}

fn secs(s: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(s).unwrap_or(i64::MAX),
        nanos: 0,
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
        default_ttl_secs: duration_secs(s.default_ttl, "default TTL")?,
        max_ttl_secs: duration_secs(s.max_ttl, "maximum TTL")?,
        policy: ApprovalPolicy {
            quorum: policy.quorum,
            approver_role: policy.approver_role,
            require_uv: policy.require_user_verification,
            require_attested: policy.require_attested_hardware,
            pending_timeout_secs: duration_secs(policy.pending_timeout, "pending timeout")?,
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
                t => duration_secs(t, "hook timeout")?,
            },
            confirm_within_secs: match s.revocation_deadline {
                None => RevocationSpec::default().confirm_within_secs,
                t => duration_secs(t, "revocation deadline")?,
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
        default_ttl: Some(secs(s.default_ttl_secs)),
        max_ttl: Some(secs(s.max_ttl_secs)),
        policy: Some(pb::ApprovalPolicy {
            quorum: s.policy.quorum,
            approver_role: s.policy.approver_role.clone(),
            require_user_verification: s.policy.require_uv,
            require_attested_hardware: s.policy.require_attested,
            pending_timeout: Some(secs(s.policy.pending_timeout_secs)),
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
        revocation_hook_timeout: Some(secs(s.revocation.hook_timeout_secs)),
        revocation_deadline: Some(secs(s.revocation.confirm_within_secs)),
    }
}

fn workload_to_pb(w: &Workload) -> pb::Workload {
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

/// A change as the API shows it.
pub fn change_to_pb(view: &ChangeView) -> pb::ChangeInfo {
    let c = &view.change;
    pb::ChangeInfo {
        id: c.id.clone(),
        kind: c.kind.name().to_owned(),
        subject: c.kind.subject(),
        note: c.note.clone(),
        proposer: actor_label(&c.proposer),
        created_at: Some(timestamp(c.created_at)),
        pending_until: Some(timestamp(c.pending_until)),
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
                at: Some(timestamp(v.at)),
            })
            .collect(),
        approvals: view.approvals,
        denials: view.denials,
        subjects: c.kind.subjects(),
        canonical_json: c.canonical_text.clone(),
        digest: c.digest().to_vec(),
    }
}

fn proposal(change: Option<pb::propose_change_request::Change>) -> Result<Proposal, Status> {
    use pb::propose_change_request::Change as C;
    Ok(match change {
        None => {
            return Err(status(
                ErrorKind::InvalidInput,
                "change.missing",
                "say what to change",
            ));
        }
        Some(C::RemoveAuthenticator(c)) => Proposal::RemoveAuthenticator {
            operator: c.operator,
            credential_id: c.credential_id,
        },
        Some(C::ReinstateAuthenticator(c)) => Proposal::ReinstateAuthenticator {
            operator: c.operator,
            credential_id: c.credential_id,
        },
        Some(C::RemoveOperator(c)) => Proposal::RemoveOperator {
            operator: c.operator,
        },
        Some(C::SetOperatorRoles(c)) => Proposal::SetOperatorRoles {
            operator: c.operator,
            roles: c.roles,
        },
        Some(C::PutScope(s)) => Proposal::PutScope(Box::new(scope_from_pb(s)?)),
        Some(C::RemoveScope(c)) => Proposal::RemoveScope(c.name),
        Some(C::PutWorkload(w)) => Proposal::PutWorkload {
            name: w.name,
            owner: w.owner,
            certificate_pem: w.certificate_pem,
            scopes: w.scopes,
            introspect: w.introspect,
        },
        Some(C::RemoveWorkload(c)) => Proposal::RemoveWorkload(c.name),
        Some(C::SetTrustPolicy(p)) => Proposal::SetTrustPolicy(TrustStorePolicy {
            quorum: p.quorum,
            approver_role: p.approver_role,
        }),
    })
}

fn change_state_filter(value: i32) -> Option<&'static str> {
    match pb::ChangeState::try_from(value) {
        Ok(pb::ChangeState::Pending) => Some("pending"),
        Ok(pb::ChangeState::Applied) => Some("applied"),
        Ok(pb::ChangeState::Denied) => Some("denied"),
        Ok(pb::ChangeState::Expired) => Some("expired"),
        _ => None,
    }
}

#[tonic::async_trait]
impl pb::trust_service_server::TrustService for TrustApi {
    async fn propose_change(
        &self,
        request: Request<pb::ProposeChangeRequest>,
    ) -> Result<Response<pb::ProposeChangeResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let proposal = proposal(req.change)?;
        let authority = self.authority.clone();
        let view = blocking(move || {
            authority
                .propose_change(&caller, proposal, &req.note)
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(pb::ProposeChangeResponse {
            change: Some(change_to_pb(&view)),
        }))
    }

    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        caller_of(&request)?;
        let state = change_state_filter(request.into_inner().state);
        let authority = self.authority.clone();
        let views = blocking(move || authority.changes(state).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListChangesResponse {
            changes: views.iter().map(change_to_pb).collect(),
        }))
    }

    async fn show_change(
        &self,
        request: Request<pb::ShowChangeRequest>,
    ) -> Result<Response<pb::ShowChangeResponse>, Status> {
        caller_of(&request)?;
        let id = request.into_inner().id;
        let authority = self.authority.clone();
        let view = blocking(move || authority.change(&id).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowChangeResponse {
            change: Some(change_to_pb(&view)),
        }))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let scopes = blocking(move || authority.scopes().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListScopesResponse {
            scopes: scopes
                .iter()
                .map(|s| pb::ScopeInfo {
                    scope: Some(scope_to_pb(s)),
                    findings: s.findings(),
                })
                .collect(),
        }))
    }

    async fn show_scope(
        &self,
        request: Request<pb::ShowScopeRequest>,
    ) -> Result<Response<pb::ShowScopeResponse>, Status> {
        caller_of(&request)?;
        let name = request.into_inner().name;
        let authority = self.authority.clone();
        let scope =
            blocking(move || authority.scope_named(&name).map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ShowScopeResponse {
            scope: Some(pb::ScopeInfo {
                scope: Some(scope_to_pb(&scope)),
                findings: scope.findings(),
            }),
        }))
    }

    async fn list_workloads(
        &self,
        request: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let workloads = blocking(move || authority.workloads().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads: workloads.iter().map(workload_to_pb).collect(),
        }))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        caller_of(&request)?;
        let authority = self.authority.clone();
        let operators =
            blocking(move || authority.operators_list().map_err(|e| to_status(&e))).await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: operators
                .into_iter()
                .map(|(op, keys)| {
                    let count = |f: fn(&AuthenticatorState) -> bool| {
                        u32::try_from(keys.iter().filter(|k| f(&k.state)).count()).unwrap_or(0)
                    };
                    pb::OperatorSummary {
                        name: op.name,
                        roles: op.roles,
                        active_keys: count(|s| matches!(s, AuthenticatorState::Active)),
                        suspended_keys: count(|s| {
                            matches!(s, AuthenticatorState::Suspended { .. })
                        }),
                    }
                })
                .collect(),
        }))
    }
}
