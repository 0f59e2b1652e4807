//! A real Debian `sshd` on a loopback port, trusting a given user CA, and the real `ssh` client
//! logging in to it. sshd's default principal rule applies: a certificate logs in as a user
//! only if the user's name is one of its principals (no AuthorizedPrincipalsFile), so "refused"
//! means sshd's certificate check refused, which the test confirms from sshd's own log.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The outcome of one `ssh` login.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoginOutcome {
    /// Authenticated and ran `true`.
    Accepted,
    /// Refused; `ssh`'s stderr.
    Refused(String),
}

/// A running sshd; killed on drop.
pub(crate) struct Sshd {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    // Bind port 0, read the port, release it for sshd (which cannot bind port 0 itself).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A new Ed25519 key written as `dir/name` (0600) and `dir/name.pub`.
pub(crate) fn user_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let private = dir.join(name);
    write_private(&private, &key.to_openssh(ssh_key::LineEnding::LF).unwrap());
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, key.public_key().to_openssh().unwrap()).unwrap();
    (private, public)
}

impl Sshd {
    /// Starts sshd trusting `ca_public_openssh`, optionally with `RevokedKeys`, and returns
    /// once it logged that it listens.
    pub(crate) fn start(ca_public_openssh: &str, revoked_keys: Option<&Path>) -> Sshd {
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (host_key, _) = user_key(dir.path(), "host_ed25519");
        let ca = dir.path().join("user_ca.pub");
        std::fs::write(&ca, format!("{}\n", ca_public_openssh.trim())).unwrap();
        let port = free_port();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
             TrustedUserCAKeys {}\nAuthorizedKeysFile none\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n",
            host_key.display(),
            ca.display()
        );
        if let Some(krl) = revoked_keys {
            config.push_str(&format!("RevokedKeys {}\n", krl.display()));
        }
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/usr/sbin/sshd (Debian openssh-server; scripts/install-deps installs it)");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server listening on") {
                    let _ = ready_tx.send(Ok(()));
                }
                sink.lock().unwrap().push(line);
            }
            let _ = ready_tx.send(Err(()));
        });
        // Blocks until sshd says it listens, or its stderr closes (it died).
        let ready = ready_rx.recv().unwrap();
        assert!(
            ready.is_ok(),
            "sshd did not start: {:?}",
            log.lock().unwrap()
        );
        Sshd {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// What sshd logged so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Logs in as `user` with the key and certificate and runs `true`.
    pub(crate) fn login(&self, user: &str, private_key: &Path, certificate: &Path) -> LoginOutcome {
        let out = Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
            ])
            .arg(format!("CertificateFile={}", certificate.display()))
            .arg("-i")
            .arg(private_key)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .expect("ssh (Debian openssh-client)");
        if out.status.success() {
            LoginOutcome::Accepted
        } else {
            LoginOutcome::Refused(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `ssh-keygen -Q` finds `cert` revoked by the KRL at `krl` (and says anything at all
/// about it).
pub(crate) fn krl_revokes(krl: &Path, cert: &Path) -> bool {
    let query = std::process::Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&query.stdout);
    assert!(
        said.contains(": ok") || said.contains("REVOKED"),
        "ssh-keygen -Q: {said}"
    );
    said.contains("REVOKED")
}
