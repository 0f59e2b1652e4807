//! The approval page in real headless Chromium with DevTools virtual authenticators: keys
//! registered on the page and admitted by admins, a request approved on the page by two
//! approvers, the grant revoked there, a denial, a page on the wrong origin refused, and the
//! audit log — every page read and vote with the browser's own evidence — verified offline.

use latchkey::client::access::Target;
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;

use crate::support::chromium::{Chromium, Tab};
use crate::support::grants::all_records;
use crate::support::world::{World, db_root, workload_request, world_configured};
use crate::support::{latchkey_cli, server_cert};

/// A free loopback port for the page: its origin, port included, goes into the config
/// before the daemon starts (WebAuthn compares origins exactly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Blocking browser work, on a runtime whose other worker keeps the in-process daemon going.
fn browser<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Types `operator` into the form `form` (a CSS selector) and presses its button `button`.
fn press(form: &str, operator: &str, button: &str) -> String {
    format!(
        r#"(() => {{
            const form = document.querySelector({form:?});
            form.querySelector("input[name=operator]").value = {operator:?};
            form.querySelector({button:?}).click();
            return true;
        }})()"#
    )
}

fn unlock(chromium: &mut Chromium, tab: &Tab, url: &str, operator: &str) {
    chromium.open(tab, url);
    chromium
        .act(tab, &press("form.signed", operator, "button"))
        .unwrap_or_else(|e| panic!("unlocking {url} as {operator}: {e}"));
}

async fn request_state(w: &World, id: &str) -> pb::RequestInfo {
    AccessServiceClient::new(w.bg.local().await)
        .show_request(pb::ShowRequestRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_register_keys_approve_deny_and_revoke_on_the_page_in_real_chromium() {
    let port = free_port();
    let origin = format!("https://latchkey.local:{port}");
    let mut w = world_configured(
        db_root(600),
        &format!("[web]\nlisten = \"127.0.0.1:{port}\"\norigin = \"{origin}\"\n"),
    )
    .await;
    assert_eq!(w.bg.running().web_addr().unwrap().port(), port);
    let spki = latchkey::credential::keys::spki_sha256(&server_cert(&w.bg.dir.data)).unwrap();
    let mut chromium = browser(|| Chromium::launch(&spki, &["latchkey.local", "evil.test"]));
    let carol = browser(|| chromium.tab());
    let dave = browser(|| chromium.tab());

    // Carol and Dave register their browsers' keys on the page; admins approve each change
    // with their own keys, as for any new key.
    for (tab, name) in [(&carol, "carol"), (&dave, "dave")] {
        let text = browser(|| {
            chromium.open(tab, &format!("{origin}/enroll"));
            chromium
                .act(
                    tab,
                    &format!(
                        r#"(() => {{
                            document.querySelector("textarea[name=note]").value =
                                "{name} showed her badge to alice on a video call (INC-4711)";
                            {}
                        }})()"#,
                        press("form.signed", name, "button")
                    ),
                )
                .unwrap_or_else(|e| panic!("registering {name}'s key: {e}"));
            chromium.text(tab)
        });
        assert!(text.contains("Key proposed"), "{text}");
        let change = text
            .split_whitespace()
            .skip_while(|w| *w != "Change")
            .nth(1)
            .unwrap()
            .to_owned();
        for admin in ["alice", "bob"] {
            w.bg.vote(Target::Change(change.clone()), admin, Decision::Approve, 0)
                .await
                .unwrap();
        }
    }

    // A workload asks; Carol reads the card on the page (one touch), then approves (another).
    let first = workload_request(&w, None).await;
    let card = browser(|| {
        unlock(
            &mut chromium,
            &carol,
            &format!("{origin}/requests/{}", first.id),
            "carol",
        );
        chromium.text(&carol)
    });
    let digest = hex::encode(&first.digest);
    for line in [
        "requester\nworkload/vault-db",
        "reason\nprimary database down, replication stuck (INC-4711)",
        "scope\ndb-root · owner: dba-team",
        "runbook\nConnect to the primary",
        "ttl\n15m",
        "ticket\nINC-4711",
        "mints\na bearer token, sealed to the requester's delivery key",
        "policy\n2 of role dba-oncall; 0 approved, 0 denied",
        // The digest the key signs over is the one the CLI shows.
        &digest,
    ] {
        assert!(
            card.contains(line),
            "{line:?} missing from the card:\n{card}"
        );
    }
    let png = browser(|| chromium.screenshot(&carol));
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("approval-page.png"),
        &png,
    )
    .unwrap();
    if std::env::var_os("LATCHKEY_UPDATE_DOCS").is_some() {
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/approval-page.png"),
            &png,
        )
        .unwrap();
    }
    let voted = browser(|| {
        chromium
            .act(&carol, &press("form.vote", "carol", "button.approve"))
            .unwrap();
        chromium.text(&carol)
    });
    assert!(voted.contains("Your approval of request"), "{voted}");
    assert!(voted.contains("1 of 2"), "{voted}");

    // Dave reads the pending list (one touch shows every card) and approves from it.
    let listed = browser(|| {
        unlock(&mut chromium, &dave, &format!("{origin}/requests"), "dave");
        chromium.text(&dave)
    });
    assert!(listed.contains(&first.id), "{listed}");
    let issued = browser(|| {
        chromium
            .act(
                &dave,
                &press(
                    &format!("form[data-target={:?}]", first.id),
                    "dave",
                    "button.approve",
                ),
            )
            .unwrap();
        chromium.text(&dave)
    });
    assert!(issued.contains("issued"), "{issued}");
    let info = request_state(&w, &first.id).await;
    assert_eq!(info.state(), pb::RequestState::Issued);
    assert_eq!(info.approvals, 2);

    // Dave revokes the grant early from its page.
    let revoked = browser(|| {
        unlock(
            &mut chromium,
            &dave,
            &format!("{origin}/grants/{}", info.grant_id),
            "dave",
        );
        chromium
            .act(
                &dave,
                &format!(
                    r#"(() => {{
                        document.querySelector("input[name=reason]").value = "incident closed";
                        {}
                    }})()"#,
                    press("form.signed", "dave", "button")
                ),
            )
            .unwrap();
        chromium.text(&dave)
    });
    assert!(revoked.contains("is being revoked"), "{revoked}");
    let grant = crate::support::grants::show(&w.bg, &info.grant_id).await;
    assert_ne!(grant.state(), pb::GrantState::Active, "{grant:?}");

    // A second request: Carol denies it on the page.
    let second = workload_request(&w, None).await;
    let denied = browser(|| {
        unlock(
            &mut chromium,
            &carol,
            &format!("{origin}/requests/{}", second.id),
            "carol",
        );
        chromium
            .act(&carol, &press("form.vote", "carol", "button.deny"))
            .unwrap();
        chromium.text(&carol)
    });
    assert!(denied.contains("Your denial of request"), "{denied}");
    assert_eq!(
        request_state(&w, &second.id).await.state(),
        pb::RequestState::Denied
    );

    // The same page served under another name: refused, and nothing changes.
    let third = workload_request(&w, None).await;
    let before = w.bg.snapshot();
    let refused = browser(|| {
        chromium.open(
            &carol,
            &format!("https://evil.test:{port}/requests/{}", third.id),
        );
        let err = chromium
            .act(&carol, &press("form.signed", "carol", "button"))
            .expect_err("a page on another origin must not be served a challenge");
        (err, chromium.text(&carol))
    });
    assert!(refused.0.contains("web.wrong_origin"), "{refused:?}");
    assert!(
        refused.1.contains("Not done: web.wrong_origin"),
        "{refused:?}"
    );
    assert_eq!(w.bg.snapshot(), before, "a refused page changed the store");
    assert_eq!(request_state(&w, &third.id).await.approvals, 0);

    // Every page read and vote is in the audit log with the browser's evidence; the export
    // verifies offline.
    let records = all_records(w.bg.local().await).await;
    let web_votes: Vec<_> = records
        .iter()
        .filter(|r| r.event == "request.approved" || r.event == "request.denied")
        .filter(|r| r.json.contains("\"via\":\"web 127.0.0.1"))
        .collect();
    assert_eq!(
        web_votes.len(),
        3,
        "two approvals and a denial from the page"
    );
    // Four pages read: two request cards, the pending list, the grant.
    let page_reads = records
        .iter()
        .filter(|r| r.event == "session.opened" && r.json.contains("\"via\":\"web 127.0.0.1"))
        .count();
    assert_eq!(page_reads, 4);
    let file = w.bg.dir.dir.path().join("audit.jsonl");
    let socket = w.bg.dir.socket.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let export = latchkey_cli()
            .arg("--socket")
            .arg(&socket)
            .args(["audit", "export", "--output"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(export.status.success(), "{export:?}");
        latchkey_cli()
            .arg("--socket")
            .arg(&socket)
            .args(["--json", "audit", "verify"])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&verified.stdout).unwrap_or_else(|e| panic!("{e}: {verified:?}"));
    assert_eq!(report["verified"], true, "{report}");
    browser(|| drop(chromium));
    w.bg.stop().await;
}
