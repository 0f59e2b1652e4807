//! Approver notifications (#24): a command sink and an HTTPS webhook (a real loopback TLS
//! server) hear of a new request with its card and the approve line; a failing sink is
//! retried and audited while the request goes on without it.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use latchkey::client::access::Target;
use latchkey::domain::policy::Decision;
use latchkey::pb;

use crate::support::grants::{all_records, await_record, script};
use crate::support::world::{db_root, operator_request, world_configured};

/// A loopback HTTPS server (rustls, hyper) that answers 200 and hands over every POST body.
async fn webhook_server(
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/hook");
                            assert_eq!(
                                req.headers()[hyper::header::AUTHORIZATION],
                                "Bearer s3cret"
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(serde_json::from_slice(&body).unwrap());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, rx)
}

fn private_file(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, three sinks
async fn sinks_hear_of_a_new_request_and_a_failing_one_is_retried_and_audited_while_it_proceeds() {
    let sinks = tempfile::tempdir().unwrap();
    let dir = sinks.path();
    let pager_out = dir.join("pager.json");
    let pager = script(dir, "pager.sh", &format!("cat > {}", pager_out.display()));
    // Fails its first call, then works.
    let flaky = script(
        dir,
        "flaky.sh",
        &format!(
            "if [ ! -e {m} ]; then touch {m}; echo 'pager service down' >&2; exit 3; fi\ncat > /dev/null",
            m = dir.join("failed-once").display()
        ),
    );
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
    let (port, mut posts) = webhook_server(cert).await;
    private_file(
        &dir.join("url"),
        &format!("https://localhost:{port}/hook\n"),
    );
    private_file(&dir.join("token"), "s3cret\n");
    let extra = format!(
        r#"[metrics]
listen = "127.0.0.1:0"
[notify]
retry_initial_ms = 10
[[notify.sink]]
name = "pager"
command = ["{pager}"]
scopes = ["db-root"]
events = ["request_created"]
[[notify.sink]]
name = "flaky"
command = ["{flaky}"]
events = ["request_created"]
[[notify.sink]]
name = "chat"
webhook_url_file = "{url}"
webhook_token_file = "{token}"
webhook_ca_file = "{ca}"
"#,
        pager = pager.display(),
        flaky = flaky.display(),
        url = dir.join("url").display(),
        token = dir.join("token").display(),
        ca = dir.join("ca.pem").display(),
    );
    let mut w = world_configured(db_root(600), &extra).await;
    let head = all_records(w.bg.local().await).await.len() as u64;
    let asked = operator_request(&mut w, "dave").await;
    let approve = format!("latchkey approve {} --operator YOU", asked.id);

    // The webhook: the card and the approve line, in JSON and in Slack's `text`.
    let posted = tokio::time::timeout(Duration::from_secs(60), posts.recv())
        .await
        .expect("the webhook was never called (a minute of real time)")
        .unwrap();
    assert_eq!(posted["event"], "request_created", "{posted}");
    assert_eq!(posted["scope"], "db-root");
    assert_eq!(posted["request"]["id"], asked.id.as_str());
    assert_eq!(posted["request"]["requester"], "operator/dave");
    assert_eq!(posted["request"]["owner"], "dba-team");
    assert_eq!(posted["request"]["approver_role"], "dba-oncall");
    assert!(!posted["request"]["runbook"].as_str().unwrap().is_empty());
    assert_eq!(posted["approve"], approve.as_str());
    assert!(
        posted["text"].as_str().unwrap().contains(&approve),
        "{posted}"
    );

    // The command: the same event on its stdin, once delivered.
    await_record(&w.bg, head, |r| {
        r.event == "notify.delivered" && r.subject == "notify/pager"
    })
    .await;
    let told: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pager_out).unwrap()).unwrap();
    assert_eq!(told["event"], "request_created");
    assert_eq!(told["approve"], approve.as_str());
    assert_eq!(told["request"]["reason"], posted["request"]["reason"]);

    // The request goes on whatever the flaky sink does: approved and issued.
    let voted =
        w.bg.vote(
            Target::Request(asked.id.clone()),
            "carol",
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    assert_eq!(voted.approvals, 1);

    // The flaky sink: a failed attempt audited with the command's words, then delivered on
    // the retry.
    let delivered = await_record(&w.bg, head, |r| {
        r.event == "notify.delivered" && r.subject == "notify/flaky"
    })
    .await;
    let records = all_records(w.bg.local().await).await;
    let failed: Vec<&pb::AuditRecord> = records
        .iter()
        .filter(|r| r.event == "notify.failed" && r.subject == "notify/flaky")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failure = &serde_json::from_str::<serde_json::Value>(&failed[0].json).unwrap()["details"];
    assert_eq!(failure["attempt"], 1);
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("pager service down"),
        "{failure}"
    );
    let success = &serde_json::from_str::<serde_json::Value>(&delivered.json).unwrap()["details"];
    assert_eq!(success["attempt"], 2);
    assert_eq!(success["event"], "request_created");
    // The metrics say so too (what the shipped LatchkeyNotificationsFailing alert reads).
    let addr = w.bg.running().metrics_addr().unwrap();
    let scraped = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "30"])
            .arg(format!("http://{addr}/metrics"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let scraped = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        scraped.contains("latchkey_notify_attempts_total{sink=\"flaky\",outcome=\"failed\"} 1\n"),
        "{scraped}"
    );
    assert!(
        scraped.contains("latchkey_notify_failing{sink=\"flaky\"} 0\n"),
        "{scraped}"
    );

    // The webhook hears the approval too (no event filter).
    let next = tokio::time::timeout(Duration::from_secs(60), posts.recv())
        .await
        .expect("no second webhook call")
        .unwrap();
    assert_eq!(next["event"], "request_approved", "{next}");
    assert_eq!(next["actor"], "operator/carol");

    // A request nobody approves in time is announced as expired when it lapses.
    let lapsing = operator_request(&mut w, "carol").await;
    let created = tokio::time::timeout(Duration::from_secs(60), posts.recv())
        .await
        .expect("no webhook call for the second request")
        .unwrap();
    assert_eq!(created["event"], "request_created");
    w.bg.clock.advance(Duration::from_secs(601));
    let authority = w.bg.running().authority().clone();
    let lapsed = tokio::task::spawn_blocking(move || authority.expire_lapsed_requests())
        .await
        .unwrap()
        .unwrap();
    assert!(lapsed >= 1, "{lapsed}");
    let expired = loop {
        let posted = tokio::time::timeout(Duration::from_secs(60), posts.recv())
            .await
            .expect("no webhook call for the lapse")
            .unwrap();
        if posted["request"]["id"] == lapsing.id.as_str() {
            break posted;
        }
    };
    assert_eq!(expired["event"], "request_expired", "{expired}");
    assert!(
        expired["approve"].is_null(),
        "nothing to approve any more: {expired}"
    );
    w.bg.stop().await;
}
