//! Private files and directories: created with tight modes, refused when loose.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::base::constants::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};

/// Errors about files the daemon keeps private.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsPermError {
    /// Group or others can access a secret. Fix the mode as the message says, then restart.
    #[error(
        "{path} has mode {mode:04o}, which lets other users read it; run `chmod {want:o} {path}` and check who could have copied it"
    )]
    TooOpen {
        /// The offending path.
        path: PathBuf,
        /// Its current permission bits.
        mode: u32,
        /// The mode it should have.
        want: u32,
    },
    /// A secret belongs to another user, who could replace it. Give it to the daemon's user.
    #[error(
        "{path} is owned by uid {owner}, not by the daemon's uid {expected}; run `chown {expected} {path}` and check who could have replaced it"
    )]
    WrongOwner {
        /// The offending path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid it should belong to.
        expected: u32,
    },
    /// A file the daemon trusts (its config) can be changed by other users. Tighten it.
    #[error(
        "{path} has mode {mode:04o}, which lets other users change it; run `chmod go-w {path}` and check what they could have changed"
    )]
    WritableByOthers {
        /// The offending path.
        path: PathBuf,
        /// Its current permission bits.
        mode: u32,
    },
    /// The file is not where it should be or cannot be read. Check the path and the data dir.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsPermError + '_ {
    move |source| FsPermError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sets the process umask to 0077: every file and directory this process creates from now on
/// is private to its user. Process-wide; latchkeyd never wants anything else.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `path` (and missing parents) with mode 0700; an existing directory must already be private.
pub fn create_private_dir(path: &Path) -> Result<(), FsPermError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(io(path))?;
    // `recursive` leaves an existing directory's mode alone; tighten it explicitly.
    fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(io(path))
}

/// Writes a new file with mode 0600. Refuses to overwrite.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), FsPermError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Reads a file that must not be accessible to group or others, owned by this process's user
/// (or root).
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, FsPermError> {
    check_private(path)?;
    check_owner(path)?;
    fs::read(path).map_err(io(path))
}

/// Refuses a file owned by anyone but this process's user or root: another user could swap a
/// secret they own for one of their choosing.
pub fn check_owner(path: &Path) -> Result<(), FsPermError> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::metadata(path).map_err(io(path))?.uid();
    let expected = nix::unistd::geteuid().as_raw();
    if owner != expected && owner != 0 {
        return Err(FsPermError::WrongOwner {
            path: path.to_path_buf(),
            owner,
            expected,
        });
    }
    Ok(())
}

/// Refuses a file that group or others may write (the daemon's config).
pub fn check_not_writable_by_others(path: &Path) -> Result<(), FsPermError> {
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FsPermError::WritableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a file or directory that group or others can access.
pub fn check_private(path: &Path) -> Result<(), FsPermError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let want = if meta.is_dir() {
            PRIVATE_DIR_MODE
        } else {
            PRIVATE_FILE_MODE
        };
        return Err(FsPermError::TooOpen {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Checks `dir` and everything directly inside it.
pub fn check_private_tree(dir: &Path) -> Result<(), FsPermError> {
    check_private(dir)?;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        check_private(&entry.path())?;
    }
    Ok(())
}

/// Tightens `dir` and everything directly inside it to 0700/0600 (for files another library created).
pub fn restrict_tree(dir: &Path) -> Result<(), FsPermError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(io(dir))?;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let mode = if path.is_dir() {
            PRIVATE_DIR_MODE
        } else {
            PRIVATE_FILE_MODE
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))?;
    }
    Ok(())
}
