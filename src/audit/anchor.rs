//! The rollback anchor: the newest durable audit record (sequence number and hash), kept in a
//! file of its own beside the store and rewritten (atomically, fsynced) after every flush.
//!
//! At start the store's audit log must still hold that record, with that hash. A store that
//! went back in time — mid-log corruption that sled takes for a torn tail, a restored old copy,
//! a truncated log — ends earlier or differs there, and latchkeyd refuses to serve it instead
//! of silently undoing revocations and grants.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::error::{Coded, ErrorKind};
use crate::store::{self, Keyspace, Store};

use super::{AuditRecord, seq_key};

/// Errors of the rollback check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The store's audit log ends before a record known to have been durable: the store went
    /// back in time. Restore the newest backup; or accept the loss with
    /// `latchkeyd accept-rollback`, knowing revocations and grants after it are forgotten.
    #[error(
        "the trust store went back in time: its audit log ends at record {store_seq}, but record {anchored_seq} was durable ({path}). Grants, revocations and changes after record {store_seq} would be undone. Restore the newest backup of the data dir; or, to serve this older state anyway (check the KRL and revoke what must stay revoked), run `latchkeyd accept-rollback --config CONFIG`"
    )]
    RolledBack {
        /// Newest record in the store.
        store_seq: u64,
        /// Newest record known durable.
        anchored_seq: u64,
        /// The anchor file.
        path: String,
    },
    /// The store holds a different record where the anchored one was: another store's log, or
    /// one rewritten. Restore the right data dir or backup.
    #[error(
        "the trust store's audit record {seq} is not the one that was durable ({path}): this is another or a rewritten log. Restore the right data dir or its newest backup; `latchkeyd accept-rollback --config CONFIG` serves it anyway"
    )]
    Diverged {
        /// The record that differs.
        seq: u64,
        /// The anchor file.
        path: String,
    },
    /// The anchor file cannot be read, parsed or written. Check the data dir's filesystem.
    #[error("rollback anchor {path}: {detail}")]
    Io {
        /// The anchor file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl Coded for AnchorError {
    fn code(&self) -> &'static str {
        match self {
            AnchorError::RolledBack { .. } => "store.rolled_back",
            AnchorError::Diverged { .. } => "store.diverged",
            AnchorError::Io { .. } => "store.anchor_unusable",
            AnchorError::Store(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            AnchorError::RolledBack { .. } | AnchorError::Diverged { .. } => {
                ErrorKind::FailedPrecondition
            }
            AnchorError::Io { .. } => ErrorKind::Unavailable,
            AnchorError::Store(e) => e.kind(),
        }
    }
}

/// What the anchor file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchored {
    /// Sequence number of the newest durable record.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// The anchor file of one data dir.
#[derive(Clone, Debug)]
pub struct Anchor {
    path: PathBuf,
}

impl Anchor {
    /// The anchor at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> AnchorError {
        AnchorError::Io {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// What the anchor holds, or None if there is no anchor yet.
    pub fn read(&self) -> Result<Option<Anchored>, AnchorError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.io(e))
    }

    /// Records `seq`/`hash` as durable: a temporary file, fsync, rename, fsync of the dir.
    pub fn write(&self, anchored: &Anchored) -> Result<(), AnchorError> {
        let bytes = serde_json::to_vec(anchored).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("anchor.tmp");
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| self.io(e))?;
            file.write_all(&bytes).map_err(|e| self.io(e))?;
            file.sync_all().map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }

    /// Checks that `store` still holds the anchored record with its hash; anchors the store's
    /// head if there is no anchor yet (first start with one).
    pub fn check(&self, store: &dyn Store) -> Result<(), AnchorError> {
        let head = head_of(store)?;
        let Some(anchored) = self.read()? else {
            return self.write(&head);
        };
        if head.seq < anchored.seq {
            return Err(AnchorError::RolledBack {
                store_seq: head.seq,
                anchored_seq: anchored.seq,
                path: self.path.display().to_string(),
            });
        }
        let at = store
            .get(Keyspace::Audit, &seq_key(anchored.seq))?
            .map(|raw| store::decode::<AuditRecord>(&raw))
            .transpose()?;
        if anchored.seq > 0 && at.is_none_or(|r| r.hash != anchored.hash) {
            return Err(AnchorError::Diverged {
                seq: anchored.seq,
                path: self.path.display().to_string(),
            });
        }
        Ok(())
    }

    /// Anchors the store's current head, whatever the anchor said (`accept-rollback`).
    /// Returns what was anchored before, if anything, and what is anchored now.
    pub fn reset(&self, store: &dyn Store) -> Result<(Option<Anchored>, Anchored), AnchorError> {
        let before = self.read().ok().flatten();
        let head = head_of(store)?;
        self.write(&head)?;
        Ok((before, head))
    }
}

fn head_of(store: &dyn Store) -> Result<Anchored, AnchorError> {
    Ok(match store.last(Keyspace::Audit)? {
        Some((_, raw)) => {
            let record: AuditRecord = store::decode(&raw)?;
            Anchored {
                seq: record.seq,
                hash: record.hash,
            }
        }
        None => Anchored {
            seq: 0,
            hash: super::ZERO_HASH.to_owned(),
        },
    })
}
