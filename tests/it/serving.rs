//! Acceptance 2: health and Status over the local socket and over mutual TLS; unpinned TLS
//! clients and local users outside the allow-list are refused.

use latchkey::credential::keys::DaemonKeys;
use latchkey::pb;
use latchkey::pb::system_service_client::SystemServiceClient;
use latchkey::rpc::ERROR_CODE_METADATA;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{ClientCert, DaemonDir, latchkey_cli, tls_channel};

async fn health(channel: Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

fn error_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn health_and_status_are_served_over_the_local_socket() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let channel = daemon.unix_channel().await;

    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    assert_eq!(
        health(channel.clone(), "latchkey.v1.SystemService").await,
        ServingStatus::Serving
    );

    let status = SystemServiceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let keys = DaemonKeys::load(&dir.data).unwrap();
    let fp = status.fingerprints.clone().unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        status.store_schema_version,
        latchkey::base::constants::STORE_SCHEMA_VERSION
    );
    assert_eq!(status.genesis(), pb::GenesisState::Open);
    assert!(!status.dev_mode);
    assert_eq!(fp.audit_key, keys.fingerprints().audit_key);
    assert_eq!(fp.ssh_user_ca, keys.fingerprints().ssh_user_ca);
    assert_eq!(fp.tls_certificate, keys.fingerprints().tls_certificate);
    assert!(
        dir.init_stdout.contains(&fp.audit_key),
        "init printed other fingerprints"
    );
    match status.caller.unwrap().identity.unwrap() {
        pb::caller::Identity::Local(local) => {
            assert_eq!(local.uid, nix::unistd::geteuid().as_raw())
        }
        other => panic!("expected a local caller, got {other:?}"),
    }
}

#[tokio::test]
async fn the_cli_reports_status_over_the_socket() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let out = latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = DaemonKeys::load(&dir.data).unwrap();
    assert_eq!(
        view["ssh_user_ca"],
        keys.fingerprints().ssh_user_ca.as_str()
    );
    assert_eq!(view["genesis"], "open");
}

#[tokio::test]
async fn the_cli_says_clearly_when_no_daemon_listens() {
    let dir = tempfile::tempdir().unwrap();
    let out = latchkey_cli()
        .arg("--socket")
        .arg(dir.path().join("absent.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach latchkeyd"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn reflection_lists_the_latchkey_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = DaemonDir::init();
    let daemon = dir.start();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(daemon.unix_channel().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"latchkey.v1.SystemService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_pinned_tls_client_gets_health_and_status() {
    let dir = DaemonDir::init();
    let cert = ClientCert::generate(dir.dir.path(), "vault-plugin");
    cert.admit(&dir.data, "vault-plugin");
    let daemon = dir.start();
    let channel = tls_channel(&daemon, &dir.data, &cert).await;

    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    let status = SystemServiceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.genesis(), pb::GenesisState::Open);
    match status.caller.unwrap().identity.unwrap() {
        pb::caller::Identity::Workload(w) => {
            assert_eq!(w.name, "vault-plugin");
            let pem = std::fs::read(&cert.cert).unwrap();
            assert_eq!(
                w.spki_sha256,
                hex::encode(latchkey::credential::keys::spki_sha256_of_pem(&pem).unwrap())
            );
        }
        other => panic!("expected a workload caller, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tls_client_whose_key_is_not_pinned_is_unauthenticated() {
    let dir = DaemonDir::init();
    let pinned = ClientCert::generate(dir.dir.path(), "pinned");
    pinned.admit(&dir.data, "pinned");
    let stranger = ClientCert::generate(dir.dir.path(), "stranger");
    let daemon = dir.start();
    let channel = tls_channel(&daemon, &dir.data, &stranger).await;

    let err = SystemServiceClient::new(channel.clone())
        .status(pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(error_code(&err), "caller.not_pinned");
    let err = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}

#[tokio::test]
async fn a_tls_client_must_present_the_daemons_pinned_certificate_to_be_trusted() {
    // The client pins the daemon's certificate: another daemon's certificate is refused.
    let dir = DaemonDir::init();
    let other = DaemonDir::init();
    let cert = ClientCert::generate(dir.dir.path(), "w");
    cert.admit(&dir.data, "w");
    let daemon = dir.start();
    let result = latchkey::client::connect_tls(
        daemon.tls_addr(),
        crate::support::server_cert(&other.data),
        cert.identity(),
    )
    .await;
    let err = result.expect_err("connected to a daemon with an unpinned certificate");
    assert!(err.to_string().contains("cannot reach latchkeyd"), "{err}");
}

/// Runs `latchkey status` as uid/gid 65534 (nobody/nogroup) against `socket`.
fn status_as_nobody(socket: &std::path::Path) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to uid 65534 and must run as root (as the README's test command does)"
    );
    latchkey_cli()
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

fn open_socket_to_everyone(dir: &DaemonDir, socket: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // Defeat the 0660 file mode so that only the peer-credential check stands in the way.
    std::fs::set_permissions(dir.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

#[tokio::test]
async fn a_local_user_outside_the_allow_list_is_refused_by_peer_credentials() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let socket = daemon.socket_path();
    open_socket_to_everyone(&dir, &socket);

    let out = status_as_nobody(&socket);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("caller.local_not_allowed"), "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
}

#[tokio::test]
async fn a_local_user_in_the_allow_list_is_served() {
    let dir = DaemonDir::init();
    dir.write_config("allow_uids = [65534]");
    let daemon = dir.start();
    let socket = daemon.socket_path();
    open_socket_to_everyone(&dir, &socket);

    let out = status_as_nobody(&socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("local uid=65534"));
}

#[tokio::test]
async fn the_local_socket_is_created_with_mode_0660() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let mode = std::fs::metadata(daemon.socket_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test]
async fn the_cli_stays_quiet_when_its_reader_goes_away() {
    use std::io::Read as _;
    use std::process::Stdio;
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let mut child = latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `latchkey status | head -c0`: close the read end before it writes.
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
}
