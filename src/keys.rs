//! Linkage key files: one 32-byte random key per epoch under a keys directory, 0600, never printed — only fingerprints.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::fsutil::{self, SecretFileError};

/// Length of a linkage key, and the minimum accepted at load.
pub const KEY_LEN: usize = 32;

/// Why a key could not be created or loaded. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("{path}: {len} bytes; a linkage key must be at least {KEY_LEN} bytes (make one with `divert keys init`)")]
    TooShort { path: PathBuf, len: usize },
    #[error("{dir}: no linkage key; create one with `divert keys init --keys {dir}`")]
    NoKey { dir: PathBuf },
    #[error("{dir}: already holds a linkage key (epoch {epoch}); refusing to create another (rotation is `divert keys rotate`)")]
    AlreadyInitialized { dir: PathBuf, epoch: u32 },
    #[error("{dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("deriving a key with HKDF failed")]
    Derive,
    #[error("the system random number generator failed")]
    Random,
}

/// One epoch's linkage key. Debug shows the epoch and fingerprint only.
pub struct EpochKey {
    epoch: u32,
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochKey(epoch {}, fingerprint {})", self.epoch, self.fingerprint())
    }
}

/// A salt fixed for the project, so derived keys are bound to divert's use of the epoch key.
const HKDF_SALT: &[u8] = b"divert/v1/linkage-key";

impl EpochKey {
    /// A key from bytes already in memory (tests and benchmarks).
    pub fn from_bytes(epoch: u32, bytes: &[u8]) -> Result<EpochKey, KeyError> {
        if bytes.len() < KEY_LEN {
            return Err(KeyError::TooShort { path: PathBuf::from("<memory>"), len: bytes.len() });
        }
        Ok(EpochKey { epoch, key: Zeroizing::new(bytes.to_vec()) })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// An HMAC-SHA256 key derived from the epoch key with HKDF-SHA256 under `info`.
    /// Different `info` strings give independent keys.
    pub fn derive_hmac_key(&self, info: &[u8]) -> Result<hmac::Key, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.key);
        let info = [info];
        // HMAC_SHA256's output (32 bytes) is far below HKDF's limit of 255 × 32, so this does not fail in practice.
        let okm = prk.expand(&info, hmac::HMAC_SHA256).map_err(|_| KeyError::Derive)?;
        Ok(hmac::Key::from(okm))
    }

    /// The key in hex, for the custodian to hand to a source over mutual TLS
    /// (`source::keyserver`). Never logged or printed.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::hex::encode(&self.key))
    }

    /// A short public fingerprint: identifies the key in status output and logs without revealing it.
    pub fn fingerprint(&self) -> String {
        match self.derive_hmac_key(b"divert/v1/fingerprint") {
            Ok(k) => crate::hex::encode(&hmac::sign(&k, b"fingerprint").as_ref()[..8]),
            Err(_) => "unavailable".to_string(),
        }
    }
}

/// The file name of an epoch's key.
pub fn epoch_file_name(epoch: u32) -> String {
    format!("epoch-{epoch:06}.key")
}

fn parse_epoch_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("epoch-")?.strip_suffix(".key")?.parse().ok()
}

/// What `keys status` shows of one epoch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochInfo {
    pub epoch: u32,
    pub fingerprint: String,
    pub path: PathBuf,
}

/// The epochs whose key files are in `dir`, ascending. Each is loaded (and so checked).
pub fn list(dir: &Path) -> Result<Vec<EpochInfo>, KeyError> {
    let mut out = Vec::new();
    for epoch in epochs_in(dir)? {
        let key = load(dir, epoch)?;
        out.push(EpochInfo { epoch, fingerprint: key.fingerprint(), path: dir.join(epoch_file_name(epoch)) });
    }
    Ok(out)
}

/// The epochs whose key files are in `dir`, ascending (not loaded).
pub fn epochs_in(dir: &Path) -> Result<Vec<u32>, KeyError> {
    let rd = std::fs::read_dir(dir).map_err(|source| KeyError::Dir { dir: dir.to_path_buf(), source })?;
    let mut epochs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| KeyError::Dir { dir: dir.to_path_buf(), source })?;
        if let Some(e) = entry.file_name().to_str().and_then(parse_epoch_file_name) {
            epochs.push(e);
        }
    }
    epochs.sort_unstable();
    Ok(epochs)
}

/// Load one epoch's key, refusing a file readable by group or others, or shorter than 32 bytes.
pub fn load(dir: &Path, epoch: u32) -> Result<EpochKey, KeyError> {
    let path = dir.join(epoch_file_name(epoch));
    let bytes = Zeroizing::new(fsutil::read_secret(&path)?);
    if bytes.len() < KEY_LEN {
        return Err(KeyError::TooShort { path, len: bytes.len() });
    }
    Ok(EpochKey { epoch, key: Zeroizing::new(bytes.to_vec()) })
}

/// Load the active epoch: the highest-numbered key in `dir`.
pub fn load_active(dir: &Path) -> Result<EpochKey, KeyError> {
    match epochs_in(dir)?.last() {
        Some(&e) => load(dir, e),
        None => Err(KeyError::NoKey { dir: dir.to_path_buf() }),
    }
}

/// Create `dir` (0700) and a first epoch key in it (0600), from the system CSPRNG.
pub fn init(dir: &Path) -> Result<EpochKey, KeyError> {
    fsutil::create_private_dir(dir)?;
    if let Some(&e) = epochs_in(dir)?.last() {
        return Err(KeyError::AlreadyInitialized { dir: dir.to_path_buf(), epoch: e });
    }
    write_new_epoch(dir, 1)
}

/// Store a key received from the custodian for `epoch` (0600, atomic, fsynced):
/// the file is whole or absent after a crash. Refuses to overwrite.
pub fn store_epoch(dir: &Path, epoch: u32, bytes: &[u8]) -> Result<EpochKey, KeyError> {
    if bytes.len() < KEY_LEN {
        return Err(KeyError::TooShort { path: dir.join(epoch_file_name(epoch)), len: bytes.len() });
    }
    fsutil::write_secret(&dir.join(epoch_file_name(epoch)), bytes, false)?;
    Ok(EpochKey { epoch, key: Zeroizing::new(bytes.to_vec()) })
}

/// Delete a retired epoch's key file (and make the deletion durable).
pub fn remove_epoch(dir: &Path, epoch: u32) -> Result<(), KeyError> {
    let path = dir.join(epoch_file_name(epoch));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(KeyError::Dir { dir: dir.to_path_buf(), source }),
    }
    fsutil::sync_dir(dir).map_err(|source| KeyError::Dir { dir: dir.to_path_buf(), source })
}

/// Write a new random key for `epoch` (0600, atomic, fsynced); refuses to overwrite.
pub fn write_new_epoch(dir: &Path, epoch: u32) -> Result<EpochKey, KeyError> {
    let mut bytes = Zeroizing::new(vec![0u8; KEY_LEN]);
    SystemRandom::new().fill(&mut bytes).map_err(|_| KeyError::Random)?;
    store_epoch(dir, epoch, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_load_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("keys");
        let k = init(&kd).unwrap();
        assert_eq!(k.epoch(), 1);
        let path = kd.join(epoch_file_name(1));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let again = load_active(&kd).unwrap();
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert!(matches!(init(&kd), Err(KeyError::AlreadyInitialized { epoch: 1, .. })));
        // Debug shows no key bytes.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&crate::hex::encode(&std::fs::read(&path).unwrap())));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_active(&kd).unwrap_err().to_string();
        assert!(err.contains("too open"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 16]).unwrap();
        assert!(matches!(load_active(&kd), Err(KeyError::TooShort { len: 16, .. })));
    }

    #[test]
    fn derived_keys_differ_by_info() {
        let k = EpochKey::from_bytes(1, &[7u8; 32]).unwrap();
        let a = hmac::sign(&k.derive_hmac_key(b"a").unwrap(), b"x");
        let b = hmac::sign(&k.derive_hmac_key(b"b").unwrap(), b"x");
        assert_ne!(a.as_ref(), b.as_ref());
    }
}
