//! Client side of break-glass: requesting, voting (after checking that what the key signs is
//! what was shown), waiting for the credential, changes and listings.

use tonic::transport::Channel;

use super::ClientError;
use super::authenticator::Authenticator;
use crate::credential::delivery::{DeliveryKey, SealedToken};
use crate::domain::policy::Decision;
use crate::pb;
use crate::pb::access_service_client::AccessServiceClient;
use crate::pb::trust_service_client::TrustServiceClient;

/// What a vote is on, as the CLI names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A request id.
    Request(String),
    /// A change id.
    Change(String),
}

impl Target {
    fn to_pb(&self) -> pb::VoteTarget {
        pb::VoteTarget {
            target: Some(match self {
                Target::Request(id) => pb::vote_target::Target::RequestId(id.clone()),
                Target::Change(id) => pb::vote_target::Target::ChangeId(id.clone()),
            }),
        }
    }

    fn label(&self) -> String {
        match self {
            Target::Request(id) => format!("request/{id}"),
            Target::Change(id) => format!("change/{id}"),
        }
    }
}

fn decision_pb(d: Decision) -> pb::Decision {
    match d {
        Decision::Approve => pb::Decision::Approve,
        Decision::Deny => pb::Decision::Deny,
    }
}

/// What an approver is shown before touching their key: the canonical text the daemon stored,
/// checked here against the digest the vote will be bound to.
#[derive(Clone, Debug)]
pub struct Shown {
    /// The canonical JSON text (exactly what the digest covers).
    pub canonical_json: String,
    /// Its digest, recomputed here.
    pub digest: [u8; 32],
}

/// Fetches the request or change, recomputes its digest from the canonical text, and refuses
/// if the daemon's digest differs.
pub async fn shown(channel: Channel, target: &Target) -> Result<Shown, ClientError> {
    let (canonical_json, claimed) = match target {
        Target::Request(id) => {
            let r = AccessServiceClient::new(channel)
                .show_request(pb::ShowRequestRequest { id: id.clone() })
                .await?
                .into_inner()
                .request
                .ok_or_else(|| ClientError::Protocol("no request in the answer".into()))?;
            (r.canonical_json, r.digest)
        }
        Target::Change(id) => {
            let c = TrustServiceClient::new(channel)
                .show_change(pb::ShowChangeRequest { id: id.clone() })
                .await?
                .into_inner()
                .change
                .ok_or_else(|| ClientError::Protocol("no change in the answer".into()))?;
            (c.canonical_json, c.digest)
        }
    };
    let digest = match target {
        Target::Request(_) => crate::domain::request::digest_of(&canonical_json),
        Target::Change(_) => crate::domain::change::digest_of(&canonical_json),
    };
    if claimed != digest {
        return Err(ClientError::DigestMismatch(format!(
            "the daemon's digest for {} does not match the text it showed",
            target.label()
        )));
    }
    Ok(Shown {
        canonical_json,
        digest,
    })
}

/// Votes on a request or change as `operator`: shows, checks the digest, signs, submits.
pub async fn vote(
    channel: Channel,
    target: &Target,
    operator: &str,
    decision: Decision,
    authenticator: &mut dyn Authenticator,
    origin: Option<&str>,
) -> Result<pb::CastVoteResponse, ClientError> {
    let shown = shown(channel.clone(), target).await?;
    let expected = crate::domain::request::vote_digest(&target.label(), decision, &shown.digest);
    let mut client = AccessServiceClient::new(channel);
    let begun = client
        .begin_vote(pb::BeginVoteRequest {
            target: Some(target.to_pb()),
            operator: operator.to_owned(),
            decision: decision_pb(decision).into(),
        })
        .await?
        .into_inner();
    if begun.vote_digest != expected {
        return Err(ClientError::DigestMismatch(format!(
            "the challenge for {} is not bound to what was shown",
            target.label()
        )));
    }
    let credential_json =
        authenticator.respond(origin, &begun.request_options_json, &begun.piv_challenge)?;
    Ok(client
        .cast_vote(pb::CastVoteRequest {
            target: Some(target.to_pb()),
            decision: decision_pb(decision).into(),
            ceremony_id: begun.ceremony_id,
            credential_json,
        })
        .await?
        .into_inner())
}

/// Submits a request as an operator (signed with their key) or, with `operator` None, as the
/// workload the channel's TLS identity is.
pub async fn request(
    channel: Channel,
    draft: pb::RequestDraft,
    operator: Option<(&str, &mut dyn Authenticator, Option<&str>)>,
) -> Result<pb::RequestInfo, ClientError> {
    let mut client = AccessServiceClient::new(channel);
    let (ceremony_id, credential_json) = match operator {
        None => (String::new(), String::new()),
        Some((name, authenticator, origin)) => {
            let begun = client
                .begin_request(pb::BeginRequestRequest {
                    operator: name.to_owned(),
                    draft: Some(draft.clone()),
                })
                .await?
                .into_inner();
            let credential_json =
                authenticator.respond(origin, &begun.request_options_json, &begun.piv_challenge)?;
            (begun.ceremony_id, credential_json)
        }
    };
    client
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft),
            ceremony_id,
            credential_json,
        })
        .await?
        .into_inner()
        .request
        .ok_or_else(|| ClientError::Protocol("no request in the answer".into()))
}

/// A collected credential, the bearer token opened with the request's delivery key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    /// The grant.
    pub grant_id: String,
    /// The bearer token; empty if the scope mints none.
    pub bearer_token: String,
    /// The OpenSSH certificate; empty if the scope mints none.
    pub ssh_certificate: String,
    /// Expiry.
    pub expires_at: Option<prost_types::Timestamp>,
    pub scope: String,
}

/// Opens a delivered credential with the request's delivery key.
pub fn open_credential(
    credential: pb::Credential,
    key: Option<&DeliveryKey>,
) -> Result<Collected, ClientError> {
    let bearer_token = match (&credential.sealed_bearer_token, key) {
        (None, _) => String::new(),
        (Some(sealed), Some(key)) => key
            .open(
                &SealedToken::from_bytes(&sealed.encapsulated_key, &sealed.ciphertext),
                &credential.grant_id,
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?,
        (Some(_), None) => {
            return Err(ClientError::Protocol(
                "the credential holds a sealed bearer token but no delivery key was given".into(),
            ));
        }
    };
    Ok(Collected {
        grant_id: credential.grant_id,
        bearer_token,
        ssh_certificate: credential.ssh_certificate,
        expires_at: credential.expires_at,
        scope: credential.scope,
    })
}

/// Waits for the request to end, calling `progress` with every update; returns the final
/// request and, if one was issued, the credential opened with `key` (the private half of the
/// request's delivery key).
pub async fn wait(
    channel: Channel,
    id: &str,
    key: Option<&DeliveryKey>,
    progress: impl FnMut(&pb::RequestInfo),
) -> Result<(pb::RequestInfo, Option<Collected>), ClientError> {
    wait_reauth::<NoKey>(channel, id, key, progress, None).await
}

/// No key: a wait that never reopens a session (the local socket, mutual TLS).
enum NoKey {}

impl Authenticator for NoKey {
    fn register(
        &mut self,
        _: &url::Url,
        _: webauthn_rs_proto::CreationChallengeResponse,
    ) -> Result<
        webauthn_rs_proto::RegisterPublicKeyCredential,
        crate::client::authenticator::KeyError,
    > {
        match *self {}
    }

    fn assert(
        &mut self,
        _: &url::Url,
        _: webauthn_rs_proto::RequestChallengeResponse,
    ) -> Result<webauthn_rs_proto::PublicKeyCredential, crate::client::authenticator::KeyError>
    {
        match *self {}
    }
}

/// Who opens a read session again on the remote port when it asks for one (a daemon restart
/// or a reconnect ends sessions): one key touch each time.
pub struct Reauth<'a, K: Authenticator + ?Sized> {
    /// The operator.
    pub operator: &'a str,
    /// Their key.
    pub key: &'a mut K,
    /// WebAuthn origin to claim.
    pub origin: Option<&'a str>,
}

/// Sessions opened in a row without the daemon answering in between before `wait` gives up.
const MAX_REAUTH: u32 = 3;

/// [`wait`], reopening the read session with `reauth` whenever the remote port asks.
pub async fn wait_reauth<K: Authenticator + ?Sized>(
    channel: Channel,
    id: &str,
    key: Option<&DeliveryKey>,
    mut progress: impl FnMut(&pb::RequestInfo),
    mut reauth: Option<Reauth<'_, K>>,
) -> Result<(pb::RequestInfo, Option<Collected>), ClientError> {
    let mut reopened = 0;
    let mut last = None;
    let mut lost_since: Option<std::time::Instant> = None;
    let mut backoff = RECONNECT_FIRST;
    loop {
        let mut heard = false;
        let watched = watch_once(
            channel.clone(),
            id,
            key,
            &mut progress,
            (&mut last, &mut heard),
        );
        let outcome = watched.await;
        if heard {
            // The daemon answered since the last loss: a later loss starts the clock anew.
            lost_since = None;
            backoff = RECONNECT_FIRST;
            reopened = 0;
        }
        let lost = match outcome {
            Ok(Some(done)) => return Ok(done),
            // A stream that ends while the request is still pending: the daemon stopped.
            Ok(None)
                if last
                    .as_ref()
                    .is_some_and(|r| r.state() == pb::RequestState::Pending) =>
            {
                tonic::Status::unavailable("the daemon closed the watch")
            }
            Ok(None) => {
                return last
                    .map(|r| (r, None))
                    .ok_or_else(|| ClientError::Protocol("the watch ended without a word".into()));
            }
            Err(ClientError::Refused(status)) if is_connection_loss(&status) => status,
            Err(ClientError::Refused(status))
                if refusal_code(&status) == "caller.session_required" && reopened < MAX_REAUTH =>
            {
                let Some(who) = reauth.as_mut() else {
                    return Err(ClientError::Refused(status));
                };
                reopened += 1;
                eprintln!(
                    "latchkey: the read session ended (a daemon restart or a new connection); \
                     touch your key to open another as {}",
                    who.operator
                );
                crate::client::open_session(
                    channel.clone(),
                    who.operator,
                    &mut *who.key,
                    who.origin,
                )
                .await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        // The daemon restarted or the connection broke: watch again (the request and its
        // credential are durable), until it has been gone too long.
        let since = *lost_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(ClientError::Refused(lost));
        }
        eprintln!(
            "latchkey: lost latchkeyd ({}); watching request {id} again in {}",
            lost.message(),
            humantime::format_duration(backoff)
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// The stable code of a refusal.
fn refusal_code(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(crate::rpc::ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// First pause before watching again after the connection to the daemon was lost.
const RECONNECT_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest pause between attempts.
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the daemon may stay unreachable before `wait` gives up.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// One watch stream: `Some` once the request is decided with its credential, `None` if the
/// stream ended; updates `last` with every state seen and sets `heard` once anything came.
async fn watch_once(
    channel: Channel,
    id: &str,
    key: Option<&DeliveryKey>,
    progress: &mut impl FnMut(&pb::RequestInfo),
    (last, heard): (&mut Option<pb::RequestInfo>, &mut bool),
) -> Result<Option<(pb::RequestInfo, Option<Collected>)>, ClientError> {
    let mut stream = AccessServiceClient::new(channel)
        .watch_request(pb::WatchRequestRequest { id: id.to_owned() })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        if let Some(request) = &item.request {
            progress(request);
        }
        if let Some(credential) = item.credential {
            let request = item
                .request
                .ok_or_else(|| ClientError::Protocol("credential without request".into()))?;
            return Ok(Some((request, Some(open_credential(credential, key)?))));
        }
        *last = item.request;
        *heard = true;
    }
    Ok(None)
}

/// Whether a failed call lost the connection rather than being refused by latchkeyd (its
/// refusals always carry a stable code).
pub(crate) fn is_connection_loss(status: &tonic::Status) -> bool {
    !status
        .metadata()
        .contains_key(crate::rpc::ERROR_CODE_METADATA)
        && matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        )
}

/// Waits until the grant's revocation is confirmed by every sink: the grant, or the grant as
/// last seen and why not (unconfirmed past its deadline, or still revoking after `timeout`). Polls the daemon:
/// confirmation takes one scheduler round or a sink's answer.
pub async fn await_revocation(
    channel: Channel,
    grant_id: &str,
    timeout: std::time::Duration,
) -> Result<Result<pb::GrantInfo, (pb::GrantInfo, String)>, ClientError> {
    let started = std::time::Instant::now();
    loop {
        let g = AccessServiceClient::new(channel.clone())
            .show_grant(pb::ShowGrantRequest {
                id: grant_id.to_owned(),
            })
            .await?
            .into_inner()
            .grant
            .ok_or_else(|| ClientError::Protocol("no grant in the answer".into()))?;
        match g.state() {
            pb::GrantState::Revoked => return Ok(Ok(g)),
            pb::GrantState::RevocationUnconfirmed => {
                let sinks = g
                    .sinks
                    .iter()
                    .map(|s| format!("{}={}", s.sink, if s.confirmed { "ok" } else { "pending" }))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Ok(Err((
                    g,
                    format!("revocation unconfirmed past its deadline; sinks: {sinks}"),
                )));
            }
            state if started.elapsed() > timeout => {
                let why = format!(
                    "still {} after {}",
                    state
                        .as_str_name()
                        .trim_start_matches("GRANT_STATE_")
                        .to_ascii_lowercase(),
                    humantime::format_duration(timeout)
                );
                return Ok(Err((g, why)));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}
