//! Client side: connecting to latchkeyd over its local socket or over mutual TLS, and the
//! commands of the `latchkey` CLI. Hardware drivers join here in later issues.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::credential::tls::HandshakeSignatures;
use crate::pb;

pub mod access;
pub mod authenticator;
pub mod cli;
pub mod drill;
pub mod piv_card;

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon could not be reached. Is it running, and is the socket path right?
    #[error("cannot reach latchkeyd at {target}: {detail}{}", connect_hint(.detail))]
    Connect {
        /// Socket path or address.
        target: String,
        /// Why.
        detail: String,
    },
    /// The daemon answered with an error; the message carries its stable code.
    #[error("latchkeyd refused: {}{}", .0.message(), refusal_hint(.0))]
    Refused(tonic::Status),
    /// A certificate or key file could not be read.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The security key or soft token failed; the message says what to do.
    #[error(transparent)]
    Key(authenticator::KeyError),
    /// TLS could not be configured with the given files.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// What the daemon asked the key to sign is not what it showed. Nothing was signed; do
    /// not approve, and report it.
    #[error("refusing to sign: {0}")]
    DigestMismatch(String),
    /// The answer was not what the API promises.
    /// The request ended (denied, cancelled or expired) before a credential was minted: the
    /// answer is no. Make a new request if you still need access.
    #[error("request {id} ended {state} without a credential")]
    RequestEnded {
        /// The request.
        id: String,
        /// How it ended (`denied`, `cancelled`, `expired`).
        state: String,
    },
    /// latchkeyd answered something this client cannot use. Check both versions.
    #[error("unexpected answer from latchkeyd: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Refused(status)
    }
}

fn endpoint() -> Endpoint {
    // The URI is a placeholder: the connector below decides where bytes go.
    Endpoint::from_static("http://latchkeyd.invalid")
}

/// Connects to the daemon's local Unix socket.
pub async fn connect_unix(path: &Path) -> Result<Channel, ClientError> {
    let path = path.to_path_buf();
    let target = path.display().to_string();
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            target,
            detail: error_chain(&e),
        })
}

/// A TLS client identity: certificate chain and private key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Reads one PEM certificate (e.g. the daemon's TLS certificate, to pin it).
pub fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, ClientError> {
    CertificateDer::from_pem_file(path).map_err(|e| ClientError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let file_err = |path: &Path, detail: String| ClientError::File {
            path: path.to_path_buf(),
            detail,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(cert, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
        Ok(Self { chain, key })
    }
}

/// What a client pins the daemon by.
#[derive(Debug)]
enum ServerPin {
    /// Its whole certificate.
    Certificate(CertificateDer<'static>),
    /// The SHA-256 of its certificate's SubjectPublicKeyInfo (`latchkey status`: "tls spki").
    Spki([u8; 32]),
}

/// Trusts exactly one server key (the daemon's self-signed certificate); no CA.
#[derive(Debug)]
struct PinnedServer {
    pin: ServerPin,
    signatures: HandshakeSignatures,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = match &self.pin {
            ServerPin::Certificate(cert) => end_entity.as_ref() == cert.as_ref(),
            ServerPin::Spki(spki) => {
                crate::credential::keys::spki_sha256(end_entity).is_ok_and(|s| s == *spki)
            }
        };
        if pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Connects over mutual TLS to `addr`, trusting only `server_cert` and presenting `identity`.
pub async fn connect_tls(
    addr: SocketAddr,
    server_cert: CertificateDer<'static>,
    identity: ClientIdentity,
) -> Result<Channel, ClientError> {
    let provider = crate::credential::tls::provider();
    let verifier = Arc::new(PinnedServer {
        pin: ServerPin::Certificate(server_cert),
        signatures: HandshakeSignatures::of(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                // Small gRPC frames must not wait for Nagle's algorithm.
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("latchkeyd").map_err(io::Error::other)?;
                Ok::<_, io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            target: addr.to_string(),
            detail: error_chain(&e),
        })
}

/// Connects to the daemon's remote operator port at `server` (`HOST:PORT`, a name or an
/// address) over TLS, trusting only the key whose SPKI SHA-256 is `spki`, with no client
/// certificate: each action then proves itself with the operator's key.
pub async fn connect_remote(server: &str, spki: [u8; 32]) -> Result<Channel, ClientError> {
    let provider = crate::credential::tls::provider();
    let verifier = Arc::new(PinnedServer {
        pin: ServerPin::Spki(spki),
        signatures: HandshakeSignatures::of(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = server.to_owned();
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(target.as_str()).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("latchkeyd").map_err(io::Error::other)?;
                Ok::<_, io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            target: server.to_owned(),
            detail: error_chain(&e),
        })
}

/// Opens a read session for `operator` on `channel` (one remote connection) with a touch of
/// their key. Reads on that channel are then served for five minutes.
pub async fn open_session<K: authenticator::Authenticator + ?Sized>(
    channel: Channel,
    operator: &str,
    authenticator: &mut K,
    origin: Option<&str>,
) -> Result<pb::OpenSessionResponse, ClientError> {
    let mut client = pb::operator_service_client::OperatorServiceClient::new(channel);
    let begun = client
        .begin_session(pb::BeginSessionRequest {
            operator: operator.to_owned(),
        })
        .await?
        .into_inner();
    // Sign only what a session is: never a digest the daemon chose for something else.
    if begun.digest != crate::service::sessions::session_digest(operator) {
        return Err(ClientError::DigestMismatch(
            "the daemon asked to sign something other than a session".to_owned(),
        ));
    }
    let credential_json =
        authenticator.respond(origin, &begun.request_options_json, &begun.piv_challenge)?;
    Ok(client
        .open_session(pb::OpenSessionRequest {
            ceremony_id: begun.ceremony_id,
            credential_json,
        })
        .await?
        .into_inner())
}

/// Proposes a trust-store change signed by `operator`'s key (the remote operator port): the
/// daemon returns the digest to sign, which must be the one computed here from the proposal.
pub async fn propose_signed<K: authenticator::Authenticator + ?Sized>(
    channel: Channel,
    proposal: pb::ProposeChangeRequest,
    operator: &str,
    authenticator: &mut K,
    origin: Option<&str>,
) -> Result<pb::ChangeInfo, ClientError> {
    let mut client = pb::trust_service_client::TrustServiceClient::new(channel);
    let expected = crate::rpc::proposal_digest_of(operator, &proposal)?;
    let begun = client
        .begin_propose_change(pb::BeginProposeChangeRequest {
            operator: operator.to_owned(),
            proposal: Some(proposal.clone()),
        })
        .await?
        .into_inner();
    if expected.is_some_and(|expected| begun.digest != expected) {
        return Err(ClientError::DigestMismatch(
            "the challenge is not bound to the proposal sent".to_owned(),
        ));
    }
    let credential_json =
        authenticator.respond(origin, &begun.request_options_json, &begun.piv_challenge)?;
    client
        .propose_change(pb::ProposeChangeRequest {
            ceremony_id: begun.ceremony_id,
            credential_json,
            ..proposal
        })
        .await?
        .into_inner()
        .change
        .ok_or_else(|| ClientError::Protocol("no change".into()))
}

/// An error and its causes, each said once (a cause whose text the chain holds already is
/// skipped: hyper and io both report `(os error 2)`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What to do when the daemon cannot be reached, from what the connection said.
/// The CLI's words for a refusal whose fix is a flag (the daemon's message names no flags:
/// other clients call it too).
fn refusal_hint(status: &tonic::Status) -> &'static str {
    let code = status
        .metadata()
        .get(crate::rpc::ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match code {
        "change.proofing_note_required" => {
            " (add --note \"...\" saying who checked the operator's identity and how)"
        }
        "caller.session_required" => {
            " (over --server, say who you are with --as NAME or LATCHKEY_OPERATOR: a read \
             session takes one key touch)"
        }
        _ => "",
    }
}

fn connect_hint(detail: &str) -> &'static str {
    if detail.contains("os error 2)") {
        " (no socket there: is latchkeyd running, e.g. `systemctl start latchkeyd.socket`, and \
         is --socket or LATCHKEY_SOCKET right?)"
    } else if detail.contains("os error 13)") {
        " (not allowed to open the socket: join the group in `[unix] allow_groups`, e.g. \
         `usermod -aG latchkey $USER`, then log in again)"
    } else if detail.contains("os error 111)") {
        " (nothing is listening: start latchkeyd)"
    } else {
        ""
    }
}

/// What `latchkey status` shows.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Daemon version.
    pub version: String,
    pub store_schema_version: u32,
    /// `open` or `closed`.
    pub genesis: String,
    /// Whether software authenticators are trusted.
    pub dev_mode: bool,
    /// Audit-signing key fingerprint.
    pub audit_key: String,
    /// SSH user CA fingerprint.
    pub ssh_user_ca: String,
    /// TLS certificate SHA-256.
    pub tls_certificate: String,
    /// TLS SPKI SHA-256.
    pub tls_spki: String,
    /// How the daemon saw this caller.
    pub caller: String,
    /// The audit public key (OpenSSH), for `latchkey audit verify --audit-key`.
    pub audit_public_key: String,
    /// The SSH user CA's public key (OpenSSH), for sshd's `TrustedUserCAKeys`.
    pub ssh_user_ca_public_key: String,
}

impl From<pb::StatusResponse> for StatusView {
    fn from(r: pb::StatusResponse) -> Self {
        let genesis = match r.genesis() {
            pb::GenesisState::Open => "open",
            pb::GenesisState::Closed => "closed",
            pb::GenesisState::Unspecified => "unknown",
        }
        .to_owned();
        let fp = r.fingerprints.unwrap_or_default();
        let caller = match r.caller.and_then(|c| c.identity) {
            Some(pb::caller::Identity::Local(l)) => format!("local uid={} gid={}", l.uid, l.gid),
            Some(pb::caller::Identity::Workload(w)) => format!("workload {}", w.name),
            Some(pb::caller::Identity::Remote(r)) if r.session_operator.is_empty() => {
                format!("remote {}", r.address)
            }
            Some(pb::caller::Identity::Remote(r)) => {
                format!("remote {} (session of {})", r.address, r.session_operator)
            }
            None => "unknown".to_owned(),
        };
        Self {
            version: r.version,
            store_schema_version: r.store_schema_version,
            genesis,
            dev_mode: r.dev_mode,
            audit_key: fp.audit_key,
            ssh_user_ca: fp.ssh_user_ca,
            tls_certificate: fp.tls_certificate,
            tls_spki: fp.tls_spki,
            caller,
            audit_public_key: r.audit_public_key,
            ssh_user_ca_public_key: r.ssh_user_ca_public_key,
        }
    }
}

impl std::fmt::Display for StatusView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "latchkeyd {}", self.version)?;
        writeln!(f, "  store schema     {}", self.store_schema_version)?;
        writeln!(f, "  genesis          {}", self.genesis)?;
        writeln!(f, "  dev mode         {}", self.dev_mode)?;
        writeln!(f, "  audit key        {}", self.audit_key)?;
        writeln!(f, "  ssh user CA      {}", self.ssh_user_ca)?;
        writeln!(f, "  tls certificate  {}", self.tls_certificate)?;
        writeln!(f, "  tls spki         {}", self.tls_spki)?;
        writeln!(f, "  audit public key {}", self.audit_public_key)?;
        write!(f, "  you are          {}", self.caller)
    }
}

/// Asks the daemon for its status.
pub async fn status(channel: Channel) -> Result<StatusView, ClientError> {
    let mut client = pb::system_service_client::SystemServiceClient::new(channel);
    Ok(client
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .into())
}

/// Writes the whole audit log as JSON Lines to `out`, after asking the daemon to cover it with
/// a fresh checkpoint (so the export verifies to its end). Returns the number of records.
pub async fn export_audit(
    channel: Channel,
    out: &mut dyn std::io::Write,
) -> Result<u64, ClientError> {
    let mut client = pb::audit_service_client::AuditServiceClient::new(channel);
    let covered = client
        .write_checkpoint(pb::WriteCheckpointRequest {})
        .await?
        .into_inner();
    // End at the checkpoint asked for: records written after it are not covered yet.
    let end = if covered.checkpoint_seq > 0 {
        covered.checkpoint_seq
    } else {
        covered.head_seq
    };
    let mut next = 1;
    let mut written = 0;
    while next <= end {
        let page = client
            .read_records(pb::ReadRecordsRequest {
                from_seq: next,
                limit: 0,
            })
            .await?
            .into_inner();
        if page.records.is_empty() {
            break;
        }
        for record in page.records.into_iter().take_while(|r| r.seq <= end) {
            write_line(out, &record.json)?;
            next = record.seq + 1;
            written += 1;
        }
    }
    Ok(written)
}

/// Writes one line; the reader going away (a closed pipe) ends the output without an error.
fn write_line(out: &mut dyn std::io::Write, line: &str) -> Result<(), ClientError> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(ClientError::File {
            path: PathBuf::from("(output)"),
            detail: e.to_string(),
        }),
    }
}

/// Prints records from `from_seq` on as JSON Lines, then follows the log until the daemon stops.
pub async fn follow_audit(
    channel: Channel,
    from_seq: u64,
    out: &mut dyn std::io::Write,
) -> Result<(), ClientError> {
    let mut client = pb::audit_service_client::AuditServiceClient::new(channel);
    let mut stream = client
        .follow_records(pb::FollowRecordsRequest { from_seq })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        if let Some(record) = item.record {
            write_line(out, &record.json)?;
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Reads an audit public key given as `ssh-ed25519 AAAA...` or as a file holding that line.
pub fn audit_key(spec: &str) -> Result<ed25519_dalek::VerifyingKey, ClientError> {
    let text = if spec.trim_start().starts_with("ssh-ed25519 ") {
        spec.to_owned()
    } else {
        std::fs::read_to_string(spec).map_err(|e| ClientError::File {
            path: PathBuf::from(spec),
            detail: e.to_string(),
        })?
    };
    let bad = |detail: String| ClientError::File {
        path: PathBuf::from(spec),
        detail,
    };
    let key = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|e| bad(format!("not an OpenSSH public key: {e}")))?;
    let ed = key
        .key_data()
        .ed25519()
        .ok_or_else(|| bad("not an Ed25519 key".to_owned()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&ed.0).map_err(|e| bad(e.to_string()))
}

/// Admits a workload over the local socket (genesis only).
pub async fn admit_workload(
    channel: Channel,
    name: String,
    owner: String,
    certificate_pem: String,
    scopes: Vec<String>,
    introspect: bool,
) -> Result<pb::AdmitWorkloadResponse, ClientError> {
    let mut client = pb::workload_service_client::WorkloadServiceClient::new(channel);
    Ok(client
        .admit_workload(pb::AdmitWorkloadRequest {
            name,
            owner,
            certificate_pem,
            scopes,
            introspect,
        })
        .await?
        .into_inner())
}

impl From<authenticator::KeyError> for ClientError {
    fn from(e: authenticator::KeyError) -> Self {
        ClientError::Key(e)
    }
}

/// Enrolls the key in `authenticator` for `operator`: at once during genesis, afterwards as a
/// proposed change carrying the proofing `note`.
pub async fn enroll(
    channel: Channel,
    operator: &str,
    roles: Vec<String>,
    authenticator: &mut dyn authenticator::Authenticator,
    origin: Option<&str>,
    note: &str,
) -> Result<pb::FinishEnrollmentResponse, ClientError> {
    let mut client = pb::operator_service_client::OperatorServiceClient::new(channel);
    let begun = client
        .begin_enrollment(pb::BeginEnrollmentRequest {
            operator: operator.to_owned(),
            roles,
        })
        .await?
        .into_inner();
    let credential_json =
        authenticator.enroll(origin, &begun.creation_options_json, &begun.piv_challenge)?;
    Ok(client
        .finish_enrollment(pb::FinishEnrollmentRequest {
            ceremony_id: begun.ceremony_id,
            credential_json,
            note: note.to_owned(),
        })
        .await?
        .into_inner())
}

/// Signs `digest` as `operator` with `authenticator` (the approval path).
pub async fn sign_digest(
    channel: Channel,
    operator: &str,
    digest: [u8; 32],
    authenticator: &mut dyn authenticator::Authenticator,
    origin: Option<&str>,
) -> Result<pb::FinishAssertionResponse, ClientError> {
    let mut client = pb::operator_service_client::OperatorServiceClient::new(channel);
    let begun = client
        .begin_assertion(pb::BeginAssertionRequest {
            operator: operator.to_owned(),
            digest: digest.to_vec(),
        })
        .await?
        .into_inner();
    let credential_json =
        authenticator.respond(origin, &begun.request_options_json, &begun.piv_challenge)?;
    Ok(client
        .finish_assertion(pb::FinishAssertionRequest {
            ceremony_id: begun.ceremony_id,
            digest: digest.to_vec(),
            credential_json,
        })
        .await?
        .into_inner())
}

/// An operator's roles and keys.
pub async fn show_operator(
    channel: Channel,
    name: &str,
) -> Result<pb::ShowOperatorResponse, ClientError> {
    let mut client = pb::operator_service_client::OperatorServiceClient::new(channel);
    Ok(client
        .show_operator(pb::ShowOperatorRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner())
}
