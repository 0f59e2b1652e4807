//! Drills: the whole break-glass path exercised before the outage (DESIGN principle 8, flow 9).
//! The CLI walks the steps and reports them; the daemon records the result per scope. A drill
//! counts as passed only if every reported step passed or was skipped *and* the daemon itself
//! saw the drill's grant issued and its revocation confirmed.

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditError, Event};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::base::constants::{MAX_DRILL_DETAIL_LEN, MAX_DRILL_STEPS};
use crate::base::error::{Coded, ErrorKind};
use crate::domain::grant::GrantState;
use crate::domain::request::{RequestState, Requester};
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, Record, StoreError, Txn};

/// The steps a drill may report, in the order the CLI runs them.
pub const STEPS: &[&str] = &[
    "request",
    "approvals",
    "mint",
    "introspect",
    "ssh-login",
    "revoke",
    "confirmation",
    "ssh-refused",
];

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

/// How one step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It worked.
    Passed,
    /// It did not; the detail says why.
    Failed,
    /// Not applicable here (e.g. no SSH target configured).
    Skipped,
}

impl StepOutcome {
    /// `passed`, `failed` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Passed => "passed",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
        }
    }
}

/// One step of a drill as the CLI saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStep {
    /// One of [`STEPS`].
    pub name: String,
    /// Outcome.
    pub outcome: StepOutcome,
    /// How long it took, milliseconds.
    pub millis: u64,
    /// What happened, for people.
    pub detail: String,
}

/// A recorded drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// Scope drilled.
    pub scope: String,
    /// The drill's request.
    pub request_id: String,
    /// The grant it produced, if it got that far.
    pub grant_id: Option<String>,
    /// Who ran it (`operator/NAME` or `workload/NAME`).
    pub by: String,
    /// When the daemon recorded it.
    pub recorded_at: Timestamp,
    /// Every step passed or was skipped, and the revocation was confirmed.
    pub passed: bool,
    /// The steps as reported.
    pub steps: Vec<DrillStep>,
}

/// The drills of one scope: the latest and the latest that passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillHistory {
    /// Scope.
    pub scope: String,
    /// The latest drill, passed or not.
    pub last: DrillRecord,
    /// The latest drill that passed.
    pub last_passed: Option<DrillRecord>,
}

impl Record for DrillHistory {
    const KEYSPACE: Keyspace = Keyspace::Drills;
}

impl DrillHistory {
    /// Seconds from the last passed drill to `now` (`None`: never passed).
    pub fn seconds_since_passed(&self, now: Timestamp) -> Option<i64> {
        self.last_passed
            .as_ref()
            .map(|r| (now.unix_millis() - r.recorded_at.unix_millis()).max(0) / 1000)
    }
}

fn scope_key(scope: &str) -> Vec<u8> {
    format!("scope/{scope}").into_bytes()
}

fn request_key(id: &str) -> Vec<u8> {
    format!("request/{id}").into_bytes()
}

/// Checks the shape of a report.
pub fn check_steps(steps: &[DrillStep]) -> Result<(), DrillError> {
    if steps.is_empty() || steps.len() > MAX_DRILL_STEPS {
        return Err(DrillError::Malformed(format!(
            "a drill reports 1 to {MAX_DRILL_STEPS} steps, not {}",
            steps.len()
        )));
    }
    for (i, step) in steps.iter().enumerate() {
        if !STEPS.contains(&step.name.as_str()) {
            return Err(DrillError::Malformed(format!(
                "unknown step {:?} (known: {})",
                step.name,
                STEPS.join(", ")
            )));
        }
        if steps[..i].iter().any(|s| s.name == step.name) {
            return Err(DrillError::Malformed(format!(
                "step {} reported twice",
                step.name
            )));
        }
        if step.detail.len() > MAX_DRILL_DETAIL_LEN {
            return Err(DrillError::Malformed(format!(
                "detail of step {} is longer than {MAX_DRILL_DETAIL_LEN} bytes",
                step.name
            )));
        }
    }
    Ok(())
}

impl Authority {
    /// Records the drill that `request_id` was, as reported by its requester.
    pub fn record_drill(
        &self,
        caller: &Caller,
        request_id: &str,
        steps: Vec<DrillStep>,
    ) -> Result<DrillRecord, DrillError> {
        check_steps(&steps)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str) -> DrillStep {
        DrillStep {
            name: name.into(),
            outcome: StepOutcome::Passed,
            millis: 3,
            detail: String::new(),
        }
    }

    #[test]
    fn a_report_without_steps_is_refused() {
        assert_eq!(
            check_steps(&[]).map_err(|e| e.code()),
            Err("drill.malformed")
        );
    }

    #[test]
    fn unknown_and_repeated_steps_are_refused() {
        assert!(check_steps(&[step("request"), step("teleport")]).is_err());
        assert!(check_steps(&[step("request"), step("request")]).is_err());
        assert!(check_steps(&[step("request"), step("mint")]).is_ok());
    }

    #[test]
    fn an_overlong_detail_is_refused() {
        let mut s = step("mint");
        s.detail = "x".repeat(MAX_DRILL_DETAIL_LEN + 1);
        assert!(check_steps(&[s]).is_err());
    }

    #[test]
    fn age_counts_from_the_last_passed_drill() {
        let rec = |at: i64, passed: bool| DrillRecord {
            scope: "s".into(),
            request_id: "r".into(),
            grant_id: None,
            by: "operator/a".into(),
            recorded_at: Timestamp::from_unix_millis(at),
            passed,
            steps: vec![step("request")],
        };
        let h = DrillHistory {
            scope: "s".into(),
            last: rec(90_000, false),
            last_passed: Some(rec(10_000, true)),
        };
        assert_eq!(
            h.seconds_since_passed(Timestamp::from_unix_millis(100_000)),
            Some(90)
        );
        let never = DrillHistory {
            last_passed: None,
            ..h
        };
        assert_eq!(
            never.seconds_since_passed(Timestamp::from_unix_millis(1)),
            None
        );
    }
}
