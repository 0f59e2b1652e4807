//! Acceptance 3 and 4: clean shutdown on SIGTERM, stable keys across restarts, and startup
//! refusals that name the problem on one line.

use std::os::unix::fs::PermissionsExt as _;

use latchkey::base::constants::STORE_SCHEMA_VERSION;
use latchkey::pb;
use latchkey::pb::system_service_client::SystemServiceClient;
use latchkey::store::{self, Keyspace, SledStore, Store as _, Txn};

use crate::support::{DaemonDir, latchkeyd};

async fn fingerprints(daemon: &crate::support::Daemon) -> pb::KeyFingerprints {
    SystemServiceClient::new(daemon.unix_channel().await)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .fingerprints
        .unwrap()
}

fn one_line_stderr(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    stderr
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket_and_a_restart_keeps_the_keys() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let socket = daemon.socket_path();
    let before = fingerprints(&daemon).await;
    assert!(socket.exists());

    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket file left behind");

    let restarted = dir.start();
    assert_eq!(fingerprints(&restarted).await, before);
    assert!(restarted.terminate().success());
}

#[tokio::test]
async fn a_daemon_whose_log_cannot_be_written_still_serves_and_stops_cleanly() {
    let dir = DaemonDir::init();
    // /dev/full: every write fails with ENOSPC, as a log on a full filesystem does.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let daemon = dir.start_with(
        latchkeyd()
            .arg("serve")
            .arg("--config")
            .arg(&dir.config)
            .stdout(full.try_clone().unwrap())
            .stderr(full),
        |_| {},
    );
    let _ = fingerprints(&daemon).await;
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn an_idle_open_connection_does_not_hold_up_shutdown() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let mut client = SystemServiceClient::new(daemon.unix_channel().await);
    client.status(pb::StatusRequest {}).await.unwrap();
    // The client keeps its HTTP/2 connection open; graceful shutdown must still complete.
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(client.status(pb::StatusRequest {}).await.is_err());
}

#[test]
fn a_config_with_an_unknown_field_stops_startup() {
    let dir = DaemonDir::init();
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\nlisten_everywhere = true\n",
        dir.data.display()
    ));
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(
        stderr.contains("unknown field `listen_everywhere`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn check_config_accepts_a_good_config_and_names_the_line_of_a_bad_one() {
    let dir = DaemonDir::init();
    let ok = crate::support::latchkeyd()
        .args(["check-config", "--config"])
        .arg(&dir.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(": OK (data dir"), "{stdout}");
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\nlisten_everywhere = true\n",
        dir.data.display()
    ));
    let bad = crate::support::latchkeyd()
        .args(["check-config", "--config"])
        .arg(&dir.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("unknown field `listen_everywhere`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn a_world_readable_key_file_stops_startup() {
    let dir = DaemonDir::init();
    let key = dir.data.join("ssh-user-ca");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(
        !dir.socket.exists(),
        "a refused start must not leave a socket"
    );
}

/// Asks the daemon for a fresh checkpoint: one more durable audit record.
async fn write_a_record(daemon: &crate::support::Daemon) -> u64 {
    pb::audit_service_client::AuditServiceClient::new(daemon.unix_channel().await)
        .write_checkpoint(pb::WriteCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .checkpoint_seq
}

#[tokio::test]
async fn a_store_restored_from_an_older_copy_is_refused_until_the_rollback_is_accepted() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let old_head = write_a_record(&daemon).await;
    assert!(daemon.terminate().success());
    let store = dir.data.join("store");
    let old_copy = dir.dir.path().join("store-old");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&old_copy)
        .status()
        .unwrap();
    assert!(copied.success());

    // The daemon serves on: a revocation, say, becomes durable at a later record.
    let daemon = dir.start();
    let anchored = {
        // A change (a scope, applied at once during genesis) and its checkpoint.
        let channel = daemon.unix_channel().await;
        pb::trust_service_client::TrustServiceClient::new(channel)
            .propose_change(pb::ProposeChangeRequest {
                note: "bootstrap".into(),
                change: Some(pb::propose_change_request::Change::PutScope(
                    crate::support::world::db_root(600),
                )),
                ..Default::default()
            })
            .await
            .unwrap();
        write_a_record(&daemon).await
    };
    assert!(daemon.terminate().success());
    assert!(anchored > old_head, "{anchored} > {old_head}");

    // The store goes back in time.
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&old_copy, &store).unwrap();
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains("went back in time"), "{stderr}");
    assert!(
        stderr.contains(&format!("ends at record {old_head}"))
            && stderr.contains(&format!("record {anchored} was durable")),
        "{stderr}"
    );
    assert!(stderr.contains("latchkeyd accept-rollback"), "{stderr}");
    assert!(!dir.socket.exists());

    // The operator accepts it: the daemon serves the older state, and the log says so.
    let accepted = latchkeyd()
        .arg("accept-rollback")
        .arg("--config")
        .arg(&dir.config)
        .output()
        .unwrap();
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let daemon = dir.start();
    let records = pb::audit_service_client::AuditServiceClient::new(daemon.unix_channel().await)
        .read_records(pb::ReadRecordsRequest {
            from_seq: 1,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let accepted = records
        .iter()
        .find(|r| r.event == "store.rollback_accepted")
        .expect("the acceptance is audited");
    assert_eq!(
        accepted.seq,
        old_head + 1,
        "recorded right after the served state"
    );
    assert!(
        accepted
            .json
            .contains(&format!("\"anchored_seq\":{anchored}")),
        "{}",
        accepted.json
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_config_that_others_may_write_stops_startup() {
    let dir = DaemonDir::init();
    for mode in [0o666, 0o664] {
        std::fs::set_permissions(&dir.config, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = dir.serve_expecting_failure();
        let stderr = one_line_stderr(&out);
        assert!(
            stderr.contains(&dir.config.display().to_string()),
            "{stderr}"
        );
        assert!(stderr.contains("chmod go-w"), "{stderr}");
    }
    assert!(!dir.socket.exists());
}

#[test]
fn a_key_file_owned_by_another_user_stops_startup() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test gives a key to another uid: run the suite as root (scripts/test does)"
    );
    let dir = DaemonDir::init();
    let key = dir.data.join("ssh-user-ca");
    // 0600 and readable by root, but another user could have swapped it.
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(!dir.socket.exists());
}

#[test]
fn a_group_readable_data_dir_stops_startup() {
    let dir = DaemonDir::init();
    std::fs::set_permissions(&dir.data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains("chmod 700"), "{stderr}");
}

#[test]
fn a_store_of_a_newer_schema_stops_startup() {
    let dir = DaemonDir::init();
    {
        let store = SledStore::open(&dir.data.join("store")).unwrap();
        let mut txn = Txn::new();
        txn.put_raw(
            Keyspace::Meta,
            store::SCHEMA_VERSION_KEY,
            store::schema_version_bytes(STORE_SCHEMA_VERSION + 1),
        );
        store.commit(&txn).unwrap();
    }
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(
        stderr.contains(&format!(
            "schema version {} is newer",
            STORE_SCHEMA_VERSION + 1
        )),
        "{stderr}"
    );
    assert!(stderr.contains("upgrade latchkeyd"), "{stderr}");
}

#[test]
fn init_refuses_to_overwrite_an_existing_store() {
    let dir = DaemonDir::init();
    let before = std::fs::read(dir.data.join("audit-key")).unwrap();
    let out = latchkeyd()
        .arg("init")
        .arg("--data-dir")
        .arg(&dir.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(std::fs::read(dir.data.join("audit-key")).unwrap(), before);
}

#[test]
fn init_creates_a_private_directory_and_private_files() {
    let dir = DaemonDir::init();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.data), 0o700);
    for entry in std::fs::read_dir(&dir.data).unwrap() {
        let path = entry.unwrap().path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}

#[test]
fn serve_without_a_store_says_to_run_init() {
    let dir = DaemonDir::init();
    std::fs::remove_dir_all(dir.data.join("store")).unwrap();
    let out = dir.serve_expecting_failure();
    let stderr = one_line_stderr(&out);
    assert!(stderr.contains("latchkeyd init"), "{stderr}");
}

#[tokio::test]
async fn systemd_socket_activation_serves_the_inherited_socket() {
    let dir = DaemonDir::init();
    // TLS stays off here: only the Unix socket is passed in.
    dir.write_raw_config(&format!(
        "version = 1\ndata_dir = \"{}\"\n[unix]\npath = \"/nonexistent/ignored.sock\"\n",
        dir.data.display()
    ));
    let socket = dir.dir.path().join("activated.sock");
    let activate = which("systemd-socket-activate");
    let mut command = std::process::Command::new(activate);
    command
        .arg("--listen")
        .arg(&socket)
        .arg("--setenv=NOTIFY_SOCKET")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_latchkeyd"))
        .arg("serve")
        .arg("--config")
        .arg(&dir.config);
    // systemd-socket-activate binds, says "Listening on ...", and execs the daemon only when
    // the first connection arrives: read that line, then connect.
    let mut first_connection = None;
    let daemon = dir.start_with(command.stderr(std::process::Stdio::piped()), |child| {
        use std::io::BufRead as _;
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("Listening on"),
            "unexpected activator output: {line}"
        );
        first_connection = Some(std::os::unix::net::UnixStream::connect(&socket).unwrap());
        // Keep draining so the daemon never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    });
    assert!(first_connection.is_some());
    assert_eq!(daemon.addresses, vec![format!("unix:{}", socket.display())]);
    let fp = fingerprints(&daemon).await;
    assert!(fp.audit_key.starts_with("SHA256:"));
    assert!(daemon.terminate().success());
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{program} not found: install the systemd package (scripts/install-deps does)")
        })
}

#[tokio::test]
async fn a_flipped_byte_anywhere_in_the_log_never_serves_an_older_state() {
    use latchkey::audit::anchor::Anchor;
    let dir = DaemonDir::init();
    let daemon = dir.start();
    for name in ["a", "b", "c"] {
        let mut scope = crate::support::world::db_root(600);
        scope.name = format!("scope-{name}");
        pb::trust_service_client::TrustServiceClient::new(daemon.unix_channel().await)
            .propose_change(pb::ProposeChangeRequest {
                note: "bootstrap".into(),
                change: Some(pb::propose_change_request::Change::PutScope(scope)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(daemon.terminate().success());
    let store_dir = dir.data.join("store");
    let head = |path: &std::path::Path| {
        let store = SledStore::open(path).unwrap();
        store.last(Keyspace::Audit).unwrap().unwrap()
    };
    let original = head(&store_dir);
    let log_len = std::fs::metadata(store_dir.join("db")).unwrap().len();
    for percent in [10u64, 50, 90] {
        let copy = dir.dir.path().join(format!("store-{percent}"));
        assert!(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&store_dir)
                .arg(&copy)
                .status()
                .unwrap()
                .success()
        );
        let at = log_len * percent / 100;
        let mut bytes = std::fs::read(copy.join("db")).unwrap();
        bytes[usize::try_from(at).unwrap()] ^= 0x40;
        std::fs::write(copy.join("db"), bytes).unwrap();
        // What `serve` does before listening: open the store, check it against the anchor.
        let refused = match SledStore::open(&copy) {
            Err(_) => true,
            Ok(store) => Anchor::new(dir.data.join("audit.anchor"))
                .check(&store)
                .is_err(),
        };
        if !refused {
            // The flip hit bytes sled does not read: the state must be exactly the newest.
            assert_eq!(
                head(&copy),
                original,
                "flip at {percent}% served another state"
            );
        }
    }
}
