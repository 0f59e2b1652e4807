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
use crate::support::server_cert;
use crate::support::world::{World, db_root, workload_request, world_configured};

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

    // A workload asks; the notification links to the page. Carol reads the card on the page
    // (one touch), then approves (another).
    let first = workload_request(&w, None).await;
    let created = all_records(w.bg.local().await)
        .await
        .into_iter()
        .rfind(|r| r.event == "request.created")
        .unwrap();
    let record: latchkey::audit::AuditRecord = serde_json::from_str(&created.json).unwrap();
    let told =
        w.bg.running()
            .authority()
            .notification_for(&record)
            .unwrap()
            .unwrap();
    let link = format!("{origin}/requests/{}", first.id);
    assert_eq!(told.link.as_deref(), Some(link.as_str()));
    assert!(
        told.text.ends_with(&format!("or in a browser: {link}")),
        "{}",
        told.text
    );
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
    crate::support::export_verifies(&w.bg.dir).await;
    browser(|| drop(chromium));
    w.bg.stop().await;
}

/// One HTTPS exchange with the page through curl (the daemon's key pinned): status, headers
/// (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body).map_or_else(
            |_| self.body.clone(),
            |v| v["code"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

struct Page {
    port: u16,
    pin: String,
}

impl Page {
    fn new(w: &World, port: u16) -> Self {
        use base64::Engine as _;
        let spki = latchkey::credential::keys::spki_sha256(&server_cert(&w.bg.dir.data)).unwrap();
        Self {
            port,
            pin: format!(
                "sha256//{}",
                base64::engine::general_purpose::STANDARD.encode(spki)
            ),
        }
    }

    /// `method path` with `headers` and `body`, as a browser at `latchkey.local` would send.
    fn send(&self, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> Reply {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "-i", "--max-time", "60", "-X", method])
            // The daemon's certificate names no host; its key is pinned instead.
            .args(["-k", "--pinnedpubkey", &self.pin])
            .arg("--resolve")
            .arg(format!("latchkey.local:{}:127.0.0.1", self.port));
        for h in headers {
            curl.args(["-H", h]);
        }
        if body.is_some() {
            curl.args(["--data-binary", "@-"]);
        }
        curl.arg(format!("https://latchkey.local:{}{path}", self.port));
        curl.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = curl.spawn().unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(body.unwrap_or_default().as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {method} {path}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn post_json(&self, path: &str, origin: &str, body: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[
                &format!("Origin: {origin}"),
                "Content-Type: application/json",
            ],
            Some(body),
        )
    }

    fn post_form(&self, path: &str, origin: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            "POST",
            path,
            &[
                &format!("Origin: {origin}"),
                "Content-Type: application/x-www-form-urlencoded",
            ],
            Some(&body),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_bad_input_with_stable_codes_and_changes_nothing() {
    let port = free_port();
    let origin = format!("https://latchkey.local:{port}");
    let mut w = world_configured(
        db_root(600),
        &format!("[web]\nlisten = \"127.0.0.1:{port}\"\norigin = \"{origin}\"\n"),
    )
    .await;
    let page = Page::new(&w, port);
    let asked = workload_request(&w, None).await;
    let before = w.bg.snapshot();

    // Every response: strict CSP, never framed, no cookie.
    let shell = browser(|| page.send("GET", "/requests", &[], None));
    assert_eq!(shell.status, 200);
    assert_eq!(
        shell.header("content-security-policy"),
        Some(latchkey::web::CONTENT_SECURITY_POLICY)
    );
    assert!(
        shell
            .header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(shell.header("x-frame-options"), Some("DENY"));
    assert_eq!(shell.header("cache-control"), Some("no-store"));
    assert!(shell.header("set-cookie").is_none());
    assert!(!shell.body.contains("<script>"), "no inline script");
    let script = browser(|| page.send("GET", "/static/page.js", &[], None));
    assert!(script.body.contains("toJSON()"));
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let root = browser(|| page.send("GET", "/", &[], None));
    assert_eq!(
        (root.status, root.header("location")),
        (303, Some("/requests"))
    );

    let refusals = browser(|| {
        let begin = |operator: &str| {
            serde_json::json!({ "purpose": "read", "operator": operator }).to_string()
        };
        vec![
            (
                "unknown page",
                page.send("GET", "/secrets", &[], None),
                404,
                "web.not_found",
            ),
            (
                "odd id",
                page.send("GET", "/requests/a%22b", &[], None),
                404,
                "web.not_found",
            ),
            (
                "PUT",
                page.send("PUT", "/requests", &[], None),
                400,
                "web.method_not_allowed",
            ),
            (
                "no Origin",
                page.send("POST", "/api/begin", &[], Some(&begin("carol"))),
                403,
                "web.wrong_origin",
            ),
            (
                "other Origin",
                page.post_json("/api/begin", "https://evil.test", &begin("carol")),
                403,
                "web.wrong_origin",
            ),
            (
                "malformed JSON",
                page.post_json("/api/begin", &origin, "{\"purpose\":"),
                400,
                "web.malformed",
            ),
            (
                "unknown field",
                page.post_json(
                    "/api/begin",
                    &origin,
                    "{\"purpose\":\"read\",\"operator\":\"carol\",\"admin\":true}",
                ),
                400,
                "web.malformed",
            ),
            (
                "unknown purpose",
                page.post_json(
                    "/api/begin",
                    &origin,
                    "{\"purpose\":\"mint\",\"operator\":\"carol\"}",
                ),
                400,
                "web.malformed",
            ),
            (
                "too large",
                page.post_json("/api/begin", &origin, &"x".repeat(70_000)),
                400,
                "web.too_large",
            ),
            (
                "unknown operator",
                page.post_json("/api/begin", &origin, &begin("mallory")),
                404,
                "operator.unknown",
            ),
            (
                "made-up ceremony",
                page.post_form(
                    &format!("/requests/{}/vote", asked.id),
                    &origin,
                    &[
                        ("decision", "approve"),
                        ("ceremony_id", "nope"),
                        ("credential", "{}"),
                    ],
                ),
                404,
                "assertion.challenge_unknown",
            ),
            (
                "bad decision",
                page.post_form(
                    &format!("/requests/{}/vote", asked.id),
                    &origin,
                    &[
                        ("decision", "maybe"),
                        ("ceremony_id", "x"),
                        ("credential", "{}"),
                    ],
                ),
                400,
                "web.malformed",
            ),
            (
                "missing fields",
                page.post_form("/requests", &origin, &[("ceremony_id", "x")]),
                400,
                "web.malformed",
            ),
        ]
    });
    for (what, reply, status, code) in refusals {
        assert_eq!(
            (
                reply.status,
                reply.code().contains(code) || reply.body.contains(code)
            ),
            (status, true),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
    }

    // Carol's real key, signing for another page under the same relying party (a key signs
    // for any origin on its rp_id): the daemon refuses the origin.
    let begun = browser(|| {
        page.post_json(
            "/api/begin",
            &origin,
            &serde_json::json!({ "purpose": "approve", "operator": "carol", "target": asked.id })
                .to_string(),
        )
    });
    assert_eq!(begun.status, 200, "{}", begun.body);
    let begun: serde_json::Value = serde_json::from_str(&begun.body).unwrap();
    let key = w.bg.keys.get_mut("carol").unwrap()[0].as_mut();
    let forged = key
        .respond(
            Some("https://evil.latchkey.local"),
            &begun["options"].to_string(),
            &[],
        )
        .unwrap();
    let refused = browser(|| {
        page.post_form(
            &format!("/requests/{}/vote", asked.id),
            &origin,
            &[
                ("decision", "approve"),
                ("ceremony_id", begun["ceremony_id"].as_str().unwrap()),
                ("credential", &forged),
            ],
        )
    });
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("fido2.wrong_origin"),
        "{}",
        refused.body
    );
    assert_eq!(w.bg.snapshot(), before, "a refused input changed the store");

    // Begin calls are rate limited per address (the daemon's clock stands still here, so
    // the burst is all there is).
    let limited = browser(|| {
        (0..20)
            .map(|_| {
                page.post_json(
                    "/api/begin",
                    &origin,
                    "{\"purpose\":\"read\",\"operator\":\"carol\"}",
                )
            })
            .find(|r| r.status != 200)
    })
    .expect("the burst runs out");
    assert_eq!(
        (limited.status, limited.code()),
        (429, "web.rate_limited".to_owned())
    );
    w.bg.stop().await;
}
