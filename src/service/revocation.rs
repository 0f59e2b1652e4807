//! Revocation: the expiry queue, early revocation and relinquishing, and the sinks that must
//! each confirm before a grant counts as revoked — the introspection index, the OpenSSH KRL
//! (re-read after writing), consumer workloads' acknowledgements, and a per-scope hook's exit
//! status. Past its deadline an unconfirmed revocation is `revocation_unconfirmed`: retried,
//! audited, counted; never dropped, never shown as revoked before it is.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::audit::{Actor, Applied, Event};
use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::base::constants::{
    REVOCATION_BATCH, REVOCATION_BATCHES_PER_FLUSH, REVOCATION_ROUND_BATCHES, REVOCATION_SCAN_PAGE,
    SINK_RETRY_INITIAL, SINK_RETRY_MAX,
};
use crate::credential::krl;
use crate::domain::grant::revoke_digest;
use crate::domain::grant::{
    ExpiryEntry, Grant, GrantState, Revocation, Sink, SinkStatus, expiry_key, parse_expiry_key,
};
use crate::domain::request::Requester;
use crate::domain::scope::{RevocationSpec, Scope};
use crate::service::authority::Authority;
use crate::service::operators::OperatorError;
use crate::service::workflow::WorkflowError;
use crate::store::{self, Keyspace, StoreError, Txn};

/// Domain tag of early-revocation digests.
/// A hook to run for one grant.
#[derive(Clone, Debug)]
pub struct HookJob {
    /// The grant.
    pub grant_id: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Kill after.
    pub timeout: Duration,
    /// Environment: `LATCHKEY_GRANT_ID`, `LATCHKEY_SCOPE`, … (nothing else is inherited).
    pub env: Vec<(String, String)>,
}

/// What [`Authority::revoke_expired_at_start`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartRevocations {
    /// Grants revoked one by one before serving (a sink outside latchkey, or an older entry).
    pub revoked: usize,
    /// Grants revoked by the `grants.expired_while_down` record, rewritten after serving starts.
    pub deferred: usize,
}

/// What the scheduler should do next.
#[derive(Clone, Debug, Default)]
pub struct DriveOutcome {
    /// Hooks due now.
    pub hooks: Vec<HookJob>,
    /// The earliest time something else falls due (a retry, a deadline).
    pub next_due: Option<Timestamp>,
}

/// Counts for metrics and `doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevocationCounts {
    /// Revocations with sinks still to confirm, within their deadline.
    pub revoking: u64,
    /// Past their deadline.
    pub unconfirmed: u64,
}

fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.min(16);
    SINK_RETRY_INITIAL
        .saturating_mul(factor)
        .min(SINK_RETRY_MAX)
}

fn pending(sink: Sink, now: Timestamp) -> SinkStatus {
    SinkStatus {
        sink,
        confirmed_at: None,
        detail: String::new(),
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
    }
}

fn confirmed(sink: Sink, now: Timestamp, detail: &str) -> SinkStatus {
    SinkStatus {
        sink,
        confirmed_at: Some(now),
        detail: detail.to_owned(),
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
    }
}

fn sink_summary(r: &Revocation) -> serde_json::Value {
    serde_json::Value::Array(
        r.sinks
            .iter()
            .map(|s| {
                serde_json::json!({
                    "sink": s.sink.label(),
                    "confirmed_at": s.confirmed_at,
                    "detail": s.detail,
                    "attempts": s.attempts,
                    "last_error": s.last_error,
                })
            })
            .collect(),
    )
}

/// The audit event of a revocation just started on `grant`: `grant.revoked` if it completed at
/// once, else `grant.revoking`.
fn revocation_event(grant: &Grant, spec: &RevocationSpec, actor: Actor) -> Event {
    let revocation = grant.revocation.as_ref();
    Event {
        event: if grant.state == GrantState::Revoked {
            "grant.revoked"
        } else {
            "grant.revoking"
        },
        actor,
        subject: format!("grant/{}", grant.id),
        details: serde_json::json!({
            "reason": revocation.map(|r| r.reason.as_str()),
            "scope": grant.scope,
            "ssh_serial": grant.ssh.as_ref().map(|s| s.serial),
            "consumers": spec.consumers,
            "deadline": revocation.map(|r| r.deadline),
            "sinks": revocation.map(sink_summary),
        }),
        evidence: None,
    }
}

/// Runs a hook with its environment, killing it at the timeout. `Ok` means exit status 0.
pub async fn run_hook(job: &HookJob) -> Result<(), String> {
    let Some((program, args)) = job.command.split_first() else {
        return Err("empty hook command".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(job.timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("timed out after {:?} (killed)", job.timeout)),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or_default();
            Err(format!(
                "{} {}",
                out.status,
                last.chars().take(200).collect::<String>()
            ))
        }
    }
}

impl Authority {
    fn scope_revocation(&self, scope: &str) -> Result<RevocationSpec, WorkflowError> {
        Ok(store::read::<Scope>(self.store.as_ref(), scope.as_bytes())?
            .map(|s| s.revocation)
            .unwrap_or_default())
    }

    /// Starts revoking `grant` (stored as `raw`) into `txn`: the sinks it needs, the queue
    /// entries. Returns the updated grant; [`revocation_event`] is its audit event.
    fn start_revocation(
        &self,
        (mut grant, raw): (Grant, Vec<u8>),
        reason: String,
        spec: &RevocationSpec,
        now: Timestamp,
        txn: &mut Txn,
    ) -> Result<Grant, WorkflowError> {
        let mut sinks = vec![confirmed(
            Sink::Internal,
            now,
            "introspection answers inactive",
        )];
        if let Some(ssh) = &grant.ssh {
            if now < grant.expires_at {
                sinks.push(pending(Sink::Krl, now));
                txn.put_raw(
                    Keyspace::KrlSerials,
                    ssh.serial.to_be_bytes(),
                    grant.expires_at.unix_millis().to_be_bytes(),
                );
            } else {
                sinks.push(confirmed(
                    Sink::Krl,
                    now,
                    "certificate past its valid-before: sshd refuses it",
                ));
            }
        }
        for workload in &spec.consumers {
            sinks.push(pending(
                Sink::Consumer {
                    workload: workload.clone(),
                },
                now,
            ));
        }
        if !spec.hook.is_empty() {
            sinks.push(pending(Sink::Hook, now));
        }
        let mut revocation = Revocation {
            reason,
            started_at: now,
            deadline: now.plus(Duration::from_secs(spec.confirm_within_secs)),
            completed_at: None,
            sinks,
        };
        let id = grant.id.clone();
        txn.require_equals(Keyspace::Grants, id.as_bytes(), raw)
            .delete(Keyspace::GrantExpiry, expiry_key(grant.expires_at, &id));
        if revocation.complete() {
            revocation.completed_at = Some(now);
            grant.state = GrantState::Revoked;
        } else {
            grant.state = GrantState::Revoking;
            txn.put_raw(Keyspace::RevocationsPending, id.as_bytes(), b"".to_vec());
        }
        grant.revocation = Some(revocation);
        // Nobody may collect a credential that is being revoked.
        grant.sealed_bearer = None;
        txn.put(id.as_bytes(), &grant)?;
        Ok(grant)
    }

    /// The earliest expiry still queued.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>, WorkflowError> {
        Ok(self
            .store
            .scan_from(Keyspace::GrantExpiry, b"", 1)?
            .first()
            .and_then(|(k, _)| parse_expiry_key(k))
            .map(|(t, _)| t))
    }

    /// Revokes active grants whose expiry has passed, oldest first, in batches of one
    /// transaction each (never the whole queue in memory): up to
    /// [`REVOCATION_ROUND_BATCHES`] batches, so the scheduler's round also drives the other
    /// revocations' sinks when a great many are due (after a restart). Every
    /// [`REVOCATION_BATCHES_PER_FLUSH`] batches are made durable by one flush. Returns how many.
    pub fn revoke_expired(&self) -> Result<usize, WorkflowError> {
        let mut applied = Vec::new();
        let result = self.revoke_expired_into(&mut applied);
        // What was applied is made durable and published even if a later batch failed.
        self.audit.settle_all(applied)?;
        result
    }

    fn revoke_expired_into(&self, applied: &mut Vec<Applied>) -> Result<usize, WorkflowError> {
        let mut total = 0;
        // Scopes' revocation settings, read once per call rather than once per grant.
        let mut specs: HashMap<String, RevocationSpec> = HashMap::new();
        // Each page starts after the last key of the one before: the queue's head is deleted
        // as it goes, and this does not read those keys again.
        let mut from = Vec::new();
        for _ in 0..REVOCATION_ROUND_BATCHES {
            let now = self.clock.now();
            let page = self
                .store
                .scan_from(Keyspace::GrantExpiry, &from, REVOCATION_BATCH)?;
            let due: Vec<(Vec<u8>, String)> = page
                .iter()
                .filter_map(|(k, _)| {
                    let (t, id) = parse_expiry_key(k)?;
                    (t <= now).then(|| (k.clone(), id))
                })
                .collect();
            if due.is_empty() {
                return Ok(total);
            }
            total += self.revoke_due(&due, now, &mut specs, applied)?;
            if due.len() < page.len() {
                return Ok(total);
            }
            if let Some((last, _)) = due.last() {
                from = last.clone();
                from.push(0);
            }
            if applied.len() >= REVOCATION_BATCHES_PER_FLUSH {
                self.audit.settle_all(std::mem::take(applied))?;
            }
        }
        Ok(total)
    }

    /// Revokes the expired grants `due` (expiry-queue key and grant id) in one transaction,
    /// applied into `applied` (not yet durable). Queue entries of grants no longer active are
    /// dropped. Returns how many grants it revoked.
    fn revoke_due(
        &self,
        due: &[(Vec<u8>, String)],
        now: Timestamp,
        specs: &mut HashMap<String, RevocationSpec>,
        applied: &mut Vec<Applied>,
    ) -> Result<usize, WorkflowError> {
        let mut conflicts = 0;
        loop {
            let mut txn = Txn::new();
            let mut events = Vec::new();
            let mut expired = Vec::new();
            let mut tokens = Vec::new();
            let mut requests = Vec::new();
            for (key, id) in due {
                let raw = self.store.get(Keyspace::Grants, id.as_bytes())?;
                let Some(raw) = raw else {
                    txn.delete(Keyspace::GrantExpiry, key.clone());
                    continue;
                };
                let grant: Grant = store::decode(&raw)?;
                if grant.state != GrantState::Active {
                    txn.delete(Keyspace::GrantExpiry, key.clone());
                    continue;
                }
                if let Some(hash) = &grant.bearer_sha256 {
                    tokens.push(hash.clone());
                }
                requests.push(grant.request_id.clone());
                let spec = match specs.get(&grant.scope) {
                    Some(spec) => spec,
                    None => {
                        let spec = self.scope_revocation(&grant.scope)?;
                        specs.entry(grant.scope.clone()).or_insert(spec)
                    }
                };
                let updated =
                    self.start_revocation((grant, raw), "expired".to_owned(), spec, now, &mut txn)?;
                if updated.state == GrantState::Revoked {
                    // Complete at once (nothing outside latchkey to confirm): one record for
                    // the batch, not one per grant.
                    expired.push(serde_json::json!({
                        "grant": updated.id,
                        "scope": updated.scope,
                        "ssh_serial": updated.ssh.as_ref().map(|s| s.serial),
                    }));
                } else {
                    events.push(revocation_event(&updated, spec, Actor::Daemon));
                }
            }
            if !expired.is_empty() {
                events.push(Event {
                    event: "grants.expired",
                    actor: Actor::Daemon,
                    subject: "grants".to_owned(),
                    details: serde_json::json!({
                        "reason": "expired",
                        "grants": expired,
                    }),
                    evidence: None,
                });
            }
            match self.audit.apply_events(txn, events) {
                Ok(batch) => applied.push(batch),
                Err(e) => {
                    let e = WorkflowError::from(e);
                    // An early revocation of one of these grants committed first: re-read.
                    if e.is_conflict() && conflicts < 8 {
                        conflicts += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
            for hash in tokens {
                self.index.remove(&hash);
            }
            return Ok(requests.len());
        }
    }

    /// After downtime, before anything is served: starts the revocation of every grant that
    /// expired while the daemon was down. Those whose revocation needs confirming outside
    /// latchkey (a consumer to tell, a hook to run), and those whose queue entry predates
    /// [`ExpiryEntry`], are revoked one by one now, as the scheduler would. The others need
    /// nothing but latchkey's own state, and introspection already answers inactive for them:
    /// one audit record, `grants.expired_while_down` (reason, `through`, count), revokes them
    /// all, and the scheduler rewrites each grant after serving starts (shown as revoking
    /// until then), auditing them in its usual `grants.expired` batches.
    pub fn revoke_expired_at_start(&self) -> Result<StartRevocations, WorkflowError> {
        let now = self.clock.now();
        let end = expiry_key(now.plus(Duration::from_millis(1)), "");
        let mut specs: HashMap<String, RevocationSpec> = HashMap::new();
        let mut outside = HashMap::<String, bool>::new();
        let mut one_by_one = Vec::new();
        let mut deferred = 0usize;
        let mut from = Vec::new();
        'scan: loop {
            let page = self
                .store
                .scan_from(Keyspace::GrantExpiry, &from, REVOCATION_SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (key, value) in page {
                if key >= end {
                    break 'scan;
                }
                let confirmed_outside = match ExpiryEntry::decode(&value) {
                    None => true,
                    Some(entry) => match outside.get(&entry.scope) {
                        Some(&yes) => yes,
                        None => {
                            let spec = self.scope_revocation(&entry.scope)?;
                            let yes = !spec.consumers.is_empty() || !spec.hook.is_empty();
                            specs.insert(entry.scope.clone(), spec);
                            outside.insert(entry.scope, yes);
                            yes
                        }
                    },
                };
                if confirmed_outside {
                    if let Some((_, id)) = parse_expiry_key(&key) {
                        one_by_one.push((key, id));
                    }
                } else {
                    deferred += 1;
                }
            }
            from = next;
        }
        let mut revoked = 0;
        let mut applied = Vec::new();
        let result =
            one_by_one
                .chunks(REVOCATION_BATCH)
                .try_for_each(|due| -> Result<(), WorkflowError> {
                    revoked += self.revoke_due(due, now, &mut specs, &mut applied)?;
                    if applied.len() >= REVOCATION_BATCHES_PER_FLUSH {
                        self.audit.settle_all(std::mem::take(&mut applied))?;
                    }
                    Ok(())
                });
        self.audit.settle_all(applied)?;
        result?;
        if deferred > 0 {
            self.audit.commit_events(
                Txn::new(),
                vec![Event {
                    event: "grants.expired_while_down",
                    actor: Actor::Daemon,
                    subject: "grants".to_owned(),
                    details: serde_json::json!({
                        "reason": "expired",
                        "through": now,
                        "grants": deferred,
                    }),
                    evidence: None,
                }],
            )?;
        }
        Ok(StartRevocations { revoked, deferred })
    }

    /// Writes the KRL from the revoked, not yet expired serials (pruning expired ones), reads
    /// it back, and returns the serials it holds.
    ///
    /// `krl_serials` is read whole once; after that the KRL is kept from `revoking`, the
    /// serials of the grants still waiting for the KRL: `krl_serials` gains an entry only in
    /// the transaction that starts such a grant's revocation, and the grant waits (in
    /// `revocations_pending`) until a publication read its serial back.
    fn publish_krl(
        &self,
        now: Timestamp,
        revoking: &[(u64, i64)],
    ) -> Result<Vec<u64>, WorkflowError> {
        let mut listed = self
            .krl_listed
            .lock()
            .map_err(|_| WorkflowError::Sink("KRL state poisoned by a panic".into()))?;
        let listed =
            match &mut *listed {
                Some(listed) => {
                    // An expired one was pruned from `krl_serials` already, or is now.
                    listed.extend(revoking.iter().copied().filter(|(_, valid_before)| {
                        Timestamp::from_unix_millis(*valid_before) > now
                    }));
                    listed
                }
                None => {
                    let mut stored = self.stored_krl_serials()?;
                    self.keep_published_serials(&mut stored, now)?;
                    listed.insert(stored)
                }
            };
        let mut prune = Txn::new();
        let mut serials = Vec::with_capacity(listed.len());
        for (&serial, &valid_before) in listed.iter() {
            if Timestamp::from_unix_millis(valid_before) <= now {
                prune
                    .require_equals(
                        Keyspace::KrlSerials,
                        serial.to_be_bytes(),
                        valid_before.to_be_bytes(),
                    )
                    .delete(Keyspace::KrlSerials, serial.to_be_bytes());
            } else {
                serials.push(serial);
            }
        }
        let blob = self.ca_key_blob()?;
        let version = u64::try_from(now.unix_millis()).unwrap_or(0);
        let bytes = krl::encode(&blob, &serials, version, version / 1000);
        krl::write_atomically(&self.krl_path, &bytes)
            .map_err(|e| WorkflowError::Sink(e.to_string()))?;
        if !prune.writes().is_empty() {
            self.store.commit(&prune)?;
            listed.retain(|_, valid_before| Timestamp::from_unix_millis(*valid_before) > now);
        }
        krl::read_serials(&self.krl_path, &blob).map_err(|e| WorkflowError::Sink(e.to_string()))
    }

    /// The KRL never shrinks before a certificate expires: serials the published KRL lists but
    /// `krl_serials` does not (a store rolled back, restored or damaged) are kept, stored with
    /// the latest valid-before such a certificate could have (the KRL's generation time plus
    /// the longest TTL any grant may have), and dropped once that has passed.
    fn keep_published_serials(
        &self,
        stored: &mut std::collections::BTreeMap<u64, i64>,
        now: Timestamp,
    ) -> Result<(), WorkflowError> {
        let blob = self.ca_key_blob()?;
        let Some((version, serials)) = krl::read_published(&self.krl_path, &blob)
            .map_err(|e| WorkflowError::Sink(e.to_string()))?
        else {
            return Ok(());
        };
        let generated = i64::try_from(version).unwrap_or(i64::MAX);
        let max_ttl = i64::try_from(crate::base::constants::MAX_GRANT_TTL.as_millis()).unwrap_or(0);
        let valid_before = generated.saturating_add(max_ttl);
        if Timestamp::from_unix_millis(valid_before) <= now {
            return Ok(());
        }
        let mut txn = Txn::new();
        let mut kept = 0usize;
        for serial in serials {
            if stored.contains_key(&serial) {
                continue;
            }
            txn.require_absent(Keyspace::KrlSerials, serial.to_be_bytes())
                .put_raw(
                    Keyspace::KrlSerials,
                    serial.to_be_bytes(),
                    valid_before.to_be_bytes(),
                );
            stored.insert(serial, valid_before);
            kept += 1;
        }
        if kept > 0 {
            self.store.commit(&txn)?;
            tracing::warn!(
                serials = kept,
                krl = %self.krl_path.display(),
                "the published KRL revokes serials the trust store does not know (rolled back or damaged?): kept in the KRL until their certificates must have expired"
            );
        }
        Ok(())
    }

    /// Every entry of `krl_serials`: serial → valid-before (ms).
    fn stored_krl_serials(&self) -> Result<std::collections::BTreeMap<u64, i64>, WorkflowError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            keyspace: Keyspace::KrlSerials.name(),
            detail: detail.into(),
        };
        let mut listed = std::collections::BTreeMap::new();
        for (key, value) in self
            .store
            .scan_from(Keyspace::KrlSerials, b"", usize::MAX)?
        {
            let serial = u64::from_be_bytes(
                key.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("serial length"))?,
            );
            let valid_before = i64::from_be_bytes(
                value
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("time length"))?,
            );
            listed.insert(serial, valid_before);
        }
        Ok(listed)
    }

    /// Writes the KRL now (at start, so sshd's `RevokedKeys` file always exists).
    pub fn publish_krl_now(&self) -> Result<usize, WorkflowError> {
        Ok(self.publish_krl(self.clock.now(), &[])?.len())
    }

    fn ca_key_blob(&self) -> Result<Vec<u8>, WorkflowError> {
        self.keys
            .ssh_ca
            .public_key()
            .to_bytes()
            .map_err(|e| WorkflowError::Sink(format!("SSH CA public key: {e}")))
    }

    /// The KRL path sshd's `RevokedKeys` should name.
    pub fn krl_path(&self) -> &Path {
        &self.krl_path
    }

    /// Works the revocation queue: publishes the KRL if a grant waits for it, marks what is
    /// confirmed, completes or flags unconfirmed revocations. Returns the hooks to run now and
    /// when to come back.
    pub fn drive_revocations(&self) -> Result<DriveOutcome, WorkflowError> {
        let now = self.clock.now();
        let ids: Vec<String> = self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        let mut grants = Vec::new();
        for id in ids {
            if let Some(raw) = self.store.get(Keyspace::Grants, id.as_bytes())? {
                grants.push((store::decode::<Grant>(&raw)?, raw));
            }
        }
        let krl_due = grants.iter().any(|(g, _)| {
            g.revocation.as_ref().is_some_and(|r| {
                r.sinks.iter().any(|s| {
                    s.sink == Sink::Krl && s.confirmed_at.is_none() && s.next_attempt_at <= now
                })
            })
        });
        let published = if krl_due {
            let revoking: Vec<(u64, i64)> = grants
                .iter()
                .filter(|(g, _)| {
                    g.revocation.as_ref().is_some_and(|r| {
                        r.sinks
                            .iter()
                            .any(|s| s.sink == Sink::Krl && s.confirmed_at.is_none())
                    })
                })
                .filter_map(|(g, _)| {
                    g.ssh
                        .as_ref()
                        .map(|ssh| (ssh.serial, g.expires_at.unix_millis()))
                })
                .collect();
            Some(self.publish_krl(now, &revoking))
        } else {
            None
        };
        let mut outcome = DriveOutcome::default();
        // Each grant's update is its own transaction; they are applied after the loop and made
        // durable by one flush for the whole round (group commit).
        let mut writes: Vec<(Txn, Vec<Event>)> = Vec::new();
        for (mut grant, raw) in grants {
            let Some(mut revocation) = grant.revocation.take() else {
                continue;
            };
            let before = revocation.clone();
            let before_state = grant.state;
            let mut events = Vec::new();
            for sink in &mut revocation.sinks {
                if sink.confirmed_at.is_some() || sink.next_attempt_at > now {
                    continue;
                }
                match (&sink.sink, &published, &grant.ssh) {
                    (Sink::Krl, Some(Ok(serials)), Some(ssh)) => {
                        if serials.contains(&ssh.serial) {
                            sink.confirmed_at = Some(now);
                            sink.detail = format!(
                                "serial {} read back from {}",
                                ssh.serial,
                                self.krl_path.display()
                            );
                            events.push(("krl", None));
                        } else {
                            sink.attempts += 1;
                            sink.last_error = Some("serial missing after re-reading".into());
                            sink.next_attempt_at = now.plus(backoff(sink.attempts));
                        }
                    }
                    (Sink::Krl, Some(Err(e)), _) => {
                        sink.attempts += 1;
                        sink.last_error = Some(e.to_string());
                        sink.next_attempt_at = now.plus(backoff(sink.attempts));
                        events.push(("krl", Some(e.to_string())));
                    }
                    (Sink::Hook, _, _) => {
                        let spec = self.scope_revocation(&grant.scope)?;
                        outcome.hooks.push(HookJob {
                            grant_id: grant.id.clone(),
                            command: spec.hook,
                            timeout: Duration::from_secs(spec.hook_timeout_secs),
                            env: hook_env(&grant, &revocation_reason(&before)),
                        });
                        // Not due again until this attempt reports (or times out).
                        sink.next_attempt_at =
                            now.plus(Duration::from_secs(spec.hook_timeout_secs + 1));
                    }
                    _ => {}
                }
            }
            let mut names = Vec::new();
            for (sink, error) in events {
                names.push(match error {
                    None => Event {
                        event: "revocation.sink_confirmed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", grant.id),
                        details: serde_json::json!({ "sink": sink }),
                        evidence: None,
                    },
                    Some(error) => Event {
                        event: "revocation.sink_failed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", grant.id),
                        details: serde_json::json!({ "sink": sink, "error": error }),
                        evidence: None,
                    },
                });
            }
            self.settle(&mut grant, &mut revocation, now, &mut names);
            if let Some(next) = next_due(&grant, &revocation) {
                outcome.next_due = Some(outcome.next_due.map_or(next, |n: Timestamp| n.min(next)));
            }
            if revocation == before && grant.state == before_state {
                continue;
            }
            let id = grant.id.clone();
            let complete = grant.state == GrantState::Revoked;
            grant.revocation = Some(revocation);
            let mut txn = Txn::new();
            txn.require_equals(Keyspace::Grants, id.as_bytes(), raw)
                .put(id.as_bytes(), &grant)?;
            if complete {
                txn.delete(Keyspace::RevocationsPending, id.as_bytes());
            }
            writes.push((txn, names));
        }
        let mut applied = Vec::new();
        let mut plain = false;
        let mut failed = None;
        for (txn, names) in writes {
            let result = if names.is_empty() {
                plain = true;
                self.store.apply(&txn).map_err(WorkflowError::from)
            } else {
                self.audit
                    .apply_events(txn, names)
                    .map(|a| applied.push(a))
                    .map_err(WorkflowError::from)
            };
            if let Err(e) = result {
                failed = Some(e);
                break;
            }
        }
        // What was applied is made durable and published even if a later write failed.
        self.audit.settle_all(applied)?;
        if plain {
            self.store.flush()?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }

    /// Completes the revocation if every sink confirmed, or flags it past its deadline.
    fn settle(
        &self,
        grant: &mut Grant,
        revocation: &mut Revocation,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) {
        if revocation.complete() {
            revocation.completed_at = Some(now);
            grant.state = GrantState::Revoked;
            events.push(Event {
                event: "grant.revoked",
                actor: Actor::Daemon,
                subject: format!("grant/{}", grant.id),
                details: serde_json::json!({
                    "reason": revocation.reason,
                    "sinks": sink_summary(revocation),
                }),
                evidence: None,
            });
        } else if now >= revocation.deadline && grant.state == GrantState::Revoking {
            grant.state = GrantState::RevocationUnconfirmed;
            let missing: Vec<String> = revocation
                .sinks
                .iter()
                .filter(|s| s.confirmed_at.is_none())
                .map(|s| s.sink.label())
                .collect();
            tracing::error!(
                grant = %grant.id,
                scope = %grant.scope,
                missing = ?missing,
                "revocation unconfirmed past its deadline; still retrying"
            );
            events.push(Event {
                event: "grant.revocation_unconfirmed",
                actor: Actor::Daemon,
                subject: format!("grant/{}", grant.id),
                details: serde_json::json!({
                    "deadline": revocation.deadline,
                    "unconfirmed": missing,
                    "sinks": sink_summary(revocation),
                }),
                evidence: None,
            });
        }
    }

    /// Records a hook's result for a grant.
    pub fn hook_finished(
        &self,
        job: &HookJob,
        result: Result<(), String>,
    ) -> Result<(), WorkflowError> {
        self.update_sink(&job.grant_id, |sink, now| {
            if sink.sink != Sink::Hook || sink.confirmed_at.is_some() {
                return None;
            }
            sink.attempts += 1;
            Some(match &result {
                Ok(()) => {
                    sink.confirmed_at = Some(now);
                    sink.detail = "hook exited 0".into();
                    sink.last_error = None;
                    Event {
                        event: "revocation.sink_confirmed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", job.grant_id),
                        details: serde_json::json!({ "sink": "hook", "attempts": sink.attempts }),
                        evidence: None,
                    }
                }
                Err(error) => {
                    tracing::warn!(grant = %job.grant_id, attempt = sink.attempts, "revocation hook failed: {error}");
                    sink.last_error = Some(error.clone());
                    sink.next_attempt_at = now.plus(backoff(sink.attempts));
                    Event {
                        event: "revocation.sink_failed",
                        actor: Actor::Daemon,
                        subject: format!("grant/{}", job.grant_id),
                        details: serde_json::json!({
                            "sink": "hook",
                            "attempt": sink.attempts,
                            "error": error,
                            "next_attempt_at": sink.next_attempt_at,
                        }),
                        evidence: None,
                    }
                }
            })
        })
        .map(|_| ())
    }

    /// Applies `change` to the first matching sink of a grant being revoked, with its event,
    /// then settles the revocation. Returns the grant's state afterwards.
    fn update_sink(
        &self,
        grant_id: &str,
        mut change: impl FnMut(&mut SinkStatus, Timestamp) -> Option<Event>,
    ) -> Result<Option<GrantState>, WorkflowError> {
        for _attempt in 0..8 {
            let now = self.clock.now();
            let raw = self
                .store
                .get(Keyspace::Grants, grant_id.as_bytes())?
                .ok_or_else(|| WorkflowError::UnknownGrant(grant_id.to_owned()))?;
            let mut grant: Grant = store::decode(&raw)?;
            let Some(mut revocation) = grant.revocation.take() else {
                return Ok(None);
            };
            let Some(event) = revocation.sinks.iter_mut().find_map(|s| change(s, now)) else {
                return Ok(None);
            };
            let mut events = vec![event];
            self.settle(&mut grant, &mut revocation, now, &mut events);
            let complete = grant.state == GrantState::Revoked;
            grant.revocation = Some(revocation);
            let mut txn = Txn::new();
            txn.require_equals(Keyspace::Grants, grant_id.as_bytes(), raw)
                .put(grant_id.as_bytes(), &grant)?;
            if complete {
                txn.delete(Keyspace::RevocationsPending, grant_id.as_bytes());
            }
            match self.audit.commit_events(txn, events) {
                Ok(_) => return Ok(Some(grant.state)),
                Err(e) => {
                    let e = WorkflowError::from(e);
                    if !e.is_conflict() {
                        return Err(e);
                    }
                }
            }
        }
        Err(StoreError::Conflict(format!("grant {grant_id} kept changing")).into())
    }

    /// A consumer workload acknowledges that it acted on a revocation.
    pub fn acknowledge_revocation(
        &self,
        caller: &Caller,
        grant_id: &str,
    ) -> Result<GrantState, WorkflowError> {
        let Caller::Workload(w) = caller else {
            return Err(WorkflowError::NotConsumer(grant_id.to_owned()));
        };
        let name = w.name.clone();
        let mut already = false;
        let state = self.update_sink(grant_id, |sink, now| {
            match &sink.sink {
                Sink::Consumer { workload } if *workload == name => {}
                _ => return None,
            }
            if sink.confirmed_at.is_some() {
                already = true;
                return None;
            }
            sink.attempts += 1;
            sink.confirmed_at = Some(now);
            sink.detail = format!("acknowledged by workload/{name}");
            Some(Event {
                event: "revocation.acknowledged",
                actor: Actor::Workload { name: name.clone() },
                subject: format!("grant/{grant_id}"),
                details: serde_json::json!({ "sink": format!("consumer/{name}") }),
                evidence: None,
            })
        })?;
        match state {
            Some(state) => Ok(state),
            None if already => Ok(self.grant(grant_id)?.state),
            None => Err(WorkflowError::NotConsumer(grant_id.to_owned())),
        }
    }

    /// Grants whose revocation `workload` must still acknowledge.
    pub fn revocations_for(&self, caller: &Caller) -> Result<Vec<Grant>, WorkflowError> {
        let Caller::Workload(w) = caller else {
            return Err(WorkflowError::NotConsumer(String::new()));
        };
        let mut out = Vec::new();
        for (key, _) in self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
        {
            let Some(grant) = store::read::<Grant>(self.store.as_ref(), &key)? else {
                continue;
            };
            let waiting = grant.revocation.as_ref().is_some_and(|r| {
                r.sinks.iter().any(|s| {
                    s.confirmed_at.is_none()
                        && matches!(&s.sink, Sink::Consumer { workload } if *workload == w.name)
                })
            });
            if waiting {
                out.push(grant);
            }
        }
        self.settled(out)
    }

    /// Starts an early revocation by an operator: returns assertion options bound to the grant
    /// and the reason. Any operator with an active key may revoke: revoking is always safe.
    pub fn begin_revoke(
        &self,
        caller: &Caller,
        grant_id: &str,
        operator: &str,
        reason: &str,
    ) -> Result<(crate::domain::operator::Opened, [u8; 32]), WorkflowError> {
        if !matches!(caller, Caller::Local(_)) {
            return Err(OperatorError::LocalOnly.into());
        }
        self.revocable(grant_id)?;
        check_reason(reason)?;
        let digest = revoke_digest(grant_id, reason);
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    fn revocable(&self, grant_id: &str) -> Result<(Grant, Vec<u8>), WorkflowError> {
        let raw = self
            .store
            .get(Keyspace::Grants, grant_id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownGrant(grant_id.to_owned()))?;
        let grant: Grant = store::decode(&raw)?;
        // An expired grant is revoking from its expiry on, even before the scheduler (or,
        // after a restart, the background rewrite) has written that down: it is the expiry's
        // to revoke, not an operator's or its holder's.
        let state = effective_state(&grant, self.clock.now());
        if state != GrantState::Active {
            return Err(WorkflowError::GrantNotActive {
                id: grant_id.to_owned(),
                state: state.name(),
            });
        }
        Ok((grant, raw))
    }

    /// Revokes a grant early with an operator's assertion.
    pub fn revoke(
        &self,
        caller: &Caller,
        grant_id: &str,
        reason: &str,
        ceremony_id: &str,
        credential_json: &str,
    ) -> Result<Grant, WorkflowError> {
        if !matches!(caller, Caller::Local(_)) {
            return Err(OperatorError::LocalOnly.into());
        }
        check_reason(reason)?;
        let (grant, raw) = self.revocable(grant_id)?;
        let prepared = self.operators().prepare_assertion(
            ceremony_id,
            &revoke_digest(grant_id, reason),
            credential_json,
            "grant.revoke_requested",
            format!("grant/{grant_id}"),
        )?;
        let operator = prepared.verified.operator.clone();
        let mut event = prepared.event;
        if let Some(map) = event.details.as_object_mut() {
            map.insert("reason".into(), reason.into());
        }
        let mut txn = prepared.txn;
        let mut events = vec![event];
        self.finish_early(
            grant,
            raw,
            format!("revoked by operator/{operator}: {reason}"),
            Actor::Operator { name: operator },
            &mut txn,
            &mut events,
        )
    }

    /// The holder gives a grant up (a workload over mTLS, or the operator's local user).
    pub fn relinquish(&self, caller: &Caller, grant_id: &str) -> Result<Grant, WorkflowError> {
        let (grant, raw) = match self.revocable(grant_id) {
            Ok(found) => found,
            // Do not tell a stranger whether the grant exists or is active.
            Err(e) => {
                if let Ok(g) = self.grant(grant_id)
                    && !holds(caller, &g)
                {
                    return Err(WorkflowError::NotHolder(grant_id.to_owned()));
                }
                return Err(e);
            }
        };
        if !holds(caller, &grant) {
            return Err(WorkflowError::NotHolder(grant_id.to_owned()));
        }
        let actor = match caller {
            Caller::Workload(w) => Actor::Workload {
                name: w.name.clone(),
            },
            Caller::Local(peer) => Actor::Local { uid: peer.uid },
        };
        let label = grant.requester.label();
        let mut txn = Txn::new();
        let mut events = Vec::new();
        self.finish_early(
            grant,
            raw,
            format!("relinquished by {label}"),
            actor,
            &mut txn,
            &mut events,
        )
    }

    fn finish_early(
        &self,
        grant: Grant,
        raw: Vec<u8>,
        reason: String,
        actor: Actor,
        txn: &mut Txn,
        events: &mut Vec<Event>,
    ) -> Result<Grant, WorkflowError> {
        let now = self.clock.now();
        // Inactive for introspection from this instant; restored if the commit fails.
        if let Some(hash) = &grant.bearer_sha256 {
            self.index.remove(hash);
        }
        let original = grant.clone();
        let result = self
            .scope_revocation(&grant.scope)
            .and_then(|spec| {
                let updated = self.start_revocation((grant, raw), reason, &spec, now, txn)?;
                events.push(revocation_event(&updated, &spec, actor));
                Ok(updated)
            })
            .and_then(|updated| {
                self.audit
                    .commit_events(std::mem::take(txn), std::mem::take(events))?;
                Ok(updated)
            });
        match result {
            Ok(updated) => {
                self.revocation_wake.notify_one();
                Ok(updated)
            }
            Err(e) => {
                self.index.insert(&original);
                Err(e)
            }
        }
    }

    /// How many revocations are in flight and how many are past their deadline.
    pub fn revocation_counts(&self) -> Result<RevocationCounts, WorkflowError> {
        let mut counts = RevocationCounts::default();
        for (key, _) in self
            .store
            .scan_from(Keyspace::RevocationsPending, b"", usize::MAX)?
        {
            match store::read::<Grant>(self.store.as_ref(), &key)?.map(|g| g.state) {
                Some(GrantState::Revoking) => counts.revoking += 1,
                Some(GrantState::RevocationUnconfirmed) => counts.unconfirmed += 1,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Grants, newest first, optionally only in `state`.
    pub fn grants(&self, state: Option<GrantState>) -> Result<Vec<Grant>, WorkflowError> {
        let now = self.clock.now();
        let mut all: Vec<Grant> = self
            .store
            .scan_from(Keyspace::Grants, b"", usize::MAX)?
            .into_iter()
            .map(|(_, v)| store::decode::<Grant>(&v))
            .collect::<Result<_, _>>()?;
        all.retain(|g| state.is_none_or(|s| effective_state(g, now) == s));
        all.sort_by_key(|g| std::cmp::Reverse(g.issued_at));
        all.truncate(crate::base::constants::MAX_LIST);
        self.settled(all)
    }

    /// Wakes the scheduler (a grant was minted or revoked).
    pub fn wake_scheduler(&self) {
        self.revocation_wake.notify_one();
    }

    /// Resolves when something asks the scheduler to look again.
    pub async fn scheduler_woken(&self) {
        self.revocation_wake.notified().await;
    }
}

/// A grant's state at `now`: an active grant past its expiry is shown as revoking until the
/// scheduler has revoked it (it is already inactive).
pub fn effective_state(grant: &Grant, now: Timestamp) -> GrantState {
    if grant.state == GrantState::Active && now >= grant.expires_at {
        GrantState::Revoking
    } else {
        grant.state
    }
}

fn holds(caller: &Caller, grant: &Grant) -> bool {
    match (&grant.requester, caller) {
        (Requester::Workload { name }, Caller::Workload(w)) => *name == w.name,
        (Requester::Operator { uid, .. }, Caller::Local(peer)) => *uid == peer.uid,
        _ => false,
    }
}

fn check_reason(reason: &str) -> Result<(), WorkflowError> {
    if reason.trim().chars().count() < 3 || reason.len() > crate::base::constants::MAX_REASON_LEN {
        return Err(WorkflowError::RevokeReason);
    }
    Ok(())
}

fn revocation_reason(r: &Revocation) -> String {
    r.reason.clone()
}

fn next_due(grant: &Grant, r: &Revocation) -> Option<Timestamp> {
    let retries = r
        .sinks
        .iter()
        .filter(|s| s.confirmed_at.is_none() && !matches!(s.sink, Sink::Consumer { .. }))
        .map(|s| s.next_attempt_at);
    let deadline = (grant.state == GrantState::Revoking).then_some(r.deadline);
    retries.chain(deadline).min()
}

fn hook_env(grant: &Grant, reason: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("LATCHKEY_GRANT_ID".to_owned(), grant.id.clone()),
        ("LATCHKEY_REQUEST_ID".to_owned(), grant.request_id.clone()),
        ("LATCHKEY_SCOPE".to_owned(), grant.scope.clone()),
        ("LATCHKEY_REQUESTER".to_owned(), grant.requester.label()),
        (
            "LATCHKEY_EXPIRES_AT".to_owned(),
            grant.expires_at.to_string(),
        ),
        ("LATCHKEY_REASON".to_owned(), reason.to_owned()),
    ];
    if let Some(ssh) = &grant.ssh {
        env.push(("LATCHKEY_SSH_SERIAL".to_owned(), ssh.serial.to_string()));
        env.push((
            "LATCHKEY_SSH_PRINCIPALS".to_owned(),
            ssh.principals.join(","),
        ));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        assert_eq!(backoff(0), SINK_RETRY_INITIAL);
        assert_eq!(backoff(1), SINK_RETRY_INITIAL * 2);
        assert_eq!(backoff(30), SINK_RETRY_MAX);
    }

    #[test]
    fn revoke_digests_bind_grant_and_reason() {
        assert_ne!(revoke_digest("g1", "leak"), revoke_digest("g2", "leak"));
        assert_ne!(revoke_digest("g1", "leak"), revoke_digest("g1", "done"));
    }
}
