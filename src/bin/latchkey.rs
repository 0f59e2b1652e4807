//! `latchkey`: the command-line client for responders and scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use latchkey::audit::verify;
use latchkey::base::constants::{DEFAULT_SOCKET_PATH, SOCKET_ENV};
use latchkey::client;
use latchkey::client::access::Target;
use latchkey::client::cli::{self, KeyChoice, Out};
use latchkey::domain::policy::Decision;

/// Prints a line to standard output. A closed pipe (`latchkey status | head -1`) is not an
/// error worth a message, let alone a panic: stop writing and carry on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _closed_pipe = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `audit verify`: the log checks out but ends with records no checkpoint covers.
const EXIT_UNVERIFIED_TAIL: u8 = 3;

/// latchkey: talk to latchkeyd.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's local socket.
    #[arg(long, global = true, env = SOCKET_ENV, default_value = DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Connect over mutual TLS to this address instead of the local socket (as a workload).
    #[arg(long, global = true, requires_all = ["server_cert", "client_cert", "client_key"])]
    tls: Option<std::net::SocketAddr>,
    /// With --tls: the daemon's TLS certificate (PEM), pinned.
    #[arg(long, global = true)]
    server_cert: Option<PathBuf>,
    /// With --tls: this workload's client certificate (PEM).
    #[arg(long, global = true)]
    client_cert: Option<PathBuf>,
    /// With --tls: this workload's private key (PEM).
    #[arg(long, global = true)]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the daemon's version, genesis state and key fingerprints.
    Status,
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Workloads (vault plugins, automation, agents).
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// Your hardware key: enroll it, sign with it.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Ask for break-glass access to a scope, and wait for the credential.
    Request(cli::RequestArgs),
    /// List or show requests.
    #[command(subcommand)]
    Requests(cli::RequestsCommand),
    /// Approve a request with your key (after reading what you approve).
    Approve(cli::VoteArgs),
    /// Deny a request with your key.
    Deny(cli::VoteArgs),
    /// Withdraw your pending request.
    Cancel {
        /// Request id.
        id: String,
    },
    /// Wait for your request and collect its credential (if `request --no-wait` was used).
    Wait {
        /// Request id.
        id: String,
        /// The public key the request named, so the certificate is written next to it.
        #[arg(long)]
        ssh_public_key: Option<PathBuf>,
        /// The delivery key file the request was made with (default: the one `latchkey
        /// request` kept for this request id).
        #[arg(long)]
        delivery_key: Option<PathBuf>,
    },
    /// Is a bearer token active? (Workloads allowed to introspect, over --tls.) Exit 0 if
    /// active, 1 if not. `-` reads the token from standard input.
    Introspect {
        /// The token, or `-`.
        token: String,
    },
    /// Issued grants.
    #[command(subcommand)]
    Grant(cli::GrantCommand),
    /// List grants, newest first (`--state revocation-unconfirmed` shows what needs attention).
    Grants {
        /// Only in this state: active, revoking, revoked, revocation-unconfirmed.
        #[arg(long)]
        state: Option<String>,
    },
    /// Revoke a grant now, with your key (any operator; no quorum: revoking is always safe).
    Revoke {
        /// Grant id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Your operator name.
        #[arg(long)]
        operator: String,
        #[command(flatten)]
        key: KeyChoice,
    },
    /// Give up a grant you hold (the requester's user, or the workload over --tls).
    Relinquish {
        /// Grant id.
        id: String,
    },
    /// Scopes: what break-glass can open.
    #[command(subcommand)]
    Scope(cli::ScopeCommand),
    /// Trust-store changes: list, show, approve, deny.
    #[command(subcommand)]
    Change(cli::ChangeCommand),
    /// Run the whole break-glass path against a scope (request, approvals, mint, introspect,
    /// SSH login, revoke, confirmation) and have the daemon record the result. Exit 0 if the
    /// drill passed.
    Drill(latchkey::client::drill::DrillArgs),
    /// Each scope's latest drill and latest passed drill.
    Drills,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List plugged-in FIDO2 security keys.
    Devices,
    /// Enroll a key for an operator: at once during genesis; afterwards it becomes a proposed
    /// change that admins approve (`--note` says who checked the operator's identity, how).
    Enroll {
        /// Operator name.
        #[arg(long)]
        operator: String,
        /// Role (repeatable), e.g. admin. Only used when the operator is new.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Proofing note, required after genesis: who checked whose identity, how, on which
        /// channel.
        #[arg(long, default_value = "")]
        note: String,
        /// With --piv: generate a new P-256 key in the slot, on the device (default management
        /// key), with these policies. Without it the slot's existing key is enrolled.
        #[arg(long, requires = "piv")]
        generate: bool,
        /// With --generate: touch policy (always, cached, never).
        #[arg(long, default_value = "always", value_parser = parse_touch)]
        touch_policy: latchkey::verify::piv::TouchPolicy,
        /// With --generate: PIN policy (always, once, never).
        #[arg(long, default_value = "once", value_parser = parse_pin)]
        pin_policy: latchkey::verify::piv::PinPolicy,
        #[command(flatten)]
        key: KeyChoice,
    },
    /// Sign a digest of what you approve (SHA-256, hex) with your key.
    Sign {
        /// Operator name.
        #[arg(long)]
        operator: String,
        /// SHA-256 of what is approved, 64 hex characters.
        #[arg(long)]
        digest: String,
        #[command(flatten)]
        key: KeyChoice,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Show an operator's roles and keys (and whether any is suspended).
    Show {
        /// Operator name.
        name: String,
    },
    #[command(flatten)]
    Change(cli::OperatorChange),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write the whole log as JSON Lines (after a fresh checkpoint covering it).
    Export {
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print records as JSON Lines and keep following new ones.
    Follow {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Check an export offline: hash chain, sequence, checkpoint signatures, approval evidence.
    /// Exit 0: verified; 1: tampering (names the first bad record); 3: chain intact but the
    /// last records are not covered by a checkpoint.
    Verify {
        /// The JSON Lines export.
        file: PathBuf,
        /// Audit public key: `ssh-ed25519 AAAA...` or a file holding it (see `latchkey status`).
        #[arg(long)]
        audit_key: String,
    },
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Pin a workload's TLS client certificate key (genesis only; later a quorum-approved change).
    Admit {
        /// Workload name.
        #[arg(long)]
        name: String,
        /// Who answers for it.
        #[arg(long)]
        owner: String,
        /// PEM client certificate.
        #[arg(long)]
        cert: PathBuf,
        /// A scope it may request (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Let it introspect tokens.
        #[arg(long)]
        introspect: bool,
    },
    #[command(flatten)]
    Change(cli::WorkloadChange),
}

fn parse_touch(s: &str) -> Result<latchkey::verify::piv::TouchPolicy, String> {
    match s {
        "always" => Ok(latchkey::verify::piv::TouchPolicy::Always),
        "cached" => Ok(latchkey::verify::piv::TouchPolicy::Cached),
        "never" => Ok(latchkey::verify::piv::TouchPolicy::Never),
        other => Err(format!("{other}: use always, cached or never")),
    }
}

fn parse_pin(s: &str) -> Result<latchkey::verify::piv::PinPolicy, String> {
    match s {
        "always" => Ok(latchkey::verify::piv::PinPolicy::Always),
        "once" => Ok(latchkey::verify::piv::PinPolicy::Once),
        "never" => Ok(latchkey::verify::piv::PinPolicy::Never),
        other => Err(format!("{other}: use always, once or never")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Audit(AuditCommand::Verify { file, audit_key }) = &cli.command {
        return verify_offline(file, audit_key);
    }
    if let Command::Key(KeyCommand::Devices) = &cli.command {
        let devices = client::authenticator::usb_devices();
        if devices.is_empty() {
            eprintln!("latchkey: no FIDO2 security key found");
            return ExitCode::FAILURE;
        }
        for line in devices {
            say!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey: error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("latchkey: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify_offline(file: &PathBuf, audit_key: &str) -> ExitCode {
    let key = match client::audit_key(audit_key) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("latchkey: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("latchkey: error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match verify::verify(reader, &key) {
        Ok(report) => {
            say!(
                "verified {} records; {} approvals re-verified against enrolled keys; last checkpoint at {}",
                report.records,
                report.evidence_verified,
                report
                    .last_checkpoint
                    .map_or("(none)".to_owned(), |s| s.to_string())
            );
            match report.unverified_tail {
                None => ExitCode::SUCCESS,
                Some((first, last)) => {
                    say!(
                        "unverified tail: records {first}..{last} are chained but no checkpoint covers them; \
                         records cut off after them could not be detected"
                    );
                    ExitCode::from(EXIT_UNVERIFIED_TAIL)
                }
            }
        }
        Err(tampered) => {
            say!("TAMPERED: {tampered}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> Result<tonic::transport::Channel, client::ClientError> {
    match (
        &cli.tls,
        &cli.server_cert,
        &cli.client_cert,
        &cli.client_key,
    ) {
        (Some(addr), Some(server), Some(cert), Some(key)) => {
            let server_cert = client::read_certificate(server)?;
            let identity = client::ClientIdentity::from_pem_files(cert, key)?;
            client::connect_tls(*addr, server_cert, identity).await
        }
        _ => client::connect_unix(&cli.socket).await,
    }
}

async fn run(cli: Cli) -> Result<ExitCode, client::ClientError> {
    let channel = connect(&cli).await?;
    let out = Out { json: cli.json };
    match cli.command {
        Command::Status => {
            let view = client::status(channel).await?;
            if cli.json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
            } else {
                say!("{view}");
            }
        }
        Command::Audit(AuditCommand::Export { output }) => {
            let count = match output {
                Some(path) => {
                    let mut file =
                        std::fs::File::create(&path).map_err(|e| client::ClientError::File {
                            path: path.clone(),
                            detail: e.to_string(),
                        })?;
                    client::export_audit(channel, &mut file).await?
                }
                None => client::export_audit(channel, &mut std::io::stdout().lock()).await?,
            };
            eprintln!("exported {count} records");
        }
        Command::Audit(AuditCommand::Follow { from }) => {
            client::follow_audit(channel, from, &mut std::io::stdout().lock()).await?;
        }
        Command::Audit(AuditCommand::Verify { .. }) | Command::Key(KeyCommand::Devices) => {}
        Command::Key(KeyCommand::Enroll {
            operator,
            roles,
            note,
            generate,
            touch_policy,
            pin_policy,
            key,
        }) => {
            let mut authenticator: Box<dyn client::authenticator::Authenticator> = if generate {
                Box::new(client::piv_card::UsbPiv::generate(
                    &key.slot,
                    pin_policy,
                    touch_policy,
                    cli::piv_pin()?,
                )?)
            } else {
                key.open()?
            };
            let enrolled = client::enroll(
                channel,
                &operator,
                roles,
                authenticator.as_mut(),
                key.origin.as_deref(),
                &note,
            )
            .await?;
            if !enrolled.change_id.is_empty() {
                say!(
                    "key {} for operator {} proposed as change {}: admins approve it with `latchkey change approve {}`",
                    enrolled.credential_id,
                    enrolled.operator,
                    enrolled.change_id,
                    enrolled.change_id
                );
                return Ok(ExitCode::SUCCESS);
            }
            say!(
                "enrolled key {} for operator {} (AAGUID {}); genesis {}",
                enrolled.credential_id,
                enrolled.operator,
                if enrolled.aaguid.is_empty() {
                    "unknown"
                } else {
                    &enrolled.aaguid
                },
                if enrolled.genesis() == latchkey::pb::GenesisState::Closed {
                    "closed"
                } else {
                    "open"
                }
            );
        }
        Command::Key(KeyCommand::Sign {
            operator,
            digest,
            key,
        }) => {
            let digest: [u8; 32] = hex::decode(&digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| client::ClientError::File {
                    path: PathBuf::from("--digest"),
                    detail: "expected 64 hex characters (a SHA-256)".to_owned(),
                })?;
            let mut authenticator = key.open()?;
            let signed = client::sign_digest(
                channel,
                &operator,
                digest,
                authenticator.as_mut(),
                key.origin.as_deref(),
            )
            .await?;
            say!(
                "verified: {} with key {} (user verified: {}, counter {}), audit record {}",
                signed.operator,
                signed.credential_id,
                signed.user_verified,
                signed.counter,
                signed.audit_seq
            );
        }
        Command::Operator(OperatorCommand::Show { name }) => {
            let shown = client::show_operator(channel, &name).await?;
            if cli.json {
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
            } else {
                say!("operator {}  roles: {}", shown.name, shown.roles.join(", "));
                for a in &shown.authenticators {
                    let state = match a.state() {
                        latchkey::pb::AuthenticatorState::Suspended => {
                            format!("SUSPENDED: {}", a.suspended_reason)
                        }
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
            }
        }
        Command::Workload(WorkloadCommand::Admit {
            name,
            owner,
            cert,
            scopes,
            introspect,
        }) => {
            let pem = std::fs::read_to_string(&cert).map_err(|e| client::ClientError::File {
                path: cert.clone(),
                detail: e.to_string(),
            })?;
            let admitted =
                client::admit_workload(channel, name, owner, pem, scopes, introspect).await?;
            say!(
                "admitted workload {} (SPKI SHA-256 {})",
                admitted.name,
                admitted.spki_sha256
            );
        }
        Command::Workload(WorkloadCommand::Change(command)) => {
            cli::workload(channel, out, command).await?;
        }
        Command::Operator(OperatorCommand::Change(command)) => {
            cli::operator(channel, out, command).await?;
        }
        Command::Request(args) => cli::request(channel, out, args).await?,
        Command::Requests(command) => cli::requests(channel, out, command).await?,
        Command::Approve(args) => {
            let target = Target::Request(args.id.clone());
            cli::vote(channel, out, target, Decision::Approve, args).await?;
        }
        Command::Deny(args) => {
            let target = Target::Request(args.id.clone());
            cli::vote(channel, out, target, Decision::Deny, args).await?;
        }
        Command::Cancel { id } => cli::cancel(channel, out, id).await?,
        Command::Wait {
            id,
            ssh_public_key,
            delivery_key,
        } => {
            let key = cli::delivery_key_for(&id, delivery_key.as_deref())?;
            cli::deliver(channel, out, &id, ssh_public_key.as_deref(), key.as_ref()).await?;
        }
        Command::Introspect { token } => {
            if !cli::introspect(channel, out, token).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Grant(cli::GrantCommand::Show { id }) => cli::show_grant(channel, out, id).await?,
        Command::Grants { state } => cli::grants(channel, out, state).await?,
        Command::Revoke {
            id,
            reason,
            operator,
            key,
        } => cli::revoke(channel, out, id, reason, operator, key).await?,
        Command::Relinquish { id } => cli::relinquish(channel, out, id).await?,
        Command::Scope(command) => cli::scope(channel, out, command).await?,
        Command::Change(command) => cli::change(channel, out, command).await?,
        Command::Drill(args) => {
            if !latchkey::client::drill::drill(channel, out, args).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Drills => latchkey::client::drill::list(channel, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}
