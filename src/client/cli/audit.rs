//! `latchkey audit`: export, follow, and verify offline.

use super::*;

#[derive(Subcommand)]
pub(super) enum AuditCommand {
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
        /// Audit public key: `ssh-ed25519 AAAA...` or a file holding it. Without it the key
        /// is asked of the running daemon (`latchkey status`): fine for a routine check, but a
        /// key kept apart from the bastion is what proves the bastion did not rewrite the log.
        #[arg(long)]
        audit_key: Option<String>,
    },
}

/// `latchkey audit verify`: the export checked with only the audit public key.
pub(super) fn verify_offline(file: &Path, audit_key: &str, json: bool) -> ExitCode {
    let problem = |e: String| {
        eprintln!("latchkey: error: {e}");
        ExitCode::from(exit::LOCAL)
    };
    let key = match client::audit_key(audit_key) {
        Ok(key) => key,
        Err(e) => return problem(e.to_string()),
    };
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => return problem(format!("{}: {e}", file.display())),
    };
    let verified = crate::audit::verify::verify(reader, &key);
    if json {
        let value = match &verified {
            Ok(report) => serde_json::json!({
                "verified": true,
                "records": report.records,
                "evidence_verified": report.evidence_verified,
                "last_checkpoint": report.last_checkpoint,
                "unverified_tail": report.unverified_tail.map(|(first, last)| [first, last]),
            }),
            Err(tampered) => {
                serde_json::json!({ "verified": false, "tampered": tampered.to_string() })
            }
        };
        say!("{value}");
    }
    match verified {
        Ok(report) => {
            if !json {
                say!(
                    "verified {} records; {} approvals re-verified against enrolled keys; last checkpoint at {}",
                    report.records,
                    report.evidence_verified,
                    report
                        .last_checkpoint
                        .map_or("(none)".to_owned(), |s| s.to_string())
                );
            }
            match report.unverified_tail {
                None => ExitCode::SUCCESS,
                Some((first, last)) => {
                    if !json {
                        say!(
                            "unverified tail: records {first}..{last} are chained but no checkpoint covers them; \
                             records cut off after them could not be detected"
                        );
                    }
                    ExitCode::from(EXIT_UNVERIFIED_TAIL)
                }
            }
        }
        Err(tampered) => {
            if !json {
                say!("TAMPERED: {tampered}");
            }
            ExitCode::from(exit::NO)
        }
    }
}

/// `audit verify`: the log checks out but ends with records no checkpoint covers.
pub(super) const EXIT_UNVERIFIED_TAIL: u8 = 3;

/// `latchkey audit export` and `follow` (`verify` runs offline: [`verify_offline`]).
pub(super) async fn run(channel: Channel, command: AuditCommand) -> Result<(), ClientError> {
    match command {
        AuditCommand::Export { output } => {
            let count = match output {
                Some(path) => {
                    let mut file = std::fs::File::create(&path).map_err(|e| ClientError::File {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                    client::export_audit(channel, &mut file).await?
                }
                None => client::export_audit(channel, &mut std::io::stdout().lock()).await?,
            };
            eprintln!("exported {count} records");
        }
        AuditCommand::Follow { from } => {
            client::follow_audit(channel, from, &mut std::io::stdout().lock()).await?;
        }
        AuditCommand::Verify { .. } => {}
    }
    Ok(())
}
