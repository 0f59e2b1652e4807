//! `latchkey`: the command-line client for responders and scripts. The clap tree and every
//! command are in `latchkey::client::cli`.

fn main() -> std::process::ExitCode {
    latchkey::client::cli::main()
}
