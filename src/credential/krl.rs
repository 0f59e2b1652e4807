//! OpenSSH key revocation lists (PROTOCOL.krl): certificates revoked by serial under one CA,
//! written atomically for sshd's `RevokedKeys`, and read back to confirm what was written.

use std::io::Write as _;
use std::path::Path;

use crate::base::error::{Coded, ErrorKind};

/// `"SSHKRL\n\0"`.
const KRL_MAGIC: u64 = 0x5353_484b_524c_0a00;
const KRL_FORMAT_VERSION: u32 = 1;
const SECTION_CERTIFICATES: u8 = 1;
const CERT_SECTION_SERIAL_LIST: u8 = 0x20;

/// A KRL could not be written or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KrlError {
    /// Writing, syncing or renaming the file failed. The KRL sink stays unconfirmed and is
    /// retried; check the path and disk.
    #[error("KRL {path}: {detail}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// The file is not a KRL this module understands (or was damaged).
    #[error("KRL {path} is malformed: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

impl Coded for KrlError {
    fn code(&self) -> &'static str {
        match self {
            KrlError::Io { .. } => "krl.io",
            KrlError::Malformed { .. } => "krl.malformed",
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a KRL revoking `serials` of certificates signed by the CA whose public key blob
/// (SSH wire encoding) is `ca_key_blob`.
pub fn encode(ca_key_blob: &[u8], serials: &[u64], version: u64, generated_unix: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + serials.len() * 8);
    out.extend_from_slice(&KRL_MAGIC.to_be_bytes());
    out.extend_from_slice(&KRL_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&generated_unix.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // flags
    put_string(&mut out, b""); // reserved
    put_string(&mut out, b"latchkeyd: revoked break-glass certificates");
    if !serials.is_empty() {
        let mut sorted = serials.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut list = Vec::with_capacity(sorted.len() * 8);
        for serial in sorted {
            list.extend_from_slice(&serial.to_be_bytes());
        }
        let mut section = Vec::new();
        put_string(&mut section, ca_key_blob);
        put_string(&mut section, b""); // reserved
        section.push(CERT_SECTION_SERIAL_LIST);
        put_string(&mut section, &list);
        out.push(SECTION_CERTIFICATES);
        put_string(&mut out, &section);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "u64".to_owned())?;
        Ok(u64::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "u32".to_owned())?;
        Ok(u32::from_be_bytes(b))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.u32()?).map_err(|e| e.to_string())?;
        self.take(n)
    }
}

/// The serials a KRL revokes under the CA `ca_key_blob`.
pub fn decode_serials(bytes: &[u8], ca_key_blob: &[u8]) -> Result<Vec<u64>, String> {
    decode(bytes, ca_key_blob).map(|(_, serials)| serials)
}

/// A KRL's version (latchkeyd writes its generation time, Unix ms) and the serials it revokes
/// under the CA `ca_key_blob`.
pub fn decode(bytes: &[u8], ca_key_blob: &[u8]) -> Result<(u64, Vec<u64>), String> {
    let mut r = Reader { bytes };
    if r.u64()? != KRL_MAGIC {
        return Err("bad magic".into());
    }
    if r.u32()? != KRL_FORMAT_VERSION {
        return Err("unsupported format version".into());
    }
    let version = r.u64()?;
    let _generated = r.u64()?;
    let _flags = r.u64()?;
    let _reserved = r.string()?;
    let _comment = r.string()?;
    let mut serials = Vec::new();
    while !r.bytes.is_empty() {
        let kind = r.take(1)?[0];
        let data = r.string()?;
        if kind != SECTION_CERTIFICATES {
            continue;
        }
        let mut section = Reader { bytes: data };
        let ca = section.string()?;
        let _reserved = section.string()?;
        while !section.bytes.is_empty() {
            let sub = section.take(1)?[0];
            let data = section.string()?;
            if ca == ca_key_blob && sub == CERT_SECTION_SERIAL_LIST {
                let mut list = Reader { bytes: data };
                while !list.bytes.is_empty() {
                    serials.push(list.u64()?);
                }
            }
        }
    }
    Ok((version, serials))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. sshd never sees a half-written KRL.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KrlError> {
    let io = |e: std::io::Error| KrlError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = path.with_extension("krl.tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        // Public data (serials), read by sshd as root: readable like /etc/ssh's public files.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// The KRL published at `path` (version and serials under the CA), or None if there is none.
pub fn read_published(
    path: &Path,
    ca_key_blob: &[u8],
) -> Result<Option<(u64, Vec<u64>)>, KrlError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(KrlError::Io {
                path: path.display().to_string(),
                detail: e.to_string(),
            });
        }
    };
    decode(&bytes, ca_key_blob)
        .map(Some)
        .map_err(|detail| KrlError::Malformed {
            path: path.display().to_string(),
            detail,
        })
}

/// Reads the KRL at `path` back and returns its serials under the CA.
pub fn read_serials(path: &Path, ca_key_blob: &[u8]) -> Result<Vec<u64>, KrlError> {
    let bytes = std::fs::read(path).map_err(|e| KrlError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    decode_serials(&bytes, ca_key_blob).map_err(|detail| KrlError::Malformed {
        path: path.display().to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_krl_read_back_never_panics() {
        let ca = b"ca-blob".to_vec();
        let valid = vec![
            encode(&ca, &[1, 2, 3, u64::MAX], 7, 1_700_000_000),
            encode(&ca, &[], 8, 1_700_000_000),
        ];
        crate::base::fuzzing::run("krl", &valid, |input| {
            let _ = decode(input, &ca);
        });
    }

    use super::*;

    #[test]
    fn serials_written_are_the_serials_read_back_for_that_ca_only() {
        let ca = b"ca-blob".to_vec();
        let bytes = encode(&ca, &[9, 3, 3, u64::MAX], 7, 1_700_000_000);
        assert_eq!(decode_serials(&bytes, &ca).unwrap(), vec![3, 9, u64::MAX]);
        assert_eq!(
            decode_serials(&bytes, b"other-ca").unwrap(),
            Vec::<u64>::new()
        );
        let empty = encode(&ca, &[], 8, 1_700_000_000);
        assert_eq!(decode_serials(&empty, &ca).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn a_damaged_krl_is_reported_not_misread() {
        let bytes = encode(b"ca", &[1, 2], 1, 0);
        assert!(decode_serials(&bytes[..bytes.len() - 3], b"ca").is_err());
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(decode_serials(&bad, b"ca").is_err());
    }

    #[test]
    fn writing_is_atomic_and_readable_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.krl");
        write_atomically(&path, &encode(b"ca", &[5], 1, 0)).unwrap();
        write_atomically(&path, &encode(b"ca", &[5, 6], 2, 0)).unwrap();
        assert_eq!(read_serials(&path, b"ca").unwrap(), vec![5, 6]);
        assert!(!path.with_extension("krl.tmp").exists());
    }
}
