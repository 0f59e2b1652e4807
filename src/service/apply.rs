//! Applying a trust-store change at quorum, one function per kind of change, and the lock-out
//! guard: no change applies if it would leave fewer eligible approvers than the trust-store
//! quorum (counted under compare-and-set, so two changes cannot together do it).

use std::collections::HashMap;

use crate::audit::{Actor, Event};
use crate::base::clock::Timestamp;

use crate::domain::change::ChangeKind;
use crate::domain::operator::{Authenticator, AuthenticatorState, Operator};
use crate::domain::scope::Scope;
use crate::domain::trust;
use crate::domain::trust::{Genesis, META_KEY};
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::operators::{self as operator, OperatorError};
use crate::service::trust_store::{self};
use crate::service::workflow::*;
use crate::service::workloads::{self, WorkloadError};
use crate::store::{self, Keyspace, StoreError, Txn};

/// A trust-store change as the lock-out guard imagines it applied.
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::service) struct After<'a> {
    /// The operator whose roles change (or who is removed: `roles` None).
    operator: Option<&'a str>,
    /// That operator's roles afterwards.
    roles: Option<&'a [String]>,
    /// A key removed by the change.
    removed_key: Option<&'a str>,
}

/// An audit event by the daemon itself (what applying a change did).
pub(in crate::service) fn daemon_event(
    event: &'static str,
    subject: String,
    details: serde_json::Value,
) -> Event {
    Event {
        event,
        actor: Actor::Daemon,
        subject,
        details,
        evidence: None,
    }
}

impl Authority {
    /// Adds the writes of `kind` to `txn` (guarded by compare-and-set on everything read) and
    /// the audit events that describe them to `events`. Refuses what cannot apply now.
    pub(in crate::service) fn apply_change(
        &self,
        kind: &ChangeKind,
        change_id: &str,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let now = self.clock.now();
        match kind {
            ChangeKind::AddAuthenticator {
                operator,
                new_operator_roles,
                authenticator,
            } => self.apply_add_authenticator(
                operator,
                new_operator_roles.as_deref(),
                authenticator,
                (change_id, now),
                txn,
                events,
            ),
            ChangeKind::RemoveAuthenticator {
                operator,
                credential_id,
            } => self.apply_remove_authenticator(
                operator,
                credential_id,
                (change_id, now),
                txn,
                events,
            ),
            ChangeKind::ReinstateAuthenticator {
                operator,
                credential_id,
            } => self.apply_reinstate_authenticator(operator, credential_id, txn, events),
            ChangeKind::RemoveOperator { operator } => {
                self.apply_remove_operator(operator, now, txn, events)
            }
            ChangeKind::SetOperatorRoles { operator, roles } => {
                self.apply_set_operator_roles(operator, roles, txn)
            }
            ChangeKind::PutScope { scope } => self.apply_put_scope(scope, txn),
            ChangeKind::RemoveScope { name } => self.apply_remove_scope(name, txn),
            ChangeKind::PutWorkload { workload } => self.apply_put_workload(workload, txn),
            ChangeKind::RemoveWorkload { name } => self.apply_remove_workload(name, txn),
            ChangeKind::SetTrustPolicy { policy } => self.apply_set_trust_policy(policy, txn),
        }
    }

    /// The stored key `credential_id` of `operator`, with its bytes.
    pub(in crate::service) fn stored_key(
        &self,
        operator: &str,
        credential_id: &str,
    ) -> Result<(Authenticator, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Authenticators, credential_id.as_bytes())?
            .ok_or_else(|| WorkflowError::ChangeInvalid(format!("no key {credential_id}")))?;
        let key: Authenticator = store::decode(&raw)?;
        if key.operator != operator {
            return Err(WorkflowError::ChangeInvalid(format!(
                "key {credential_id} is not {operator}'s"
            )));
        }
        Ok((key, raw))
    }

    /// The stored operator `name`, with its bytes.
    pub(in crate::service) fn stored_operator(
        &self,
        name: &str,
    ) -> Result<(Operator, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Operators, name.as_bytes())?
            .ok_or_else(|| OperatorError::UnknownOperator(name.to_owned()))?;
        Ok((store::decode(&raw)?, raw))
    }

    pub(in crate::service) fn apply_add_authenticator(
        &self,
        operator: &str,
        new_operator_roles: Option<&[String]>,
        authenticator: &Authenticator,
        (change_id, now): (&str, Timestamp),
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let store = self.store.as_ref();
        if let Some(existing) =
            store::read::<Authenticator>(store, authenticator.credential_id.as_bytes())?
        {
            return Err(OperatorError::CredentialTaken(existing.operator).into());
        }
        let roles = match (self.stored_operator(operator), new_operator_roles) {
            (Ok((op, raw)), _) => {
                txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw);
                op.roles
            }
            (Err(_), Some(roles)) => {
                for role in roles {
                    operator::check_name("role", role)?;
                }
                let op = Operator {
                    name: operator.to_owned(),
                    roles: roles.to_vec(),
                    user_id: webauthn_rs::prelude::Uuid::new_v4(),
                    enrolled_at: now,
                };
                txn.require_absent(Keyspace::Operators, operator.as_bytes())
                    .put(operator.as_bytes(), &op)?;
                roles.to_vec()
            }
            (Err(e), None) => return Err(e),
        };
        let mut key = authenticator.clone();
        key.enrolled_at = now;
        operator::enrol_key(txn, &key)?;
        events.push(daemon_event(
            crate::audit::verify::ENROLLED_EVENT,
            format!("operator/{operator}"),
            serde_json::json!({
                "operator": operator,
                "roles": roles,
                "credential_id": key.credential_id,
                "algorithm": key.algorithm,
                "public_key": key.public_key,
                "aaguid": key.aaguid.map(|u| u.to_string()),
                "attested": key.attested,
                "path": format!("change/{change_id}"),
            }),
        ));
        Ok(())
    }

    pub(in crate::service) fn apply_remove_authenticator(
        &self,
        operator: &str,
        credential_id: &str,
        (change_id, now): (&str, Timestamp),
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let (mut key, raw) = self.stored_key(operator, credential_id)?;
        if matches!(key.state, AuthenticatorState::Removed { .. }) {
            return Err(WorkflowError::ChangeInvalid(format!(
                "key {credential_id} is already removed"
            )));
        }
        key.state = AuthenticatorState::Removed { at: now };
        txn.require_equals(Keyspace::Authenticators, credential_id.as_bytes(), raw)
            .put(credential_id.as_bytes(), &key)?;
        self.check_trust_quorum_after(
            After {
                removed_key: Some(credential_id),
                ..After::default()
            },
            txn,
        )?;
        events.push(daemon_event(
            crate::audit::verify::REMOVED_EVENT,
            format!("operator/{operator}"),
            serde_json::json!({ "credential_id": credential_id, "path": format!("change/{change_id}") }),
        ));
        Ok(())
    }

    pub(in crate::service) fn apply_reinstate_authenticator(
        &self,
        operator: &str,
        credential_id: &str,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let (mut key, raw) = self.stored_key(operator, credential_id)?;
        if !matches!(key.state, AuthenticatorState::Suspended { .. }) {
            return Err(WorkflowError::ChangeInvalid(format!(
                "key {credential_id} is not suspended"
            )));
        }
        key.state = AuthenticatorState::Active;
        txn.require_equals(Keyspace::Authenticators, credential_id.as_bytes(), raw)
            .put(credential_id.as_bytes(), &key)?;
        events.push(daemon_event(
            "authenticator.reinstated",
            format!("operator/{operator}"),
            serde_json::json!({ "credential_id": credential_id }),
        ));
        Ok(())
    }

    pub(in crate::service) fn apply_remove_operator(
        &self,
        operator: &str,
        now: Timestamp,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<(), WorkflowError> {
        let (_, raw) = self.stored_operator(operator)?;
        txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw)
            .delete(Keyspace::Operators, operator.as_bytes());
        for key in operator::keys_of(self.store.as_ref(), operator)? {
            if matches!(key.state, AuthenticatorState::Removed { .. }) {
                continue;
            }
            let raw = store::encode(&key)?;
            let mut removed = key.clone();
            removed.state = AuthenticatorState::Removed { at: now };
            txn.require_equals(Keyspace::Authenticators, key.credential_id.as_bytes(), raw)
                .put(key.credential_id.as_bytes(), &removed)?;
            events.push(daemon_event(
                crate::audit::verify::REMOVED_EVENT,
                format!("operator/{operator}"),
                serde_json::json!({ "credential_id": key.credential_id }),
            ));
        }
        self.check_trust_quorum_after(
            After {
                operator: Some(operator),
                ..After::default()
            },
            txn,
        )
    }

    pub(in crate::service) fn apply_set_operator_roles(
        &self,
        operator: &str,
        roles: &[String],
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        for role in roles {
            operator::check_name("role", role)?;
        }
        let (mut op, raw) = self.stored_operator(operator)?;
        op.roles = roles.to_vec();
        txn.require_equals(Keyspace::Operators, operator.as_bytes(), raw)
            .put(operator.as_bytes(), &op)?;
        self.check_trust_quorum_after(
            After {
                operator: Some(operator),
                roles: Some(roles),
                removed_key: None,
            },
            txn,
        )
    }

    pub(in crate::service) fn apply_put_scope(
        &self,
        scope: &Scope,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        scope.validate()?;
        match self.store.get(Keyspace::Scopes, scope.name.as_bytes())? {
            Some(raw) => txn.require_equals(Keyspace::Scopes, scope.name.as_bytes(), raw),
            None => txn.require_absent(Keyspace::Scopes, scope.name.as_bytes()),
        };
        txn.put(scope.name.as_bytes(), scope)?;
        Ok(())
    }

    pub(in crate::service) fn apply_remove_scope(
        &self,
        name: &str,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Scopes, name.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownScope(name.to_owned()))?;
        txn.require_equals(Keyspace::Scopes, name.as_bytes(), raw)
            .delete(Keyspace::Scopes, name.as_bytes());
        Ok(())
    }

    pub(in crate::service) fn apply_put_workload(
        &self,
        workload: &Workload,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        let store = self.store.as_ref();
        workloads::validate(workload)?;
        if let Some(owner) = store.get(Keyspace::WorkloadPins, workload.spki_sha256.as_bytes())?
            && owner != workload.name.as_bytes()
        {
            return Err(
                WorkloadError::PinTaken(String::from_utf8_lossy(&owner).into_owned()).into(),
            );
        }
        match store.get(Keyspace::Workloads, workload.name.as_bytes())? {
            Some(raw) => {
                let old: Workload = store::decode(&raw)?;
                txn.require_equals(Keyspace::Workloads, workload.name.as_bytes(), raw)
                    .delete(Keyspace::WorkloadPins, old.spki_sha256.as_bytes());
            }
            None => {
                txn.require_absent(Keyspace::Workloads, workload.name.as_bytes());
            }
        }
        txn.put(workload.name.as_bytes(), workload)?.put_raw(
            Keyspace::WorkloadPins,
            workload.spki_sha256.as_bytes(),
            workload.name.as_bytes(),
        );
        Ok(())
    }

    pub(in crate::service) fn apply_remove_workload(
        &self,
        name: &str,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Workloads, name.as_bytes())?
            .ok_or_else(|| WorkflowError::ChangeInvalid(format!("no workload {name}")))?;
        let old: Workload = store::decode(&raw)?;
        txn.require_equals(Keyspace::Workloads, name.as_bytes(), raw)
            .delete(Keyspace::Workloads, name.as_bytes())
            .delete(Keyspace::WorkloadPins, old.spki_sha256.as_bytes());
        Ok(())
    }

    pub(in crate::service) fn apply_set_trust_policy(
        &self,
        policy: &trust::TrustStorePolicy,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        if policy.quorum == 0 || policy.quorum > crate::base::constants::MAX_QUORUM {
            return Err(WorkflowError::ChangeInvalid(
                "quorum must be between 1 and 32".into(),
            ));
        }
        operator::check_name("role", &policy.approver_role)?;
        let eligible = self.eligible_approvers(&policy.approver_role, After::default(), txn)?;
        if eligible < policy.quorum {
            return Err(WorkflowError::ChangeInvalid(format!(
                "only {eligible} operators with an active key hold role {}: a quorum of {} could never be met",
                policy.approver_role, policy.quorum
            )));
        }
        let (mut meta, raw) = trust_store::read_meta(self.store.as_ref())?;
        meta.policy = policy.clone();
        txn.require_equals(Keyspace::Meta, META_KEY, raw)
            .put(META_KEY, &meta)?;
        Ok(())
    }

    /// How many operators could approve with `role` once a change is applied: each needs an
    /// active key (not `after.removed_key`) and the role (`after.roles` for `after.operator`;
    /// none if that operator is removed). Every record the count rests on (active keys, counted
    /// operators) is compared-and-set in `guard`, so two changes that each pass alone cannot
    /// both commit when together they would lock the trust store out (write skew).
    pub(in crate::service) fn eligible_approvers(
        &self,
        role: &str,
        after: After<'_>,
        guard: &mut Txn,
    ) -> Result<u32, WorkflowError> {
        let store = self.store.as_ref();
        let mut with_key: HashMap<String, bool> = HashMap::new();
        for (id, raw) in store.scan_from(Keyspace::Authenticators, b"", usize::MAX)? {
            let standing: crate::domain::operator::KeyStanding = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::Corrupt {
                    keyspace: Keyspace::Authenticators.name(),
                    detail: e.to_string(),
                })?;
            if standing.state != AuthenticatorState::Active
                || after.removed_key == Some(String::from_utf8_lossy(&id).as_ref())
            {
                continue;
            }
            with_key.insert(standing.operator, true);
            guard.require_equals(Keyspace::Authenticators, id, raw);
        }
        let mut count = 0u32;
        for (name, raw) in store.scan_from(Keyspace::Operators, b"", usize::MAX)? {
            let op: Operator = store::decode(&raw)?;
            if !with_key.contains_key(&op.name) {
                continue;
            }
            let holds = if after.operator == Some(op.name.as_str()) {
                after.roles.is_some_and(|r| r.iter().any(|x| x == role))
            } else {
                op.roles.iter().any(|x| x == role)
            };
            if holds {
                count += 1;
                guard.require_equals(Keyspace::Operators, name, raw);
            }
        }
        Ok(count)
    }

    /// Refuses a change that would leave the trust store unable to reach its own quorum. The
    /// records the decision rests on (metadata, keys, operators) are guarded in `txn`.
    pub(in crate::service) fn check_trust_quorum_after(
        &self,
        after: After<'_>,
        txn: &mut Txn,
    ) -> Result<(), WorkflowError> {
        let (meta, meta_raw) = trust_store::read_meta(self.store.as_ref())?;
        if meta.genesis == Genesis::Open {
            return Ok(());
        }
        txn.require_equals(Keyspace::Meta, META_KEY, meta_raw);
        let eligible = self.eligible_approvers(&meta.policy.approver_role, after, txn)?;
        if eligible < meta.policy.quorum {
            return Err(WorkflowError::ChangeInvalid(format!(
                "after this change only {eligible} operators could approve trust-store changes (quorum {}): the trust store would lock itself out",
                meta.policy.quorum
            )));
        }
        Ok(())
    }

    // ----- listings ------------------------------------------------------------------------
}
