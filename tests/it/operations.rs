//! Bastion operations (#7): drills end to end through the CLI (soft tokens, a real sshd),
//! metrics scraped by curl, and `latchkeyd doctor` turning each problem into a warning or a
//! failure.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use latchkey::base::clock::{Clock as _, ManualClock, Timestamp};
use latchkey::daemon::config::Config;
use latchkey::daemon::{self, doctor::HostFiles};
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::service::hygiene::{Finding, Level};

use crate::support::grants::{await_record, issue, script};
use crate::support::sshd::Sshd;
use crate::support::world::{Bg, code, db_root, secs, world_with};
use crate::support::{DaemonDir, latchkey_cli, latchkeyd};

/// Runs a CLI command off the async workers (the daemon under test runs on them).
async fn run(mut cmd: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A dev daemon in-process with metrics on an ephemeral loopback port, this user allowed to
/// introspect, and its config on disk for `latchkeyd doctor`.
async fn dev_daemon(extra: &str) -> Bg {
    let dir = DaemonDir::init();
    let uid = nix::unistd::geteuid().as_raw();
    let config_text = format!(
        "version = 1\ndata_dir = \"{}\"\ndev_mode = true\n[unix]\npath = \"{}\"\nintrospect_uids = [{uid}]\n\
         [fido2]\nrequire_user_verification = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        dir.data.display(),
        dir.socket.display()
    );
    std::fs::write(&dir.config, &config_text).unwrap();
    let config = Config::load(&dir.config).unwrap();
    let clock = ManualClock::new(latchkey::base::clock::SystemClock.now());
    let running = daemon::start(&config, Arc::new(clock.clone()))
        .await
        .unwrap();
    Bg {
        layer: None,
        dir,
        clock,
        running: Some(running),
        keys: HashMap::new(),
    }
}

fn cli(bg: &Bg) -> std::process::Command {
    let mut cmd = latchkey_cli();
    cmd.arg("--socket").arg(&bg.dir.socket);
    cmd
}

fn token(bg: &Bg, name: &str) -> PathBuf {
    bg.dir.dir.path().join(format!("{name}.token"))
}

async fn enroll_by_cli(bg: &Bg, operator: &str, role: &str) {
    let out = run({
        let mut c = cli(bg);
        c.args(["key", "enroll", "--operator", operator, "--role", role])
            .arg("--soft-token")
            .arg(token(bg, operator));
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
}

const DRILL_SCOPE: &str = r#"
name = "drill-db"
owner = "dba-team"
runbook = "Drill scope: request, approve, log in, revoke."
bearer = true
default_ttl_secs = 300
max_ttl_secs = 900

[ssh]
principals = ["root"]

[policy]
quorum = 2
approver_role = "dba-oncall"
require_uv = false
require_attested = false
pending_timeout_secs = 600
denials_to_reject = 1

[requesters]
roles = ["dba-oncall"]
"#;

/// carol, dave, erin of dba-oncall with soft tokens in files; the drill scope; admins alice
/// and bob (genesis closes).
async fn drill_world(extra: &str) -> Bg {
    let bg = dev_daemon(extra).await;
    for op in ["carol", "dave", "erin"] {
        enroll_by_cli(&bg, op, "dba-oncall").await;
    }
    let scope_file = bg.dir.dir.path().join("drill-db.toml");
    std::fs::write(&scope_file, DRILL_SCOPE).unwrap();
    let out = run({
        let mut c = cli(&bg);
        c.args(["scope", "put", "--file"]).arg(&scope_file);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    for op in ["alice", "bob"] {
        enroll_by_cli(&bg, op, "admin").await;
    }
    bg
}

fn drill_cmd(bg: &Bg) -> std::process::Command {
    let mut c = cli(bg);
    c.args(["drill", "--scope", "drill-db", "--operator", "carol"])
        .arg("--soft-token")
        .arg(token(bg, "carol"))
        .arg("--approver")
        .arg(format!("dave={}", token(bg, "dave").display()))
        .arg("--approver")
        .arg(format!("erin={}", token(bg, "erin").display()));
    c
}

async fn scrape(bg: &Bg) -> String {
    let addr = bg.running().metrics_addr().unwrap();
    let out = run({
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--fail", "--max-time", "30"])
            .arg(format!("http://{addr}/metrics"));
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

async fn doctor(bg: &Bg) -> (Output, String) {
    let out = run({
        let mut c = latchkeyd();
        c.arg("doctor").arg("--config").arg(&bg.dir.config);
        c
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

fn line<'a>(report: &'a str, level: &str, check: &str, containing: &str) -> Option<&'a str> {
    report.lines().find(|l| {
        l.starts_with(level) && l.split_whitespace().nth(1) == Some(check) && l.contains(containing)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_token_drill_passes_end_to_end_and_shows_in_metrics_and_doctor() {
    let bg = drill_world("[drill]\nmax_age_days = 1\n").await;
    let before = scrape(&bg).await;
    assert!(
        before.contains("latchkey_drill_seconds_since_success{scope=\"drill-db\"} +Inf\n"),
        "{before}"
    );
    let (_, report) = doctor(&bg).await;
    assert!(
        line(
            &report,
            "WARN",
            "drills.age",
            "drill-db has never passed a drill"
        )
        .is_some(),
        "{report}"
    );

    // A real sshd that trusts the daemon's CA and reads its KRL.
    let keys = latchkey::credential::keys::DaemonKeys::load(&bg.dir.data).unwrap();
    let krl = bg.dir.data.join("revoked-keys.krl");
    let sshd = Sshd::start(&keys.ssh_ca.public_key().to_openssh().unwrap(), Some(&krl));

    let out = run({
        let mut c = drill_cmd(&bg);
        c.args(["--ssh", "127.0.0.1", "--ssh-port"])
            .arg(sshd.port.to_string())
            .args([
                "--ssh-option",
                "StrictHostKeyChecking=no",
                "--ssh-option",
                "UserKnownHostsFile=/dev/null",
            ]);
        c
    })
    .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}\nsshd:\n{}", sshd.log());
    for step in [
        "request",
        "approvals",
        "mint",
        "introspect",
        "ssh-login",
        "revoke",
        "confirmation",
        "ssh-refused",
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([step, "passed"])),
            "step {step} did not pass:\n{shown}"
        );
    }
    assert!(shown.contains("drill of drill-db PASSED"), "{shown}");
    // sshd refused the revoked certificate itself (not a connection failure).
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());

    // The daemon remembers it.
    let drills = AccessServiceClient::new(bg.local().await)
        .list_drills(pb::ListDrillsRequest {})
        .await
        .unwrap()
        .into_inner()
        .scopes;
    assert_eq!(drills.len(), 1);
    let last = drills[0].last_passed.as_ref().unwrap();
    assert!(last.passed);
    assert_eq!(last.steps.len(), 8);
    let out = run({
        let mut c = cli(&bg);
        c.arg("drills");
        c
    })
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("drill-db  latest passed"),
        "{}",
        text(&out)
    );

    // Metrics.
    let after = scrape(&bg).await;
    for expected in [
        "latchkey_drill_seconds_since_success{scope=\"drill-db\"} 0\n",
        "latchkey_requests{state=\"issued\"} 1\n",
        "latchkey_votes_total{decision=\"approve\"} 2\n",
        "latchkey_grants_active 0\n",
        "latchkey_revocations{state=\"revoked\"} 1\n",
        "latchkey_revocation_unconfirmed_alarm 0\n",
        "latchkey_dev_mode 1\n",
    ] {
        assert!(after.contains(expected), "{expected}\n{after}");
    }
    let head = bg.running().authority().audit().head_seq();
    assert!(
        after.contains(&format!("latchkey_audit_head_sequence {head}\n")),
        "{after}"
    );

    // Doctor: the drill passes; dev mode is a failure on any bastion, so exit 1.
    let (out, report) = doctor(&bg).await;
    assert!(
        line(
            &report,
            "PASS",
            "drills.age",
            "scope drill-db: last passed drill"
        )
        .is_some(),
        "{report}"
    );
    assert!(
        line(&report, "FAIL", "daemon.dev_mode", "").is_some(),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{report}");

    // A day and a bit later the drill is stale.
    bg.clock.advance(Duration::from_secs(86_400 + 3600));
    let (_, report) = doctor(&bg).await;
    assert!(
        line(
            &report,
            "WARN",
            "drills.age",
            "scope drill-db: last passed drill 1 days ago"
        )
        .is_some(),
        "{report}"
    );
    assert!(
        scrape(&bg)
            .await
            .contains("latchkey_drill_seconds_since_success{scope=\"drill-db\"} 90000\n")
    );
    bg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_whose_approvals_fail_is_recorded_as_failed() {
    let bg = drill_world("").await;
    // erin is not an approver of another scope... she is of this one; use alice (admin only).
    let out = run({
        let mut c = cli(&bg);
        c.args(["drill", "--scope", "drill-db", "--operator", "carol"])
            .arg("--soft-token")
            .arg(token(&bg, "carol"))
            .arg("--approver")
            .arg(format!("alice={}", token(&bg, "alice").display()))
            .args(["--timeout", "1s"]);
        c
    })
    .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("approval.not_approver"), "{shown}");
    assert!(shown.contains("drill of drill-db FAILED"), "{shown}");
    let drills = AccessServiceClient::new(bg.local().await)
        .list_drills(pb::ListDrillsRequest {})
        .await
        .unwrap()
        .into_inner()
        .scopes;
    assert!(!drills[0].last.as_ref().unwrap().passed);
    assert!(drills[0].last_passed.is_none());
    let (_, report) = doctor(&bg).await;
    assert!(
        line(&report, "WARN", "drills.last_failed", "drill-db").is_some(),
        "{report}"
    );
    bg.stop().await;
}

fn step(name: &str, outcome: pb::DrillStepOutcome) -> pb::DrillStep {
    pb::DrillStep {
        name: name.into(),
        outcome: outcome.into(),
        took: Some(secs(0)),
        detail: String::new(),
    }
}

#[tokio::test]
async fn a_drill_report_is_refused_unless_it_is_the_requesters_confirmed_and_well_formed() {
    let mut w = world_with(db_root(600)).await;
    let credential = issue(&mut w, None, 3600).await;
    let grant =
        w.bg.running()
            .authority()
            .grant(&credential.grant_id)
            .unwrap();
    let request_id = grant.request_id.clone();
    let passed = vec![
        step("request", pb::DrillStepOutcome::Passed),
        step("revoke", pb::DrillStepOutcome::Passed),
    ];
    let record = |channel, steps: Vec<pb::DrillStep>, id: &str| {
        let id = id.to_owned();
        async move {
            AccessServiceClient::new(channel)
                .record_drill(pb::RecordDrillRequest {
                    request_id: id,
                    steps,
                })
                .await
        }
    };
    let before = w.bg.snapshot();

    // Claiming success while the grant is still active.
    let tls = w.bg.tls(&w.vault_db).await;
    let err = record(tls.clone(), passed.clone(), &request_id)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "drill.not_confirmed", "{err}");
    // Someone other than the requester.
    let err = record(w.bg.local().await, passed.clone(), &request_id)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "request.not_requester", "{err}");
    // Unknown request, unknown step, repeated step, no outcome, no steps.
    let err = record(tls.clone(), passed.clone(), "nope")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "request.unknown", "{err}");
    for steps in [
        vec![step("teleport", pb::DrillStepOutcome::Passed)],
        vec![
            step("mint", pb::DrillStepOutcome::Passed),
            step("mint", pb::DrillStepOutcome::Passed),
        ],
        vec![step("mint", pb::DrillStepOutcome::Unspecified)],
        vec![],
    ] {
        let err = record(tls.clone(), steps, &request_id).await.unwrap_err();
        assert_eq!(code(&err), "drill.malformed", "{err}");
    }
    assert!(w.bg.snapshot() == before, "refused reports change nothing");

    // Relinquished and confirmed: now it passes, once.
    AccessServiceClient::new(tls.clone())
        .relinquish(pb::RelinquishRequest {
            grant_id: credential.grant_id.clone(),
        })
        .await
        .unwrap();
    let subject = format!("grant/{}", credential.grant_id);
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revoked" && r.subject == subject
    })
    .await;
    let recorded = record(tls.clone(), passed.clone(), &request_id)
        .await
        .unwrap()
        .into_inner()
        .drill
        .unwrap();
    assert!(recorded.passed);
    assert_eq!(recorded.grant_id, credential.grant_id);
    assert_eq!(recorded.by, "workload/vault-db");
    let before = w.bg.snapshot();
    let err = record(tls, passed, &request_id).await.unwrap_err();
    assert_eq!(code(&err), "drill.already_recorded", "{err}");
    assert!(w.bg.snapshot() == before);
    let history = w.bg.running().authority().drills().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].scope, "db-root");
    w.bg.stop().await;
}

fn findings_with<'a>(findings: &'a [Finding], level: Level, check: &str) -> Vec<&'a Finding> {
    findings
        .iter()
        .filter(|f| f.level == level && f.check == check)
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_turns_each_problem_into_a_warning_or_a_failure() {
    let hooks = tempfile::tempdir().unwrap();
    let failing = script(
        hooks.path(),
        "down.sh",
        "echo 'bastion unreachable' >&2; exit 1",
    );
    let mut scope = db_root(600);
    scope.runbook = String::new();
    scope.runbook_url = String::new();
    scope.revocation_hook = vec![failing.display().to_string()];
    scope.revocation_deadline = Some(secs(60));
    let mut w = world_with(scope).await;
    let host = HostFiles::default();
    let findings = daemon::doctor::run(&w.bg.dir.config, &host).await;

    // Operators with one key; the scope without a runbook; never drilled; dev mode.
    let single = findings_with(&findings, Level::Warn, "operators.single_key");
    for op in ["carol", "erin", "alice", "bob"] {
        assert!(
            single
                .iter()
                .any(|f| f.detail.contains(&format!("operator {op} has 1"))),
            "{single:?}"
        );
    }
    assert!(
        !single.iter().any(|f| f.detail.contains("operator dave ")),
        "dave holds two keys"
    );
    assert!(
        findings_with(&findings, Level::Warn, "scopes.accountability")
            .iter()
            .any(|f| f.detail.contains("scope db-root has no runbook")),
        "{findings:?}"
    );
    assert_eq!(
        findings_with(&findings, Level::Warn, "drills.age").len(),
        1,
        "{findings:?}"
    );
    assert_eq!(
        findings_with(&findings, Level::Fail, "daemon.dev_mode").len(),
        1
    );
    // What is fine says so.
    for check in [
        "config.valid",
        "permissions.config",
        "permissions.data_dir",
        "permissions.keys",
        "permissions.store",
        "independence.filesystem",
        "independence.name_service",
        "clock.monotonic",
        "revocations.unconfirmed",
        "trust_store.genesis",
    ] {
        assert!(
            !findings_with(&findings, Level::Pass, check).is_empty(),
            "{check}: {findings:?}"
        );
    }

    // A revocation whose hook keeps failing past the deadline.
    let credential = issue(&mut w, None, 3600).await;
    AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .relinquish(pb::RelinquishRequest {
            grant_id: credential.grant_id.clone(),
        })
        .await
        .unwrap();
    let subject = format!("grant/{}", credential.grant_id);
    await_record(&w.bg, 1, |r| {
        r.event == "revocation.sink_failed" && r.subject == subject
    })
    .await;
    w.bg.clock.advance(Duration::from_secs(61));
    await_record(&w.bg, 1, |r| {
        r.event == "grant.revocation_unconfirmed" && r.subject == subject
    })
    .await;

    // Loose permissions on the config, the data dir and a key.
    let config = w.bg.dir.config.clone();
    let key = w.bg.dir.data.join("ssh-user-ca");
    chmod(&config, 0o666);
    chmod(&w.bg.dir.data, 0o750);
    chmod(&key, 0o640);

    // The clock set back behind the newest audit record.
    let now = w.bg.clock.now();
    w.bg.clock
        .set(Timestamp::from_unix_millis(now.unix_millis() - 600_000));

    // Groups from a directory service.
    let etc = tempfile::tempdir().unwrap();
    let nsswitch = etc.path().join("nsswitch.conf");
    std::fs::write(&nsswitch, "passwd: files\ngroup: files sss\n").unwrap();
    let group = etc.path().join("group");
    // root exists on the host (the config accepts it) but not in this group file.
    std::fs::write(&group, "staff:x:50:\n").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[unix]\n", "[unix]\nallow_groups = [\"root\"]\n"),
    )
    .unwrap();
    let host = HostFiles { nsswitch, group };

    let findings = daemon::doctor::run(&config, &host).await;
    let has = |level, check: &str, part: &str| {
        findings_with(&findings, level, check)
            .iter()
            .any(|f| f.detail.contains(part))
    };
    assert!(
        has(Level::Fail, "revocations.unconfirmed", &credential.grant_id),
        "{findings:?}"
    );
    assert!(
        has(
            Level::Fail,
            "permissions.config",
            "writable by group or others"
        ),
        "{findings:?}"
    );
    assert!(
        has(Level::Fail, "permissions.data_dir", "data directory"),
        "{findings:?}"
    );
    assert!(
        has(Level::Fail, "permissions.keys", "ssh-user-ca"),
        "{findings:?}"
    );
    assert!(
        has(Level::Fail, "clock.monotonic", "went backwards"),
        "{findings:?}"
    );
    assert!(
        has(Level::Warn, "independence.name_service", "through sss"),
        "{findings:?}"
    );
    assert!(
        has(
            Level::Warn,
            "independence.name_service",
            "group root is not in"
        ),
        "{findings:?}"
    );
    assert_eq!(latchkey::service::hygiene::worst(&findings), Level::Fail);
    chmod(&w.bg.dir.data, 0o700);
    chmod(&key, 0o600);
    w.bg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reads_the_store_itself_when_the_daemon_is_stopped() {
    let mut bg = Bg::start().await;
    let config = bg.dir.config.clone();
    bg.running.take().unwrap().shutdown().await.unwrap();
    let out = run({
        let mut c = latchkeyd();
        c.arg("doctor").arg("--config").arg(&config);
        c
    })
    .await;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    // Genesis is still open on a fresh store: said from the store, not from a daemon.
    assert!(
        line(&report, "WARN", "trust_store.genesis", "genesis is open").is_some(),
        "{}",
        text(&out)
    );
    assert!(
        line(&report, "PASS", "clock.monotonic", "").is_some(),
        "{report}"
    );
    assert!(
        line(&report, "FAIL", "daemon.dev_mode", "").is_some(),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_serves_only_metrics() {
    let bg = dev_daemon("").await;
    let addr = bg.running().metrics_addr().unwrap();
    let out = run({
        let mut c = std::process::Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
        ])
        .arg(format!("http://{addr}/debug"));
        c
    })
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "404",
        "{}",
        text(&out)
    );
    let scraped = scrape(&bg).await;
    assert!(
        scraped.contains("# TYPE latchkey_requests gauge\n"),
        "{scraped}"
    );
    assert!(
        scraped.contains("latchkey_requests{state=\"pending\"} 0\n"),
        "{scraped}"
    );
    bg.stop().await;
}

/// Metric names an expression uses (`latchkey_*`, `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word.starts_with("latchkey_") || word.starts_with("process_") {
                names.push(word.clone());
            }
            word.clear();
        }
    }
    names
}

fn exprs_in(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == "expr" || k == "query" => {
                        found.push(s.clone());
                    }
                    _ => exprs_in(v, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs_in(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_alert_rules_and_dashboard_use_only_metrics_the_daemon_exports() {
    let python = std::env::var("LATCHKEY_PYTHON").expect(
        "LATCHKEY_PYTHON is not set: run the suite through scripts/test (scripts/install-deps)",
    );
    let bg = drill_world("").await;
    let scraped = scrape(&bg).await;
    // Every metric family the daemon declares (a family may have no sample yet: no sink).
    let exported: std::collections::HashSet<&str> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in [
        "latchkey_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(exported.contains(name), "{name} missing:\n{scraped}");
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    // The rules file as Prometheus reads it: YAML (PyYAML), printed back as JSON.
    let out = run({
        let mut c = std::process::Command::new(&python);
        c.args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root.join("prometheus/latchkey-alerts.yml"));
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let rules: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules = rules["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 5);
    let mut exprs = Vec::new();
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        assert!(alert.starts_with("Latchkey"), "{rule}");
        for field in ["critical", "warning", "info"] {
            if rule["labels"]["severity"] == field {
                exprs.push(rule["expr"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{alert} has no summary"
        );
    }
    assert_eq!(exprs.len(), rules.len(), "every rule has a known severity");
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("latchkey_revocation_unconfirmed_alarm")),
        "the alarm the README says to alert on"
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/latchkey-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut panel_exprs = Vec::new();
    exprs_in(&dashboard["panels"], &mut panel_exprs);
    exprs_in(&dashboard["templating"], &mut panel_exprs);
    assert!(panel_exprs.len() >= 10, "{panel_exprs:?}");

    for expr in exprs.iter().chain(&panel_exprs) {
        for name in metric_names(expr) {
            assert!(
                exported.contains(name.as_str()),
                "`{expr}` uses {name}, which latchkeyd does not export:\n{scraped}"
            );
        }
    }
    bg.stop().await;
}

/// `latchkey --server ADDR --server-spki HEX …`, as a responder runs it on their own laptop
/// (no socket, no client certificate).
fn remote_cli(bg: &Bg, spki: &str) -> std::process::Command {
    let mut cmd = latchkey_cli();
    cmd.env_remove("LATCHKEY_SOCKET")
        .arg("--socket")
        .arg("/nonexistent/latchkeyd.sock")
        .arg("--server")
        .arg(bg.running().remote_addr().unwrap().to_string())
        .arg("--server-spki")
        .arg(spki);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn responders_request_approve_and_collect_from_their_own_devices_with_the_cli() {
    let bg = drill_world("[remote]\nlisten = \"127.0.0.1:0\"\n").await;
    // The fingerprint the responder copies from `latchkey status` on the bastion.
    let status = run({
        let mut c = cli(&bg);
        c.arg("status");
        c
    })
    .await;
    let spki = String::from_utf8_lossy(&status.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tls spki")
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no tls spki: {}", text(&status)));

    // carol asks from her laptop (one touch: the request's own).
    let (_, public) = crate::support::sshd::user_key(bg.dir.dir.path(), "carol");
    let asked = run({
        let mut c = remote_cli(&bg, &spki);
        c.args([
            "request",
            "--scope",
            "drill-db",
            "--operator",
            "carol",
            "--no-wait",
        ])
        .args([
            "--reason",
            "primary down; failing over by hand",
            "--soft-token",
        ])
        .arg(token(&bg, "carol"))
        .arg("--ssh-public-key")
        .arg(&public);
        c
    })
    .await;
    assert!(asked.status.success(), "{}", text(&asked));
    assert_eq!(
        text(&asked).matches("touch your key").count(),
        1,
        "{}",
        text(&asked)
    );
    let id = String::from_utf8_lossy(&asked.stdout).trim().to_owned();

    // Without saying who they are, a remote reader is told how.
    let anonymous = run({
        let mut c = remote_cli(&bg, &spki);
        c.args(["requests", "list"]);
        c
    })
    .await;
    assert_eq!(anonymous.status.code(), Some(4), "{}", text(&anonymous));
    assert!(
        text(&anonymous).contains("--as NAME"),
        "{}",
        text(&anonymous)
    );

    // dave and erin approve from theirs: a read session (to see the card), then the vote.
    for approver in ["dave", "erin"] {
        let out = run({
            let mut c = remote_cli(&bg, &spki);
            c.args(["approve", &id, "--operator", approver, "--soft-token"])
                .arg(token(&bg, approver));
            c
        })
        .await;
        let shown = text(&out);
        assert!(out.status.success(), "{shown}");
        assert!(
            shown.contains("requester operator/carol"),
            "a card: {shown}"
        );
    }

    // carol collects from her laptop (her delivery key stayed there).
    let collected = run({
        let mut c = remote_cli(&bg, &spki);
        c.env("LATCHKEY_SOFT_TOKEN", token(&bg, "carol"))
            .args(["--as", "carol", "wait", &id, "--ssh-public-key"])
            .arg(&public);
        c
    })
    .await;
    let shown = text(&collected);
    assert!(collected.status.success(), "{shown}");
    assert!(shown.contains("lkbg_"), "{shown}");
    // An admin proposes a change from her laptop: her key signs the proposal.
    let proposed = run({
        let mut c = remote_cli(&bg, &spki);
        c.env("LATCHKEY_SOFT_TOKEN", token(&bg, "alice"))
            .args(["--as", "alice", "scope", "remove", "drill-db"])
            .args(["--note", "the drill scope is retired"]);
        c
    })
    .await;
    let shown = text(&proposed);
    assert!(proposed.status.success(), "{shown}");
    assert!(
        shown.contains("touch your key to sign the proposal"),
        "{shown}"
    );
    assert!(
        shown.contains("operator/alice"),
        "the proposer is the key's operator: {shown}"
    );
    assert!(shown.contains("latchkey change approve "), "{shown}");

    let cert = public.with_file_name("carol-cert.pub");
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .starts_with("ssh-ed25519-cert-v01@openssh.com ")
    );
    bg.stop().await;
}
