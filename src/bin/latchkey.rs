//! `latchkey`: the command-line client for responders and scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use latchkey::client;
use latchkey::constants::{DEFAULT_SOCKET_PATH, SOCKET_ENV};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> Result<(), client::ClientError> {
    match cli.command {
        Command::Status => {
            let channel = client::connect_unix(&cli.socket).await?;
            let view = client::status(channel).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
            } else {
                println!("{view}");
            }
            Ok(())
        }
    }
}
