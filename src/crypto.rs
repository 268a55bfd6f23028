//! Encryption at rest (DESIGN §2.5): AES-256-GCM under a key ring, newest key
//! first. A ciphertext is `v1 | kid length | kid | nonce | sealed`, so any key
//! still in the ring opens it; the associated data names the table, column and
//! row, so a ciphertext copied elsewhere does not open.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use rand::RngCore;

const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext was sealed with key `{0}`, which is not in the key ring")]
    UnknownKey(String),
    #[error("ciphertext does not open: wrong key, tampered, or bound to another row or column")]
    Open,
    #[error("encryption failed")]
    Seal,
    #[error("invalid key ring: {0}")]
    Parse(String),
}

struct Key256 {
    id: String,
    cipher: Aes256Gcm,
    /// Kept only to derive purpose-bound subkeys (`derive_key`); never used directly.
    material: zeroize::Zeroizing<[u8; 32]>,
}

/// The encryption keys, newest first. `Debug` shows only the key ids.
#[derive(Clone)]
pub struct KeyRing {
    keys: std::sync::Arc<Vec<Key256>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("key_ids", &self.key_ids()).field("secrets", &"***").finish()
    }
}

/// What a ciphertext is bound to: `table.column` and the row's id.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    pub column: &'a str,
    pub row: &'a str,
}

impl Aad<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.column.len() + self.row.len() + 1);
        out.extend_from_slice(self.column.as_bytes());
        out.push(0);
        out.extend_from_slice(self.row.as_bytes());
        out
    }
}

pub fn aad<'a>(column: &'a str, row: &'a str) -> Aad<'a> {
    Aad { column, row }
}

impl KeyRing {
    /// Parses `kid:base64(32 bytes)[,kid:base64…]`, newest first.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, material) =
                entry.split_once(':').ok_or_else(|| CryptoError::Parse("each key is kid:base64-of-32-bytes".into()))?;
            let id = id.trim();
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(CryptoError::Parse("a key id is 1-64 letters, digits, '-' or '_'".into()));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(material.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(material.trim()))
                .map_err(|_| CryptoError::Parse(format!("key `{id}` is not valid base64")))?;
            if bytes.len() != 32 {
                return Err(CryptoError::Parse(format!("key `{id}` must be 32 bytes, got {}", bytes.len())));
            }
            if keys.iter().any(|k: &Key256| k.id == id) {
                return Err(CryptoError::Parse(format!("key id `{id}` appears twice")));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            let mut material = zeroize::Zeroizing::new([0u8; 32]);
            material.copy_from_slice(&bytes);
            keys.push(Key256 { id: id.to_owned(), cipher, material });
        }
        if keys.is_empty() {
            return Err(CryptoError::Parse("no keys given".into()));
        }
        Ok(KeyRing { keys: std::sync::Arc::new(keys) })
    }

    /// A fresh random key in the ring's text format.
    pub fn generate_key_text(id: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    pub fn newest_id(&self) -> &str {
        &self.keys[0].id
    }

    /// A 32-byte subkey for one purpose (`label`), derived from the key `kid`
    /// (the newest when `None`) with HKDF-Expand (RFC 5869 §2.3; the key is
    /// already uniformly random, so it serves as the PRK). The raw key never
    /// leaves the ring; different labels give unrelated subkeys.
    pub fn derive_key(&self, kid: Option<&str>, label: &str) -> Option<(&str, zeroize::Zeroizing<[u8; 32]>)> {
        use hmac::{Hmac, Mac};
        let key = match kid {
            None => self.keys.first()?,
            Some(kid) => self.keys.iter().find(|k| k.id == kid)?,
        };
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.material.as_slice()).ok()?;
        mac.update(label.as_bytes());
        mac.update(&[1]);
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        Some((key.id.as_str(), out))
    }

    /// Seals under the newest key.
    pub fn seal(&self, plaintext: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, CryptoError> {
        let key = &self.keys[0];
        // A per-thread CSPRNG seeded from the OS: a nonce without a system call.
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad_bytes = aad.bytes();
        let sealed = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad_bytes })
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + sealed.len());
        out.push(FORMAT_VERSION);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn seal_str(&self, plaintext: &str, aad: Aad<'_>) -> Result<Vec<u8>, CryptoError> {
        self.seal(plaintext.as_bytes(), aad)
    }

    /// The key id a ciphertext was sealed with.
    pub fn key_id_of(ciphertext: &[u8]) -> Result<&str, CryptoError> {
        Ok(split(ciphertext)?.0)
    }

    pub fn open(&self, ciphertext: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, CryptoError> {
        let (id, nonce, sealed) = split(ciphertext)?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let aad_bytes = aad.bytes();
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &aad_bytes })
            .map_err(|_| CryptoError::Open)
    }

    pub fn open_string(&self, ciphertext: &[u8], aad: Aad<'_>) -> Result<String, CryptoError> {
        String::from_utf8(self.open(ciphertext, aad)?).map_err(|_| CryptoError::Malformed)
    }

    /// Opens and, when the ciphertext is not under the newest key, seals it again.
    /// `Ok(None)` means it was already current.
    pub fn reseal(&self, ciphertext: &[u8], aad: Aad<'_>) -> Result<Option<Vec<u8>>, CryptoError> {
        if Self::key_id_of(ciphertext)? == self.newest_id() {
            return Ok(None);
        }
        let plain = zeroize::Zeroizing::new(self.open(ciphertext, aad)?);
        Ok(Some(self.seal(&plain, aad)?))
    }
}

fn split(ciphertext: &[u8]) -> Result<(&str, &[u8], &[u8]), CryptoError> {
    let (&version, rest) = ciphertext.split_first().ok_or(CryptoError::Malformed)?;
    if version != FORMAT_VERSION {
        return Err(CryptoError::Malformed);
    }
    let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
    let id_len = id_len as usize;
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| CryptoError::Malformed)?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    Ok((id, nonce, sealed))
}

/// SHA-256 hex of a value (API keys, OAuth states: high-entropy secrets stored as hashes).
pub fn sha256_hex(value: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}

/// A random URL-safe token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
