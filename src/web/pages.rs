//! The approval page's HTML, rendered here. Everything from the store or the caller is
//! escaped; nothing is inline script or style (the Content-Security-Policy forbids both). A
//! form of class `signed` is run by `page.js`: it asks `/api/begin` for the key ceremony named
//! by `data-purpose`, gets the key's answer, and posts the form with `ceremony_id` and
//! `credential` (the browser's `PublicKeyCredential.toJSON()`) filled in.

use std::fmt::Write as _;

use crate::base::clock::Timestamp;
use crate::domain::grant::{Grant, GrantState};
use crate::domain::operator::Authenticator;
use crate::domain::policy::Decision;
use crate::domain::request::RequestState;
use crate::service::authority::Authority;
use crate::service::changes::ChangeView;
use crate::service::requests::RequestView;
use crate::service::votes::VoteResult;

use super::WebError;

/// Text for HTML: `& < > " '` escaped, control characters shown as escapes (a newline in a
/// reason must not fake a line of the card).
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

/// A request or grant id as it may appear in a path: what `names::new_id` makes.
pub(super) fn checked_id(id: &str) -> Result<&str, WebError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(id)
    } else {
        Err(WebError::NotFound(format!("/{id}")))
    }
}

fn layout(title: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · latchkey</title>
<link rel="stylesheet" href="/static/page.css">
<script src="/static/page.js" defer></script>
</head>
<body>
<header><strong>latchkey</strong> <span>break-glass approval</span>
<nav><a href="/requests">Pending requests</a> <a href="/enroll">Propose a new key</a></nav></header>
<main>
<h1>{title}</h1>
{main}
<p id="status" role="status" aria-live="polite"></p>
</main>
</body>
</html>
"#,
        title = escape(title)
    )
}

/// The operator field and the hidden fields the script fills in.
fn signer_fields() -> &'static str {
    r#"<label>Operator <input name="operator" autocomplete="username" required spellcheck="false" autocapitalize="none"></label>
<input type="hidden" name="ceremony_id" value="">
<input type="hidden" name="credential" value="">"#
}

fn unlock(title: &str, action: &str, what: &str) -> String {
    layout(
        title,
        &format!(
            r#"<p>{what} Touch your security key to read it: the page keeps nothing, so every page you read and every decision asks for its own touch.</p>
<form method="post" action="{action}" class="signed" data-purpose="read">
{fields}
<button type="submit">Unlock with your key</button>
</form>"#,
            action = escape(action),
            fields = signer_fields(),
        ),
    )
}

/// `/requests`: the list of pending requests, behind a key touch.
pub(super) fn unlock_list() -> String {
    unlock(
        "Pending requests",
        "/requests",
        "The requests waiting for approvers, each with its card.",
    )
}

/// `/requests/ID`: one request, behind a key touch (the page does not say whether it exists).
pub(super) fn unlock_request(id: &str) -> Result<String, WebError> {
    let id = checked_id(id)?;
    Ok(unlock(
        &format!("Request {id}"),
        &format!("/requests/{id}"),
        "A break-glass request.",
    ))
}

/// `/grants/ID`: one grant, behind a key touch.
pub(super) fn unlock_grant(id: &str) -> Result<String, WebError> {
    let id = checked_id(id)?;
    Ok(unlock(
        &format!("Grant {id}"),
        &format!("/grants/{id}"),
        "A grant and its revocation.",
    ))
}

/// The request card: what the CLI shows an approver before the touch, field for field, and
/// what approving it will mint.
fn request_card(authority: &Authority, view: &RequestView) -> String {
    let r = &view.request;
    let c = &r.canonical;
    let state = r.state_at(authority.now());
    let mut rows: Vec<(&str, String)> = vec![
        ("request", format!("{} ({})", escape(&c.id), state.name())),
        ("requester", escape(&c.requester)),
        (
            "scope",
            format!("{} · owner: {}", escape(&c.scope), escape(&c.owner)),
        ),
    ];
    if !c.runbook.is_empty() || !c.runbook_url.is_empty() {
        let mut runbook = escape(&c.runbook);
        if c.runbook_url.starts_with("https://") || c.runbook_url.starts_with("http://") {
            let _ = write!(
                runbook,
                r#" <a href="{url}" rel="noreferrer noopener" target="_blank">{url}</a>"#,
                url = escape(&c.runbook_url)
            );
        } else if !c.runbook_url.is_empty() {
            let _ = write!(runbook, " {}", escape(&c.runbook_url));
        }
        rows.push(("runbook", runbook));
    }
    rows.push(("reason", escape(&c.reason)));
    rows.push((
        "ttl",
        humantime::format_duration(std::time::Duration::from_secs(c.ttl_secs)).to_string(),
    ));
    if !c.ticket.is_empty() {
        rows.push(("ticket", escape(&c.ticket)));
    }
    let (ssh_key, mints) = minted(authority, c);
    if let Some(key) = ssh_key {
        rows.push(("ssh key", key));
    }
    rows.push(("mints", mints));
    rows.push((
        "policy",
        format!(
            "{} of role {}; {} approved, {} denied; pending until {}",
            c.quorum,
            escape(&c.approver_role),
            view.approvals,
            view.denials,
            time(c.pending_until)
        ),
    ));
    rows.extend(r.votes.iter().map(|v| ("vote", vote_line(v))));
    if let RequestState::Issued { grant_id, .. } = &state {
        rows.push((
            "grant",
            format!(r#"<a href="/grants/{id}">{id}</a>"#, id = escape(grant_id)),
        ));
    }
    rows.push(("digest", hex::encode(r.digest())));
    let mut out = definitions(&rows);
    if state == RequestState::Pending {
        let _ = write!(
            out,
            r#"
<form method="post" action="/requests/{id}/vote" class="signed vote" data-purpose="vote" data-target="{id}">
{fields}
<input type="hidden" name="decision" value="">
<button type="button" value="approve" class="approve">Approve</button>
<button type="button" value="deny" class="deny">Deny</button>
</form>"#,
            id = escape(&c.id),
            fields = signer_fields(),
        );
    }
    out
}

/// Rows as a definition list.
fn definitions(rows: &[(&str, String)]) -> String {
    let mut out = String::from(r#"<dl class="card">"#);
    for (name, value) in rows {
        let _ = write!(out, "\n<dt>{name}</dt><dd>{value}</dd>");
    }
    out.push_str("\n</dl>");
    out
}

fn vote_line(v: &crate::domain::policy::Vote) -> String {
    let decision = match v.decision {
        Decision::Approve => "approved",
        Decision::Deny => "denied",
    };
    format!(
        "{} {decision} at {} (key {})",
        escape(&v.operator),
        time(v.at),
        escape(v.credential_id.get(..12).unwrap_or(&v.credential_id))
    )
}

/// The SSH key's line (if any) and what approving mints, escaped.
fn minted(
    authority: &Authority,
    c: &crate::domain::request::Canonical,
) -> (Option<String>, String) {
    let mut ssh_line = None;
    let mut mints = Vec::new();
    if !c.ssh_public_key.is_empty() {
        let key = crate::credential::sshcert::key_fingerprint(&c.ssh_public_key);
        let principals = authority
            .scope_named(&c.scope)
            .ok()
            .and_then(|s| s.ssh)
            .map(|ssh| ssh.principals.join(", "))
            .unwrap_or_default();
        ssh_line = Some(escape(&key));
        mints.push(format!(
            "an OpenSSH certificate for that key, principals {}",
            escape(&principals)
        ));
    }
    if !c.delivery_public_key.is_empty() {
        mints.push("a bearer token, sealed to the requester's delivery key".to_owned());
    }
    let mints = if mints.is_empty() {
        "nothing (the scope names no credential)".to_owned()
    } else {
        mints.join("; ")
    };
    (ssh_line, mints)
}

/// The pending requests, each with its card and vote buttons.
pub(super) fn request_list(
    authority: &Authority,
    operator: &str,
    pending: &[RequestView],
) -> Result<String, WebError> {
    let mut main = format!(
        "<p>Read as operator <strong>{}</strong>. {} pending.</p>",
        escape(operator),
        pending.len()
    );
    for view in pending {
        let _ = write!(
            main,
            "\n<section>{}</section>",
            request_card(authority, view)
        );
    }
    Ok(layout("Pending requests", &main))
}

/// One request's card.
pub(super) fn request_page(
    authority: &Authority,
    operator: &str,
    view: &RequestView,
) -> Result<String, WebError> {
    let main = format!(
        "<p>Read as operator <strong>{}</strong>. Check every line before you touch your key: \
         your signature covers exactly this request.</p>\n{}",
        escape(operator),
        request_card(authority, view)
    );
    Ok(layout(&format!("Request {}", view.request.id()), &main))
}

/// After a vote.
pub(super) fn vote_result(id: &str, decision: Decision, result: &VoteResult) -> String {
    let what = match decision {
        Decision::Approve => "approval",
        Decision::Deny => "denial",
    };
    let mut main = format!(
        r#"<p class="done">Your {what} of request <a href="/requests/{id}">{id}</a> is recorded (audit record {seq}).</p>
<dl class="card"><dt>state</dt><dd>{state}</dd><dt>approvals</dt><dd>{approvals} of {quorum}</dd><dt>denials</dt><dd>{denials}</dd>"#,
        id = escape(id),
        seq = result.audit_seq,
        state = result.state,
        approvals = result.approvals,
        quorum = result.quorum,
        denials = result.denials,
    );
    if let Some(grant) = &result.grant_id {
        let _ = write!(
            main,
            r#"<dt>grant</dt><dd><a href="/grants/{id}">{id}</a></dd>"#,
            id = escape(grant)
        );
    }
    main.push_str("</dl>");
    layout("Vote recorded", &main)
}

fn grant_card(grant: &Grant, now: Timestamp) -> (String, GrantState) {
    let state = crate::service::revocation::effective_state(grant, now);
    let mut rows: Vec<(&str, String)> = vec![
        ("grant", format!("{} ({})", escape(&grant.id), state.name())),
        (
            "request",
            format!(
                r#"<a href="/requests/{id}">{id}</a>"#,
                id = escape(&grant.request_id)
            ),
        ),
        ("scope", escape(&grant.scope)),
        ("holder", escape(&grant.requester.label())),
        ("issued", time(grant.issued_at)),
        ("expires", time(grant.expires_at)),
    ];
    if grant.bearer_sha256.is_some() {
        rows.push(("bearer token", "minted (only its hash is kept)".to_owned()));
    }
    if let Some(ssh) = &grant.ssh {
        rows.push((
            "ssh certificate",
            format!(
                "serial {}, principals {}",
                ssh.serial,
                escape(&ssh.principals.join(", "))
            ),
        ));
    }
    if let Some(revocation) = &grant.revocation {
        rows.push(("revoked", escape(&revocation.reason)));
        rows.push(("deadline", time(revocation.deadline)));
        for sink in &revocation.sinks {
            let status = match (&sink.confirmed_at, &sink.last_error) {
                (Some(at), _) => format!("confirmed {}", time(*at)),
                (None, Some(e)) => format!("not confirmed: {}", escape(e)),
                (None, None) => "not confirmed yet".to_owned(),
            };
            rows.push(("sink", format!("{} · {status}", escape(&sink.sink.label()))));
        }
    }
    let mut out = String::from(r#"<dl class="card">"#);
    for (name, value) in rows {
        let _ = write!(out, "\n<dt>{name}</dt><dd>{value}</dd>");
    }
    out.push_str("\n</dl>");
    (out, state)
}

/// A grant's state, with a revoke form while it is active.
pub(super) fn grant_page(operator: &str, grant: &Grant, now: Timestamp) -> String {
    let (card, state) = grant_card(grant, now);
    let mut main = format!(
        "<p>Read as operator <strong>{}</strong>.</p>\n{card}",
        escape(operator)
    );
    if state == GrantState::Active {
        let _ = write!(
            main,
            r#"
<form method="post" action="/grants/{id}/revoke" class="signed" data-purpose="revoke" data-target="{id}">
{fields}
<label>Reason <input name="reason" required maxlength="512"></label>
<button type="submit" class="deny">Revoke now</button>
</form>"#,
            id = escape(&grant.id),
            fields = signer_fields(),
        );
    }
    layout(&format!("Grant {}", grant.id), &main)
}

/// After an early revocation.
pub(super) fn revoke_result(grant: &Grant, now: Timestamp) -> String {
    let (card, _) = grant_card(grant, now);
    layout(
        "Revocation started",
        &format!(
            "<p class=\"done\">Grant {} is being revoked; each sink confirms on its own.</p>\n{card}",
            escape(&grant.id)
        ),
    )
}

/// `/enroll`: propose a new key for an operator.
pub(super) fn enroll_form() -> String {
    layout(
        "Propose a new key",
        &format!(
            r#"<p>Register a security key for an existing operator — a replacement for a lost key, say. It becomes a trust-store change: admins approve it as any other, after checking with you (the note says who checked, how and on which channel). Nothing counts until then.</p>
<form method="post" action="/enroll" class="signed" data-purpose="enroll">
{fields}
<label>Proofing note <textarea name="note" required minlength="{min}" maxlength="1024" rows="3"></textarea></label>
<button type="submit">Register this key</button>
</form>"#,
            fields = signer_fields(),
            min = crate::base::constants::MIN_PROOFING_NOTE_LEN,
        ),
    )
}

/// After a key was proposed.
pub(super) fn proposed_key(key: &Authenticator, change: &ChangeView) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let fingerprint = base64::engine::general_purpose::STANDARD
        .decode(&key.public_key)
        .map(|der| format!("SHA256:{}", hex::encode(sha2::Sha256::digest(der))))
        .unwrap_or_else(|_| key.public_key.clone());
    layout(
        "Key proposed",
        &format!(
            r#"<p class="done">Change <strong>{id}</strong> proposes this key for operator <strong>{operator}</strong>. It counts once admins approve it; tell them the fingerprint below on a channel they trust.</p>
<dl class="card"><dt>change</dt><dd>{id} ({state})</dd><dt>operator</dt><dd>{operator}</dd><dt>credential</dt><dd>{credential}</dd><dt>algorithm</dt><dd>{algorithm}</dd><dt>public key</dt><dd>{fingerprint}</dd><dt>model</dt><dd>{aaguid}</dd></dl>
<p>Admins run: <code>latchkey change approve {id} --operator YOU</code></p>"#,
            id = escape(&change.change.id),
            state = change.state.name(),
            operator = escape(&key.operator),
            credential = escape(&key.credential_id),
            algorithm = escape(&key.algorithm),
            fingerprint = escape(&fingerprint),
            aaguid = key
                .aaguid
                .map_or_else(|| "not attested".to_owned(), |u| u.to_string()),
        ),
    )
}

/// An error, with its stable code.
pub(super) fn error(code: &str, message: &str) -> String {
    layout(
        "Not done",
        &format!(
            r#"<p class="error"><code>{}</code> {}</p><p>Nothing was changed. <a href="/requests">Back to the pending requests</a>.</p>"#,
            escape(code),
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_no_line_breaks() {
        assert_eq!(
            escape("<script>alert('x')</script>\n&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;\\n&amp;&quot;"
        );
    }

    #[test]
    fn ids_outside_the_id_alphabet_are_not_pages() {
        assert!(checked_id("req-01HX_abc").is_ok());
        for bad in ["", "a/b", "a\"b", "<x>", &"x".repeat(65)] {
            assert!(checked_id(bad).is_err(), "{bad}");
        }
    }
}
