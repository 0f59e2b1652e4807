//! The break-glass commands of the `latchkey` CLI: arguments (clap) and what each does, with
//! readable tables for people and `--json` for scripts. The binary only dispatches here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tonic::transport::Channel;

use super::ClientError;
use super::access::{self, Target};
use super::authenticator::{Authenticator, SoftTokenKey, UsbKey};
use crate::credential::delivery::DeliveryKey;
use crate::domain::policy::Decision;
use crate::pb;
use crate::pb::access_service_client::AccessServiceClient;
use crate::pb::trust_service_client::TrustServiceClient;

/// Which authenticator to use.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyChoice {
    /// Use a software token kept in this file (created if missing). Tests, demos and drills
    /// only: a daemon outside dev mode refuses it.
    #[arg(long)]
    pub soft_token: Option<PathBuf>,
    /// With several USB keys plugged in, use number N (see `latchkey key devices`).
    #[arg(long)]
    pub device: Option<usize>,
    /// WebAuthn origin to claim (default: https:// + the daemon's relying-party id).
    #[arg(long)]
    pub origin: Option<String>,
    /// Use the YubiKey's PIV applet (over PC/SC; pcscd must run) instead of FIDO2.
    #[arg(long)]
    pub piv: bool,
    /// PIV slot.
    #[arg(long, default_value = "9a")]
    pub slot: String,
    /// Use a software PIV key kept in this file (created if missing; its synthetic root must
    /// be in the daemon's `[piv] dev_roots`: dev mode only).
    #[arg(long, conflicts_with_all = ["soft_token", "piv"])]
    pub soft_piv: Option<PathBuf>,
}

impl KeyChoice {
    /// Opens the chosen authenticator.
    pub fn open(&self) -> Result<Box<dyn Authenticator>, ClientError> {
        if let Some(path) = &self.soft_piv {
            return Ok(Box::new(super::piv_card::SoftPiv::open_or_create(path)?));
        }
        if self.piv {
            return Ok(Box::new(super::piv_card::UsbPiv::open(
                &self.slot,
                piv_pin()?,
            )?));
        }
        Ok(match &self.soft_token {
            Some(path) => Box::new(SoftTokenKey::open_or_create(path)?),
            None => Box::new(UsbKey::open(self.device)?),
        })
    }
}

/// Asks for the PIV PIN on the terminal (empty: the key's PIN policy is never).
pub fn piv_pin() -> Result<Option<String>, ClientError> {
    let pin =
        rpassword::prompt_password("PIV PIN (empty if the key never asks): ").map_err(|e| {
            ClientError::Key(super::authenticator::KeyError::Device(format!(
                "PIN prompt: {e}"
            )))
        })?;
    Ok((!pin.is_empty()).then_some(pin))
}

/// `latchkey request`.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
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
pub fn default_delivery_key_path(id: &str) -> Option<PathBuf> {
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
pub enum RequestsCommand {
    /// List requests, newest first.
    List {
        /// Only in this state: pending, issued, denied, cancelled, expired.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show everything an approver should read.
    Show {
        /// Request id.
        id: String,
    },
}

/// `latchkey approve|deny`.
#[derive(clap::Args, Debug)]
pub struct VoteArgs {
    /// Request id.
    pub id: String,
    /// Your operator name.
    #[arg(long)]
    pub operator: String,
    #[command(flatten)]
    pub key: KeyChoice,
}

/// `latchkey change`.
#[derive(clap::Subcommand, Debug)]
pub enum ChangeCommand {
    /// List trust-store changes, newest first.
    List {
        /// Only in this state: pending, applied, denied, expired.
        #[arg(long)]
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

/// `latchkey scope`.
#[derive(clap::Subcommand, Debug)]
pub enum ScopeCommand {
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

/// `latchkey workload` (besides `admit`).
#[derive(clap::Subcommand, Debug)]
pub enum WorkloadChange {
    /// List workloads.
    List,
    /// Propose admitting a workload, or changing an admitted one's scopes or introspection.
    Put {
        /// Workload name.
        #[arg(long)]
        name: String,
        /// Who answers for it.
        #[arg(long)]
        owner: String,
        /// PEM client certificate (leave out to keep the pinned key of an admitted workload).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// A scope it may request (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Let it introspect tokens.
        #[arg(long)]
        introspect: bool,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Propose removing a workload.
    Remove {
        /// Workload name.
        name: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// `latchkey operator` (besides `show`).
#[derive(clap::Subcommand, Debug)]
pub enum OperatorChange {
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

/// Output mode.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// JSON instead of text.
    pub json: bool,
}

/// Prints a line to stdout (a closed pipe is not an error).
pub fn say(text: &str) {
    use std::io::Write as _;
    let _closed_pipe = writeln!(std::io::stdout().lock(), "{text}");
}

/// An RFC 3339 time (empty when absent).
pub fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| std::time::SystemTime::try_from(*t).ok())
        .map_or_else(String::new, |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        })
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
    say(&format!(
        "{:<24}  {:<9}  {:<16}  {:<24}  {:>5}  REASON",
        "ID", "STATE", "SCOPE", "REQUESTER", "VOTES"
    ));
    for r in requests {
        say(&format!(
            "{:<24}  {:<9}  {:<16}  {:<24}  {:>2}/{:<2}  {}",
            r.id,
            request_state(r),
            r.scope,
            r.requester,
            r.approvals,
            r.quorum,
            r.reason.lines().next().unwrap_or_default()
        ));
    }
}

fn cert_path(public_key: &Path) -> PathBuf {
    let name = public_key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    public_key.with_file_name(format!("{stem}-cert.pub"))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// `latchkey request`: asks, then waits for the credential (unless `--no-wait`).
pub async fn request(channel: Channel, out: Out, args: RequestArgs) -> Result<(), ClientError> {
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
    if args.no_wait {
        if out.json {
            say(&request_json(&created).to_string());
        } else {
            say(&created.id);
        }
        return Ok(());
    }
    eprintln!(
        "request {} for {}: waiting for {} approvals of role {} (until {})",
        created.id,
        created.scope,
        created.quorum,
        created.approver_role,
        ts(created.pending_until.as_ref())
    );
    deliver(
        channel,
        out,
        &created.id,
        args.ssh_public_key.as_deref(),
        Some(&delivery_key),
    )
    .await
}

/// Waits on a request and prints (and writes) the credential, its bearer token opened with
/// `delivery_key`.
pub async fn deliver(
    channel: Channel,
    out: Out,
    id: &str,
    ssh_public_key: Option<&Path>,
    delivery_key: Option<&DeliveryKey>,
) -> Result<(), ClientError> {
    let mut seen = 0usize;
    let (request, credential) = access::wait(channel, id, delivery_key, |r| {
        for v in r.votes.iter().skip(seen) {
            eprintln!(
                "  {} {} ({} of {})",
                v.operator,
                if v.decision() == pb::Decision::Deny {
                    "denied"
                } else {
                    "approved"
                },
                r.approvals,
                r.quorum
            );
        }
        seen = r.votes.len();
    })
    .await?;
    let Some(credential) = credential else {
        return Err(ClientError::Protocol(format!(
            "request {} ended {} without a credential",
            request.id,
            request_state(&request)
        )));
    };
    let mut cert_file = None;
    if !credential.ssh_certificate.is_empty()
        && let Some(public_key) = ssh_public_key
    {
        let path = cert_path(public_key);
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
pub async fn requests(
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
pub async fn vote(
    channel: Channel,
    out: Out,
    target: Target,
    decision: Decision,
    args: VoteArgs,
) -> Result<(), ClientError> {
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
            }
            Target::Change(_) => eprintln!("{}", pretty(&shown.canonical_json)),
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

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

/// `latchkey cancel`.
pub async fn cancel(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
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
pub async fn introspect(channel: Channel, out: Out, token: String) -> Result<bool, ClientError> {
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
        say(&serde_json::json!({
            "active": answer.active,
            "scope": answer.scope,
            "grant_id": answer.grant_id,
            "expires_at": ts(answer.expires_at.as_ref()),
        })
        .to_string());
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
pub enum GrantCommand {
    /// Show a grant (never its token) and every revocation sink's state.
    Show {
        /// Grant id.
        id: String,
    },
}

/// `latchkey grant show`.
pub async fn show_grant(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
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
pub async fn grants(channel: Channel, out: Out, state: Option<String>) -> Result<(), ClientError> {
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
    say(&format!(
        "{:<24}  {:<22}  {:<16}  {:<24}  {:<20}  SINKS",
        "GRANT", "STATE", "SCOPE", "REQUESTER", "EXPIRES"
    ));
    for g in &list.grants {
        let confirmed = g.sinks.iter().filter(|s| s.confirmed).count();
        say(&format!(
            "{:<24}  {:<22}  {:<16}  {:<24}  {:<20}  {}",
            g.id,
            grant_state(g),
            g.scope,
            g.requester,
            ts(g.expires_at.as_ref()),
            if g.sinks.is_empty() {
                String::new()
            } else {
                format!("{confirmed}/{} confirmed", g.sinks.len())
            }
        ));
    }
    Ok(())
}

/// `latchkey revoke`: any operator, with a key touch.
pub async fn revoke(
    channel: Channel,
    out: Out,
    id: String,
    reason: String,
    operator: String,
    key: KeyChoice,
) -> Result<(), ClientError> {
    let mut client = AccessServiceClient::new(channel);
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
    if out.json {
        say(&grant_json(&g).to_string());
    } else {
        say(&grant_text(&g));
    }
    Ok(())
}

/// `latchkey relinquish`: the holder gives its grant up.
pub async fn relinquish(channel: Channel, out: Out, id: String) -> Result<(), ClientError> {
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
pub async fn propose(
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
            "proposed: {} approvals of role {} needed (`latchkey change approve {}`)",
            c.quorum, c.approver_role, c.id
        );
    }
    Ok(())
}

/// `latchkey change`.
pub async fn change(channel: Channel, out: Out, command: ChangeCommand) -> Result<(), ClientError> {
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

/// `latchkey scope`.
pub async fn scope(channel: Channel, out: Out, command: ScopeCommand) -> Result<(), ClientError> {
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
                say(&format!(
                    "{:<20}  {:<16}  {:<18}  {:<10}  MINTS",
                    "SCOPE", "OWNER", "POLICY", "MAX TTL"
                ));
                for s in &list.scopes {
                    let Some(scope) = &s.scope else { continue };
                    let policy = scope.policy.clone().unwrap_or_default();
                    let mints = match (scope.bearer, &scope.ssh) {
                        (true, Some(_)) => "bearer+ssh",
                        (true, None) => "bearer",
                        (false, _) => "ssh",
                    };
                    say(&format!(
                        "{:<20}  {:<16}  {:<18}  {:<10}  {}",
                        scope.name,
                        scope.owner,
                        format!("{} of {}", policy.quorum, policy.approver_role),
                        humantime::format_duration(std::time::Duration::from_secs(
                            scope
                                .max_ttl
                                .map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0))
                        )),
                        mints
                    ));
                    for finding in &s.findings {
                        say(&format!("  WARN {finding}"));
                    }
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

/// `latchkey workload list|put|remove`.
pub async fn workload(
    channel: Channel,
    out: Out,
    command: WorkloadChange,
) -> Result<(), ClientError> {
    use pb::propose_change_request::Change as C;
    match command {
        WorkloadChange::List => {
            let list = TrustServiceClient::new(channel)
                .list_workloads(pb::ListWorkloadsRequest {})
                .await?
                .into_inner();
            if out.json {
                let all: Vec<_> = list
                    .workloads
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "name": w.name, "owner": w.owner, "spki_sha256": w.spki_sha256,
                            "scopes": w.scopes, "introspect": w.introspect,
                        })
                    })
                    .collect();
                say(&serde_json::Value::Array(all).to_string());
            } else {
                say(&format!(
                    "{:<20}  {:<16}  {:<10}  {:<16}  SCOPES",
                    "WORKLOAD", "OWNER", "INTROSPECT", "PIN"
                ));
                for w in &list.workloads {
                    say(&format!(
                        "{:<20}  {:<16}  {:<10}  {:<16}  {}",
                        w.name,
                        w.owner,
                        if w.introspect { "yes" } else { "no" },
                        w.spki_sha256.get(..16).unwrap_or_default(),
                        w.scopes.join(",")
                    ));
                }
            }
        }
        WorkloadChange::Put {
            name,
            owner,
            cert,
            scopes,
            introspect,
            note,
        } => {
            let certificate_pem = match &cert {
                Some(path) => std::fs::read_to_string(path).map_err(|e| file_error(path, e))?,
                None => String::new(),
            };
            let change = C::PutWorkload(pb::PutWorkload {
                name,
                owner,
                certificate_pem,
                scopes,
                introspect,
            });
            propose(channel, out, note, change).await?;
        }
        WorkloadChange::Remove { name, note } => {
            propose(
                channel,
                out,
                note,
                C::RemoveWorkload(pb::RemoveWorkload { name }),
            )
            .await?;
        }
    }
    Ok(())
}

/// `latchkey operator list|set-roles|remove|remove-key|reinstate-key|set-trust-policy`.
pub async fn operator(
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
                say(&format!(
                    "{:<20}  {:<30}  {:>6}  {:>9}",
                    "OPERATOR", "ROLES", "ACTIVE", "SUSPENDED"
                ));
                for o in &list.operators {
                    say(&format!(
                        "{:<20}  {:<30}  {:>6}  {:>9}",
                        o.name,
                        o.roles.join(","),
                        o.active_keys,
                        o.suspended_keys
                    ));
                }
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
