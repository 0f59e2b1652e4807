//! Drills: the whole break-glass path exercised before the outage (DESIGN principle 8, flow 9).
//! The CLI walks the steps and reports them; the daemon records the result per scope. A drill
//! counts as passed only if every reported step passed or was skipped *and* the daemon itself
//! saw the drill's grant issued and its revocation confirmed.

use crate::audit::{Actor, AuditError, Event};
use crate::base::caller::Caller;
use crate::base::error::{Coded, ErrorKind};
use crate::domain::drill::{DrillHistory, DrillRecord, DrillStep, StepOutcome, check_steps};
use crate::domain::grant::GrantState;
use crate::domain::request::{RequestState, Requester};
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, StoreError, Txn};

/// Errors recording a drill. Nothing is stored when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    /// The report is not acceptable (no steps, unknown or repeated step, detail too long).
    /// Fix the client.
    #[error("drill report refused: {0}")]
    Malformed(String),
    /// Every step passed, but the daemon has not seen the drill's grant revoked and the
    /// revocation confirmed. Wait for confirmation (`latchkey grant show`) and report again.
    #[error("drill of request {request} cannot pass: {why}")]
    NotConfirmed {
        /// Request id.
        request: String,
        /// What the daemon sees instead.
        why: String,
    },
    /// This request was recorded as a drill already. Run a new drill.
    #[error("request {0} was already recorded as a drill")]
    AlreadyRecorded(String),
    /// The request is unknown or not the caller's; see the inner error.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl Coded for DrillError {
    fn code(&self) -> &'static str {
        match self {
            DrillError::Malformed(_) => "drill.malformed",
            DrillError::NotConfirmed { .. } => "drill.not_confirmed",
            DrillError::AlreadyRecorded(_) => "drill.already_recorded",
            DrillError::Workflow(e) => e.code(),
            DrillError::Store(e) => e.code(),
            DrillError::Audit(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            DrillError::Malformed(_) => ErrorKind::InvalidInput,
            DrillError::NotConfirmed { .. } | DrillError::AlreadyRecorded(_) => {
                ErrorKind::FailedPrecondition
            }
            DrillError::Workflow(e) => e.kind(),
            DrillError::Store(e) => e.kind(),
            DrillError::Audit(e) => e.kind(),
        }
    }
}

fn scope_key(scope: &str) -> Vec<u8> {
    format!("scope/{scope}").into_bytes()
}

fn request_key(id: &str) -> Vec<u8> {
    format!("request/{id}").into_bytes()
}

impl Authority {
    /// Records the drill that `request_id` was, as reported by its requester.
    pub fn record_drill(
        &self,
        caller: &Caller,
        request_id: &str,
        steps: Vec<DrillStep>,
    ) -> Result<DrillRecord, DrillError> {
        check_steps(&steps).map_err(|e| DrillError::Malformed(e.0))?;
        let (request, _) = self.load_request(request_id)?;
        self.require_requester(caller, &request)?;
        let scope = request.canonical.scope.clone();
        let grant_id = match request.state_at(self.clock.now()) {
            RequestState::Issued { grant_id, .. } => Some(grant_id),
            _ => None,
        };
        let claims_pass = steps.iter().all(|s| s.outcome != StepOutcome::Failed);
        if claims_pass {
            let Some(id) = &grant_id else {
                return Err(DrillError::NotConfirmed {
                    request: request_id.to_owned(),
                    why: format!("the request is {}", request.state.name()),
                });
            };
            let grant = self.grant(id)?;
            if grant.state != GrantState::Revoked {
                return Err(DrillError::NotConfirmed {
                    request: request_id.to_owned(),
                    why: format!("grant {id} is {}", grant.state.name()),
                });
            }
        }
        if self
            .store
            .get(Keyspace::Drills, &request_key(request_id))?
            .is_some()
        {
            return Err(DrillError::AlreadyRecorded(request_id.to_owned()));
        }
        let record = DrillRecord {
            scope: scope.clone(),
            request_id: request_id.to_owned(),
            grant_id,
            by: request.requester.label(),
            recorded_at: self.clock.now(),
            passed: claims_pass,
            steps,
        };
        let key = scope_key(&scope);
        let previous = self.store.get(Keyspace::Drills, &key)?;
        let last_passed = match &previous {
            Some(raw) => store::decode::<DrillHistory>(raw)?.last_passed,
            None => None,
        };
        let history = DrillHistory {
            scope: scope.clone(),
            last: record.clone(),
            last_passed: if record.passed {
                Some(record.clone())
            } else {
                last_passed
            },
        };
        let mut txn = Txn::new();
        match previous {
            Some(raw) => txn.require_equals(Keyspace::Drills, key.clone(), raw),
            None => txn.require_absent(Keyspace::Drills, key.clone()),
        };
        txn.require_absent(Keyspace::Drills, request_key(request_id))
            .put(key, &history)?
            .put_raw(
                Keyspace::Drills,
                request_key(request_id),
                scope.clone().into_bytes(),
            );
        let actor = match &request.requester {
            Requester::Workload { name } => Actor::Workload { name: name.clone() },
            Requester::Operator { uid, .. } => Actor::Local { uid: *uid },
        };
        self.audit.commit(
            txn,
            Event {
                event: "drill.recorded",
                actor,
                subject: format!("scope/{scope}"),
                details: serde_json::json!({
                    "request": record.request_id,
                    "grant": record.grant_id,
                    "by": record.by,
                    "passed": record.passed,
                    "steps": record.steps,
                }),
                evidence: None,
            },
        )?;
        Ok(record)
    }

    /// Every scope's drill history, by scope name.
    pub fn drills(&self) -> Result<Vec<DrillHistory>, StoreError> {
        self.store
            .scan_from(Keyspace::Drills, b"scope/", usize::MAX)?
            .into_iter()
            .take_while(|(k, _)| k.starts_with(b"scope/"))
            .map(|(_, v)| store::decode::<DrillHistory>(&v))
            .collect()
    }
}
