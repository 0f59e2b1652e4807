//! The embedded default backend: one sled database, one tree per keyspace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Compare, Entry, Keyspace, Store, StoreError, Txn, Write};
use crate::fsperm;

/// Trust store on sled.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    trees: HashMap<Keyspace, sled::Tree>,
}

impl SledStore {
    /// Creates a new store directory at `path` (mode 0700). Refuses if anything is there.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError::Backend(format!(
                "{} already exists; refusing to overwrite an existing store",
                path.display()
            )));
        }
        fsperm::create_private_dir(path).map_err(|e| StoreError::Backend(e.to_string()))?;
        let store = Self::open_sled(path)?;
        store.flush()?;
        fsperm::restrict_tree(path).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(store)
    }

    /// Opens an existing store. Refuses a missing store (sled would silently create one) and a
    /// store directory or file that other users can read.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.is_dir() {
            return Err(StoreError::NotInitialised(path.display().to_string()));
        }
        fsperm::check_private_tree(path).map_err(|e| StoreError::Backend(e.to_string()))?;
        Self::open_sled(path)
    }

    fn open_sled(path: &Path) -> Result<Self, StoreError> {
        // sled creates snapshot and blob files as it runs, with the process umask: make them
        // private from the start so a later permission check does not find a loose file.
        fsperm::restrict_umask();
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(crate::constants::STORE_CACHE_BYTES)
            .open()
            .map_err(|e| backend(path, e))?;
        let mut trees = HashMap::new();
        for ks in Keyspace::ALL {
            let tree = db.open_tree(ks.name()).map_err(|e| backend(path, e))?;
            trees.insert(*ks, tree);
        }
        Ok(Self {
            path: path.to_path_buf(),
            db,
            trees,
        })
    }

    fn tree(&self, ks: Keyspace) -> Result<&sled::Tree, StoreError> {
        self.trees
            .get(&ks)
            .ok_or_else(|| StoreError::Backend(format!("keyspace {} is not open", ks.name())))
    }
}

fn backend(path: &Path, e: sled::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

impl Store for SledStore {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(ks)?
            .get(key)
            .map_err(|e| backend(&self.path, e))?
            .map(|v| v.to_vec()))
    }

    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.tree(ks)?
            .range(start..)
            .take(limit)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| backend(&self.path, e))
            })
            .collect()
    }

    fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.tree(ks)?.iter().keys() {
            item.map_err(|e| backend(&self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.tree(ks)?.range(..end).keys() {
            item.map_err(|e| backend(&self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .tree(ks)?
            .last()
            .map_err(|e| backend(&self.path, e))?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
        self.apply(txn)?;
        self.flush()
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        let keyspaces = txn.keyspaces();
        if keyspaces.is_empty() {
            return Ok(());
        }
        let trees: Vec<&sled::Tree> = keyspaces
            .iter()
            .map(|ks| self.tree(*ks))
            .collect::<Result<_, _>>()?;
        let index = |ks: &Keyspace| keyspaces.binary_search(ks).unwrap_or(0);

        let result = trees.as_slice().transaction(|views| {
            for compare in txn.compares() {
                match compare {
                    Compare::Absent(ks, key) => {
                        if views[index(ks)].get(key)?.is_some() {
                            return Err(ConflictableTransactionError::Abort(format!(
                                "{}/{} already exists",
                                ks.name(),
                                String::from_utf8_lossy(key)
                            )));
                        }
                    }
                    Compare::Equals(ks, key, expected) => {
                        let current = views[index(ks)].get(key)?;
                        if current.as_deref() != Some(expected.as_slice()) {
                            return Err(ConflictableTransactionError::Abort(format!(
                                "{}/{} changed concurrently",
                                ks.name(),
                                String::from_utf8_lossy(key)
                            )));
                        }
                    }
                }
            }
            for write in txn.writes() {
                match write {
                    Write::Put(ks, key, value) => {
                        views[index(ks)].insert(key.as_slice(), value.as_slice())?;
                    }
                    Write::Delete(ks, key) => {
                        views[index(ks)].remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(why)) => Err(StoreError::Conflict(why)),
            Err(TransactionError::Storage(e)) => Err(backend(&self.path, e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| backend(&self.path, e))
    }
}
