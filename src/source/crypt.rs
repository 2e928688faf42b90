//! The data key and at-rest encryption of raw records: AES-256-GCM (ring), a fresh random 96-bit nonce per value, the value's store key as associated data.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use crate::fsutil::{self, SecretFileError};

/// Bytes of the data key.
pub const DATA_KEY_LEN: usize = 32;
/// Bytes of the tag AES-256-GCM appends.
pub const TAG_LEN: usize = 16;

/// Why the data key could not be loaded or made. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("{path}: {len} bytes; a data key is exactly {DATA_KEY_LEN} bytes (remove it only if the store is empty: it decrypts the raw records)")]
    BadLength { path: PathBuf, len: usize },
    #[error("the system random number generator failed")]
    Random,
}

/// Why a value could not be sealed or opened. Says nothing about the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("the system random number generator failed")]
    Random,
    #[error("encryption failed")]
    Seal,
    #[error("a stored raw value does not decrypt under the data key (wrong key, or the value was altered or moved)")]
    Open,
}

/// The AES-256-GCM key raw records are encrypted under. Its bytes live only inside ring.
pub struct DataKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A key from bytes in memory (tests).
    pub fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(DataKey { key: LessSafeKey::new(unbound), rng: SystemRandom::new() })
    }

    /// Load the key at `path` (refusing a file group or others may read), or
    /// make one (32 bytes from the system CSPRNG, written 0600) if there is none.
    /// Returns the key and whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(DataKey, bool), DataKeyError> {
        let created = if path.exists() {
            false
        } else {
            let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
            SystemRandom::new().fill(&mut bytes[..]).map_err(|_| DataKeyError::Random)?;
            fsutil::write_secret(path, &bytes[..], false)?;
            true
        };
        let bytes = Zeroizing::new(fsutil::read_secret(path)?);
        if bytes.len() != DATA_KEY_LEN {
            return Err(DataKeyError::BadLength { path: path.to_path_buf(), len: bytes.len() });
        }
        let key = DataKey::from_bytes(&bytes)
            .ok_or(DataKeyError::BadLength { path: path.to_path_buf(), len: bytes.len() })?;
        Ok((key, created))
    }

    /// Encrypt `plaintext` bound to `ad` (the store key it will be kept under):
    /// nonce ‖ ciphertext ‖ tag. The output is allocated once, at its final
    /// size, so no copy of the plaintext is left in a freed buffer; the caller
    /// zeroizes its own plaintext.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = match self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ad),
            &mut out[NONCE_LEN..],
        ) {
            Ok(t) => t,
            Err(_) => {
                out.zeroize();
                return Err(CryptError::Seal);
            }
        };
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt a value made by [`DataKey::seal`] under the same `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptError::Open);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
        let n = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(ad), &mut buf[..])
            .map_err(|_| CryptError::Open)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// A growable byte buffer for plaintext: zeroized when it grows (the old
/// allocation is wiped before it is freed), when cleared and when dropped.
pub struct SecretBuf(Vec<u8>);

impl SecretBuf {
    pub fn with_capacity(n: usize) -> SecretBuf {
        SecretBuf(Vec::with_capacity(n))
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        let need = self.0.len() + bytes.len();
        if need > self.0.capacity() {
            let mut grown = Vec::with_capacity(need.max(self.0.capacity() * 2));
            grown.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = grown;
        }
        self.0.extend_from_slice(bytes);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wipe the contents, keeping the allocation.
    pub fn clear(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = DataKey::from_bytes(&[7u8; 32]).unwrap();
        let ad = b"r\x01\x02";
        let sealed = key.seal(ad, b"Zelda Quixote-Brandt,1980-03-14").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 31 + TAG_LEN);
        assert!(!sealed.windows(5).any(|w| w == b"Zelda"), "ciphertext holds no plaintext");
        assert_eq!(&key.open(ad, &sealed).unwrap()[..], b"Zelda Quixote-Brandt,1980-03-14");
        // Fresh nonce per value: the same plaintext seals differently.
        assert_ne!(key.seal(ad, b"same").unwrap(), key.seal(ad, b"same").unwrap());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.open(ad, &bad).unwrap_err(), CryptError::Open, "flipped byte {i}");
        }
        assert_eq!(key.open(b"r\x01\x03", &sealed).unwrap_err(), CryptError::Open, "another store key");
        let other = DataKey::from_bytes(&[8u8; 32]).unwrap();
        assert_eq!(other.open(ad, &sealed).unwrap_err(), CryptError::Open, "another data key");
        assert_eq!(key.open(ad, &sealed[..10]).unwrap_err(), CryptError::Open);
        assert!(DataKey::from_bytes(&[1u8; 16]).is_none());
    }

    #[test]
    fn data_key_file_is_0600_and_loose_mode_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let (k1, created) = DataKey::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = k1.seal(b"k", b"v").unwrap();
        let (k2, created) = DataKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(&k2.open(b"k", &sealed).unwrap()[..], b"v", "the same key is loaded again");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(DataKey::load_or_create(&path), Err(DataKeyError::File(SecretFileError::TooOpen { .. }))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(DataKey::load_or_create(&path), Err(DataKeyError::BadLength { len: 5, .. })));
    }

    #[test]
    fn secret_buf_grows() {
        let mut b = SecretBuf::with_capacity(2);
        b.extend(b"abc");
        b.extend(b"defgh");
        assert_eq!(b.as_slice(), b"abcdefgh");
        b.clear();
        assert!(b.is_empty());
    }
}
