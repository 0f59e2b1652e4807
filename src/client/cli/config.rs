//! The client's own config, `~/.config/latchkey/client.toml` (or `$XDG_CONFIG_HOME/...`, or
//! `$LATCHKEY_CONFIG`): where the daemon is and who you are, so a responder at 3 a.m. types
//! `latchkey approve ID`, not six flags. Flags win over environment variables, which win over
//! this file.
//!
//! ```toml
//! version = 1
//! server = "bastion-1.example.net:7444"   # the remote operator port (omit on the bastion)
//! server_spki = "3480907e…"               # `tls spki` from `latchkey status` on the bastion
//! operator = "carol"                      # your operator name
//! # device = 1                           # with several USB keys plugged in
//! # piv = true                            # sign with the YubiKey's PIV applet
//! # socket = "/run/latchkey/latchkeyd.sock"
//! # soft_token = "/home/carol/carol.tok"  # dev daemons only
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The only version this client reads.
const VERSION: u32 = 1;

/// `client.toml`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Must be 1.
    pub version: u32,
    /// The remote operator port, `HOST:PORT`.
    pub server: Option<String>,
    /// The daemon's SPKI SHA-256, hex.
    pub server_spki: Option<String>,
    /// Your operator name.
    pub operator: Option<String>,
    /// The local socket (on the bastion).
    pub socket: Option<PathBuf>,
    /// A software token file (dev daemons only).
    pub soft_token: Option<PathBuf>,
    /// Which USB key, with several plugged in (`latchkey key devices`).
    pub device: Option<usize>,
    /// Sign with the YubiKey's PIV applet instead of FIDO2.
    #[serde(default)]
    pub piv: bool,
}

/// Where the config is looked for, and whether it was named (`LATCHKEY_CONFIG`).
pub fn path() -> Option<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os("LATCHKEY_CONFIG") {
        return Some((PathBuf::from(p), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some((base.join("latchkey").join("client.toml"), false))
}

/// Reads the config at `path`. A missing file is an empty config; so is an unreadable one at
/// the default place (another user's home after `sudo -u`), but not one that was named.
pub fn load(path: &Path, named: bool) -> Result<ClientConfig, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientConfig::default()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !named => {
            return Ok(ClientConfig::default());
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let config: ClientConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if config.version != VERSION {
        return Err(format!(
            "{}: version {} is not supported; this latchkey reads version {VERSION}",
            path.display(),
            config.version
        ));
    }
    Ok(config)
}

impl ClientConfig {
    /// The clap tree with this config's values as defaults (below flags and environment).
    pub fn apply(&self, mut cmd: clap::Command) -> clap::Command {
        let text = |p: &Path| p.display().to_string();
        let globals = [
            ("server", self.server.clone()),
            ("server_spki", self.server_spki.clone()),
            ("as_operator", self.operator.clone()),
            ("socket", self.socket.as_deref().map(text)),
        ];
        for (id, value) in globals {
            if let Some(value) = value {
                cmd = cmd.mut_arg(id, |a| a.default_value(value).required(false));
            }
        }
        // Every command's own --operator and --soft-token.
        let leaf = |c: clap::Command| -> clap::Command {
            let mut c = c;
            let ids: Vec<String> = c.get_arguments().map(|a| a.get_id().to_string()).collect();
            if let Some(op) = &self.operator
                && ids.iter().any(|i| i == "operator")
            {
                c = c.mut_arg("operator", |a| a.default_value(op.clone()).required(false));
            }
            if let Some(token) = &self.soft_token
                && ids.iter().any(|i| i == "soft_token")
            {
                c = c.mut_arg("soft_token", |a| a.default_value(text(token)));
            }
            if let Some(device) = self.device
                && ids.iter().any(|i| i == "device")
            {
                c = c.mut_arg("device", |a| a.default_value(device.to_string()));
            }
            if self.piv && ids.iter().any(|i| i == "piv") {
                c = c.mut_arg("piv", |a| a.default_value("true"));
            }
            c
        };
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            cmd = cmd.mut_subcommand(&name, |sub| {
                let nested: Vec<String> = sub
                    .get_subcommands()
                    .map(|s| s.get_name().to_owned())
                    .collect();
                let mut sub = leaf(sub);
                for inner in nested {
                    sub = sub.mut_subcommand(&inner, leaf);
                }
                sub
            });
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_selection_becomes_the_default_of_every_command_that_signs() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let config: ClientConfig =
            toml::from_str("version = 1\noperator = \"carol\"\ndevice = 2\npiv = true\n").unwrap();
        let matches = config
            .apply(super::super::Cli::command())
            .try_get_matches_from(["latchkey", "approve", "c0ffee"])
            .unwrap();
        let cli = super::super::Cli::from_arg_matches(&matches).unwrap();
        let super::super::Command::Approve(args) = cli.command else {
            panic!("not approve");
        };
        assert_eq!(args.operator, "carol");
        assert_eq!(args.key.device, Some(2));
        assert!(args.key.piv);
        // A flag still wins.
        let matches = config
            .apply(super::super::Cli::command())
            .try_get_matches_from(["latchkey", "approve", "c0ffee", "--operator", "dave"])
            .unwrap();
        let cli = super::super::Cli::from_arg_matches(&matches).unwrap();
        let super::super::Command::Approve(args) = cli.command else {
            panic!("not approve");
        };
        assert_eq!(args.operator, "dave");
    }

    #[test]
    fn an_unknown_key_or_version_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "version = 1\nserver = \"b:1\"\nsevrer_spki = \"x\"\n",
        )
        .unwrap();
        assert!(load(&path, false).unwrap_err().contains("sevrer_spki"));
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(load(&path, false).unwrap_err().contains("version 2"));
        assert_eq!(
            load(&dir.path().join("absent.toml"), true).unwrap(),
            ClientConfig::default()
        );
    }
}
