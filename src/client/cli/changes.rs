//! `latchkey change`: trust-store changes, proposed and voted on.

use super::*;

/// `latchkey change`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum ChangeCommand {
    /// List trust-store changes, newest first.
    List {
        /// Only in this state.
        #[arg(long, value_parser = ["pending", "applied", "denied", "expired"])]
        state: Option<String>,
    },
    /// Show a change and its canonical text.
    Show {
        /// Change id.
        id: String,
    },
    /// Approve a change with your key.
    Approve(VoteArgs),
    /// Deny a change with your key.
    Deny(VoteArgs),
}

fn change_state(c: &pb::ChangeInfo) -> &'static str {
    match c.state() {
        pb::ChangeState::Pending => "pending",
        pb::ChangeState::Applied => "applied",
        pb::ChangeState::Denied => "denied",
        pb::ChangeState::Expired => "expired",
        pb::ChangeState::Unspecified => "unknown",
    }
}

fn change_json(c: &pb::ChangeInfo) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "kind": c.kind,
        "subject": c.subject,
        "note": c.note,
        "proposer": c.proposer,
        "state": change_state(c),
        "approvals": c.approvals,
        "denials": c.denials,
        "quorum": c.quorum,
        "approver_role": c.approver_role,
        "subjects": c.subjects,
        "created_at": ts(c.created_at.as_ref()),
        "pending_until": ts(c.pending_until.as_ref()),
        "canonical": serde_json::from_str::<serde_json::Value>(&c.canonical_json).unwrap_or_default(),
        "digest": hex::encode(&c.digest),
    })
}

fn print_change(out: Out, c: &pb::ChangeInfo) {
    if out.json {
        say(&change_json(c).to_string());
    } else {
        say(&format!(
            "change {}  {}  {}  ({})\nproposed by {} at {}; {} of {} approvals from role {}\nnote: {}\n{}",
            c.id,
            c.kind,
            c.subject,
            change_state(c),
            c.proposer,
            ts(c.created_at.as_ref()),
            c.approvals,
            c.quorum,
            c.approver_role,
            c.note,
            pretty(&c.canonical_json)
        ));
    }
}

/// Sends a proposal and prints the change.
pub(super) async fn propose(
    channel: Channel,
    out: Out,
    note: String,
    change: pb::propose_change_request::Change,
) -> Result<(), ClientError> {
    let c = TrustServiceClient::new(channel)
        .propose_change(pb::ProposeChangeRequest {
            note,
            change: Some(change),
        })
        .await?
        .into_inner()
        .change
        .ok_or_else(|| ClientError::Protocol("no change".into()))?;
    print_change(out, &c);
    if !out.json && c.state() == pb::ChangeState::Pending {
        eprintln!(
            "proposed: {} approvals of role {} needed (`{}`)",
            c.quorum,
            c.approver_role,
            hints::approve_change(&c.id)
        );
    }
    Ok(())
}

/// `latchkey change`.
pub(super) async fn change(
    channel: Channel,
    out: Out,
    command: ChangeCommand,
) -> Result<(), ClientError> {
    match command {
        ChangeCommand::List { state } => {
            let state = match state.as_deref() {
                None => pb::ChangeState::Unspecified,
                Some(s) => pb::ChangeState::from_str_name(&format!(
                    "CHANGE_STATE_{}",
                    s.to_ascii_uppercase()
                ))
                .ok_or_else(|| ClientError::Protocol(format!("no change state {s}")))?,
            };
            let list = TrustServiceClient::new(channel)
                .list_changes(pb::ListChangesRequest {
                    state: state.into(),
                })
                .await?
                .into_inner();
            if out.json {
                let all: Vec<_> = list.changes.iter().map(change_json).collect();
                say(&serde_json::Value::Array(all).to_string());
            } else {
                say(&format!(
                    "{:<24}  {:<8}  {:<24}  {:<28}  {:>5}  NOTE",
                    "ID", "STATE", "KIND", "SUBJECT", "VOTES"
                ));
                for c in &list.changes {
                    say(&format!(
                        "{:<24}  {:<8}  {:<24}  {:<28}  {:>2}/{:<2}  {}",
                        c.id,
                        change_state(c),
                        c.kind,
                        c.subject,
                        c.approvals,
                        c.quorum,
                        c.note.lines().next().unwrap_or_default()
                    ));
                }
            }
        }
        ChangeCommand::Show { id } => {
            let c = TrustServiceClient::new(channel)
                .show_change(pb::ShowChangeRequest { id })
                .await?
                .into_inner()
                .change
                .ok_or_else(|| ClientError::Protocol("no change".into()))?;
            print_change(out, &c);
        }
        ChangeCommand::Approve(args) => {
            let target = Target::Change(args.id.clone());
            vote(channel, out, target, Decision::Approve, args).await?;
        }
        ChangeCommand::Deny(args) => {
            let target = Target::Change(args.id.clone());
            vote(channel, out, target, Decision::Deny, args).await?;
        }
    }
    Ok(())
}
