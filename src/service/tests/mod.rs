//! In-process tests of the break-glass flow, one step at a time: an [`Authority`] on the
//! memory store with a [`ManualClock`] and software FIDO2 keys (webauthn-authenticator-rs
//! SoftToken, byte-exact WebAuthn). No daemon, no socket, no sleeps: time moves only when a
//! test moves it.

mod challenges;
mod changes;
mod genesis;
mod notifications;
mod requests;
mod revocation;
mod shared;
mod votes;
mod web;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, AuditLog, CheckpointPolicy};
use crate::base::caller::{Caller, LocalPeer};
use crate::base::clock::{Clock, ManualClock, Timestamp};
use crate::base::error::Coded;
use crate::client::authenticator::{Authenticator as _, SoftTokenKey};
use crate::credential::delivery::DeliveryKey;
use crate::credential::keys::DaemonKeys;
use crate::domain::change::ChangeKind;
use crate::domain::operator::Opened;
use crate::domain::policy::{ApprovalPolicy, Decision};
use crate::domain::request::Draft;
use crate::domain::scope::{Requesters, RevocationSpec, Scope};
use crate::domain::trust::TrustStorePolicy;
use crate::service::authority::{Authority, Settings};
use crate::service::changes::{ChangeView, Proposal};
use crate::service::requests::RequestView;
use crate::service::trust_store;
use crate::service::votes::{VoteResult, VoteTarget};
use crate::store::{Keyspace, MemoryStore, Store};
use crate::verify::fido2::Fido2Config;
use crate::verify::piv::PivConfig;

/// The trust-store approver role of every world.
const TRUST_ADMIN: &str = "trust-admin";
/// The role that requests and approves the scope `db-root`.
const DBA: &str = "dba-oncall";
/// The uid of every local caller (and the one allowed to introspect).
const UID: u32 = 1000;
/// A proofing note long enough for any change.
const NOTE: &str = "identity checked in person against the HR record, badge 4711";

/// One authority over a memory store, with the operators' soft keys.
struct World {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    authority: Authority,
    keys: HashMap<String, SoftTokenKey>,
}

fn local() -> Caller {
    Caller::Local(LocalPeer {
        uid: UID,
        gid: UID,
        pid: None,
    })
}

/// A bearer-only scope: `dba-oncall` requests, two of `dba-oncall` approve.
fn db_root() -> Scope {
    Scope {
        name: "db-root".into(),
        owner: "dba-team".into(),
        runbook: "Rotate the root password afterwards.".into(),
        runbook_url: "https://wiki.example/db-root".into(),
        bearer: true,
        ssh: None,
        default_ttl_secs: 900,
        max_ttl_secs: 3600,
        policy: ApprovalPolicy {
            quorum: 2,
            approver_role: DBA.into(),
            require_uv: false,
            require_attested: false,
            pending_timeout_secs: 600,
            denials_to_reject: 1,
            piv_touch: None,
            piv_pin: None,
        },
        requesters: Requesters {
            roles: vec![DBA.into()],
            workloads: Vec::new(),
        },
        revocation: RevocationSpec::default(),
    }
}

impl World {
    /// A fresh store in its genesis window (trust-store quorum 2 of `trust-admin`).
    fn genesis() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
            1_763_856_000_000,
        )));
        let keys = Arc::new(DaemonKeys::generate(dir.path(), &[], clock.now()).unwrap());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let checkpoints = CheckpointPolicy { every_records: 64 };
        let signer = crate::audit::signing_key(&keys.audit).unwrap();
        let audit = AuditLog::open(store.clone(), clock.clone(), signer, checkpoints).unwrap();
        let policy = TrustStorePolicy {
            quorum: 2,
            approver_role: TRUST_ADMIN.into(),
        };
        trust_store::initialise(
            &audit,
            policy,
            "in-process".into(),
            clock.now(),
            Actor::Local { uid: 0 },
        )
        .unwrap();
        drop(audit);
        let (fido2, piv) = (Fido2Config::default(), PivConfig::default());
        let authority = Authority::new(
            store.clone(),
            dir.path(),
            clock.clone(),
            keys,
            Settings {
                dev_mode: true,
                checkpoints,
                fido2: &fido2,
                krl_path: dir.path().join("revoked.krl"),
                piv: &piv,
                introspect_uids: vec![UID],
                drill_max_age: Duration::from_secs(30 * 86_400),
                anchor: None,
            },
        )
        .unwrap();
        Self {
            dir,
            clock,
            store,
            authority,
            keys: HashMap::new(),
        }
    }

    /// Genesis done: scope `db-root`, requester `carol` (dba), approvers `alice` and `bob`
    /// (dba and trust-admin); the window closed with bob's enrollment.
    fn ready() -> Self {
        let mut w = Self::genesis();
        w.authority
            .propose_change(
                &local(),
                Proposal::Change(ChangeKind::PutScope {
                    scope: Box::new(db_root()),
                }),
                NOTE,
            )
            .unwrap();
        w.enroll("carol", &[DBA]);
        w.enroll("alice", &[DBA, TRUST_ADMIN]);
        w.enroll("bob", &[DBA, TRUST_ADMIN]);
        w
    }

    /// The soft key of `operator`, created on first use.
    fn key(&mut self, operator: &str) -> &mut SoftTokenKey {
        let path = self.dir.path().join(format!("{operator}.softtoken"));
        self.keys
            .entry(operator.to_owned())
            .or_insert_with(|| SoftTokenKey::open_or_create(&path).unwrap())
    }

    /// Enrolls a new key for `operator`; after genesis this proposes a change.
    fn enroll(&mut self, operator: &str, roles: &[&str]) -> Option<ChangeView> {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        let opened = self
            .authority
            .begin_enrollment(&local(), operator, &roles)
            .unwrap();
        let response = self
            .key(operator)
            .enroll(None, &opened.options_json, &opened.piv_challenge)
            .unwrap();
        let (_, _, change) = self
            .authority
            .finish_enrollment(&local(), &opened.ceremony_id, &response, NOTE)
            .unwrap();
        change
    }

    /// `operator`'s key answering an opened assertion.
    fn sign(&mut self, operator: &str, opened: &Opened) -> String {
        self.key(operator)
            .respond(None, &opened.options_json, &opened.piv_challenge)
            .unwrap()
    }

    /// `operator` asks for `db-root`; the token will be sealed to the returned key.
    fn request(&mut self, operator: &str) -> (RequestView, DeliveryKey) {
        let delivery = DeliveryKey::generate();
        let draft = Draft {
            scope: "db-root".into(),
            reason: "primary database down, failover stuck".into(),
            ttl_secs: Some(600),
            ticket: "INC-4242".into(),
            ssh_public_key: String::new(),
            delivery_public_key: delivery.public_key().to_vec(),
        };
        let (opened, _) = self
            .authority
            .begin_request(&local(), operator, &draft)
            .unwrap();
        let response = self.sign(operator, &opened);
        let view = self
            .authority
            .create_request(&local(), &draft, Some((&opened.ceremony_id, &response)))
            .unwrap();
        (view, delivery)
    }

    /// `operator`'s key answering a vote's ceremony: the ceremony id and the response, not
    /// yet cast.
    fn signed_vote(
        &mut self,
        operator: &str,
        target: &VoteTarget,
        decision: Decision,
    ) -> (String, String) {
        let (opened, _) = self
            .authority
            .begin_vote(&local(), target, operator, decision)
            .unwrap();
        let response = self.sign(operator, &opened);
        (opened.ceremony_id, response)
    }

    /// Casts a signed vote; the error's stable code if refused.
    fn cast(
        &self,
        target: &VoteTarget,
        decision: Decision,
        ceremony: &str,
        response: &str,
    ) -> Result<VoteResult, &'static str> {
        self.authority
            .cast_vote(&local(), target, decision, ceremony, response)
            .map_err(|e| e.code())
    }

    /// `operator` votes on `target`; the error's stable code if refused.
    fn vote(
        &mut self,
        operator: &str,
        target: &VoteTarget,
        decision: Decision,
    ) -> Result<VoteResult, &'static str> {
        let (opened, _) = self
            .authority
            .begin_vote(&local(), target, operator, decision)
            .map_err(|e| e.code())?;
        let response = self.sign(operator, &opened);
        self.cast(target, decision, &opened.ceremony_id, &response)
    }

    /// Every key of every keyspace with its value: two equal snapshots mean nothing changed.
    fn snapshot(&self) -> Vec<(Keyspace, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for ks in Keyspace::ALL {
            for (k, v) in self.store.scan_from(*ks, b"", usize::MAX).unwrap() {
                all.push((*ks, k, v));
            }
        }
        all
    }

    /// The bearer token of the granted request `id`, opened with the requester's key.
    fn collect(&self, id: &str, delivery: &DeliveryKey) -> (String, String) {
        let collected = self.authority.collect_credential(&local(), id).unwrap();
        let sealed = collected
            .sealed_bearer
            .expect("a bearer scope seals a token");
        let token = delivery.open(&sealed, &collected.grant_id).unwrap();
        (collected.grant_id, token)
    }

    /// A request by carol approved by alice and bob: its id, grant id and token.
    fn granted(&mut self) -> (String, String, String) {
        let (view, delivery) = self.request("carol");
        let target = VoteTarget::Request(view.request.id().to_owned());
        self.vote("alice", &target, Decision::Approve).unwrap();
        self.vote("bob", &target, Decision::Approve).unwrap();
        let (grant, token) = self.collect(view.request.id(), &delivery);
        (view.request.id().to_owned(), grant, token)
    }
}
