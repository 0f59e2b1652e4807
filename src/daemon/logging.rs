//! `tracing` set-up: human-readable on a terminal, one JSON object per line otherwise
//! (journald and log shippers read it as is).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::daemon::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `filter`. Safe to call more than once
/// (later calls are ignored).
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Otherwise a log line that cannot be written (stderr on a full disk) makes
        // tracing-subscriber `eprintln!` a complaint, which panics on that same stderr: the
        // daemon died at start, or aborted on SIGTERM. A lost log line must not stop it.
        .log_internal_errors(false);
    // A second init (e.g. in tests) fails harmlessly: keep the first subscriber.
    let _already_set = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
