//! The commands the CLI tells people to run next. Each is built here, and a test parses every
//! one with the real clap tree: a printed hint always runs as shown (with the placeholders in
//! capitals filled in).

/// Approving a trust-store change.
pub(crate) fn approve_change(id: &str) -> String {
    format!("latchkey change approve {id} --operator YOU")
}

/// Approving a break-glass request.
pub(crate) fn approve_request(id: &str) -> String {
    format!("latchkey approve {id} --operator YOU")
}

/// Collecting a request's credential.
pub(crate) fn wait(id: &str) -> String {
    format!("latchkey wait {id}")
}

/// Drilling a scope.
pub(crate) fn drill(scope: &str) -> String {
    format!("latchkey drill --scope {scope} --operator YOU")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::super::Cli;

    #[test]
    fn every_hint_parses_with_the_cli_it_names() {
        for hint in [
            super::approve_change("c0ffee"),
            super::approve_request("c0ffee"),
            super::wait("c0ffee"),
            super::drill("db-root"),
            // Printed by the daemon in notifications and (with a scope name filled in) by
            // service::hygiene.
            crate::service::notifications::approve_line("c0ffee"),
            "latchkey drill --scope db-root --operator YOU".to_owned(),
        ] {
            let words: Vec<&str> = hint.split_whitespace().collect();
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("`{hint}` does not parse: {e}");
            }
        }
    }
}
