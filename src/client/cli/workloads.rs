//! `latchkey workload`: admit workloads during genesis, change them afterwards.

use super::*;

/// `latchkey workload` (besides `admit`).
#[derive(clap::Subcommand, Debug)]
pub(super) enum WorkloadChange {
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

/// `latchkey workload list|put|remove`.
pub(super) async fn workload(
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
                let mut rows =
                    super::table::table(&["WORKLOAD", "OWNER", "INTROSPECT", "PIN", "SCOPES"], &[]);
                for w in &list.workloads {
                    rows.add_row(vec![
                        w.name.clone(),
                        w.owner.clone(),
                        if w.introspect { "yes" } else { "no" }.to_owned(),
                        w.spki_sha256.get(..16).unwrap_or_default().to_owned(),
                        w.scopes.join(","),
                    ]);
                }
                say(&super::table::render(&rows));
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

#[derive(Subcommand)]
pub(super) enum WorkloadCommand {
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
    Change(WorkloadChange),
}

/// `latchkey workload admit` and `workload ...` changes.
pub(super) async fn run(
    channel: Channel,
    out: Out,
    command: WorkloadCommand,
) -> Result<(), ClientError> {
    match command {
        WorkloadCommand::Admit {
            name,
            owner,
            cert,
            scopes,
            introspect,
        } => {
            let pem = std::fs::read_to_string(&cert).map_err(|e| ClientError::File {
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
            Ok(())
        }
        WorkloadCommand::Change(command) => workload(channel, out, command).await,
    }
}
