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
    /// Bastion to log in to with the drill's SSH certificate: `[USER@]HOST` (USER defaults to the
    /// scope's first principal). Without it the SSH steps are skipped.
    #[arg(long)]
    pub ssh: Option<String>,
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

/// Runs the drill; returns whether it passed (the daemon's verdict). The steps run in order;
/// a step that leaves nothing for the next ones to do ends the drill, which is recorded
/// whatever happened after the request was made.
pub async fn drill(channel: Channel, out: Out, args: DrillArgs) -> Result<bool, ClientError> {
    let mut drill = Drill::prepare(channel, out, args).await?;
    let id = drill.request().await?;
    if let Some(mut minted) = drill.approvals(&id).await? {
        drill.mint(&mut minted)?;
        drill.introspect(&minted).await;
        drill.ssh("ssh-login", &minted).await;
        if drill.revoke(&minted).await {
            drill.confirmation(&minted).await?;
            drill.ssh("ssh-refused", &minted).await;
        }
    }
    let Drill {
        channel, report, ..
    } = drill;
    record(channel, out, &id, report).await
}

/// One drill in progress: what every step needs, and the report so far.
struct Drill {
    channel: Channel,
    out: Out,
    args: DrillArgs,
    scope: pb::Scope,
    status: pb::StatusResponse,
    /// The scope's SSH principals, if it mints certificates.
    principals: Option<Vec<String>>,
    /// The drill's SSH key (private key file, public key), if the scope mints certificates.
    ssh_key: Option<(PathBuf, String)>,
    delivery_key: crate::credential::delivery::DeliveryKey,
    /// Approvals the request needs (known once it is made).
    quorum: u32,
    report: Report,
    /// Holds the SSH key; removed when the drill ends.
    _scratch: Scratch,
}

/// What the approvals produced, for the steps after them.
struct Minted {
    credential: access::Collected,
    /// The certificate written next to the SSH key, once checked.
    cert_file: Option<PathBuf>,
}

impl Drill {
    async fn prepare(channel: Channel, out: Out, args: DrillArgs) -> Result<Self, ClientError> {
        // Every key file must be there before the drill asks for anything.
        args.key.check_files()?;
        for spec in &args.approvers {
            let (_, file) = parse_approver(spec)?;
            if !file.exists() {
                return Err(crate::client::authenticator::KeyError::SoftToken {
                    path: file,
                    detail: "no such file: --approver names an enrolled soft token".to_owned(),
                }
                .into());
            }
        }
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
        Ok(Self {
            channel,
            out,
            args,
            scope,
            status,
            principals,
            ssh_key,
            delivery_key: crate::credential::delivery::DeliveryKey::generate(),
            quorum: 0,
            report: Report {
                steps: Vec::new(),
                json: out.json,
            },
            _scratch: scratch,
        })
    }

    /// `request`: the operator signs the drill's request. Returns its id; a failure ends the
    /// drill without a record (there is no request to record it under).
    async fn request(&mut self) -> Result<String, ClientError> {
        let started = Instant::now();
        let draft = pb::RequestDraft {
            scope: self.args.scope.clone(),
            reason: format!(
                "drill: exercising scope {} end to end (latchkey drill)",
                self.args.scope
            ),
            ttl: Some(prost_types::Duration {
                seconds: i64::try_from(self.args.ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            ticket: "drill".to_owned(),
            ssh_public_key: self
                .ssh_key
                .as_ref()
                .map(|(_, p)| p.clone())
                .unwrap_or_default(),
            delivery_public_key: self.delivery_key.public_key().to_vec(),
        };
        let mut key = self.args.key.open()?;
        if !self.out.json {
            eprintln!("touch your key to sign the drill request");
        }
        let created = match access::request(
            self.channel.clone(),
            draft,
            Some((
                &self.args.operator,
                key.as_mut(),
                self.args.key.origin.as_deref(),
            )),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                self.report
                    .add("request", StepOutcome::Failed, started, e.to_string());
                return Err(e);
            }
        };
        self.report.add(
            "request",
            StepOutcome::Passed,
            started,
            format!(
                "request {} needs {} approvals of role {}",
                created.id, created.quorum, created.approver_role
            ),
        );
        self.quorum = created.quorum;
        Ok(created.id)
    }

    /// `approvals`: the given soft-token approvers vote, then the drill waits for quorum and
    /// the credential that arrives with it. `None` ends the drill.
    async fn approvals(&mut self, id: &str) -> Result<Option<Minted>, ClientError> {
        let started = Instant::now();
        let mut voted = Vec::new();
        for spec in &self.args.approvers {
            let (name, file) = parse_approver(spec)?;
            let mut approver = SoftTokenKey::open_or_create(&file)?;
            if let Err(e) = access::vote(
                self.channel.clone(),
                &Target::Request(id.to_owned()),
                &name,
                Decision::Approve,
                &mut approver as &mut dyn Authenticator,
                self.args.key.origin.as_deref(),
            )
            .await
            {
                self.report.add(
                    "approvals",
                    StepOutcome::Failed,
                    started,
                    format!("{name} could not approve: {e}"),
                );
                return Ok(None);
            }
            voted.push(name);
        }
        if voted.is_empty() && !self.out.json {
            eprintln!(
                "waiting for {} approvals: ask approvers to run `{}`",
                self.quorum,
                super::cli::hints::approve_request(id)
            );
        }
        let waited = tokio::time::timeout(
            self.args.timeout,
            access::wait(self.channel.clone(), id, Some(&self.delivery_key), |_| {}),
        )
        .await;
        let failure = match waited {
            Ok(Ok((_, Some(credential)))) => {
                self.report.add(
                    "approvals",
                    StepOutcome::Passed,
                    started,
                    if voted.is_empty() {
                        "quorum reached".to_owned()
                    } else {
                        format!("approved by {}", voted.join(", "))
                    },
                );
                return Ok(Some(Minted {
                    credential,
                    cert_file: None,
                }));
            }
            Ok(Ok((request, None))) => {
                format!("request ended {:?} without a credential", request.state())
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no quorum within {}",
                humantime::format_duration(self.args.timeout)
            ),
        };
        self.report
            .add("approvals", StepOutcome::Failed, started, failure);
        Ok(None)
    }

    /// `mint`: the credential is what the scope mints (a bearer token; an SSH certificate
    /// from the daemon's CA for the drill's key), and the certificate is written out for the
    /// SSH steps.
    fn mint(&mut self, minted: &mut Minted) -> Result<(), ClientError> {
        let started = Instant::now();
        let credential = &minted.credential;
        let grant_id = &credential.grant_id;
        let now_secs = self
            .status
            .now
            .as_ref()
            .map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0));
        let mut problems = Vec::new();
        if self.scope.bearer
            && !credential
                .bearer_token
                .starts_with(crate::base::constants::BEARER_TOKEN_PREFIX)
        {
            problems.push("no bearer token".to_owned());
        }
        if let (Some(principals), Some((private, public))) = (&self.principals, &self.ssh_key) {
            let ca = self
                .status
                .fingerprints
                .as_ref()
                .map(|f| f.ssh_user_ca.clone())
                .unwrap_or_default();
            match check_certificate(
                &credential.ssh_certificate,
                public,
                grant_id,
                principals,
                &ca,
                now_secs,
            ) {
                Ok(()) => {
                    let path = private.with_file_name("drill_ed25519-cert.pub");
                    std::fs::write(&path, format!("{}\n", credential.ssh_certificate.trim()))
                        .map_err(|e| ClientError::File {
                            path: path.clone(),
                            detail: e.to_string(),
                        })?;
                    minted.cert_file = Some(path);
                }
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            self.report
                .add("mint", StepOutcome::Failed, started, problems.join("; "));
            return Ok(());
        }
        let mut kinds = Vec::new();
        if self.scope.bearer {
            kinds.push("bearer token".to_owned());
        }
        if let Some(p) = &self.principals {
            kinds.push(format!("SSH certificate for {}", p.join(",")));
        }
        self.report.add(
            "mint",
            StepOutcome::Passed,
            started,
            format!("grant {grant_id}: {}", kinds.join(" + ")),
        );
        Ok(())
    }

    /// `introspect`: the token is active for this grant and scope.
    async fn introspect(&mut self, minted: &Minted) {
        let started = Instant::now();
        let credential = &minted.credential;
        if credential.bearer_token.is_empty() {
            self.report.add(
                "introspect",
                StepOutcome::Skipped,
                started,
                "the scope mints no bearer token".into(),
            );
            return;
        }
        let answer = AccessServiceClient::new(self.channel.clone())
            .introspect(pb::IntrospectRequest {
                token: credential.bearer_token.clone(),
            })
            .await;
        let (outcome, detail) = match answer {
            Ok(r) => {
                let r = r.into_inner();
                if r.active && r.grant_id == credential.grant_id && r.scope == self.args.scope {
                    (
                        StepOutcome::Passed,
                        "token active for this grant and scope".to_owned(),
                    )
                } else {
                    (
                        StepOutcome::Failed,
                        format!(
                            "answer: active={} grant={} scope={}",
                            r.active, r.grant_id, r.scope
                        ),
                    )
                }
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => (
                StepOutcome::Skipped,
                "this user may not introspect ([unix] introspect_uids)".to_owned(),
            ),
            Err(s) => (StepOutcome::Failed, s.message().to_owned()),
        };
        self.report.add("introspect", outcome, started, detail);
    }

    /// `USER@HOST` for the SSH steps, if a target was given and the scope mints certificates.
    fn ssh_target(&self) -> Option<String> {
        match (&self.args.ssh, &self.principals) {
            (Some(target), _) if target.contains('@') => Some(target.clone()),
            (Some(target), Some(p)) if !p.is_empty() => Some(format!(
                "{}@{target}",
                p.first().map(String::as_str).unwrap_or_default()
            )),
            _ => None,
        }
        .filter(|_| self.principals.is_some())
    }

    /// `ssh-login` (the certificate logs in) or `ssh-refused` (after revocation it does not).
    async fn ssh(&mut self, step: &str, minted: &Minted) {
        let started = Instant::now();
        let target = self.ssh_target();
        let (Some(target), Some(cert), Some((private, _))) =
            (target, &minted.cert_file, &self.ssh_key)
        else {
            let why = if step == "ssh-refused" {
                "no SSH login to refuse"
            } else if self.principals.is_none() {
                "the scope mints no SSH certificate"
            } else {
                "no --ssh target given"
            };
            self.report
                .add(step, StepOutcome::Skipped, started, why.into());
            return;
        };
        let login = ssh_login(&self.args, &target, private, cert).await;
        let (outcome, detail) = match (step, login) {
            ("ssh-refused", Ok(())) => (
                StepOutcome::Failed,
                "the revoked certificate still logs in: point sshd's RevokedKeys at latchkey's KRL"
                    .to_owned(),
            ),
            ("ssh-refused", Err(e)) => (StepOutcome::Passed, format!("refused: {e}")),
            (_, Ok(())) => (
                StepOutcome::Passed,
                format!("{target} accepted the certificate"),
            ),
            (_, Err(e)) => (StepOutcome::Failed, e),
        };
        self.report.add(step, outcome, started, detail);
    }

    /// `revoke`: the drill relinquishes its grant. `false` ends the drill.
    async fn revoke(&mut self, minted: &Minted) -> bool {
        let started = Instant::now();
        let relinquished = AccessServiceClient::new(self.channel.clone())
            .relinquish(pb::RelinquishRequest {
                grant_id: minted.credential.grant_id.clone(),
            })
            .await;
        match relinquished {
            Ok(r) => {
                let state = r.into_inner().grant.map(|g| g.state());
                self.report.add(
                    "revoke",
                    StepOutcome::Passed,
                    started,
                    format!(
                        "relinquished; grant {}",
                        state.map_or("unknown", grant_state_name)
                    ),
                );
                true
            }
            Err(s) => {
                self.report.add(
                    "revoke",
                    StepOutcome::Failed,
                    started,
                    s.message().to_owned(),
                );
                false
            }
        }
    }

    /// `confirmation`: every sink confirmed the revocation before the timeout.
    async fn confirmation(&mut self, minted: &Minted) -> Result<(), ClientError> {
        let started = Instant::now();
        let confirmed = access::await_revocation(
            self.channel.clone(),
            &minted.credential.grant_id,
            self.args.timeout,
        )
        .await?;
        match confirmed {
            Ok(g) => self.report.add(
                "confirmation",
                StepOutcome::Passed,
                started,
                format!("revoked; {} sink(s) confirmed", g.sinks.len()),
            ),
            Err((_, why)) => self
                .report
                .add("confirmation", StepOutcome::Failed, started, why),
        }
        Ok(())
    }
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
        say(&format!(
            "no drills recorded yet: run `{}`",
            super::cli::hints::drill("SCOPE")
        ));
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
