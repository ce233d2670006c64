//! The one seam for keys: HSM, TPM and software keys all sit behind [`KeyBackend`].
//!
//! Token and policy code see only this trait. Opening and creating keys are separate functions
//! in each backend's module (`pkcs11`, `tpm`, `software`), the only places that import a device
//! library.

use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A PKCS#11 token (HSM).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
    /// Process memory, loaded from an encrypted file.
    Software,
}

/// Why a key operation failed. "Our layer refused" and "the device said no" are kept apart.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The device returned an error; `message` is one sentence for a person.
    #[error("{message}")]
    Device {
        /// What happened and what to do.
        message: String,
    },
    /// The device cannot be used right now (not reachable, stopped answering, locked out);
    /// trying again later may work.
    #[error("{message}")]
    Unavailable {
        /// What happened and what to do.
        message: String,
    },
    /// The device returned something that is not a valid P-256 key or signature.
    #[error("the key device returned a malformed {0}")]
    Malformed(&'static str),
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
}

/// An ECDSA P-256 key whose private half never leaves its backend.
///
/// Not `Send`/`Sync` as a whole: a TPM context (tss-esapi) is bound to one thread. Code that
/// shares a key across threads asks for `KeyBackend + Send + Sync`, which the PKCS#11 and
/// in-memory keys are.
pub trait KeyBackend: std::fmt::Debug {
    /// Where the key lives.
    fn kind(&self) -> BackendKind;
    /// The public key, read once when the key was opened.
    fn verifying_key(&self) -> &VerifyingKey;
    /// ES256: ECDSA P-256 over SHA-256(`msg`), returned as a low-S signature (see
    /// `token` for why verifiers refuse high-S).
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, KeyError>;
}

/// Builds a low-S [`Signature`] from a device's r and s, each left-padded to 32 bytes.
///
/// Devices return r and s as big-endian integers that may be shorter than 32 bytes (about one
/// signature in 128 has a leading zero byte in r or s); anything longer is malformed.
pub fn signature_from_scalars(r: &[u8], s: &[u8]) -> Result<Signature, KeyError> {
    let mut raw = [0u8; 64];
    let (r_out, s_out) = raw.split_at_mut(32);
    for (src, dst) in [(r, r_out), (s, s_out)] {
        let src = strip_leading_zeros(src);
        if src.len() > 32 {
            return Err(KeyError::Malformed("signature"));
        }
        dst[32 - src.len()..].copy_from_slice(src);
    }
    let sig = Signature::from_slice(&raw).map_err(|_| KeyError::Malformed("signature"))?;
    Ok(sig.normalize_s().unwrap_or(sig))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// A P-256 key held in process memory. Used by the software device backend after it decrypts
/// its key file, and by tests. The secret scalar is zeroized on drop (by `p256`).
#[derive(Debug)]
pub struct MemoryKey {
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl MemoryKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(
            &mut p256::elliptic_curve::rand_core::OsRng,
        ))
    }

    /// Wraps an existing key.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        let verifying = *signing.verifying_key();
        Self { signing, verifying }
    }

    /// Restores a key from its 32-byte secret scalar.
    pub fn from_bytes(secret: &[u8]) -> Result<Self, KeyError> {
        let signing =
            SigningKey::from_slice(secret).map_err(|_| KeyError::Malformed("private key"))?;
        Ok(Self::from_signing_key(signing))
    }

    /// The secret scalar, for encryption at rest only.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes().into())
    }
}

impl KeyBackend for MemoryKey {
    fn kind(&self) -> BackendKind {
        BackendKind::Software
    }

    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, KeyError> {
        let digest = Sha256::digest(msg);
        let sig: Signature = self
            .signing
            .sign_prehash(&digest)
            .map_err(|_| KeyError::Malformed("signature"))?;
        Ok(sig.normalize_s().unwrap_or(sig))
    }
}

/// Signs a fresh 32-byte random challenge with `key` and verifies it against `expected`:
/// proof that the caller can use the private half of `expected` right now.
pub fn prove_possession(key: &dyn KeyBackend, expected: &VerifyingKey) -> Result<bool, KeyError> {
    let mut challenge = [0u8; 48];
    challenge[..16].copy_from_slice(b"hwpass-pop-v1\0\0\0");
    getrandom::getrandom(&mut challenge[16..]).map_err(|_| KeyError::Rng)?;
    let sig = key.try_sign(&challenge)?;
    Ok(crate::token::verify_es256(expected, &challenge, &sig.to_bytes()).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_scalars_are_left_padded() {
        let r = [0x01u8; 31];
        let s = [0x02u8; 30];
        let sig = signature_from_scalars(&r, &s).unwrap();
        let bytes = sig.to_bytes();
        assert_eq!(bytes[0], 0);
        assert_eq!(&bytes[1..32], &r[..]);
        // s is low already (0x0202… < n/2), so it is kept as is.
        assert_eq!(&bytes[32..34], &[0, 0]);
        assert_eq!(&bytes[34..], &s[..]);
    }

    #[test]
    fn der_style_leading_zero_is_stripped_and_overlong_refused() {
        let mut r = vec![0u8];
        r.extend_from_slice(&[0x7f; 32]);
        assert!(signature_from_scalars(&r, &[1]).is_ok());
        assert!(matches!(
            signature_from_scalars(&[1u8; 33], &[1]),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            signature_from_scalars(&[0], &[1]),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn memory_key_signs_low_s_and_proves_possession() {
        let key = MemoryKey::generate();
        for i in 0..64u8 {
            let sig = key.try_sign(&[i; 10]).unwrap();
            assert!(sig.normalize_s().is_none(), "signature {i} is high-S");
        }
        assert!(prove_possession(&key, key.verifying_key()).unwrap());
        let other = MemoryKey::generate();
        assert!(!prove_possession(&other, key.verifying_key()).unwrap());
        let restored = MemoryKey::from_bytes(&key.secret_bytes()[..]).unwrap();
        assert_eq!(restored.verifying_key(), key.verifying_key());
    }
}
