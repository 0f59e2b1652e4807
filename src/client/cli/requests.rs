//! `latchkey request`, `requests`, `approve`, `deny`, `cancel`, `wait`, `introspect`.

use super::*;

/// `latchkey request`.
#[derive(clap::Args, Debug)]
pub(super) struct RequestArgs {
    /// Scope to open.
    #[arg(long)]
    pub scope: String,
    /// Why (10-1000 characters): what is broken and what you will do.
    #[arg(long)]
    pub reason: String,
    /// How long, e.g. 15m or 1h (default: the scope's default; at most its maximum).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Ticket or incident reference.
    #[arg(long, default_value = "")]
    pub ticket: String,
    /// OpenSSH public key to certify (SSH scopes). The certificate is written next to it as
    /// `NAME-cert.pub`, where ssh finds it.
    #[arg(long)]
    pub ssh_public_key: Option<PathBuf>,
    /// Request as this operator, signing with your key. Without it (over --tls) the request
    /// is the workload's.
    #[arg(long)]
    pub operator: Option<String>,
    #[command(flatten)]
    pub key: KeyChoice,
    /// Print the request id and return instead of waiting for approval.
    #[arg(long)]
    pub no_wait: bool,
    /// The delivery key file (X25519 secret, hex, mode 0600): read if it exists, else made.
    /// The bearer token is sealed to its public half. Default: a fresh key kept in
    /// `$XDG_STATE_HOME/latchkey/delivery/REQUEST.key` (or `~/.local/state/...`), where
    /// `latchkey wait REQUEST` finds it.
    #[arg(long)]
    pub delivery_key: Option<PathBuf>,
}

/// Where the delivery key of request `id` is kept by default, if a state directory is known.
pub(super) fn default_delivery_key_path(id: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("latchkey/delivery").join(format!("{id}.key")))
}

/// The delivery key to collect request `id` with: `explicit`, else the default file.
pub fn delivery_key_for(
    id: &str,
    explicit: Option<&Path>,
) -> Result<Option<DeliveryKey>, ClientError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match default_delivery_key_path(id) {
            Some(path) if path.exists() => path,
            _ => return Ok(None),
        },
    };
    DeliveryKey::read_file(&path)
        .map(Some)
        .map_err(|e| file_error(&path, e))
}

/// Keeps a fresh request's delivery key where `latchkey wait` looks for it.
fn keep_delivery_key(id: &str, key: &DeliveryKey) -> Option<PathBuf> {
    let path = default_delivery_key_path(id)?;
    let dir = path.parent()?;
    if let Err(e) = crate::base::fsperm::create_private_dir(dir).map_err(|e| e.to_string()) {
        eprintln!(
            "warning: could not keep the delivery key in {}: {e}",
            dir.display()
        );
        return None;
    }
    match key.write_file(&path) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("warning: could not keep the delivery key: {e}");
            None
        }
    }
}

/// `latchkey requests`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum RequestsCommand {
    /// List requests, newest first.
    List {
        /// Only in this state.
        #[arg(long, value_parser = ["pending", "issued", "denied", "cancelled", "expired"])]
        state: Option<String>,
    },
    /// Show everything an approver should read.
    Show {
        /// Request id.
        id: String,
    },
}

/// `latchkey approve|deny` and `latchkey change approve|deny`.
#[derive(clap::Args, Debug)]
pub(super) struct VoteArgs {
    /// Id of the request (`approve`, `deny`) or of the change (`change approve`, `change deny`).
    pub id: String,
    /// Your operator name.
    #[arg(long, env = "LATCHKEY_OPERATOR")]
    pub operator: String,
    #[command(flatten)]
    pub key: KeyChoice,
}

fn request_state(r: &pb::RequestInfo) -> &'static str {
    match r.state() {
        pb::RequestState::Pending => "pending",
        pb::RequestState::Issued => "issued",
        pb::RequestState::Denied => "denied",
        pb::RequestState::Cancelled => "cancelled",
        pb::RequestState::Expired => "expired",
        pb::RequestState::Unspecified => "unknown",
    }
}

fn request_json(r: &pb::RequestInfo) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "scope": r.scope,
        "requester": r.requester,
        "reason": r.reason,
        "ttl_secs": r.ttl.map_or(0, |d| d.seconds),
        "ticket": r.ticket,
        "scope_owner": r.scope_owner,
        "scope_runbook": r.scope_runbook,
        "scope_runbook_url": r.scope_runbook_url,
        "quorum": r.quorum,
        "approver_role": r.approver_role,
        "created_at": ts(r.created_at.as_ref()),
        "pending_until": ts(r.pending_until.as_ref()),
        "state": request_state(r),
        "approvals": r.approvals,
        "denials": r.denials,
        "votes": r.votes.iter().map(|v| serde_json::json!({
            "operator": v.operator,
            "credential_id": v.credential_id,
            "decision": if v.decision() == pb::Decision::Deny { "deny" } else { "approve" },
            "at": ts(v.at.as_ref()),
        })).collect::<Vec<_>>(),
        "grant_id": r.grant_id,
        "digest": hex::encode(&r.digest),
    })
}

/// The text an approver reads before touching their key.
pub fn request_text(r: &pb::RequestInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "request   {}  ({})", r.id, request_state(r));
    let _ = writeln!(s, "requester {}", r.requester);
    let _ = writeln!(s, "scope     {}  owner: {}", r.scope, r.scope_owner);
    if !r.scope_runbook.is_empty() {
        let _ = writeln!(s, "runbook   {}", r.scope_runbook);
    }
    if !r.scope_runbook_url.is_empty() {
        let _ = writeln!(s, "          {}", r.scope_runbook_url);
    }
    let _ = writeln!(s, "reason    {}", r.reason);
    let ttl = r.ttl.map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0));
    let _ = writeln!(
        s,
        "ttl       {}",
        humantime::format_duration(std::time::Duration::from_secs(ttl))
    );
    if !r.ticket.is_empty() {
        let _ = writeln!(s, "ticket    {}", r.ticket);
    }
    if !r.ssh_public_key.is_empty() {
        let key = crate::credential::sshcert::key_fingerprint(&r.ssh_public_key);
        let _ = writeln!(s, "ssh key   {key}");
    }
    let _ = writeln!(
        s,
        "policy    {} of role {}; {} approved, {} denied; pending until {}",
        r.quorum,
        r.approver_role,
        r.approvals,
        r.denials,
        ts(r.pending_until.as_ref())
    );
    for v in &r.votes {
        let _ = writeln!(
            s,
            "  {} {} with key {} at {}",
            v.operator,
            if v.decision() == pb::Decision::Deny {
                "denied"
            } else {
                "approved"
            },
            v.credential_id,
            ts(v.at.as_ref())
        );
    }
    if !r.grant_id.is_empty() {
        let _ = writeln!(s, "grant     {}", r.grant_id);
    }
    let _ = write!(s, "digest    {}", hex::encode(&r.digest));
    s
}

fn print_requests(out: Out, requests: &[pb::RequestInfo]) {
    if out.json {
        let all: Vec<_> = requests.iter().map(request_json).collect();
        say(&serde_json::Value::Array(all).to_string());
        return;
    }
    let mut rows = super::table::table(
        &["ID", "STATE", "SCOPE", "REQUESTER", "VOTES", "REASON"],
        &["VOTES"],
    );
    for r in requests {
        rows.add_row(vec![
            r.id.clone(),
            request_state(r).to_owned(),
            r.scope.clone(),
            r.requester.clone(),
            format!("{}/{}", r.approvals, r.quorum),
            r.reason.lines().next().unwrap_or_default().to_owned(),
        ]);
    }
    say(&super::table::render(&rows));
}

/// Where the SSH certificate goes: next to the public key given; else next to the key in
/// `~/.ssh` the request certifies (where `ssh` finds it by itself), unless a certificate is
/// there already; else in latchkey's state directory
/// (`$XDG_STATE_HOME/latchkey/certs/GRANT-cert.pub`).
fn certificate_path(
    given: Option<&Path>,
    request: &pb::RequestInfo,
    grant_id: &str,
) -> Option<PathBuf> {
    if let Some(public_key) = given {
        return Some(cert_path(public_key));
    }
    let beside_key = matching_ssh_key(&request.ssh_public_key)
        .map(|public_key| cert_path(&public_key))
        .filter(|cert| !cert.exists());
    beside_key.or_else(|| {
        default_delivery_key_path(grant_id).and_then(|p| {
            p.parent()
                .and_then(Path::parent)
                .map(|state| state.join("certs").join(format!("{grant_id}-cert.pub")))
        })
    })
}

/// The first public key file in `~/.ssh` (by name) that holds `key_line`'s key.
fn matching_ssh_key(key_line: &str) -> Option<PathBuf> {
    let wanted = openssh_key_body(key_line)?;
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(home.join(".ssh"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    candidates.sort();
    candidates.into_iter().find(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|text| openssh_key_body(&text))
            .is_some_and(|body| body == wanted)
    })
}

/// An OpenSSH public key line without its comment: `TYPE BASE64`.
fn openssh_key_body(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    Some(format!("{} {}", words.next()?, words.next()?))
}

fn cert_path(public_key: &Path) -> PathBuf {
    let name = public_key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    public_key.with_file_name(format!("{stem}-cert.pub"))
}

/// `latchkey request`: asks, then waits for the credential (unless `--no-wait`).
pub(super) async fn request(
    channel: Channel,
    out: Out,
    args: RequestArgs,
    session: Option<&super::Session>,
) -> Result<(), ClientError> {
    // A mistyped key file fails before anything is written or asked.
    args.key.check_files()?;
    let ssh_public_key = match &args.ssh_public_key {
        Some(path) => std::fs::read_to_string(path).map_err(|e| file_error(path, e))?,
        None => String::new(),
    };
    let delivery_key = match &args.delivery_key {
        Some(path) if path.exists() => {
            DeliveryKey::read_file(path).map_err(|e| file_error(path, e))?
        }
        Some(path) => {
            let key = DeliveryKey::generate();
            key.write_file(path).map_err(|e| file_error(path, e))?;
            key
        }
        None => DeliveryKey::generate(),
    };
    let draft = pb::RequestDraft {
        scope: args.scope.clone(),
        reason: args.reason.clone(),
        ttl: args.ttl.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        ticket: args.ticket.clone(),
        ssh_public_key,
        delivery_public_key: delivery_key.public_key().to_vec(),
    };
    let created = match &args.operator {
        Some(name) => {
            let mut key = args.key.open()?;
            eprintln!("touch your key to sign the request");
            access::request(
                channel.clone(),
                draft,
                Some((name, key.as_mut(), args.key.origin.as_deref())),
            )
            .await?
        }
        None => access::request(channel.clone(), draft, None).await?,
    };
    if args.delivery_key.is_none() {
        keep_delivery_key(&created.id, &delivery_key);
    }
    let needs = format!(
        "request {} for {}: needs {} approvals of role {} (until {}); ask approvers to run `{}`",
        created.id,
        created.scope,
        created.quorum,
        created.approver_role,
        ts(created.pending_until.as_ref()),
        super::hints::approve_request(&created.id)
    );
    if args.no_wait {
        if out.json {
            say(&request_json(&created).to_string());
        } else {
            // The id alone on stdout (for scripts); what to do next on stderr.
            say(&created.id);
            eprintln!(
                "{needs}; collect the credential with `{}`",
                super::hints::wait(&created.id)
            );
        }
        return Ok(());
    }
    eprintln!("{needs}; waiting");
    deliver(
        channel,
        out,
        &created.id,
        (args.ssh_public_key.as_deref(), Some(&delivery_key)),
        session,
    )
    .await
}

/// Waits on a request and prints (and writes) the credential, its bearer token opened with
/// `delivery_key`. Over the remote port, `session` reopens the read session when it ends.
pub(super) async fn deliver(
    channel: Channel,
    out: Out,
    id: &str,
    (ssh_public_key, delivery_key): (Option<&Path>, Option<&DeliveryKey>),
    session: Option<&super::Session>,
) -> Result<(), ClientError> {
    let mut seen = 0usize;
    let mut opened = match session {
        Some(s) => Some((s.operator.as_str(), s.key.open()?, s.key.origin.as_deref())),
        None => None,
    };
    let reauth = opened
        .as_mut()
        .map(|(operator, key, origin)| access::Reauth {
            operator,
            key: key.as_mut(),
            origin: *origin,
        });
    let (request, credential) = access::wait_reauth(
        channel,
        id,
        delivery_key,
        |r| {
            for (i, v) in r.votes.iter().enumerate().skip(seen) {
                // The count as of this vote (votes cast before the wait began are replayed).
                let approvals_then = r.votes[..=i]
                    .iter()
                    .filter(|v| v.decision() != pb::Decision::Deny)
                    .count();
                eprintln!(
                    "  {} {} ({} of {})",
                    v.operator,
                    if v.decision() == pb::Decision::Deny {
                        "denied"
                    } else {
                        "approved"
                    },
                    u32::try_from(approvals_then)
                        .unwrap_or(u32::MAX)
                        .min(r.approvals),
                    r.quorum
                );
            }
            seen = r.votes.len();
        },
        reauth,
    )
    .await?;
    let Some(credential) = credential else {
        return Err(ClientError::RequestEnded {
            id: request.id.clone(),
            state: request_state(&request).to_owned(),
        });
    };
    let mut cert_file = None;
    if !credential.ssh_certificate.is_empty()
        && let Some(path) = certificate_path(ssh_public_key, &request, &credential.grant_id)
    {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        std::fs::write(&path, format!("{}\n", credential.ssh_certificate))
            .map_err(|e| file_error(&path, e))?;
        cert_file = Some(path);
    }
    if out.json {
        say(&serde_json::json!({
            "request": request.id,
            "grant_id": credential.grant_id,
            "scope": credential.scope,
            "expires_at": ts(credential.expires_at.as_ref()),
            "bearer_token": credential.bearer_token,
            "ssh_certificate": credential.ssh_certificate,
            "ssh_certificate_file": cert_file.as_ref().map(|p| p.display().to_string()),
        })
        .to_string());
    } else {
        eprintln!(
            "issued grant {} for {} until {}",
            credential.grant_id,
            credential.scope,
            ts(credential.expires_at.as_ref())
        );
        if !credential.bearer_token.is_empty() {
            say(&credential.bearer_token);
        }
        match cert_file {
            Some(path) => eprintln!("SSH certificate written to {}", path.display()),
            None if !credential.ssh_certificate.is_empty() => say(&credential.ssh_certificate),
            None => {}
        }
    }
    Ok(())
}

/// `latchkey requests`.
pub(super) async fn requests(
    channel: Channel,
    out: Out,
    command: RequestsCommand,
) -> Result<(), ClientError> {
    let mut client = AccessServiceClient::new(channel);
    match command {
        RequestsCommand::List { state } => {
            let state = match state.as_deref() {
                None => pb::RequestState::Unspecified,
                Some(s) => pb::RequestState::from_str_name(&format!(
                    "REQUEST_STATE_{}",
                    s.to_ascii_uppercase()
                ))
                .ok_or_else(|| ClientError::Protocol(format!("no request state {s}")))?,
            };
            let list = client
                .list_requests(pb::ListRequestsRequest {
                    state: state.into(),
                })
                .await?
                .into_inner();
            print_requests(out, &list.requests);
        }
        RequestsCommand::Show { id } => {
            let r = client
                .show_request(pb::ShowRequestRequest { id })
                .await?
                .into_inner()
                .request
                .ok_or_else(|| ClientError::Protocol("no request".into()))?;
            if out.json {
                say(&request_json(&r).to_string());
            } else {
                say(&request_text(&r));
            }
        }
    }
    Ok(())
}

/// `latchkey approve|deny` and `latchkey change approve|deny`.
pub(super) async fn vote(
    channel: Channel,
    out: Out,
    target: Target,
    decision: Decision,
    args: VoteArgs,
) -> Result<(), ClientError> {
    // A mistyped key file fails before anything is fetched or shown.
    args.key.check_files()?;
    let shown = access::shown(channel.clone(), &target).await?;
    if !out.json {
        match &target {
            Target::Request(id) => {
                let r = AccessServiceClient::new(channel.clone())
                    .show_request(pb::ShowRequestRequest { id: id.clone() })
                    .await?
                    .into_inner()
                    .request
                    .ok_or_else(|| ClientError::Protocol("no request".into()))?;
                eprintln!("{}", request_text(&r));
                eprintln!("{}", mints(channel.clone(), &r.scope).await);
            }
            Target::Change(_) => eprintln!("{}", changes::change_card(&shown.canonical_json)),
        }
        eprintln!(
            "touch your key to {} (digest {})",
            decision.as_str(),
            hex::encode(shown.digest)
        );
    }
    let mut key = args.key.open()?;
    let result = access::vote(
        channel,
        &target,
        &args.operator,
        decision,
        key.as_mut(),
        args.key.origin.as_deref(),
    )
    .await?;
    if out.json {
        say(&serde_json::json!({
            "state": result.state,
            "approvals": result.approvals,
            "denials": result.denials,
            "quorum": result.quorum,
            "audit_seq": result.audit_seq,
            "grant_id": result.grant_id,
        })
        .to_string());
    } else {
        say(&format!(
            "{}: {} of {} approvals, {} denials; now {}{}",
            decision.as_str(),
            result.approvals,
            result.quorum,
            result.denials,
            result.state,
            if result.grant_id.is_empty() {
                String::new()
            } else {
                format!(" (grant {})", result.grant_id)
            }
        ));
    }
    Ok(())
}

/// `latchkey cancel`.
pub(super) async fn cancel(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
    let r = AccessServiceClient::new(channel)
        .cancel_request(pb::CancelRequestRequest { id })
        .await?
        .into_inner()
        .request
        .ok_or_else(|| ClientError::Protocol("no request".into()))?;
    if out.json {
        say(&request_json(&r).to_string());
    } else {
        say(&format!("request {} cancelled", r.id));
    }
    Ok(())
}

/// `latchkey introspect`: exit status says active (0) or not (1).
pub(super) async fn introspect(
    channel: Channel,
    out: Out,
    token: String,
) -> Result<bool, ClientError> {
    let token = if token == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| file_error(Path::new("stdin"), e))?;
        line.trim().to_owned()
    } else {
        token
    };
    let answer = AccessServiceClient::new(channel)
        .introspect(pb::IntrospectRequest { token })
        .await?
        .into_inner();
    if out.json {
        // RFC 7662: an inactive answer says only that.
        let value = if answer.active {
            serde_json::json!({
                "active": true,
                "scope": answer.scope,
                "grant_id": answer.grant_id,
                "expires_at": ts(answer.expires_at.as_ref()),
            })
        } else {
            serde_json::json!({ "active": false })
        };
        say(&value.to_string());
    } else if answer.active {
        say(&format!(
            "active  scope {}  grant {}  until {}",
            answer.scope,
            answer.grant_id,
            ts(answer.expires_at.as_ref())
        ));
    } else {
        say("inactive");
    }
    Ok(answer.active)
}

/// What approving mints, from the scope as it stands now (the scope is not part of what the
/// key signs: its name, owner and runbook are).
async fn mints(channel: Channel, scope: &str) -> String {
    let shown = TrustServiceClient::new(channel)
        .show_scope(pb::ShowScopeRequest {
            name: scope.to_owned(),
        })
        .await;
    let Some(scope) = shown
        .ok()
        .and_then(|s| s.into_inner().scope)
        .and_then(|s| s.scope)
    else {
        return "mints     (the scope could not be read)".to_owned();
    };
    let mut kinds = Vec::new();
    if scope.bearer {
        kinds.push("a bearer token".to_owned());
    }
    if let Some(ssh) = &scope.ssh {
        kinds.push(format!(
            "an SSH certificate for {}",
            ssh.principals.join(", ")
        ));
    }
    if kinds.is_empty() {
        kinds.push("nothing".to_owned());
    }
    format!("mints     {}", kinds.join(" and "))
}
