//! Approval policy and the rules of principle 3, as pure code: who may vote on a request or a
//! change, and when the votes add up to a decision. Requests and trust-store changes share it.

use serde::{Deserialize, Serialize};

use crate::base::clock::Timestamp;
use crate::base::error::{Coded, ErrorKind};

/// Why a vote is refused. Nothing is written when one is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The voter does not hold the approver role. Ask someone who does.
    #[error("operator {operator} does not hold the approver role {role}")]
    NotApprover {
        /// Who tried.
        operator: String,
        /// The role the policy names.
        role: String,
    },
    /// The requester never approves (or denies) its own request. Ask a colleague.
    #[error("operator {0} made this request and cannot vote on it")]
    Requester(String),
    /// The subject of a trust-store change never votes on it. Ask other approvers.
    #[error("operator {0} is the subject of this change and cannot vote on it")]
    Subject(String),
    /// This operator has voted already (possibly with another key): one operator counts once.
    #[error("operator {0} has already voted on this; one operator counts once")]
    AlreadyVoted(String),
    /// The policy requires user verification (PIN or biometric) and the key did not do it.
    /// Set a PIN on the key and approve again.
    #[error("this policy requires user verification (PIN); the key did not verify the user")]
    UserNotVerified,
    /// The policy requires an attested hardware key and this key was enrolled without
    /// attestation (e.g. a software key in dev mode). Use an attested key.
    #[error("this policy requires attested hardware; key {0} was enrolled without attestation")]
    Unattested(String),
    /// The policy is unusable. Fix the scope or the trust-store policy.
    #[error("invalid approval policy: {0}")]
    Invalid(String),
}

impl Coded for PolicyError {
    fn code(&self) -> &'static str {
        match self {
            PolicyError::NotApprover { .. } => "approval.not_approver",
            PolicyError::Requester(_) => "approval.requester",
            PolicyError::Subject(_) => "approval.subject_of_change",
            PolicyError::AlreadyVoted(_) => "approval.already_counted",
            PolicyError::UserNotVerified => "approval.user_not_verified",
            PolicyError::Unattested(_) => "approval.unattested_key",
            PolicyError::Invalid(_) => "policy.invalid",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            PolicyError::AlreadyVoted(_) => ErrorKind::AlreadyExists,
            PolicyError::Invalid(_) => ErrorKind::InvalidInput,
            _ => ErrorKind::PermissionDenied,
        }
    }
}

/// How many operators of which role must approve, and with what kind of key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Distinct operators who must approve.
    pub quorum: u32,
    /// Role they must hold.
    pub approver_role: String,
    /// Whether approvals need user verification (PIN/biometric) on the key.
    #[serde(default)]
    pub require_uv: bool,
    /// Whether approvals need a key whose attestation was verified at enrollment.
    #[serde(default)]
    pub require_attested: bool,
    /// How long a request may wait for quorum, in seconds.
    pub pending_timeout_secs: u64,
    /// Explicit denials that end a request (1: any approver can stop it).
    pub denials_to_reject: u32,
    /// PIV keys must have at least this touch policy to approve (None: any).
    #[serde(default)]
    pub piv_touch: Option<crate::verify::piv::TouchPolicy>,
    /// PIV keys must have at least this PIN policy to approve (None: any).
    #[serde(default)]
    pub piv_pin: Option<crate::verify::piv::PinPolicy>,
}

impl ApprovalPolicy {
    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.quorum == 0 {
            return Err(PolicyError::Invalid("quorum must be at least 1".into()));
        }
        if self.quorum > crate::base::constants::MAX_QUORUM {
            return Err(PolicyError::Invalid(format!(
                "quorum {} is above the limit {}",
                self.quorum,
                crate::base::constants::MAX_QUORUM
            )));
        }
        if self.denials_to_reject == 0 {
            return Err(PolicyError::Invalid(
                "denials_to_reject must be at least 1".into(),
            ));
        }
        if self.pending_timeout_secs == 0
            || self.pending_timeout_secs > crate::base::constants::MAX_PENDING_TIMEOUT.as_secs()
        {
            return Err(PolicyError::Invalid(format!(
                "pending timeout must be between 1 s and {} s",
                crate::base::constants::MAX_PENDING_TIMEOUT.as_secs()
            )));
        }
        crate::domain::scope::check_name("approver role", &self.approver_role)
            .map_err(|e| PolicyError::Invalid(e.to_string()))
    }
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Counts toward quorum.
    Approve,
    /// Counts toward the denials that end it.
    Deny,
}

impl Decision {
    /// `approve` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

/// One counted vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Who.
    pub operator: String,
    /// With which key.
    pub credential_id: String,
    /// Approve or deny.
    pub decision: Decision,
    /// Whether the key verified the user.
    pub user_verified: bool,
    /// When.
    pub at: Timestamp,
}

/// What the daemon knows about a would-be voter.
#[derive(Clone, Debug)]
pub struct Voter<'a> {
    /// Operator name.
    pub operator: &'a str,
    /// Their roles now.
    pub roles: &'a [String],
}

/// Who may not vote on one ballot, and who has voted.
#[derive(Clone, Debug, Default)]
pub struct Ballot<'a> {
    /// The operator who asked, if an operator did.
    pub requester: Option<&'a str>,
    /// Operators a trust-store change is about.
    pub subjects: &'a [String],
    /// Votes so far.
    pub votes: &'a [Vote],
}

/// Whether `voter` may vote on `ballot` at all (before any key is touched).
pub fn check_voter(
    policy: &ApprovalPolicy,
    ballot: &Ballot<'_>,
    voter: &Voter<'_>,
) -> Result<(), PolicyError> {
    if ballot.requester == Some(voter.operator) {
        return Err(PolicyError::Requester(voter.operator.to_owned()));
    }
    if ballot.subjects.iter().any(|s| s == voter.operator) {
        return Err(PolicyError::Subject(voter.operator.to_owned()));
    }
    if !voter.roles.contains(&policy.approver_role) {
        return Err(PolicyError::NotApprover {
            operator: voter.operator.to_owned(),
            role: policy.approver_role.clone(),
        });
    }
    if ballot.votes.iter().any(|v| v.operator == voter.operator) {
        return Err(PolicyError::AlreadyVoted(voter.operator.to_owned()));
    }
    Ok(())
}

/// Whether the key that signed meets the policy.
pub fn check_key(
    policy: &ApprovalPolicy,
    credential_id: &str,
    attested: bool,
    user_verified: bool,
) -> Result<(), PolicyError> {
    if policy.require_uv && !user_verified {
        return Err(PolicyError::UserNotVerified);
    }
    if policy.require_attested && !attested {
        return Err(PolicyError::Unattested(credential_id.to_owned()));
    }
    Ok(())
}

/// Where the votes stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet.
    Pending,
    /// Quorum reached.
    Approved,
    /// Enough denials.
    Denied,
}

/// Counts the votes that still count (`counts` says whether a voter's key and role are still
/// good: a suspended or removed key counts for nothing) and decides. Counting is fallible: if
/// `counts` cannot tell for any vote, the error is returned and nothing is decided, so an
/// unreadable denial can never let the tally reach approved.
pub fn tally<E>(
    policy: &ApprovalPolicy,
    votes: &[Vote],
    mut counts: impl FnMut(&Vote) -> Result<bool, E>,
) -> Result<(u32, u32, Outcome), E> {
    let mut approvals = std::collections::BTreeSet::new();
    let mut denials = std::collections::BTreeSet::new();
    for vote in votes {
        if !counts(vote)? {
            continue;
        }
        match vote.decision {
            Decision::Approve => approvals.insert(vote.operator.as_str()),
            Decision::Deny => denials.insert(vote.operator.as_str()),
        };
    }
    let approvals = u32::try_from(approvals.len()).unwrap_or(u32::MAX);
    let denials = u32::try_from(denials.len()).unwrap_or(u32::MAX);
    let outcome = if denials >= policy.denials_to_reject {
        Outcome::Denied
    } else if approvals >= policy.quorum {
        Outcome::Approved
    } else {
        Outcome::Pending
    };
    Ok((approvals, denials, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ApprovalPolicy {
        ApprovalPolicy {
            quorum: 2,
            approver_role: "dba-oncall".into(),
            require_uv: false,
            require_attested: false,
            pending_timeout_secs: 600,
            denials_to_reject: 1,
            piv_touch: None,
            piv_pin: None,
        }
    }

    fn vote(operator: &str, decision: Decision) -> Vote {
        Vote {
            operator: operator.into(),
            credential_id: format!("{operator}-key"),
            decision,
            user_verified: true,
            at: Timestamp::from_unix_millis(0),
        }
    }

    #[test]
    fn the_requester_cannot_vote_on_their_own_request() {
        let roles = vec!["dba-oncall".to_owned()];
        let ballot = Ballot {
            requester: Some("alice"),
            ..Ballot::default()
        };
        let voter = Voter {
            operator: "alice",
            roles: &roles,
        };
        assert_eq!(
            check_voter(&policy(), &ballot, &voter),
            Err(PolicyError::Requester("alice".into()))
        );
    }

    #[test]
    fn the_subject_of_a_change_cannot_vote_on_it() {
        let roles = vec!["dba-oncall".to_owned()];
        let subjects = vec!["bob".to_owned()];
        let ballot = Ballot {
            subjects: &subjects,
            ..Ballot::default()
        };
        let voter = Voter {
            operator: "bob",
            roles: &roles,
        };
        assert_eq!(
            check_voter(&policy(), &ballot, &voter),
            Err(PolicyError::Subject("bob".into()))
        );
    }

    #[test]
    fn one_operator_counts_once_whatever_keys_they_use() {
        let roles = vec!["dba-oncall".to_owned()];
        let votes = vec![vote("carol", Decision::Approve)];
        let ballot = Ballot {
            votes: &votes,
            ..Ballot::default()
        };
        let voter = Voter {
            operator: "carol",
            roles: &roles,
        };
        assert_eq!(
            check_voter(&policy(), &ballot, &voter),
            Err(PolicyError::AlreadyVoted("carol".into()))
        );
        let mut twice = votes.clone();
        twice.push(Vote {
            credential_id: "carol-second-key".into(),
            ..vote("carol", Decision::Approve)
        });
        assert_eq!(
            tally::<()>(&policy(), &twice, |_| Ok(true)).unwrap().2,
            Outcome::Pending
        );
    }

    #[test]
    fn an_operator_outside_the_role_cannot_vote() {
        let roles = vec!["web-oncall".to_owned()];
        let voter = Voter {
            operator: "dave",
            roles: &roles,
        };
        assert!(matches!(
            check_voter(&policy(), &Ballot::default(), &voter),
            Err(PolicyError::NotApprover { .. })
        ));
    }

    #[test]
    fn quorum_is_reached_by_distinct_operators_whose_votes_still_count() {
        let votes = vec![vote("a", Decision::Approve), vote("b", Decision::Approve)];
        assert_eq!(
            tally::<()>(&policy(), &votes, |_| Ok(true)).unwrap(),
            (2, 0, Outcome::Approved)
        );
        assert_eq!(
            tally::<()>(&policy(), &votes, |v| Ok(v.operator != "b")).unwrap(),
            (1, 0, Outcome::Pending)
        );
    }

    #[test]
    fn a_denial_ends_it_before_quorum() {
        let votes = vec![vote("a", Decision::Approve), vote("b", Decision::Deny)];
        assert_eq!(
            tally::<()>(&policy(), &votes, |_| Ok(true)).unwrap().2,
            Outcome::Denied
        );
        let lenient = ApprovalPolicy {
            denials_to_reject: 2,
            ..policy()
        };
        assert_eq!(
            tally::<()>(&lenient, &votes, |_| Ok(true)).unwrap().2,
            Outcome::Pending
        );
    }

    #[test]
    fn a_vote_that_cannot_be_read_fails_the_tally_instead_of_not_counting() {
        // Before: an unreadable denial counted for nothing and the approvals reached quorum.
        let votes = vec![
            vote("a", Decision::Approve),
            vote("b", Decision::Approve),
            vote("c", Decision::Deny),
        ];
        let counted = tally(&policy(), &votes, |v| {
            if v.operator == "c" {
                Err("store read failed")
            } else {
                Ok(true)
            }
        });
        assert_eq!(counted, Err("store read failed"));
    }

    #[test]
    fn key_requirements_are_enforced() {
        let strict = ApprovalPolicy {
            require_uv: true,
            require_attested: true,
            ..policy()
        };
        assert_eq!(
            check_key(&strict, "k", true, false),
            Err(PolicyError::UserNotVerified)
        );
        assert_eq!(
            check_key(&strict, "k", false, true),
            Err(PolicyError::Unattested("k".into()))
        );
        assert_eq!(check_key(&strict, "k", true, true), Ok(()));
    }

    #[test]
    fn unusable_policies_are_refused() {
        for bad in [
            ApprovalPolicy {
                quorum: 0,
                ..policy()
            },
            ApprovalPolicy {
                denials_to_reject: 0,
                ..policy()
            },
            ApprovalPolicy {
                pending_timeout_secs: 0,
                ..policy()
            },
            ApprovalPolicy {
                approver_role: "Bad Role".into(),
                ..policy()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(policy().validate(), Ok(()));
    }
}
