//! Grants (issued credentials) and the in-memory introspection index.
//!
//! The index maps the SHA-256 of a bearer token to what introspection answers, so the hot path
//! is one hash and one map lookup. It is filled from the expiry queue at start (each entry
//! carries its grant's token hash and scope: see [`ExpiryEntry`]) and updated after every
//! committed mint or revocation; expiry needs no update because every answer compares the
//! grant's expiry with the clock at that instant.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::clock::Timestamp;
use crate::domain::request::Requester;
use crate::store::{Keyspace, Record, Store, StoreError};

/// An issued SSH certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshGrant {
    /// Certificate serial (unique, non-zero).
    pub serial: u64,
    /// Principals in the certificate.
    pub principals: Vec<String>,
    /// The certificate, OpenSSH one-line form (public: no secret in it).
    pub certificate: String,
}

/// Where a grant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Usable until its expiry.
    Active,
    /// Revocation started; some sinks have not confirmed yet.
    Revoking,
    /// Every sink confirmed.
    Revoked,
    /// Past the scope's deadline with sinks still unconfirmed: retried, alarmed.
    RevocationUnconfirmed,
}

impl GrantState {
    /// `active`, `revoking`, `revoked`, `revocation_unconfirmed`.
    pub fn name(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Revoking => "revoking",
            GrantState::Revoked => "revoked",
            GrantState::RevocationUnconfirmed => "revocation_unconfirmed",
        }
    }
}

/// Where a revocation must be confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sink", rename_all = "snake_case")]
pub enum Sink {
    /// The introspection index (confirmed in the revoking transaction).
    Internal,
    /// The SSH KRL file, re-read after writing.
    Krl,
    /// A consumer workload's acknowledgement on its own mTLS identity.
    Consumer {
        /// Workload.
        workload: String,
    },
    /// The scope's revocation hook, by its exit status.
    Hook,
}

impl Sink {
    /// `internal`, `krl`, `consumer/NAME`, `hook`.
    pub fn label(&self) -> String {
        match self {
            Sink::Internal => "internal".to_owned(),
            Sink::Krl => "krl".to_owned(),
            Sink::Consumer { workload } => format!("consumer/{workload}"),
            Sink::Hook => "hook".to_owned(),
        }
    }
}

/// One sink's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Which sink.
    pub sink: Sink,
    /// When confirmed (None: not yet).
    pub confirmed_at: Option<Timestamp>,
    /// How it was confirmed (e.g. "serial in KRL", "exit 0", "certificate expired").
    pub detail: String,
    /// Attempts so far (hooks, KRL writes).
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When to try again.
    pub next_attempt_at: Timestamp,
}

/// A revocation in progress or done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Why: `expired`, `revoked by operator/NAME: …`, `relinquished by …`.
    pub reason: String,
    /// When it started.
    pub started_at: Timestamp,
    /// After this, unconfirmed sinks make it `revocation_unconfirmed`.
    pub deadline: Timestamp,
    /// When every sink had confirmed.
    pub completed_at: Option<Timestamp>,
    /// Every sink.
    pub sinks: Vec<SinkStatus>,
}

impl Revocation {
    /// Whether every sink confirmed.
    pub fn complete(&self) -> bool {
        self.sinks.iter().all(|s| s.confirmed_at.is_some())
    }
}

/// An issued credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id (also the SSH certificate's key id).
    pub id: String,
    /// The request it answers.
    pub request_id: String,
    /// Scope.
    pub scope: String,
    /// Who holds it.
    pub requester: Requester,
    /// When minted.
    pub issued_at: Timestamp,
    /// Hard expiry.
    pub expires_at: Timestamp,
    /// SHA-256 of the bearer token, hex, if one was minted.
    pub bearer_sha256: Option<String>,
    /// The SSH certificate, if one was minted.
    pub ssh: Option<SshGrant>,
    /// Stored state (see [`Grant::active_at`]).
    pub state: GrantState,
    /// The revocation, once started.
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// The bearer token sealed to the requester's delivery key, kept for collection while
    /// the grant is active and dropped when its revocation starts. Never the plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_bearer: Option<crate::credential::delivery::SealedToken>,
}

impl Record for Grant {
    const KEYSPACE: Keyspace = Keyspace::Grants;
}

impl Grant {
    /// Whether the grant is usable at `now`: active and not past its expiry.
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.state == GrantState::Active && now < self.expires_at
    }
}

/// Key of a grant in [`Keyspace::GrantExpiry`]: expiry (ms, big-endian, order-preserving)
/// then the id, so a scan from the start yields the grants that expire first.
pub fn expiry_key(expires_at: Timestamp, id: &str) -> Vec<u8> {
    // Flip the sign bit so negative times sort before positive ones.
    let ordered = (expires_at.unix_millis() as u64) ^ (1 << 63);
    let mut key = ordered.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The expiry and id in an expiry key.
pub fn parse_expiry_key(key: &[u8]) -> Option<(Timestamp, String)> {
    let (head, id) = key.split_at_checked(8)?;
    let ordered = u64::from_be_bytes(head.try_into().ok()?) ^ (1 << 63);
    Some((
        Timestamp::from_unix_millis(ordered as i64),
        String::from_utf8(id.to_vec()).ok()?,
    ))
}

/// The value of a grant's entry in [`Keyspace::GrantExpiry`]: what the token index and the
/// start-up revocation need, so neither reads the grant itself. Entries written before this
/// existed are empty; [`ExpiryEntry::decode`] answers `None` for them and readers fall back to
/// the grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryEntry {
    /// SHA-256 of the bearer token, if one was minted.
    pub token: Option<[u8; 32]>,
    /// The grant's scope.
    pub scope: String,
}

/// Format byte of [`ExpiryEntry`]'s encoding.
const EXPIRY_ENTRY_V1: u8 = 1;

impl ExpiryEntry {
    /// The entry of `grant`.
    pub fn of(grant: &Grant) -> Self {
        Self {
            token: grant.bearer_sha256.as_deref().and_then(decode_hash),
            scope: grant.scope.clone(),
        }
    }

    /// Format byte, token flag, the token hash if present, then the scope (UTF-8).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 32 + self.scope.len());
        out.push(EXPIRY_ENTRY_V1);
        match &self.token {
            Some(hash) => {
                out.push(1);
                out.extend_from_slice(hash);
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.scope.as_bytes());
        out
    }

    /// `None` for an empty (older) or unreadable value: read the grant instead.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&[format, flag], rest) = bytes.split_first_chunk::<2>()?;
        if format != EXPIRY_ENTRY_V1 {
            return None;
        }
        let (token, scope) = match flag {
            0 => (None, rest),
            1 => {
                let (hash, scope) = rest.split_first_chunk::<32>()?;
                (Some(*hash), scope)
            }
            _ => return None,
        };
        Some(Self {
            token,
            scope: String::from_utf8(scope.to_vec()).ok()?,
        })
    }
}

/// SHA-256 of a bearer token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What introspection says about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    /// Whether it may be used now.
    pub active: bool,
    /// Grant id (empty for unknown tokens).
    pub grant_id: String,
    /// Scope (empty for unknown tokens).
    pub scope: String,
    /// Expiry (epoch for unknown tokens).
    pub expires_at: Timestamp,
}

/// The fields of a stored [`Grant`] the token index reads.
#[derive(Deserialize)]
struct IndexedGrant<'a> {
    #[serde(borrow)]
    scope: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    bearer_sha256: Option<std::borrow::Cow<'a, str>>,
    state: GrantState,
}

#[derive(Clone, Debug)]
struct Entry {
    grant_id: String,
    scope: String,
    expires_at: Timestamp,
}

/// Token hash → grant, for introspection.
#[derive(Debug, Default)]
pub struct TokenIndex {
    entries: RwLock<HashMap<[u8; 32], Entry>>,
}

impl TokenIndex {
    /// Loads the token of every grant still active at `now` from the expiry queue (which holds
    /// exactly the active grants, each entry with its token hash and scope): grants already
    /// expired are left out — introspection answers inactive for them either way, and they are
    /// about to be revoked. Entries written before the queue held them read the grant.
    pub fn load(store: &dyn Store, now: Timestamp) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            keyspace: Keyspace::GrantExpiry.name(),
            detail,
        };
        let mut entries = HashMap::new();
        // The first key of a grant still active at `now` (active means `now < expires_at`).
        let mut from = expiry_key(now.plus(std::time::Duration::from_millis(1)), "");
        loop {
            let page = store.scan_from(Keyspace::GrantExpiry, &from, 1024)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (key, value) in &page {
                let (expires_at, id) = parse_expiry_key(key)
                    .ok_or_else(|| corrupt(format!("expiry key {}", hex::encode(key))))?;
                let entry = match ExpiryEntry::decode(value) {
                    Some(entry) => entry,
                    None => match entry_from_grant(store, &id)? {
                        Some(entry) => entry,
                        None => continue,
                    },
                };
                let ExpiryEntry {
                    token: Some(hash),
                    scope,
                } = entry
                else {
                    continue;
                };
                entries.insert(
                    hash,
                    Entry {
                        grant_id: id,
                        scope,
                        expires_at,
                    },
                );
            }
            from = next;
        }
        Ok(Self {
            entries: RwLock::new(entries),
        })
    }

    /// Adds a grant's token (after the mint committed).
    pub fn insert(&self, grant: &Grant) {
        let Some(hash) = grant.bearer_sha256.as_deref().and_then(decode_hash) else {
            return;
        };
        if grant.state != GrantState::Active {
            return;
        }
        let entry = Entry {
            grant_id: grant.id.clone(),
            scope: grant.scope.clone(),
            expires_at: grant.expires_at,
        };
        if let Ok(mut map) = self.entries.write() {
            map.insert(hash, entry);
        }
    }

    /// Drops a grant's token (after a revocation committed).
    pub fn remove(&self, bearer_sha256: &str) {
        if let (Some(hash), Ok(mut map)) = (decode_hash(bearer_sha256), self.entries.write()) {
            map.remove(&hash);
        }
    }

    /// Answers for `token` at `now`.
    pub fn introspect(&self, token: &str, now: Timestamp) -> Introspection {
        let hash = token_hash(token);
        let found = self
            .entries
            .read()
            .ok()
            .and_then(|map| map.get(&hash).cloned());
        match found {
            Some(e) => Introspection {
                active: now < e.expires_at,
                grant_id: e.grant_id,
                scope: e.scope,
                expires_at: e.expires_at,
            },
            None => Introspection {
                active: false,
                grant_id: String::new(),
                scope: String::new(),
                expires_at: Timestamp::from_unix_millis(0),
            },
        }
    }

    /// Tokens indexed.
    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The expiry entry of an active grant, read from the grant itself (for entries written
/// before they held it). `None` if the grant is gone or no longer active.
fn entry_from_grant(store: &dyn Store, id: &str) -> Result<Option<ExpiryEntry>, StoreError> {
    let Some(raw) = store.get(Keyspace::Grants, id.as_bytes())? else {
        return Ok(None);
    };
    // Only the fields the index needs: the certificate, requester and revocation are skipped.
    let grant: IndexedGrant<'_> =
        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
            keyspace: Keyspace::Grants.name(),
            detail: e.to_string(),
        })?;
    if grant.state != GrantState::Active {
        return Ok(None);
    }
    Ok(Some(ExpiryEntry {
        token: grant.bearer_sha256.as_deref().and_then(decode_hash),
        scope: grant.scope.into_owned(),
    }))
}

fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_ms: i64) -> (Grant, String) {
        let token = "lkbg_test-token".to_owned();
        (
            Grant {
                id: "g1".into(),
                request_id: "r1".into(),
                scope: "db-root".into(),
                requester: Requester::Workload {
                    name: "vault-db".into(),
                },
                issued_at: Timestamp::from_unix_millis(0),
                expires_at: Timestamp::from_unix_millis(expires_ms),
                bearer_sha256: Some(hex::encode(token_hash(&token))),
                ssh: None,
                state: GrantState::Active,
                revocation: None,
                sealed_bearer: None,
            },
            token,
        )
    }

    #[test]
    fn a_token_is_inactive_at_the_instant_it_expires() {
        let index = TokenIndex::default();
        let (g, token) = grant(1000);
        index.insert(&g);
        let before = index.introspect(&token, Timestamp::from_unix_millis(999));
        assert!(before.active);
        assert_eq!(before.scope, "db-root");
        assert!(
            !index
                .introspect(&token, Timestamp::from_unix_millis(1000))
                .active
        );
    }

    #[test]
    fn an_expiry_entry_reads_back_what_was_written_and_nothing_else() {
        let (g, _) = grant(1000);
        let entry = ExpiryEntry::of(&g);
        assert_eq!(ExpiryEntry::decode(&entry.encode()), Some(entry.clone()));
        let no_token = ExpiryEntry {
            token: None,
            scope: "ssh-only".into(),
        };
        assert_eq!(ExpiryEntry::decode(&no_token.encode()), Some(no_token));
        // Older (empty), unknown formats, bad flags, short hashes, non-UTF-8 scopes: read the
        // grant instead.
        let mut short = entry.encode();
        short.truncate(20);
        for bad in [
            Vec::new(),
            vec![9, 0],
            vec![1, 7],
            short,
            vec![1, 0, 0xff, 0xfe],
        ] {
            assert_eq!(ExpiryEntry::decode(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_token_index_loads_active_grants_from_queue_entries_old_and_new() {
        use crate::store::{SledStore, Store as _, Txn};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::create(&dir.path().join("store")).unwrap();
        let mut txn = Txn::new();
        let mut tokens = Vec::new();
        // g-new: current entry; g-old: empty entry (read from the grant); g-gone: empty entry
        // of a grant no longer active; g-past: expired at `now`.
        for (id, expires_ms, state, entry_written) in [
            ("g-new", 5000, GrantState::Active, true),
            ("g-old", 5000, GrantState::Active, false),
            ("g-gone", 5000, GrantState::Revoking, false),
            ("g-past", 1000, GrantState::Active, true),
        ] {
            let token = format!("lkbg_{id}");
            let g = Grant {
                id: id.into(),
                scope: format!("scope-of-{id}"),
                bearer_sha256: Some(hex::encode(token_hash(&token))),
                state,
                ..grant(expires_ms).0
            };
            let value = if entry_written {
                ExpiryEntry::of(&g).encode()
            } else {
                Vec::new()
            };
            txn.put(id.as_bytes(), &g).unwrap().put_raw(
                Keyspace::GrantExpiry,
                expiry_key(g.expires_at, id),
                value,
            );
            tokens.push(token);
        }
        store.commit(&txn).unwrap();
        let now = Timestamp::from_unix_millis(1000);
        let index = TokenIndex::load(&store, now).unwrap();
        assert_eq!(index.len(), 2);
        let answers: Vec<(bool, String, String)> = tokens
            .iter()
            .map(|t| {
                let a = index.introspect(t, now);
                (a.active, a.grant_id, a.scope)
            })
            .collect();
        assert_eq!(
            answers,
            vec![
                (true, "g-new".into(), "scope-of-g-new".into()),
                (true, "g-old".into(), "scope-of-g-old".into()),
                (false, String::new(), String::new()),
                (false, String::new(), String::new()),
            ]
        );
    }

    #[test]
    fn unknown_and_removed_tokens_are_inactive() {
        let index = TokenIndex::default();
        let (g, token) = grant(1000);
        assert!(
            !index
                .introspect(&token, Timestamp::from_unix_millis(0))
                .active
        );
        index.insert(&g);
        index.remove(g.bearer_sha256.as_deref().unwrap());
        assert!(
            !index
                .introspect(&token, Timestamp::from_unix_millis(0))
                .active
        );
        assert!(index.is_empty());
    }
}
