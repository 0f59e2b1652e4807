//! `latchkeyd backup` and `restore`: the whole trust store as of one moment in one file, and
//! back into an empty store — checked against the audit chain both ways. The file is JSON
//! lines: a header (`format`, `version`, `schema_version`, `audit_head`, `entries`), one line
//! per entry (`keyspace`, `key` and `value` in base64), and last the audit key's Ed25519
//! signature over SHA-256 of every line before it: nothing in it (a grant, a key) can be
//! changed unnoticed. It holds no private key: the daemon's keys stay in the data dir (back
//! that up too), and restoring needs its audit key to check the signature and the chain.

use std::io::BufRead as _;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::base::constants::STORE_DIR;
use crate::base::fsperm;
use crate::credential::keys::DaemonKeys;
use crate::daemon::config::{Config, StoreChoice};
use crate::daemon::{DaemonError, open_store};
use crate::store::{Entry, Keyspace, MemoryStore, SledStore, Store, StoreError};

const FORMAT: &str = "latchkey-backup";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    schema_version: u32,
    /// The sequence number of the newest audit record in the backup.
    audit_head: u64,
    /// How many entry lines follow.
    entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    keyspace: String,
    key: String,
    value: String,
}

/// What a backup or restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Entries written.
    pub entries: u64,
    /// The newest audit record (its sequence number), checked against the chain.
    pub audit_head: u64,
}

fn bad(what: impl std::fmt::Display) -> DaemonError {
    DaemonError::StoreCopy(what.to_string())
}

/// Checks the audit records of a snapshot: a complete chain, its checkpoints signed by
/// `key`, every approval's evidence. Returns the head's sequence number.
fn check_chain(
    snapshot: &[(Keyspace, Vec<Entry>)],
    key: &ed25519_dalek::VerifyingKey,
) -> Result<u64, DaemonError> {
    let mut text = Vec::new();
    for (ks, entries) in snapshot {
        if *ks == Keyspace::Audit {
            for (_, value) in entries {
                text.extend_from_slice(value);
                text.push(b'\n');
            }
        }
    }
    let report = crate::audit::verify::verify(text.as_slice(), key).map_err(|t| {
        bad(format!(
            "the audit chain does not verify at record {} (line {}): {}",
            t.seq, t.line, t.reason
        ))
    })?;
    Ok(report.records)
}

fn signing_key(config: &Config) -> Result<ed25519_dalek::SigningKey, DaemonError> {
    let keys = DaemonKeys::load(&config.data_dir)?;
    crate::audit::signing_key(&keys.audit)
        .ok_or_else(|| bad("the audit key in the data dir is not an Ed25519 key"))
}

fn audit_key(config: &Config) -> Result<ed25519_dalek::VerifyingKey, DaemonError> {
    signing_key(config).map(|k| k.verifying_key())
}

/// The last line: the signature over every byte before it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    signature: String,
}

fn signed_digest(body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"latchkey.backup.v1\n");
    h.update(body);
    h.finalize().into()
}

/// Writes the configured store (sled: latchkeyd stopped; etcd: any time, one revision) to
/// `output`, a new private file, after checking its audit chain.
pub fn backup(config: &Config, output: &Path) -> Result<Summary, DaemonError> {
    fsperm::restrict_umask();
    fsperm::check_private(&config.data_dir)?;
    let (store, location) = open_store(config, StoreChoice::Configured)?;
    let schema_version = crate::store::check_schema(store.as_ref(), &location)?;
    let snapshot = store.snapshot()?;
    let audit_head = check_chain(&snapshot, &audit_key(config)?)?;
    let entries: u64 = snapshot.iter().map(|(_, e)| e.len() as u64).sum();
    let mut out = Vec::new();
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        schema_version,
        audit_head,
        entries,
    };
    out.extend(json_line(&header));
    for (ks, list) in &snapshot {
        for (key, value) in list {
            out.extend(json_line(&Line {
                keyspace: ks.name().to_owned(),
                key: B64.encode(key),
                value: B64.encode(value),
            }));
        }
    }
    {
        use ed25519_dalek::Signer as _;
        let signature = signing_key(config)?.sign(&signed_digest(&out));
        out.extend(json_line(&Trailer {
            signature: B64.encode(signature.to_bytes()),
        }));
    }
    if output.exists() {
        return Err(bad(format!(
            "{} exists; not overwriting it",
            output.display()
        )));
    }
    fsperm::write_private_file(output, &out)?;
    Ok(Summary {
        entries,
        audit_head,
    })
}

/// Restores `input` into `to` (which must be empty; sled: no store in the data dir yet),
/// refusing a file whose audit chain does not verify with the data dir's audit key.
pub fn restore(config: &Config, input: &Path, to: StoreChoice) -> Result<Summary, DaemonError> {
    fsperm::restrict_umask();
    fsperm::check_private(&config.data_dir)?;
    let (memory, audit_head) = read_verified(config, input)?;
    let entries = write_restored(config, &memory, to)?;
    Ok(Summary {
        entries,
        audit_head,
    })
}

/// The backup in `input`, its signature and audit chain verified, as an in-memory store, with
/// its audit head.
fn read_verified(config: &Config, input: &Path) -> Result<(MemoryStore, u64), DaemonError> {
    let file = std::fs::File::open(input).map_err(|e| bad(format!("{}: {e}", input.display())))?;
    let mut all: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    let trailer: Trailer = all
        .pop()
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or_else(|| bad("the backup has no signature line: it is cut short or not a backup"))?;
    let mut body = Vec::new();
    for line in &all {
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    let signature = B64
        .decode(&trailer.signature)
        .ok()
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
        .ok_or_else(|| bad("the backup's signature is malformed"))?;
    audit_key(config)?
        .verify_strict(&signed_digest(&body), &signature)
        .map_err(|_| {
            bad("the backup's signature does not verify with this data dir's audit key: it was changed, or made by another store")
        })?;
    let mut lines = all.into_iter().map(Ok::<String, std::io::Error>);
    let first = lines
        .next()
        .ok_or_else(|| bad("the backup is empty"))?
        .map_err(bad)?;
    let header: Header =
        serde_json::from_str(&first).map_err(|e| bad(format!("backup header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(format!(
            "not a latchkey backup of version {VERSION} ({} {})",
            header.format, header.version
        )));
    }
    let memory = MemoryStore::new();
    let mut snapshot: Vec<(Keyspace, Vec<Entry>)> =
        Keyspace::ALL.iter().map(|ks| (*ks, Vec::new())).collect();
    let mut count = 0u64;
    for (i, line) in lines.enumerate() {
        let line: Line = serde_json::from_str(&line.map_err(bad)?)
            .map_err(|e| bad(format!("backup line {}: {e}", i + 2)))?;
        let slot = snapshot
            .iter_mut()
            .find(|(ks, _)| ks.name() == line.keyspace)
            .ok_or_else(|| {
                bad(format!(
                    "backup line {}: keyspace {:?}",
                    i + 2,
                    line.keyspace
                ))
            })?;
        let decode = |s: &str| {
            B64.decode(s)
                .map_err(|e| bad(format!("backup line {}: {e}", i + 2)))
        };
        slot.1.push((decode(&line.key)?, decode(&line.value)?));
        count += 1;
    }
    if count != header.entries {
        return Err(bad(format!(
            "the backup holds {count} entries, its header says {}: it is cut short",
            header.entries
        )));
    }
    let audit_head = check_chain(&snapshot, &audit_key(config)?)?;
    if audit_head != header.audit_head {
        return Err(bad(format!(
            "the audit chain ends at record {audit_head}, the header says {}",
            header.audit_head
        )));
    }
    let mut txn = crate::store::Txn::new();
    for (ks, entries) in &snapshot {
        for (key, value) in entries {
            txn.put_raw(*ks, key.clone(), value.clone());
        }
    }
    memory.commit(&txn)?;
    crate::store::check_schema(&memory, input)?;
    Ok((memory, audit_head))
}

/// Copies a verified backup into `to`, which must be empty. Returns the entries written.
fn write_restored(
    config: &Config,
    memory: &MemoryStore,
    to: StoreChoice,
) -> Result<u64, DaemonError> {
    let copy = |target: &dyn Store| {
        crate::store::copy_all(memory, target).map_err(|e| match e {
            StoreError::Conflict(why) => bad(why),
            other => DaemonError::Store(other),
        })
    };
    let entries = match to {
        StoreChoice::Sled => {
            let path = config.data_dir.join(STORE_DIR);
            if path.exists() {
                return Err(bad(format!(
                    "{} exists: move it away first (restore never overwrites a store)",
                    path.display()
                )));
            }
            // Built aside and moved into place whole: a restore cut short leaves no store.
            let aside = config.data_dir.join(format!("{STORE_DIR}.restoring"));
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(bad)?;
            }
            let copied = {
                let target: Arc<dyn Store> = Arc::new(SledStore::create(&aside)?);
                copy(target.as_ref())
            };
            match copied {
                Ok(n) => {
                    std::fs::rename(&aside, &path).map_err(bad)?;
                    n
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&aside);
                    return Err(e);
                }
            }
        }
        // The schema version is written last: a restore cut short is not a store.
        other => copy(open_store(config, other)?.0.as_ref())?,
    };
    Ok(entries)
}

/// One JSON line of a header or an entry.
fn json_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}
