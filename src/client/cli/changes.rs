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
        // What the change does, with times in RFC 3339 like every other time latchkey prints;
        // `canonical_json` is the exact text the digest covers.
        "change": serde_json::from_str::<serde_json::Value>(&c.canonical_json)
            .ok()
            .and_then(|v| v.get("kind").cloned())
            .map(rfc3339_times)
            .unwrap_or_default(),
        "canonical_json": c.canonical_json,
        "digest": hex::encode(&c.digest),
    })
}

/// `value` with every time field (`*_at`, `pending_until`: Unix ms) as RFC 3339 text.
fn rfc3339_times(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::Number(_)
                            if k.ends_with("_at") || k == "pending_until" =>
                        {
                            card_value(&k, &v).into()
                        }
                        other => rfc3339_times(other),
                    };
                    (k, v)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(rfc3339_times).collect())
        }
        other => other,
    }
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
            change_card(&c.canonical_json)
        ));
    }
}

/// Sends a proposal and prints the change. Over `--server` the proposer's key signs it.
pub(super) async fn propose(
    channel: Channel,
    out: Out,
    note: String,
    change: pb::propose_change_request::Change,
) -> Result<(), ClientError> {
    let proposal = pb::ProposeChangeRequest {
        note,
        change: Some(change),
        ..Default::default()
    };
    let c = match super::remote_signer() {
        Some(signer) => {
            let mut key = signer.key.open()?;
            eprintln!("touch your key to sign the proposal");
            crate::client::propose_signed(
                channel,
                proposal,
                &signer.operator,
                key.as_mut(),
                signer.key.origin.as_deref(),
            )
            .await?
        }
        None => TrustServiceClient::new(channel)
            .propose_change(proposal)
            .await?
            .into_inner()
            .change
            .ok_or_else(|| ClientError::Protocol("no change".into()))?,
    };
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
                let mut rows = super::table::table(
                    &["ID", "STATE", "KIND", "SUBJECT", "VOTES", "NOTE"],
                    &["VOTES"],
                );
                for c in &list.changes {
                    rows.add_row(vec![
                        c.id.clone(),
                        change_state(c).to_owned(),
                        c.kind.clone(),
                        c.subject.clone(),
                        format!("{}/{}", c.approvals, c.quorum),
                        c.note.lines().next().unwrap_or_default().to_owned(),
                    ]);
                }
                say(&super::table::render(&rows));
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

/// A change as an approver reads it: what it does, field by field, with times in RFC 3339
/// and public keys as their SHA-256 fingerprint; rendered from exactly the canonical text the
/// vote's digest covers, never from anything else the daemon sent.
pub(crate) fn change_card(canonical_json: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(canonical_json) else {
        // Not JSON: show it as it is (the digest still covers exactly this).
        return canonical_json.to_owned();
    };
    let mut out = String::new();
    let field = |v: &serde_json::Value, key: &str| v.get(key).cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "change {}  {}",
        field(&value, "id").as_str().unwrap_or_default(),
        field(&field(&value, "kind"), "change")
            .as_str()
            .unwrap_or_default()
            .replace('_', " ")
    );
    card_lines(&mut out, &field(&value, "kind"), 1, &["change"]);
    for (label, key) in [
        ("proposed by", "proposer"),
        ("note", "note"),
        ("created", "created_at"),
        ("pending until", "pending_until"),
    ] {
        let _ = writeln!(
            out,
            "  {label:<14} {}",
            card_value(key, &field(&value, key))
        );
    }
    out.trim_end().to_owned()
}

/// One line per field of `value` (nested objects indented), skipping `skip`.
fn card_lines(out: &mut String, value: &serde_json::Value, depth: usize, skip: &[&str]) {
    let Some(map) = value.as_object() else {
        return;
    };
    let indent = "  ".repeat(depth);
    for (key, v) in map.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        let label = key.replace('_', " ");
        if v.is_object() && key != "proposer" {
            let _ = writeln!(out, "{indent}{label}:");
            card_lines(out, v, depth + 1, &[]);
        } else {
            let width = 14usize.saturating_sub(indent.len() - 2);
            let _ = writeln!(out, "{indent}{label:<width$} {}", card_value(key, v));
        }
    }
}

/// A field's value as text: times (Unix ms) in RFC 3339, public keys (base64 SPKI) as their
/// SHA-256, lists joined, actors as `kind/name`.
fn card_value(key: &str, v: &serde_json::Value) -> String {
    use base64::Engine as _;
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) if key == "public_key" => {
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(der) => {
                    use sha2::Digest as _;
                    format!("SHA256:{}", hex::encode(sha2::Sha256::digest(der)))
                }
                Err(_) => s.clone(),
            }
        }
        // Control characters (a newline in a note) could fake lines of the card: escaped.
        serde_json::Value::String(s) => s
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        serde_json::Value::Number(n) if key.ends_with("_at") || key == "pending_until" => n
            .as_i64()
            .map(|ms| {
                ts(Some(&prost_types::Timestamp {
                    seconds: ms.div_euclid(1000),
                    nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
                }))
            })
            .unwrap_or_else(|| n.to_string()),
        serde_json::Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| card_value(key, i))
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::Object(map) => {
            // An actor: {"kind": "local", "uid": 1000} → local/1000.
            let kind = map.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
            let who = map
                .iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(_, v)| card_value("", v))
                .collect::<Vec<_>>()
                .join("/");
            if who.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind}/{who}")
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_card_shows_fields_times_and_key_fingerprints_not_json() {
        let canonical = serde_json::json!({
            "id": "c0ffee",
            "kind": {
                "change": "add_authenticator",
                "operator": "dave",
                "new_operator_roles": ["dba"],
                "credential_id": "AbCd",
                "algorithm": "es256",
                "public_key": "AAEC",
                "aaguid": null,
                "attested": true,
            },
            "proposer": {"kind": "local", "uid": 1000},
            "note": "checked dave's badge in person",
            "created_at": 1_765_000_000_000_i64,
            "pending_until": 1_765_000_600_000_i64,
        })
        .to_string();
        let card = change_card(&canonical);
        assert!(
            card.starts_with("change c0ffee  add authenticator"),
            "{card}"
        );
        assert!(card.contains("operator"), "{card}");
        assert!(card.contains("dba"), "{card}");
        // SHA-256 of the bytes 00 01 02, not the base64.
        assert!(
            card.contains(
                "SHA256:ae4b3280e56e2faf83f414a6e3dabe9d5fbe18976544c05fed121accb85b53fc"
            ),
            "{card}"
        );
        assert!(!card.contains("AAEC"), "{card}");
        assert!(card.contains("2025-12-06T05:46:40Z"), "{card}");
        assert!(card.contains("local/1000"), "{card}");
        assert!(!card.contains('{'), "no JSON left: {card}");
    }

    #[test]
    fn change_json_gives_every_time_in_rfc3339() {
        let kind = serde_json::json!({
            "change": "put_workload",
            "workload": {"name": "vault-db", "admitted_at": 1_765_000_000_000_i64, "scopes": ["db-root"]},
        });
        let shown = rfc3339_times(kind);
        assert_eq!(shown["workload"]["admitted_at"], "2025-12-06T05:46:40Z");
        assert_eq!(shown["workload"]["scopes"][0], "db-root");
    }
}
