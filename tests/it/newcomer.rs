//! What a newcomer sees (issue 27): every CLI error names its fix, hints run as printed.

use std::process::Output;

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

#[test]
fn both_binaries_write_a_man_page_per_command_from_their_clap_trees() {
    let dir = tempfile::tempdir().unwrap();
    for mut bin in [latchkey_cli(), crate::support::latchkeyd()] {
        let out = bin
            .arg("man")
            .arg(dir.path())
            .args(["--date", "2026-12-07"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let top = page("latchkey.1");
    assert!(top.contains("\n.TH latchkey 1 2026-12-07 "), "{top}");
    assert!(
        top.contains("\n.SH FILES\n") && top.contains("\n.SH SEE ALSO\n"),
        "{top}"
    );
    assert!(
        top.contains("Exit codes:"),
        "the exit codes from --help: {top}"
    );
    // One page per command, with that command's own options.
    let approve = page("latchkey-approve.1");
    assert!(approve.contains("\\-\\-operator"), "{approve}");
    assert!(page("latchkey-change-approve.1").contains(".TH latchkey-change-approve 1"));
    let serve = page("latchkeyd-serve.8");
    assert!(serve.contains("\\-\\-config"), "{serve}");
    assert!(page("latchkeyd.8").contains("/etc/latchkey/latchkeyd.toml"));
    // Hidden commands have no page.
    assert!(!dir.path().join("latchkey-man.1").exists());
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

/// The commands of README's "Your first ten minutes", continuation lines joined, comments
/// dropped.
fn readme_walkthrough() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("### Your first ten minutes")
        .expect("README has the walkthrough")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the walkthrough has a sh block")
        .0;
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if pending.is_empty() && line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// Runs one walkthrough line as a newcomer's shell would, in the clone.
fn shell(clone: &std::path::Path, env: &[(&str, std::ffi::OsString)], line: &str) -> Output {
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", line]).current_dir(clone);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn shown(line: &str, out: &Output) -> String {
    format!(
        "$ {line}\nexit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Key touches so far, as the daemon recorded them: one per enrolled key, one per signed
/// assertion (every assertion is kept as evidence).
fn touches_in_audit(clone: &std::path::Path, env: &[(&str, std::ffi::OsString)]) -> usize {
    let out = shell(clone, env, "latchkey audit export -o .latchkey/audit.jsonl");
    assert!(out.status.success(), "{}", shown("audit export", &out));
    std::fs::read_to_string(clone.join(".latchkey/audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "authenticator.enrolled" || r.get("evidence").is_some())
        .count()
}

#[test]
#[allow(clippy::too_many_lines)] // one walkthrough, read top to bottom like the README
fn the_readme_walkthrough_runs_as_printed_from_init_to_drill() {
    let clone = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(clone.path().join("docs/examples")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/db-root.toml"),
        clone.path().join("docs/examples/db-root.toml"),
    )
    .unwrap();
    // What scripts/dev-up does, from the clone: init on relative paths, then serve.
    let init = crate::support::latchkeyd()
        .current_dir(clone.path())
        .args(["init", "--data-dir", ".latchkey/data"])
        .args(["--write-config", ".latchkey/latchkeyd.toml"])
        .args(["--socket", ".latchkey/latchkeyd.sock", "--dev-mode"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", shown("init", &init));
    let dir = DaemonDir {
        data: clone.path().join(".latchkey/data"),
        config: clone.path().join(".latchkey/latchkeyd.toml"),
        socket: clone.path().join(".latchkey/latchkeyd.sock"),
        init_stdout: String::from_utf8(init.stdout).unwrap(),
        dir: clone,
    };
    let daemon = dir.start();
    let clone = dir.dir.path();

    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_latchkey"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut path = std::ffi::OsString::from(&bin_dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let env = [
        ("PATH", path),
        ("LATCHKEY_SOCKET", daemon.socket_path().into_os_string()),
        ("HOME", home.path().as_os_str().to_owned()),
        ("XDG_STATE_HOME", home.path().join("state").into_os_string()),
        (
            "XDG_CONFIG_HOME",
            home.path().join(".config").into_os_string(),
        ),
    ];

    let commands = readme_walkthrough();
    assert_eq!(
        commands[0],
        r#"export PATH="$PWD/target/debug:$PATH" LATCHKEY_SOCKET="$PWD/.latchkey/latchkeyd.sock""#,
        "the first line sets what this test sets in `env`"
    );
    let mut request_id = None;
    let mut touches_before_request = None;
    let mut seen = Vec::new();
    for command in &commands[1..] {
        let line = match &request_id {
            Some(id) => command.replace(" ID ", &format!(" {id} ")),
            None => command.clone(),
        };
        assert!(
            !line.split_whitespace().any(|w| w == "ID"),
            "a placeholder before the request that fills it: {line}"
        );
        if line.starts_with("latchkey request ") {
            touches_before_request = Some(touches_in_audit(clone, &env));
        }
        let out = shell(clone, &env, &line);
        let text = shown(&line, &out);
        assert!(out.status.success(), "{text}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if line.starts_with("latchkey request ") {
            let id = stdout.trim().to_owned();
            assert_eq!(id.len(), 24, "stdout is the request id alone: {text}");
            // The hint it prints is what the README's approve lines run (YOU filled in).
            let hint = format!("latchkey approve {id} --operator YOU");
            assert!(stderr.contains(&format!("`{hint}`")), "{text}");
            assert!(stderr.contains(&format!("`latchkey wait {id}`")), "{text}");
            request_id = Some(id);
        }
        if line.starts_with("latchkey approve ") {
            let hint = format!(
                "latchkey approve {} --operator ",
                request_id.as_deref().unwrap()
            );
            assert!(line.starts_with(&hint), "README runs the hint: {line}");
            // A card, not JSON: who, what, why, what will be minted.
            for label in ["requester", "scope", "runbook", "reason", "ttl", "mints"] {
                assert!(
                    stderr.lines().any(|l| l.starts_with(label)),
                    "{label}: {text}"
                );
            }
            assert!(!stdout.contains("{\"") && !stderr.contains("{\""), "{text}");
        }
        seen.push(text);
    }
    let all = seen.join("\n");
    assert!(all.contains("genesis closed"), "{all}");
    assert!(
        all.contains("now issued (grant"),
        "the second approval issued: {all}"
    );
    assert!(all.contains("lkbg_"), "wait printed the token: {all}");
    let cert = std::fs::read_to_string(clone.join(".latchkey/carol_ed25519-cert.pub")).unwrap();
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    assert!(all.contains("drill of db-root PASSED"), "{all}");
    // The first setup cost one touch per operator enrolled, nothing else (five operators;
    // the last admin closed genesis, so no approvals were needed).
    assert_eq!(touches_before_request, Some(5), "{all}");

    // After genesis: a new operator is a change. Without a note the refusal names the flag;
    // with one, the printed hint runs as shown by both admins.
    let late =
        "latchkey key enroll --operator frank --role dba-oncall --soft-token .latchkey/frank.tok";
    let out = shell(clone, &env, late);
    let text = shown(late, &out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("add --note"), "{text}");
    let with_note = format!("{late} --note \"video call with frank; badge checked by alice\"");
    let out = shell(clone, &env, &with_note);
    let text = shown(&with_note, &out);
    assert!(out.status.success(), "{text}");
    let hint = String::from_utf8_lossy(&out.stdout)
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("a hint in backquotes: {text}"))
        .to_owned();
    assert!(hint.starts_with("latchkey change approve "), "{text}");
    for (admin, outcome) in [("alice", "now pending"), ("bob", "now applied")] {
        let line = format!(
            "{} --soft-token .latchkey/{admin}.tok",
            hint.replace("YOU", admin)
        );
        let out = shell(clone, &env, &line);
        let text = shown(&line, &out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(outcome), "{text}");
        assert!(!text.contains("{\""), "a card, not JSON: {text}");
    }
    let out = shell(clone, &env, "latchkey operator show frank");
    assert!(
        out.status.success(),
        "{}",
        shown("operator show frank", &out)
    );

    // With ~/.config/latchkey/client.toml saying who you are, approving is `approve ID`.
    let ask = "latchkey request --scope db-root --operator carol --soft-token .latchkey/carol.tok \
               --no-wait --reason 'INC-2: replica lagging' --ssh-public-key .latchkey/carol_ed25519.pub";
    let out = shell(clone, &env, ask);
    assert!(out.status.success(), "{}", shown(ask, &out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let config_dir = home.path().join(".config/latchkey");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("client.toml"),
        "version = 1\noperator = \"dave\"\nsoft_token = \".latchkey/dave.tok\"\n",
    )
    .unwrap();
    let approve = format!("latchkey approve {id}");
    let out = shell(clone, &env, &approve);
    let text = shown(&approve, &out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 of 2 approvals"), "{text}");
    // A mistyped key in it is named, with the file.
    std::fs::write(
        config_dir.join("client.toml"),
        "version = 1\noperater = \"dave\"\n",
    )
    .unwrap();
    let out = shell(clone, &env, &approve);
    let text = shown(&approve, &out);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(
        text.contains("client.toml") && text.contains("operater"),
        "{text}"
    );
    drop(daemon);
}
