//! Drills as data: the steps a drill reports, one recorded drill, a scope's drill history, and
//! the shape a report must have. The service records them (`service::drill`).

use serde::{Deserialize, Serialize};

use crate::base::clock::Timestamp;
use crate::base::constants::{MAX_DRILL_DETAIL_LEN, MAX_DRILL_STEPS};

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

/// A drill report of the wrong shape (no steps, unknown or repeated step, detail too long).
/// Fix the client.
#[derive(Debug, thiserror::Error)]
#[error("drill report refused: {0}")]
pub struct MalformedReport(pub String);

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
    pub scope: String,
    /// The latest drill, passed or not.
    pub last: DrillRecord,
    /// The latest drill that passed.
    pub last_passed: Option<DrillRecord>,
}

impl DrillHistory {
    /// Seconds from the last passed drill to `now` (`None`: never passed).
    pub fn seconds_since_passed(&self, now: Timestamp) -> Option<i64> {
        self.last_passed
            .as_ref()
            .map(|r| (now.unix_millis() - r.recorded_at.unix_millis()).max(0) / 1000)
    }
}

/// Checks the shape of a report.
pub fn check_steps(steps: &[DrillStep]) -> Result<(), MalformedReport> {
    if steps.is_empty() || steps.len() > MAX_DRILL_STEPS {
        return Err(MalformedReport(format!(
            "a drill reports 1 to {MAX_DRILL_STEPS} steps, not {}",
            steps.len()
        )));
    }
    for (i, step) in steps.iter().enumerate() {
        if !STEPS.contains(&step.name.as_str()) {
            return Err(MalformedReport(format!(
                "unknown step {:?} (known: {})",
                step.name,
                STEPS.join(", ")
            )));
        }
        if steps[..i].iter().any(|s| s.name == step.name) {
            return Err(MalformedReport(format!(
                "step {} reported twice",
                step.name
            )));
        }
        if step.detail.len() > MAX_DRILL_DETAIL_LEN {
            return Err(MalformedReport(format!(
                "detail of step {} is longer than {MAX_DRILL_DETAIL_LEN} bytes",
                step.name
            )));
        }
    }
    Ok(())
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
            check_steps(&[]).map_err(|e| e.0.contains("1 to")),
            Err(true)
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
