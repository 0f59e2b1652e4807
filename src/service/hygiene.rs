//! `latchkeyd doctor`: hygiene findings about the trust store, as pass/warn/fail lines. This
//! module holds the store checks (pure reads through the authority); the daemon adds the host
//! checks (files, filesystems, name service) in `daemon::doctor`.

use std::time::Duration;

use serde::Serialize;

use crate::audit::AuditRecord;
use crate::base::clock::Timestamp;
use crate::base::constants::TRUST_STORE_SCOPE;
use crate::domain::grant::GrantState;
use crate::domain::operator::AuthenticatorState;
use crate::domain::scope::Scope;
use crate::domain::trust::Genesis;
use crate::service::authority::Authority;
use crate::service::trust_store::{self};
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Checked and fine.
    Pass,
    /// Works, but weakens break-glass: fix it before the outage.
    Warn,
    /// Unsafe or broken now: fix it.
    Fail,
}

impl Level {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the doctor's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Outcome.
    pub level: Level,
    /// Stable name of the check, e.g. `operators.single_key`.
    pub check: String,
    /// What was found, and the fix.
    pub detail: String,
}

impl Finding {
    /// A finding.
    pub fn new(level: Level, check: &str, detail: impl Into<String>) -> Self {
        Self {
            level,
            check: check.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The worst level among `findings` (`Pass` when empty).
pub fn worst(findings: &[Finding]) -> Level {
    findings
        .iter()
        .map(|f| f.level)
        .max()
        .unwrap_or(Level::Pass)
}

/// Audit records looked at for the clock check.
const CLOCK_WINDOW: u64 = 1000;

impl Authority {
    /// The audit log is written with the authority's clock: its recent records must not go
    /// back in time, and now must not be before any of them.
    fn clock_finding(&self, now: Timestamp) -> Result<Finding, WorkflowError> {
        let head = self.audit.head_seq();
        let from = head.saturating_sub(CLOCK_WINDOW - 1).max(1);
        let records: Vec<AuditRecord> = self
            .store
            .scan_from(
                Keyspace::Audit,
                &crate::audit::seq_key(from),
                usize::try_from(CLOCK_WINDOW).unwrap_or(usize::MAX),
            )?
            .iter()
            .map(|(_, v)| store::decode(v))
            .collect::<Result<_, _>>()?;
        let mut latest: Option<&AuditRecord> = None;
        for r in &records {
            if let Some(prev) = latest
                && r.time.unix_millis() + 1000 < prev.time.unix_millis()
            {
                return Ok(Finding::new(
                    Level::Fail,
                    "clock.monotonic",
                    format!(
                        "the clock went backwards: audit record #{} is {}s older than #{}; fix time sync (expiry depends on it)",
                        r.seq,
                        (prev.time.unix_millis() - r.time.unix_millis()) / 1000,
                        prev.seq
                    ),
                ));
            }
            if latest.is_none_or(|p| r.time > p.time) {
                latest = Some(r);
            }
        }
        Ok(match latest {
            Some(p) if p.time.unix_millis() - now.unix_millis() > 1000 => Finding::new(
                Level::Fail,
                "clock.monotonic",
                format!(
                    "the clock went backwards: it is {}s behind audit record #{}; fix time sync (expiry depends on it)",
                    (p.time.unix_millis() - now.unix_millis()) / 1000,
                    p.seq
                ),
            ),
            Some(_) => Finding::new(
                Level::Pass,
                "clock.monotonic",
                format!(
                    "the last {} audit records and now are in order",
                    records.len()
                ),
            ),
            None => Finding::new(Level::Pass, "clock.monotonic", "no audit records yet"),
        })
    }

    /// The store's hygiene: operators, scopes, drills, revocations, genesis, clock order,
    /// dev mode. `drill_max_age` is how old a scope's last passed drill may be.
    pub fn diagnose(&self, drill_max_age: Duration) -> Result<Vec<Finding>, WorkflowError> {
        let now = self.clock.now();
        let mut out = vec![self.dev_mode_finding()];
        out.extend(self.genesis_findings()?);
        out.push(self.clock_finding(now)?);
        out.extend(self.operator_key_findings()?);
        let scopes = self.scopes()?;
        out.extend(accountability_findings(&scopes));
        out.extend(self.drill_findings(&scopes, now, drill_max_age)?);
        out.push(self.revocation_finding()?);
        out.push(self.notification_finding()?);
        Ok(out)
    }

    /// Whether a notification sink's latest attempt (in the recent audit log) failed: then
    /// approvers may not be told of requests.
    fn notification_finding(&self) -> Result<Finding, WorkflowError> {
        /// How far back the audit log is read.
        const RECENT: u64 = 5000;
        let head = self.audit.head_seq();
        let mut latest: std::collections::BTreeMap<String, (u64, String)> =
            std::collections::BTreeMap::new();
        let mut from = head.saturating_sub(RECENT).max(1);
        loop {
            let page = self
                .audit
                .read(from, crate::base::constants::MAX_AUDIT_PAGE)?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            for r in page {
                if let Some(sink) = r.subject.strip_prefix("notify/")
                    && r.event.starts_with("notify.")
                    && r.event != "notify.sink_started"
                {
                    latest.insert(sink.to_owned(), (r.seq, r.event));
                }
            }
            from = last + 1;
        }
        let failing: Vec<String> = latest
            .iter()
            .filter(|(_, (_, event))| event != "notify.delivered")
            .map(|(sink, (seq, event))| format!("{sink} ({event} at record {seq})"))
            .collect();
        Ok(if failing.is_empty() {
            Finding::new(
                Level::Pass,
                "notify.failing",
                "no notification sink's latest attempt failed",
            )
        } else {
            Finding::new(
                Level::Warn,
                "notify.failing",
                format!(
                    "notification sinks failing: {}; approvers may not be told of requests \
                     (the error is in that audit record and in the daemon's log)",
                    failing.join(", ")
                ),
            )
        })
    }

    /// Whether dev mode is on: it trusts software authenticators, which only tests and demos
    /// may.
    fn dev_mode_finding(&self) -> Finding {
        if self.dev_mode() {
            Finding::new(
                Level::Fail,
                "daemon.dev_mode",
                "dev_mode is on: software authenticators are trusted (tests and demos only, never a bastion)",
            )
        } else {
            Finding::new(
                Level::Pass,
                "daemon.dev_mode",
                "off: only attested hardware keys are trusted",
            )
        }
    }

    /// Whether genesis is still open, and whether trust-store changes need more than one
    /// approval.
    fn genesis_findings(&self) -> Result<Vec<Finding>, WorkflowError> {
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        let genesis = match meta.genesis {
            Genesis::Open => Finding::new(
                Level::Warn,
                "trust_store.genesis",
                format!(
                    "genesis is open: enroll operators until {} of role {} can approve, which closes it",
                    meta.policy.quorum, meta.policy.approver_role
                ),
            ),
            Genesis::Closed { .. } => Finding::new(
                Level::Pass,
                "trust_store.genesis",
                format!(
                    "closed: changes need {} approvals of role {}",
                    meta.policy.quorum, meta.policy.approver_role
                ),
            ),
        };
        let mut out = vec![genesis];
        if meta.policy.quorum < 2 {
            out.push(Finding::new(
                Level::Warn,
                "trust_store.quorum",
                "trust-store changes need a single approval: one stolen key can add an attacker's key",
            ));
        }
        Ok(out)
    }

    /// Operators with fewer than two active keys (one lost key locks them out).
    fn operator_key_findings(&self) -> Result<Vec<Finding>, WorkflowError> {
        let mut out = Vec::new();
        let mut single = 0usize;
        for (op, keys) in self.operators_list()? {
            let active = keys
                .iter()
                .filter(|k| k.state == AuthenticatorState::Active)
                .count();
            if active < 2 {
                single += 1;
                out.push(Finding::new(
                    Level::Warn,
                    "operators.single_key",
                    format!(
                        "operator {} has {active} active key(s): one lost key locks them out; enroll a second",
                        op.name
                    ),
                ));
            }
        }
        if single == 0 {
            out.push(Finding::new(
                Level::Pass,
                "operators.single_key",
                "every operator has at least two active keys",
            ));
        }
        Ok(out)
    }

    /// Per scope other than the trust store's: how long ago its last drill passed (against
    /// `drill_max_age`), and whether its latest drill failed.
    fn drill_findings(
        &self,
        scopes: &[Scope],
        now: Timestamp,
        drill_max_age: Duration,
    ) -> Result<Vec<Finding>, WorkflowError> {
        let mut out = Vec::new();
        let drills = self.drills()?;
        let max_secs = i64::try_from(drill_max_age.as_secs()).unwrap_or(i64::MAX);
        for scope in scopes.iter().filter(|s| s.name != TRUST_STORE_SCOPE) {
            let history = drills.iter().find(|d| d.scope == scope.name);
            match history.and_then(|h| h.seconds_since_passed(now)) {
                None => out.push(Finding::new(
                    Level::Warn,
                    "drills.age",
                    format!(
                        "scope {} has never passed a drill: run `latchkey drill --scope {} --operator YOU`",
                        scope.name, scope.name
                    ),
                )),
                Some(age) if age > max_secs => out.push(Finding::new(
                    Level::Warn,
                    "drills.age",
                    format!(
                        "scope {}: last passed drill {} days ago (limit {} days)",
                        scope.name,
                        age / 86_400,
                        max_secs / 86_400
                    ),
                )),
                Some(age) => out.push(Finding::new(
                    Level::Pass,
                    "drills.age",
                    format!("scope {}: last passed drill {}s ago", scope.name, age),
                )),
            }
            if let Some(h) = history
                && !h.last.passed
            {
                out.push(Finding::new(
                    Level::Warn,
                    "drills.last_failed",
                    format!(
                        "scope {}: the latest drill (request {}) failed",
                        scope.name, h.last.request_id
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Grants whose revocation is past its deadline and still unconfirmed.
    fn revocation_finding(&self) -> Result<Finding, WorkflowError> {
        let mut stuck = Vec::new();
        for (key, _) in self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
        {
            if let Some(g) = store::read::<crate::domain::grant::Grant>(self.store.as_ref(), &key)?
                && g.state == GrantState::RevocationUnconfirmed
            {
                stuck.push(g.id);
            }
        }
        Ok(if stuck.is_empty() {
            Finding::new(
                Level::Pass,
                "revocations.unconfirmed",
                "no revocation is past its deadline",
            )
        } else {
            Finding::new(
                Level::Fail,
                "revocations.unconfirmed",
                format!(
                    "{} grant(s) stuck in revocation-unconfirmed: {} (see `latchkey grants --state revocation_unconfirmed`)",
                    stuck.len(),
                    stuck.join(", ")
                ),
            )
        })
    }
}

/// Scopes that do not name an owner and a runbook.
fn accountability_findings(scopes: &[Scope]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut unaccountable = 0usize;
    for scope in scopes {
        for problem in scope.findings() {
            unaccountable += 1;
            out.push(Finding::new(
                Level::Warn,
                "scopes.accountability",
                format!("{problem}: every scope names an owner and a runbook"),
            ));
        }
    }
    if unaccountable == 0 {
        out.push(Finding::new(
            Level::Pass,
            "scopes.accountability",
            format!(
                "{} scope(s), each with an owner and a runbook",
                scopes.len()
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_level_decides() {
        let f = |l| Finding::new(l, "x", "");
        assert_eq!(worst(&[]), Level::Pass);
        assert_eq!(worst(&[f(Level::Pass), f(Level::Warn)]), Level::Warn);
        assert_eq!(
            worst(&[f(Level::Fail), f(Level::Warn), f(Level::Pass)]),
            Level::Fail
        );
    }
}
