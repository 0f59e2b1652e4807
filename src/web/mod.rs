//! The approval page (`[web]`): approvers without the CLI approve, deny and revoke from a
//! browser with their security key. HTTPS (HTTP/1.1), pages rendered here, one small script
//! and one stylesheet embedded in the binary. Every action — reading included — is one WebAuthn
//! assertion over the same digest the CLI signs; the browser posts
//! `PublicKeyCredential.toJSON()` and nothing else. There are no cookies and no session: a
//! page shows what the touch that asked for it may read, and the next page needs another.

mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_stream::StreamExt as _;

use crate::base::caller::{Caller, RemotePeer};
use crate::base::error::{Coded, ErrorKind};
use crate::domain::policy::Decision;
use crate::rpc::identity::Slot;
use crate::rpc::remote::BeginLimits;
use crate::service::authority::Authority;
use crate::service::votes::VoteTarget;
use crate::service::workflow::WorkflowError;

/// Largest request body the page accepts (a registration with its attestation is a few KiB).
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long one connection may stay open at most (a slow client cannot hold a slot forever).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// Every response's Content-Security-Policy: the page's own script and style, nothing else;
/// never framed; forms post only to the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// Errors of the approval page. Each has a stable code; none changes the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// No such page. Start at `/requests`.
    #[error("no page {0}")]
    NotFound(String),
    /// The page does not take this method.
    #[error("{0} is not served here")]
    MethodNotAllowed(String),
    /// A POST from another origin than `[web] origin`, or none. Open the page at its
    /// configured address.
    #[error(
        "this page is served for origin {expected}; the browser says it came from {got}: open the link the daemon sends"
    )]
    WrongOrigin {
        /// The configured origin.
        expected: String,
        /// The `Origin` header (or `none`).
        got: String,
    },
    /// The form or JSON is malformed. Reload the page and try again.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The body is larger than the page ever sends.
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// Too many key ceremonies asked from this address (or from everywhere). Wait a minute.
    #[error(
        "too many challenges asked from this address (or from everywhere); wait a minute and try again"
    )]
    RateLimited,
    /// Refused before the key touch, reason not told (the request is not pending, the grant
    /// not active, the operator may not vote or voted already, the reason is unusable). Read
    /// the request's card (one touch) or ask whoever runs latchkeyd (the log has the reason).
    #[error(
        "refused before the key touch: the request may be closed or the grant no longer active, you may have voted already or may not vote on it; unlock the card to see its state (the daemon's log has the reason)"
    )]
    Refused,
    /// The operator has no FIDO2 key; browsers cannot use PIV keys. Use the CLI.
    #[error(
        "operator {0} has no FIDO2 security key: the page works with FIDO2 keys; use the CLI for a PIV key"
    )]
    NoSecurityKey(String),
    /// The step itself was refused; its own code says why.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The work could not run (a bug). Alert an operator.
    #[error("internal: {0}")]
    Task(String),
}

impl Coded for WebError {
    fn code(&self) -> &'static str {
        match self {
            WebError::NotFound(_) => "web.not_found",
            WebError::MethodNotAllowed(_) => "web.method_not_allowed",
            WebError::WrongOrigin { .. } => "web.wrong_origin",
            WebError::Malformed(_) => "web.malformed",
            WebError::TooLarge => "web.too_large",
            WebError::RateLimited => "web.rate_limited",
            WebError::Refused => "web.refused",
            WebError::NoSecurityKey(_) => "web.no_security_key",
            WebError::Workflow(e) => e.code(),
            WebError::Task(_) => "web.task_failed",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            WebError::NotFound(_) => ErrorKind::NotFound,
            WebError::MethodNotAllowed(_)
            | WebError::Malformed(_)
            | WebError::TooLarge
            | WebError::NoSecurityKey(_) => ErrorKind::InvalidInput,
            WebError::WrongOrigin { .. } | WebError::Refused => ErrorKind::PermissionDenied,
            WebError::RateLimited => ErrorKind::ResourceExhausted,
            WebError::Workflow(e) => e.kind(),
            WebError::Task(_) => ErrorKind::Internal,
        }
    }
}

/// The HTTP status of an error kind (the page's one mapping, like `rpc::to_status`).
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition | ErrorKind::Conflict => {
            StatusCode::CONFLICT
        }
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One accepted connection: TLS done, holding its connection slot while open.
pub struct WebConn {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: SocketAddr,
    _slot: Slot,
}

impl WebConn {
    /// Wraps an accepted TLS connection.
    pub fn new(
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        remote: SocketAddr,
        slot: Slot,
    ) -> Self {
        Self {
            tls,
            remote,
            _slot: slot,
        }
    }
}

/// What every request of the page shares.
struct Page {
    authority: Arc<Authority>,
    limits: BeginLimits,
    origin: String,
    connections: AtomicU64,
}

/// Serves the approval page on `incoming` until `stop`.
pub async fn serve<S>(
    incoming: S,
    authority: Arc<Authority>,
    origin: String,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    S: tokio_stream::Stream<Item = std::io::Result<WebConn>> + Unpin,
{
    let page = Arc::new(Page {
        authority,
        limits: BeginLimits::new(),
        origin,
        connections: AtomicU64::new(0),
    });
    let mut incoming = incoming;
    tokio::pin!(stop);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            next = incoming.next() => {
                let Some(accepted) = next else { break };
                let conn = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::info!("approval page connection: {e}");
                        continue;
                    }
                };
                let page = page.clone();
                connections.spawn(async move {
                    let number = page.connections.fetch_add(1, Ordering::Relaxed);
                    let remote = conn.remote;
                    let service = hyper::service::service_fn(move |r| {
                        let page = page.clone();
                        async move { Ok::<_, Infallible>(page.answer(r, remote, number).await) }
                    });
                    let served = tokio::time::timeout(
                        CONNECTION_LIFETIME,
                        hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(conn.tls), service),
                    )
                    .await;
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%remote, "approval page connection: {e}"),
                        Err(_) => tracing::info!(%remote, "approval page connection open too long; closed"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    Ok(())
}

/// A form or JSON body's fields.
type Fields = HashMap<String, String>;

fn field<'a>(fields: &'a Fields, name: &str) -> Result<&'a str, WebError> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| WebError::Malformed(format!("missing field {name}")))
}

/// What `/api/begin` is asked for.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Begin {
    /// `read`, `approve`, `deny`, `revoke` or `enroll`.
    purpose: String,
    operator: String,
    /// The request or grant id, for `approve`, `deny` and `revoke`.
    #[serde(default)]
    target: String,
    /// Why, for `revoke`.
    #[serde(default)]
    reason: String,
}

/// How a response should carry an error: as JSON for the script, as a page for a person.
#[derive(Clone, Copy)]
enum Answer {
    Json,
    Html,
}

impl Page {
    async fn answer(
        self: Arc<Self>,
        request: Request<Incoming>,
        remote: SocketAddr,
        connection: u64,
    ) -> Response<Full<Bytes>> {
        let caller = Caller::Remote(RemotePeer {
            addr: remote,
            connection,
            session_operator: None,
            web: true,
        });
        let path = request.uri().path().to_owned();
        let answer = if path.starts_with("/api/") {
            Answer::Json
        } else {
            Answer::Html
        };
        match self.route(request, caller, &path).await {
            Ok(response) => response,
            Err(e) => {
                let status = http_status(e.kind());
                // A stranger learns that it failed, not how: the detail is in the log.
                let message = if status.is_server_error() {
                    tracing::error!(%remote, path, code = e.code(), "approval page: {e}");
                    "latchkeyd could not do this now; its log says why".to_owned()
                } else {
                    tracing::info!(%remote, path, code = e.code(), "approval page: {e}");
                    e.to_string()
                };
                match answer {
                    Answer::Json => json(
                        status,
                        &serde_json::json!({ "code": e.code(), "message": message }),
                    ),
                    Answer::Html => html(status, &pages::error(e.code(), &message)),
                }
            }
        }
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        caller: Caller,
        path: &str,
    ) -> Result<Response<Full<Bytes>>, WebError> {
        let method = request.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if method == Method::GET || method == Method::HEAD {
            return shown(&segments, path);
        }
        if method != Method::POST {
            return Err(WebError::MethodNotAllowed(method.to_string()));
        }
        // Every POST comes from the page itself: a browser says where from. The key's
        // signature covers the origin too; this refuses cross-site posts before any work.
        let got = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        if got != self.origin {
            return Err(WebError::WrongOrigin {
                expected: self.origin.clone(),
                got,
            });
        }
        let is_json = segments.as_slice() == ["api", "begin"];
        let body = tokio::time::timeout(
            BODY_TIMEOUT,
            Limited::new(request.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| WebError::Malformed("the body did not arrive in time".to_owned()))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                WebError::TooLarge
            } else {
                WebError::Malformed(e.to_string())
            }
        })?
        .to_bytes();
        if is_json {
            let begin: Begin =
                serde_json::from_slice(&body).map_err(|e| WebError::Malformed(e.to_string()))?;
            return self.begin(caller, begin).await;
        }
        let fields: Fields = form_urlencoded::parse(&body).into_owned().collect();
        let page = self.posted(&segments, path, caller, fields).await?;
        Ok(html(StatusCode::OK, &page))
    }

    /// A signed form's answer: the page it leads to.
    async fn posted(
        &self,
        segments: &[&str],
        path: &str,
        caller: Caller,
        fields: Fields,
    ) -> Result<String, WebError> {
        let authority = self.authority.clone();
        if let [_, id, ..] = segments {
            pages::checked_id(id)?;
        }
        match segments {
            ["requests"] => {
                blocking(move || {
                    let operator = prove(&authority, &caller, &fields)?;
                    let pending = authority.requests(Some("pending"))?;
                    pages::request_list(&authority, &operator, &pending)
                })
                .await
            }
            ["requests", id] => {
                let id = (*id).to_owned();
                blocking(move || {
                    let operator = prove(&authority, &caller, &fields)?;
                    let view = authority.request(&id)?;
                    pages::request_page(&authority, &operator, &view)
                })
                .await
            }
            ["requests", id, "vote"] => {
                let id = (*id).to_owned();
                blocking(move || {
                    let decision = match field(&fields, "decision")? {
                        "approve" => Decision::Approve,
                        "deny" => Decision::Deny,
                        other => {
                            return Err(WebError::Malformed(format!("decision {other:?}")));
                        }
                    };
                    let result = authority.cast_vote(
                        &caller,
                        &VoteTarget::Request(id.clone()),
                        decision,
                        field(&fields, "ceremony_id")?,
                        field(&fields, "credential")?,
                    )?;
                    Ok(pages::vote_result(&id, decision, &result))
                })
                .await
            }
            ["grants", id] => {
                let id = (*id).to_owned();
                blocking(move || {
                    let operator = prove(&authority, &caller, &fields)?;
                    let grant = authority.grant(&id)?;
                    Ok(pages::grant_page(&operator, &grant, authority.now()))
                })
                .await
            }
            ["grants", id, "revoke"] => {
                let id = (*id).to_owned();
                blocking(move || {
                    let grant = authority.revoke(
                        &caller,
                        &id,
                        field(&fields, "reason")?,
                        field(&fields, "ceremony_id")?,
                        field(&fields, "credential")?,
                    )?;
                    authority.wake_scheduler();
                    Ok(pages::revoke_result(&grant, authority.now()))
                })
                .await
            }
            ["enroll"] => {
                blocking(move || {
                    let (key, change) = authority.propose_key(
                        &caller,
                        field(&fields, "ceremony_id")?,
                        field(&fields, "credential")?,
                        field(&fields, "note")?,
                    )?;
                    Ok(pages::proposed_key(&key, &change))
                })
                .await
            }
            _ => Err(WebError::NotFound(path.to_owned())),
        }
    }

    /// Starts a key ceremony for the script: rate limited like the remote port's Begin calls.
    async fn begin(&self, caller: Caller, begin: Begin) -> Result<Response<Full<Bytes>>, WebError> {
        let Caller::Remote(peer) = &caller else {
            return Err(WebError::Task(
                "the page's caller is always remote".to_owned(),
            ));
        };
        // Half the challenge budget stays for the bastion's own callers.
        let remote_share = crate::base::constants::MAX_KEPT_CHALLENGES / 2;
        if self.authority.challenges_kept() >= remote_share
            || !self.limits.admit(peer.addr.ip(), self.authority.now())
        {
            return Err(WebError::RateLimited);
        }
        let authority = self.authority.clone();
        let opened = blocking(move || {
            let operator = begin.operator.trim();
            let opened = match begin.purpose.as_str() {
                "read" => authority.begin_session(&caller, operator)?.0,
                "approve" | "deny" => {
                    let decision = if begin.purpose == "approve" {
                        Decision::Approve
                    } else {
                        Decision::Deny
                    };
                    let target = VoteTarget::Request(begin.target.clone());
                    authority
                        .begin_vote(&caller, &target, operator, decision)
                        .map_err(|e| opaque(&begin, &e))?
                        .0
                }
                "revoke" => {
                    authority
                        .begin_revoke(&caller, &begin.target, operator, &begin.reason)
                        .map_err(|e| opaque(&begin, &e))?
                        .0
                }
                "enroll" => authority.begin_key_proposal(&caller, operator)?,
                other => return Err(WebError::Malformed(format!("purpose {other:?}"))),
            };
            if opened.options_json.is_empty() {
                return Err(WebError::NoSecurityKey(operator.to_owned()));
            }
            Ok(opened)
        })
        .await?;
        let options: serde_json::Value = serde_json::from_str(&opened.options_json)
            .map_err(|e| WebError::Task(format!("options: {e}")))?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "ceremony_id": opened.ceremony_id,
                "options": without_nulls(options),
            }),
        ))
    }
}

/// A page anyone may load: the shells that ask for a key touch, the script and stylesheet.
fn shown(segments: &[&str], path: &str) -> Result<Response<Full<Bytes>>, WebError> {
    match segments {
        [""] => Ok(redirect("/requests")),
        ["static", "page.js"] => Ok(asset("text/javascript; charset=utf-8", PAGE_JS)),
        ["static", "page.css"] => Ok(asset("text/css; charset=utf-8", PAGE_CSS)),
        ["requests"] => Ok(html(StatusCode::OK, &pages::unlock_list())),
        ["requests", id] => Ok(html(StatusCode::OK, &pages::unlock_request(id)?)),
        ["grants", id] => Ok(html(StatusCode::OK, &pages::unlock_grant(id)?)),
        ["enroll"] => Ok(html(StatusCode::OK, &pages::enroll_form())),
        _ => Err(WebError::NotFound(path.to_owned())),
    }
}

/// A refusal before the key touch, told without its reason: the remote port asks for a read
/// session before these, and the page must not tell a stranger with a link whether a request
/// is pending, a grant active, or an operator may vote. The reason goes to the log.
fn opaque(begin: &Begin, e: &WorkflowError) -> WebError {
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::Internal | ErrorKind::ResourceExhausted => {
            WebError::Task(e.to_string())
        }
        _ => {
            tracing::info!(
                purpose = begin.purpose,
                operator = begin.operator,
                target = begin.target,
                code = e.code(),
                "approval page: refused before the key touch: {e}"
            );
            WebError::Refused
        }
    }
}

/// The options without `null` members: the browser's `parse…OptionsFromJSON` takes absent
/// members as unset but refuses `null` where a list or string belongs.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(without_nulls).collect())
        }
        other => other,
    }
}

/// Checks the read assertion a page POST carries; returns the operator.
fn prove(authority: &Authority, caller: &Caller, fields: &Fields) -> Result<String, WebError> {
    Ok(authority.prove_reader(
        caller,
        field(fields, "ceremony_id")?,
        field(fields, "credential")?,
    )?)
}

/// Runs store work off the async workers (it may wait for a flush).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Task(e.to_string()))?
}

fn with_headers(mut response: Response<Full<Bytes>>, content_type: &str) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    // Not no-referrer: with it, a form post says `Origin: null` and is refused.
    set(header::REFERRER_POLICY, "same-origin");
    set(header::CACHE_CONTROL, "no-store");
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        header::HeaderName::from_static("permissions-policy"),
        "publickey-credentials-get=(self), publickey-credentials-create=(self)",
    );
    response
}

fn html(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    with_headers(response, "text/html; charset=utf-8")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    with_headers(response, "application/json")
}

fn asset(content_type: &str, body: &'static str) -> Response<Full<Bytes>> {
    with_headers(
        Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
        content_type,
    )
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut response = html(StatusCode::SEE_OTHER, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_lose_their_null_members_and_keep_everything_else() {
        let options = serde_json::json!({
            "publicKey": { "challenge": "abc", "hints": null, "allowCredentials": [
                { "id": "x", "transports": null, "type": "public-key" }
            ], "timeout": 60000 }
        });
        assert_eq!(
            without_nulls(options),
            serde_json::json!({
                "publicKey": { "challenge": "abc", "allowCredentials": [
                    { "id": "x", "type": "public-key" }
                ], "timeout": 60000 }
            })
        );
    }

    #[test]
    fn every_error_kind_has_an_http_status_a_browser_understands() {
        assert_eq!(
            http_status(ErrorKind::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            http_status(ErrorKind::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(
                WebError::WrongOrigin {
                    expected: "https://a".into(),
                    got: "none".into()
                }
                .kind()
            ),
            StatusCode::FORBIDDEN
        );
    }
}
