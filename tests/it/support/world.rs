//! A break-glass world: one in-process daemon on a manual clock with software FIDO2 keys,
//! driven by the tonic clients generated from the proto (a workload over mutual TLS, operators
//! over the local socket).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use latchkey::base::clock::{Clock as _, ManualClock};
use latchkey::client::access::{self, Target};
use latchkey::client::authenticator::{Authenticator, KeyError};
use latchkey::daemon::config::Config;
use latchkey::daemon::{self, Running};
use latchkey::domain::policy::Decision;
use latchkey::pb;
use latchkey::pb::access_service_client::AccessServiceClient;
use latchkey::pb::trust_service_client::TrustServiceClient;
use latchkey::rpc::ERROR_CODE_METADATA;
use latchkey::store::Keyspace;
use tonic::transport::Channel;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url,
};

use super::{ClientCert, DaemonDir, server_cert};

pub(crate) const ORIGIN: &str = "https://latchkey.local";

/// A software key held in memory.
pub(crate) struct MemKey(SoftToken);

impl MemKey {
    pub(crate) fn new() -> Self {
        Self(SoftToken::new(true).unwrap().0)
    }
}

impl Authenticator for MemKey {
    fn register(
        &mut self,
        origin: &Url,
        options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError> {
        self.0
            .do_registration(origin.clone(), options)
            .map_err(|e| KeyError::Device(format!("{e:?}")))
    }

    fn assert(
        &mut self,
        origin: &Url,
        options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError> {
        self.0
            .do_authentication(origin.clone(), options)
            .map_err(|e| KeyError::Device(format!("{e:?}")))
    }
}

pub(crate) struct Bg {
    /// Wraps the store on every start (fault-injection tests).
    pub layer: Option<daemon::StoreLayer>,
    pub dir: DaemonDir,
    pub clock: ManualClock,
    pub running: Option<Running>,
    /// Each operator's keys, first enrolled first.
    pub keys: HashMap<String, Vec<Box<dyn Authenticator + Send>>>,
}

pub(crate) fn code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| format!("(no code) {status}"))
}

pub(crate) fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

/// The `db-root` scope of the acceptance: 2 approvals of `dba-oncall`.
pub(crate) fn db_root(pending_timeout: i64) -> pb::Scope {
    pb::Scope {
        name: "db-root".into(),
        owner: "dba-team".into(),
        runbook: "Connect to the primary, fix replication, rotate the root password.".into(),
        runbook_url: "https://wiki.example/runbooks/db-root".into(),
        bearer: true,
        ssh: None,
        default_ttl: Some(secs(900)),
        max_ttl: Some(secs(3600)),
        policy: Some(pb::ApprovalPolicy {
            quorum: 2,
            approver_role: "dba-oncall".into(),
            require_user_verification: false,
            require_attested_hardware: false,
            pending_timeout: Some(secs(pending_timeout)),
            denials_to_reject: 1,
            ..Default::default()
        }),
        requester_roles: vec!["dba-oncall".into()],
        requester_workloads: vec!["vault-db".into()],
        ..Default::default()
    }
}

impl Bg {
    pub(crate) async fn start() -> Self {
        Self::start_with(DaemonDir::init(), "").await
    }

    /// Starts on `dir` with `extra` appended to the config (e.g. a `[piv]` table).
    pub(crate) async fn start_with(dir: DaemonDir, extra: &str) -> Self {
        Self::start_layered(dir, extra, None).await
    }

    /// Starts with the store wrapped by `layer`, here and on every restart.
    pub(crate) async fn start_layered(
        dir: DaemonDir,
        extra: &str,
        layer: Option<daemon::StoreLayer>,
    ) -> Self {
        let text = format!(
            "version = 1\ndata_dir = \"{}\"\ndev_mode = true\n[unix]\npath = \"{}\"\n[tls]\nlisten = \"127.0.0.1:0\"\n[fido2]\nrequire_user_verification = false\n{extra}\n",
            dir.data.display(),
            dir.socket.display()
        );
        let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        // The same config on disk, for commands that read it (`latchkeyd doctor`).
        std::fs::write(&dir.config, &text).unwrap();
        // Start at the real time: a real sshd checks minted certificates against it.
        let clock = ManualClock::new(latchkey::base::clock::SystemClock.now());
        let running = daemon::start_layered(&config, Arc::new(clock.clone()), layer.clone())
            .await
            .unwrap();
        Self {
            layer,
            dir,
            clock,
            running: Some(running),
            keys: HashMap::new(),
        }
    }

    /// Stops the daemon and starts it again on the same store, config and clock (whatever
    /// the test did to the store or the clock in between is what it finds).
    pub(crate) async fn restart(&mut self, between: impl FnOnce(&DaemonDir)) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
        between(&self.dir);
        let text = std::fs::read_to_string(&self.dir.config).unwrap();
        let config = Config::parse(&text, &self.dir.config).unwrap();
        // sled releases its file lock from its own I/O threads a moment after the last handle
        // is dropped (a new process never meets this): retry while the lock is still taken.
        for _ in 0..500 {
            match daemon::start_layered(&config, Arc::new(self.clock.clone()), self.layer.clone())
                .await
            {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("restart: {e}"),
            }
        }
        panic!("the store's lock was not released within 5 s");
    }

    pub(crate) fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub(crate) async fn local(&self) -> Channel {
        latchkey::client::connect_unix(&self.dir.socket)
            .await
            .unwrap()
    }

    pub(crate) async fn tls(&self, cert: &ClientCert) -> Channel {
        latchkey::client::connect_tls(
            self.running().tls_addr().unwrap(),
            server_cert(&self.dir.data),
            cert.identity(),
        )
        .await
        .unwrap()
    }

    /// Everything in the store but pending challenges, which are not state.
    pub(crate) fn snapshot(&self) -> Vec<(Keyspace, Vec<latchkey::store::Entry>)> {
        let store = self.running().authority().store();
        Keyspace::ALL
            .iter()
            .filter(|ks| **ks != Keyspace::Ceremonies)
            .map(|ks| (*ks, store.scan_from(*ks, b"", usize::MAX).unwrap()))
            .collect()
    }

    /// Enrolls a new key for `operator` (genesis: at once; after: a proposed change).
    pub(crate) async fn enroll(
        &mut self,
        operator: &str,
        role: &str,
        note: &str,
    ) -> Result<pb::FinishEnrollmentResponse, tonic::Status> {
        self.enroll_key(operator, role, note, Box::new(MemKey::new()))
            .await
    }

    /// Enrolls `key` (FIDO2 or PIV) for `operator`; it is kept for later votes either way.
    pub(crate) async fn enroll_key(
        &mut self,
        operator: &str,
        role: &str,
        note: &str,
        mut key: Box<dyn Authenticator + Send>,
    ) -> Result<pb::FinishEnrollmentResponse, tonic::Status> {
        let result = latchkey::client::enroll(
            self.local().await,
            operator,
            vec![role.into()],
            key.as_mut(),
            Some(ORIGIN),
            note,
        )
        .await;
        self.keys.entry(operator.into()).or_default().push(key);
        result.map_err(|e| match e {
            latchkey::client::ClientError::Refused(s) => s,
            other => panic!("{other}"),
        })
    }

    pub(crate) async fn propose(
        &self,
        note: &str,
        change: pb::propose_change_request::Change,
    ) -> Result<pb::ChangeInfo, tonic::Status> {
        TrustServiceClient::new(self.local().await)
            .propose_change(pb::ProposeChangeRequest {
                note: note.into(),
                change: Some(change),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().change.unwrap())
    }

    /// Votes with the operator's `key_index`th key, through the CLI's client code.
    pub(crate) async fn vote(
        &mut self,
        target: Target,
        operator: &str,
        decision: Decision,
        key_index: usize,
    ) -> Result<pb::CastVoteResponse, tonic::Status> {
        let channel = self.local().await;
        let key = self.keys.get_mut(operator).unwrap()[key_index].as_mut();
        access::vote(channel, &target, operator, decision, key, Some(ORIGIN))
            .await
            .map_err(|e| match e {
                latchkey::client::ClientError::Refused(s) => s,
                other => panic!("{other}"),
            })
    }

    pub(crate) async fn begin_vote(
        &self,
        target: pb::vote_target::Target,
        operator: &str,
        decision: pb::Decision,
    ) -> Result<(String, RequestChallengeResponse), tonic::Status> {
        let begun = AccessServiceClient::new(self.local().await)
            .begin_vote(pb::BeginVoteRequest {
                target: Some(pb::VoteTarget {
                    target: Some(target),
                }),
                operator: operator.into(),
                decision: decision.into(),
            })
            .await?
            .into_inner();
        Ok((
            begun.ceremony_id,
            serde_json::from_str(&begun.request_options_json).unwrap(),
        ))
    }

    pub(crate) fn sign(
        &mut self,
        operator: &str,
        key_index: usize,
        options: RequestChallengeResponse,
    ) -> String {
        let key = &mut self.keys.get_mut(operator).unwrap()[key_index];
        serde_json::to_string(&key.assert(&Url::parse(ORIGIN).unwrap(), options).unwrap()).unwrap()
    }

    pub(crate) async fn cast(
        &self,
        channel: Channel,
        target: pb::vote_target::Target,
        decision: pb::Decision,
        ceremony_id: &str,
        credential_json: String,
    ) -> Result<pb::CastVoteResponse, tonic::Status> {
        AccessServiceClient::new(channel)
            .cast_vote(pb::CastVoteRequest {
                target: Some(pb::VoteTarget {
                    target: Some(target),
                }),
                decision: decision.into(),
                ceremony_id: ceremony_id.into(),
                credential_json,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub(crate) async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops the daemon, keeping its directory and keys (a bastion that went down).
    pub(crate) async fn halt(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }
}

/// The world of the acceptance tests: dba-oncall operators carol and dave (dave holds two
/// keys), erin of web-oncall, the `db-root` scope, workloads `vault-db` (requests db-root) and
/// `vault-plugin` (introspects), then admins alice, bob and frank, which closes genesis.
pub(crate) struct World {
    pub bg: Bg,
    pub vault_db: ClientCert,
    pub plugin: ClientCert,
}

pub(crate) async fn world(pending_timeout: i64, ssh: Option<pb::SshSpec>) -> World {
    let mut scope = db_root(pending_timeout);
    scope.ssh = ssh;
    world_with(scope).await
}

/// The world with `scope` in place of the plain `db-root`.
pub(crate) async fn world_with(scope: pb::Scope) -> World {
    world_layered(scope, None).await
}

/// The world with its store wrapped by `layer`.
pub(crate) async fn world_layered(scope: pb::Scope, layer: Option<daemon::StoreLayer>) -> World {
    world_on(Bg::start_layered(DaemonDir::init(), "", layer).await, scope).await
}

/// The world with `extra` appended to the daemon's config.
pub(crate) async fn world_configured(scope: pb::Scope, extra: &str) -> World {
    world_on(Bg::start_with(DaemonDir::init(), extra).await, scope).await
}

/// The world on a daemon already started (e.g. on a shared store).
pub(crate) async fn world_on_daemon(bg: Bg, scope: pb::Scope) -> World {
    world_on(bg, scope).await
}

async fn world_on(mut bg: Bg, scope: pb::Scope) -> World {
    use pb::propose_change_request::Change as C;
    for (name, role) in [
        ("carol", "dba-oncall"),
        ("dave", "dba-oncall"),
        ("dave", "dba-oncall"),
        ("erin", "web-oncall"),
    ] {
        bg.enroll(name, role, "").await.unwrap();
    }
    let applied = bg.propose("bootstrap", C::PutScope(scope)).await.unwrap();
    assert_eq!(
        applied.state(),
        pb::ChangeState::Applied,
        "genesis applies at once"
    );
    let vault_db = ClientCert::generate(bg.dir.dir.path(), "vault-db");
    let plugin = ClientCert::generate(bg.dir.dir.path(), "vault-plugin");
    for (cert, name, scopes, introspect) in [
        (&vault_db, "vault-db", vec!["db-root".to_owned()], false),
        (&plugin, "vault-plugin", vec![], true),
    ] {
        bg.propose(
            "bootstrap",
            C::PutWorkload(pb::PutWorkload {
                name: name.into(),
                owner: "platform-team".into(),
                certificate_pem: std::fs::read_to_string(&cert.cert).unwrap(),
                scopes,
                introspect,
            }),
        )
        .await
        .unwrap();
    }
    for admin in ["alice", "bob"] {
        bg.enroll(admin, "admin", "").await.unwrap();
    }
    // Genesis closed at two admins; a third joins by quorum.
    let proposed = bg
        .enroll(
            "frank",
            "admin",
            "frank showed his badge to alice and bob in person",
        )
        .await
        .unwrap();
    assert!(!proposed.change_id.is_empty());
    for admin in ["alice", "bob"] {
        bg.vote(
            Target::Change(proposed.change_id.clone()),
            admin,
            Decision::Approve,
            0,
        )
        .await
        .unwrap();
    }
    World {
        bg,
        vault_db,
        plugin,
    }
}

/// The delivery key of every test request: a fixed X25519 secret, so a test can open any
/// credential it collects.
pub(crate) fn delivery_key() -> latchkey::credential::delivery::DeliveryKey {
    latchkey::credential::delivery::DeliveryKey::from_secret(&[7u8; 32]).unwrap()
}

pub(crate) fn draft(ttl: Option<i64>) -> pb::RequestDraft {
    pb::RequestDraft {
        delivery_public_key: delivery_key().public_key().to_vec(),
        scope: "db-root".into(),
        reason: "primary database down, replication stuck (INC-4711)".into(),
        ttl: ttl.map(secs),
        ticket: "INC-4711".into(),
        ssh_public_key: String::new(),
    }
}

pub(crate) async fn workload_request(w: &World, ttl: Option<i64>) -> pb::RequestInfo {
    AccessServiceClient::new(w.bg.tls(&w.vault_db).await)
        .create_request(pb::CreateRequestRequest {
            draft: Some(draft(ttl)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

pub(crate) async fn introspect(w: &World, token: &str) -> pb::IntrospectResponse {
    AccessServiceClient::new(w.bg.tls(&w.plugin).await)
        .introspect(pb::IntrospectRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// `operator` asks for `db-root` with their first key, as `latchkey request` does.
pub(crate) async fn operator_request(w: &mut World, operator: &str) -> pb::RequestInfo {
    let mut key = w.bg.keys.get_mut(operator).unwrap().remove(0);
    let asked = access::request(
        w.bg.local().await,
        draft(None),
        Some((operator, key.as_mut(), Some(ORIGIN))),
    )
    .await
    .unwrap();
    w.bg.keys.get_mut(operator).unwrap().insert(0, key);
    asked
}
