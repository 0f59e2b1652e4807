//! Test harness: a data dir made by the real `latchkeyd init`, and a real daemon process whose
//! readiness is learned from its sd_notify READY message (no sleeps).

pub(crate) mod chromium;
pub(crate) mod etcd;
pub(crate) mod grants;
pub(crate) mod sshd;
pub(crate) mod world;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use latchkey::client::{self, ClientIdentity};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tonic::transport::Channel;

/// Upper bound on waiting for the daemon: a hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

pub(crate) fn latchkeyd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latchkeyd"))
}

/// The home the CLI runs with in tests (under the target dir, never the real `$HOME`): its
/// delivery keys, certificates and config stay out of the user's.
pub(crate) fn cli_home() -> PathBuf {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    home
}

/// Where the CLI keeps state in tests (`XDG_STATE_HOME`).
pub(crate) fn cli_state_home() -> PathBuf {
    cli_home().join(".local/state")
}

pub(crate) fn latchkey_cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.env("HOME", cli_home())
        .env("XDG_STATE_HOME", cli_state_home())
        .env("XDG_CONFIG_HOME", cli_home().join(".config"))
        .env_remove("LATCHKEY_CONFIG");
    cmd
}

/// A data dir initialised by `latchkeyd init`, with a config file beside it.
pub(crate) struct DaemonDir {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub init_stdout: String,
}

impl DaemonDir {
    pub(crate) fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket = dir.path().join("latchkeyd.sock");
        let config = dir.path().join("latchkeyd.toml");
        let out = latchkeyd()
            .arg("init")
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let this = Self {
            dir,
            data,
            config,
            socket,
            init_stdout: String::from_utf8(out.stdout).unwrap(),
        };
        this.write_config("");
        this
    }

    /// Writes a config for this dir with a TLS listener on an ephemeral port; `extra_unix`
    /// goes into the `[unix]` table.
    pub(crate) fn write_config(&self, extra_unix: &str) {
        let text = format!(
            "version = 1\ndata_dir = \"{}\"\n\n[log]\nformat = \"json\"\n\n[unix]\npath = \"{}\"\n{extra_unix}\n\n[tls]\nlisten = \"127.0.0.1:0\"\n",
            self.data.display(),
            self.socket.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub(crate) fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts `latchkeyd serve` and waits for READY.
    pub(crate) fn start(&self) -> Daemon {
        let log = std::fs::File::create(self.log_path()).unwrap();
        self.start_with(
            latchkeyd()
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .stderr(log),
            |_| {},
        )
    }

    /// Starts a command that ends up exec'ing `latchkeyd serve`, runs `on_spawn` on the child
    /// (whose stderr goes to the daemon log unless the command piped it), and waits for READY.
    pub(crate) fn start_with(
        &self,
        command: &mut Command,
        on_spawn: impl FnOnce(&mut Child),
    ) -> Daemon {
        let notify_path = self.dir.path().join(format!("notify-{}", rand_suffix()));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        let log = self.log_path();
        let mut child = command
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        on_spawn(&mut child);
        let mut daemon = Daemon {
            child,
            notify,
            log,
            addresses: Vec::new(),
        };
        let status = daemon.wait_for_notification("READY=1");
        let listening = status
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .unwrap_or_else(|| panic!("READY without STATUS: {status:?}"));
        daemon.addresses = listening.split(' ').map(str::to_owned).collect();
        daemon
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Runs `latchkeyd serve` expecting it to refuse to start.
    pub(crate) fn serve_expecting_failure(&self) -> Output {
        let out = latchkeyd()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "serve unexpectedly succeeded");
        out
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// A running `latchkeyd` process. Killed on drop if still running.
pub(crate) struct Daemon {
    child: Child,
    notify: UnixDatagram,
    log: PathBuf,
    pub addresses: Vec<String>,
}

impl Daemon {
    fn wait_for_notification(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + HANG_GUARD;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.lines().any(|l| l == needle) {
                        return msg;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "latchkeyd exited ({status}) before {needle}; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle} from latchkeyd; log:\n{}",
                self.log_text()
            );
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub(crate) fn tls_addr(&self) -> SocketAddr {
        self.addresses
            .iter()
            .find_map(|a| a.strip_prefix("tls:"))
            .expect("daemon has no TLS listener")
            .parse()
            .unwrap()
    }

    pub(crate) fn socket_path(&self) -> PathBuf {
        PathBuf::from(
            self.addresses
                .iter()
                .find_map(|a| a.strip_prefix("unix:"))
                .expect("daemon has no unix listener"),
        )
    }

    pub(crate) async fn unix_channel(&self) -> Channel {
        client::connect_unix(&self.socket_path()).await.unwrap()
    }

    /// Kills the process with SIGKILL (no cleanup) and reaps it.
    pub(crate) fn kill9(&mut self) {
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::from_raw(self.pid()), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit (and for STOPPING=1 first).
    pub(crate) fn terminate(mut self) -> ExitStatus {
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::from_raw(self.pid()), Signal::SIGTERM).unwrap();
        self.wait_for_notification("STOPPING=1");
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "latchkeyd did not exit; log:\n{}",
                self.log_text()
            );
            // Wake on the notify socket's read timeout rather than spinning.
            let mut buf = [0u8; 512];
            let _ = self.notify.recv(&mut buf);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A self-signed client certificate and key, written as PEM files.
pub(crate) struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    pub(crate) fn generate(dir: &Path, name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Self {
            cert: cert_path,
            key: key_path,
        }
    }

    pub(crate) fn identity(&self) -> ClientIdentity {
        ClientIdentity::from_pem_files(&self.cert, &self.key).unwrap()
    }

    /// Pins this certificate's key as a workload with `latchkeyd admit-workload`.
    pub(crate) fn admit(&self, data_dir: &Path, name: &str) {
        let out = latchkeyd()
            .args(["admit-workload", "--owner", "platform-team", "--name", name])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cert")
            .arg(&self.cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "admit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The daemon's TLS certificate, which TLS clients pin.
pub(crate) fn server_cert(data_dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(data_dir.join("tls-cert.pem")).unwrap()
}

pub(crate) async fn tls_channel(daemon: &Daemon, data_dir: &Path, cert: &ClientCert) -> Channel {
    client::connect_tls(daemon.tls_addr(), server_cert(data_dir), cert.identity())
        .await
        .unwrap()
}

/// Exports the audit log of the daemon on `dir`'s socket with the CLI and checks that
/// `latchkey audit verify` says it verifies; returns the export.
pub(crate) async fn export_verifies(dir: &DaemonDir) -> String {
    let socket = dir.socket.clone();
    let file = dir.dir.path().join("audit.jsonl");
    let (export, verified) = tokio::task::spawn_blocking(move || {
        let export = latchkey_cli()
            .arg("--socket")
            .arg(&socket)
            .args(["audit", "export", "--output"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(export.status.success(), "{export:?}");
        let verified = latchkey_cli()
            .arg("--socket")
            .arg(&socket)
            .args(["--json", "audit", "verify"])
            .arg(&file)
            .output()
            .unwrap();
        (std::fs::read_to_string(&file).unwrap(), verified)
    })
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&verified.stdout).unwrap_or_else(|e| panic!("{e}: {verified:?}"));
    assert_eq!(report["verified"], true, "{report}");
    export
}
