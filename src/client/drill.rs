//! `latchkey drill`: walks the whole break-glass path against a scope — request, approvals,
//! mint, introspection, SSH login (where a target is given), revocation, confirmation, SSH
//! refusal — reports each step's outcome and time, and has the daemon record the result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::ClientError;
use super::access::{self, Target};
use super::authenticator::{Authenticator, SoftTokenKey};
use super::cli::{KeyChoice, Out, say};
use crate::domain::drill::{DrillStep, StepOutcome};
use crate::domain::policy::Decision;
use crate::pb;
use crate::pb::access_service_client::AccessServiceClient;

/// `latchkey drill`.
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// Scope to drill. The drill's grant is revoked at the end, so use a scope kept for drills
    /// or accept a short real grant.
    #[arg(long)]
    pub scope: String,
    /// Your operator name: the drill requests as you, signing with your key.
    #[arg(long)]
    pub operator: String,
    #[command(flatten)]
    pub key: KeyChoice,
    /// Approve at once as OPERATOR with the soft token in FILE (repeatable; dev daemons only).
    /// Without it the drill waits for approvers to run `latchkey approve`.
    #[arg(long = "approver", value_name = "OPERATOR=FILE")]
    pub approvers: Vec<String>,
    /// TTL of the drill's grant (capped by the scope's maximum).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub ttl: Duration,
    /// Bastion to log in to with the drill's SSH certificate: [USER@]HOST (USER defaults to the
    /// scope's first principal). Without it the SSH steps are skipped.
    #[arg(long)]
    pub ssh: Option<String>,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// Extra `ssh -o` option (repeatable), e.g. `UserKnownHostsFile=/etc/latchkey/known_hosts`.
    #[arg(long = "ssh-option")]
    pub ssh_options: Vec<String>,
    /// How long to wait for approvals, and then for the revocation to be confirmed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,
}

/// A private temp directory for the drill's SSH key, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, ClientError> {
        let path = std::env::temp_dir().join(format!("latchkey-drill-{}", uuid::Uuid::new_v4()));
        crate::base::fsperm::create_private_dir(&path).map_err(|e| ClientError::File {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: the key is ephemeral and its certificate is revoked by now.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The steps so far, printed as they finish.
struct Report {
    steps: Vec<DrillStep>,
    json: bool,
}

impl Report {
    fn add(&mut self, name: &str, outcome: StepOutcome, started: Instant, detail: String) {
        let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !self.json {
            eprintln!(
                "  {:<13} {:<8} {:>7} ms  {}",
                name,
                outcome.as_str(),
                millis,
                detail
            );
        }
        let mut detail = detail;
        detail.truncate(crate::base::constants::MAX_DRILL_DETAIL_LEN);
        self.steps.push(DrillStep {
            name: name.to_owned(),
            outcome,
            millis,
            detail,
        });
    }
}

fn ssh_key_pair(dir: &Path) -> Result<(PathBuf, String), ClientError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| ClientError::Protocol(format!("no randomness for the drill key: {e}")))?;
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let private = dir.join("drill_ed25519");
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| ClientError::Protocol(format!("drill key: {e}")))?;
    crate::base::fsperm::write_private_file(&private, pem.as_bytes()).map_err(|e| {
        ClientError::File {
            path: private.clone(),
            detail: e.to_string(),
        }
    })?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| ClientError::Protocol(format!("drill key: {e}")))?;
    Ok((private, public))
}

/// Runs `ssh … true`; Ok(()) if the login worked, Err(what ssh said) otherwise.
async fn ssh_login(args: &DrillArgs, target: &str, key: &Path, cert: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ConnectTimeout=15",
    ]);
    cmd.arg("-o")
        .arg(format!("CertificateFile={}", cert.display()));
    for o in &args.ssh_options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-i")
        .arg(key)
        .arg("-p")
        .arg(args.ssh_port.to_string())
        .arg(target)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match cmd.output().await {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            Err(said
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("ssh failed")
                .to_owned())
        }
        Err(e) => Err(format!("cannot run ssh: {e}")),
    }
}

fn parse_approver(spec: &str) -> Result<(String, PathBuf), ClientError> {
    spec.split_once('=')
        .filter(|(name, file)| !name.is_empty() && !file.is_empty())
        .map(|(name, file)| (name.to_owned(), PathBuf::from(file)))
        .ok_or_else(|| ClientError::Protocol(format!("--approver {spec:?}: want OPERATOR=FILE")))
}

fn grant_state_name(state: pb::GrantState) -> &'static str {
    match state {
        pb::GrantState::Active => "active",
        pb::GrantState::Revoking => "revoking",
        pb::GrantState::Revoked => "revoked",
        pb::GrantState::RevocationUnconfirmed => "revocation_unconfirmed",
        pb::GrantState::Unspecified => "unknown",
    }
}

/// Checks the SSH certificate the drill received: signed by the daemon's CA, for our key,
/// key id = grant id, the scope's principals, valid now.
fn check_certificate(
    text: &str,
    public_key: &str,
    grant_id: &str,
    principals: &[String],
    ca_fingerprint: &str,
    now_secs: u64,
) -> Result<(), String> {
    let cert = ssh_key::Certificate::from_openssh(text.trim()).map_err(|e| e.to_string())?;
    let ca: ssh_key::Fingerprint = ca_fingerprint
        .parse()
        .map_err(|e| format!("CA fingerprint {ca_fingerprint}: {e}"))?;
    cert.validate_at(now_secs, [&ca])
        .map_err(|e| format!("certificate does not validate against the daemon's CA: {e}"))?;
    let ours = ssh_key::PublicKey::from_openssh(public_key).map_err(|e| e.to_string())?;
    if cert.public_key() != ours.key_data() {
        return Err("the certificate is for another key".into());
    }
    if cert.key_id() != grant_id {
        return Err(format!("key id {} is not the grant id", cert.key_id()));
    }
    if cert.valid_principals() != principals {
        return Err(format!(
            "principals {:?}, the scope names {:?}",
            cert.valid_principals(),
            principals
        ));
    }
    Ok(())
}

/// Runs the drill; returns whether it passed (the daemon's verdict).
pub async fn drill(channel: Channel, out: Out, args: DrillArgs) -> Result<bool, ClientError> {
    let mut report = Report {
        steps: Vec::new(),
        json: out.json,
    };
    let scope = crate::pb::trust_service_client::TrustServiceClient::new(channel.clone())
        .show_scope(pb::ShowScopeRequest {
            name: args.scope.clone(),
        })
        .await?
        .into_inner()
        .scope
        .and_then(|s| s.scope)
        .ok_or_else(|| ClientError::Protocol("no scope in the answer".into()))?;
    let status = crate::pb::system_service_client::SystemServiceClient::new(channel.clone())
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    let principals = scope.ssh.as_ref().map(|s| s.principals.clone());
    let scratch = Scratch::new()?;
    let ssh_key = match &principals {
        Some(_) => Some(ssh_key_pair(&scratch.0)?),
        None => None,
    };
    if !out.json {
        eprintln!(
            "drill of scope {} (owner {}) as operator {}",
            scope.name, scope.owner, args.operator
        );
    }

    // request
    let started = Instant::now();
    let delivery_key = crate::credential::delivery::DeliveryKey::generate();
    let draft = pb::RequestDraft {
        scope: args.scope.clone(),
        reason: format!(
            "drill: exercising scope {} end to end (latchkey drill)",
            args.scope
        ),
        ttl: Some(prost_types::Duration {
            seconds: i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        ticket: "drill".to_owned(),
        ssh_public_key: ssh_key.as_ref().map(|(_, p)| p.clone()).unwrap_or_default(),
        delivery_public_key: delivery_key.public_key().to_vec(),
    };
    let mut key = args.key.open()?;
    if !out.json {
        eprintln!("touch your key to sign the drill request");
    }
    let created = match access::request(
        channel.clone(),
        draft,
        Some((&args.operator, key.as_mut(), args.key.origin.as_deref())),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            report.add("request", StepOutcome::Failed, started, e.to_string());
            return Err(e);
        }
    };
    report.add(
        "request",
        StepOutcome::Passed,
        started,
        format!(
            "request {} needs {} approvals of role {}",
            created.id, created.quorum, created.approver_role
        ),
    );
    let id = created.id.clone();

    let finish = |report: Report| {
        let channel = channel.clone();
        let id = id.clone();
        async move { record(channel, out, &id, report).await }
    };

    // approvals (and the minted credential, which arrives with the last one)
    let started = Instant::now();
    let mut voted = Vec::new();
    for spec in &args.approvers {
        let (name, file) = parse_approver(spec)?;
        let mut approver = SoftTokenKey::open_or_create(&file)?;
        if let Err(e) = access::vote(
            channel.clone(),
            &Target::Request(id.clone()),
            &name,
            Decision::Approve,
            &mut approver as &mut dyn Authenticator,
            args.key.origin.as_deref(),
        )
        .await
        {
            report.add(
                "approvals",
                StepOutcome::Failed,
                started,
                format!("{name} could not approve: {e}"),
            );
            return finish(report).await;
        }
        voted.push(name);
    }
    if voted.is_empty() && !out.json {
        eprintln!(
            "waiting for {} approvals: ask approvers to run `latchkey approve {id} --operator NAME`",
            created.quorum
        );
    }
    let waited = tokio::time::timeout(
        args.timeout,
        access::wait(channel.clone(), &id, Some(&delivery_key), |_| {}),
    )
    .await
    .map_err(|_| {
        format!(
            "no quorum within {}",
            humantime::format_duration(args.timeout)
        )
    });
    let credential = match waited {
        Ok(Ok((_, Some(credential)))) => credential,
        Ok(Ok((request, None))) => {
            report.add(
                "approvals",
                StepOutcome::Failed,
                started,
                format!("request ended {:?} without a credential", request.state()),
            );
            return finish(report).await;
        }
        Ok(Err(e)) => {
            report.add("approvals", StepOutcome::Failed, started, e.to_string());
            return finish(report).await;
        }
        Err(e) => {
            report.add("approvals", StepOutcome::Failed, started, e);
            return finish(report).await;
        }
    };
    report.add(
        "approvals",
        StepOutcome::Passed,
        started,
        if voted.is_empty() {
            "quorum reached".to_owned()
        } else {
            format!("approved by {}", voted.join(", "))
        },
    );

    // mint
    let started = Instant::now();
    let grant_id = credential.grant_id.clone();
    let now_secs = status
        .now
        .as_ref()
        .map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0));
    let mut problems = Vec::new();
    if scope.bearer
        && !credential
            .bearer_token
            .starts_with(crate::base::constants::BEARER_TOKEN_PREFIX)
    {
        problems.push("no bearer token".to_owned());
    }
    let mut cert_file = None;
    if let (Some(principals), Some((private, public))) = (&principals, &ssh_key) {
        let ca = status
            .fingerprints
            .as_ref()
            .map(|f| f.ssh_user_ca.clone())
            .unwrap_or_default();
        match check_certificate(
            &credential.ssh_certificate,
            public,
            &grant_id,
            principals,
            &ca,
            now_secs,
        ) {
            Ok(()) => {
                let path = private.with_file_name("drill_ed25519-cert.pub");
                std::fs::write(&path, format!("{}\n", credential.ssh_certificate.trim())).map_err(
                    |e| ClientError::File {
                        path: path.clone(),
                        detail: e.to_string(),
                    },
                )?;
                cert_file = Some(path);
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        let mut kinds = Vec::new();
        if scope.bearer {
            kinds.push("bearer token".to_owned());
        }
        if let Some(p) = &principals {
            kinds.push(format!("SSH certificate for {}", p.join(",")));
        }
        report.add(
            "mint",
            StepOutcome::Passed,
            started,
            format!("grant {grant_id}: {}", kinds.join(" + ")),
        );
    } else {
        report.add("mint", StepOutcome::Failed, started, problems.join("; "));
    }

    // introspect
    let started = Instant::now();
    if credential.bearer_token.is_empty() {
        report.add(
            "introspect",
            StepOutcome::Skipped,
            started,
            "the scope mints no bearer token".into(),
        );
    } else {
        match AccessServiceClient::new(channel.clone())
            .introspect(pb::IntrospectRequest {
                token: credential.bearer_token.clone(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                if r.active && r.grant_id == grant_id && r.scope == args.scope {
                    report.add(
                        "introspect",
                        StepOutcome::Passed,
                        started,
                        "token active for this grant and scope".into(),
                    );
                } else {
                    report.add(
                        "introspect",
                        StepOutcome::Failed,
                        started,
                        format!(
                            "answer: active={} grant={} scope={}",
                            r.active, r.grant_id, r.scope
                        ),
                    );
                }
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => report.add(
                "introspect",
                StepOutcome::Skipped,
                started,
                "this user may not introspect ([unix] introspect_uids)".into(),
            ),
            Err(s) => report.add(
                "introspect",
                StepOutcome::Failed,
                started,
                s.message().to_owned(),
            ),
        }
    }

    // ssh-login
    let ssh_target = match (&args.ssh, &principals) {
        (Some(target), Some(p)) if target.contains('@') || !p.is_empty() => {
            Some(if target.contains('@') {
                target.clone()
            } else {
                format!(
                    "{}@{target}",
                    p.first().map(String::as_str).unwrap_or_default()
                )
            })
        }
        _ => None,
    };
    let started = Instant::now();
    match (&ssh_target, &cert_file, &ssh_key) {
        (Some(target), Some(cert), Some((private, _))) => {
            match ssh_login(&args, target, private, cert).await {
                Ok(()) => report.add(
                    "ssh-login",
                    StepOutcome::Passed,
                    started,
                    format!("{target} accepted the certificate"),
                ),
                Err(e) => report.add("ssh-login", StepOutcome::Failed, started, e),
            }
        }
        _ => report.add(
            "ssh-login",
            StepOutcome::Skipped,
            started,
            if principals.is_none() {
                "the scope mints no SSH certificate".into()
            } else {
                "no --ssh target given".into()
            },
        ),
    }

    // revoke
    let started = Instant::now();
    match AccessServiceClient::new(channel.clone())
        .relinquish(pb::RelinquishRequest {
            grant_id: grant_id.clone(),
        })
        .await
    {
        Ok(r) => {
            let state = r.into_inner().grant.map(|g| g.state());
            report.add(
                "revoke",
                StepOutcome::Passed,
                started,
                format!(
                    "relinquished; grant {}",
                    state.map_or("unknown", grant_state_name)
                ),
            );
        }
        Err(s) => {
            report.add(
                "revoke",
                StepOutcome::Failed,
                started,
                s.message().to_owned(),
            );
            return finish(report).await;
        }
    }

    // confirmation
    let started = Instant::now();
    let confirmed = loop {
        let g = AccessServiceClient::new(channel.clone())
            .show_grant(pb::ShowGrantRequest {
                id: grant_id.clone(),
            })
            .await?
            .into_inner()
            .grant
            .ok_or_else(|| ClientError::Protocol("no grant in the answer".into()))?;
        match g.state() {
            pb::GrantState::Revoked => break Ok(g),
            pb::GrantState::RevocationUnconfirmed => {
                break Err(format!(
                    "revocation unconfirmed past its deadline; sinks: {}",
                    g.sinks
                        .iter()
                        .map(|s| format!(
                            "{}={}",
                            s.sink,
                            if s.confirmed { "ok" } else { "pending" }
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            _ if started.elapsed() > args.timeout => {
                break Err(format!(
                    "still {} after {}",
                    grant_state_name(g.state()),
                    humantime::format_duration(args.timeout)
                ));
            }
            // The CLI polls the daemon; confirmation takes one scheduler round or a sink.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    match confirmed {
        Ok(g) => report.add(
            "confirmation",
            StepOutcome::Passed,
            started,
            format!("revoked; {} sink(s) confirmed", g.sinks.len()),
        ),
        Err(e) => report.add("confirmation", StepOutcome::Failed, started, e),
    }

    // ssh-refused
    let started = Instant::now();
    match (&ssh_target, &cert_file, &ssh_key) {
        (Some(target), Some(cert), Some((private, _))) => {
            match ssh_login(&args, target, private, cert).await {
                Ok(()) => report.add(
                    "ssh-refused",
                    StepOutcome::Failed,
                    started,
                    "the revoked certificate still logs in: point sshd's RevokedKeys at latchkey's KRL".into(),
                ),
                Err(e) => report.add(
                    "ssh-refused",
                    StepOutcome::Passed,
                    started,
                    format!("refused: {e}"),
                ),
            }
        }
        _ => report.add(
            "ssh-refused",
            StepOutcome::Skipped,
            started,
            "no SSH login to refuse".into(),
        ),
    }
    drop(scratch);
    finish(report).await
}

async fn record(channel: Channel, out: Out, id: &str, report: Report) -> Result<bool, ClientError> {
    let recorded = AccessServiceClient::new(channel)
        .record_drill(pb::RecordDrillRequest {
            request_id: id.to_owned(),
            steps: report
                .steps
                .iter()
                .map(crate::rpc::drill_step_to_pb)
                .collect(),
        })
        .await?
        .into_inner()
        .drill
        .ok_or_else(|| ClientError::Protocol("no drill in the answer".into()))?;
    if out.json {
        say(&serde_json::json!({
            "scope": recorded.scope,
            "request": recorded.request_id,
            "grant": recorded.grant_id,
            "passed": recorded.passed,
            "steps": report.steps,
        })
        .to_string());
    } else {
        say(&format!(
            "drill of {} {} (request {}); recorded by the daemon",
            recorded.scope,
            if recorded.passed { "PASSED" } else { "FAILED" },
            recorded.request_id
        ));
    }
    Ok(recorded.passed)
}

/// `latchkey drills`.
pub async fn list(channel: Channel, out: Out) -> Result<(), ClientError> {
    let scopes = AccessServiceClient::new(channel)
        .list_drills(pb::ListDrillsRequest {})
        .await?
        .into_inner()
        .scopes;
    let when = |d: Option<&pb::DrillRecord>| {
        d.and_then(|d| d.recorded_at.as_ref())
            .map(|t| super::cli::ts(Some(t)))
            .unwrap_or_else(|| "never".to_owned())
    };
    if out.json {
        for s in &scopes {
            say(&serde_json::json!({
                "scope": s.scope,
                "last_request": s.last.as_ref().map(|d| d.request_id.clone()),
                "last_passed": s.last.as_ref().map(|d| d.passed),
                "last_at": when(s.last.as_ref()),
                "last_passed_at": when(s.last_passed.as_ref()),
            })
            .to_string());
        }
        return Ok(());
    }
    if scopes.is_empty() {
        say("no drills recorded yet: run `latchkey drill --scope NAME`");
    }
    for s in &scopes {
        say(&format!(
            "{}  latest {} {}  last passed {}",
            s.scope,
            if s.last.as_ref().is_some_and(|d| d.passed) {
                "passed"
            } else {
                "FAILED"
            },
            when(s.last.as_ref()),
            when(s.last_passed.as_ref()),
        ));
    }
    Ok(())
}
