//! The `latchkey` CLI: one clap tree, one file per command group. `src/bin/latchkey.rs` only
//! calls [`main`].

/// Prints a line to standard output. A closed pipe (`latchkey status | head -1`) is not an
/// error worth a message, let alone a panic: stop writing and carry on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _closed_pipe = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod audit;
mod changes;
pub mod config;
pub(crate) mod exit;
mod grants;
pub(crate) mod hints;
mod keys;
mod operators;
pub mod pages;
mod requests;
mod scopes;
mod table;
mod workloads;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tonic::transport::Channel;

use super::ClientError;
use super::access::{self, Target};
use super::authenticator::{Authenticator, SoftTokenKey, UsbKey};
use crate::base::constants::{DEFAULT_SOCKET_PATH, SOCKET_ENV};
use crate::client;
use crate::credential::delivery::DeliveryKey;
use crate::domain::policy::Decision;
use crate::pb;
use crate::pb::access_service_client::AccessServiceClient;
use crate::pb::trust_service_client::TrustServiceClient;

use changes::propose;
pub use grants::grant_text;
use requests::{VoteArgs, vote};
pub use requests::{delivery_key_for, request_text};

/// Which authenticator to use.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyChoice {
    /// Use a software token kept in this file (`key enroll` creates it). Tests, demos and
    /// drills only: a daemon outside dev mode refuses it.
    #[arg(long, env = "LATCHKEY_SOFT_TOKEN")]
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
    /// Use a software PIV key kept in this file (`key enroll` creates it; its synthetic root
    /// must be in the daemon's `[piv] dev_roots`: dev mode only).
    #[arg(long, conflicts_with_all = ["soft_token", "piv"])]
    pub soft_piv: Option<PathBuf>,
}

impl KeyChoice {
    /// Opens the chosen authenticator to sign. A software key file must exist: a mistyped path
    /// would otherwise sign with a new key nobody enrolled.
    pub fn open(&self) -> Result<Box<dyn Authenticator>, ClientError> {
        self.check_files()?;
        self.open_or_create()
    }

    /// Refuses a software key file that does not exist (nothing is opened or prompted).
    pub fn check_files(&self) -> Result<(), ClientError> {
        for path in [&self.soft_token, &self.soft_piv].into_iter().flatten() {
            if !path.exists() {
                return Err(client::authenticator::KeyError::SoftToken {
                    path: path.clone(),
                    detail: "no such file (a typo? `latchkey key enroll` with this path creates \
                             and enrolls one)"
                        .to_owned(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Opens the chosen authenticator, creating a software key file if missing (enrollment).
    pub fn open_or_create(&self) -> Result<Box<dyn Authenticator>, ClientError> {
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

fn file_error(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The latchkey break-glass client: ask, approve, revoke, audit, drill.
#[derive(Parser)]
#[command(name = "latchkey", version, about, after_help = exit::HELP)]
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
    /// Connect from your own device to the daemon's remote operator port (HOST:PORT) instead
    /// of the local socket; every action still takes a touch of your key.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_SERVER",
        requires = "server_spki",
        conflicts_with = "tls"
    )]
    server: Option<String>,
    /// With --server: the daemon's key, pinned (the "tls spki" line of `latchkey status` on
    /// the bastion, or of the install output).
    #[arg(long, global = true, env = "LATCHKEY_SERVER_SPKI", value_parser = parse_spki)]
    server_spki: Option<[u8; 32]>,
    /// With --server: who you are, for the read session opened first (one key touch; the
    /// `--operator` of the command when it has one).
    #[arg(
        long = "as",
        global = true,
        env = "LATCHKEY_OPERATOR",
        value_name = "OPERATOR"
    )]
    as_operator: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// A SHA-256 in hex (64 digits; colons allowed).
fn parse_spki(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    hex::decode(&digits)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| "want the 64 hex digits of `tls spki` from `latchkey status`".to_owned())
}

#[derive(Subcommand)]
enum Command {
    /// Show the daemon's version, genesis state and key fingerprints.
    Status,
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Workloads (vault plugins, automation, agents).
    #[command(subcommand)]
    Workload(workloads::WorkloadCommand),
    /// Your hardware key: enroll it, sign with it.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Operators.
    #[command(subcommand)]
    Operator(operators::OperatorCommand),
    /// Ask for break-glass access to a scope, and wait for the credential.
    Request(requests::RequestArgs),
    /// List or show requests.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Approve a request with your key (after reading what you approve).
    Approve(requests::VoteArgs),
    /// Deny a request with your key.
    Deny(requests::VoteArgs),
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
    Grant(grants::GrantCommand),
    /// List grants, newest first (`--state revocation-unconfirmed` shows what needs attention).
    Grants {
        /// Only in this state.
        #[arg(long, value_parser = ["active", "revoking", "revoked", "revocation-unconfirmed"])]
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
        /// Wait until every sink confirmed the revocation (at most this long, default 10m);
        /// exit 1 if it is not confirmed by then.
        #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "10m")]
        wait: Option<std::time::Duration>,
    },
    /// Give up a grant you hold (the requester's user, or the workload over --tls).
    Relinquish {
        /// Grant id.
        id: String,
    },
    /// Scopes: what break-glass can open.
    #[command(subcommand)]
    Scope(scopes::ScopeCommand),
    /// Trust-store changes: list, show, approve, deny.
    #[command(subcommand)]
    Change(changes::ChangeCommand),
    /// Run the whole break-glass path against a scope (request, approvals, mint, introspect,
    /// SSH login, revoke, confirmation) and have the daemon record the result. Exit 0 if the
    /// drill passed.
    Drill(crate::client::drill::DrillArgs),
    /// Each scope's latest drill and latest passed drill.
    Drills,
    /// Print the SSH user CA's public key: the line for sshd's `TrustedUserCAKeys` file
    /// (`latchkey ssh-ca > /etc/ssh/latchkey_user_ca.pub`).
    SshCa,
    /// Print a shell completion script (`latchkey completions bash >
    /// /etc/bash_completion.d/latchkey`; also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, one per command, into DIR (scripts/package does).
    #[command(hide = true)]
    Man {
        /// Where to write them.
        dir: std::path::PathBuf,
        /// The date on every page (YYYY-MM-DD).
        #[arg(long)]
        date: String,
    },
}

/// FILES and SEE ALSO on latchkey(1).
const MAN_EXTRA: &[pages::ExtraSection] = &[
    pages::ExtraSection {
        title: "FILES",
        roff: r".TP
.I /run/latchkey/latchkeyd.sock
default socket ($LATCHKEY_SOCKET or \-\-socket override); callers must be allowed by the
daemon (group latchkey on a packaged bastion)
.TP
.I /lib/udev/rules.d/70-latchkey.rules
lets group latchkey open FIDO security keys' hidraw nodes
",
    },
    pages::ExtraSection {
        title: "SEE ALSO",
        roff: r".BR latchkeyd (8),
.BR sshd_config (5);
/usr/share/doc/latchkey/README.md, install.md, errors.md, scopes.md, hardware.md
",
    },
];

/// Runs the CLI: parses the arguments, does the command, and says how it went.
pub fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let config = match config::path()
        .map(|(p, named)| config::load(&p, named))
        .transpose()
    {
        Ok(config) => config.unwrap_or_default(),
        Err(e) => {
            eprintln!("latchkey: error: {e}");
            return ExitCode::from(exit::LOCAL);
        }
    };
    let matches = config.apply(Cli::command()).get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A server from client.toml gives way to a socket or --tls asked for explicitly.
    {
        use clap::parser::ValueSource;
        let explicit = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        if matches.value_source("server") == Some(ValueSource::DefaultValue)
            && (explicit("socket") || explicit("tls"))
        {
            cli.server = None;
        }
    }
    if cli.server.is_some() && cli.server_spki.is_none() {
        eprintln!(
            "latchkey: error: a server needs its pinned key: --server-spki HEX (or server_spki \
             in client.toml), the `tls spki` line of `latchkey status` on the bastion"
        );
        return ExitCode::from(exit::LOCAL);
    }
    if let Command::Audit(audit::AuditCommand::Verify {
        file,
        audit_key: Some(key),
    }) = &cli.command
    {
        return audit::verify_offline(file, key, cli.json);
    }
    if let Command::Key(keys::KeyCommand::Devices) = &cli.command {
        return keys::devices();
    }
    if let Command::Completions { shell } = &cli.command {
        use clap::CommandFactory as _;
        pages::print_completions(Cli::command(), "latchkey", *shell);
        return ExitCode::SUCCESS;
    }
    if let Command::Man { dir, date } = &cli.command {
        use clap::CommandFactory as _;
        let man = pages::ManPages {
            section: "1",
            date,
            extra: MAN_EXTRA,
        };
        return match man.write(Cli::command(), dir) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("latchkey: error: man pages in {}: {e}", dir.display());
                ExitCode::from(exit::LOCAL)
            }
        };
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
            exit::for_error(&e)
        }
    }
}

async fn connect(cli: &Cli) -> Result<Channel, ClientError> {
    if let (Some(server), Some(spki)) = (&cli.server, cli.server_spki) {
        let channel = client::connect_remote(server, spki).await?;
        if let Some((operator, key)) = session_identity(cli) {
            let mut authenticator = key.open()?;
            eprintln!("touch your key to open a read session as {operator}");
            client::open_session(
                channel.clone(),
                &operator,
                authenticator.as_mut(),
                key.origin.as_deref(),
            )
            .await?;
        }
        return Ok(channel);
    }
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

/// The operator and key of the read session over `--server`.
#[derive(Clone)]
pub(super) struct Session {
    operator: String,
    key: KeyChoice,
}

/// Over `--server`: who signs trust-store proposals (set once, as the command starts; the
/// CLI runs one command per process).
static REMOTE_SIGNER: std::sync::OnceLock<Session> = std::sync::OnceLock::new();

/// The operator whose key signs proposals over `--server`, if any.
fn remote_signer() -> Option<&'static Session> {
    REMOTE_SIGNER.get()
}

/// Who opens the read session over `--server`, and with which key: the command's own
/// `--operator` and key flags where it has them, else `--as` with the key from
/// `LATCHKEY_SOFT_TOKEN` (dev) or the USB key. None for commands that read nothing.
fn session_identity(cli: &Cli) -> Option<(String, KeyChoice)> {
    let from_env = || KeyChoice {
        soft_token: std::env::var_os("LATCHKEY_SOFT_TOKEN").map(PathBuf::from),
        device: None,
        origin: None,
        piv: false,
        slot: "9a".to_owned(),
        soft_piv: None,
    };
    match &cli.command {
        Command::Status | Command::SshCa | Command::Completions { .. } | Command::Man { .. } => {
            None
        }
        Command::Approve(args) | Command::Deny(args) => {
            Some((args.operator.clone(), args.key.clone()))
        }
        // Asking reads nothing; waiting watches the request.
        Command::Request(args) if args.no_wait => None,
        Command::Request(args) => args
            .operator
            .clone()
            .or_else(|| cli.as_operator.clone())
            .map(|op| (op, args.key.clone())),
        Command::Revoke { operator, key, .. } => Some((operator.clone(), key.clone())),
        _ => cli.as_operator.clone().map(|op| (op, from_env())),
    }
}

/// Exit 0, or 1 when the command's answer is "no" (an inactive token, a failed drill).
fn success_if(yes: bool) -> ExitCode {
    if yes {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NO)
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let channel = connect(&cli).await?;
    // Over the remote port, who reopens the read session if a wait outlives it.
    let session = cli
        .server
        .is_some()
        .then(|| session_identity(&cli))
        .flatten()
        .map(|(operator, key)| Session { operator, key });
    if let Some(signer) = &session {
        let _once = REMOTE_SIGNER.set(signer.clone());
    }
    let out = Out { json: cli.json };
    match cli.command {
        Command::Status => status(channel, out).await?,
        Command::Audit(audit::AuditCommand::Verify {
            file,
            audit_key: None,
        }) => {
            let key = client::status(channel).await?.audit_public_key;
            if !out.json {
                eprintln!("audit key from the running daemon: {key}");
            }
            return Ok(audit::verify_offline(&file, &key, out.json));
        }
        Command::Audit(command) => audit::run(channel, command).await?,
        Command::Key(command) => keys::run(channel, command).await?,
        Command::Operator(command) => operators::run(channel, out, command).await?,
        Command::Workload(command) => workloads::run(channel, out, command).await?,
        Command::Request(args) => {
            requests::request(channel, out, args, session.as_ref()).await?;
        }
        Command::Requests(command) => requests::requests(channel, out, command).await?,
        Command::Approve(args) => {
            let target = Target::Request(args.id.clone());
            requests::vote(channel, out, target, Decision::Approve, args).await?;
        }
        Command::Deny(args) => {
            let target = Target::Request(args.id.clone());
            requests::vote(channel, out, target, Decision::Deny, args).await?;
        }
        Command::Cancel { id } => requests::cancel(channel, out, id).await?,
        Command::Wait {
            id,
            ssh_public_key,
            delivery_key,
        } => {
            let key = requests::delivery_key_for(&id, delivery_key.as_deref())?;
            requests::deliver(
                channel,
                out,
                &id,
                (ssh_public_key.as_deref(), key.as_ref()),
                session.as_ref(),
            )
            .await?;
        }
        Command::Introspect { token } => {
            return Ok(success_if(requests::introspect(channel, out, token).await?));
        }
        Command::Grant(grants::GrantCommand::Show { id }) => {
            grants::show_grant(channel, out, id).await?;
        }
        Command::Grants { state } => grants::grants(channel, out, state).await?,
        Command::Revoke {
            id,
            reason,
            operator,
            key,
            wait,
        } => {
            let revoked = grants::revoke(channel, out, (id, reason), operator, key, wait).await?;
            return Ok(success_if(revoked));
        }
        Command::Relinquish { id } => grants::relinquish(channel, out, id).await?,
        Command::Scope(command) => scopes::scope(channel, out, command).await?,
        Command::Change(command) => changes::change(channel, out, command).await?,
        Command::Drill(args) => {
            return Ok(success_if(client::drill::drill(channel, out, args).await?));
        }
        Command::Drills => client::drill::list(channel, out).await?,
        Command::Completions { .. } | Command::Man { .. } => {}
        Command::SshCa => {
            let view = client::status(channel).await?;
            if view.ssh_user_ca_public_key.is_empty() {
                return Err(ClientError::Protocol(format!(
                    "latchkeyd {} does not say its SSH CA key: run `ssh-keygen -y -f \
                     DATA_DIR/ssh-user-ca` on the bastion instead",
                    view.version
                )));
            }
            say!("{}", view.ssh_user_ca_public_key);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey status`.
async fn status(channel: Channel, out: Out) -> Result<(), ClientError> {
    let view = client::status(channel).await?;
    if out.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
    } else {
        say!("{view}");
    }
    Ok(())
}
