//! `latchkey scope`: scopes, changed through trust-store changes.

use super::*;

/// `latchkey scope`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum ScopeCommand {
    /// List scopes, flagging any without owner or runbook.
    List,
    /// Show one scope (`trust-store` shows the trust-store policy).
    Show {
        /// Scope name.
        name: String,
    },
    /// Propose creating or changing a scope from a TOML file (see docs/scopes.md).
    Put {
        /// The scope definition.
        #[arg(long)]
        file: PathBuf,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose removing a scope.
    Remove {
        /// Scope name.
        name: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// `latchkey scope`.
pub(super) async fn scope(
    channel: Channel,
    out: Out,
    command: ScopeCommand,
) -> Result<(), ClientError> {
    use pb::propose_change_request::Change as C;
    let mut client = TrustServiceClient::new(channel.clone());
    match command {
        ScopeCommand::List => {
            let list = client
                .list_scopes(pb::ListScopesRequest {})
                .await?
                .into_inner();
            if out.json {
                let all: Vec<_> = list
                    .scopes
                    .iter()
                    .filter_map(|s| {
                        let scope = s.scope.as_ref()?;
                        Some(serde_json::json!({
                            "name": scope.name,
                            "owner": scope.owner,
                            "runbook": scope.runbook,
                            "runbook_url": scope.runbook_url,
                            "quorum": scope.policy.as_ref().map(|p| p.quorum),
                            "approver_role": scope.policy.as_ref().map(|p| p.approver_role.clone()),
                            "findings": s.findings,
                        }))
                    })
                    .collect();
                say(&serde_json::Value::Array(all).to_string());
            } else {
                let mut rows =
                    super::table::table(&["SCOPE", "OWNER", "POLICY", "MAX TTL", "MINTS"], &[]);
                let mut warnings = Vec::new();
                for s in &list.scopes {
                    let Some(scope) = &s.scope else { continue };
                    let policy = scope.policy.clone().unwrap_or_default();
                    let mints = match (scope.bearer, &scope.ssh) {
                        (true, Some(_)) => "bearer+ssh",
                        (true, None) => "bearer",
                        (false, _) => "ssh",
                    };
                    rows.add_row(vec![
                        scope.name.clone(),
                        scope.owner.clone(),
                        format!("{} of {}", policy.quorum, policy.approver_role),
                        humantime::format_duration(std::time::Duration::from_secs(
                            scope
                                .max_ttl
                                .map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0)),
                        ))
                        .to_string(),
                        mints.to_owned(),
                    ]);
                    for finding in &s.findings {
                        warnings.push(format!("WARN {}: {finding}", scope.name));
                    }
                }
                say(&super::table::render(&rows));
                for warning in warnings {
                    say(&warning);
                }
            }
        }
        ScopeCommand::Show { name } => {
            let info = client
                .show_scope(pb::ShowScopeRequest { name })
                .await?
                .into_inner()
                .scope
                .ok_or_else(|| ClientError::Protocol("no scope".into()))?;
            let scope = info
                .scope
                .ok_or_else(|| ClientError::Protocol("no scope".into()))?;
            let domain = crate::rpc::scope_from_pb(scope.clone());
            match domain {
                Ok(d) if out.json => say(&serde_json::to_string(&d).unwrap_or_default()),
                Ok(d) => say(&toml::to_string(&d).unwrap_or_default()),
                Err(_) => say(&format!("{scope:?}")),
            }
            for finding in &info.findings {
                eprintln!("WARN {finding}");
            }
        }
        ScopeCommand::Put { file, note } => {
            let text = std::fs::read_to_string(&file).map_err(|e| file_error(&file, e))?;
            let scope: crate::domain::scope::Scope =
                toml::from_str(&text).map_err(|e| file_error(&file, e))?;
            propose(
                channel,
                out,
                note,
                C::PutScope(crate::rpc::scope_to_pb(&scope)),
            )
            .await?;
        }
        ScopeCommand::Remove { name, note } => {
            propose(channel, out, note, C::RemoveScope(pb::RemoveScope { name })).await?;
        }
    }
    Ok(())
}
