//! `latchkey`: the command-line client for responders and scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use latchkey::audit::verify;
use latchkey::client;
use latchkey::constants::{DEFAULT_SOCKET_PATH, SOCKET_ENV};

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
}

/// Which authenticator to use.
#[derive(clap::Args)]
struct KeyChoice {
    /// Use a software token kept in this file (created if missing). Tests, demos and drills
    /// only: a daemon outside dev mode refuses it.
    #[arg(long)]
    soft_token: Option<PathBuf>,
    /// With several USB keys plugged in, use number N (see `latchkey key devices`).
    #[arg(long)]
    device: Option<usize>,
    /// WebAuthn origin to claim (default: https:// + the daemon's relying-party id).
    #[arg(long)]
    origin: Option<String>,
}

impl KeyChoice {
    fn open(&self) -> Result<Box<dyn client::keys::Authenticator>, client::ClientError> {
        Ok(match &self.soft_token {
            Some(path) => Box::new(client::keys::SoftTokenKey::open_or_create(path)?),
            None => Box::new(client::keys::UsbKey::open(self.device)?),
        })
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List plugged-in FIDO2 security keys.
    Devices,
    /// Enroll a key for an operator (during genesis; later a quorum-approved change).
    Enroll {
        /// Operator name.
        #[arg(long)]
        operator: String,
        /// Role (repeatable), e.g. admin.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Audit(AuditCommand::Verify { file, audit_key }) = &cli.command {
        return verify_offline(file, audit_key);
    }
    if let Command::Key(KeyCommand::Devices) = &cli.command {
        let devices = client::keys::usb_devices();
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
        Ok(()) => ExitCode::SUCCESS,
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

async fn run(cli: Cli) -> Result<(), client::ClientError> {
    let channel = client::connect_unix(&cli.socket).await?;
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
            key,
        }) => {
            let mut authenticator = key.open()?;
            let enrolled = client::enroll(
                channel,
                &operator,
                roles,
                authenticator.as_mut(),
                key.origin.as_deref(),
            )
            .await?;
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
        Command::Workload(WorkloadCommand::Admit { name, owner, cert }) => {
            let pem = std::fs::read_to_string(&cert).map_err(|e| client::ClientError::File {
                path: cert.clone(),
                detail: e.to_string(),
            })?;
            let admitted = client::admit_workload(channel, name, owner, pem).await?;
            say!(
                "admitted workload {} (SPKI SHA-256 {})",
                admitted.name,
                admitted.spki_sha256
            );
        }
    }
    Ok(())
}
