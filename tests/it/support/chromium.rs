//! Real headless Chromium (Debian's `chromium`, installed by `scripts/install-deps`), driven
//! over the DevTools protocol: one WebSocket to the browser, one flattened session per tab,
//! WebAuthn virtual authenticators (CTAP2, user presence and verification simulated).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long one DevTools read may block before the test fails instead of hanging (a guard,
/// not a timing assertion: a healthy step answers in well under a second).
const READ_GUARD: Duration = Duration::from_secs(120);

pub(crate) struct Chromium {
    child: Child,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    events: VecDeque<Value>,
    _profile: tempfile::TempDir,
}

/// One tab, with its own virtual authenticator.
pub(crate) struct Tab {
    session: String,
}

impl Chromium {
    /// Starts Chromium trusting the certificate whose SPKI SHA-256 is `spki_sha256` and
    /// resolving `hosts` to 127.0.0.1.
    pub(crate) fn launch(spki_sha256: &[u8; 32], hosts: &[&str]) -> Self {
        use base64::Engine as _;
        let profile = tempfile::tempdir().unwrap();
        let rules = hosts
            .iter()
            .map(|h| format!("MAP {h} 127.0.0.1"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless=new",
                // CI runs as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-port=0",
                "--window-size=900,1000",
                "--force-device-scale-factor=1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                base64::engine::general_purpose::STANDARD.encode(spki_sha256)
            ))
            .arg(format!("--host-resolver-rules={rules}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("chromium runs (scripts/install-deps installs Debian's chromium)");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("chromium printed its DevTools address")
                .unwrap();
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let address = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(READ_GUARD)).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
        Self {
            child,
            socket,
            next_id: 0,
            events: VecDeque::new(),
            _profile: profile,
        }
    }

    /// Sends a command (to a tab's session, or the browser) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method });
        message["params"] = params;
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .unwrap();
        loop {
            let message = self.read();
            if message["id"] == id {
                assert!(
                    message.get("error").is_none(),
                    "{method} failed: {}",
                    message["error"]
                );
                return message["result"].clone();
            }
            self.events.push_back(message);
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("DevTools read: {e}"))
            {
                Message::Text(text) => {
                    if std::env::var_os("LATCHKEY_CDP_DEBUG").is_some() {
                        eprintln!("cdp <- {}", text.chars().take(400).collect::<String>());
                    }
                    return serde_json::from_str(&text).unwrap();
                }
                Message::Close(_) => panic!("Chromium closed the DevTools connection"),
                _ => {}
            }
        }
    }

    /// Opens a tab with a CTAP2 virtual authenticator that simulates touch and PIN.
    pub(crate) fn tab(&mut self) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let tab = Tab {
            session: attached["sessionId"].as_str().unwrap().to_owned(),
        };
        for method in ["Page.enable", "Runtime.enable"] {
            self.call(Some(&tab.session), method, json!({}));
        }
        // WebAuthn needs a focused page; several tabs are open at once.
        self.call(
            Some(&tab.session),
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
        );
        self.call(
            Some(&tab.session),
            "WebAuthn.enable",
            json!({ "enableUI": false }),
        );
        self.call(
            Some(&tab.session),
            "WebAuthn.addVirtualAuthenticator",
            json!({ "options": {
                "protocol": "ctap2",
                "ctap2Version": "ctap2_1",
                "transport": "usb",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            }}),
        );
        tab
    }

    /// Loads `url` in `tab` and waits for its load event.
    pub(crate) fn open(&mut self, tab: &Tab, url: &str) {
        self.forget_events(tab);
        self.call(Some(&tab.session), "Page.navigate", json!({ "url": url }));
        self.wait_for_load(tab).unwrap();
    }

    /// Runs `script` in the page and returns its value.
    pub(crate) fn eval(&mut self, tab: &Tab, script: &str) -> Value {
        let result = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({ "expression": script, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{script}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Runs `script` (which starts a key ceremony and a form post) and waits until the next
    /// page has loaded; Err with the page's console error if the script gave up instead.
    pub(crate) fn act(&mut self, tab: &Tab, script: &str) -> Result<(), String> {
        // WebAuthn answers only the focused tab.
        self.call(Some(&tab.session), "Page.bringToFront", json!({}));
        self.forget_events(tab);
        self.eval(tab, script);
        self.wait_for_load(tab)
    }

    /// The page's visible text.
    pub(crate) fn text(&mut self, tab: &Tab) -> String {
        self.eval(tab, "document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A PNG of the tab as it is now.
    pub(crate) fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }

    fn forget_events(&mut self, tab: &Tab) {
        self.events
            .retain(|e| e["sessionId"].as_str() != Some(tab.session.as_str()));
    }

    fn wait_for_load(&mut self, tab: &Tab) -> Result<(), String> {
        loop {
            let event = match self.events.pop_front() {
                Some(e) => e,
                None => self.read(),
            };
            if event["sessionId"].as_str() != Some(tab.session.as_str()) {
                continue;
            }
            match event["method"].as_str() {
                Some("Page.loadEventFired") => return Ok(()),
                Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                    let text = event["params"]["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| a["value"].as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                        .join(" ");
                    return Err(text);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Chromium and its helpers are one process group: take all of it down.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> String {
    std::env::var("LATCHKEY_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}
