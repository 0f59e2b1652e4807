//! Exit codes: distinct per outcome, so a script can tell a revoked token from a
//! misconfiguration. Documented in README.md and in `latchkey --help`.

use std::process::ExitCode;

use crate::client::ClientError;

/// The answer is no: an inactive token, a failed drill, a tampered audit log.
pub(crate) const NO: u8 = 1;
/// latchkeyd refused the call (the message carries its stable code), or answered something
/// this CLI cannot use.
pub(crate) const REFUSED: u8 = 4;
/// latchkeyd could not be reached (or the connection broke).
pub(crate) const UNREACHABLE: u8 = 5;
/// A local problem: a key, a file, a TLS setting, or a digest this CLI refused to sign.
pub(crate) const LOCAL: u8 = 6;

/// What `latchkey --help` says about exit codes.
pub(crate) const HELP: &str = "Exit codes: 0 done (introspect: active); 1 no (inactive token, \
failed drill, tampered audit log); 2 usage; 3 audit log verified but its newest records not \
yet covered by a checkpoint; 4 latchkeyd refused (the error names its stable code); 5 \
latchkeyd unreachable; 6 a local problem (key, file, TLS).";

/// The exit code of a failed command.
pub(crate) fn for_error(e: &ClientError) -> ExitCode {
    ExitCode::from(match e {
        ClientError::Connect { .. } => UNREACHABLE,
        ClientError::RequestEnded { .. } => NO,
        // The same rule `wait` reconnects by: no stable code and a transport-shaped status.
        ClientError::Refused(status) if crate::client::access::is_connection_loss(status) => {
            UNREACHABLE
        }
        ClientError::Refused(_) | ClientError::Protocol(_) => REFUSED,
        _ => LOCAL,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes = [
            NO,
            super::super::audit::EXIT_UNVERIFIED_TAIL,
            REFUSED,
            UNREACHABLE,
            LOCAL,
        ];
        for (i, a) in codes.iter().enumerate() {
            assert!(codes[i + 1..].iter().all(|b| a != b), "{codes:?}");
            assert!(HELP.contains(&format!("{a} ")), "{a} is not in the help");
        }
    }
}
