//! The `latchkeyd` command line: `init`, `serve`, `doctor`, genesis admissions and
//! `accept-rollback`. `src/bin/latchkeyd.rs` only sets the allocator and calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::base::clock::{Clock as _, SystemClock};
use crate::base::constants::{
    DEFAULT_ADMIN_ROLE, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH, DEFAULT_TRUST_STORE_QUORUM,
};
use crate::client::cli::pages;
use crate::daemon;
use crate::daemon::config::Config;
use crate::domain::trust::TrustStorePolicy;
use crate::domain::workload::Workload;
use crate::service::hygiene::Level;
use clap::{Parser, Subcommand};

/// The latchkey break-glass authority daemon.
#[derive(Parser)]
#[command(name = "latchkeyd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `latchkeyd store …`.
#[derive(Subcommand)]
enum StoreCommand {
    /// Copies every record from one backend into the other, which must be empty (sled: no
    /// store in the data dir; etcd: nothing under the prefix). Stop every latchkeyd first.
    /// The config names both: sled in `data_dir`, etcd in `[store.etcd]`.
    Copy {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// `sled` or `etcd`.
        #[arg(long, value_parser = ["sled", "etcd"])]
        from: String,
        /// `sled` or `etcd`.
        #[arg(long, value_parser = ["sled", "etcd"])]
        to: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Create the trust store and the daemon's keys in DIR (refuses an existing store).
    Init {
        /// Data directory (created 0700).
        #[arg(long)]
        data_dir: PathBuf,
        /// Approvals needed for trust-store changes.
        #[arg(long, default_value_t = DEFAULT_TRUST_STORE_QUORUM)]
        trust_store_quorum: u32,
        /// Role whose holders approve trust-store changes.
        #[arg(long, default_value = DEFAULT_ADMIN_ROLE)]
        admin_role: String,
        /// DNS name or IP address for the TLS certificate (repeatable).
        #[arg(long = "tls-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])]
        tls_names: Vec<String>,
        /// Also write a config file for this data dir here.
        #[arg(long)]
        write_config: Option<PathBuf>,
        /// Socket path for the written config.
        #[arg(long, default_value = DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
        /// Write `dev_mode = true` into the config (trusts software authenticators).
        #[arg(long)]
        dev_mode: bool,
    },
    /// Check a config file as `serve` would read it (syntax, unknown keys, values, groups,
    /// who may write it) without starting anything. Exits 1 with the line to fix.
    CheckConfig {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, one per command, into DIR (scripts/package does).
    #[command(hide = true)]
    Man {
        /// Where to write them.
        dir: PathBuf,
        /// The date on every page (YYYY-MM-DD).
        #[arg(long)]
        date: String,
    },
    /// Run the daemon.
    Serve {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check independence and hygiene (config, permissions, filesystems, name service, trust
    /// store, drills, revocations). Prints PASS/WARN/FAIL lines; exits 1 if anything fails.
    Doctor {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// One JSON array of findings instead of text.
        #[arg(long)]
        json: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// With the daemon stopped: serve a trust store that went back in time (restored from an
    /// older backup, or damaged) after `serve` refused it. Records the acceptance in the audit
    /// log. Check the KRL and revoke again whatever must stay revoked.
    AcceptRollback {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// The trust store itself: copy it between backends.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Writes the whole trust store as of one moment to a new private file, after checking its
    /// audit chain (sled: stop latchkeyd first; etcd: any time). Back up before upgrading.
    /// The daemon's keys are not in it: back up the data dir too.
    Backup {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The file to write (must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Restores a backup into an empty store, refusing one whose audit chain does not verify
    /// with the data dir's audit key. Stop every latchkeyd first.
    Restore {
        /// Config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
        /// `sled` (a new store in the data dir) or `etcd` (an empty prefix).
        #[arg(long, value_parser = ["sled", "etcd"])]
        to: String,
    },
    /// Bootstrap only: pin a workload's TLS client certificate while genesis is open.
    /// Run with the daemon stopped. After genesis, admit workloads through a quorum-approved change.
    AdmitWorkload {
        /// Data directory of the (stopped) daemon.
        #[arg(long)]
        data_dir: PathBuf,
        /// Workload name.
        #[arg(long)]
        name: String,
        /// Who answers for the workload.
        #[arg(long)]
        owner: String,
        /// The workload's PEM client certificate (its key is pinned, not the certificate).
        #[arg(long)]
        cert: PathBuf,
        /// A scope it may request (repeat for several; the scope must also name the workload).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Let it introspect bearer tokens.
        #[arg(long)]
        introspect: bool,
    },
}

/// FILES and SEE ALSO on latchkeyd(8).
const MAN_EXTRA: &[pages::ExtraSection] = &[
    pages::ExtraSection {
        title: "FILES",
        roff: r".TP
.I /etc/latchkey/latchkeyd.toml
configuration (strict TOML, version = 1; check it with latchkeyd check\-config)
.TP
.I /var/lib/latchkey
trust store, the daemon's keys (0600) and revoked-keys.krl (directory 0700, user latchkey)
.TP
.I /run/latchkey/latchkeyd.sock
local socket (latchkeyd.socket; mode 0660, group latchkey)
.TP
.I /lib/systemd/system/latchkeyd.service, latchkeyd.socket
hardened service and socket activation
",
    },
    pages::ExtraSection {
        title: "SEE ALSO",
        roff: r".BR latchkey (1),
.BR sshd_config (5),
.BR systemd.exec (5);
/usr/share/doc/latchkey/install.md, README.md, errors.md, hardware.md, scopes.md
",
    },
];

/// Runs the daemon's command line and says how it went.
fn backup_command(config: &std::path::Path, output: &std::path::Path) -> Result<(), String> {
    let config = Config::load_for_serving(config).map_err(|e| e.to_string())?;
    let done = crate::daemon::backup::backup(&config, output).map_err(|e| e.to_string())?;
    println!(
        "backed up {} entries (audit head {}, chain verified) to {}",
        done.entries,
        done.audit_head,
        output.display()
    );
    Ok(())
}

fn restore_command(
    config: &std::path::Path,
    input: &std::path::Path,
    to: &str,
) -> Result<(), String> {
    let config = Config::load_for_serving(config).map_err(|e| e.to_string())?;
    let choice = if to == "etcd" {
        crate::daemon::config::StoreChoice::Etcd
    } else {
        crate::daemon::config::StoreChoice::Sled
    };
    let done = crate::daemon::backup::restore(&config, input, choice).map_err(|e| e.to_string())?;
    println!(
        "restored {} entries (audit head {}, chain verified) into {to}",
        done.entries, done.audit_head
    );
    Ok(())
}

fn store_command(command: StoreCommand) -> Result<(), String> {
    let StoreCommand::Copy { config, from, to } = command;
    let config = Config::load_for_serving(&config).map_err(|e| e.to_string())?;
    let choice = |s: &str| {
        if s == "etcd" {
            crate::daemon::config::StoreChoice::Etcd
        } else {
            crate::daemon::config::StoreChoice::Sled
        }
    };
    let copied =
        daemon::copy_store(&config, choice(&from), choice(&to)).map_err(|e| e.to_string())?;
    println!(
        "copied {copied} records from {from} to {to}; point [store] backend at {to} before starting latchkeyd"
    );
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Doctor {
        config,
        json,
        strict,
    } = &cli.command
    {
        return doctor(config, *json, *strict);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Not `eprintln!`, which panics when stderr cannot be written (a full disk).
            use std::io::Write as _;
            let _unwritable = writeln!(std::io::stderr(), "latchkeyd: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(config: &std::path::Path, json: bool, strict: bool) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkeyd: error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = runtime.block_on(daemon::doctor::run(
        config,
        &daemon::doctor::HostFiles::default(),
    ));
    if json {
        // One JSON array, like every list latchkey prints as JSON.
        println!("{}", serde_json::to_string(&findings).unwrap_or_default());
    } else {
        print!("{}", daemon::doctor::render(&findings));
    }
    match crate::service::hygiene::worst(&findings) {
        Level::Fail => ExitCode::FAILURE,
        Level::Warn if strict => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// `latchkeyd check-config`: the config as `serve` reads it, summarised.
fn check_config(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load_for_serving(path).map_err(|e| e.to_string())?;
    println!(
        "{}: OK (data dir {}, socket {}{}{}{})",
        path.display(),
        config.data_dir.display(),
        config.unix.path.display(),
        config
            .tls
            .as_ref()
            .map_or(String::new(), |t| format!(", tls {}", t.listen)),
        config
            .metrics
            .map_or(String::new(), |m| format!(", metrics {m}")),
        if config.dev_mode { ", DEV MODE" } else { "" }
    );
    Ok(())
}

fn write_man_pages(dir: &std::path::Path, date: &str) -> Result<(), String> {
    use clap::CommandFactory as _;
    let man = pages::ManPages {
        section: "8",
        date,
        extra: MAN_EXTRA,
    };
    man.write(Cli::command(), dir)
        .map(|_| ())
        .map_err(|e| format!("man pages in {}: {e}", dir.display()))
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Init {
            data_dir,
            trust_store_quorum,
            admin_role,
            tls_names,
            write_config,
            socket,
            dev_mode,
        } => {
            // The written config is read from anywhere (a unit, another shell): paths in it
            // are absolute, as `serve` requires.
            let absolute = |p: &std::path::Path| {
                std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
            };
            let data_dir = absolute(&data_dir)?;
            let socket = absolute(&socket)?;
            let opts = daemon::InitOptions {
                data_dir: data_dir.clone(),
                policy: TrustStorePolicy {
                    quorum: trust_store_quorum,
                    approver_role: admin_role,
                },
                tls_names,
                write_config: write_config.clone(),
                socket,
                dev_mode,
            };
            let fp = daemon::init(
                &opts,
                &(std::sync::Arc::new(SystemClock)
                    as std::sync::Arc<dyn crate::base::clock::Clock>),
            )
            .map_err(|e| e.to_string())?;
            println!("initialised trust store in {}", data_dir.display());
            println!("  audit key        {}", fp.audit_key);
            println!("  ssh user CA      {}", fp.ssh_user_ca);
            println!("  tls certificate  {}", fp.tls_certificate);
            println!("  tls spki         {}", fp.tls_spki);
            if let Some(path) = write_config {
                println!("wrote config {}", path.display());
            }
            Ok(())
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            pages::print_completions(Cli::command(), "latchkeyd", shell);
            Ok(())
        }
        Command::Man { dir, date } => write_man_pages(&dir, &date),
        Command::AcceptRollback { config } => {
            let config = Config::load_for_serving(&config).map_err(|e| e.to_string())?;
            let (before, now) = daemon::accept_rollback(&config).map_err(|e| e.to_string())?;
            match before {
                Some(before) => println!(
                    "accepted: the store's audit log ends at record {} (record {} was durable before); anchored at {}",
                    now.seq, before.seq, now.seq
                ),
                None => println!("anchored the store's audit head at record {}", now.seq),
            }
            Ok(())
        }
        Command::Store { command } => store_command(command),
        Command::Backup { config, output } => backup_command(&config, &output),
        Command::Restore { config, input, to } => restore_command(&config, &input, &to),
        Command::Serve { config } => {
            let config = Config::load_for_serving(&config).map_err(|e| e.to_string())?;
            crate::daemon::logging::init(config.log_format, &config.log_filter);
            let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
            runtime
                .block_on(daemon::serve_until(&config, std::future::pending()))
                .map_err(|e| e.to_string())
        }
        // Handled in `main` (it has its own exit status).
        Command::Doctor { .. } => Ok(()),
        Command::AdmitWorkload {
            data_dir,
            name,
            owner,
            cert,
            scopes,
            introspect,
        } => {
            let pem = std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let spki = crate::credential::keys::spki_sha256_of_pem(&pem)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let workload = Workload {
                name: name.clone(),
                owner,
                spki_sha256: hex::encode(spki),
                admitted_at: SystemClock.now(),
                scopes,
                introspect,
            };
            daemon::admit_workload_at_genesis(&data_dir, &workload).map_err(|e| e.to_string())?;
            println!(
                "admitted workload {name} (SPKI SHA-256 {})",
                workload.spki_sha256
            );
            Ok(())
        }
    }
}
