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
        Command::Audit(AuditCommand::Verify { .. }) => {}
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
