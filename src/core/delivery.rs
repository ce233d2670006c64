//! A pass delivered sealed to a TPM: `hwpass-dlv1.<ID object>.<encrypted seed>.<nonce>.
//! <AES-256-GCM ciphertext of the pass>`, one line. The issuer makes the credential
//! (TPM2_MakeCredential, in software) and encrypts; only the attested TPM releases the
//! credential (TPM2_ActivateCredential) that opens it. Pure: the format and the AEAD.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::core::b64::{b64url, b64url_decode};

/// Why a delivery could not be read or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The text is not a well-formed delivery.
    #[error("attestation evidence is malformed: {0}")]
    Malformed(&'static str),
    /// The released credential does not open it.
    #[error("the delivery does not decrypt with the credential the TPM released")]
    WrongCredential,
    /// Encryption failed.
    #[error("cannot seal the pass to the TPM: encryption failed")]
    Encrypt,
}

/// Prefix of a pass delivered sealed to a TPM.
pub const DELIVERY_PREFIX: &str = "hwpass-dlv1";

/// Encrypts `pass` under the 32-byte `key` that the credential carries, and writes the
/// delivery line around the credential's ID object and encrypted seed.
#[cfg_attr(not(feature = "issuer"), allow(dead_code))]
pub fn seal(
    pass: &str,
    key: &[u8; 32],
    id_object: &[u8],
    encrypted_secret: &[u8],
) -> Result<String, DeliveryError> {
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce).map_err(|_| DeliveryError::Encrypt)?;
    let ct = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: pass.as_bytes(),
                aad: DELIVERY_PREFIX.as_bytes(),
            },
        )
        .map_err(|_| DeliveryError::Encrypt)?;
    Ok(format!(
        "{DELIVERY_PREFIX}.{}.{}.{}.{}",
        b64url(id_object),
        b64url(encrypted_secret),
        b64url(&nonce),
        b64url(&ct)
    ))
}

/// The parts of a delivery string.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// TPM2B_ID_OBJECT contents.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents.
    pub encrypted_secret: Vec<u8>,
    nonce: [u8; 12],
    ct: Vec<u8>,
}

impl Delivery {
    /// Parses `hwpass-dlv1.…`; `None` if `text` is not a delivery.
    pub fn parse(text: &str) -> Option<Result<Self, DeliveryError>> {
        let rest = text.strip_prefix(DELIVERY_PREFIX)?.strip_prefix('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        let bad = DeliveryError::Malformed("delivery is not five dot-separated parts");
        Some((|| {
            let [a, b, c, d] = parts.as_slice() else {
                return Err(bad);
            };
            let dec = |s: &str| {
                b64url_decode(s).ok_or(DeliveryError::Malformed("delivery is not base64url"))
            };
            let id_object = dec(a)?;
            // TPM2B_ID_OBJECT contents: integrityHMAC (TPM2B_DIGEST of the EK's name
            // algorithm) ‖ encIdentity (the TPM2B of the credential, encrypted): the inner
            // length must account for every byte, so a cut is seen here, not by the TPM.
            let hmac_len = match id_object.as_slice() {
                [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
                _ => return Err(DeliveryError::Malformed("the credential is cut short")),
            };
            if !matches!(hmac_len, 32 | 48 | 64) || id_object.len() != 2 + hmac_len + 2 + 32 {
                return Err(DeliveryError::Malformed(
                    "the credential is cut short or too long",
                ));
            }
            let encrypted_secret = dec(b)?;
            // RSA 2048 OAEP (256 bytes), or an ECC point for an ECC EK (P-256: 68, P-384: 100).
            if !matches!(encrypted_secret.len(), 68 | 100 | 256 | 384 | 512) {
                return Err(DeliveryError::Malformed(
                    "the encrypted seed has the wrong length",
                ));
            }
            let nonce = dec(c)?
                .try_into()
                .map_err(|_| DeliveryError::Malformed("delivery nonce"))?;
            let ct = dec(d)?;
            // AES-GCM: at least the 16-byte tag and a minimal compact JWS.
            if ct.len() < 16 + 64 {
                return Err(DeliveryError::Malformed("the sealed pass is cut short"));
            }
            Ok(Self {
                id_object,
                encrypted_secret,
                nonce,
                ct,
            })
        })())
    }

    /// The length of the sealed pass (ciphertext and tag), in bytes.
    pub fn ciphertext_len(&self) -> usize {
        self.ct.len()
    }

    /// Opens the delivery with the credential the TPM released.
    pub fn open(&self, credential: &[u8]) -> Result<String, DeliveryError> {
        let key: [u8; 32] = credential
            .try_into()
            .map_err(|_| DeliveryError::Malformed("credential length"))?;
        let key = Zeroizing::new(key);
        let plain = Aes256Gcm::new((&*key).into())
            .decrypt(
                &Nonce::from(self.nonce),
                Payload {
                    msg: &self.ct,
                    aad: DELIVERY_PREFIX.as_bytes(),
                },
            )
            .map_err(|_| DeliveryError::WrongCredential)?;
        String::from_utf8(plain).map_err(|_| DeliveryError::Malformed("delivered pass is not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_deliveries_are_refused_and_tokens_are_not_deliveries() {
        assert!(Delivery::parse("hwpass-dlv1.a.b").unwrap().is_err());
        assert!(Delivery::parse("eyJhbGciOi").is_none());
    }

    fn id_object() -> Vec<u8> {
        let mut id = vec![0, 32];
        id.extend_from_slice(&[7; 32]);
        id.extend_from_slice(&[9; 34]);
        id
    }

    #[test]
    fn sealed_pass_opens_with_its_key_only() {
        let key = [9u8; 32];
        let pass = "x".repeat(500);
        let text = seal(&pass, &key, &id_object(), &[5; 256]).unwrap();
        let d = Delivery::parse(&text).unwrap().unwrap();
        assert_eq!(d.id_object, id_object());
        assert_eq!(d.encrypted_secret.len(), 256);
        assert_eq!(d.open(&key).unwrap(), pass);
        assert_eq!(
            d.open(&[8u8; 32]).unwrap_err(),
            DeliveryError::WrongCredential
        );
    }

    #[test]
    fn a_delivery_cut_anywhere_is_seen_as_damaged_before_the_tpm_is_asked() {
        let text = seal(&"x".repeat(500), &[9u8; 32], &id_object(), &[5; 256]).unwrap();
        let parts: Vec<&str> = text.split('.').collect();
        let start = parts[0].len() + 1;
        // Cut inside the credential, and inside the encrypted seed.
        for cut in [parts[1].len() / 2, parts[1].len() + 1 + parts[2].len() / 2] {
            let damaged = &text[..start + cut];
            assert!(matches!(Delivery::parse(damaged), Some(Err(_))), "{cut}");
        }
        // Cut inside the ciphertext: it may still parse, and then does not open.
        let short = &text[..text.len() - 40];
        match Delivery::parse(short) {
            Some(Err(_)) => {}
            Some(Ok(d)) => {
                assert_eq!(
                    d.open(&[9u8; 32]).unwrap_err(),
                    DeliveryError::WrongCredential
                )
            }
            None => panic!("not seen as a delivery"),
        }
    }
}
