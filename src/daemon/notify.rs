//! Notification sinks: a command (the event JSON on stdin) or an HTTPS webhook (the JSON as a
//! POST body, with a Slack-compatible `text`). One worker per sink follows the audit log from
//! its cursor, so a slow or failing sink never holds up a request, another sink or the
//! daemon; failed attempts are retried with backoff, and every attempt is audited.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::service::authority::Authority;
use crate::service::notifications::{Attempt, Notification};

/// Default first retry delay; it doubles up to [`MAX_RETRY_DELAY`].
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(2);
/// The longest wait between attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Default attempts per notification before it is abandoned (about four minutes of backoff
/// from the default first delay, plus the attempts' own time).
const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Default time a command or webhook may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Audit records read per batch.
const BATCH: usize = 256;
/// The most of a command's stderr kept in the audit record of a failure.
const MAX_ERROR_LEN: usize = 500;

/// `[notify]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    retry_initial_ms: Option<u64>,
    max_attempts: Option<u32>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    sink: Vec<RawSink>,
}

/// `[[notify.sink]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: String,
    command: Option<Vec<String>>,
    webhook_url_file: Option<PathBuf>,
    webhook_token_file: Option<PathBuf>,
    webhook_ca_file: Option<PathBuf>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
}

/// Every event a sink can ask for.
pub const EVENTS: &[&str] = &[
    "request_created",
    "request_approved",
    "request_denied",
    "request_cancelled",
    "request_expired",
    "issued",
    "revoked",
    "revocation_unconfirmed",
];

/// How each sink is doing, for the metrics listener.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<std::sync::Mutex<std::collections::BTreeMap<String, SinkHealth>>>);

/// One sink's counts.
#[derive(Clone, Copy, Debug, Default)]
struct SinkHealth {
    delivered: u64,
    failed: u64,
    abandoned: u64,
    /// The latest attempt failed.
    failing: bool,
}

impl Health {
    fn record(&self, sink: &str, outcome: &Attempt) {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = all.entry(sink.to_owned()).or_default();
        match outcome {
            Attempt::Delivered => h.delivered += 1,
            Attempt::Failed(_) => h.failed += 1,
            Attempt::Abandoned(_) => h.abandoned += 1,
        }
        h.failing = !matches!(outcome, Attempt::Delivered);
    }

    fn start(&self, sink: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(sink.to_owned())
            .or_default();
    }

    /// The sinks' metrics in the Prometheus text format (headers even with no sink).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = String::from(
            "# HELP latchkey_notify_attempts_total Notification attempts per sink and outcome.\n\
             # TYPE latchkey_notify_attempts_total counter\n",
        );
        for (sink, h) in &all {
            for (outcome, n) in [
                ("delivered", h.delivered),
                ("failed", h.failed),
                ("abandoned", h.abandoned),
            ] {
                let _ = writeln!(
                    out,
                    "latchkey_notify_attempts_total{{sink=\"{sink}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP latchkey_notify_failing 1 while a sink's latest attempt failed: approvers may not be told.\n\
             # TYPE latchkey_notify_failing gauge\n",
        );
        for (sink, h) in &all {
            let _ = writeln!(
                out,
                "latchkey_notify_failing{{sink=\"{sink}\"}} {}",
                u8::from(h.failing)
            );
        }
        out
    }
}

/// Validated notification settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    /// The sinks.
    pub sinks: Vec<SinkConfig>,
    /// First retry delay (doubles each time).
    pub retry_initial: Duration,
    /// Attempts before a notification is abandoned.
    pub max_attempts: u32,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// One sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Its name (cursor and audit subject `notify/NAME`).
    pub name: String,
    /// Where notifications go.
    pub target: Target,
    /// Only these scopes (empty: every scope).
    pub scopes: Vec<String>,
    /// Only these events (empty: every event).
    pub events: Vec<String>,
}

/// Where a sink delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A program and its arguments; the event JSON on stdin; exit 0 is delivered.
    Command(Vec<String>),
    /// An HTTPS URL read from a private file; a 2xx answer is delivered.
    Webhook {
        /// The file holding the URL (a secret: it often carries a token).
        url_file: PathBuf,
        /// A file holding a bearer token, if the endpoint wants one.
        token_file: Option<PathBuf>,
        /// CA certificates (PEM) to trust instead of the system's.
        ca_file: Option<PathBuf>,
    },
}

pub(super) fn notify_config(raw: RawNotify) -> Result<NotifyConfig, String> {
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for s in raw.sink {
        if !crate::base::names::is_valid_name(&s.name) {
            return Err(format!(
                "notify.sink name {:?}: use 1-64 characters from a-z, 0-9, '.', '_' and '-'",
                s.name
            ));
        }
        if sinks.iter().any(|other| other.name == s.name) {
            return Err(format!("notify.sink {} is defined twice", s.name));
        }
        for event in &s.events {
            if !EVENTS.contains(&event.as_str()) {
                return Err(format!(
                    "notify.sink {}: unknown event {event:?} (known: {})",
                    s.name,
                    EVENTS.join(", ")
                ));
            }
        }
        let target = match (s.command, s.webhook_url_file) {
            (Some(command), None) if !command.is_empty() => {
                if !std::path::Path::new(&command[0]).is_absolute() {
                    return Err(format!(
                        "notify.sink {}: command {:?} must be an absolute path",
                        s.name, command[0]
                    ));
                }
                Target::Command(command)
            }
            (None, Some(url_file)) => Target::Webhook {
                url_file,
                token_file: s.webhook_token_file,
                ca_file: s.webhook_ca_file,
            },
            _ => {
                return Err(format!(
                    "notify.sink {}: set exactly one of command = [...] or webhook_url_file",
                    s.name
                ));
            }
        };
        sinks.push(SinkConfig {
            name: s.name,
            target,
            scopes: s.scopes,
            events: s.events,
        });
    }
    let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        return Err("notify.max_attempts must be at least 1".to_owned());
    }
    if raw.timeout_secs == Some(0) {
        return Err("notify.timeout_secs must be at least 1".to_owned());
    }
    Ok(NotifyConfig {
        sinks,
        retry_initial: raw
            .retry_initial_ms
            .map_or(DEFAULT_RETRY_INITIAL, Duration::from_millis)
            .min(MAX_RETRY_DELAY),
        max_attempts,
        timeout: raw
            .timeout_secs
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
    })
}

/// A sink ready to deliver: its webhook secrets read (and checked private) at start.
#[derive(Debug)]
struct Sink {
    config: SinkConfig,
    webhook: Option<Webhook>,
}

#[derive(Debug)]
struct Webhook {
    url: url::Url,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

/// Problems with a sink found at start: the daemon refuses to start with them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A webhook secret file is unreadable, loose or malformed. Fix the file and restart.
    #[error("notify.sink {sink}: {detail}")]
    Sink {
        /// The sink.
        sink: String,
        /// What is wrong.
        detail: String,
    },
}

fn read_secret(sink: &str, path: &std::path::Path) -> Result<String, NotifyError> {
    let bytes = crate::base::fsperm::read_private_file(path).map_err(|e| NotifyError::Sink {
        sink: sink.to_owned(),
        detail: e.to_string(),
    })?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| NotifyError::Sink {
            sink: sink.to_owned(),
            detail: format!("{} is not text", path.display()),
        })
}

impl Sink {
    fn open(config: &SinkConfig) -> Result<Self, NotifyError> {
        let webhook = match &config.target {
            Target::Command(_) => None,
            Target::Webhook {
                url_file,
                token_file,
                ca_file,
            } => {
                let fail = |detail: String| NotifyError::Sink {
                    sink: config.name.clone(),
                    detail,
                };
                let url = url::Url::parse(&read_secret(&config.name, url_file)?)
                    .map_err(|e| fail(format!("{}: not a URL: {e}", url_file.display())))?;
                if url.scheme() != "https" || url.host_str().is_none() {
                    return Err(fail(format!(
                        "{}: the webhook must be an https:// URL with a host",
                        url_file.display()
                    )));
                }
                let token = token_file
                    .as_deref()
                    .map(|p| read_secret(&config.name, p))
                    .transpose()?;
                Some(Webhook {
                    url,
                    token,
                    tls: Arc::new(client_tls(ca_file.as_deref()).map_err(fail)?),
                })
            }
        };
        Ok(Self {
            config: config.clone(),
            webhook,
        })
    }

    fn wants(&self, n: &Notification) -> bool {
        (self.config.scopes.is_empty() || self.config.scopes.contains(&n.scope))
            && (self.config.events.is_empty() || self.config.events.iter().any(|e| e == n.event))
    }
}

/// TLS for webhooks: the given CA file only, or the system's roots.
fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the system store holds but rustls cannot use is skipped.
                let _unusable = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates to verify the webhook with".to_owned());
    }
    rustls::ClientConfig::builder_with_provider(crate::credential::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Starts one worker per sink; they stop with `stop`. Fails (before anything runs) if a
/// sink's secrets are unusable.
pub(super) fn spawn(
    tasks: &mut tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
    authority: &Arc<Authority>,
    (config, health): (&NotifyConfig, &Health),
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<(), NotifyError> {
    let sinks = config
        .sinks
        .iter()
        .map(Sink::open)
        .collect::<Result<Vec<_>, _>>()?;
    for sink in sinks {
        health.start(&sink.config.name);
        let worker = Worker {
            authority: authority.clone(),
            sink,
            settings: config.clone(),
            health: health.clone(),
        };
        let stop = super::stopped(stop);
        tasks.spawn(async move {
            worker.run(stop).await;
            Ok(())
        });
    }
    Ok(())
}

/// How one notification ended for the worker.
enum Delivery {
    /// Delivered or abandoned, recorded: the cursor is here now.
    Moved(u64),
    /// The daemon is stopping.
    Stopped,
    /// The attempt's record could not be written: start again from the stored cursor.
    Unrecorded,
}

struct Worker {
    authority: Arc<Authority>,
    sink: Sink,
    settings: NotifyConfig,
    health: Health,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

impl Worker {
    async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let name = self.sink.config.name.clone();
        // Subscribed before reading, so nothing appended in between is missed.
        let mut tail = self.authority.audit().subscribe();
        let authority = self.authority.clone();
        let start =
            blocking(
                move || match authority.notify_cursor(&name).map_err(|e| e.to_string())? {
                    Some(cursor) => Ok(cursor),
                    None => authority
                        .start_notify_sink(&name)
                        .map_err(|e| e.to_string()),
                },
            )
            .await;
        let mut persisted = match start {
            Ok(cursor) => cursor,
            Err(e) => {
                tracing::error!(sink = %self.sink.config.name, "notifications stopped: {e}");
                return;
            }
        };
        let mut read = persisted;
        loop {
            let authority = self.authority.clone();
            let batch = blocking(move || {
                authority
                    .audit()
                    .read(read.saturating_add(1), BATCH)
                    .map_err(|e| e.to_string())
            })
            .await;
            let records = match batch {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(sink = %self.sink.config.name, "notifications: {e}");
                    Vec::new()
                }
            };
            if records.is_empty() {
                tokio::select! {
                    () = &mut stop => return,
                    // A new record (or a lagged tail): read from the store again.
                    _ = tail.recv() => continue,
                }
            }
            for record in records {
                read = record.seq;
                let authority = self.authority.clone();
                let found = blocking(move || {
                    authority
                        .notification_for(&record)
                        .map_err(|e| e.to_string())
                })
                .await;
                let notification = match found {
                    Ok(Some(n)) if self.sink.wants(&n) => n,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(sink = %self.sink.config.name, seq = read, "no notification: {e}");
                        continue;
                    }
                };
                match self.deliver(&notification, persisted, &mut stop).await {
                    Delivery::Moved(moved) => persisted = moved,
                    Delivery::Stopped => return,
                    Delivery::Unrecorded => {
                        // The store refused the record (full disk, another daemon): wait, then
                        // start again from the cursor as stored.
                        tokio::select! {
                            () = &mut stop => return,
                            () = tokio::time::sleep(self.settings.retry_initial) => {}
                        }
                        let authority = self.authority.clone();
                        let name = self.sink.config.name.clone();
                        let stored = blocking(move || {
                            authority.notify_cursor(&name).map_err(|e| e.to_string())
                        })
                        .await;
                        if let Ok(Some(cursor)) = stored {
                            persisted = cursor;
                        }
                        read = persisted;
                        break;
                    }
                }
            }
        }
    }

    /// Delivers one notification with retries.
    async fn deliver(
        &self,
        n: &Notification,
        from: u64,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Delivery {
        let mut delay = self.settings.retry_initial;
        for attempt in 1..=self.settings.max_attempts {
            let result = tokio::time::timeout(self.settings.timeout, self.attempt(n))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}s",
                        self.settings.timeout.as_secs()
                    ))
                });
            let outcome = match result {
                Ok(()) => Attempt::Delivered,
                Err(e) if attempt == self.settings.max_attempts => Attempt::Abandoned(e),
                Err(e) => Attempt::Failed(e),
            };
            self.health.record(&self.sink.config.name, &outcome);
            if let Attempt::Failed(e) | Attempt::Abandoned(e) = &outcome {
                tracing::warn!(sink = %self.sink.config.name, event = n.event, attempt, "notification failed: {e}");
            }
            let authority = self.authority.clone();
            let (sink, notification, recorded) =
                (self.sink.config.name.clone(), n.clone(), outcome.clone());
            let written = blocking(move || {
                authority
                    .record_notify_attempt(&sink, from, &notification, attempt, &recorded)
                    .map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = written {
                tracing::error!(sink = %self.sink.config.name, "recording a notification attempt: {e}");
                return Delivery::Unrecorded;
            }
            if !matches!(outcome, Attempt::Failed(_)) {
                return Delivery::Moved(n.audit_seq);
            }
            tokio::select! {
                () = &mut *stop => return Delivery::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        Delivery::Unrecorded
    }

    async fn attempt(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        match (&self.sink.config.target, &self.sink.webhook) {
            (Target::Command(argv), _) => run_command(argv, n, &body).await,
            (Target::Webhook { .. }, Some(webhook)) => post(webhook, body).await,
            (Target::Webhook { .. }, None) => Err("webhook not opened".to_owned()),
        }
    }
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

async fn run_command(argv: &[String], n: &Notification, body: &[u8]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("LATCHKEY_EVENT", n.event)
        .env("LATCHKEY_SCOPE", &n.scope)
        .env(
            "LATCHKEY_REQUEST_ID",
            n.request
                .as_ref()
                .map(|r| r.id.as_str())
                .unwrap_or_default(),
        )
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input still gets to answer by its exit code.
        let _unread = stdin.write_all(body).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} exited with {}: {}",
            out.status,
            clip(&String::from_utf8_lossy(&out.stderr))
        ))
    }
}

/// The most of a webhook's answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Ends the HTTP connection task when the attempt ends (including by its timeout).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn post(webhook: &Webhook, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    let url = &webhook.url;
    // `[2001:db8::1]` for an IPv6 literal, as in the URL and the Host header.
    let host = url.host_str().ok_or("no host")?.to_owned();
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(bare).map_err(|e| format!("{host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(webhook.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
    let _driver = AbortOnDrop(tokio::spawn(connection));
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut request = hyper::Request::post(path)
        .header(
            hyper::header::HOST,
            match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.clone(),
            },
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("latchkeyd/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = &webhook.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST to {host}: {e}"))?;
    let status = response.status();
    // Only the start of an answer is kept (for the audit record of a failure).
    let answer = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{host} answered {status}: {}",
            clip(&String::from_utf8_lossy(&answer))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        notify_config(toml::from_str::<RawNotify>(text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn a_sink_is_a_command_or_a_webhook_never_both_nor_neither() {
        let both =
            parse("[[sink]]\nname = \"x\"\ncommand = [\"/bin/true\"]\nwebhook_url_file = \"/u\"\n");
        assert!(both.unwrap_err().contains("exactly one"));
        let neither = parse("[[sink]]\nname = \"x\"\n");
        assert!(neither.unwrap_err().contains("exactly one"));
        let relative = parse("[[sink]]\nname = \"x\"\ncommand = [\"page\"]\n");
        assert!(relative.unwrap_err().contains("absolute path"));
        let unknown =
            parse("[[sink]]\nname = \"x\"\ncommand = [\"/bin/true\"]\nevents = [\"created\"]\n");
        assert!(unknown.unwrap_err().contains("request_created"));
        let twice = parse(
            "[[sink]]\nname = \"x\"\ncommand = [\"/bin/true\"]\n[[sink]]\nname = \"x\"\ncommand = [\"/bin/true\"]\n",
        );
        assert!(twice.unwrap_err().contains("twice"));
        let ok = parse("retry_initial_ms = 50\n[[sink]]\nname = \"pager\"\ncommand = [\"/bin/true\", \"-x\"]\nscopes = [\"db-root\"]\n").unwrap();
        assert_eq!(ok.retry_initial, Duration::from_millis(50));
        assert_eq!(ok.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            ok.sinks[0].target,
            Target::Command(vec!["/bin/true".into(), "-x".into()])
        );
    }

    #[test]
    fn a_webhook_url_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "https://hooks.example/T0/B0/secret\n").unwrap();
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sink = SinkConfig {
            name: "chat".into(),
            target: Target::Webhook {
                url_file: url.clone(),
                token_file: None,
                ca_file: None,
            },
            scopes: vec![],
            events: vec![],
        };
        let refused = Sink::open(&sink).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&url, "http://hooks.example/plain\n").unwrap();
        let refused = Sink::open(&sink).unwrap_err().to_string();
        assert!(refused.contains("https://"), "{refused}");
    }
}
