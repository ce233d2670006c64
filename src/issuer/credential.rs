//! TPM2_MakeCredential computed in software on the issuer (TPM 2.0 Part 1 §24 "Credential
//! Protection", Part 3 §12.6), for an RSA 2048 endorsement key with the default EK template
//! (nameAlg SHA-256, AES-128-CFB). Pure: RustCrypto primitives only, no TPM.
//!
//! The output is what `TPM2_ActivateCredential` on the TPM holding that EK accepts, releasing
//! the credential only if the activated object has the name `ak_name` and is loaded in the
//! same TPM. The credential here is a 32-byte key that wraps the pass (see `delivery`).
//!
//! Note: the `rsa` crate's known timing issue (RUSTSEC-2023-0071) concerns private-key
//! operations; only public-key OAEP encryption happens here.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
type Aes128CfbEnc = cfb_mode::Encryptor<aes::Aes128>;

/// What went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not an RSA key we can encrypt to.
    #[error("the endorsement key is not a usable RSA 2048 key")]
    BadEk,
    /// The credential does not fit a TPM2B_DIGEST.
    #[error("the credential is longer than a SHA-256 digest")]
    TooLong,
    /// The random generator failed.
    #[error("the random number generator failed")]
    Rng,
}

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-SHA-256 in counter mode:
/// `K(i) = HMAC(key, [i]32 ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ [bits]32)`.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            <HmacSha256 as hmac::Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// The RSA EK public key from its modulus (exponent 65537 unless given).
pub fn rsa_ek(modulus: &[u8], exponent: Option<u32>) -> Result<RsaPublicKey, CredentialError> {
    let e = BigUint::from(exponent.filter(|&e| e != 0).unwrap_or(65537));
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), e)
        .map_err(|_| CredentialError::BadEk)?;
    if modulus.len() != 256 {
        return Err(CredentialError::BadEk);
    }
    Ok(key)
}

/// MakeCredential output: the TPM2B contents of the ID object and of the encrypted secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: integrityHMAC (TPM2B_DIGEST) ‖ encIdentity.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: RSA-OAEP(seed).
    pub encrypted_secret: Vec<u8>,
}

/// Protects `credential` so that only the TPM holding `ek` can release it, and only to an
/// object named `ak_name` (nameAlg ‖ digest of its public area).
pub fn make_credential(
    ek: &RsaPublicKey,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    if credential.len() > 32 {
        return Err(CredentialError::TooLong);
    }
    // Part 1 §24.4: for an RSA EK the seed is nameAlg-digest sized, OAEP-encrypted with the
    // label "IDENTITY" (its terminating NUL included).
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|_| CredentialError::Rng)?;
    let padding = Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
    let encrypted_secret = ek
        .encrypt(&mut rand_core_os(), padding, &seed[..])
        .map_err(|_| CredentialError::BadEk)?;

    // §24.4: symKey = KDFa(nameAlg, seed, "STORAGE", name, NULL, 128) for AES-128-CFB, IV 0.
    let sym_key = zeroize::Zeroizing::new(kdfa(&seed[..], "STORAGE", ak_name, &[], 128));
    let mut enc_identity = (credential.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(credential);
    Aes128CfbEnc::new_from_slices(&sym_key, &[0u8; 16])
        .map_err(|_| CredentialError::BadEk)?
        .encrypt(&mut enc_identity);

    // §24.5: HMACkey = KDFa(nameAlg, seed, "INTEGRITY", NULL, NULL, 256);
    // outerHMAC = HMAC(HMACkey, encIdentity ‖ name).
    let hmac_key = zeroize::Zeroizing::new(kdfa(&seed[..], "INTEGRITY", &[], &[], 256));
    let mut mac =
        <HmacSha256 as hmac::Mac>::new_from_slice(&hmac_key).map_err(|_| CredentialError::BadEk)?;
    mac.update(&enc_identity);
    mac.update(ak_name);
    let outer = mac.finalize().into_bytes();

    let mut id_object = (outer.len() as u16).to_be_bytes().to_vec();
    id_object.extend_from_slice(&outer);
    id_object.extend_from_slice(&enc_identity);
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

fn rand_core_os() -> p256::elliptic_curve::rand_core::OsRng {
    p256::elliptic_curve::rand_core::OsRng
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa(b"key", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa(b"key", "STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa(b"key", "INTEGRITY", b"name", &[], 128));
        let long = kdfa(b"key", "INTEGRITY", &[], &[], 512);
        assert_eq!(long.len(), 64);
        // The second block differs from the first (the counter is in the input).
        assert_ne!(long[..32], long[32..]);
    }

    #[test]
    fn refuses_short_modulus_and_long_credential() {
        assert_eq!(
            rsa_ek(&[0xff; 128], None).unwrap_err(),
            CredentialError::BadEk
        );
        let ek = rsa_ek(&[0xc5; 256], None).unwrap();
        assert_eq!(
            make_credential(&ek, &[0; 34], &[0; 33]).unwrap_err(),
            CredentialError::TooLong
        );
    }
}
