//! Files that hold secrets: written 0600 atomically, refused at load when group- or world-accessible.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a secret file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: permissions {mode:03o} are too open; a secret file must be readable by its owner only (chmod 600 {path})")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: already exists; refusing to overwrite a secret")]
    Exists { path: PathBuf },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretFileError + '_ {
    move |source| SecretFileError::Io { path: path.to_path_buf(), source }
}

/// Write `bytes` to `path` with mode 0600, atomically (see [`write_atomic`]).
/// Refuses to replace an existing file unless `overwrite`.
pub fn write_secret(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), SecretFileError> {
    if !overwrite && path.exists() {
        return Err(SecretFileError::Exists { path: path.to_path_buf() });
    }
    write_atomic(path, bytes, 0o600)
}

/// Write a non-secret file (a certificate, a config, a receipt) atomically with mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), SecretFileError> {
    write_atomic(path, bytes, 0o644)
}

/// The crate's one atomic file writer: `bytes` go to a temporary file in the
/// same directory (created new, mode `mode` set explicitly, not left to the
/// umask), fsynced, renamed over `path`, and the directory fsynced, so a
/// crash leaves either the old file or the new one, never half of either.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecretFileError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(SecretFileError::NotAFile { path: path.to_path_buf() });
    };
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    // A temporary file a crash left behind is ours to replace.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a secret file, refusing it if anyone but its owner may read or write it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    check_secret_mode(path)?;
    fs::read(path).map_err(io_err(path))
}

/// Refuse a secret file that is not a regular file or whose mode lets group or others in.
pub fn check_secret_mode(path: &Path) -> Result<(), SecretFileError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(SecretFileError::NotAFile { path: path.to_path_buf() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// Create a directory (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(path: &Path) -> Result<(), SecretFileError> {
    fs::create_dir_all(path).map_err(io_err(path))?;
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))?;
    }
    Ok(())
}

/// fsync a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_0600_and_loose_mode_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_secret(&p, b"abc", false).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_secret(&p).unwrap(), b"abc");
        assert!(matches!(write_secret(&p, b"x", false), Err(SecretFileError::Exists { .. })));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_secret(&p), Err(SecretFileError::TooOpen { mode: 0o640, .. })));
    }
}
