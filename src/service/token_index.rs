//! The in-memory introspection index: bearer-token hash → grant, rebuilt from the store at
//! start and kept current by minting and revocation.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;

use crate::base::clock::Timestamp;
use crate::domain::grant::*;
use crate::store::{Keyspace, Store, StoreError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::Requester;

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
