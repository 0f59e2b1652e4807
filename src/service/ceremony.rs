//! Ceremonies: genesis and proposed enrollment of FIDO2 and PIV keys, and assertions bound to
//! a digest of what is being approved. Every refusal has its own code and writes nothing; a
//! counter regression suspends the key (that is the one write a refusal does).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use webauthn_rs::prelude::{SecurityKey, Uuid};

use crate::audit::{Actor, AuditLog, Event, Evidence};
use crate::base::clock::Clock;
use crate::domain::operator::*;
use crate::domain::trust::{Genesis, META_KEY};
use crate::service::operators::*;
use crate::service::trust_store::{self};
use crate::store::{self, Keyspace, Store, StoreError, Txn};
use crate::verify::fido2::{Fido2, Fido2Error, bound_challenge};

/// A verified assertion whose writes (ceremony used, counter) and audit event are not yet
/// committed: the caller adds its own writes to `txn` and commits them together.
#[derive(Debug)]
pub struct PreparedAssertion {
    /// Ceremony tombstone and authenticator update.
    pub txn: Txn,
    /// The audit event carrying the raw evidence.
    pub event: Event,
    /// What was verified (`audit_seq` is 0 until committed).
    pub verified: VerifiedAssertion,
    /// Whether the key was attested at enrollment.
    pub attested: bool,
    /// For PIV keys: what their attestation proved (policies checked by scopes).
    pub piv: Option<crate::verify::piv::Attested>,
}

/// The outcome of a registration ceremony.
#[derive(Debug)]
pub enum Enrollment {
    /// Genesis: the key is enrolled.
    Enrolled(Box<Authenticator>),
    /// After genesis: the key awaits a quorum-approved change. `txn` marks the ceremony used.
    Proposed {
        /// The verified key.
        authenticator: Box<Authenticator>,
        /// Roles, if the operator is new.
        new_operator_roles: Option<Vec<String>>,
        /// Ceremony tombstone.
        txn: Txn,
    },
}

/// A verified registration of either kind.
#[derive(Debug)]
struct Registered {
    credential_id: String,
    key: KeyMaterial,
    algorithm: String,
    public_key_spki: Vec<u8>,
    aaguid: Option<Uuid>,
    attested: bool,
}

/// How many challenges may be kept at once, and how many are: entries in the ceremonies
/// keyspace, pending or used, until [`Operators::sweep_ceremonies`] removes them. Opening a
/// challenge past the limit is refused, so a flood of Begin calls cannot grow the store.
#[derive(Debug)]
pub struct CeremonyBudget {
    kept: AtomicU64,
    limit: u64,
}

impl CeremonyBudget {
    /// A budget of `limit` challenges, `kept` of which are in the store now.
    pub fn new(kept: u64, limit: u64) -> Self {
        Self {
            kept: AtomicU64::new(kept),
            limit,
        }
    }

    /// Challenges in the store (pending or used, not yet swept).
    pub fn kept(&self) -> u64 {
        self.kept.load(Ordering::Relaxed)
    }

    fn take(&self) -> Result<(), OperatorError> {
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| OperatorError::TooManyChallenges(self.limit))
    }

    fn give_back(&self) {
        let _ = self
            .kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Ceremonies read per sweep transaction.
const SWEEP_BATCH: usize = 256;

/// The operator's domain service.
#[derive(Debug)]
pub struct Operators<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// The audit log.
    pub audit: &'a AuditLog,
    /// The FIDO2 relying party.
    pub fido2: &'a Fido2,
    /// The clock.
    pub clock: &'a dyn Clock,
    /// How long a challenge stays valid.
    pub challenge_ttl: std::time::Duration,
    /// PIV trust and enrollment policy.
    pub piv: &'a PivSettings,
    /// How many challenges may be kept.
    pub budget: &'a CeremonyBudget,
}

impl Operators<'_> {
    fn ceremony(&self, id: &str) -> Result<(Ceremony, Vec<u8>), OperatorError> {
        let raw = self
            .store
            .get(Keyspace::Ceremonies, id.as_bytes())?
            .ok_or_else(|| OperatorError::ChallengeUnknown(id.to_owned()))?;
        let ceremony: Ceremony = store::decode(&raw)?;
        if matches!(ceremony.kind, CeremonyKind::Used { .. }) {
            return Err(OperatorError::ChallengeReused(id.to_owned()));
        }
        if self.clock.now() > ceremony.expires_at {
            return Err(OperatorError::ChallengeExpired(id.to_owned()));
        }
        Ok((ceremony, raw))
    }

    fn used(
        &self,
        txn: &mut Txn,
        id: &str,
        raw: Vec<u8>,
        operator: &str,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now();
        let tombstone = Ceremony {
            operator: operator.to_owned(),
            expires_at: now,
            kind: CeremonyKind::Used { at: now },
        };
        txn.require_equals(Keyspace::Ceremonies, id.as_bytes(), raw)
            .put(id.as_bytes(), &tombstone)?;
        Ok(())
    }

    /// Starts enrolling a key for `operator` (created with `roles` if new). Returns the
    /// ceremony id and the WebAuthn creation options (W3C JSON). `from_page`: a browser on
    /// the approval page — verification required (see `Fido2::start_registration`), and only
    /// the operator's own keys excluded (a stranger must not list every credential id; a key
    /// of someone else is refused at the finish all the same).
    pub fn begin_enrollment(
        &self,
        local: bool,
        operator: &str,
        roles: &[String],
        from_page: bool,
    ) -> Result<Opened, OperatorError> {
        if !local {
            return Err(OperatorError::LocalOnly);
        }
        check_name("operator name", operator)?;
        for role in roles {
            check_name("role", role)?;
        }
        let user_id = match store::read::<Operator>(self.store, operator.as_bytes())? {
            Some(existing) => existing.user_id,
            None => Uuid::new_v4(),
        };
        let exclude = authenticators(self.store)?
            .into_iter()
            .filter(|a| !from_page || a.operator == operator)
            .filter_map(|a| a.fido2().map(|k| k.cred_id().clone()))
            .collect();
        let (options, state) = self
            .fido2
            .start_registration(user_id, operator, exclude, from_page)?;
        let piv_challenge = piv_enroll_challenge(&random32()?, operator);
        let kind = CeremonyKind::Enrollment {
            roles: roles.to_vec(),
            state,
            piv_challenge: hex::encode(piv_challenge),
        };
        self.open_ceremony(operator, kind, Some(&options), piv_challenge)
    }

    /// Stores a new pending challenge and returns its id with the client options as JSON.
    fn open_ceremony(
        &self,
        operator: &str,
        kind: CeremonyKind,
        options: Option<&impl Serialize>,
        piv_challenge: [u8; 32],
    ) -> Result<Opened, OperatorError> {
        let options = match options {
            Some(o) => serde_json::to_string(o).map_err(|e| StoreError::Backend(e.to_string()))?,
            None => String::new(),
        };
        let id = new_id()?;
        let ceremony = Ceremony {
            operator: operator.to_owned(),
            expires_at: self.clock.now().plus(self.challenge_ttl),
            kind,
        };
        let mut txn = Txn::new();
        txn.require_absent(Keyspace::Ceremonies, id.as_bytes())
            .put(id.as_bytes(), &ceremony)?;
        self.budget.take()?;
        // Not flushed: a challenge lost in a crash only makes its ceremony fail (begin again),
        // and it becomes durable with the next audited change anyway.
        if let Err(e) = self.store.apply(&txn) {
            self.budget.give_back();
            return Err(e.into());
        }
        Ok(Opened {
            ceremony_id: id,
            options_json: options,
            piv_challenge,
        })
    }

    /// Deletes the challenges whose expiry passed more than a challenge lifetime ago, pending
    /// or used (a used one's tombstone answers `challenge_reused` until then; afterwards a
    /// replay is `challenge_unknown`, refused all the same). Not audited: a challenge is not
    /// trust state. Returns how many went; recounts the budget.
    pub fn sweep_ceremonies(&self) -> Result<u64, OperatorError> {
        let now = self.clock.now();
        let mut removed = 0;
        let mut start = Vec::new();
        loop {
            let batch = self
                .store
                .scan_from(Keyspace::Ceremonies, &start, SWEEP_BATCH)?;
            let mut txn = Txn::new();
            let mut due = 0;
            for (key, raw) in &batch {
                // An entry that does not decode can never be answered: it goes too.
                let expired = store::decode::<Ceremony>(raw)
                    .map_or(true, |c| now > c.expires_at.plus(self.challenge_ttl));
                if expired {
                    txn.require_equals(Keyspace::Ceremonies, key.clone(), raw.clone())
                        .delete(Keyspace::Ceremonies, key.clone());
                    due += 1;
                }
            }
            if due > 0 {
                match self.store.apply(&txn) {
                    Ok(()) => removed += due,
                    // A challenge in this batch was answered meanwhile: the next sweep
                    // takes the batch again.
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match batch.last() {
                Some((last, _)) if batch.len() == SWEEP_BATCH => {
                    start = last.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        // Begin calls that ran meanwhile counted themselves: take off only what went.
        let _ = self
            .budget
            .kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(removed))
            });
        Ok(removed)
    }

    /// Finishes an enrollment. During genesis the key is enrolled, and genesis closes in the
    /// same transaction once the trust-store quorum can be met; afterwards the verified key is
    /// returned as a proposal for the caller to record as a change.
    pub fn finish_enrollment(
        &self,
        local: bool,
        actor: Actor,
        ceremony_id: &str,
        response_json: &str,
    ) -> Result<Enrollment, OperatorError> {
        if !local {
            return Err(OperatorError::LocalOnly);
        }
        let (ceremony, raw) = self.ceremony(ceremony_id)?;
        let CeremonyKind::Enrollment {
            roles,
            state,
            piv_challenge,
        } = &ceremony.kind
        else {
            return Err(OperatorError::WrongCeremony(ceremony_id.to_owned()));
        };
        let (meta, meta_bytes) = trust_store::read_meta(self.store)?;
        let registered =
            self.registered(response_json, state, piv_challenge, &ceremony.operator)?;
        if let Some(existing) =
            store::read::<Authenticator>(self.store, registered.credential_id.as_bytes())?
        {
            return Err(OperatorError::CredentialTaken(existing.operator));
        }
        let now = self.clock.now();
        let operator = match store::read::<Operator>(self.store, ceremony.operator.as_bytes())? {
            Some(existing) => existing,
            None => Operator {
                name: ceremony.operator.clone(),
                roles: roles.clone(),
                user_id: Uuid::new_v4(),
                enrolled_at: now,
            },
        };
        use base64::Engine as _;
        let authenticator = Authenticator {
            credential_id: registered.credential_id.clone(),
            operator: operator.name.clone(),
            key: registered.key,
            algorithm: registered.algorithm.clone(),
            public_key: base64::engine::general_purpose::STANDARD
                .encode(&registered.public_key_spki),
            aaguid: registered.aaguid,
            counter: 0,
            state: AuthenticatorState::Active,
            enrolled_at: now,
            attested: registered.attested,
        };

        let mut txn = Txn::new();
        self.used(&mut txn, ceremony_id, raw, &operator.name)?;
        if meta.genesis != Genesis::Open {
            let existing = store::read::<Operator>(self.store, ceremony.operator.as_bytes())?;
            return Ok(Enrollment::Proposed {
                authenticator: Box::new(authenticator),
                new_operator_roles: existing.is_none().then(|| roles.clone()),
                txn,
            });
        }
        txn.require_equals(Keyspace::Meta, META_KEY, meta_bytes)
            .put(operator.name.as_bytes(), &operator)?;
        enrol_key(&mut txn, &authenticator)?;
        let mut events = vec![Event {
            event: crate::audit::verify::ENROLLED_EVENT,
            actor: actor.clone(),
            subject: format!("operator/{}", operator.name),
            details: serde_json::json!({
                "operator": operator.name,
                "roles": operator.roles,
                "credential_id": authenticator.credential_id,
                "algorithm": authenticator.algorithm,
                "public_key": authenticator.public_key,
                "aaguid": authenticator.aaguid.map(|u| u.to_string()),
                "path": "genesis",
            }),
            evidence: None,
        }];

        let approver_count = self.approvers_with(&operator, &meta.policy.approver_role)?;
        if approver_count >= meta.policy.quorum {
            let mut closed = meta.clone();
            closed.genesis = Genesis::Closed { at: now };
            txn.put(META_KEY, &closed)?;
            events.push(Event {
                event: "genesis.closed",
                actor,
                subject: format!("store/{}", meta.store_id),
                details: serde_json::json!({
                    "approvers": approver_count,
                    "quorum": meta.policy.quorum,
                    "role": meta.policy.approver_role,
                }),
                evidence: None,
            });
        }
        self.audit.commit_events(txn, events)?;
        Ok(Enrollment::Enrolled(Box::new(authenticator)))
    }

    /// The key an enrollment response registers: a PIV slot key proven by its attestation,
    /// or a FIDO2 credential verified by webauthn-rs. A key enrolled already is refused.
    fn registered(
        &self,
        response_json: &str,
        state: &webauthn_rs::prelude::SecurityKeyRegistration,
        piv_challenge: &str,
        operator: &str,
    ) -> Result<Registered, OperatorError> {
        if is_piv_response(response_json) {
            self.register_piv(response_json, piv_challenge, operator)
        } else {
            // A key enrolled already: say so, instead of webauthn-rs's refusal of an excluded
            // credential (which reads as a wrong algorithm).
            if let Some(id) = serde_json::from_str::<serde_json::Value>(response_json)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                && let Some(existing) = store::read::<Authenticator>(self.store, id.as_bytes())?
            {
                return Err(OperatorError::CredentialTaken(existing.operator));
            }
            let r = self.fido2.finish_registration(response_json, state)?;
            Ok(Registered {
                credential_id: r.credential_id,
                key: KeyMaterial::Fido2 { key: r.key },
                algorithm: r.algorithm.to_owned(),
                public_key_spki: r.public_key_spki,
                aaguid: r.aaguid,
                attested: r.attested,
            })
        }
    }

    /// How many distinct operators with an active key hold `role`, counting `operator` (being
    /// enrolled now) with its roles.
    fn approvers_with(&self, operator: &Operator, role: &str) -> Result<u32, OperatorError> {
        let mut approvers: std::collections::BTreeSet<String> = authenticators(self.store)?
            .into_iter()
            .filter(|a| a.state == AuthenticatorState::Active)
            .map(|a| a.operator)
            .collect();
        approvers.insert(operator.name.clone());
        let mut approver_count = 0u32;
        for name in &approvers {
            let roles = if *name == operator.name {
                operator.roles.clone()
            } else {
                store::read::<Operator>(self.store, name.as_bytes())?
                    .map(|o| o.roles)
                    .unwrap_or_default()
            };
            if roles.iter().any(|r| r == role) {
                approver_count += 1;
            }
        }
        Ok(approver_count)
    }

    /// Starts an assertion by `operator` over `digest`. Returns the ceremony id and the WebAuthn
    /// request options (W3C JSON) whose challenge is bound to the digest.
    pub fn begin_assertion(
        &self,
        operator: &str,
        digest: &[u8; 32],
        require_uv: bool,
    ) -> Result<Opened, OperatorError> {
        let (_, keys) = show(self.store, operator)?;
        let active: Vec<Authenticator> = keys
            .into_iter()
            .filter(|a| a.state == AuthenticatorState::Active)
            .collect();
        if active.is_empty() {
            return Err(OperatorError::NoActiveAuthenticator(operator.to_owned()));
        }
        let fido2: Vec<SecurityKey> = active.iter().filter_map(|a| a.fido2().cloned()).collect();
        let nonce = random32()?;
        let challenge = bound_challenge(digest, &nonce);
        let (options, state) = if fido2.is_empty() {
            (None, None)
        } else {
            let (options, state) = self.fido2.start_assertion(&fido2, challenge, require_uv)?;
            (Some(options), Some(state))
        };
        let kind = CeremonyKind::Assertion {
            digest: hex::encode(digest),
            nonce: hex::encode(nonce),
            require_uv,
            state,
        };
        self.open_ceremony(operator, kind, options.as_ref(), challenge)
    }

    /// Verifies an assertion over `digest` and records it, with its raw evidence, in the audit
    /// log. A counter regression suspends the key (audited) and fails.
    pub fn finish_assertion(
        &self,
        ceremony_id: &str,
        digest: &[u8; 32],
        response_json: &str,
        event: &'static str,
        subject: String,
    ) -> Result<VerifiedAssertion, OperatorError> {
        let prepared =
            self.prepare_assertion(ceremony_id, digest, response_json, event, subject)?;
        let record = self.audit.commit(prepared.txn, prepared.event)?;
        Ok(VerifiedAssertion {
            audit_seq: record.seq,
            ..prepared.verified
        })
    }

    /// The operator a ceremony was opened for.
    pub fn ceremony_operator(&self, ceremony_id: &str) -> Result<String, OperatorError> {
        Ok(self.ceremony(ceremony_id)?.0.operator)
    }

    /// The stored key `credential_id` that `operator` asserts with, with its bytes: refused
    /// unless it is theirs and active.
    fn asserting_key(
        &self,
        operator: &str,
        credential_id: &str,
    ) -> Result<(Authenticator, Vec<u8>), OperatorError> {
        let (authenticator, raw) = match self
            .store
            .get(Keyspace::Authenticators, credential_id.as_bytes())?
        {
            Some(raw) => (store::decode::<Authenticator>(&raw)?, raw),
            None => return Err(Fido2Error::UnknownCredential.into()),
        };
        if authenticator.operator != operator {
            return Err(Fido2Error::UnknownCredential.into());
        }
        match &authenticator.state {
            AuthenticatorState::Active => Ok((authenticator, raw)),
            AuthenticatorState::Suspended { reason, .. } => Err(
                OperatorError::AuthenticatorSuspended(credential_id.to_owned(), reason.clone()),
            ),
            AuthenticatorState::Removed { .. } => Err(OperatorError::AuthenticatorSuspended(
                credential_id.to_owned(),
                "removed by an approved change".to_owned(),
            )),
        }
    }

    /// Verifies a FIDO2 assertion with webauthn-rs and updates `authenticator` (credential
    /// state, counter). A counter that went backwards suspends the key — committed here, the
    /// one write a refusal makes — and is refused. Returns the evidence, whether the user was
    /// verified, and the new counter.
    fn verify_fido2(
        &self,
        (authenticator, auth_raw): (&mut Authenticator, Vec<u8>),
        mut key: SecurityKey,
        (response_json, state, require_uv): (
            &str,
            &webauthn_rs::prelude::SecurityKeyAuthentication,
            bool,
        ),
        challenge: &[u8; 32],
    ) -> Result<(Evidence, bool, u32), OperatorError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (response, result) = match self
            .fido2
            .finish_assertion(response_json, state, require_uv)
        {
            Ok(ok) => ok,
            Err(Fido2Error::CounterRegressed) => {
                self.suspend(
                    authenticator,
                    auth_raw,
                    "signature counter went backwards (possible clone)",
                )?;
                return Err(Fido2Error::CounterRegressed.into());
            }
            Err(e) => return Err(e.into()),
        };
        key.update_credential(&result);
        authenticator.key = KeyMaterial::Fido2 { key };
        // Two ceremonies answered at once by one key: never store the lower counter.
        authenticator.counter = authenticator.counter.max(result.counter());
        let evidence = Evidence::Webauthn {
            credential_id: authenticator.credential_id.clone(),
            challenge: b64.encode(challenge),
            authenticator_data: b64.encode::<&[u8]>(response.response.authenticator_data.as_ref()),
            client_data_json: b64.encode::<&[u8]>(response.response.client_data_json.as_ref()),
            signature: b64.encode::<&[u8]>(response.response.signature.as_ref()),
        };
        Ok((evidence, result.user_verified(), result.counter()))
    }

    /// Verifies an assertion over `digest` without committing it: see [`PreparedAssertion`].
    /// A counter regression still suspends the key at once (audited) and fails.
    pub fn prepare_assertion(
        &self,
        ceremony_id: &str,
        digest: &[u8; 32],
        response_json: &str,
        event: &'static str,
        subject: String,
    ) -> Result<PreparedAssertion, OperatorError> {
        let (ceremony, raw) = self.ceremony(ceremony_id)?;
        let CeremonyKind::Assertion {
            digest: bound_digest,
            nonce,
            require_uv,
            state,
        } = &ceremony.kind
        else {
            return Err(OperatorError::WrongCeremony(ceremony_id.to_owned()));
        };
        if *bound_digest != hex::encode(digest) {
            return Err(OperatorError::WrongDigest);
        }
        let claimed: serde_json::Value = serde_json::from_str(response_json)
            .map_err(|e| Fido2Error::Malformed(e.to_string()))?;
        let credential_id = claimed
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Fido2Error::Malformed("missing credential id".to_owned()))?
            .to_owned();
        let (mut authenticator, auth_raw) =
            self.asserting_key(&ceremony.operator, &credential_id)?;
        let nonce_bytes = hex::decode(nonce).map_err(|e| StoreError::Corrupt {
            keyspace: "ceremonies",
            detail: e.to_string(),
        })?;
        let nonce_arr: [u8; 32] = nonce_bytes.try_into().map_err(|_| StoreError::Corrupt {
            keyspace: "ceremonies",
            detail: "nonce length".to_owned(),
        })?;
        let challenge = bound_challenge(digest, &nonce_arr);

        let (evidence, user_verified, counter, piv) = match authenticator.key.clone() {
            KeyMaterial::Piv { attested } => {
                let (evidence, user_verified) =
                    verify_piv(&claimed, &attested, &challenge, &credential_id, *require_uv)?;
                (
                    evidence,
                    user_verified,
                    authenticator.counter,
                    Some(attested),
                )
            }
            KeyMaterial::Fido2 { key } => {
                let Some(state) = state else {
                    return Err(Fido2Error::UnknownCredential.into());
                };
                let (evidence, user_verified, counter) = self.verify_fido2(
                    (&mut authenticator, auth_raw.clone()),
                    key,
                    (response_json, state, *require_uv),
                    &challenge,
                )?;
                (evidence, user_verified, counter, None)
            }
        };
        let mut txn = Txn::new();
        self.used(&mut txn, ceremony_id, raw, &ceremony.operator)?;
        txn.require_equals(Keyspace::Authenticators, credential_id.as_bytes(), auth_raw)
            .put(credential_id.as_bytes(), &authenticator)?;
        let event = Event {
            event,
            actor: Actor::Operator {
                name: ceremony.operator.clone(),
            },
            subject,
            details: serde_json::json!({
                "digest": hex::encode(digest),
                "nonce": nonce,
                "credential_id": credential_id,
                "key_type": if piv.is_some() { "piv" } else { "fido2" },
                "user_verified": user_verified,
                "counter": counter,
            }),
            evidence: Some(evidence),
        };
        Ok(PreparedAssertion {
            txn,
            event,
            attested: authenticator.attested,
            piv,
            verified: VerifiedAssertion {
                operator: ceremony.operator,
                credential_id,
                user_verified,
                counter,
                audit_seq: 0,
            },
        })
    }

    /// Verifies a PIV enrollment: attestation chain and key policy, the signature over the
    /// ceremony's challenge by the attested key, one device one operator.
    fn register_piv(
        &self,
        response_json: &str,
        challenge_hex: &str,
        operator: &str,
    ) -> Result<Registered, OperatorError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let response: PivEnrollment = serde_json::from_str(response_json)
            .map_err(|e| OperatorError::PivResponse(e.to_string()))?;
        let spki = b64
            .decode(&response.public_key)
            .map_err(|e| OperatorError::PivResponse(format!("public_key: {e}")))?;
        if response.attestation.trim().is_empty() || response.device.trim().is_empty() {
            if self.piv.require_attestation {
                return Err(crate::verify::piv::PivError::NotAttested.into());
            }
            return Err(OperatorError::PivResponse(
                "unattested PIV keys are not supported".into(),
            ));
        }
        let attestation =
            crate::verify::piv::parse_certificate("attestation", response.attestation.as_bytes())?;
        let device = crate::verify::piv::parse_certificate("device", response.device.as_bytes())?;
        let attested = self.piv.trust.verify(&attestation, &device, Some(&spki))?;
        self.piv.policy.check(&attested)?;
        let challenge = hex::decode(challenge_hex).map_err(|e| StoreError::Corrupt {
            keyspace: "ceremonies",
            detail: e.to_string(),
        })?;
        let signature = b64
            .decode(&response.signature)
            .map_err(|e| OperatorError::PivResponse(format!("signature: {e}")))?;
        crate::verify::piv::verify_signature(&attested.algorithm, &spki, &challenge, &signature)
            .map_err(|e| OperatorError::PivResponse(format!("proof of possession: {e}")))?;
        for other in authenticators(self.store)? {
            if let Some(a) = other.piv()
                && a.serial == attested.serial
                && other.operator != operator
                && !matches!(other.state, AuthenticatorState::Removed { .. })
            {
                return Err(OperatorError::DeviceTaken {
                    serial: a.serial,
                    operator: other.operator,
                });
            }
        }
        Ok(Registered {
            credential_id: format!("piv-{}-{}", attested.serial, attested.slot),
            algorithm: attested.algorithm.clone(),
            public_key_spki: spki,
            aaguid: None,
            attested: !attested.dev_root,
            key: KeyMaterial::Piv { attested },
        })
    }

    fn suspend(
        &self,
        authenticator: &mut Authenticator,
        raw: Vec<u8>,
        reason: &str,
    ) -> Result<(), OperatorError> {
        authenticator.state = AuthenticatorState::Suspended {
            reason: reason.to_owned(),
            at: self.clock.now(),
        };
        let mut txn = Txn::new();
        txn.require_equals(
            Keyspace::Authenticators,
            authenticator.credential_id.as_bytes(),
            raw,
        )
        .put(authenticator.credential_id.as_bytes(), &*authenticator)?;
        self.audit.commit(
            txn,
            Event {
                event: "authenticator.suspended",
                actor: Actor::Daemon,
                subject: format!("operator/{}", authenticator.operator),
                details: serde_json::json!({
                    "credential_id": authenticator.credential_id,
                    "reason": reason,
                }),
                evidence: None,
            },
        )?;
        Ok(())
    }
}

/// Verifies a PIV key's signature over the ceremony's challenge. Returns the evidence and
/// whether the user was verified (the key's PIN policy makes it ask for the PIN).
fn verify_piv(
    claimed: &serde_json::Value,
    attested: &crate::verify::piv::Attested,
    challenge: &[u8; 32],
    credential_id: &str,
    require_uv: bool,
) -> Result<(Evidence, bool), OperatorError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = claimed
        .get("signature")
        .and_then(|v| v.as_str())
        .and_then(|v| b64.decode(v).ok())
        .ok_or_else(|| OperatorError::PivResponse("missing signature".into()))?;
    crate::verify::piv::verify_signature(
        &attested.algorithm,
        &attested.public_key_spki,
        challenge,
        &signature,
    )
    .map_err(OperatorError::PivResponse)?;
    let user_verified = attested.pin_policy != crate::verify::piv::PinPolicy::Never;
    if require_uv && !user_verified {
        return Err(Fido2Error::UserVerificationRequired.into());
    }
    let evidence = Evidence::Piv {
        key_id: credential_id.to_owned(),
        challenge: b64.encode(challenge),
        signature: b64.encode(&signature),
    };
    Ok((evidence, user_verified))
}
