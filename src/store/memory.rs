//! The in-memory backend: for domain tests and as the reference the conformance suite checks
//! every backend against. Nothing survives a drop.
//!
//! One ordered map per keyspace, all behind one lock: reads share it, a transaction holds it
//! alone while it checks its preconditions and applies its writes, so readers see all of a
//! transaction or none of it. [`Store::flush`] has nothing to write out.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Compare, Entry, Keyspace, Store, StoreError, Txn, Write};

/// The entries of one keyspace, in key (byte) order.
type Space = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every keyspace that holds at least one key (a missing one reads as empty).
type Spaces = BTreeMap<Keyspace, Space>;

/// Trust store in memory: one ordered map per keyspace behind one lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Shared by reads, held alone while a transaction checks and applies. Poisoned by a panic
    /// that held it: as [`super::SledStore`] does, the store then refuses every later call.
    spaces: RwLock<Spaces>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn shared(&self) -> Result<RwLockReadGuard<'_, Spaces>, StoreError> {
        self.spaces.read().map_err(|_| poisoned())
    }

    fn alone(&self) -> Result<RwLockWriteGuard<'_, Spaces>, StoreError> {
        self.spaces.write().map_err(|_| poisoned())
    }
}

/// What every call returns once a panic interrupted a holder of the lock: the maps may hold
/// part of a transaction, and nothing in memory can complete it.
fn poisoned() -> StoreError {
    StoreError::Backend(
        "in-memory store: a panic interrupted a store operation; refusing further use".to_owned(),
    )
}

/// How many entries, as the trait counts them.
fn counted(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Checks every precondition against the store as it is before any write of the transaction.
fn check_preconditions(spaces: &Spaces, txn: &Txn) -> Result<(), StoreError> {
    for compare in txn.compares() {
        match compare {
            Compare::Absent(ks, key) => {
                let found = spaces
                    .get(ks)
                    .is_some_and(|space| space.contains_key(key.as_slice()));
                if found {
                    return Err(StoreError::Conflict(format!(
                        "{}/{} already exists",
                        ks.name(),
                        String::from_utf8_lossy(key)
                    )));
                }
            }
            Compare::Equals(ks, key, expected) => {
                let current = spaces.get(ks).and_then(|space| space.get(key.as_slice()));
                if current != Some(expected) {
                    return Err(StoreError::Conflict(format!(
                        "{}/{} changed concurrently",
                        ks.name(),
                        String::from_utf8_lossy(key)
                    )));
                }
            }
        }
    }
    Ok(())
}

impl Store for MemoryStore {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let spaces = self.shared()?;
        Ok(spaces.get(&ks).and_then(|space| space.get(key)).cloned())
    }

    /// One hold of the lock for the whole scan: unlike sled's paged scan, it is a snapshot.
    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let spaces = self.shared()?;
        let Some(space) = spaces.get(&ks) else {
            return Ok(Vec::new());
        };
        Ok(space
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
        let spaces = self.shared()?;
        Ok(spaces
            .get(&ks)
            .and_then(|space| space.last_key_value())
            .map(|(key, value)| (key.clone(), value.clone())))
    }

    fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
        let spaces = self.shared()?;
        Ok(counted(spaces.get(&ks).map_or(0, |space| space.len())))
    }

    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
        let spaces = self.shared()?;
        let below = spaces.get(&ks).map_or(0, |space| {
            space
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(end)))
                .count()
        });
        Ok(counted(below))
    }

    /// The same as [`Store::apply`]: there is no disk to make it durable on.
    fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
        self.apply(txn)?;
        self.flush()
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        if txn.writes().is_empty() && txn.compares().is_empty() {
            return Ok(());
        }
        let mut spaces = self.alone()?;
        check_preconditions(&spaces, txn)?;
        // Nothing below can fail: once the preconditions hold, every write lands.
        for write in txn.writes() {
            match write {
                Write::Put(ks, key, value) => {
                    spaces
                        .entry(*ks)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                Write::Delete(ks, key) => {
                    if let Some(space) = spaces.get_mut(ks) {
                        space.remove(key.as_slice());
                    }
                }
            }
        }
        Ok(())
    }

    /// Nothing to write out; fails only once the store refuses every call (see
    /// [`MemoryStore`]).
    fn flush(&self) -> Result<(), StoreError> {
        if self.spaces.is_poisoned() {
            return Err(poisoned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        super::super::conformance::run_all(MemoryStore::new);
    }

    #[test]
    fn a_panic_holding_the_lock_makes_every_later_call_fail() {
        let store = Arc::new(MemoryStore::new());
        let mut first = Txn::new();
        first.put_raw(Keyspace::Workloads, "a", "1");
        store.commit(&first).unwrap();
        // A panic while the transaction lock is held, as one inside `apply` would be.
        let panicking = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _alone = panicking.spaces.write().unwrap();
            panic!("injected panic mid-transaction");
        })
        .join();
        assert!(joined.is_err());

        let mut second = Txn::new();
        second.put_raw(Keyspace::Workloads, "b", "2");
        assert!(matches!(store.commit(&second), Err(StoreError::Backend(_))));
        assert!(matches!(store.apply(&second), Err(StoreError::Backend(_))));
        assert!(matches!(
            store.get(Keyspace::Workloads, b"a"),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store.scan_from(Keyspace::Workloads, b"", 10),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store.last(Keyspace::Workloads),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store.count(Keyspace::Workloads),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store.count_below(Keyspace::Workloads, b"z"),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(store.flush(), Err(StoreError::Backend(_))));
    }
}
