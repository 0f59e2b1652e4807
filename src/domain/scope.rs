//! Scopes: what break-glass can open. Each names an owner and a runbook, the credentials it
//! mints, its TTLs, its approval policy and who may request it.

use serde::{Deserialize, Serialize};

use crate::base::constants::{
    MAX_GRANT_TTL, MAX_NAME_LEN, MAX_PRINCIPALS, MAX_TEXT_LEN, MIN_GRANT_TTL, TRUST_STORE_SCOPE,
};
use crate::base::error::{Coded, ErrorKind};
use crate::domain::policy::ApprovalPolicy;

/// A scope definition that cannot be used. Nothing is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// A name is empty, too long or has characters outside `[a-z0-9._-]`.
    #[error("invalid {what} {value:?}: use 1-64 characters from a-z, 0-9, '.', '_' and '-'")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The definition is inconsistent; the message says what to fix.
    #[error("invalid scope: {0}")]
    Invalid(String),
    /// `trust-store` is built in; its policy is the trust-store policy.
    #[error("the scope name trust-store is reserved")]
    Reserved,
}

impl Coded for ScopeError {
    fn code(&self) -> &'static str {
        match self {
            ScopeError::InvalidName { .. } => "scope.invalid_name",
            ScopeError::Invalid(_) => "scope.invalid",
            ScopeError::Reserved => "scope.reserved",
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Checks a name: 1-64 characters of `[a-z0-9._-]`.
pub fn check_name(what: &'static str, value: &str) -> Result<(), ScopeError> {
    if crate::base::names::is_valid_name(value) {
        Ok(())
    } else {
        Err(ScopeError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// The SSH certificates a scope mints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// Principals written into every certificate.
    pub principals: Vec<String>,
    /// Whether certificates carry `permit-port-forwarding`.
    #[serde(default)]
    pub permit_port_forwarding: bool,
}

/// Who may ask for a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requesters {
    /// Operators holding any of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// These workloads (which must also list the scope themselves).
    #[serde(default)]
    pub workloads: Vec<String>,
}

/// A scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Unique name.
    pub name: String,
    /// Person or team who answers for it.
    pub owner: String,
    /// What to do, who may re-issue what (text).
    #[serde(default)]
    pub runbook: String,
    /// Where the runbook lives.
    #[serde(default)]
    pub runbook_url: String,
    /// Mints a bearer token.
    pub bearer: bool,
    /// Mints an SSH certificate for the requester's key.
    pub ssh: Option<SshSpec>,
    /// TTL when the request names none, seconds.
    pub default_ttl_secs: u64,
    /// Longest TTL a request may ask for, seconds.
    pub max_ttl_secs: u64,
    /// Who approves.
    pub policy: ApprovalPolicy,
    /// Who may ask.
    pub requesters: Requesters,
    /// How revocations are confirmed beyond the built-in sinks.
    #[serde(default)]
    pub revocation: RevocationSpec,
}

/// A scope's revocation sinks and deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSpec {
    /// Workloads that must acknowledge each revocation (on their own mTLS identity).
    #[serde(default)]
    pub consumers: Vec<String>,
    /// A command run for each revocation, with the grant in its environment; exit 0 confirms.
    #[serde(default)]
    pub hook: Vec<String>,
    /// The hook is killed after this long (and retried).
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
    /// Past this long without every sink confirmed, the grant is `revocation_unconfirmed`.
    #[serde(default = "default_confirm_within")]
    pub confirm_within_secs: u64,
}

fn default_hook_timeout() -> u64 {
    crate::base::constants::DEFAULT_HOOK_TIMEOUT.as_secs()
}

fn default_confirm_within() -> u64 {
    crate::base::constants::DEFAULT_REVOCATION_DEADLINE.as_secs()
}

impl Default for RevocationSpec {
    fn default() -> Self {
        Self {
            consumers: Vec::new(),
            hook: Vec::new(),
            hook_timeout_secs: default_hook_timeout(),
            confirm_within_secs: default_confirm_within(),
        }
    }
}

impl Scope {
    /// Checks the definition is usable.
    pub fn validate(&self) -> Result<(), ScopeError> {
        check_name("scope name", &self.name)?;
        if self.name == TRUST_STORE_SCOPE {
            return Err(ScopeError::Reserved);
        }
        if self.owner.len() > MAX_NAME_LEN * 2 {
            return Err(ScopeError::Invalid("owner is too long".into()));
        }
        if self.runbook.len() > MAX_TEXT_LEN || self.runbook_url.len() > MAX_TEXT_LEN {
            return Err(ScopeError::Invalid("runbook is too long".into()));
        }
        if !self.runbook_url.is_empty() && url::Url::parse(&self.runbook_url).is_err() {
            return Err(ScopeError::Invalid(format!(
                "runbook URL {:?} is not a URL",
                self.runbook_url
            )));
        }
        if !self.bearer && self.ssh.is_none() {
            return Err(ScopeError::Invalid(
                "a scope must mint a bearer token, an SSH certificate or both".into(),
            ));
        }
        if let Some(ssh) = &self.ssh {
            if ssh.principals.is_empty() || ssh.principals.len() > MAX_PRINCIPALS {
                return Err(ScopeError::Invalid(format!(
                    "an SSH scope needs 1 to {MAX_PRINCIPALS} principals"
                )));
            }
            for p in &ssh.principals {
                check_name("principal", p)?;
            }
        }
        let (min, max) = (MIN_GRANT_TTL.as_secs(), MAX_GRANT_TTL.as_secs());
        if self.max_ttl_secs < min || self.max_ttl_secs > max {
            return Err(ScopeError::Invalid(format!(
                "maximum TTL must be between {min} s and {max} s"
            )));
        }
        if self.default_ttl_secs < min || self.default_ttl_secs > self.max_ttl_secs {
            return Err(ScopeError::Invalid(format!(
                "default TTL must be between {min} s and the maximum TTL"
            )));
        }
        self.policy
            .validate()
            .map_err(|e| ScopeError::Invalid(e.to_string()))?;
        for role in &self.requesters.roles {
            check_name("requester role", role)?;
        }
        for workload in &self.requesters.workloads {
            check_name("requester workload", workload)?;
        }
        for consumer in &self.revocation.consumers {
            check_name("consumer workload", consumer)?;
        }
        if let Some(program) = self.revocation.hook.first()
            && !program.starts_with('/')
        {
            return Err(ScopeError::Invalid(format!(
                "the revocation hook must be an absolute path, not {program:?}"
            )));
        }
        if self.revocation.hook_timeout_secs == 0 || self.revocation.hook_timeout_secs > 3600 {
            return Err(ScopeError::Invalid(
                "hook timeout must be between 1 s and 3600 s".into(),
            ));
        }
        if self.revocation.confirm_within_secs == 0
            || self.revocation.confirm_within_secs > MAX_GRANT_TTL.as_secs()
        {
            return Err(ScopeError::Invalid(
                "the revocation deadline must be positive and at most the longest TTL".into(),
            ));
        }
        if self.requesters.roles.is_empty() && self.requesters.workloads.is_empty() {
            return Err(ScopeError::Invalid(
                "nobody may request this scope: name requester roles or workloads".into(),
            ));
        }
        Ok(())
    }

    /// Hygiene problems worth a warning: what an auditor or `doctor` would flag.
    pub fn findings(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.owner.trim().is_empty() {
            found.push(format!("scope {} has no owner", self.name));
        }
        if self.runbook.trim().is_empty() && self.runbook_url.trim().is_empty() {
            found.push(format!("scope {} has no runbook", self.name));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn db_root() -> Scope {
        Scope {
            name: "db-root".into(),
            owner: "dba-team".into(),
            runbook: "Rotate the root password afterwards.".into(),
            runbook_url: "https://wiki.example/db-root".into(),
            bearer: true,
            ssh: Some(SshSpec {
                principals: vec!["postgres".into()],
                permit_port_forwarding: false,
            }),
            default_ttl_secs: 900,
            max_ttl_secs: 3600,
            policy: ApprovalPolicy {
                quorum: 2,
                approver_role: "dba-oncall".into(),
                require_uv: false,
                require_attested: false,
                pending_timeout_secs: 600,
                denials_to_reject: 1,
                piv_touch: None,
                piv_pin: None,
            },
            requesters: Requesters {
                roles: vec!["dba-oncall".into()],
                workloads: vec!["vault-db".into()],
            },
            revocation: RevocationSpec::default(),
        }
    }

    #[test]
    fn a_complete_scope_is_valid_and_has_no_findings() {
        assert_eq!(db_root().validate(), Ok(()));
        assert!(db_root().findings().is_empty());
    }

    #[test]
    fn a_scope_without_owner_or_runbook_is_flagged() {
        let scope = Scope {
            owner: String::new(),
            runbook: String::new(),
            runbook_url: String::new(),
            ..db_root()
        };
        assert_eq!(scope.validate(), Ok(()));
        assert_eq!(scope.findings().len(), 2, "{:?}", scope.findings());
    }

    #[test]
    fn inconsistent_scopes_are_refused() {
        let cases = [
            Scope {
                name: TRUST_STORE_SCOPE.into(),
                ..db_root()
            },
            Scope {
                bearer: false,
                ssh: None,
                ..db_root()
            },
            Scope {
                default_ttl_secs: 7200,
                ..db_root()
            },
            Scope {
                max_ttl_secs: MAX_GRANT_TTL.as_secs() + 1,
                ..db_root()
            },
            Scope {
                ssh: Some(SshSpec {
                    principals: vec![],
                    permit_port_forwarding: false,
                }),
                ..db_root()
            },
            Scope {
                requesters: Requesters::default(),
                ..db_root()
            },
            Scope {
                runbook_url: "not a url".into(),
                ..db_root()
            },
        ];
        for scope in cases {
            assert!(scope.validate().is_err(), "{scope:?}");
        }
    }
}
