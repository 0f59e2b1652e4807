//! What a newcomer sees (issue 27): every CLI error names its fix, hints run as printed.

use crate::support::{DaemonDir, latchkey_cli};

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let out = latchkey_cli().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_daemon_is_named_once_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon.sock");
    let (code, stderr) = stderr_of(&["--socket", socket.to_str().unwrap(), "status"]);
    assert_eq!(code, Some(5), "unreachable: {stderr}");
    assert!(stderr.contains("no socket there"), "{stderr}");
    assert!(
        stderr.contains("systemctl start latchkeyd.socket"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

#[test]
fn a_mistyped_soft_token_path_is_refused_and_never_created() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let typo = dir.dir.path().join("alcie.softtoken");
    let out = latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .args(["approve", "c0ffee", "--operator", "alice", "--soft-token"])
        .arg(&typo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused before anything is signed, and no new key appeared.
    assert_eq!(out.status.code(), Some(6), "a local problem: {stderr}");
    assert!(stderr.contains("no such file (a typo?"), "{stderr}");
    assert!(stderr.contains("key enroll"), "{stderr}");
    assert!(!typo.exists());
}

#[test]
fn an_unknown_state_filter_is_refused_by_the_cli_with_the_valid_ones() {
    let (code, stderr) = stderr_of(&["requests", "list", "--state", "bogus"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("pending") && stderr.contains("expired"),
        "{stderr}"
    );
    let (code, stderr) = stderr_of(&["grants", "--state", "bogus"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("revocation-unconfirmed"), "{stderr}");
}

#[test]
fn introspect_tells_inactive_refused_and_unreachable_apart_by_exit_code() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let introspect = |socket: &std::path::Path| {
        latchkey_cli()
            .arg("--socket")
            .arg(socket)
            .args(["introspect", "lkbg_no-such-token"])
            .output()
            .unwrap()
    };
    // Not in `introspect_uids`: refused, and the error says which setting allows it.
    let refused = introspect(&daemon.socket_path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("introspect_uids"), "{stderr}");
    drop(daemon);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.dir.path()).unwrap());
    dir.write_config(&format!("introspect_uids = [{uid}]"));
    let daemon = dir.start();
    // Allowed: an unknown token is inactive.
    let inactive = introspect(&daemon.socket_path());
    assert_eq!(
        inactive.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&inactive.stderr)
    );
    assert!(String::from_utf8_lossy(&inactive.stdout).contains("inactive"));
    drop(daemon);
    let gone = introspect(&dir.socket);
    assert_eq!(
        gone.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[tokio::test]
async fn a_requesters_wait_survives_a_daemon_restart() {
    use latchkey::client::access::{self, Target};
    use latchkey::domain::policy::Decision;

    use crate::support::world::{db_root, delivery_key, operator_request, world_with};
    let mut scope = db_root(600);
    scope.policy.as_mut().unwrap().quorum = 1;
    let mut w = world_with(scope).await;
    let asked = operator_request(&mut w, "dave").await;

    let channel = latchkey::client::connect_unix(&w.bg.dir.socket)
        .await
        .unwrap();
    let id = asked.id.clone();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let mut seen_tx = Some(seen_tx);
    let waiter = tokio::spawn(async move {
        access::wait(channel, &id, Some(&delivery_key()), move |_| {
            if let Some(tx) = seen_tx.take() {
                let _ = tx.send(());
            }
        })
        .await
    });
    // The wait is watching the pending request when the daemon goes away and comes back.
    seen.await.unwrap();
    w.bg.restart(|_| {}).await;
    w.bg.vote(
        Target::Request(asked.id.clone()),
        "carol",
        Decision::Approve,
        0,
    )
    .await
    .unwrap();
    let (request, credential) = waiter.await.unwrap().unwrap();
    assert_eq!(request.state(), latchkey::pb::RequestState::Issued);
    assert!(credential.unwrap().bearer_token.starts_with("lkbg_"));
    w.bg.stop().await;
}

#[test]
fn ssh_ca_prints_the_line_sshd_trusts() {
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let out = latchkey_cli()
        .arg("--socket")
        .arg(daemon.socket_path())
        .arg("ssh-ca")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = latchkey::credential::keys::DaemonKeys::load(&dir.data).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        keys.ssh_ca.public_key().to_openssh().unwrap()
    );
}

#[test]
fn both_binaries_print_shell_completions_from_their_clap_trees() {
    let out = latchkey_cli()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        script.contains("_latchkey()") && script.contains("approve"),
        "{script}"
    );
    let out = crate::support::latchkeyd()
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(script.starts_with("#compdef latchkeyd") && script.contains("check-config"));
}

#[tokio::test]
async fn every_refusal_carries_a_standard_error_info_with_its_code() {
    use tonic_types::StatusExt as _;
    let dir = DaemonDir::init();
    let daemon = dir.start();
    let channel = latchkey::client::connect_unix(&daemon.socket_path())
        .await
        .unwrap();
    let refused = latchkey::pb::access_service_client::AccessServiceClient::new(channel)
        .show_request(latchkey::pb::ShowRequestRequest {
            id: "no-such-request".into(),
        })
        .await
        .unwrap_err();
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "request.unknown");
    assert_eq!(info.domain, "latchkey");
    assert_eq!(
        refused
            .metadata()
            .get(latchkey::rpc::ERROR_CODE_METADATA)
            .unwrap(),
        "request.unknown"
    );
}

#[tokio::test]
async fn waiting_on_a_denied_request_exits_1_the_answer_is_no() {
    use latchkey::client::access::Target;
    use latchkey::domain::policy::Decision;

    use crate::support::world::{delivery_key, operator_request, world};
    let mut w = world(600, None).await;
    let asked = operator_request(&mut w, "dave").await;
    w.bg.vote(
        Target::Request(asked.id.clone()),
        "carol",
        Decision::Deny,
        0,
    )
    .await
    .unwrap();
    let key_file = w.bg.dir.dir.path().join("delivery.key");
    delivery_key().write_file(&key_file).unwrap();
    let mut wait = latchkey_cli();
    wait.arg("--socket")
        .arg(&w.bg.dir.socket)
        .args(["wait", &asked.id, "--delivery-key"])
        .arg(&key_file);
    // Off the runtime's thread: the daemon under test runs on it.
    let out = tokio::task::spawn_blocking(move || wait.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ended denied"), "{stderr}");
    w.bg.stop().await;
}

#[test]
fn doctor_json_is_one_array_like_every_list() {
    let dir = DaemonDir::init();
    let out = crate::support::latchkeyd()
        .args(["doctor", "--json", "--config"])
        .arg(&dir.config)
        .output()
        .unwrap();
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!findings.is_empty());
    assert!(
        findings
            .iter()
            .all(|f| f["check"].is_string() && f["level"].is_string())
    );
}
