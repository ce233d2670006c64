//! The one seam every signing key sits behind: [`Signer`]. HSM keys (issuer), TPM and software
//! keys (desktop) implement it; token code sees only this trait. Opening and creating keys
//! belong to each side's backend registry, not here.

use std::error::Error as StdError;

use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Why a signature could not be made. "Our layer refused" and "the device said no" are kept
/// apart; the device's own error stays typed inside [`SignError::Device`] (downcast it to the
/// backend's error type, e.g. the PKCS#11 or TPM error, to read its return code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The device returned an error.
    #[error(transparent)]
    Device(Box<dyn StdError + Send + Sync>),
    /// The device returned something that is not a valid P-256 key or signature.
    #[error("the key device returned a malformed {0}")]
    Malformed(&'static str),
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
}

impl SignError {
    /// Wraps a backend's typed error.
    pub fn device(e: impl StdError + Send + Sync + 'static) -> Self {
        Self::Device(Box::new(e))
    }

    /// The backend's error, if it is of type `E`.
    pub fn device_error<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Device(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// An ECDSA P-256 key whose private half never leaves its backend.
///
/// Not `Send`/`Sync` as a whole: a TPM context (tss-esapi) is bound to one thread. Code that
/// shares a key across threads asks for `Signer + Send + Sync`, which the PKCS#11 and in-memory
/// keys are.
pub trait Signer: std::fmt::Debug {
    /// The public key, read once when the key was opened.
    fn verifying_key(&self) -> &VerifyingKey;
    /// ES256: ECDSA P-256 over SHA-256(`msg`), returned as a low-S signature (see
    /// [`crate::verify_es256`] for why verifiers refuse high-S).
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError>;
}

impl<S: Signer + ?Sized> Signer for Box<S> {
    fn verifying_key(&self) -> &VerifyingKey {
        (**self).verifying_key()
    }
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        (**self).try_sign(msg)
    }
}

/// Builds a low-S [`Signature`] from a device's r and s, each left-padded to 32 bytes.
///
/// Devices return r and s as big-endian integers that may be shorter than 32 bytes (about one
/// signature in 128 has a leading zero byte in r or s); anything longer is malformed.
pub fn signature_from_scalars(r: &[u8], s: &[u8]) -> Result<Signature, SignError> {
    let mut raw = [0u8; 64];
    let (r_out, s_out) = raw.split_at_mut(32);
    for (src, dst) in [(r, r_out), (s, s_out)] {
        let src = strip_leading_zeros(src);
        if src.len() > 32 {
            return Err(SignError::Malformed("signature"));
        }
        dst[32 - src.len()..].copy_from_slice(src);
    }
    let sig = Signature::from_slice(&raw).map_err(|_| SignError::Malformed("signature"))?;
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
    pub fn from_bytes(secret: &[u8]) -> Result<Self, SignError> {
        let signing =
            SigningKey::from_slice(secret).map_err(|_| SignError::Malformed("private key"))?;
        Ok(Self::from_signing_key(signing))
    }

    /// The secret scalar, for encryption at rest only.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes().into())
    }
}

impl Signer for MemoryKey {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        let digest = Sha256::digest(msg);
        let sig: Signature = self
            .signing
            .sign_prehash(&digest)
            .map_err(|_| SignError::Malformed("signature"))?;
        Ok(sig.normalize_s().unwrap_or(sig))
    }
}

/// A fresh random identifier of 128 bits, base64url (a pass's `jti`).
pub fn random_jti() -> Result<String, SignError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|_| SignError::Rng)?;
    Ok(crate::core::b64::b64url(&b))
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
            Err(SignError::Malformed(_))
        ));
        assert!(matches!(
            signature_from_scalars(&[0], &[1]),
            Err(SignError::Malformed(_))
        ));
    }

    #[test]
    fn memory_key_signs_low_s_and_restores() {
        let key = MemoryKey::generate();
        for i in 0..64u8 {
            let sig = key.try_sign(&[i; 10]).unwrap();
            assert!(sig.normalize_s().is_none(), "signature {i} is high-S");
        }
        let restored = MemoryKey::from_bytes(&key.secret_bytes()[..]).unwrap();
        assert_eq!(restored.verifying_key(), key.verifying_key());
    }
}
