//! `latchkey operator`: show an operator, change roles and keys.

use super::*;

/// `latchkey operator` (besides `show`).
#[derive(clap::Subcommand, Debug)]
pub(super) enum OperatorChange {
    /// List operators with their roles and key counts.
    List,
    /// Propose replacing an operator's roles.
    SetRoles {
        /// Operator.
        name: String,
        /// Role (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose removing an operator and all their keys.
    Remove {
        /// Operator.
        name: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose removing one key.
    RemoveKey {
        /// Operator.
        name: String,
        /// Credential id.
        #[arg(long)]
        credential: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose reinstating a suspended key.
    ReinstateKey {
        /// Operator.
        name: String,
        /// Credential id.
        #[arg(long)]
        credential: String,
        /// Why (what was checked about the suspension).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose a new trust-store policy (quorum of a role).
    SetTrustPolicy {
        /// Approvals needed.
        #[arg(long)]
        quorum: u32,
        /// From this role.
        #[arg(long)]
        role: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// `latchkey operator list|set-roles|remove|remove-key|reinstate-key|set-trust-policy`.
pub(super) async fn operator(
    channel: Channel,
    out: Out,
    command: OperatorChange,
) -> Result<(), ClientError> {
    use pb::propose_change_request::Change as C;
    let (note, change) = match command {
        OperatorChange::List => {
            let list = TrustServiceClient::new(channel)
                .list_operators(pb::ListOperatorsRequest {})
                .await?
                .into_inner();
            if out.json {
                let all: Vec<_> = list
                    .operators
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "name": o.name, "roles": o.roles,
                            "active_keys": o.active_keys, "suspended_keys": o.suspended_keys,
                        })
                    })
                    .collect();
                say(&serde_json::Value::Array(all).to_string());
            } else {
                let mut rows = super::table::table(
                    &["OPERATOR", "ROLES", "ACTIVE", "SUSPENDED"],
                    &["ACTIVE", "SUSPENDED"],
                );
                for o in &list.operators {
                    rows.add_row(vec![
                        o.name.clone(),
                        o.roles.join(","),
                        o.active_keys.to_string(),
                        o.suspended_keys.to_string(),
                    ]);
                }
                say(&super::table::render(&rows));
            }
            return Ok(());
        }
        OperatorChange::SetRoles { name, roles, note } => (
            note,
            C::SetOperatorRoles(pb::SetOperatorRoles {
                operator: name,
                roles,
            }),
        ),
        OperatorChange::Remove { name, note } => (
            note,
            C::RemoveOperator(pb::RemoveOperator { operator: name }),
        ),
        OperatorChange::RemoveKey {
            name,
            credential,
            note,
        } => (
            note,
            C::RemoveAuthenticator(pb::RemoveAuthenticator {
                operator: name,
                credential_id: credential,
            }),
        ),
        OperatorChange::ReinstateKey {
            name,
            credential,
            note,
        } => (
            note,
            C::ReinstateAuthenticator(pb::ReinstateAuthenticator {
                operator: name,
                credential_id: credential,
            }),
        ),
        OperatorChange::SetTrustPolicy { quorum, role, note } => (
            note,
            C::SetTrustPolicy(pb::SetTrustPolicy {
                quorum,
                approver_role: role,
            }),
        ),
    };
    propose(channel, out, note, change).await
}

#[derive(Subcommand)]
pub(super) enum OperatorCommand {
    /// Show an operator's roles and keys (and whether any is suspended).
    Show {
        /// Operator name.
        name: String,
    },
    #[command(flatten)]
    Change(OperatorChange),
}

/// `latchkey operator show` and `operator ...` changes.
pub(super) async fn run(
    channel: Channel,
    out: Out,
    command: OperatorCommand,
) -> Result<(), ClientError> {
    match command {
        OperatorCommand::Show { name } => show(channel, out, &name).await,
        OperatorCommand::Change(command) => operator(channel, out, command).await,
    }
}

async fn show(channel: Channel, out: Out, name: &str) -> Result<(), ClientError> {
    let shown = client::show_operator(channel, name).await?;
    if out.json {
        let keys: Vec<serde_json::Value> = shown
            .authenticators
            .iter()
            .map(|a| {
                serde_json::json!({
                    "credential_id": a.credential_id,
                    "algorithm": a.algorithm,
                    "aaguid": a.aaguid,
                    "counter": a.counter,
                    "state": a.state().as_str_name(),
                    "suspended_reason": a.suspended_reason,
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::json!({ "name": shown.name, "roles": shown.roles, "authenticators": keys })
        );
        return Ok(());
    }
    say!("operator {}  roles: {}", shown.name, shown.roles.join(", "));
    for a in &shown.authenticators {
        let state = match a.state() {
            pb::AuthenticatorState::Suspended => format!("SUSPENDED: {}", a.suspended_reason),
            _ => "active".to_owned(),
        };
        say!(
            "  {}  {}  counter {}  {}",
            a.credential_id,
            a.algorithm,
            a.counter,
            state
        );
    }
    Ok(())
}
