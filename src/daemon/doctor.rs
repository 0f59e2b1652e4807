//! `latchkeyd doctor`: the host checks (config, permissions, filesystems, name service), then
//! the store checks ([`crate::service::hygiene`]) from the running daemon over its socket, or from the
//! store itself when the daemon is stopped.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::base::clock::SystemClock;
use crate::base::constants::{AUDIT_KEY_FILE, SSH_CA_KEY_FILE, STORE_DIR, TLS_KEY_FILE};
use crate::base::fsperm;
use crate::daemon::config::Config;
use crate::service::hygiene::{Finding, Level};

/// Where the host's name-service configuration and local group file are.
#[derive(Clone, Debug)]
pub struct HostFiles {
    /// `/etc/nsswitch.conf`.
    pub nsswitch: PathBuf,
    /// `/etc/group`.
    pub group: PathBuf,
}

impl Default for HostFiles {
    fn default() -> Self {
        Self {
            nsswitch: PathBuf::from("/etc/nsswitch.conf"),
            group: PathBuf::from("/etc/group"),
        }
    }
}

/// Filesystems that put the trust store on another machine (or in user space), by statfs magic.
pub fn remote_filesystem(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0x517B => "smb",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x0102_1997 => "9p",
        0x00C3_6400 => "ceph",
        0x5346_414F => "afs",
        0x7375_7245 => "coda",
        0x0116_1970 => "gfs2",
        0x7461_636F => "ocfs2",
        0x0BD0_0BD0 => "lustre",
        0x6573_5546 => "fuse",
        _ => return None,
    })
}

/// The sources an nsswitch.conf text lists for `database` (e.g. `group`), actions removed.
pub fn nss_sources(nsswitch: &str, database: &str) -> Vec<String> {
    for line in nsswitch.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let Some((db, rest)) = line.split_once(':') else {
            continue;
        };
        if db.trim() == database {
            return rest
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .map(str::to_owned)
                .collect();
        }
    }
    // glibc's default when the database is not listed.
    vec!["files".to_owned()]
}

/// Sources that are neither local files nor systemd's own local databases.
fn directory_sources(sources: &[String]) -> Vec<String> {
    sources
        .iter()
        .filter(|s| !matches!(s.as_str(), "files" | "compat" | "systemd" | "altfiles"))
        .cloned()
        .collect()
}

/// Whether an /etc/group text defines `name`.
pub fn group_defined(group_file: &str, name: &str) -> bool {
    group_file
        .lines()
        .any(|l| l.split(':').next().is_some_and(|n| n == name))
}

fn fs_finding(what: &str, path: &Path) -> Finding {
    let probe = if path.exists() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    match nix::sys::statfs::statfs(&probe) {
        Ok(fs) => {
            // statfs's f_type is a platform-sized integer; magic numbers fit in 32 bits.
            #[allow(clippy::cast_lossless, clippy::useless_conversion)]
            let magic = i64::from(fs.filesystem_type().0);
            match remote_filesystem(magic) {
                Some(kind) => Finding::new(
                    Level::Fail,
                    "independence.filesystem",
                    format!(
                        "{what} {} is on {kind}: the trust store must not depend on another machine; move it to a local disk",
                        path.display()
                    ),
                ),
                None => Finding::new(
                    Level::Pass,
                    "independence.filesystem",
                    format!("{what} {} is on a local filesystem", path.display()),
                ),
            }
        }
        Err(e) => Finding::new(
            Level::Warn,
            "independence.filesystem",
            format!(
                "{what} {}: cannot tell its filesystem: {e}",
                probe.display()
            ),
        ),
    }
}

/// Checks that socket access does not hang on a directory service (the corporate IdP).
pub fn name_service_findings(config: &Config, files: &HostFiles) -> Vec<Finding> {
    let mut out = Vec::new();
    if config.unix.allow_groups.is_empty() {
        out.push(Finding::new(
            Level::Pass,
            "independence.name_service",
            "no [unix] allow_groups: socket access is by uid only",
        ));
        return out;
    }
    let nsswitch = std::fs::read_to_string(&files.nsswitch).unwrap_or_default();
    let remote = directory_sources(&nss_sources(&nsswitch, "group"));
    if !remote.is_empty() {
        out.push(Finding::new(
            Level::Warn,
            "independence.name_service",
            format!(
                "{} resolves groups through {}: if the directory is down, membership of [unix] allow_groups may be unknown; keep break-glass groups in /etc/group",
                files.nsswitch.display(),
                remote.join(", ")
            ),
        ));
    }
    let groups = std::fs::read_to_string(&files.group).unwrap_or_default();
    for g in &config.unix.allow_groups {
        if group_defined(&groups, g) {
            out.push(Finding::new(
                Level::Pass,
                "independence.name_service",
                format!("group {g} is defined locally in {}", files.group.display()),
            ));
        } else {
            out.push(Finding::new(
                Level::Warn,
                "independence.name_service",
                format!(
                    "group {g} is not in {}: it comes from a directory service, which break-glass must not need",
                    files.group.display()
                ),
            ));
        }
    }
    out
}

fn private_finding(check: &str, what: &str, path: &Path) -> Finding {
    match fsperm::check_private(path) {
        Ok(()) => Finding::new(
            Level::Pass,
            check,
            format!("{what} {} is private to its owner", path.display()),
        ),
        Err(e) => Finding::new(Level::Fail, check, format!("{what}: {e}")),
    }
}

/// Config file, data dir, keys and store: modes and filesystems.
pub fn file_findings(config_path: &Path, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    match std::fs::metadata(config_path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                out.push(Finding::new(
                    Level::Fail,
                    "permissions.config",
                    format!(
                        "{} is writable by group or others (mode {mode:04o}): anyone who can edit it can turn on dev mode; chmod 0644 or tighter",
                        config_path.display()
                    ),
                ));
            } else if meta.uid() != 0 && meta.uid() != nix::unistd::geteuid().as_raw() {
                out.push(Finding::new(
                    Level::Warn,
                    "permissions.config",
                    format!(
                        "{} is owned by uid {}, neither root nor this user",
                        config_path.display(),
                        meta.uid()
                    ),
                ));
            } else {
                out.push(Finding::new(
                    Level::Pass,
                    "permissions.config",
                    format!("{} (mode {mode:04o})", config_path.display()),
                ));
            }
        }
        Err(e) => out.push(Finding::new(
            Level::Fail,
            "permissions.config",
            format!("{}: {e}", config_path.display()),
        )),
    }
    out.push(private_finding(
        "permissions.data_dir",
        "data directory",
        &config.data_dir,
    ));
    for file in [AUDIT_KEY_FILE, SSH_CA_KEY_FILE, TLS_KEY_FILE] {
        out.push(private_finding(
            "permissions.keys",
            "key",
            &config.data_dir.join(file),
        ));
    }
    out.push(private_finding(
        "permissions.store",
        "store",
        &config.data_dir.join(STORE_DIR),
    ));
    out.push(fs_finding("data directory", &config.data_dir));
    out.push(fs_finding("KRL", &config.revocation.krl_path));
    out
}

async fn store_findings(config: &Config) -> Vec<Finding> {
    let socket = &config.unix.path;
    if socket.exists() {
        match crate::client::connect_unix(socket).await {
            Ok(channel) => {
                let mut client =
                    crate::pb::system_service_client::SystemServiceClient::new(channel);
                return match client.diagnose(crate::pb::DiagnoseRequest {}).await {
                    Ok(r) => r
                        .into_inner()
                        .findings
                        .iter()
                        .map(crate::rpc::finding_from_pb)
                        .collect(),
                    Err(e) => vec![Finding::new(
                        Level::Fail,
                        "store.reachable",
                        format!(
                            "the daemon on {} refused the diagnosis: {}",
                            socket.display(),
                            e.message()
                        ),
                    )],
                };
            }
            Err(e) => tracing::debug!("doctor: daemon not answering: {e}"),
        }
    }
    // The daemon is stopped: read the store directly, but only as the store's owner, so that
    // files the store creates keep the daemon's ownership.
    let owner = std::fs::metadata(&config.data_dir).map(|m| m.uid());
    if owner.as_ref().ok() != Some(&nix::unistd::geteuid().as_raw()) {
        return vec![Finding::new(
            Level::Warn,
            "store.reachable",
            format!(
                "the daemon does not answer on {} and this user does not own {}: run doctor as the daemon's user to check the store",
                socket.display(),
                config.data_dir.display()
            ),
        )];
    }
    match super::open_authority(config, Arc::new(SystemClock)) {
        Ok((authority, _)) => {
            let result = authority.diagnose(config.drill_max_age);
            if let Err(e) = authority.flush() {
                tracing::warn!("doctor: flushing the store: {e}");
            }
            match result {
                Ok(f) => f,
                Err(e) => vec![Finding::new(
                    Level::Fail,
                    "store.reachable",
                    format!("reading the store: {e}"),
                )],
            }
        }
        Err(e) => vec![Finding::new(
            Level::Fail,
            "store.reachable",
            format!("the daemon is not running and the store cannot be opened: {e}"),
        )],
    }
}

/// Every check, in order: config, files, name service, store.
pub async fn run(config_path: &Path, files: &HostFiles) -> Vec<Finding> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::new(Level::Fail, "config.valid", e.to_string())];
        }
    };
    let mut out = vec![Finding::new(
        Level::Pass,
        "config.valid",
        format!(
            "{} (no identity provider or network store can be configured: the store is embedded in {})",
            config_path.display(),
            config.data_dir.display()
        ),
    )];
    out.extend(file_findings(config_path, &config));
    out.extend(name_service_findings(&config, files));
    out.extend(store_findings(&config).await);
    out
}

/// The report as text lines: `LEVEL  check  detail`.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    findings
        .iter()
        .map(|f| format!("{}  {:width$}  {}\n", f.level.as_str(), f.check, f.detail))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_recognised_and_local_ones_are_not() {
        assert_eq!(remote_filesystem(0x6969), Some("nfs"));
        assert_eq!(remote_filesystem(0xFF53_4D42), Some("cifs"));
        assert_eq!(remote_filesystem(0x6573_5546), Some("fuse"));
        // ext4, xfs, btrfs, tmpfs
        for local in [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994] {
            assert_eq!(remote_filesystem(local), None);
        }
    }

    #[test]
    fn nsswitch_sources_are_read_per_database() {
        let text = "# comment\npasswd: files systemd\ngroup:  files [SUCCESS=merge] sss # x\n";
        assert_eq!(nss_sources(text, "group"), ["files", "sss"]);
        assert_eq!(directory_sources(&nss_sources(text, "group")), ["sss"]);
        assert!(directory_sources(&nss_sources(text, "passwd")).is_empty());
        assert_eq!(nss_sources("", "group"), ["files"]);
    }

    #[test]
    fn a_group_counts_as_local_only_when_the_file_defines_it() {
        let text = "root:x:0:\nlatchkey:x:990:alice,bob\n";
        assert!(group_defined(text, "latchkey"));
        assert!(!group_defined(text, "latch"));
        assert!(!group_defined(text, "alice"));
    }
}
