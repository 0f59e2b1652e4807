//! The embedded default backend: one sled database, one tree per keyspace.
//!
//! Transactions do not use sled's own (`Transactional`, `apply_batch`): in sled 0.34 each of
//! those writes the log to disk twice, synchronously, while holding a process-wide lock that
//! every later sled read then has to take as well, so one slow disk write stalls every reader.
//! Instead:
//! - **Atomic to readers:** a transaction checks its preconditions and applies its writes
//!   holding [`SledStore`]'s own lock alone; point reads and scans (a page at a time) share
//!   it. The writes are single-key sled inserts that only touch memory; [`Store::flush`]
//!   writes them out.
//! - **Atomic across a crash:** before its first write a transaction records all its writes
//!   under one key of an internal `journal` tree, and removes that record after its last.
//!   sled recovers a contiguous prefix of its log, so after a crash either the journal record
//!   is gone (the transaction landed whole, or not at all) or it is there and the writes after
//!   it may be cut short; [`SledStore::open`] then applies the recorded writes again (each is
//!   a plain set or remove, so repeating one is harmless) before anything reads the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use super::{Compare, Entry, Keyspace, Store, StoreError, Txn, Write};
use crate::base::fsperm;

/// Name of the internal tree holding the transaction in flight.
const JOURNAL_TREE: &str = "journal";
/// The journal's one key.
const JOURNAL_KEY: &[u8] = b"in_flight";
/// Entries a scan reads per hold of the store's lock.
const SCAN_PAGE: usize = 512;
/// Journal entry tags.
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Trust store on sled.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    trees: HashMap<Keyspace, sled::Tree>,
    journal: sled::Tree,
    /// Shared by reads, held alone while a transaction checks and applies: a reader sees all of
    /// a transaction or none of it, and transactions apply one at a time.
    visibility: RwLock<()>,
    /// Set when a transaction failed half-way through its writes: memory may then hold part
    /// of it, so every later call is refused until a restart replays the journal.
    broken: AtomicBool,
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
        remove_unfinished_snapshots(path)?;
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(crate::base::constants::STORE_CACHE_BYTES)
            .open()
            .map_err(|e| backend(path, &e))?;
        let mut trees = HashMap::new();
        for ks in Keyspace::ALL {
            let tree = db.open_tree(ks.name()).map_err(|e| backend(path, &e))?;
            trees.insert(*ks, tree);
        }
        let journal = db.open_tree(JOURNAL_TREE).map_err(|e| backend(path, &e))?;
        let store = Self {
            path: path.to_path_buf(),
            db,
            trees,
            journal,
            visibility: RwLock::new(()),
            broken: AtomicBool::new(false),
        };
        store.finish_interrupted()?;
        Ok(store)
    }

    /// Completes a transaction a crash cut short (see the module doc), and makes it durable.
    fn finish_interrupted(&self) -> Result<(), StoreError> {
        let Some(recorded) = self
            .journal
            .get(JOURNAL_KEY)
            .map_err(|e| backend(&self.path, &e))?
        else {
            return Ok(());
        };
        let writes = decode_journal(&recorded)?;
        tracing::warn!(
            writes = writes.len(),
            "completing a transaction that a crash interrupted"
        );
        self.write_all(&writes)?;
        self.journal
            .remove(JOURNAL_KEY)
            .map_err(|e| backend(&self.path, &e))?;
        self.flush_log()
    }

    fn write_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        for write in writes {
            match write {
                Write::Put(ks, key, value) => {
                    self.tree(*ks)?
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(|e| backend(&self.path, &e))?;
                }
                Write::Delete(ks, key) => {
                    self.tree(*ks)?
                        .remove(key.as_slice())
                        .map_err(|e| backend(&self.path, &e))?;
                }
            }
        }
        Ok(())
    }

    fn flush_log(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| backend(&self.path, &e))
    }

    /// Refuses every call once the store is broken: a write failed half-way, a flush failed
    /// (memory may be ahead of the disk), or a panic poisoned the lock mid-transaction. Only
    /// a restart (which replays the journal) makes it usable again.
    fn usable(&self) -> Result<(), StoreError> {
        if self.visibility.is_poisoned() && !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!("a panic interrupted a store transaction; refusing further use");
        }
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Backend(format!(
                "{}: an earlier write or flush failed, or a panic interrupted a transaction; restart latchkeyd to complete it from the journal",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn shared(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>, StoreError> {
        let guard = self
            .visibility
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        self.usable()?;
        Ok(guard)
    }

    /// Records the transaction in the journal and applies its writes, the first `limit` only
    /// (tests cut a transaction short as a crash would).
    fn journal_and_write(&self, txn: &Txn, limit: usize) -> Result<(), StoreError> {
        self.journal
            .insert(JOURNAL_KEY, encode_journal(txn.writes()))
            .map_err(|e| backend(&self.path, &e))?;
        let writes = txn.writes();
        self.write_all(&writes[..limit.min(writes.len())])?;
        if limit < writes.len() {
            return Ok(());
        }
        self.journal
            .remove(JOURNAL_KEY)
            .map_err(|e| backend(&self.path, &e))?;
        Ok(())
    }

    fn tree(&self, ks: Keyspace) -> Result<&sled::Tree, StoreError> {
        self.trees
            .get(&ks)
            .ok_or_else(|| StoreError::Backend(format!("keyspace {} is not open", ks.name())))
    }
}

/// Removes `snap.*.generating` files: snapshots sled began writing and never finished (it
/// renames one only after writing and syncing it whole). sled 0.34 would otherwise read the
/// newest such file as the snapshot and refuse to start on it for good ("Read corrupted data"),
/// e.g. after a start attempt on a full disk left one empty. Without it sled uses the previous
/// complete snapshot, or rebuilds from its log.
fn remove_unfinished_snapshots(path: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Backend(format!("{}: {e}", path.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(), "removing an unfinished sled snapshot");
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::Backend(format!("{}: {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

fn backend(path: &Path, e: &sled::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

impl Store for SledStore {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tree = self.tree(ks)?;
        let _shared = self.shared()?;
        Ok(tree
            .get(key)
            .map_err(|e| backend(&self.path, &e))?
            .map(|v| v.to_vec()))
    }

    /// Reads in pages of `SCAN_PAGE` entries, taking the store's lock per page: each page
    /// sees whole transactions, and a long scan never holds commits out for its whole length
    /// (a transaction may land between two pages: a long scan is not a snapshot).
    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tree = self.tree(ks)?;
        let mut out: Vec<Entry> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while out.len() < limit {
            let page = (limit - out.len()).min(SCAN_PAGE);
            let before = out.len();
            {
                let _shared = self.shared()?;
                let range = match &after {
                    None => tree.range(start..),
                    Some(last) => tree.range::<&[u8], _>((
                        std::ops::Bound::Excluded(last.as_slice()),
                        std::ops::Bound::Unbounded,
                    )),
                };
                for item in range.take(page) {
                    let (k, v) = item.map_err(|e| backend(&self.path, &e))?;
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            if out.len() - before < page {
                break;
            }
            after = out.last().map(|(k, _)| k.clone());
        }
        Ok(out)
    }

    /// Not a snapshot: transactions may apply during the count (it is unbounded, and only
    /// metrics and listings use it).
    fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
        self.usable()?;
        let mut n = 0u64;
        for item in self.tree(ks)?.iter().keys() {
            item.map_err(|e| backend(&self.path, &e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Not a snapshot, as [`SledStore::count`].
    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
        self.usable()?;
        let mut n = 0u64;
        for item in self.tree(ks)?.range(..end).keys() {
            item.map_err(|e| backend(&self.path, &e))?;
            n += 1;
        }
        Ok(n)
    }

    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
        let tree = self.tree(ks)?;
        let _shared = self.shared()?;
        Ok(tree
            .last()
            .map_err(|e| backend(&self.path, &e))?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
        self.apply(txn)?;
        self.flush()
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        if txn.writes().is_empty() && txn.compares().is_empty() {
            return Ok(());
        }
        // Resolve every keyspace first, so a missing one fails before anything is written.
        for ks in txn.keyspaces() {
            self.tree(ks)?;
        }
        let _alone = self
            .visibility
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.usable()?;
        for compare in txn.compares() {
            match compare {
                Compare::Absent(ks, key) => {
                    let found = self
                        .tree(*ks)?
                        .contains_key(key)
                        .map_err(|e| backend(&self.path, &e))?;
                    if found {
                        return Err(StoreError::Conflict(format!(
                            "{}/{} already exists",
                            ks.name(),
                            String::from_utf8_lossy(key)
                        )));
                    }
                }
                Compare::Equals(ks, key, expected) => {
                    let current = self
                        .tree(*ks)?
                        .get(key)
                        .map_err(|e| backend(&self.path, &e))?;
                    if current.as_deref() != Some(expected.as_slice()) {
                        return Err(StoreError::Conflict(format!(
                            "{}/{} changed concurrently",
                            ks.name(),
                            String::from_utf8_lossy(key)
                        )));
                    }
                }
            }
        }
        if txn.writes().is_empty() {
            return Ok(());
        }
        if let Err(e) = self.journal_and_write(txn, usize::MAX) {
            self.broken.store(true, Ordering::Release);
            tracing::error!("a store write failed half-way; refusing further use: {e}");
            return Err(e);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.usable()?;
        let flushed = self.flush_log();
        if let Err(e) = &flushed {
            self.broken.store(true, Ordering::Release);
            tracing::error!("flushing the store failed; refusing further use: {e}");
        }
        flushed
    }
}

/// The journal record of a transaction's writes: per write, a tag, the keyspace name, the key
/// and (puts) the value, each length-prefixed.
fn encode_journal(writes: &[Write]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        // A key or value over 4 GiB cannot reach sled; the length fits.
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    for write in writes {
        match write {
            Write::Put(ks, key, value) => {
                out.push(PUT);
                field(&mut out, ks.name().as_bytes());
                field(&mut out, key);
                field(&mut out, value);
            }
            Write::Delete(ks, key) => {
                out.push(DELETE);
                field(&mut out, ks.name().as_bytes());
                field(&mut out, key);
            }
        }
    }
    out
}

fn decode_journal(mut bytes: &[u8]) -> Result<Vec<Write>, StoreError> {
    fn corrupt(detail: &str) -> StoreError {
        StoreError::Corrupt {
            keyspace: JOURNAL_TREE,
            detail: detail.to_owned(),
        }
    }
    fn field<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt("length"))?;
        if rest.len() < len {
            return Err(corrupt("truncated field"));
        }
        let (value, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(value)
    }
    let mut writes = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let name = field(&mut bytes)?;
        let ks = Keyspace::ALL
            .iter()
            .copied()
            .find(|ks| ks.name().as_bytes() == name)
            .ok_or_else(|| corrupt("unknown keyspace"))?;
        let key = field(&mut bytes)?.to_vec();
        writes.push(match tag {
            PUT => Write::Put(ks, key, field(&mut bytes)?.to_vec()),
            DELETE => Write::Delete(ks, key),
            _ => return Err(corrupt("unknown write tag")),
        });
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sled_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let opened = std::sync::atomic::AtomicUsize::new(0);
        crate::store::conformance::run_all(|| {
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SledStore::create(&dir.path().join(n.to_string())).unwrap()
        });
    }

    #[test]
    fn fuzz_journal_records_never_panic_the_decoder() {
        let valid = vec![
            encode_journal(&[
                Write::Put(Keyspace::Grants, b"g1".to_vec(), b"{\"a\":1}".to_vec()),
                Write::Delete(Keyspace::GrantExpiry, vec![0, 1, 2, 3]),
            ]),
            encode_journal(&[Write::Put(Keyspace::Meta, Vec::new(), Vec::new())]),
        ];
        crate::base::fuzzing::run("journal", &valid, |input| {
            if let Ok(writes) = decode_journal(input) {
                // Whatever decodes encodes back to a record that decodes the same.
                assert_eq!(decode_journal(&encode_journal(&writes)).ok(), Some(writes));
            }
        });
    }

    use super::*;

    /// Copies the store's files as they are on disk now: what a crash would leave behind.
    fn crash_image(from: &Path, to: &Path) {
        fsperm::create_private_dir(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                crash_image(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    #[test]
    fn a_transaction_cut_short_by_a_crash_is_completed_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = SledStore::create(&path).unwrap();
        let mut before = Txn::new();
        before.put_raw(Keyspace::Meta, "old", "x");
        store.commit(&before).unwrap();

        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Workloads, "a", "1")
            .put_raw(Keyspace::WorkloadPins, "p", "a")
            .delete(Keyspace::Meta, "old");
        store.journal_and_write(&txn, 1).unwrap();
        store.flush().unwrap();
        let image = dir.path().join("image");
        crash_image(&path, &image);
        // The crash came after the first write: the rest is missing on disk.
        assert_eq!(store.get(Keyspace::WorkloadPins, b"p").unwrap(), None);

        let reopened = SledStore::open(&image).unwrap();
        assert_eq!(
            reopened.get(Keyspace::Workloads, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            reopened.get(Keyspace::WorkloadPins, b"p").unwrap(),
            Some(b"a".to_vec())
        );
        assert_eq!(reopened.get(Keyspace::Meta, b"old").unwrap(), None);
        assert_eq!(reopened.journal.get(JOURNAL_KEY).unwrap(), None);
    }

    #[test]
    fn a_scan_longer_than_a_page_returns_every_entry_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::create(&dir.path().join("store")).unwrap();
        let mut txn = Txn::new();
        let page = u32::try_from(SCAN_PAGE).unwrap();
        let n = page * 2 + 7;
        for i in 0..n {
            txn.put_raw(Keyspace::Requests, i.to_be_bytes(), i.to_be_bytes());
        }
        store.commit(&txn).unwrap();
        let keys = |start: u32, limit: usize| -> Vec<u32> {
            store
                .scan_from(Keyspace::Requests, &start.to_be_bytes(), limit)
                .unwrap()
                .into_iter()
                .map(|(k, v)| {
                    assert_eq!(k, v);
                    u32::from_be_bytes(k.try_into().unwrap())
                })
                .collect()
        };
        assert_eq!(keys(0, usize::MAX), (0..n).collect::<Vec<_>>());
        assert_eq!(keys(5, SCAN_PAGE + 1), (5..6 + page).collect::<Vec<_>>());
        assert_eq!(keys(n - 3, usize::MAX), vec![n - 3, n - 2, n - 1]);
        assert_eq!(keys(0, SCAN_PAGE), (0..page).collect::<Vec<_>>());
    }

    #[test]
    fn a_finished_transaction_leaves_nothing_in_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::create(&dir.path().join("store")).unwrap();
        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Workloads, "a", "1");
        store.commit(&txn).unwrap();
        assert_eq!(store.journal.get(JOURNAL_KEY).unwrap(), None);
    }

    #[test]
    fn a_panic_inside_a_transaction_breaks_the_store_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = std::sync::Arc::new(SledStore::create(&path).unwrap());
        let mut first = Txn::new();
        first.put_raw(Keyspace::Workloads, "a", "1");
        store.commit(&first).unwrap();
        // A panic while the transaction lock is held, as one inside `apply` would be.
        let panicking = store.clone();
        let joined = std::thread::spawn(move || {
            let _alone = panicking.visibility.write().unwrap();
            panic!("injected panic mid-transaction");
        })
        .join();
        assert!(joined.is_err());
        let mut second = Txn::new();
        second.put_raw(Keyspace::Workloads, "b", "2");
        assert!(matches!(store.commit(&second), Err(StoreError::Backend(_))));
        assert!(matches!(
            store.get(Keyspace::Workloads, b"a"),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(store.flush(), Err(StoreError::Backend(_))));
        drop(store);
        let reopened = reopen(&path);
        assert_eq!(
            reopened.get(Keyspace::Workloads, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(reopened.get(Keyspace::Workloads, b"b").unwrap(), None);
    }

    #[test]
    fn an_unfinished_snapshot_left_by_a_full_disk_does_not_brick_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = SledStore::create(&path).unwrap();
            let mut txn = Txn::new();
            txn.put_raw(Keyspace::Workloads, "a", "1");
            store.commit(&txn).unwrap();
        }
        // What a start attempt on a full disk leaves: an empty snapshot being generated, newer
        // than any complete one.
        let generating = path.join("snap.FFFFFFFFFFFFFFF0.generating");
        std::fs::write(&generating, b"").unwrap();
        let store = reopen(&path);
        assert_eq!(
            store.get(Keyspace::Workloads, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        assert!(!generating.exists());
    }

    /// Opens a store whose last handle was just dropped (sled releases its file lock from
    /// its own threads a moment later).
    fn reopen(path: &std::path::Path) -> SledStore {
        for _ in 0..500 {
            match SledStore::open(path) {
                Ok(store) => return store,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the store's lock was not released within 5 s");
    }

    #[test]
    fn journal_records_round_trip_and_damaged_ones_are_refused() {
        let writes = vec![
            Write::Put(Keyspace::Grants, b"g".to_vec(), b"{}".to_vec()),
            Write::Delete(Keyspace::GrantExpiry, vec![0, 1, 2]),
            Write::Put(Keyspace::Meta, Vec::new(), Vec::new()),
        ];
        let recorded = encode_journal(&writes);
        assert_eq!(decode_journal(&recorded).unwrap(), writes);
        for cut in 1..recorded.len() {
            let err = decode_journal(&recorded[..cut]);
            // A cut on a write boundary is a shorter valid record; anywhere else is refused.
            match err {
                Ok(prefix) => assert!(writes.starts_with(&prefix), "cut at {cut}"),
                Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
        }
        let mut unknown = recorded.clone();
        unknown[0] = 9;
        assert!(matches!(
            decode_journal(&unknown),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
