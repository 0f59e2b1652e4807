//! The trust store behind a trait: typed keyspaces, atomic multi-key transactions with
//! compare-and-set preconditions, and an ordered scan. sled is the embedded default
//! ([`SledStore`]); etcd ([`EtcdStore`]) keeps one trust store for several bastions;
//! everything above this module is backend-blind.
//!
//! The transaction model is etcd's: a list of comparisons that must all hold, then a list of
//! writes applied all-or-nothing. A successful [`Store::commit`] is durable when it returns.

#[cfg(test)]
pub(crate) mod conformance;
mod etcd_store;
mod memory;
mod records;
mod sled_store;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use etcd_store::{ETCD_CALL_TIMEOUT, EtcdConfig, EtcdStore, EtcdTls};
pub use memory::MemoryStore;
pub use sled_store::SledStore;

use crate::base::constants::STORE_SCHEMA_VERSION;
use crate::base::error::{Coded, ErrorKind};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A transaction precondition did not hold: someone else changed the data first.
    /// Re-read and retry, or report the conflict to the caller.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The backend failed (I/O, corruption, lock held by another process). Nothing was written;
    /// the daemon should stop serving state changes and an operator should look at the disk.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored value could not be decoded as the type its keyspace holds: the store is damaged
    /// or was written by an incompatible build. Do not guess; stop and investigate.
    #[error("corrupt record in keyspace {keyspace}: {detail}")]
    Corrupt {
        /// Keyspace of the record.
        keyspace: &'static str,
        /// What failed to decode.
        detail: String,
    },
    /// No trust store exists at this path. Run `latchkeyd init` first.
    #[error("no trust store at {0}; create one with `latchkeyd init --data-dir DIR`")]
    NotInitialised(String),
    /// The store was written by a newer latchkeyd. Upgrade latchkeyd; never downgrade a store.
    #[error(
        "trust store schema version {found} is newer than this latchkeyd supports ({supported}); upgrade latchkeyd to a release that supports schema {found}"
    )]
    SchemaTooNew {
        /// Version on disk.
        found: u32,
        /// Highest version this build supports.
        supported: u32,
    },
}

/// The named, independent key spaces of the trust store. Each holds one record type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Keyspace {
    /// Store metadata: schema version, genesis state, trust-store policy.
    Meta,
    /// Workloads by name.
    Workloads,
    /// Workload name by pinned SPKI SHA-256 (hex): the TLS identity index.
    WorkloadPins,
    /// Audit records by sequence number (u64 big-endian).
    Audit,
    /// Sequence numbers of checkpoint records (index into `Audit`).
    AuditCheckpoints,
    /// Operators by name.
    Operators,
    /// Authenticators by credential id (base64url).
    Authenticators,
    /// Index of [`Keyspace::Authenticators`] by owner: `OPERATOR/CREDENTIAL_ID` → empty
    /// (schema 2 on).
    OperatorKeys,
    /// Pending challenges (enrollment and assertion ceremonies) by id.
    Ceremonies,
    /// Scopes by name.
    Scopes,
    /// Break-glass requests by id.
    Requests,
    /// Proposed trust-store changes by id.
    Changes,
    /// Issued grants by id.
    Grants,
    /// Grant id by SHA-256 of its bearer token (hex): no token is ever stored.
    GrantTokens,
    /// Grant id by SSH certificate serial (u64 big-endian): serials are unique.
    GrantSerials,
    /// Active grants by expiry then id (see `grant::expiry_key`): the expiry queue.
    GrantExpiry,
    /// Grants whose revocation is not complete, by id: the sinks' work queue.
    RevocationsPending,
    /// Serials of revoked certificates not yet expired (u64 BE → valid-before, i64 BE ms):
    /// what the KRL lists.
    KrlSerials,
    /// Drill results: `scope/NAME` → the scope's drill history, `request/ID` → scope name
    /// (each request is recorded as a drill at most once).
    Drills,
}

impl Keyspace {
    /// Every keyspace, in a fixed order.
    pub const ALL: &'static [Keyspace] = &[
        Keyspace::Meta,
        Keyspace::Workloads,
        Keyspace::WorkloadPins,
        Keyspace::Audit,
        Keyspace::AuditCheckpoints,
        Keyspace::Operators,
        Keyspace::Authenticators,
        Keyspace::OperatorKeys,
        Keyspace::Ceremonies,
        Keyspace::Scopes,
        Keyspace::Requests,
        Keyspace::Changes,
        Keyspace::Grants,
        Keyspace::GrantTokens,
        Keyspace::GrantSerials,
        Keyspace::GrantExpiry,
        Keyspace::RevocationsPending,
        Keyspace::KrlSerials,
        Keyspace::Drills,
    ];

    /// Stable on-disk name.
    pub const fn name(self) -> &'static str {
        match self {
            Keyspace::Meta => "meta",
            Keyspace::Workloads => "workloads",
            Keyspace::WorkloadPins => "workload_pins",
            Keyspace::Audit => "audit",
            Keyspace::AuditCheckpoints => "audit_checkpoints",
            Keyspace::Operators => "operators",
            Keyspace::Authenticators => "authenticators",
            Keyspace::OperatorKeys => "operator_keys",
            Keyspace::Ceremonies => "ceremonies",
            Keyspace::Scopes => "scopes",
            Keyspace::Requests => "requests",
            Keyspace::Changes => "changes",
            Keyspace::Grants => "grants",
            Keyspace::GrantTokens => "grant_tokens",
            Keyspace::GrantSerials => "grant_serials",
            Keyspace::GrantExpiry => "grant_expiry",
            Keyspace::RevocationsPending => "revocations_pending",
            Keyspace::KrlSerials => "krl_serials",
            Keyspace::Drills => "drills",
        }
    }
}

/// A value type stored in one keyspace, encoded as JSON.
pub trait Record: Serialize + DeserializeOwned {
    /// The keyspace records of this type live in.
    const KEYSPACE: Keyspace;
}

/// A precondition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key must not exist.
    Absent(Keyspace, Vec<u8>),
    /// The key must exist with exactly this value.
    Equals(Keyspace, Vec<u8>, Vec<u8>),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Set the key to the value.
    Put(Keyspace, Vec<u8>, Vec<u8>),
    /// Remove the key (no error if absent).
    Delete(Keyspace, Vec<u8>),
}

/// An atomic unit of change: all comparisons hold and all writes apply, or nothing happens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    compares: Vec<Compare>,
    writes: Vec<Write>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to be absent from `ks`.
    pub fn require_absent(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>) -> &mut Self {
        self.compares.push(Compare::Absent(ks, key.into()));
        self
    }

    /// Requires `key` in `ks` to hold exactly `value`.
    pub fn require_equals(
        &mut self,
        ks: Keyspace,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.compares
            .push(Compare::Equals(ks, key.into(), value.into()));
        self
    }

    /// Sets `key` in `ks` to raw bytes.
    pub fn put_raw(
        &mut self,
        ks: Keyspace,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.writes.push(Write::Put(ks, key.into(), value.into()));
        self
    }

    /// Sets `key` to the encoded record, in the record type's keyspace.
    pub fn put<R: Record>(
        &mut self,
        key: impl Into<Vec<u8>>,
        record: &R,
    ) -> Result<&mut Self, StoreError> {
        let value = encode(record)?;
        Ok(self.put_raw(R::KEYSPACE, key, value))
    }

    /// Removes `key` from `ks`.
    pub fn delete(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>) -> &mut Self {
        self.writes.push(Write::Delete(ks, key.into()));
        self
    }

    /// The preconditions.
    pub fn compares(&self) -> &[Compare] {
        &self.compares
    }

    /// The writes.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Every keyspace this transaction reads or writes, sorted and unique.
    pub fn keyspaces(&self) -> Vec<Keyspace> {
        let mut all: Vec<Keyspace> = self
            .compares
            .iter()
            .map(|c| match c {
                Compare::Absent(ks, _) | Compare::Equals(ks, _, _) => *ks,
            })
            .chain(self.writes.iter().map(|w| match w {
                Write::Put(ks, _, _) | Write::Delete(ks, _) => *ks,
            }))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The trust store's storage backend.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one key.
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries of `ks` with keys `>= start`, in key order.
    fn scan_from(&self, ks: Keyspace, start: &[u8], limit: usize)
    -> Result<Vec<Entry>, StoreError>;

    /// The entry with the greatest key in `ks`, if any.
    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError>;

    /// How many keys `ks` holds (values are not read).
    fn count(&self, ks: Keyspace) -> Result<u64, StoreError>;

    /// How many keys of `ks` sort before `end` (values are not read).
    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError>;

    /// Applies the transaction atomically and durably, or returns [`StoreError::Conflict`] and
    /// writes nothing.
    fn commit(&self, txn: &Txn) -> Result<(), StoreError>;

    /// Applies the transaction atomically (visible to readers at once) but durably only after
    /// the next [`Store::flush`]; a crash before it loses this and every later transaction,
    /// never an earlier one. Returns [`StoreError::Conflict`] and writes nothing on a failed
    /// precondition. Group commit builds on it: many applies, one flush.
    fn apply(&self, txn: &Txn) -> Result<(), StoreError>;

    /// Forces everything written so far to stable storage.
    fn flush(&self) -> Result<(), StoreError>;

    /// Every entry of every keyspace as of one moment. The default reads keyspace by keyspace
    /// (consistent while nothing else writes, as with a backend only this process opens); a
    /// shared backend reads all at one revision.
    fn snapshot(&self) -> Result<Vec<(Keyspace, Vec<Entry>)>, StoreError> {
        Keyspace::ALL
            .iter()
            .map(|ks| Ok((*ks, self.scan_from(*ks, b"", usize::MAX)?)))
            .collect()
    }
}

/// Encodes a record as its stored bytes.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        keyspace: R::KEYSPACE.name(),
        detail: format!("encode: {e}"),
    })
}

/// Decodes stored bytes as a record.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        keyspace: R::KEYSPACE.name(),
        detail: e.to_string(),
    })
}

/// Reads and decodes one record.
pub fn read<R: Record>(store: &dyn Store, key: &[u8]) -> Result<Option<R>, StoreError> {
    store
        .get(R::KEYSPACE, key)?
        .map(|bytes| decode(&bytes))
        .transpose()
}

/// Every entry of `ks` whose key starts with `prefix`, in key order (read a page at a time,
/// stopping at the first key past the prefix).
pub fn scan_prefix(
    store: &dyn Store,
    ks: Keyspace,
    prefix: &[u8],
) -> Result<Vec<Entry>, StoreError> {
    // Small first: a prefix usually holds a few keys (an operator's), and a page reads that
    // many entries past them.
    let mut size = 4;
    let mut found = Vec::new();
    let mut start = prefix.to_vec();
    loop {
        let page = store.scan_from(ks, &start, size)?;
        let full = page.len() == size;
        size = (size * 2).min(256);
        for (key, value) in page {
            if !key.starts_with(prefix) {
                return Ok(found);
            }
            found.push((key, value));
        }
        match found.last() {
            // Resume just past the last key: the smallest key greater than it.
            Some((last, _)) if full => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(found),
        }
    }
}

/// Key of the schema version in [`Keyspace::Meta`] (big-endian u32).
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// Records copied per transaction by [`copy_all`].
const COPY_BATCH: usize = 128;

/// Copies every record of `from` into `to`, which must be empty, in transactions of
/// 128 (each key required absent), then checks both hold as many records in every
/// keyspace. Returns how many were copied. Pending challenges are copied too (harmless).
pub fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<u64, StoreError> {
    for ks in Keyspace::ALL {
        if to.count(*ks)? != 0 {
            return Err(StoreError::Conflict(format!(
                "the target store is not empty (keyspace {} has records): copy only into an empty store",
                ks.name()
            )));
        }
    }
    // The schema version goes last: a copy cut short is never taken for a store.
    let mut copied = 0u64;
    let mut schema = None;
    for ks in Keyspace::ALL {
        let mut start = Vec::new();
        loop {
            let page = from.scan_from(*ks, &start, COPY_BATCH)?;
            let mut txn = Txn::new();
            for (key, value) in &page {
                if *ks == Keyspace::Meta && key.as_slice() == SCHEMA_VERSION_KEY {
                    schema = Some(value.clone());
                    continue;
                }
                txn.require_absent(*ks, key.clone())
                    .put_raw(*ks, key.clone(), value.clone());
                copied += 1;
            }
            if !txn.writes().is_empty() {
                to.commit(&txn)?;
            }
            match page.last() {
                Some((last, _)) if page.len() == COPY_BATCH => {
                    start = last.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
    }
    if let Some(version) = schema {
        let mut txn = Txn::new();
        txn.require_absent(Keyspace::Meta, SCHEMA_VERSION_KEY)
            .put_raw(Keyspace::Meta, SCHEMA_VERSION_KEY, version);
        to.commit(&txn)?;
        copied += 1;
    }
    for ks in Keyspace::ALL {
        let (had, has) = (from.count(*ks)?, to.count(*ks)?);
        if had != has {
            return Err(StoreError::Backend(format!(
                "keyspace {}: {had} records in the source, {has} in the copy (was the source in use?)",
                ks.name()
            )));
        }
    }
    to.flush()?;
    Ok(copied)
}

/// Reads the schema version, refusing stores this build cannot serve.
pub fn check_schema(store: &dyn Store, location: &Path) -> Result<u32, StoreError> {
    let Some(raw) = store.get(Keyspace::Meta, SCHEMA_VERSION_KEY)? else {
        return Err(StoreError::NotInitialised(location.display().to_string()));
    };
    let bytes: [u8; 4] = raw.as_slice().try_into().map_err(|_| StoreError::Corrupt {
        keyspace: Keyspace::Meta.name(),
        detail: format!("schema_version has {} bytes, expected 4", raw.len()),
    })?;
    let found = u32::from_be_bytes(bytes);
    if found > STORE_SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: STORE_SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Encodes a schema version as stored.
pub fn schema_version_bytes(version: u32) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}

impl Coded for StoreError {
    fn code(&self) -> &'static str {
        use StoreError as E;
        match self {
            E::Conflict(_) => "store.conflict",
            E::Backend(_) => "store.backend",
            E::Corrupt { .. } => "store.corrupt",
            E::NotInitialised(_) => "store.not_initialised",
            E::SchemaTooNew { .. } => "store.schema_too_new",
        }
    }

    fn kind(&self) -> ErrorKind {
        use StoreError as E;
        match self {
            E::Conflict(_) => ErrorKind::Conflict,
            E::Backend(_) => ErrorKind::Unavailable,
            E::Corrupt { .. } | E::NotInitialised(_) | E::SchemaTooNew { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_temp() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::create(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn writes_of_one_transaction_land_together_across_keyspaces() {
        let (_dir, store) = open_temp();
        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Workloads, "a", "1")
            .put_raw(Keyspace::WorkloadPins, "p", "a");
        store.commit(&txn).unwrap();
        assert_eq!(
            store.get(Keyspace::Workloads, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            store.get(Keyspace::WorkloadPins, b"p").unwrap(),
            Some(b"a".to_vec())
        );
    }

    #[test]
    fn failed_precondition_writes_nothing() {
        let (_dir, store) = open_temp();
        let mut first = Txn::new();
        first.put_raw(Keyspace::WorkloadPins, "p", "a");
        store.commit(&first).unwrap();

        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Workloads, "b", "2")
            .require_absent(Keyspace::WorkloadPins, "p")
            .put_raw(Keyspace::WorkloadPins, "p", "b");
        let err = store.commit(&txn).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(store.get(Keyspace::Workloads, b"b").unwrap(), None);
        assert_eq!(
            store.get(Keyspace::WorkloadPins, b"p").unwrap(),
            Some(b"a".to_vec())
        );
    }

    #[test]
    fn compare_and_set_succeeds_only_on_the_expected_value() {
        let (_dir, store) = open_temp();
        let mut init = Txn::new();
        init.put_raw(Keyspace::Meta, "head", "1");
        store.commit(&init).unwrap();

        let mut stale = Txn::new();
        stale
            .require_equals(Keyspace::Meta, "head", "0")
            .put_raw(Keyspace::Meta, "head", "9");
        assert!(matches!(store.commit(&stale), Err(StoreError::Conflict(_))));

        let mut fresh = Txn::new();
        fresh
            .require_equals(Keyspace::Meta, "head", "1")
            .put_raw(Keyspace::Meta, "head", "2");
        store.commit(&fresh).unwrap();
        assert_eq!(
            store.get(Keyspace::Meta, b"head").unwrap(),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn scan_returns_keys_in_order_from_the_start_key() {
        let (_dir, store) = open_temp();
        let mut txn = Txn::new();
        for k in ["c", "a", "d", "b"] {
            txn.put_raw(Keyspace::Workloads, k, k);
        }
        store.commit(&txn).unwrap();
        let keys: Vec<Vec<u8>> = store
            .scan_from(Keyspace::Workloads, b"b", 2)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(
            store.last(Keyspace::Workloads).unwrap().unwrap().0,
            b"d".to_vec()
        );
    }

    #[test]
    fn a_prefix_scan_returns_exactly_the_keys_under_the_prefix_across_pages() {
        let (_dir, store) = open_temp();
        let mut txn = Txn::new();
        // Neighbours on both sides, one that only shares a shorter prefix, and more keys under
        // the prefix than one page holds.
        for k in ["alic/x", "alice", "alice0/x", "alicf/x", "b"] {
            txn.put_raw(Keyspace::OperatorKeys, k, "");
        }
        let under: Vec<String> = (0..150).map(|i| format!("alice/{i:03}")).collect();
        for k in &under {
            txn.put_raw(Keyspace::OperatorKeys, k.as_str(), k.as_str());
        }
        store.commit(&txn).unwrap();
        let found = scan_prefix(&store, Keyspace::OperatorKeys, b"alice/").unwrap();
        let keys: Vec<String> = found
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(keys, under);
        assert!(found.iter().all(|(k, v)| k == v), "values travel with keys");
        assert!(
            scan_prefix(&store, Keyspace::OperatorKeys, b"carol/")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn keys_below_a_bound_are_counted() {
        let (_dir, store) = open_temp();
        let mut txn = Txn::new();
        // Keys that are prefixes of others sort before them.
        for i in 0..9000u32 {
            txn.put_raw(Keyspace::GrantExpiry, i.to_be_bytes(), "");
            if i % 1000 == 0 {
                txn.put_raw(Keyspace::GrantExpiry, &i.to_be_bytes()[..3], "");
            }
        }
        store.commit(&txn).unwrap();
        for (end, expected) in [
            (Vec::new(), 0),
            (0u32.to_be_bytes().to_vec(), 1),
            (5000u32.to_be_bytes().to_vec(), 5000 + 5 + 1),
            (vec![0xff; 5], 9000 + 9),
        ] {
            let counted = store.count_below(Keyspace::GrantExpiry, &end).unwrap();
            assert_eq!(counted, expected, "below {end:?}");
        }
    }

    #[test]
    fn schema_newer_than_this_build_is_refused() {
        let (dir, store) = open_temp();
        let mut txn = Txn::new();
        txn.put_raw(
            Keyspace::Meta,
            SCHEMA_VERSION_KEY,
            schema_version_bytes(STORE_SCHEMA_VERSION + 1),
        );
        store.commit(&txn).unwrap();
        let err = check_schema(&store, dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn store_without_schema_is_reported_as_not_initialised() {
        let (dir, store) = open_temp();
        let err = check_schema(&store, dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NotInitialised(_)), "{err}");
    }
}
