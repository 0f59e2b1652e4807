//! The break-glass authority: the domain core that every transport calls. It holds the store,
//! the clock and the daemon's keys, and knows nothing of gRPC or of which backend stores data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{Actor, AuditError, AuditLog, CheckpointPolicy};
use crate::base::caller::{Caller, WorkloadId};
use crate::base::clock::{Clock, Timestamp};
use crate::base::constants::STORE_SCHEMA_VERSION;
use crate::base::error::{Coded, ErrorKind};
use crate::credential::keys::{DaemonKeys, Fingerprints};
use crate::domain::operator::{Authenticator, Opened, Operator, PivSettings, VerifiedAssertion};
use crate::domain::trust::Genesis;
use crate::domain::workload::Workload;
use crate::service::ceremony::Operators;
use crate::service::operators::{self as operator, OperatorError};
use crate::service::token_index::TokenIndex;
use crate::service::trust_store::{self, TrustError};
use crate::service::workloads::{self, WorkloadError};
use crate::store::{self, Keyspace, Store, StoreError, Txn};
use crate::verify::fido2::Fido2Config;
use crate::verify::fido2::{Fido2, Fido2Error};

/// Errors of the authority's own operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The store failed; see the inner error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Trust-store metadata could not be read.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The audit log could not be opened or read.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// FIDO2 could not be set up (bad RP id/origin, unreadable CA file). Fix the config.
    #[error(transparent)]
    Fido2(#[from] Fido2Error),
    /// The daemon's audit key is not an Ed25519 key. Restore the right key file.
    #[error("the audit key is not an Ed25519 key")]
    AuditKey,
    /// PIV trust material is unusable (a bundled root or configured intermediate does not
    /// match its pin, or a file is unreadable). Fix the config or the binary.
    #[error(transparent)]
    Piv(#[from] crate::verify::piv::PivError),
    /// The store went back in time or is not the one anchored; the message says what to do.
    #[error(transparent)]
    Anchor(#[from] crate::audit::anchor::AnchorError),
}

impl Coded for AuthorityError {
    fn code(&self) -> &'static str {
        match self {
            AuthorityError::Store(e) => e.code(),
            AuthorityError::Trust(e) => e.code(),
            AuthorityError::Audit(e) => e.code(),
            AuthorityError::AuditKey => "audit.bad_key",
            AuthorityError::Piv(e) => e.code(),
            AuthorityError::Fido2(e) => e.code(),
            AuthorityError::Anchor(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            AuthorityError::Store(e) => e.kind(),
            AuthorityError::Trust(e) => e.kind(),
            AuthorityError::Audit(e) => e.kind(),
            AuthorityError::AuditKey => ErrorKind::Internal,
            AuthorityError::Piv(e) => e.kind(),
            AuthorityError::Fido2(e) => e.kind(),
            AuthorityError::Anchor(e) => e.kind(),
        }
    }
}

/// What `Status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// latchkeyd version.
    pub version: &'static str,
    /// Schema version of the open store.
    pub store_schema_version: u32,
    /// Genesis window.
    pub genesis: Genesis,
    /// The daemon's key fingerprints.
    pub fingerprints: Fingerprints,
    /// Whether software authenticators are trusted.
    pub dev_mode: bool,
    /// The authority's clock.
    pub now: Timestamp,
}

/// How the authority behaves, from the config.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    /// Trust software authenticators.
    pub dev_mode: bool,
    /// When to write audit checkpoints.
    pub checkpoints: CheckpointPolicy,
    /// FIDO2 relying party and policy.
    pub fido2: &'a Fido2Config,
    /// Where the SSH KRL is written.
    pub krl_path: PathBuf,
    /// PIV policy and trust material.
    pub piv: &'a crate::verify::piv::PivConfig,
    /// Local users that may introspect tokens.
    pub introspect_uids: Vec<u32>,
    /// How old a scope's last passed drill may be before `doctor` warns.
    pub drill_max_age: std::time::Duration,
    /// The rollback anchor to check at start and keep current, if any.
    pub anchor: Option<PathBuf>,
}

/// The authority over one trust store.
#[derive(Debug)]
pub struct Authority {
    /// Dropped with the authority (and so after the store): see [`Authority::on_release`].
    released: tokio::sync::watch::Sender<()>,
    pub(in crate::service) store: Arc<dyn Store>,
    pub(in crate::service) clock: Arc<dyn Clock>,
    pub(in crate::service) keys: Arc<DaemonKeys>,
    pub(in crate::service) audit: AuditLog,
    fido2: Fido2,
    pub(in crate::service) fido2_policy: Fido2Config,
    schema_version: u32,
    dev_mode: bool,
    /// Bearer-token hashes of active grants, for introspection.
    pub(in crate::service) index: TokenIndex,
    /// The KRL sink (owned by `sinks`).
    pub(in crate::service) krl: crate::service::sinks::KrlSink,
    /// Wakes the revocation scheduler (owned by `revocation`).
    pub(in crate::service) wake: crate::service::revocation::SchedulerWake,
    /// PIV trust and enrollment policy.
    piv: PivSettings,
    /// Local users that may introspect tokens.
    pub(in crate::service) introspect_uids: Vec<u32>,
    /// How old a scope's last passed drill may be before `doctor` warns.
    drill_max_age: std::time::Duration,
    /// Challenges kept, and how many may be.
    challenges: crate::service::ceremony::CeremonyBudget,
    /// Deadlines of pending requests (owned by `lapses`).
    pub(in crate::service) lapses: crate::service::lapses::PendingDeadlines,
    /// Remote operators' read sessions (owned by `sessions`).
    pub(in crate::service) sessions: crate::service::sessions::Sessions,
    /// The last audit record `follow_shared_store` looked at.
    followed: std::sync::atomic::AtomicU64,
    /// When `follow_shared_store` last heard from the shared store (Unix ms); `i64::MIN`
    /// while the store is this node's own (never followed).
    pub(in crate::service) followed_at: std::sync::atomic::AtomicI64,
    /// This node's part in electing who does the singleton work (owned by `leadership`).
    pub(in crate::service) leadership: crate::service::leadership::Leadership,
}

/// PIV trust from the bundled (pinned) roots, the configured intermediates and, in dev mode
/// only, dev roots.
fn piv_settings(
    config: &crate::verify::piv::PivConfig,
    dev_mode: bool,
) -> Result<PivSettings, AuthorityError> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|e| {
            AuthorityError::Piv(crate::verify::piv::PivError::Malformed {
                what: "configured certificate file",
                detail: format!("{}: {e}", path.display()),
            })
        })
    };
    let intermediates = match &config.intermediates {
        Some(path) => crate::verify::piv::parse_bundle("[piv] intermediates", &read(path)?)?,
        None => Vec::new(),
    };
    let mut trust = crate::verify::piv::PivTrust::yubico(&intermediates)?;
    if dev_mode {
        for path in &config.dev_roots {
            for root in crate::verify::piv::parse_bundle("[piv] dev_roots", &read(path)?)? {
                trust = trust.with_dev_root(root);
            }
        }
    }
    Ok(PivSettings {
        trust,
        policy: crate::verify::piv::KeyPolicy {
            touch: config.require_touch,
            pin: config.require_pin,
        },
        require_attestation: true,
    })
}

/// Brings a store of an older schema up to this build's, in one durable transaction.
fn upgrade_schema(store: &dyn Store, found: u32) -> Result<u32, StoreError> {
    if found >= STORE_SCHEMA_VERSION {
        return Ok(found);
    }
    let mut txn = Txn::new();
    txn.require_equals(
        Keyspace::Meta,
        store::SCHEMA_VERSION_KEY,
        store::schema_version_bytes(found),
    )
    .put_raw(
        Keyspace::Meta,
        store::SCHEMA_VERSION_KEY,
        store::schema_version_bytes(STORE_SCHEMA_VERSION),
    );
    // Schema 1 → 2: the index of keys by operator.
    let indexed = crate::service::operators::index_every_key(store, &mut txn)?;
    store.commit(&txn)?;
    tracing::info!(
        from = found,
        to = STORE_SCHEMA_VERSION,
        indexed_keys = indexed,
        "trust store schema upgraded"
    );
    Ok(STORE_SCHEMA_VERSION)
}

impl Authority {
    /// Wraps an opened store, refusing a schema this build cannot serve.
    pub fn new(
        store: Arc<dyn Store>,
        location: &Path,
        clock: Arc<dyn Clock>,
        keys: Arc<DaemonKeys>,
        settings: Settings<'_>,
    ) -> Result<Self, AuthorityError> {
        let Settings {
            dev_mode,
            checkpoints,
            fido2: fido2_policy,
            krl_path,
            piv: piv_config,
            introspect_uids,
            drill_max_age,
            anchor,
        } = settings;
        let piv = piv_settings(piv_config, dev_mode)?;
        let mut extra_cas = Vec::new();
        for path in &fido2_policy.attestation_cas {
            extra_cas.push(std::fs::read(path).map_err(|e| {
                Fido2Error::Config(format!("attestation CA {}: {e}", path.display()))
            })?);
        }
        let origins: Vec<&str> = std::iter::once(fido2_policy.origin.as_str())
            .chain(fido2_policy.page_origin.as_deref())
            .collect();
        let fido2 = Fido2::new(
            &fido2_policy.rp_id,
            &origins,
            &extra_cas,
            &fido2_policy.allowed_aaguids,
            dev_mode,
        )?;
        let schema_version = upgrade_schema(
            store.as_ref(),
            store::check_schema(store.as_ref(), location)?,
        )?;
        // Fail now, not on the first call, if the metadata is unreadable.
        trust_store::read_meta(store.as_ref())?;
        let signer = crate::audit::signing_key(&keys.audit).ok_or(AuthorityError::AuditKey)?;
        let mut audit = AuditLog::open(store.clone(), clock.clone(), signer, checkpoints)?;
        if let Some(path) = anchor {
            let anchor = crate::audit::anchor::Anchor::new(path);
            anchor.check(store.as_ref())?;
            audit = audit.with_anchor(anchor);
        }
        let index = TokenIndex::load(store.as_ref(), clock.now())?;
        let challenges = crate::service::ceremony::CeremonyBudget::new(
            store.count(store::Keyspace::Ceremonies)?,
            crate::base::constants::MAX_KEPT_CHALLENGES,
        );
        Ok(Self {
            followed: std::sync::atomic::AtomicU64::new(audit.head_seq()),
            followed_at: std::sync::atomic::AtomicI64::new(i64::MIN),
            leadership: crate::service::leadership::Leadership::default(),
            released: tokio::sync::watch::Sender::new(()),
            challenges,
            sessions: crate::service::sessions::Sessions::default(),
            lapses: crate::service::lapses::PendingDeadlines::default(),
            drill_max_age,
            introspect_uids,
            piv,
            krl: crate::service::sinks::KrlSink::new(krl_path),
            wake: crate::service::revocation::SchedulerWake::default(),
            index,
            store,
            clock,
            keys,
            audit,
            fido2,
            fido2_policy: fido2_policy.clone(),
            schema_version,
            dev_mode,
        })
    }

    /// Follows what other latchkeyd nodes on a shared store (etcd) did: their audit records
    /// reach this node's live tails and watches, and every grant a record names is indexed
    /// again from the store (active: its token introspects here; otherwise it does not); a
    /// grant whose revocation started puts its certificate's serial in this node's KRL (each
    /// bastion's sshd reads its own), read back after writing. Returns how many records were
    /// looked at.
    pub fn follow_shared_store(&self) -> Result<u64, crate::service::workflow::WorkflowError> {
        use std::sync::atomic::Ordering;
        self.audit.catch_up()?;
        let heard = self.clock.now().unix_millis();
        let head = self.audit.head_seq();
        let started = self.followed.load(Ordering::Relaxed);
        let mut from = started + 1;
        let mut seen = 0;
        let mut revoked_serials = Vec::new();
        while from <= head {
            let records = self.audit.read(from, 512)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            let now = self.clock.now();
            for record in &records {
                if let Some(id) = record.subject.strip_prefix("grant/")
                    && let Some(grant) = store::read::<crate::domain::grant::Grant>(
                        self.store.as_ref(),
                        id.as_bytes(),
                    )?
                {
                    let active = grant.active_at(now);
                    match &grant.bearer_sha256 {
                        Some(_) if active => self.index.insert(&grant),
                        Some(hash) => self.index.remove(hash),
                        None => {}
                    }
                    if let Some(ssh) = grant.ssh.as_ref().filter(|_| grant.revocation.is_some()) {
                        revoked_serials.push((ssh.serial, grant.expires_at.unix_millis()));
                    }
                }
            }
            seen += records.len() as u64;
            self.followed.store(last, Ordering::Relaxed);
            from = last + 1;
        }
        if !revoked_serials.is_empty() {
            let now = self.clock.now();
            let written = self.publish_krl(now, &revoked_serials).and_then(|listed| {
                match revoked_serials.iter().find(|(serial, valid_before)| {
                    Timestamp::from_unix_millis(*valid_before) > now && !listed.contains(serial)
                }) {
                    Some((missing, _)) => Err(crate::service::workflow::WorkflowError::Sink(
                        format!("serial {missing} is not in this node's KRL after writing it"),
                    )),
                    None => Ok(()),
                }
            });
            if let Err(e) = written {
                // Looked at again on the next round.
                self.followed.store(started, Ordering::Relaxed);
                return Err(e);
            }
        }
        self.followed_at.store(heard, Ordering::Relaxed);
        Ok(seen)
    }

    /// Resolves (with an error, as the sender is gone) once this authority is dropped: its
    /// store's lock is released when the last holder lets go, e.g. the last in-flight call.
    pub fn on_release(&self) -> tokio::sync::watch::Receiver<()> {
        self.released.subscribe()
    }

    /// Versions, genesis state and key fingerprints.
    pub fn status(&self) -> Result<StatusReport, AuthorityError> {
        let (meta, _) = trust_store::read_meta(self.store.as_ref())?;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            store_schema_version: self.schema_version,
            genesis: meta.genesis,
            fingerprints: self.keys.fingerprints().clone(),
            dev_mode: self.dev_mode,
            now: self.clock.now(),
        })
    }

    /// The workload whose TLS key has this SPKI hash, if one is pinned.
    pub fn identify_workload(
        &self,
        spki_sha256: &[u8; 32],
    ) -> Result<Option<WorkloadId>, StoreError> {
        Ok(workloads::by_pin(self.store.as_ref(), spki_sha256)?.map(|w| w.id()))
    }

    /// Whether software authenticators are trusted.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Deletes expired challenges (see
    /// [`crate::service::ceremony::Operators::sweep_ceremonies`]); returns how many.
    pub fn sweep_challenges(&self) -> Result<u64, OperatorError> {
        self.operators().sweep_ceremonies()
    }

    /// Challenges kept in the store (pending or used, not yet swept).
    pub fn challenges_kept(&self) -> u64 {
        self.challenges.kept()
    }

    /// How old a scope's last passed drill may be before `doctor` warns.
    pub fn drill_max_age(&self) -> std::time::Duration {
        self.drill_max_age
    }

    /// The authority's clock, now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The audit public key in OpenSSH form (`ssh-ed25519 AAAA...`), for `audit verify`.
    pub fn audit_public_key(&self) -> String {
        self.keys
            .audit
            .public_key()
            .to_openssh()
            .unwrap_or_default()
    }

    /// The SSH user CA's public key in OpenSSH form, for sshd's `TrustedUserCAKeys`.
    pub fn ssh_user_ca_public_key(&self) -> String {
        self.keys
            .ssh_ca
            .public_key()
            .to_openssh()
            .unwrap_or_default()
    }

    /// Admits a workload during genesis. Only local callers may; after genesis this is a
    /// quorum-approved change.
    pub fn admit_workload_at_genesis(
        &self,
        caller: &Caller,
        name: String,
        owner: String,
        certificate_pem: &[u8],
        scopes: Vec<String>,
        introspect: bool,
    ) -> Result<WorkloadId, WorkloadError> {
        let Caller::Local(peer) = caller else {
            return Err(WorkloadError::LocalOnly);
        };
        let spki = crate::credential::keys::spki_sha256_of_pem(certificate_pem)
            .map_err(WorkloadError::InvalidCertificate)?;
        let workload = Workload {
            name,
            owner,
            spki_sha256: hex::encode(spki),
            admitted_at: self.clock.now(),
            scopes,
            introspect,
        };
        workloads::admit_at_genesis(
            self.store.as_ref(),
            &self.audit,
            &workload,
            Actor::Local { uid: peer.uid },
        )?;
        Ok(workload.id())
    }

    pub(crate) fn operators(&self) -> Operators<'_> {
        Operators {
            store: self.store.as_ref(),
            audit: &self.audit,
            fido2: &self.fido2,
            clock: self.clock.as_ref(),
            challenge_ttl: self.fido2_policy.challenge_ttl,
            piv: &self.piv,
            budget: &self.challenges,
        }
    }

    /// The store (tests compare it before and after refused calls).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Starts an enrollment (local callers only).
    pub fn begin_enrollment(
        &self,
        caller: &Caller,
        operator: &str,
        roles: &[String],
    ) -> Result<Opened, OperatorError> {
        self.operators().begin_enrollment(
            matches!(caller, Caller::Local(_)),
            operator,
            roles,
            false,
        )
    }

    /// Starts an assertion by `operator` over `digest`. Workloads never approve.
    pub fn begin_assertion(
        &self,
        caller: &Caller,
        operator: &str,
        digest: &[u8; 32],
    ) -> Result<Opened, OperatorError> {
        if !matches!(caller, Caller::Local(_)) {
            return Err(OperatorError::LocalOnly);
        }
        self.operators().begin_assertion(
            operator,
            digest,
            self.fido2_policy.require_user_verification,
        )
    }

    /// Verifies and records an assertion over `digest`.
    pub fn finish_assertion(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        digest: &[u8; 32],
        response_json: &str,
    ) -> Result<VerifiedAssertion, OperatorError> {
        if !matches!(caller, Caller::Local(_)) {
            return Err(OperatorError::LocalOnly);
        }
        self.operators().finish_assertion(
            ceremony_id,
            digest,
            response_json,
            "assertion.verified",
            format!("digest/{}", hex::encode(digest)),
        )
    }

    /// An operator and their keys.
    pub fn operator(&self, name: &str) -> Result<(Operator, Vec<Authenticator>), OperatorError> {
        operator::show(self.store.as_ref(), name)
    }

    /// Forces all state to disk (at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}
