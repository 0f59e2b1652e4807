//! `latchkey grant show`, `grants`, `revoke`, `relinquish`.

use super::*;

fn grant_state(g: &pb::GrantInfo) -> &'static str {
    match g.state() {
        pb::GrantState::Active => "active",
        pb::GrantState::Revoking => "revoking",
        pb::GrantState::Revoked => "revoked",
        pb::GrantState::RevocationUnconfirmed => "REVOCATION-UNCONFIRMED",
        pb::GrantState::Unspecified => "unknown",
    }
}

fn grant_json(g: &pb::GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "request_id": g.request_id,
        "scope": g.scope,
        "requester": g.requester,
        "issued_at": ts(g.issued_at.as_ref()),
        "expires_at": ts(g.expires_at.as_ref()),
        "state": grant_state(g).to_ascii_lowercase().replace('-', "_"),
        "bearer": g.bearer,
        "ssh_serial": g.ssh_serial,
        "ssh_principals": g.ssh_principals,
        "revocation_reason": g.revocation_reason,
        "revocation_started_at": ts(g.revocation_started_at.as_ref()),
        "revocation_deadline": ts(g.revocation_deadline.as_ref()),
        "revoked_at": ts(g.revoked_at.as_ref()),
        "sinks": g.sinks.iter().map(|s| serde_json::json!({
            "sink": s.sink,
            "confirmed": s.confirmed,
            "confirmed_at": ts(s.confirmed_at.as_ref()),
            "detail": s.detail,
            "attempts": s.attempts,
            "last_error": s.last_error,
            "next_attempt_at": ts(s.next_attempt_at.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// A grant with every sink's state, for people.
pub fn grant_text(g: &pb::GrantInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "grant     {}  {}", g.id, grant_state(g));
    let _ = writeln!(
        s,
        "scope     {}  requester {}  request {}",
        g.scope, g.requester, g.request_id
    );
    let _ = writeln!(
        s,
        "issued    {}  expires {}",
        ts(g.issued_at.as_ref()),
        ts(g.expires_at.as_ref())
    );
    let _ = writeln!(
        s,
        "mints     bearer: {}  ssh: {}",
        if g.bearer { "yes (hash only)" } else { "no" },
        if g.ssh_serial == 0 {
            "no".to_owned()
        } else {
            format!(
                "serial {} principals {}",
                g.ssh_serial,
                g.ssh_principals.join(",")
            )
        }
    );
    if !g.revocation_reason.is_empty() {
        let _ = writeln!(
            s,
            "revocation {}  started {}  deadline {}{}",
            g.revocation_reason,
            ts(g.revocation_started_at.as_ref()),
            ts(g.revocation_deadline.as_ref()),
            if g.revoked_at.is_some() {
                format!("  complete {}", ts(g.revoked_at.as_ref()))
            } else {
                String::new()
            }
        );
        for sink in &g.sinks {
            let state = if sink.confirmed {
                format!(
                    "confirmed {}  {}",
                    ts(sink.confirmed_at.as_ref()),
                    sink.detail
                )
            } else if sink.last_error.is_empty() {
                "waiting".to_owned()
            } else {
                format!(
                    "FAILED x{}: {}; next try {}",
                    sink.attempts,
                    sink.last_error,
                    ts(sink.next_attempt_at.as_ref())
                )
            };
            let _ = writeln!(s, "  {:<22} {}", sink.sink, state);
        }
    }
    s.trim_end().to_owned()
}

/// `latchkey grant`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum GrantCommand {
    /// Show a grant (never its token) and every revocation sink's state.
    Show {
        /// Grant id.
        id: String,
    },
}

/// `latchkey grant show`.
pub(super) async fn show_grant(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
    let g = AccessServiceClient::new(channel)
        .show_grant(pb::ShowGrantRequest { id })
        .await?
        .into_inner()
        .grant
        .ok_or_else(|| ClientError::Protocol("no grant".into()))?;
    if out.json {
        say(&grant_json(&g).to_string());
    } else {
        say(&grant_text(&g));
    }
    Ok(())
}

/// `latchkey grants`.
pub(super) async fn grants(
    channel: Channel,
    out: Out,
    state: Option<String>,
) -> Result<(), ClientError> {
    let state = match state.as_deref() {
        None => pb::GrantState::Unspecified,
        Some(s) => pb::GrantState::from_str_name(&format!(
            "GRANT_STATE_{}",
            s.to_ascii_uppercase().replace('-', "_")
        ))
        .ok_or_else(|| ClientError::Protocol(format!("no grant state {s}")))?,
    };
    let list = AccessServiceClient::new(channel)
        .list_grants(pb::ListGrantsRequest {
            state: state.into(),
        })
        .await?
        .into_inner();
    if out.json {
        let all: Vec<_> = list.grants.iter().map(grant_json).collect();
        say(&serde_json::Value::Array(all).to_string());
        return Ok(());
    }
    let mut rows = super::table::table(
        &["GRANT", "STATE", "SCOPE", "REQUESTER", "EXPIRES", "SINKS"],
        &[],
    );
    for g in &list.grants {
        let confirmed = g.sinks.iter().filter(|s| s.confirmed).count();
        rows.add_row(vec![
            g.id.clone(),
            grant_state(g).to_owned(),
            g.scope.clone(),
            g.requester.clone(),
            ts(g.expires_at.as_ref()),
            if g.sinks.is_empty() {
                String::new()
            } else {
                format!("{confirmed}/{} confirmed", g.sinks.len())
            },
        ]);
    }
    say(&super::table::render(&rows));
    Ok(())
}

/// `latchkey revoke`: any operator, with a key touch.
pub(super) async fn revoke(
    channel: Channel,
    out: Out,
    (id, reason): (String, String),
    operator: String,
    key: KeyChoice,
    wait: Option<std::time::Duration>,
) -> Result<bool, ClientError> {
    // A mistyped key file fails before a ceremony is opened.
    key.check_files()?;
    let mut client = AccessServiceClient::new(channel.clone());
    let begun = client
        .begin_revoke(pb::BeginRevokeRequest {
            grant_id: id.clone(),
            operator,
            reason: reason.clone(),
        })
        .await?
        .into_inner();
    if begun.digest != crate::domain::grant::revoke_digest(&id, &reason) {
        return Err(ClientError::DigestMismatch(format!(
            "the challenge is not bound to revoking grant {id}"
        )));
    }
    if !out.json {
        eprintln!("touch your key to revoke grant {id}");
    }
    let credential_json = key.open()?.respond(
        key.origin.as_deref(),
        &begun.request_options_json,
        &begun.piv_challenge,
    )?;
    let g = client
        .revoke(pb::RevokeRequest {
            grant_id: id,
            reason,
            ceremony_id: begun.ceremony_id,
            credential_json,
        })
        .await?
        .into_inner()
        .grant
        .ok_or_else(|| ClientError::Protocol("no grant".into()))?;
    let Some(timeout) = wait else {
        print_grant(out, &g);
        return Ok(true);
    };
    if !out.json {
        eprintln!(
            "revoking: waiting until every sink confirms (at most {})",
            humantime::format_duration(timeout)
        );
    }
    match access::await_revocation(channel, &g.id, timeout).await? {
        Ok(revoked) => {
            print_grant(out, &revoked);
            Ok(true)
        }
        Err((last, why)) => {
            print_grant(out, &last);
            eprintln!("latchkey: not confirmed: {why}");
            Ok(false)
        }
    }
}

fn print_grant(out: Out, g: &pb::GrantInfo) {
    if out.json {
        say(&grant_json(g).to_string());
    } else {
        say(&grant_text(g));
    }
}

/// `latchkey relinquish`: the holder gives its grant up.
pub(super) async fn relinquish(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
    let g = AccessServiceClient::new(channel)
        .relinquish(pb::RelinquishRequest { grant_id: id })
        .await?
        .into_inner()
        .grant
        .ok_or_else(|| ClientError::Protocol("no grant".into()))?;
    if out.json {
        say(&grant_json(&g).to_string());
    } else {
        say(&grant_text(&g));
    }
    Ok(())
}
