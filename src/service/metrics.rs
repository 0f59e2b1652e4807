//! Prometheus text metrics: a snapshot read from the store through the authority, and its
//! rendering in the text exposition format (version 0.0.4). The daemon serves it on an
//! optional loopback listener.

use std::fmt::Write as _;
use std::time::Duration;

use crate::base::clock::Timestamp;
use crate::base::constants::TRUST_STORE_SCOPE;
use crate::domain::grant;
use crate::domain::policy::Decision;
use crate::domain::request::Request;
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace};

/// Request states, in the order they are exported.
const REQUEST_STATES: &[&str] = &["pending", "issued", "denied", "cancelled", "expired"];

/// What the metrics endpoint reports, read in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Timestamp,
    /// Requests per state name (every state present, zeros included).
    pub requests: Vec<(&'static str, u64)>,
    /// Approving votes recorded on requests.
    pub approvals: u64,
    /// Denying votes recorded on requests.
    pub denials: u64,
    /// Grants issued and not yet expired or revoked.
    pub grants_active: u64,
    /// Revocations with sinks still to confirm, within their deadline, and expired grants the
    /// scheduler has yet to rewrite.
    pub revoking: u64,
    /// Revocations past their deadline: the alarm.
    pub unconfirmed: u64,
    /// Revocations confirmed.
    pub revoked: u64,
    /// Sequence number of the newest audit record.
    pub audit_head: u64,
    /// Per scope (the trust-store scope excepted): time of the last passed drill.
    pub drills: Vec<(String, Option<Timestamp>)>,
    /// Software authenticators are trusted.
    pub dev_mode: bool,
    /// Challenges kept in the store (pending or used, not yet swept).
    pub challenges_kept: u64,
}

impl Authority {
    /// Reads the numbers the metrics endpoint exports.
    pub fn metrics_snapshot(&self) -> Result<Snapshot, WorkflowError> {
        let now = self.clock.now();
        let mut requests: Vec<(&'static str, u64)> =
            REQUEST_STATES.iter().map(|s| (*s, 0)).collect();
        let (mut approvals, mut denials) = (0u64, 0u64);
        for (_, raw) in self.store.scan_from(Keyspace::Requests, b"", usize::MAX)? {
            let request: Request = store::decode(&raw)?;
            let state = request.state_at(now).name();
            if let Some(slot) = requests.iter_mut().find(|(s, _)| *s == state) {
                slot.1 += 1;
            }
            for vote in &request.votes {
                match vote.decision {
                    Decision::Approve => approvals += 1,
                    Decision::Deny => denials += 1,
                }
            }
        }
        let mut counts = self.revocation_counts()?;
        // Queue entries at or past their expiry are grants the scheduler has yet to rewrite
        // (for up to seconds after a restart with a backlog): revoking, as `ShowGrant` says.
        let due = self.store.count_below(
            Keyspace::GrantExpiry,
            &grant::expiry_key(now.plus(Duration::from_millis(1)), ""),
        )?;
        counts.revoking += due;
        let grants_active = self.store.count(Keyspace::GrantExpiry)?.saturating_sub(due);
        let total = self.store.count(Keyspace::Grants)?;
        let revoked = total
            .saturating_sub(grants_active)
            .saturating_sub(counts.revoking)
            .saturating_sub(counts.unconfirmed);
        let history = self.drills()?;
        let drills = self
            .scopes()?
            .into_iter()
            .filter(|s| s.name != TRUST_STORE_SCOPE)
            .map(|s| {
                let last = history
                    .iter()
                    .find(|h| h.scope == s.name)
                    .and_then(|h| h.last_passed.as_ref())
                    .map(|r| r.recorded_at);
                (s.name, last)
            })
            .collect();
        Ok(Snapshot {
            at: now,
            requests,
            approvals,
            denials,
            grants_active,
            revoking: counts.revoking,
            unconfirmed: counts.unconfirmed,
            revoked,
            audit_head: self.audit.head_seq(),
            drills,
            dev_mode: self.dev_mode(),
            challenges_kept: self.challenges_kept(),
        })
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A gauge with one unlabelled sample.
fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Renders the snapshot in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "latchkey_requests",
        "gauge",
        "Break-glass requests by state.",
    );
    for (state, n) in &s.requests {
        let _ = writeln!(out, "latchkey_requests{{state=\"{state}\"}} {n}");
    }
    header(
        &mut out,
        "latchkey_votes_total",
        "counter",
        "Votes recorded on requests, by decision.",
    );
    let _ = writeln!(
        out,
        "latchkey_votes_total{{decision=\"approve\"}} {}",
        s.approvals
    );
    let _ = writeln!(
        out,
        "latchkey_votes_total{{decision=\"deny\"}} {}",
        s.denials
    );
    gauge(
        &mut out,
        "latchkey_grants_active",
        "Grants issued and not yet revoked.",
        s.grants_active,
    );
    header(
        &mut out,
        "latchkey_revocations",
        "gauge",
        "Revocations by state: revoking (sinks pending), unconfirmed (past the deadline: alarm), revoked (confirmed).",
    );
    let _ = writeln!(
        out,
        "latchkey_revocations{{state=\"revoking\"}} {}",
        s.revoking
    );
    let _ = writeln!(
        out,
        "latchkey_revocations{{state=\"unconfirmed\"}} {}",
        s.unconfirmed
    );
    let _ = writeln!(
        out,
        "latchkey_revocations{{state=\"revoked\"}} {}",
        s.revoked
    );
    gauge(
        &mut out,
        "latchkey_revocation_unconfirmed_alarm",
        "1 while any revocation is past its deadline without confirmation.",
        u8::from(s.unconfirmed > 0),
    );
    gauge(
        &mut out,
        "latchkey_audit_head_sequence",
        "Sequence number of the newest audit record.",
        s.audit_head,
    );
    header(
        &mut out,
        "latchkey_drill_seconds_since_success",
        "gauge",
        "Seconds since the scope's last passed drill (+Inf: never).",
    );
    for (scope, last) in &s.drills {
        let value = match last {
            Some(t) => ((s.at.unix_millis() - t.unix_millis()).max(0) / 1000).to_string(),
            None => "+Inf".to_owned(),
        };
        let _ = writeln!(
            out,
            "latchkey_drill_seconds_since_success{{scope=\"{}\"}} {value}",
            label(scope)
        );
    }
    gauge(
        &mut out,
        "latchkey_dev_mode",
        "1 when software authenticators are trusted (never on a bastion).",
        u8::from(s.dev_mode),
    );
    gauge(
        &mut out,
        "latchkey_challenges_kept",
        "Key challenges kept (pending or used, until swept); Begin calls are refused at the limit.",
        s.challenges_kept,
    );
    out
}

/// Why the metrics could not be read (served as HTTP 500).
pub fn unavailable(e: &WorkflowError) -> String {
    format!("metrics unavailable: {e}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            at: Timestamp::from_unix_millis(100_000),
            requests: REQUEST_STATES.iter().map(|s| (*s, 1)).collect(),
            approvals: 4,
            denials: 1,
            grants_active: 2,
            revoking: 0,
            unconfirmed: 1,
            revoked: 3,
            audit_head: 42,
            drills: vec![
                ("db-root".into(), Some(Timestamp::from_unix_millis(40_000))),
                ("odd\"scope".into(), None),
            ],
            dev_mode: false,
            challenges_kept: 7,
        }
    }

    #[test]
    fn rendering_follows_the_text_format() {
        let text = render(&snapshot());
        assert!(text.contains("latchkey_requests{state=\"pending\"} 1\n"));
        assert!(text.contains("latchkey_votes_total{decision=\"approve\"} 4\n"));
        assert!(text.contains("latchkey_revocations{state=\"unconfirmed\"} 1\n"));
        assert!(text.contains("latchkey_revocation_unconfirmed_alarm 1\n"));
        assert!(text.contains("latchkey_audit_head_sequence 42\n"));
        assert!(text.contains("latchkey_challenges_kept 7\n"));
        assert!(text.contains("latchkey_drill_seconds_since_success{scope=\"db-root\"} 60\n"));
        assert!(
            text.contains("latchkey_drill_seconds_since_success{scope=\"odd\\\"scope\"} +Inf\n")
        );
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
